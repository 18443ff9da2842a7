"""``spikingbert report`` for a profile-"loihi" model file: resources, where the work runs, chip<->host
traffic, operations and energy vs T (docs/loihi2.md). Nothing here is validated on hardware.

* ``hardware``: per population (neurons = positions x width, stock ``LIFReset``) and per synapse
  (stored synapses of the ``Sparse``/``DelaySparse`` matrix over ``seq_len`` positions, unique
  weights, fan-out per spike, ``weight_exp``, delay); Loihi 2 cores and chips with the public
  per-chip figures of ``hw_export.report.LOIHI2``; the share of neurons and synapses in stock
  processes; the range-check result.
* ``operations`` per T: synaptic accumulates per sentence (spikes x fan-out, measured with the torch
  float model of the file's weights on SST-2 dev sentences, each with its margins), host operations
  (input map, readout), chip<->host values per sentence, energy with the 45 nm constants of
  ``hw_export.report.ENERGY`` and a same-size ANN's MACs for comparison.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hw_export.loihi_export import model_from_loihi_file
from hw_export.loihi_fixed_point import margin_batch
from hw_export.report import ENERGY, LOIHI2, _inputs, size_headline, totals_line
from lava_spikingbert.contract.constants import LAVA_PROCESSES, LOIHI_POOLINGS, is_stock_process, pooled_width
from lava_spikingbert.contract.model_file import LoihiModelFile, loihi_range_problems, read_model_file

PROCESSES = LAVA_PROCESSES["loihi"]
OPS_PER_LN_ELEMENT = 8  # mean, centre, square, variance, normalise, gamma, beta, sum of the three embeddings


def _stored(syn, L: int, mixing: str) -> int:
    """Stored synapses of one synapse process over a row of ``L`` positions."""
    w = syn.weight
    if syn.kind == "channel":
        return L * int(np.count_nonzero(w))
    if syn.kind == "residual":
        return L * int(np.count_nonzero(w))
    k = w.shape[1]
    left = k - 1 if mixing == "causal" else (k - 1) // 2
    total = 0
    for j in range(k):  # tap j reads position l + j - left: valid for the positions where it stays in the row
        valid = max(0, L - abs(j - left))
        total += valid * int(np.count_nonzero(w[:, j]))
    return total


def _process(syn) -> str:
    """The Lava process a synapse of the file is built as."""
    return PROCESSES["delayed_synapse" if syn.delay else "synapse"]


def _fan_out(mf: LoihiModelFile, stock_only: bool = False) -> dict[str, float]:
    """Synapses one spike of each population drives (outgoing, per spike; token_mix: k targets);
    ``stock_only``: only those in stock Lava processes."""
    out = {name: 0.0 for name in mf.populations}
    for s in mf.synapses.values():
        if stock_only and not is_stock_process(_process(s)):
            continue
        if s.kind == "channel":
            out[s.source] += float(np.count_nonzero(s.weight, axis=0).mean())
        elif s.kind == "residual":
            out[s.source] += float(np.count_nonzero(s.weight)) / s.weight.shape[0]
        else:
            out[s.source] += float(np.count_nonzero(s.weight, axis=1).mean())
    return out


def loihi_hardware(mf: LoihiModelFile, seq_len: int) -> dict[str, Any]:
    L = int(seq_len)
    pops, syns = [], []
    for p in mf.populations.values():
        n = L * p.width
        pops.append({"name": p.name, "neurons": n, "width": p.width, "depth": p.depth, "process": PROCESSES["population"],
                     "vth_mant": p.vth_mant, "scale_exp": p.scale_exp, "bias_exp": p.bias_exp,
                     "cores": math.ceil(n / LOIHI2["neurons_per_core"])})
    for s in mf.synapses.values():
        stored = _stored(s, L, mf.config["mixing"])
        syns.append({"name": s.name, "source": s.source, "target": s.target, "kind": s.kind, "delay": s.delay,
                     "process": _process(s), "synapses": stored,
                     "unique_weights": int(np.count_nonzero(s.weight)), "weight_exp": s.weight_exp,
                     "sign_mode": s.sign_mode, "cores": math.ceil(stored / LOIHI2["synapses_per_core"])})
    n_total = sum(p["neurons"] for p in pops)
    s_total = sum(s["synapses"] for s in syns)
    stock_neurons = sum(p["neurons"] for p in pops if is_stock_process(p["process"]))
    stock_synapses = sum(s["synapses"] for s in syns if is_stock_process(s["process"]))
    cores_conservative = sum(p["cores"] for p in pops) + sum(s["cores"] for s in syns)
    cores_lower = max(math.ceil(n_total / LOIHI2["neurons_per_core"]), math.ceil(s_total / LOIHI2["synapses_per_core"]))
    return {"seq_len": L, "precision": mf.precision, "populations": pops, "synapses": syns,
            "totals": {"neurons": n_total, "synapses": s_total,
                       "unique_weights": sum(s["unique_weights"] for s in syns),
                       "share_neurons_in_stock_processes": stock_neurons / n_total,
                       "share_synapses_in_stock_processes": stock_synapses / s_total,
                       "cores_conservative": cores_conservative,
                       "chips_conservative": math.ceil(cores_conservative / LOIHI2["cores_per_chip"]),
                       "cores_lower_bound": cores_lower,
                       "chips_lower_bound": math.ceil(cores_lower / LOIHI2["cores_per_chip"])},
            "host_processes": ["host input current (embedding lookup, LayerNorm, linear map) -> embed a_in",
                               f"readout (the last population's counts pooled: "
                               f"{LOIHI_POOLINGS[mf.pooling].replace('_', ' ')}, linear)"],
            "range_problems": loihi_range_problems(mf) if mf.quantized else ["precision fp32: export --precision int8"],
            "limits": LOIHI2, "hw_validated": False}


def loihi_operations(mf: LoihiModelFile, ids: list[np.ndarray], types: list[np.ndarray], t_list: list[int],
                     batch: int = 64) -> dict[int, dict[str, Any]]:
    """Per T: measured spikes (torch float model of the file, each sentence with its margins) ->
    synaptic accumulates, host operations, chip<->host values and energy, means per sentence."""
    model = model_from_loihi_file(mf)
    fan, fan_stock = _fan_out(mf), _fan_out(mf, stock_only=True)
    cfg = mf.config
    d, f, e, k, D = (int(cfg[x]) for x in ("hidden_size", "intermediate_size", "embed_size", "kernel_size",
                                            "num_layers"))
    C = int(cfg["num_labels"])
    R = mf.margin
    lengths = np.array([len(x) for x in ids], np.float64)
    out: dict[int, dict[str, Any]] = {}
    for T in t_list:
        spikes = {name: 0.0 for name in mf.populations}
        valid_spikes = 0.0
        for first in range(0, len(ids), batch):
            sub_i, sub_t = ids[first:first + batch], types[first:first + batch]
            current, _ = margin_batch(mf, sub_i, sub_t, fixed=False)
            with torch.no_grad():
                act = model.simulate(torch.from_numpy(current.astype(np.float32)), T)
            for b, x in enumerate(sub_i):  # the sentence and its margins (R each side)
                span = slice(0, len(x) + 2 * R)
                for name, c in act.spike_counts.items():
                    spikes[name] += float(c[b, span].sum())
                valid_spikes += float(act.spike_counts[mf.output_population][b, R:R + len(x)].sum())
        n = len(ids)
        syn_by_pop = {name: spikes[name] / n * fan[name] for name in spikes}
        syn = sum(syn_by_pop.values())
        syn_stock = sum(spikes[name] / n * fan_stock[name] for name in spikes)
        tokens = float(lengths.mean())
        host_in = tokens * (e * d + OPS_PER_LN_ELEMENT * e)  # once per sentence (constant current)
        pooled = pooled_width(mf.pooling, d)
        host_out = tokens * pooled + pooled * C  # per pooled value: an add or compare per token; classifier MACs
        ann = tokens * (e * d + D * (k * d + 2 * d * f + d)) + d * C  # same-size ANN (rate network) MACs
        acc, mac = ENERGY["acc_pj"], ENERGY["mac_pj"]
        e_chip = syn * acc
        e_host = (host_in + host_out) * mac
        out[T] = {"t_conv": T, "sentences": n, "mean_tokens": tokens, "margin": R,
                  "synaptic_acc_per_sentence": syn, "synaptic_acc_by_source": syn_by_pop,
                  "share_synaptic_acc_in_stock_processes": syn_stock / syn if syn else 0.0,
                  "mean_asr": {name: spikes[name] / n / T / ((tokens + 2 * R) * mf.populations[name].width)
                               for name in spikes},
                  "host_ops_per_sentence": {"input_map_macs (once)": host_in, "readout (once)": host_out},
                  "chip_host_values_per_sentence": {
                      "host_to_chip_as_built (a_in every step)": tokens * d * T,
                      "host_to_chip_per_sentence_bias (not built)": tokens * d,
                      "chip_to_host_spikes (output population, every step)": tokens * d * T,
                      "chip_to_host_counts (once per sentence, on-chip counting)": tokens * d},
                  "same_size_ann_macs_per_sentence": ann,
                  "energy_pj": {"chip_synaptic": e_chip, "host": e_host, "total": e_chip + e_host,
                                "same_size_ann": ann * mac},
                  "efficiency_vs_same_size_ann": ann * mac / (e_chip + e_host) if e_chip + e_host else None}
    return out


def build_loihi_report(path: str | Path, *, seq_len: int | None = None, glue_dir=None, n_sentences: int = 64,
                       t_list: list[int] | None = None, measure: bool = True) -> dict[str, Any]:
    mf = read_model_file(path)
    if not isinstance(mf, LoihiModelFile):
        raise TypeError("build_loihi_report needs a profile-loihi model file")
    L = int(seq_len or mf.config["max_length"])
    report: dict[str, Any] = {"model_file": str(path), "profile": "loihi", "precision": mf.precision,
                              "config": mf.config, "hw_validated": False, "hardware": loihi_hardware(mf, L),
                              "energy_constants": ENERGY}
    if measure:
        sents, _, note = _inputs(mf, glue_dir=glue_dir, n=n_sentences, seq_len=L, inputs="auto")
        ids = [np.asarray(x, np.int64) for x, _ in sents]
        types = [np.asarray(t, np.int64) for _, t in sents]
        t_list = sorted(set(t_list or [4, 8, 16, 32]) | {int(mf.config["t_conv"])})
        report["operations"] = loihi_operations(mf, ids, types, t_list)
        report["activity_inputs"] = note
    report["headline"] = loihi_headline(report)
    return report


def loihi_headline(report: dict) -> dict[str, Any]:
    """The numbers ``hw_export.report.side_by_side_lines`` compares across profiles. Host operations:
    the input map and the readout; chip<->host values: as built (input current and output spikes
    every step); energy: the chip's accumulates and the host's operations."""
    out = size_headline("loihi", report["precision"], report["hardware"]["totals"])
    for T, o in (report.get("operations") or {}).items():
        io = o["chip_host_values_per_sentence"]
        out["per_t"][int(T)] = {
            "synaptic_acc": o["synaptic_acc_per_sentence"],
            "share_synaptic_acc_in_stock_processes": o["share_synaptic_acc_in_stock_processes"],
            "host_ops": sum(o["host_ops_per_sentence"].values()),
            "chip_host_values": io["host_to_chip_as_built (a_in every step)"]
            + io["chip_to_host_spikes (output population, every step)"],
            "energy_uj": o["energy_pj"]["total"] / 1e6,
            "efficiency_vs_same_size_ann": o["efficiency_vs_same_size_ann"]}
    return out


def loihi_summary_lines(report: dict) -> list[str]:
    hw = report["hardware"]
    t = hw["totals"]
    lines = [f"{report['model_file']}: profile loihi, {report['precision']}, seq_len {hw['seq_len']}",
             totals_line(t),
             f"  in stock processes: {100 * t['share_neurons_in_stock_processes']:.1f}% of neurons, "
             f"{100 * t['share_synapses_in_stock_processes']:.1f}% of synapses; host: input map and readout only"]
    for p in hw["range_problems"]:
        lines.append(f"  RANGE: {p}")
    for T, o in sorted((report.get("operations") or {}).items()):
        io = o["chip_host_values_per_sentence"]
        lines.append(f"  T={T:>3}  ACs/sentence {o['synaptic_acc_per_sentence']:.3g}  host ops "
                     f"{sum(o['host_ops_per_sentence'].values()):.3g}  chip<->host values "
                     f"{io['host_to_chip_as_built (a_in every step)'] + io['chip_to_host_spikes (output population, every step)']:.3g} "
                     f"(as built)  energy {o['energy_pj']['total'] / 1e6:.3g} uJ  vs same-size ANN "
                     f"{o['efficiency_vs_same_size_ann']:.2f}x")
    return lines
