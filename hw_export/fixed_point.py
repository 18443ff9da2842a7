"""Integer-exact torch reference of the quantized student as Lava's fixed_pt models compute it.

This is the reference the Lava fixed_pt port is checked against (bit-identical spike counts).
The specification is docs/fixed_point.md; in short, with ``p = scale_exp``, ``vth_mant = 2**p``,
the weight unit ``lam = vth / 2**p`` (float current of one ``a_in`` LSB) and the membrane LSB
``lam / 64``:

* Dense into a neuron (key, value): ``a = (W_mant @ s) << weight_exp`` (arithmetic shift: floor
  for a negative exponent), exactly Lava ``Dense`` (``PyDenseModelBitAcc``);
* Dense into a host block (query, attn_out, intermediate, output): the block receives the exact
  accumulator ``W_mant @ s``; its float input is ``acc * 2**weight_exp * lam + b`` (float64);
* non-spiking blocks (embedding current, attention, residual LayerNorm, GELU) run in float64 on
  those exact inputs; their output current ``I`` is sent as ``a = clamp(round_half_even(I / lam),
  -(2**17 - 1), 2**17 - 1)``;
* neuron (both kinds, Lava LIF with ``du = 4095, dv = 0``): ``u = wrap24(a << 6)``,
  ``v = clip(v + u + (bias_mant << bias_exp), -(2**23 - 1), 2**23 - 1)``; ``if_subtract``:
  ``s = v >= vth_mant << 6; v -= s * (vth_mant << 6)``; ``lif_reset_zero``: ``s = v > vth_mant << 6;
  v = 0 where s``; ``if_signed_pair``: an on and an off ``if_subtract`` neuron, the off one fed
  ``-a`` and ``-bias``, spikes ``s_on - s_off``;
* schedule: the synchronous order of ``SpikingBert.simulate`` (no delays); logits from the
  [CLS] ASR of the last output population with the float classifier (float64).

Integers are held exactly in float64 (matrix products of small integers with 0/1 spikes; exact
below 2**53) and int64 (neuron state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from hw_export.export import model_file_from_model
from lava_spikingbert.contract.constants import ACT_SHIFT, BLOCK_OUT_MAX, DEFAULT_SCALE_EXP, SIGNED_NEURONS, UV_MAX
from lava_spikingbert.contract.model_file import ModelFile, ModelFileError

F64 = torch.float64


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)  # torch.round rounds half to even


def dense_shift(acc: torch.Tensor, weight_exp: int) -> torch.Tensor:
    """Lava Dense: ``acc << weight_exp`` (``>>`` with floor for a negative exponent), on exact ints."""
    if weight_exp >= 0:
        return acc * float(2 ** weight_exp)
    return torch.floor(acc / float(2 ** -weight_exp))


def wrap24(x: torch.Tensor) -> torch.Tensor:
    """Lava LIF's u wrap (``AbstractPyLifModelFixed.subthr_dynamics``), verbatim."""
    m = 2 ** 23
    w = torch.where(x > m, x - 2 * m, x)
    return torch.where(w <= -m, x + 2 * m, w)


@dataclass
class FixedPointResult:
    counts: dict[str, torch.Tensor]  # int64 (B, L, width) spikes over t_conv steps
    logits: torch.Tensor  # float64 (B, num_labels)
    t_conv: int
    events: dict[str, int] = field(default_factory=dict)  # u wraps, v saturations, block clamps
    trains: dict[str, torch.Tensor] | None = None  # int8 (T, B, L, width) if recorded

    @property
    def asr(self) -> dict[str, torch.Tensor]:
        return {k: c.to(F64) / self.t_conv for k, c in self.counts.items()}


