"""The plain-numpy parameter bundle the Lava graph is built from (no torch).

:class:`LavaModelParams` holds the configuration fields the graph needs and, per encoder layer,
the synapses (``W`` as ``(out, in)`` arrays and ``b``) and LayerNorm parameters, plus the
classifier and the attention-mask value. The embedding tables are optional: the Lava graph
receives the embedding *current* ``E`` (L x H per sentence) as input data, computed outside the
graph (torch-free by :meth:`EmbeddingParams.current`).

Producer on the run path: :func:`params_from_file` (a model file's float weights; the fixed_pt
graph's integer parameters come from ``fixed.fixed_params``). The parity tooling builds the same
bundle from a torch model (``lava_spikingbert.parity.params_from_model``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lava_spikingbert.contract.constants import MASK_NEGATIVE, NEURON_KINDS
from lava_spikingbert.contract.model_file import ModelFile
from lava_spikingbert.lava import kernels

LAYER_NORMS = ("attn_norm", "output_norm")


def _f32(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: non-finite values")
    return np.ascontiguousarray(arr)


@dataclass
class LinearParams:
    """``y = W x + b`` with ``W`` of shape (out, in)."""

    weight: np.ndarray
    bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.weight = _f32(self.weight, "weight")
        if self.weight.ndim != 2:
            raise ValueError(f"weight must be (out, in), got shape {self.weight.shape}")
        if self.bias is not None:
            self.bias = _f32(self.bias, "bias")
            if self.bias.shape != (self.weight.shape[0],):
                raise ValueError(f"bias shape {self.bias.shape} != ({self.weight.shape[0]},)")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)  # type: ignore[return-value]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return kernels.linear(x, self.weight, self.bias)


@dataclass
class NormParams:
    """LayerNorm ``gamma * (x - mean) / sqrt(var + eps) + beta`` over the last axis."""

    gamma: np.ndarray
    beta: np.ndarray

    def __post_init__(self) -> None:
        self.gamma = _f32(self.gamma, "gamma")
        self.beta = _f32(self.beta, "beta")
        if self.gamma.ndim != 1 or self.gamma.shape != self.beta.shape:
            raise ValueError(f"gamma/beta must be equal 1-d shapes, got {self.gamma.shape}, {self.beta.shape}")


@dataclass
class LayerParams:
    """One spiking encoder layer (see ``lava_spikingbert.model.encoder.SpikingEncoderLayer``)."""

    query: LinearParams
    key: LinearParams
    value: LinearParams
    attn_out: LinearParams
    attn_norm: NormParams
    intermediate: LinearParams
    output: LinearParams
    output_norm: NormParams


@dataclass
class EmbeddingParams:
    """BERT embedding tables; ``current`` is the embed population's constant input current."""

    word: np.ndarray      # (vocab, H)
    position: np.ndarray  # (max_positions, H)
    token_type: np.ndarray  # (type_vocab, H)
    norm: NormParams

    def __post_init__(self) -> None:
        self.word = _f32(self.word, "word")
        self.position = _f32(self.position, "position")
        self.token_type = _f32(self.token_type, "token_type")

    def current(self, input_ids: np.ndarray, token_type_ids: np.ndarray | None = None,
                eps: float = 1e-12) -> np.ndarray:
        """(B, L) ids -> (B, L, H) float32 ``LayerNorm(word + position + type)``. Equal to the
        torch model's ``embedding_current`` within float32 rounding (not bit-exact)."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {ids.shape}")
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
        x = self.word[ids] + self.position[np.arange(ids.shape[1])][None] + self.token_type[types]
        return kernels.layer_norm(x, self.norm.gamma, self.norm.beta, eps)


@dataclass
class LavaModelParams:
    """Everything the Lava graph needs, as numpy arrays (float32)."""

    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    num_hidden_layers: int
    vth: float
    neuron: str
    t_conv: int
    layer_norm_eps: float
    layers: list[LayerParams]
    classifier: LinearParams
    num_labels: int = 2
    problem_type: str = "classification"
    max_length: int | None = None
    embeddings: EmbeddingParams | None = None
    mask_negative: float = MASK_NEGATIVE  # additive attention bias of a masked key (the model file's value)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        h, f = self.hidden_size, self.intermediate_size
        for name in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "t_conv",
                     "num_labels"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"LavaModelParams.{name} must be a positive int, got {v!r}")
        if h % self.num_attention_heads:
            raise ValueError(f"hidden_size {h} not divisible by num_attention_heads {self.num_attention_heads}")
        if self.neuron not in NEURON_KINDS:
            raise ValueError(f"neuron must be one of {NEURON_KINDS}, got {self.neuron!r}")
        if not (self.vth > 0 and math.isfinite(self.vth)):
            raise ValueError(f"vth must be a positive finite number, got {self.vth!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if len(self.layers) != self.num_hidden_layers:
            raise ValueError(f"{len(self.layers)} layers given, num_hidden_layers={self.num_hidden_layers}")
        want = {"query": (h, h), "key": (h, h), "value": (h, h), "attn_out": (h, h),
                "intermediate": (f, h), "output": (h, f)}
        for i, layer in enumerate(self.layers):
            for name, shape in want.items():
                lin = getattr(layer, name)
                if lin.shape != shape:
                    raise ValueError(f"layer {i} {name}: weight shape {lin.shape}, expected {shape} (out, in)")
                if lin.bias is None:
                    raise ValueError(f"layer {i} {name}: bias missing")
            for name in LAYER_NORMS:
                if getattr(layer, name).gamma.shape != (h,):
                    raise ValueError(f"layer {i} {name}: gamma shape {getattr(layer, name).gamma.shape} != ({h},)")
        if self.classifier.shape != (self.num_labels, h):
            raise ValueError(f"classifier weight shape {self.classifier.shape} != ({self.num_labels}, {h})")

    def logits_from_asr(self, cls_asr: np.ndarray) -> np.ndarray:
        """The classification head on the last output population's [CLS] ASR (B, H) -> (B, labels)."""
        return self.classifier(cls_asr)


