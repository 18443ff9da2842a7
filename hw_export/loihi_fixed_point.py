"""Torch references of a profile-"loihi" model file, per sentence, with the margin convention.

* :class:`LoihiFixedPoint`: the integer arithmetic of lava-nc 0.10.0's bit-accurate stock models
  (``PyLifResetModelBitAcc``, ``PySparseModelBitAcc``/``PyDelaySparseModelBitAcc``), exact
  integers (carried in float32, see ``LoihiFixedPoint.simulate``):

  - synapse: the Lava weight is the file's 8-bit mantissa (already on its sign mode's grid, so
    Lava's clip + truncate leave it unchanged; the reader checks it); the dendritic sum of one
    synapse is ``(W s) << weight_exp`` (an arithmetic, flooring right shift for a negative
    exponent), the sums of all synapses into a population add up in ``a_in``;
  - neuron (``du=4095, dv=0``): ``u = wrap24(a_in << 6)`` (the current decays completely every
    step, the model's own two-sided 24-bit wrap), ``v = clip(v + u + (bias_mant << bias_exp),
    +-(2**23 - 1))``, spike where ``v > vth_mant << 6``, then ``v = 0``; ``u = v = 0`` at the first
    step of the population's window (``LIFReset``);
  - input: the host's 16-bit integer current (``LoihiModelFile.input_integer``), constant over the
    window, straight into ``embed``'s ``a_in``.

  Each population's window sees its parents' same-sentence windows (the Lava graph's delays align
  them), so the reference steps the populations in update order within a step.

* :func:`float_reference`: the torch model rebuilt from the file's float weights
  (``LoihiSpikingMixer.simulate``, float32), fed the same float64 host current as the Lava
  floating_pt graph.

Margin convention (``docs/model_file.md``): a sentence of n tokens is simulated at positions
``R .. R+n-1`` of ``R + n + R`` positions (more to the right when batched, all zero input), ``R`` =
the file's ``margin``; token j uses position id j. Only its valid tokens are returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hw_export.loihi_export import model_from_loihi_file
from lava_spikingbert.contract.constants import ACT_SHIFT, EMBED, UV_MAX
from lava_spikingbert.contract.model_file import LoihiModelFile, loihi_layout

WRAP = UV_MAX + 1  # 2**23: the LIF models wrap u into (-2**23, 2**23]


@dataclass
class LoihiReferenceResult:
    """Per sentence: population -> (n_tokens, width) int32 spike counts over the window, and logits."""

    counts: list[dict[str, np.ndarray]]
    logits: np.ndarray  # (S, labels)


def margin_batch(mf: LoihiModelFile, ids: list[np.ndarray], types: list[np.ndarray], fixed: bool) -> tuple[np.ndarray, int]:
    """(B, R + longest + R, d) host input (int64 a_in if ``fixed`` else float64 current), and R."""
    R = mf.margin
    L = 2 * R + max(len(x) for x in ids)
    d = int(mf.config["hidden_size"])
    out = np.zeros((len(ids), L, d), np.int64 if fixed else np.float64)
    for b, (i, t) in enumerate(zip(ids, types)):
        cur = mf.input_current(np.asarray(i), np.asarray(t))
        out[b, R:R + len(i)] = mf.input_integer(cur) if fixed else cur
    return out, R


class LoihiFixedPoint:
    """The bit-accurate integer reference of a quantized loihi file."""

    def __init__(self, mf: LoihiModelFile) -> None:
        if not mf.quantized:
            raise ValueError(f"{mf.path or 'model file'}: precision {mf.precision} has no fixed-point form")
        self.mf = mf
        self.pops, self.syns = loihi_layout(mf.config)
        self.weights = {s.name: torch.from_numpy(s.weight_mant.astype(np.float32)) for s in mf.synapses.values()}
        self.bias = {p.name: torch.from_numpy((p.bias_mant.astype(np.int64) << p.bias_exp).astype(np.float32))
                     for p in mf.populations.values()}
        self.vth = {p.name: float(int(p.vth_mant) << ACT_SHIFT) for p in mf.populations.values()}
        self.mixing = mf.config["mixing"]
        self.k = int(mf.config["kernel_size"])

    def _synapse(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Integer dendritic sum of one synapse for spikes ``x`` (B, L, width_in), see ``simulate``."""
        syn = self.mf.synapses[name]
        w = self.weights[name]
        if syn.kind == "channel":
            acc = x @ w.T
        elif syn.kind == "residual":
            acc = x * w
        else:  # token_mix: out[l] = sum_j w[:, j] x[l + D * (j - left)], D the synapse's dilation
            left = self.k - 1 if self.mixing == "causal" else (self.k - 1) // 2
            L = x.shape[1]
            acc = torch.zeros_like(x)
            for j in range(self.k):
                off = syn.dilation * (j - left)
                lo, hi = max(0, -off), min(L, L - off)
                if lo < hi:
                    acc[:, lo:hi] += x[:, lo + off:hi + off] * w[:, j]
        e = int(syn.weight_exp)
        return acc * 2.0 ** e if e >= 0 else torch.floor(acc * 2.0 ** e)  # << e, or the flooring >> -e

    def simulate(self, a_in_embed: torch.Tensor, t_conv: int) -> dict[str, torch.Tensor]:
        """Spike counts (B, L, width) of every population over one window of ``t_conv`` steps.

        Integer arithmetic carried in float32 tensors, exact: every value is an integer below
        2**24 in magnitude (a synapse sum is at most 256 * fan-in < 2**24 before its shift, a_in is
        16-bit by the file's range check, ``v`` stays within +-(2**23 - 1) + 2**21 + 2**19 before
        its clamp), so float32 matmuls and adds make no rounding."""
        v: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        incoming = {p["name"]: [s for s in self.syns if s["target"] == p["name"]] for p in self.pops}
        a_embed = a_in_embed.to(torch.float32)
        for _ in range(t_conv):
            spikes: dict[str, torch.Tensor] = {}
            for p in self.pops:
                name = p["name"]
                a = a_embed if name == EMBED else \
                    sum(self._synapse(s["name"], spikes[s["source"]]) for s in incoming[name])
                u = a * float(1 << ACT_SHIFT)
                if bool((u.abs() >= WRAP).any()):  # the LIF model's two-sided 24-bit wrap of u
                    u64 = u.to(torch.float64)
                    w = torch.where(u64 > WRAP, u64 - 2 * WRAP, u64)
                    u = torch.where(w <= -WRAP, u64 + 2 * WRAP, w).to(torch.float32)
                vv = u + self.bias[name] if name not in v else v[name] + u + self.bias[name]
                vv.clamp_(-UV_MAX, UV_MAX)
                s = vv > self.vth[name]
                vv.masked_fill_(s, 0.0)
                v[name] = vv
                sf = s.to(torch.float32)
                spikes[name] = sf
                counts[name] = sf if name not in counts else counts[name] + sf
        return counts

    def run(self, ids: list[np.ndarray], types: list[np.ndarray], t_conv: int | None = None) -> LoihiReferenceResult:
        T = int(t_conv or self.mf.config["t_conv"])
        a_in, R = margin_batch(self.mf, ids, types, fixed=True)
        counts = self.simulate(torch.from_numpy(a_in), T)
        return _per_sentence(self.mf, {k: c.numpy() for k, c in counts.items()}, ids, R, T)


def _per_sentence(mf: LoihiModelFile, counts: dict[str, np.ndarray], ids: list[np.ndarray], R: int,
                  T: int) -> LoihiReferenceResult:
    per = [{k: c[b, R:R + len(i)].astype(np.int32) for k, c in counts.items()} for b, i in enumerate(ids)]
    logits = np.stack([mf.readout(c[mf.output_population], T) for c in per])
    return LoihiReferenceResult(per, logits)


def float_reference(mf: LoihiModelFile, ids: list[np.ndarray], types: list[np.ndarray],
                    t_conv: int | None = None, model=None) -> LoihiReferenceResult:
    """The torch float model of the file's weights on the same host current as Lava floating_pt."""
    T = int(t_conv or mf.config["t_conv"])
    model = model if model is not None else model_from_loihi_file(mf)
    current, R = margin_batch(mf, ids, types, fixed=False)
    with torch.no_grad():
        act = model.simulate(torch.from_numpy(current.astype(np.float32)), T)
    counts = {k: v.numpy() for k, v in act.spike_counts.items()}
    return _per_sentence(mf, counts, ids, R, T)
