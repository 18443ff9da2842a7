"""The classifier head as a lava-dl netx chain (HDF5).

The spiking student's head is ``logits = W_c a + b_c`` on the [CLS] ASR ``a`` of the last output
population: a linear map of a *rate*, no neuron. On Loihi it becomes a purely sequential
Dense + neuron chain::

    [CLS] spikes of layer{N-1}.output (H, input layer)
        -> Dense(W_mant)                (8-bit MIXED mantissas of W_c, one exponent E)
        -> CUBA accumulators (C)        iDecay=4096 (u = this step's input), vDecay=0 (no leak),
                                        bias_mant = round(b_c / 2**E) (netx: bias << 6),
                                        vThMant = 2**17 - 1 (never reached: pure integrators)

A signed student (``if_signed_pair``) has an on and an off neuron per unit: the chain's input
layer is then the 2H on/off neurons (``on_off_trains``) and its weights ``[W_mant, -W_mant]``.

After ``T`` steps (plus the Dense's one-step delay) the voltage is
``v = 64 * (W_mant @ sum_t s_t + T * bias_mant)``, so ``logits = v * 2**E / (64 * T)`` with the
classifier quantized to 8 bits: reading ``v`` once per sentence replaces the host-side
classifier. ``head_chain(..., vth_mant=small)`` gives the same chain with a reachable threshold
(reset-to-zero "evidence" spikes), used by the tests to compare spike trains between netx and a
chain built from stock Lava processes.
The netx format is lava-semantics.md section 6; netx is fixed_pt only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from lava_spikingbert.contract.atomic import atomic_file
from lava_spikingbert.contract.constants import (ACT_SHIFT, BIAS_MANT_MAX, BIAS_MANT_MIN, SIGNED_NEURONS, UV_MAX,
                                                 VTH_MANT_MAX)
from lava_spikingbert.contract.model_file import ModelFile


def _ceil_log2(x: float) -> int:
    f, e = math.frexp(x)
    return e - 1 if f == 0.5 else e


def on_off_trains(spikes: np.ndarray) -> np.ndarray:
    """Signed unit spikes (T, H) in {-1, 0, 1} -> the (T, 2H) 0/1 trains of its on and off neurons
    (which never fire in the same step, so the signed train determines both)."""
    s = np.asarray(spikes)
    return np.concatenate([(s > 0), (s < 0)], axis=-1).astype(np.int64)


@dataclass
class HeadChain:
    weight: np.ndarray  # int32 (C, H) even mantissas in [-256, 254] ((C, 2H) = [W, -W] for signed inputs)
    bias_mant: np.ndarray  # int32 (C,), in a_in units (netx applies bias_exp = 6)
    exponent: int  # one mantissa LSB = 2**exponent logit units
    vth_mant: int
    t_conv: int  # the T the headroom was checked for
    source: str = "layer?.output"
    token: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)  # type: ignore[return-value]

    def expected_voltage(self, spikes: np.ndarray) -> np.ndarray:
        """Final v of the (non-firing) accumulators for input spikes (T, H): exact integers."""
        s = np.asarray(spikes, dtype=np.int64)
        return (self.weight.astype(np.int64) @ s.sum(0) + s.shape[0] * self.bias_mant.astype(np.int64)) << ACT_SHIFT

    def logits(self, voltage: np.ndarray, t_conv: int) -> np.ndarray:
        return np.asarray(voltage, dtype=np.float64) * 2.0 ** self.exponent / (64.0 * t_conv)


def head_chain(mf: ModelFile | None = None, *, weight: np.ndarray | None = None, bias: np.ndarray | None = None,
               t_conv: int | None = None, vth_mant: int = VTH_MANT_MAX, signed_input: bool | None = None) -> HeadChain:
    """Quantize the classifier for the netx chain (from a model file or explicit weight/bias).

    The exponent is the smallest that fits the weights in the MIXED range and the biases in 13 bits
    and, with the default (unreachable) threshold, keeps the worst-case accumulated voltage over
    ``t_conv`` steps below the threshold (no spike, no saturation). ``signed_input`` (default: the
    model file's neuron is ``if_signed_pair``): the input is on/off neuron pairs, the weights
    ``[W, -W]`` (mantissas limited to +-254 so that both signs fit).
    """
    if mf is not None:
        weight, bias = mf.classifier_weight, mf.classifier_bias
        t_conv = t_conv or int(mf.config["t_conv"])
        source = f"layer{int(mf.config['num_hidden_layers']) - 1}.output"
        if signed_input is None:
            signed_input = mf.config["neuron"] in SIGNED_NEURONS
    else:
        source = "input"
    if weight is None or bias is None or not t_conv:
        raise ValueError("head_chain needs a model file or weight, bias and t_conv")
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    wmax, wmin = float(w.max(initial=0.0)), float(w.min(initial=0.0))
    cands = [_ceil_log2(wmax / 254)] if wmax > 0 else []
    low = -254 if signed_input else -256
    cands += [_ceil_log2(wmin / low)] if wmin < 0 else []
    e = max(cands) if cands else 0
    limit = min(int(vth_mant) << ACT_SHIFT, UV_MAX) if vth_mant == VTH_MANT_MAX else UV_MAX
    for _ in range(64):
        m = (2 * np.round(w / 2.0 ** (e + 1))).clip(low, 254).astype(np.int32)
        if signed_input:
            m = np.concatenate([m, -m], axis=1)
        bm = np.round(b / 2.0 ** e).astype(np.int64)
        worst = (np.maximum(np.where(m > 0, m, 0).sum(1), -np.where(m < 0, m, 0).sum(1)) + np.abs(bm))
        fits_bias = bm.min(initial=0) >= BIAS_MANT_MIN and bm.max(initial=0) <= BIAS_MANT_MAX
        if fits_bias and int(worst.max(initial=0)) * int(t_conv) * 64 < limit:
            return HeadChain(weight=m, bias_mant=bm.astype(np.int32), exponent=int(e), vth_mant=int(vth_mant),
                             t_conv=int(t_conv), source=source)
        e += 1
    raise ValueError("classifier cannot be fitted into the head chain's integer range")


def write_netx_head(path: str | os.PathLike, chain: HeadChain) -> Path:
    """Write the chain as a lava-dl netx HDF5 network (input layer + one dense CUBA layer)."""
    c, h = chain.shape
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["description"] = ("lava-spikingbert classifier head: [CLS] spikes of the last output population "
                                      "-> Dense -> non-leaky CUBA accumulators; logits = v * 2**exponent / (64 T)")
            f.attrs["exponent"] = int(chain.exponent)
            f.attrs["t_conv"] = int(chain.t_conv)
            f.attrs["source_population"] = chain.source
            f.attrs["source_token"] = int(chain.token)
            layer = f.create_group("layer")
            l0 = layer.create_group("0")
            l0.create_dataset("type", data=np.array([b"input"], dtype="S10"))
            l0.create_dataset("shape", data=np.array([h], dtype=np.int64))
            l1 = layer.create_group("1")
            l1.create_dataset("type", data=np.array([b"dense"], dtype="S10"))
            l1.create_dataset("shape", data=np.array([c], dtype=np.int64))
            l1.create_dataset("inFeatures", data=np.int64(h))
            l1.create_dataset("outFeatures", data=np.int64(c))
            l1.create_dataset("weight", data=chain.weight.astype(np.float32))
            l1.create_dataset("bias", data=chain.bias_mant.astype(np.float32))
            n = l1.create_group("neuron")
            n.create_dataset("type", data=np.array([b"CUBA"], dtype="S10"))
            n.create_dataset("iDecay", data=np.int64(4096))
            n.create_dataset("vDecay", data=np.int64(0))
            n.create_dataset("vThMant", data=np.int64(chain.vth_mant))
            n.create_dataset("refDelay", data=np.int64(1))
            n.create_dataset("gradedSpike", data=np.bool_(False))
    return Path(path)
