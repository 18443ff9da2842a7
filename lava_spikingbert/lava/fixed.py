"""Fixed-point (``fixed_pt``) parameters of the Lava graph, built from a quantized model file
(``lava_spikingbert.contract.model_file.ModelFile``, integer view) without torch.

The semantics are docs/fixed_point.md (reference ``hw_export.fixed_point.FixedPointModel``):

* TokenLinear into a neuron (key, value): ``a = (W_mant @ s) << weight_exp`` (floor for a negative
  exponent), neuron bias ``bias_mant << bias_exp`` (membrane LSBs);
* TokenLinear into a host block (query, attn_out, intermediate, output): the float64 input
  ``z = acc * 2**weight_exp * lam + b``;
* blocks (embedding, attention, residual LayerNorm, GELU) in float64, output ``Q(I)``;
* neurons: Lava LIF units (``a << 6`` with the 24-bit u wrap, ``vth_mant << 6``, 24-bit v saturation).

``fixed_params(mf)`` returns a :class:`LavaModelParams` whose ``weight`` arrays hold the integer
mantissas (exact in float32) and whose ``extra["fixed"]`` holds the per-synapse exponents, the
neuron biases, the current unit ``lam`` and ``vth_mant``; ``builder.build_network`` builds the
fixed_pt graph from it.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

from lava_spikingbert.contract.constants import BLOCK_OUT_MAX, LAYER_SYNAPSES
from lava_spikingbert.contract.model_file import ModelFile, ModelFileError
from lava_spikingbert.lava.params import LavaModelParams, LinearParams, params_from_file


def to_grid(current: np.ndarray, lam: float) -> np.ndarray:
    """``Q(I) = clamp(round_half_even(I / lam), +-(2**17 - 1))`` as float64 integers."""
    return np.clip(np.rint(np.asarray(current, dtype=np.float64) / lam), -BLOCK_OUT_MAX, BLOCK_OUT_MAX)


def layer_norm64(z: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = z.mean(-1, keepdims=True)
    var = np.square(z - mean).mean(-1, keepdims=True)
    return (z - mean) / np.sqrt(var + eps) * np.asarray(gamma, np.float64) + np.asarray(beta, np.float64)


def gelu64(z: np.ndarray) -> np.ndarray:
    return 0.5 * z * (1.0 + erf(z / np.sqrt(2.0)))


def wrap24(x: np.ndarray) -> np.ndarray:
    """Lava LIF's u wrap (``AbstractPyLifModelFixed.subthr_dynamics``)."""
    m = 2 ** 23
    w = np.where(x > m, x - 2 * m, x)
    return np.where(w <= -m, x + 2 * m, w)


def fixed_params(mf: ModelFile) -> LavaModelParams:
    """Quantized ``ModelFile`` -> ``LavaModelParams`` (mantissa weights) with ``extra["fixed"]``."""
    iv = mf.integer_view()  # raises ModelFileError for fp32 files
    params = params_from_file(mf)
    if int(iv.vth_mant) << 6 >= 2 ** 23:
        raise ModelFileError(f"{mf.path or 'model file'}: vth_mant {iv.vth_mant} out of the 17-bit range")
    syn = {}
    for i, layer in enumerate(params.layers):
        for name in LAYER_SYNAPSES:
            s = iv.synapses[f"layer{i}.{name}"]
            setattr(layer, name, LinearParams(np.asarray(s.weight_mant), s.bias))
            entry = {"weight_exp": int(s.weight_exp), "target_kind": s.target_kind}
            if s.target_kind == "neuron":
                if s.bias_mant is None or s.bias_exp is None:
                    raise ModelFileError(f"{mf.path or 'model file'}: layer{i}.{name} has no bias_mant/bias_exp")
                entry.update(bias_mant=np.asarray(s.bias_mant, np.int64), bias_exp=int(s.bias_exp))
            syn[f"layer{i}.{name}"] = entry
    score_scale = {i: float(mf.blocks[f"layer{i}.attention"].attrs["score_scale"]) for i in range(mf.num_layers)}
    params.extra["fixed"] = {"lam": float(iv.current_unit), "vth_mant": int(iv.vth_mant), "synapses": syn,
                             "score_scale": score_scale}
    return params


def embedding_current64(embeddings: dict, input_ids: np.ndarray, token_type_ids: np.ndarray | None,
                        eps: float) -> np.ndarray:
    """float64 ``LN(word[ids] + position + type)`` from the file's float32 tables (docs/fixed_point.md §2.1)."""
    ids = np.asarray(input_ids)
    types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
    e = embeddings
    x = (e["word"][ids].astype(np.float64) + e["position"][np.arange(ids.shape[1])][None].astype(np.float64)
         + e["token_type"][types].astype(np.float64))
    return layer_norm64(x, e["gamma"].astype(np.float64), e["beta"].astype(np.float64), eps)


def embedding_grid(mf_or_embeddings, input_ids, token_type_ids, eps: float, lam: float) -> np.ndarray:
    """The embed population's integer input ``Q(E)`` (float64 integers), (B, L, H)."""
    emb = getattr(mf_or_embeddings, "embeddings", mf_or_embeddings)
    return to_grid(embedding_current64(emb, input_ids, token_type_ids, eps), lam)