def params_from_file(mf: ModelFile) -> LavaModelParams:
    """The float parameters of a model file (quantized weights as their float values)."""
    cfg = mf.config

    def lin(name: str) -> LinearParams:
        c = mf.connections[name]
        return LinearParams(c.weight, c.bias)

    def norm(name: str) -> NormParams:
        b = mf.blocks[name]
        return NormParams(b.arrays["gamma"], b.arrays["beta"])

    layers = []
    for i in range(mf.num_layers):
        p = f"layer{i}."
        layers.append(LayerParams(query=lin(p + "query"), key=lin(p + "key"), value=lin(p + "value"),
                                  attn_out=lin(p + "attn_out"), attn_norm=norm(p + "attn_norm"),
                                  intermediate=lin(p + "intermediate"), output=lin(p + "output"),
                                  output_norm=norm(p + "output_norm")))
    e = mf.embeddings
    emb = EmbeddingParams(word=e["word"], position=e["position"], token_type=e["token_type"],
                          norm=NormParams(e["gamma"], e["beta"]))
    return LavaModelParams(
        hidden_size=int(cfg["hidden_size"]), num_attention_heads=int(cfg["num_attention_heads"]),
        intermediate_size=int(cfg["intermediate_size"]), num_hidden_layers=int(cfg["num_hidden_layers"]),
        vth=float(cfg["vth"]), neuron=str(cfg["neuron"]), t_conv=int(cfg["t_conv"]),
        layer_norm_eps=float(cfg["layer_norm_eps"]), layers=layers,
        classifier=LinearParams(mf.classifier_weight, mf.classifier_bias),
        num_labels=int(cfg["num_labels"]), problem_type=str(cfg["problem_type"]),
        max_length=int(cfg["max_length"]), embeddings=emb, mask_negative=mf.mask_negative)


def attention_mask_bias(attention_mask: np.ndarray, mask_negative: float = MASK_NEGATIVE) -> np.ndarray:
    """0/1 mask -> float32 additive bias ``(1 - m) * mask_negative``, as the torch model's
    ``mask_bias``: (B, L) key masks, or (B, L, L) query x key masks (packed sentences)."""
    m = np.asarray(attention_mask)
    if m.ndim not in (2, 3) or (m.ndim == 3 and m.shape[1] != m.shape[2]):
        raise ValueError(f"attention_mask must be (batch, length) or (batch, length, length), got shape {m.shape}")
    if not np.isin(m, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 and 1")
    return ((1.0 - m.astype(np.float32)) * np.float32(mask_negative)).astype(np.float32)
