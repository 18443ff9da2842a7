"""Export a loihi-profile student (``LoihiSpikingMixer``) to a profile-"loihi" model file.

The synapse weights are quantized by the torch model's own int8 quantizer
(``model.quantizers.make_quantizer("int8", vth)``, the grid ``LoihiSpikingMixer.set_weights("int8")``
trains against): ``Q(W) = mantissa * 2**exponent * vth``, one exponent per matrix. The float weights
stored in the file are exactly these values, so the torch int8 model and the file agree.

Fixed point, per population ``p`` (integer unit ``vth / 2**s_p``, a power of two):

* ``vth_mant = 2**s_p``; every incoming synapse gets ``weight_exp = exponent + s_p``, so one spike
  adds exactly ``Q(W) / vth`` thresholds (no rounding of the weights beyond the int8 grid);
* ``s_p`` is the largest exponent with the worst-case dendritic sum (every presynaptic neuron
  spiking in one step, all incoming synapses) within 16 bits, every ``weight_exp <= 7``, the
  threshold within 17 bits and the bias within a 13-bit mantissa with ``bias_exp <= 7``;
* bias: ``round(b / vth * 2**(s_p + 6))`` membrane units (the LIF adds the bias without the
  6-bit shift that ``a_in`` and ``vth`` get) as ``bias_mant << bias_exp`` with the smallest
  ``bias_exp`` that fits;
* the input population (``embed``, no bias, constant current per window) uses
  ``s = INPUT_SCALE_EXP``: the host rounds ``I / vth * 2**s`` and saturates it to 16 bits, which
  changes no spike (a constant current above the threshold fires every step, one below 0 never).

``export_loihi`` refuses (one line naming the population or synapse and the value) a model
whose integer form violates the Loihi 2 ranges (``contract.model_file.loihi_range_problems``).
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np
import torch

from hw_export.export import tokenizer_files
from lava_spikingbert.contract.constants import (A_IN_MAX, BIAS_EXP_MAX, BIAS_EXP_MIN, BIAS_MANT_MAX, BIAS_MANT_MIN,
                                                 EMBED, VTH_MANT_MAX, WEIGHT_EXP_MAX)
from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.model_file import (LOIHI_PRECISIONS, LoihiModelFile, LoihiPopulation, LoihiSynapse,
                                                  loihi_layout, loihi_margin, loihi_range_problems, read_model_file,
                                                  write_model_file)
from lava_spikingbert.model.loihi import LoihiConfig, LoihiSpikingMixer
from lava_spikingbert.model.quantizers import make_quantizer
from lava_spikingbert.model.student import load_student, profile_of

# the input population's integer unit: vth = 2**14 leaves the 16-bit a_in room for currents up to ~2 vth
INPUT_SCALE_EXP = 14
VTH_SCALE_EXP_MAX = int(math.floor(math.log2(VTH_MANT_MAX)))


class LoihiExportError(SpikingBertError):
    """The model cannot be expressed in the Loihi 2 ranges (the message names population/synapse and value)."""


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def synapse_tensors(model: LoihiSpikingMixer) -> dict[str, torch.Tensor]:
    """The latent float weight of every synapse, by the file's synapse name, in the file's shape
    ((d, k) taps, (out, in) matrices, (d,) residual gains)."""
    out = {}
    for i, layer in enumerate(model.layers):
        p = f"layer{i}."
        out[p + "mix"] = layer.mix_weight[:, 0, :]
        out[p + "fc1"] = layer.fc1.weight
        out[p + "fc2"] = layer.fc2.weight
        out[p + "res"] = layer.res_weight
    return out


def population_biases(model: LoihiSpikingMixer) -> dict[str, np.ndarray]:
    d = model.config.hidden_size
    out = {EMBED: np.zeros(d, np.float32)}
    for i, layer in enumerate(model.layers):
        out[f"layer{i}.mix"] = _np(layer.mix_bias)
        out[f"layer{i}.hidden"] = _np(layer.fc1.bias)
        out[f"layer{i}.out"] = _np(layer.fc2.bias)
    return out


def _bias_fixed(bias: np.ndarray, vth: float, scale_exp: int) -> tuple[np.ndarray, int] | None:
    """(13-bit mantissas, bias_exp) of ``bias`` at integer unit ``vth / 2**scale_exp``, or None."""
    total = np.asarray(bias, np.float64) / vth * 2.0 ** (scale_exp + 6)
    for exp in range(BIAS_EXP_MIN, BIAS_EXP_MAX + 1):
        mant = np.rint(total / 2.0 ** exp)
        if not mant.size or (mant.min() >= BIAS_MANT_MIN and mant.max() <= BIAS_MANT_MAX):
            return mant.astype(np.int64), exp
    return None


def choose_scale_exp(incoming: list[tuple[LoihiSynapse, np.ndarray]], bias: np.ndarray, vth: float) -> int:
    """The largest population exponent that keeps the worst-case a_in in 16 bits, every weight_exp
    <= 7, the threshold in 17 bits and the bias in 13 bits (see the module docstring)."""
    worst = 0.0
    top_exp = -10 ** 6
    per_neuron = None
    for syn, mant in incoming:
        row = np.abs(mant).sum(-1) if syn.kind != "residual" else np.abs(mant)
        contrib = row.astype(np.float64) * 2.0 ** syn.exponent
        per_neuron = contrib if per_neuron is None else per_neuron + contrib
        if np.any(mant):
            top_exp = max(top_exp, syn.exponent)
    if per_neuron is not None:
        worst = float(per_neuron.max(initial=0.0))
    s = VTH_SCALE_EXP_MAX
    if worst > 0:
        s = min(s, int(math.floor(math.log2(A_IN_MAX / worst))))
    if top_exp > -10 ** 6:
        s = min(s, WEIGHT_EXP_MAX - top_exp)
    while s > 0 and _bias_fixed(bias, vth, s) is None:
        s -= 1
    return s


def loihi_file_from_model(model: LoihiSpikingMixer, precision: str = "int8", *, tokenizer_files: dict | None = None,
                          provenance: dict | None = None) -> LoihiModelFile:
    """The in-memory loihi model file of ``model`` (int8: quantized with the model's quantizer)."""
    if precision not in LOIHI_PRECISIONS:
        raise LoihiExportError(f"--precision {precision}: the loihi profile exports {LOIHI_PRECISIONS}")
    c = model.config
    if c.weights != "fp32" and precision != c.weights and precision != "fp32":
        raise LoihiExportError(f"the model was trained with {c.weights} weights: export it with --precision {c.weights}")
    vth = float(c.vth)
    cfg = {k: v for k, v in c.to_dict().items() if k != "extra"}
    cfg.update(weights=precision, margin=c.margin)
    want_margin = loihi_margin(c.num_layers, c.kernel_size, c.mixing, c.dilations)
    if c.margin != want_margin:  # the two sides of the contract agree
        raise LoihiExportError(f"config margin {c.margin} differs from the model file's convention {want_margin}")
    pops_l, syns_l = loihi_layout(cfg)
    quant = precision == "int8"
    quantizer = make_quantizer("int8", vth) if quant else None
    tensors = synapse_tensors(model)
    synapses: dict[str, LoihiSynapse] = {}
    for want in syns_l:
        w = tensors[want["name"]]
        if quant:
            iw = quantizer.integer(w)
            mant = iw.mantissa.numpy().astype(np.int64)
            weight = iw.dequantize(torch.float32).numpy()
            synapses[want["name"]] = LoihiSynapse(
                name=want["name"], source=want["source"], target=want["target"], kind=want["kind"],
                delay=want["delay"], weight=weight, weight_mant=mant, exponent=int(iw.exponent),
                sign_mode=iw.sign_mode, dilation=want.get("dilation", 1))
        else:
            synapses[want["name"]] = LoihiSynapse(
                name=want["name"], source=want["source"], target=want["target"], kind=want["kind"],
                delay=want["delay"], weight=_np(w), dilation=want.get("dilation", 1))
    biases = population_biases(model)
    pops: dict[str, LoihiPopulation] = {}
    T = int(c.t_conv)
    for want in pops_l:
        pop = LoihiPopulation(name=want["name"], width=want["width"], depth=want["depth"], layer=want["layer"],
                              vth=vth, bias=biases[want["name"]], reset_interval=T,
                              reset_offset=(1 + want["depth"]) % T)
        if quant:
            if want["name"] == EMBED:
                s = INPUT_SCALE_EXP
            else:
                incoming = [(syn, syn.weight_mant) for syn in synapses.values() if syn.target == want["name"]]
                s = choose_scale_exp(incoming, pop.bias, vth)
            fixed = _bias_fixed(pop.bias, vth, s)
            if fixed is None:
                b = float(np.abs(pop.bias).max())
                raise LoihiExportError(f"population {want['name']}: bias {b:.6g} does not fit a 13-bit mantissa with "
                                       f"bias_exp <= {BIAS_EXP_MAX} at any threshold scale")
            pop.scale_exp, pop.vth_mant = s, 2 ** s
            pop.bias_mant, pop.bias_exp = fixed
        pops[want["name"]] = pop
    if quant:
        for syn in synapses.values():
            syn.weight_exp = syn.exponent + pops[syn.target].scale_exp
    host = {"word": _np(model.word_embeddings.weight), "position": _np(model.position_embeddings.weight),
            "token_type": _np(model.token_type_embeddings.weight), "gamma": _np(model.embed_norm.weight),
            "beta": _np(model.embed_norm.bias), "weight": _np(model.input_map.weight),
            "bias": _np(model.input_map.bias)}
    prov = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "generator": "lava-spikingbert hw_export.loihi_export", "torch": torch.__version__,
            "source_weights": c.weights, "quantizer": "model.quantizers.make_quantizer('int8', vth)" if quant else None,
            "extra": c.extra}
    prov.update(provenance or {})
    mf = LoihiModelFile(precision=precision, config=cfg, host_input=host, populations=pops, synapses=synapses,
                        classifier_weight=_np(model.classifier.weight), classifier_bias=_np(model.classifier.bias),
                        input_scale_exp=INPUT_SCALE_EXP if quant else None, tokenizer_files=tokenizer_files or {},
                        provenance=prov)
    if quant:
        problems = loihi_range_problems(mf)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise LoihiExportError(f"Loihi 2 range check: {problems[0]}{more}")
    return mf


