"""The plain-numpy parameter bundle the Lava graph is built from (no torch).

:class:`LavaModelParams` holds the configuration fields the graph needs and, per encoder layer,
the synapses (``W`` as ``(out, in)`` arrays and ``b``) and LayerNorm parameters, plus the
classifier. The embedding tables are optional: the Lava graph receives the embedding *current*
``E`` (L x H per sentence) as input data, computed outside the graph (by the torch model, or
torch-free by :meth:`EmbeddingParams.current`).

Producers: :func:`params_from_model` (a torch ``SpikingBert``, duck-typed so this module never
imports torch) and, later, the HDF5 model-file reader, which must produce the same dataclass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lava_spikingbert.config import NEURON_KINDS
from lava_spikingbert.lava import kernels

# Mirrors lava_spikingbert.encoder.MASK_NEGATIVE (additive attention mask of padded keys);
# a test checks the two agree (this module may not import the torch encoder).
MASK_NEGATIVE = -10000.0
LAYER_POPULATIONS = ("key", "value", "context", "attn_out", "intermediate", "output")
LAYER_LINEARS = ("query", "key", "value", "attn_out", "intermediate", "output")
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
    """One spiking encoder layer (see ``lava_spikingbert.encoder.SpikingEncoderLayer``)."""

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


def params_from_model(model) -> LavaModelParams:
    """Convert a torch ``SpikingBert`` (duck-typed; torch is not imported here) to numpy params.

    Synapses are taken through ``synaptic_weight()``, i.e. after the model's weight quantizer.
    """
    cfg = model.config
    if getattr(model, "feedback", None) is not None:
        raise NotImplementedError("the Lava graph has no last-output -> embed feedback edge (config.feedback)")

    def arr(t) -> np.ndarray:
        return t.detach().cpu().float().numpy()

    def lin(m) -> LinearParams:
        w = m.synaptic_weight() if hasattr(m, "synaptic_weight") else m.weight
        return LinearParams(arr(w), None if m.bias is None else arr(m.bias))

    def norm(m) -> NormParams:
        return NormParams(arr(m.weight), arr(m.bias))

    layers = [LayerParams(query=lin(l.query), key=lin(l.key), value=lin(l.value), attn_out=lin(l.attn_out),
                          attn_norm=norm(l.attn_norm), intermediate=lin(l.intermediate), output=lin(l.output),
                          output_norm=norm(l.output_norm)) for l in model.layers]
    e = model.embeddings
    emb = EmbeddingParams(word=arr(e.word_embeddings.weight), position=arr(e.position_embeddings.weight),
                          token_type=arr(e.token_type_embeddings.weight), norm=norm(e.LayerNorm))
    return LavaModelParams(
        hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers, vth=float(cfg.vth),
        neuron=cfg.neuron, t_conv=cfg.t_conv, layer_norm_eps=float(cfg.layer_norm_eps), layers=layers,
        classifier=lin(model.classifier), num_labels=cfg.num_labels, problem_type=cfg.problem_type,
        max_length=cfg.max_length, embeddings=emb)


def attention_mask_bias(attention_mask: np.ndarray) -> np.ndarray:
    """0/1 mask -> float32 additive bias ``(1 - m) * MASK_NEGATIVE``, as the torch model's
    ``mask_bias``: (B, L) key masks, or (B, L, L) query x key masks (packed sentences)."""
    m = np.asarray(attention_mask)
    if m.ndim not in (2, 3) or (m.ndim == 3 and m.shape[1] != m.shape[2]):
        raise ValueError(f"attention_mask must be (batch, length) or (batch, length, length), got shape {m.shape}")
    if not np.isin(m, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 and 1")
    return ((1.0 - m.astype(np.float32)) * np.float32(MASK_NEGATIVE)).astype(np.float32)
