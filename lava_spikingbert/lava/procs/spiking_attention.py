"""``SpikingAttention``: the context current of the spiking self-attention, per time step.

At every step, on that step's spikes: ``Q = x W_Q^T + b_Q`` from the layer-input spikes ``x``
(real-valued queries), ``scores_h = Q_h K_h^T / sqrt(d) + M`` with ``K``/``V`` the key/value
population spikes and ``M`` the sentence's additive padding mask, ``context = concat_h
softmax(scores_h) V_h`` (``lava_spikingbert.model.encoder.SpikingEncoderLayer.context_current``).

``x`` comes straight from the layer-input population while K and V come one synapse hop later, so
``x`` is delayed in-block by ``query_delay`` steps. The masks of all sentences of the run live in
the ``mask_bias`` Var: (n_samples, L) additive key masks, or (n_samples, L, L) query x key masks
when several sentences share a window (block-diagonal); the step's sentence is ``(t - offset) // interval`` with
``offset`` the depth of the K/V inputs. A simulation vehicle: on Loihi this block runs on the host
(or becomes the stock-process ProdNeuron attention without softmax; see the design notes).
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikingbert.lava import kernels
from lava_spikingbert.lava.fixed import to_grid
from lava_spikingbert.lava.procs._bases import CurrentBlockModel
from lava_spikingbert.lava.procs.current_blocks import _check_latency


class SpikingAttention(AbstractProcess):
    """x_in, k_in, v_in (L, H) spikes -> a_out (L, H) context current."""

    def __init__(self, *, n_tokens: int, num_heads: int, q_weight: np.ndarray, q_bias: np.ndarray,
                 mask_bias: np.ndarray, interval: int, offset: int = 0, query_delay: int = 0,
                 latency: int = 0, q_exp: int = 0, lam: float = 1.0, score_scale: float | None = None,
                 name: str | None = None, log_config: LogConfig | None = None) -> None:
        # q_exp / lam / score_scale: fixed_pt model only (q_weight then holds the integer mantissas)
        q_weight = np.asarray(q_weight)
        h = q_weight.shape[0]
        if q_weight.shape != (h, h) or h % num_heads:
            raise ValueError(f"q_weight must be (H, H) with H divisible by {num_heads}, got {q_weight.shape}")
        mask_bias = np.asarray(mask_bias, dtype=np.float32)
        if mask_bias.ndim not in (2, 3) or mask_bias.shape[1:] not in ((n_tokens,), (n_tokens, n_tokens)):
            raise ValueError(f"mask_bias must be (n_samples, {n_tokens}) or (n_samples, {n_tokens}, {n_tokens}), "
                             f"got {mask_bias.shape}")
        shape = (int(n_tokens), h)
        super().__init__(shape=shape, num_heads=int(num_heads), interval=int(interval), offset=int(offset),
                         query_delay=int(query_delay), latency=_check_latency(latency), q_exp=int(q_exp),
                         lam=float(lam), score_scale=score_scale, name=name,
                         log_config=log_config)
        self.x_in = InPort(shape=shape)
        self.k_in = InPort(shape=shape)
        self.v_in = InPort(shape=shape)
        self.a_out = OutPort(shape=shape)
        self.q_weight = Var(shape=(h, h), init=q_weight)
        self.q_bias = Var(shape=(h,), init=np.asarray(q_bias))
        self.mask_bias = Var(shape=mask_bias.shape, init=mask_bias)
        self.a_buff = Var(shape=shape, init=0)


class SpikingAttentionModel(CurrentBlockModel):
    """Shared part of the SpikingAttention models: the step's inputs and the mask of its sentence."""

    dense_in_ports = ("x_in", "k_in", "v_in")
    dense_out_ports = ("a_out",)
    dense_arrays = ("q_weight", "q_bias", "mask_bias", "a_buff")

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.num_heads = proc_params["num_heads"]
        self.interval = proc_params["interval"]
        self.offset = proc_params["offset"]
        self.query = kernels.DelayLine(proc_params["shape"], proc_params["query_delay"])

    def inputs(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, k, v, mask) of 0-based step t: the layer-input spikes delayed by ``query_delay``, the
        key and value spikes, and the additive mask of the step's sentence."""
        # DelayLine buffers float32 (exact for spikes): back to the model's type (a no-op in float32)
        x = np.asarray(self.query.push(self.receive(self.x_in)), dtype=self.dtype)
        k = self.receive(self.k_in)
        v = self.receive(self.v_in)
        sample = min(max((t - self.offset) // self.interval, 0), self.mask_bias.shape[0] - 1)
        return x, k, v, self.mask_bias[sample]


@implements(proc=SpikingAttention, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikingAttentionModelFloat(SpikingAttentionModel, dtype=np.float32):
    def compute(self, t: int) -> np.ndarray:
        x, k, v, mask = self.inputs(t)
        return kernels.attention_context(x, self.q_weight, self.q_bias, k, v, self.num_heads, mask)


@implements(proc=SpikingAttention, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikingAttentionModelFixed(SpikingAttentionModel, dtype=np.float64):
    """float64 attention on the exact query accumulator; output ``Q(context)`` (docs/fixed_point.md §2.5)."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.q_scale = 2.0 ** proc_params["q_exp"] * self.lam
        n, h = proc_params["shape"]
        d = h // self.num_heads
        s = proc_params["score_scale"]
        self.score_scale = 1.0 / np.sqrt(d) if s is None else float(s)

    def compute(self, t: int) -> np.ndarray:
        x, k, v, mask = self.inputs(t)
        n, h = x.shape
        nh, d = self.num_heads, h // self.num_heads
        q = (x @ self.q_weight.T) * self.q_scale + self.q_bias
        qh, kh, vh = (z.reshape(n, nh, d).transpose(1, 0, 2) for z in (q, k, v))
        scores = qh @ kh.transpose(0, 2, 1) * self.score_scale + mask
        e = np.exp(scores - scores.max(-1, keepdims=True))
        probs = e / e.sum(-1, keepdims=True)
        ctx = (probs @ vh).transpose(1, 0, 2).reshape(n, h)
        return to_grid(ctx, self.lam)
