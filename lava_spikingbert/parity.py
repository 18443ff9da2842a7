"""The torch references a Lava run is compared with (top layer: imports torch, the exporter and the
Lava runtime's parameter types).

* ``fixed_pt``: ``hw_export.fixed_point.FixedPointModel``, the integer-exact reference that reads
  the model file (bit-identical spike counts expected);
* ``floating_pt``: ``SpikingBert.simulate`` of the model rebuilt from the file's float weights,
  fed the same numpy embedding current the Lava graph gets;
* ``params_from_model``: a torch student's weights as the Lava graph's parameters (no model file).
"""

from __future__ import annotations

import numpy as np
import torch

from hw_export.export import model_from_file
from hw_export.fixed_point import FixedPointModel
from lava_spikingbert.contract.constants import output_population
from lava_spikingbert.contract.model_file import ModelFile
from lava_spikingbert.lava.params import EmbeddingParams, LavaModelParams, LayerParams, LinearParams, NormParams


def reference_counts(mf: ModelFile, tag: str, emb: np.ndarray | None, ids: np.ndarray, mask: np.ndarray,
                     types: np.ndarray, t_conv: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-population spike counts (B, L, W) int64 and logits of the torch reference of ``tag``.

    ``emb``: the floating_pt graph's input current (B, L, H); the fixed_pt reference computes its
    own integer input from ``ids``."""
    if tag == "fixed_pt":
        r = FixedPointModel(mf).run(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types), t_conv)
        return {k: v.numpy().astype(np.int64) for k, v in r.counts.items()}, r.logits.numpy()
    model = model_from_file(mf)
    with torch.no_grad():
        act = model.simulate(torch.from_numpy(np.asarray(emb, np.float32)), torch.from_numpy(mask), t_conv)
        logits = model.classifier(act.asr[output_population(model.config.num_hidden_layers)][:, 0])
    return {k: v.numpy().astype(np.int64) for k, v in act.spike_counts.items()}, logits.numpy()


def params_from_model(model) -> LavaModelParams:
    """A torch ``SpikingBert`` as the Lava graph's numpy parameters (synapses after the model's
    weight quantizer, through ``synaptic_weight()``)."""
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


def count_differences(lava_counts: dict[str, np.ndarray], run, ref_counts: dict[str, np.ndarray],
                      lengths: np.ndarray, t_conv: int) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Per sentence of a planned run (``schedule.LavaRun``): whether the Lava counts equal the
    reference's in every population on its real tokens; and per population [sum |dASR|, elements]."""
    match = np.ones(len(run.sentences), bool)
    diff = {name: [0.0, 0.0] for name in lava_counts}
    for j in range(len(run.sentences)):  # real tokens only: padding has no meaning in a packed window
        w, s, m = run.window[j], run.start[j], lengths[j]
        for name, c in lava_counts.items():
            d = np.abs(c[w, s:s + m] - ref_counts[name][j, :m])
            match[j] &= not d.any()
            diff[name][0] += float(d.sum()) / t_conv
            diff[name][1] += float(d.size)
    return match, diff
