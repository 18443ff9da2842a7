"""Export a trained spiking student to the lava-spikingbert model file (and a netx head file).

``export_model(model_dir, precision, out)``: load the checkpoint, quantize it (post-training) when
``precision`` is a quantized mode and the model is fp32, build the :class:`~lava_spikingbert.contract.model_file.ModelFile`
(config, tokenizer files, embeddings, populations, connections, blocks, classifier, fixed-point
parameters), write it atomically, read it back through the validating reader and return that.
``model_from_file`` rebuilds a torch ``SpikingBert`` that simulates exactly the file's weights.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import torch

from hw_export.netx_head import head_chain, write_netx_head
from hw_export.quantize import connections_from_model, quantize_model
from lava_spikingbert.contract.constants import (BLOCK_OUT_MAX, DEFAULT_SCALE_EXP, LAYER_SYNAPSES, MASK_NEGATIVE,
                                                 QUANTIZED_MODES, WEIGHT_MODES)
from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.model_file import (TOKENIZER_FILES, Block, ModelFile, ModelFileError, Population,
                                                  graph_layout, read_model_file, write_model_file)
from lava_spikingbert.model.config import SpikingBertConfig
from lava_spikingbert.model.encoder import SpikingBert

WEIGHT_EXP_RANGE_ASSUMED = (-8, 7)  # Loihi weight exponent range (Loihi 1 figure; unverified for Loihi 2)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def teacher_architecture(config) -> dict | None:
    """The teacher's size from ``config.extra['teacher']`` (a local BERT directory), if readable."""
    path = (config.extra or {}).get("teacher")
    if not path:
        return None
    cfg_file = Path(path) / "config.json"
    try:
        t = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    if not all(isinstance(t.get(k), int) for k in keys):
        return None
    return {**{k: t[k] for k in keys}, "source": str(cfg_file)}


def tokenizer_files(model_dir: str | Path | None) -> dict[str, bytes]:
    if model_dir is None:
        return {}
    d = Path(model_dir)
    return {name: (d / name).read_bytes() for name in TOKENIZER_FILES if (d / name).is_file()}


def model_file_from_model(model, precision: str | None = None, *, scale_exp: int = DEFAULT_SCALE_EXP,
                          tokenizer_dir: str | Path | None = None, provenance: dict | None = None) -> ModelFile:
    """The in-memory model file of ``model`` (quantized to ``precision`` first if needed)."""
    precision = precision or model.config.weights
    if precision in QUANTIZED_MODES and model.config.weights != precision:
        model = quantize_model(model, precision)
    vth_mant = 2 ** scale_exp if precision in QUANTIZED_MODES else None
    if vth_mant is not None and not (1 <= vth_mant < 2 ** 17):
        raise ValueError(f"scale_exp {scale_exp}: vth_mant = 2**scale_exp must be below 2**17 (17-bit threshold)")
    cfg = model.config.to_dict()
    cfg["weights"] = precision
    pops_l, _, blocks_l = graph_layout(cfg)
    pops = {p["name"]: Population(name=p["name"], kind=cfg["neuron"], width=p["width"], vth=float(cfg["vth"]),
                                  depth=p["depth"], schedule_index=p["schedule_index"], lava_depth=p["lava_depth"],
                                  driver=p["driver"], layer=p["layer"], vth_mant=vth_mant)
            for p in pops_l}
    conns = connections_from_model(model, precision, scale_exp=scale_exp)
    blocks = {}
    eps = float(cfg["layer_norm_eps"])
    for b in blocks_l:
        blk = Block(name=b["name"], kind=b["kind"], output=b["output"], inputs=b["inputs"])
        if b["kind"] == "attention":
            d = cfg["hidden_size"] // cfg["num_attention_heads"]
            blk.attrs = {"num_heads": cfg["num_attention_heads"], "head_size": d, "score_scale": 1.0 / math.sqrt(d),
                         "mask_negative": MASK_NEGATIVE}
        elif b["kind"] == "residual_layernorm":
            i, which = b["name"].split(".")
            norm = getattr(model.layers[int(i[len("layer"):])], which)
            blk.attrs = {"eps": eps}
            blk.arrays = {"gamma": _np(norm.weight), "beta": _np(norm.bias)}
        elif b["kind"] == "gelu":
            blk.attrs = {"form": "erf"}
        elif b["kind"] == "embedding":
            blk.attrs = {"eps": eps}
        blocks[b["name"]] = blk
    e = model.embeddings
    emb = {"word": _np(e.word_embeddings.weight), "position": _np(e.position_embeddings.weight),
           "token_type": _np(e.token_type_embeddings.weight), "gamma": _np(e.LayerNorm.weight),
           "beta": _np(e.LayerNorm.bias)}
    quantization: dict = {"mode": precision}
    if precision in QUANTIZED_MODES:
        lam = float(cfg["vth"]) / 2.0 ** scale_exp
        quantization.update({"scale_exp": scale_exp, "vth_mant": vth_mant, "current_unit": lam,
                             "membrane_lsb": lam / 64.0, "rounding": "half_even",
                             "block_output_max": BLOCK_OUT_MAX,
                             "weight_exp_range_assumed": f"[{WEIGHT_EXP_RANGE_ASSUMED[0]}, {WEIGHT_EXP_RANGE_ASSUMED[1]}]"})
    prov = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "generator": "lava-spikingbert hw_export", "torch": torch.__version__, "git_commit": _git_commit(),
            "source_weights": model.config.weights, "teacher": teacher_architecture(model.config)}
    prov.update(provenance or {})
    return ModelFile(precision=precision, config=cfg, embeddings=emb, populations=pops, connections=conns,
                     blocks=blocks, classifier_weight=_np(model.classifier.weight),
                     classifier_bias=_np(model.classifier.bias), quantization=quantization,
                     tokenizer_files=tokenizer_files(tokenizer_dir), provenance=prov)


