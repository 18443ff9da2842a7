"""Numpy kernels of the synapses and current blocks (float32), shared by ProcessModels and host.

Each mirrors one operation of ``lava_spikingbert.model.encoder`` (the source of truth); they follow
torch's float32 order of operations where that is cheap, but are not bit-identical to torch's CPU
kernels (BLAS summation order, exp/erf implementations differ in the last bit).

The ProcessModels call these through the module (``kernels.linear(...)``), never through names
bound at import, so a parity test can swap in other implementations (e.g. torch's own ops) before
``run()``: the model processes are forked and inherit the swap.
"""

from __future__ import annotations

import math
import os

import numpy as np
from scipy.special import erf

_SQRT1_2 = np.float32(1.0 / math.sqrt(2.0))


_single_thread_pid: int | None = None


def single_threaded_blas() -> None:
    """Limit BLAS/OpenMP to one thread in this (Lava model) process: dozens of model processes
    share the cores, so threads inside one only oversubscribe them. Idempotent per process."""
    global _single_thread_pid
    if _single_thread_pid == os.getpid():
        return
    _single_thread_pid = os.getpid()
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except Exception:  # noqa: BLE001 - threadpoolctl missing or a library refused: only slower
        pass


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``x W^T + b`` over the last axis (W: (out, in)), float32."""
    y = np.asarray(x, dtype=np.float32) @ weight.T
    return y if bias is None else y + bias


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis: float64 statistics, float32 affine (like torch's CPU kernel:
    ``(x * rstd + (-rstd * mean)) * gamma + beta``)."""
    x = np.asarray(x, dtype=np.float32)
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    var = np.square(x64 - mean).mean(-1, keepdims=True)
    rstd = (1.0 / np.sqrt(var + eps)).astype(np.float32)
    shift = -rstd * mean.astype(np.float32)
    return (x * rstd + shift) * gamma + beta


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, ``torch.nn.functional.gelu``'s default."""
    x = np.asarray(x, dtype=np.float32)
    return x * np.float32(0.5) * (np.float32(1.0) + erf(x * _SQRT1_2).astype(np.float32))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """As torch's CPU kernel: ``exp(x - max) * (1 / sum)``."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e * (np.float32(1.0) / e.sum(axis=axis, keepdims=True))


def attention_context(x: np.ndarray, q_weight: np.ndarray, q_bias: np.ndarray, k: np.ndarray, v: np.ndarray,
                      num_heads: int, mask_bias: np.ndarray) -> np.ndarray:
    """``concat_h softmax(q_h k_h^T / sqrt(d) + mask) v_h`` for one sentence, ``q = x W_Q^T + b_Q``.

    x, k, v: (L, H) float32 spikes; mask_bias: (L,) additive key bias or (L, L) query x key bias.
    """
    q = linear(x, q_weight, q_bias)
    n, h = q.shape
    d = h // num_heads
    qh = q.reshape(n, num_heads, d).transpose(1, 0, 2)
    kh = k.reshape(-1, num_heads, d).transpose(1, 2, 0)
    vh = v.reshape(-1, num_heads, d).transpose(1, 0, 2)
    scores = (qh @ kh) / np.float32(math.sqrt(d)) + mask_bias
    probs = softmax(scores.astype(np.float32, copy=False))
    return np.ascontiguousarray((probs @ vh).transpose(1, 0, 2).reshape(n, h), dtype=np.float32)


class DelayLine:
    """In-process delay line: ``push(x)`` returns the value pushed ``delay`` calls earlier (zeros
    while filling); ``delay=0`` passes through. Used inside the current blocks to align a shallow
    input (residual, query spikes) with a deeper one. On Loihi this is a synaptic/axonal delay
    (``DelayDense``) of the same length."""

    def __init__(self, shape: tuple[int, ...], delay: int, dtype=np.float32) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self.delay = int(delay)
        self.buf = np.zeros((max(self.delay, 1), *shape), dtype=dtype)
        self.pos = 0

    def push(self, x: np.ndarray) -> np.ndarray:
        if self.delay == 0:
            return x
        out = self.buf[self.pos].copy()
        self.buf[self.pos] = x
        self.pos = (self.pos + 1) % self.delay
        return out
