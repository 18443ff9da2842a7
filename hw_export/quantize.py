"""Post-training quantization and the integer (Loihi / Lava fixed-point) view of every synapse.

* :func:`quantize_model` attaches the quantizers of ``lava_spikingbert.model.quantizers`` to a copy of a
  full-precision model (PTQ; the latent weights are kept, so the result can also be fine-tuned
  with quantization-aware KD);
* :func:`connections_from_model` gives every synapse as a schema :class:`~lava_spikingbert.contract.model_file.Connection`:
  float weights for fp32, else the Lava Dense mantissas, the weight exponent relative to the
  fixed-point threshold, the sign mode, the scale, and for neuron-bound synapses the LIF bias
  mantissa/exponent;
* :func:`integer_view` is the :class:`~lava_spikingbert.contract.model_file.IntegerView` of a quantized model.

Fixed-point units (docs/fixed_point.md): ``vth_mant = 2**p`` (``p = scale_exp``). One ``a_in`` LSB
("weight unit") is the float current ``lam = vth / 2**p``; the membrane LSB is ``lam / 64``. A
quantized weight ``W = m * 2**e * vth`` is the Lava Dense weight ``m`` with ``weight_exp = e + p``.
A bias ``b`` on a neuron is ``b / lam * 64`` membrane LSBs = ``bias_mant << bias_exp``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from lava_spikingbert.contract.constants import (BIAS_EXP_MAX, BIAS_MANT_MAX, BIAS_MANT_MIN, DEFAULT_SCALE_EXP, LAYER_SYNAPSES,
                                                 QUANTIZED_MODES, WEIGHT_MODES)
from lava_spikingbert.contract.model_file import Connection, IntegerView, IntSynapse, ModelFileError, graph_layout
from lava_spikingbert.model.quantizers import attach_weight_quantizers, integer_weights


def quantize_model(model, mode: str, *, inplace: bool = False):
    """Post-training quantization: ``model`` (a copy unless ``inplace``) with ``mode``'s quantizers.

    A model already quantized with another mode is refused (its latent weights were trained for
    that grid); quantizing to its own mode is a no-op; ``"fp32"`` removes the quantizers.
    """
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown precision {mode!r}; choose one of {WEIGHT_MODES}")
    current = model.config.weights
    if current != "fp32" and mode not in ("fp32", current):
        raise ValueError(f"the model was trained with {current} weights; quantize to {current} (or fp32), "
                         f"not {mode}")
    m = model if inplace else copy.deepcopy(model)
    attach_weight_quantizers(m, mode)
    return m


def bias_to_fixed(bias: np.ndarray, vth: float, scale_exp: int) -> tuple[np.ndarray, int, int]:
    """Float biases -> (``bias_mant`` int16, shared ``bias_exp``, number clipped).

    In membrane LSBs the bias is ``b / vth * 2**(scale_exp + 6)``; ``bias_exp`` is the smallest
    exponent in 0..7 whose mantissas (round half to even) fit 13 bits; beyond that they are clipped.
    """
    b = np.asarray(bias, dtype=np.float64) / float(vth) * 2.0 ** (scale_exp + 6)
    for e in range(0, BIAS_EXP_MAX + 1):
        m = np.round(b / 2.0 ** e)
        if m.size == 0 or (m.min() >= BIAS_MANT_MIN and m.max() <= BIAS_MANT_MAX):
            return m.astype(np.int16), e, 0
    clipped = int(np.sum((m < BIAS_MANT_MIN) | (m > BIAS_MANT_MAX)))
    return np.clip(m, BIAS_MANT_MIN, BIAS_MANT_MAX).astype(np.int16), BIAS_EXP_MAX, clipped


def _synapse_modules(model) -> dict[str, torch.nn.Module]:
    if getattr(model, "feedback", None) is not None:
        raise ModelFileError("models with last-output -> embed feedback (config.feedback) cannot be exported: "
                             "the model file and the Lava graph have no feedback edge")
    out = {}
    for i, layer in enumerate(model.layers):
        for name in LAYER_SYNAPSES:
            out[f"layer{i}.{name}"] = getattr(layer, name)
    return out


def connections_from_model(model, precision: str | None = None, *,
                           scale_exp: int = DEFAULT_SCALE_EXP) -> dict[str, Connection]:
    """Every synapse of ``model`` as a schema ``Connection`` (in schedule order).

    ``precision`` defaults to ``model.config.weights``. For ``fp32`` the float weights as used by
    the model are stored (``synaptic_weight()``: a quantized model's dequantized weights).
    """
    precision = precision or model.config.weights
    if precision in QUANTIZED_MODES and model.config.weights != precision:
        raise ValueError(f"model weights are {model.config.weights}; quantize_model(model, {precision!r}) first")
    cfg = model.config.to_dict()
    _, layout, _ = graph_layout(cfg)
    modules = _synapse_modules(model)
    vth = float(model.config.vth)
    out: dict[str, Connection] = {}
    for want in layout:
        lin = modules[want["name"]]
        bias = lin.bias.detach().cpu().float().numpy().copy()
        if precision not in QUANTIZED_MODES:
            w = lin.synaptic_weight().detach().cpu().float().numpy().copy()
            out[want["name"]] = Connection(name=want["name"], source=want["source"], target=want["target"],
                                           target_kind=want["target_kind"], weight=w, bias=bias, mode=precision)
            continue
        iw = integer_weights(lin)
        mant = iw.mantissa.numpy().astype(np.int16)
        scale = iw.scale
        w = mant.astype(np.float32) * np.float32(scale)
        used = lin.synaptic_weight().detach().cpu().float().numpy()
        if not np.array_equal(w, used):  # the integer form must be exactly what the model simulates
            raise AssertionError(f"{want['name']}: integer view differs from the model's quantized weights")
        c = Connection(name=want["name"], source=want["source"], target=want["target"],
                       target_kind=want["target_kind"], weight=w, bias=bias, mode=precision, weight_mant=mant,
                       exponent=iw.exponent, weight_exp=iw.exponent + scale_exp, sign_mode=iw.sign_mode, scale=scale,
                       alpha=iw.alpha, alpha_raw=iw.alpha_raw)
        if want["target_kind"] == "neuron":
            c.bias_mant, c.bias_exp, c.bias_clipped = bias_to_fixed(bias, vth, scale_exp)
        out[want["name"]] = c
    return out


def integer_view(model, *, scale_exp: int = DEFAULT_SCALE_EXP) -> IntegerView:
    """The integer view of a quantized model (what the model file stores for it)."""
    if model.config.weights not in QUANTIZED_MODES:
        raise ValueError("integer_view needs a quantized model (quantize_model(model, 'int8'|'ternary'|'binary'))")
    syn = {n: IntSynapse(name=n, source=c.source, target=c.target, target_kind=c.target_kind,
                         weight_mant=c.weight_mant, exponent=c.exponent, weight_exp=c.weight_exp,
                         sign_mode=c.sign_mode, scale=c.scale, bias=c.bias, bias_mant=c.bias_mant, bias_exp=c.bias_exp)
           for n, c in connections_from_model(model, scale_exp=scale_exp).items()}
    return IntegerView(scale_exp=scale_exp, vth_mant=2 ** scale_exp, vth=float(model.config.vth), synapses=syn)