def export_model(model, precision: str, out: str | Path, *, scale_exp: int = DEFAULT_SCALE_EXP,
                 netx_head: str | Path | None = None, head_t_conv: int | None = None) -> ModelFile:
    """Write the model file (and optionally the netx head file); returns the validated file as read back.

    ``model`` is a checkpoint directory or a ``SpikingBert``.
    """
    model_dir = None
    if isinstance(model, (str, Path)):
        model_dir = Path(model)
        model = SpikingBert.from_pretrained(model_dir)
    if precision not in WEIGHT_MODES:
        raise SpikingBertError(f"unknown precision {precision!r}")
    if model.config.weights != "fp32" and precision not in ("fp32", model.config.weights):
        raise SpikingBertError(f"the model was trained with {model.config.weights} weights: export it with --precision "
                         f"{model.config.weights} (or fp32 for its float values), not {precision}")
    mf = model_file_from_model(model, precision, scale_exp=scale_exp, tokenizer_dir=model_dir,
                               provenance={"source": str(model_dir) if model_dir else None})
    write_model_file(out, mf)
    back = read_model_file(out)
    if netx_head is not None:
        write_netx_head(netx_head, head_chain(back, t_conv=head_t_conv))
    return back


def model_from_file(mf: ModelFile | str | Path):
    """A torch ``SpikingBert`` whose synapses are exactly the file's weights (as fp32 floats).

    Used for measuring activity (reports) and for parity tests; ``fit_dense`` is not in the file.
    """
    if not isinstance(mf, ModelFile):
        mf = read_model_file(mf)
    cfg = dict(mf.config)
    cfg["weights"] = "fp32"  # the stored weights are already the quantized values
    model = SpikingBert(SpikingBertConfig.from_dict(cfg, source=mf.path or "model file"))
    t = torch.from_numpy
    with torch.no_grad():
        e = model.embeddings
        e.word_embeddings.weight.copy_(t(mf.embeddings["word"]))
        e.position_embeddings.weight.copy_(t(mf.embeddings["position"]))
        e.token_type_embeddings.weight.copy_(t(mf.embeddings["token_type"]))
        e.LayerNorm.weight.copy_(t(mf.embeddings["gamma"]))
        e.LayerNorm.bias.copy_(t(mf.embeddings["beta"]))
        for i, layer in enumerate(model.layers):
            for name in LAYER_SYNAPSES:
                c = mf.connections[f"layer{i}.{name}"]
                getattr(layer, name).weight.copy_(t(c.weight))
                getattr(layer, name).bias.copy_(t(c.bias))
            for name in ("attn_norm", "output_norm"):
                b = mf.blocks[f"layer{i}.{name}"]
                getattr(layer, name).weight.copy_(t(b.arrays["gamma"]))
                getattr(layer, name).bias.copy_(t(b.arrays["beta"]))
        model.classifier.weight.copy_(t(mf.classifier_weight))
        model.classifier.bias.copy_(t(mf.classifier_bias))
    return model.eval()


__all__ = ["ModelFileError", "export_model", "model_file_from_model", "model_from_file", "teacher_architecture"]