def export_loihi(model, precision: str, out: str | Path) -> LoihiModelFile:
    """Write a loihi model file of ``model`` (a checkpoint directory or a ``LoihiSpikingMixer``);
    returns the file as read back through the validating reader."""
    model_dir = None
    if isinstance(model, (str, Path)):
        model_dir = Path(model)
        model = load_student(model_dir)
        if not isinstance(model, LoihiSpikingMixer):
            raise LoihiExportError(f"{model_dir}: a {profile_of(model)}-profile checkpoint, not loihi")
    mf = loihi_file_from_model(model, precision, tokenizer_files=tokenizer_files(model_dir),
                               provenance={"source": str(model_dir) if model_dir else None})
    write_model_file(out, mf)
    return read_model_file(out)


def model_from_loihi_file(mf: LoihiModelFile | str | Path) -> LoihiSpikingMixer:
    """A torch ``LoihiSpikingMixer`` whose synapses are exactly the file's float weights (fp32 mode)."""
    if not isinstance(mf, LoihiModelFile):
        mf = read_model_file(mf)
    cfg = {k: v for k, v in mf.config.items() if k != "margin"}
    cfg["weights"] = "fp32"  # the stored weights are already the quantized values
    model = LoihiSpikingMixer(LoihiConfig.from_dict(cfg))
    t = torch.from_numpy
    h = mf.host_input
    with torch.no_grad():
        model.word_embeddings.weight.copy_(t(h["word"]))
        model.position_embeddings.weight.copy_(t(h["position"]))
        model.token_type_embeddings.weight.copy_(t(h["token_type"]))
        model.embed_norm.weight.copy_(t(h["gamma"]))
        model.embed_norm.bias.copy_(t(h["beta"]))
        model.input_map.weight.copy_(t(h["weight"]))
        model.input_map.bias.copy_(t(h["bias"]))
        for i, layer in enumerate(model.layers):
            p = f"layer{i}."
            layer.mix_weight.copy_(t(mf.synapses[p + "mix"].weight)[:, None, :])
            layer.fc1.weight.copy_(t(mf.synapses[p + "fc1"].weight))
            layer.fc2.weight.copy_(t(mf.synapses[p + "fc2"].weight))
            layer.res_weight.copy_(t(mf.synapses[p + "res"].weight))
            layer.mix_bias.copy_(t(mf.populations[p + "mix"].bias))
            layer.fc1.bias.copy_(t(mf.populations[p + "hidden"].bias))
            layer.fc2.bias.copy_(t(mf.populations[p + "out"].bias))
        model.classifier.weight.copy_(t(mf.classifier_weight))
        model.classifier.bias.copy_(t(mf.classifier_bias))
    return model.eval()