class FixedPointModel:
    """The fixed-point student of a quantized :class:`~lava_spikingbert.contract.model_file.ModelFile`."""

    def __init__(self, mf: ModelFile) -> None:
        if not mf.quantized:
            raise ModelFileError(f"{mf.path or 'model file'}: precision {mf.precision} has no fixed-point form; "
                                 "quantize (int8 | ternary | binary) first")
        cfg = mf.config
        self.mf = mf
        self.num_layers = int(cfg["num_hidden_layers"])
        self.hidden = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.head_size = self.hidden // self.heads
        self.eps = float(cfg["layer_norm_eps"])
        self.t_conv = int(cfg["t_conv"])
        self.max_length = int(cfg["max_length"])
        self.kind = str(cfg["neuron"])
        self.scale_exp = int(mf.quantization["scale_exp"])
        self.vth_mant = int(mf.quantization["vth_mant"])
        self.lam = float(cfg["vth"]) / 2.0 ** self.scale_exp  # float current per a_in LSB
        self.vth_v = self.vth_mant << ACT_SHIFT  # threshold in membrane LSBs
        t = lambda a: torch.as_tensor(a).to(F64)  # noqa: E731
        self.syn = {}
        for name, c in mf.connections.items():
            entry = {"w": t(c.weight_mant), "exp": int(c.weight_exp), "b": t(c.bias), "kind": c.target_kind}
            if c.target_kind == "neuron":
                entry["bias_v"] = torch.as_tensor(c.bias_mant).to(torch.int64) << int(c.bias_exp)
            self.syn[name] = entry
        self.norms = {n: (t(b.arrays["gamma"]), t(b.arrays["beta"])) for n, b in mf.blocks.items()
                      if b.kind == "residual_layernorm"}
        e = mf.embeddings
        self.emb = {k: torch.as_tensor(v) for k, v in e.items()}
        self.cls_w, self.cls_b = t(mf.classifier_weight), t(mf.classifier_bias)

    @classmethod
    def from_model(cls, model, *, scale_exp: int | None = None) -> "FixedPointModel":
        """From a quantized torch ``SpikingBert`` (built in memory, as the exporter would write it)."""
        return cls(model_file_from_model(model, scale_exp=DEFAULT_SCALE_EXP if scale_exp is None else scale_exp))

    # ------------------------------------------------------------------ float64 blocks
    def layer_norm(self, z: torch.Tensor, name: str) -> torch.Tensor:
        gamma, beta = self.norms[name]
        mean = z.mean(-1, keepdim=True)
        var = (z - mean).square().mean(-1, keepdim=True)
        return (z - mean) / torch.sqrt(var + self.eps) * gamma + beta

    @staticmethod
    def gelu(z: torch.Tensor) -> torch.Tensor:
        return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))

    def to_grid(self, current: torch.Tensor, events: dict) -> torch.Tensor:
        """Float current -> integer a_in (weight units), round half to even, clamped to 18-bit signed."""
        a = round_half_even(current / self.lam)
        clamped = (a.abs() > BLOCK_OUT_MAX)
        if bool(clamped.any()):
            events["block_clamps"] = events.get("block_clamps", 0) + int(clamped.sum())
            a = a.clamp(-BLOCK_OUT_MAX, BLOCK_OUT_MAX)
        return a

    def embedding_current(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """float64 ``LayerNorm(word + position + type)`` (tables are float32 in the file)."""
        e = self.emb
        pos = torch.arange(input_ids.shape[1])
        x = e["word"][input_ids].to(F64) + e["position"][pos][None].to(F64) + e["token_type"][token_type_ids].to(F64)
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).square().mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * e["gamma"].to(F64) + e["beta"].to(F64)

    def block_input(self, name: str, spikes: torch.Tensor) -> torch.Tensor:
        """Float input of a host block from a Dense: ``(W_mant @ s) * 2**weight_exp * lam + b``."""
        s = self.syn[name]
        acc = spikes @ s["w"].T
        return acc * (2.0 ** s["exp"] * self.lam) + s["b"]

    # ------------------------------------------------------------------ neurons
    def fire(self, a: torch.Tensor, bias_v: torch.Tensor | None, events: dict) -> torch.Tensor:
        """Run one population over T steps: ``a`` (T, ...) integer a_in -> spikes (T, ...) float64
        (0/1; ``if_signed_pair``: on minus off spikes, the off neurons fed ``-a`` and ``-bias``)."""
        a = a.to(torch.int64)
        bias = torch.zeros((), dtype=torch.int64) if bias_v is None else bias_v
        if self.kind in SIGNED_NEURONS:
            return self._fire_lif(a, bias, True, events) - self._fire_lif(-a, -bias, True, events)
        return self._fire_lif(a, bias, self.kind == "if_subtract", events)

    def _fire_lif(self, a: torch.Tensor, bias: torch.Tensor, subtract: bool, events: dict) -> torch.Tensor:
        v = torch.zeros(a.shape[1:], dtype=torch.int64)
        out = torch.empty(a.shape, dtype=F64)
        th = self.vth_v
        for t in range(a.shape[0]):
            x = a[t] << ACT_SHIFT
            u = wrap24(x)
            if not torch.equal(u, x):
                events["u_wraps"] = events.get("u_wraps", 0) + int((u != x).sum())
            v = v + u + bias
            sat = v.abs() > UV_MAX
            if bool(sat.any()):
                events["v_saturations"] = events.get("v_saturations", 0) + int(sat.sum())
                v = v.clamp(-UV_MAX, UV_MAX)
            if subtract:
                s = v >= th
                v = v - s.to(torch.int64) * th
            else:
                s = v > th
                v = torch.where(s, torch.zeros_like(v), v)
            out[t] = s.to(F64)
        return out

    # ------------------------------------------------------------------ simulation
    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            token_type_ids: torch.Tensor | None = None, t_conv: int | None = None, *,
            record_trains: bool | list[str] = False) -> FixedPointResult:
        """Simulate ``t_conv`` steps; returns spike counts of every population and the logits."""
        input_ids = torch.as_tensor(input_ids)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.max_length:
            raise ValueError(f"input length {input_ids.shape[1]} exceeds max_length {self.max_length}")
        mask = torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask)
        types = torch.zeros_like(input_ids) if token_type_ids is None else torch.as_tensor(token_type_ids)
        T = int(t_conv if t_conv is not None else self.t_conv)
        if T <= 0:
            raise ValueError(f"t_conv must be positive, got {T}")
        events: dict[str, int] = {}
        counts: dict[str, torch.Tensor] = {}
        trains: dict[str, torch.Tensor] = {}
        mask_bias = ((1.0 - mask.to(F64)) * float(self.mf.blocks["layer0.attention"].attrs["mask_negative"])
                     )[:, None, None, :]

        def done(name: str, spikes: torch.Tensor) -> torch.Tensor:
            counts[name] = spikes.sum(0).to(torch.int64)
            if record_trains is True or (isinstance(record_trains, (list, tuple)) and name in record_trains):
                trains[name] = spikes.to(torch.int8)
            return spikes

        a_emb = self.to_grid(self.embedding_current(input_ids, types), events)
        x = done("embed", self.fire(a_emb.expand(T, *a_emb.shape), None, events))
        d = self.head_size
        for i in range(self.num_layers):
            p = f"layer{i}."
            k_syn, v_syn = self.syn[p + "key"], self.syn[p + "value"]
            s_k = done(p + "key", self.fire(dense_shift(x @ k_syn["w"].T, k_syn["exp"]), k_syn["bias_v"], events))
            s_v = done(p + "value", self.fire(dense_shift(x @ v_syn["w"].T, v_syn["exp"]), v_syn["bias_v"], events))
            att = self.mf.blocks[p + "attention"].attrs
            q = self.block_input(p + "query", x)
            heads = lambda z: z.unflatten(-1, (self.heads, d)).transpose(-2, -3)  # noqa: E731
            scores = heads(q) @ heads(s_k).transpose(-1, -2) * float(att["score_scale"]) + mask_bias
            e = torch.exp(scores - scores.amax(-1, keepdim=True))
            probs = e / e.sum(-1, keepdim=True)
            ctx = (probs @ heads(s_v)).transpose(-2, -3).flatten(-2)
            s_a = done(p + "context", self.fire(self.to_grid(ctx, events), None, events))
            z1 = self.block_input(p + "attn_out", s_a) + x
            s_1 = done(p + "attn_out", self.fire(self.to_grid(self.layer_norm(z1, p + "attn_norm"), events),
                                                 None, events))
            z2 = self.gelu(self.block_input(p + "intermediate", s_1))
            s_2 = done(p + "intermediate", self.fire(self.to_grid(z2, events), None, events))
            z3 = self.block_input(p + "output", s_2) + s_1
            x = done(p + "output", self.fire(self.to_grid(self.layer_norm(z3, p + "output_norm"), events),
                                             None, events))
        cls_asr = counts[f"layer{self.num_layers - 1}.output"][:, 0].to(F64) / T
        logits = cls_asr @ self.cls_w.T + self.cls_b
        return FixedPointResult(counts=counts, logits=logits, t_conv=T, events=events,
                                trains=trains if record_trains else None)
