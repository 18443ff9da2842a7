"""Loihi-2 static check, resources, operation counts and energy of a model file (docs/reports.md).

``build_report(path, ...)`` returns a JSON-able dict:

* ``hardware``: per population (neurons = tokens x width, x2 for signed on/off units; neuron
  model, stock Loihi-2 model?) and per connection (synapses, unique weights, weight bits, fan-in, weight exponent), the
  non-spiking blocks (host / embedded CPU), estimated cores and chips, range violations and
  mapping issues, by name;
* ``activity``: measured ASRs (torch simulation of the file's weights on real SST-2 dev sentences,
  or random tokens when the file/data do not allow that) for each T;
* ``operations`` / ``energy``: synaptic accumulates (spikes x fan-out, i.e. ASR x neurons x T x
  fan-out), non-spiking operations counted separately, the ANN teacher's and a same-size ANN's
  MACs, energies with 45 nm constants and the efficiency factor vs T;
* ``fixed_point`` (quantized files): the integer reference on a few sentences vs the float
  simulation, and its overflow events.

Nothing here is validated on hardware (``hw_validated: false``).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from hw_export.export import model_from_file
from hw_export.fixed_point import FixedPointModel
from lava_spikingbert.contract.atomic import atomic_save_figure
from lava_spikingbert.contract.constants import (ACT_SHIFT, LAVA_PROCESSES, SIGNED_NEURONS, SUBTRACTIVE_NEURONS, UV_MAX,
                                                  is_stock_process)
from lava_spikingbert.contract.model_file import ModelFile, ModelFileError, read_model_file
from lava_spikingbert.model.inference import right_pad
from training.batching import encode
from training.readers import load_glue
from training.tasks import TASKS, get_task

# Intel Loihi 2 public figures (Loihi 2 brief, 2021): 128 neurocores, up to 1M neurons and 120M
# synapses per chip. Per-core figures are the chip totals / 128 (the real split depends on how
# each core's memory is shared between neuron state and synapses, and on weight precision).
LOIHI2 = {
    "cores_per_chip": 128,
    "neurons_per_chip": 1_048_576,
    "synapses_per_chip": 120_000_000,
    "neurons_per_core": 8192,
    "synapses_per_core": 937_500,
    "embedded_cpus_per_chip": 6,
    "weight_exp_range_assumed": [-8, 7],
    "dendritic_accumulator_bits": 16,
    "source": "Intel Loihi 2 brief (2021): 128 cores, <=1M neurons, <=120M synapses per chip; per-core = chip/128 "
              "(assumption); weight exponent range [-8, 7] is the Loihi-1 figure (assumed)",
}
# Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm: 32-bit float add 0.9 pJ, multiply
# 3.7 pJ; SpikingBERT uses ACC = 0.9 pJ and MAC = 4.6 pJ.
ENERGY = {"acc_pj": 0.9, "mac_pj": 4.6,
          "source": "Horowitz, ISSCC 2014 (45 nm, 32-bit float): add 0.9 pJ, mult 3.7 pJ; ACC 0.9 pJ, MAC 4.6 pJ "
                    "as in SpikingBERT (Bal & Sengupta, AAAI-24)"}
# elementary operations per element of the non-spiking blocks (our counting convention)
OPS_PER_LAYERNORM_ELEMENT = 8  # residual add, mean, centre, square, variance, normalise, gamma, beta
OPS_PER_GELU_ELEMENT = 8  # bias add + erf-based GELU
OPS_PER_SCORE = 4  # scale + mask, exp, sum, divide (softmax)


# ------------------------------------------------------------------------------------ static
def _fan_out(mf: ModelFile, stock_only: bool = False) -> dict[str, int]:
    """Synapses one spike of each population drives; ``stock_only``: only those in stock Lava processes."""
    out = {p: 0 for p in mf.populations}
    for c in mf.connections.values():
        if not stock_only or is_stock_process(_connection_process(mf, c)):
            out[c.source] += c.shape[0]
    return out


def _per_unit(mf: ModelFile, population: str) -> int:
    """Neurons per unit: a signed unit (if_signed_pair) is an on and an off neuron, and a synapse
    from it is two (+W, -W)."""
    return 2 if mf.populations[population].kind in SIGNED_NEURONS else 1


def _connection_process(mf: ModelFile, c) -> str:
    """The Lava process the paper graph builds a connection as."""
    into_attention = c.target_kind == "block" and mf.blocks[c.target].kind == "attention"
    return LAVA_PROCESSES["paper"]["attention_query" if into_attention else "connection"]


def _share(entries: list[dict], key: str) -> float:
    """The share of ``key`` (neurons, synapses) in entries built from a stock Lava process."""
    total = sum(e[key] for e in entries)
    return sum(e[key] for e in entries if is_stock_process(e["process"])) / total if total else 0.0


def hardware_check(mf: ModelFile, seq_len: int) -> dict[str, Any]:
    """Resources and the Loihi-2 static check at ``seq_len`` tokens per sentence."""
    cfg = mf.config
    L = int(seq_len)
    violations: list[str] = []
    issues: list[str] = []
    fan_out = _fan_out(mf)
    pops = []
    per_unit = {name: _per_unit(mf, name) for name in mf.populations}
    for p in mf.populations.values():
        n = L * p.width * per_unit[p.name]
        stock = p.kind == "lif_reset_zero"
        pops.append({"name": p.name, "kind": p.kind, "width": p.width, "tokens": L, "neurons": n,
                     "fan_out": fan_out[p.name], "vth": p.vth, "vth_mant": p.vth_mant,
                     "depth": p.depth, "lava_depth": p.lava_depth, "driver": p.driver,
                     "stock_loihi2_model": stock,
                     "process": LAVA_PROCESSES["paper"]["population"],
                     "neurons_per_unit": per_unit[p.name],
                     "loihi2_model": "Lava LIF (du=4095, dv=0, reset to 0, v > vth)" if stock else
                     "none: subtractive-reset IF with v >= vth needs a custom (microcode) neuron"
                     + (" (an on and an off neuron per unit)" if per_unit[p.name] == 2 else ""),
                     "cores": math.ceil(n / LOIHI2["neurons_per_core"])})
    subtractive = [p for p in pops if p["kind"] in SUBTRACTIVE_NEURONS]
    if subtractive:
        issues.append(f"{len(subtractive)} populations use the paper's subtractive-reset IF neuron "
                      f"({', '.join(sorted({p['kind'] for p in subtractive}))}): no stock Loihi-2 neuron model (Lava "
                      "LIF resets to 0); needs microcode or retraining with neuron='lif_reset_zero'")
    if mf.precision == "fp32":
        violations.append("precision fp32: synaptic weights are float32; Loihi 2 needs 8-bit integer weights "
                          "(export with --precision int8 | ternary | binary)")
    if L > int(cfg["max_position_embeddings"]):
        violations.append(f"seq_len {L} exceeds max_position_embeddings {cfg['max_position_embeddings']}")
    lo, hi = LOIHI2["weight_exp_range_assumed"]
    conns = []
    for c in mf.connections.values():
        out_f, in_f = c.shape
        in_n = in_f * per_unit.get(c.source, 1)  # presynaptic neurons
        entry: dict[str, Any] = {"name": c.name, "source": c.source, "target": c.target, "target_kind": c.target_kind,
                                 "shape": [out_f, in_f], "fan_in": in_n, "fan_out_per_spike": out_f,
                                 "synapses": L * out_f * in_n, "unique_weights": out_f * in_n,
                                 "synapses_note": "token-wise: per-token Dense/block-diagonal Sparse (synapses) or "
                                                  "1x1 Conv weight sharing (unique_weights)",
                                 "stock_loihi2_synapse": True,
                                 "process": _connection_process(mf, c),
                                 "cores": math.ceil(L * out_f * in_n / LOIHI2["synapses_per_core"])}
        if c.target_kind == "block":
            entry["note"] = (f"output consumed by the host block {c.target}: graded accumulator readout chip->host "
                             "every step")
        if mf.quantized:
            mant = c.weight_mant.astype(np.int64)
            levels = int(np.unique(mant).size)
            entry.update({"weight_bits_storage": 8, "weight_levels": levels,
                          "weight_bits_information": round(math.log2(levels), 3) if levels > 1 else 0.0,
                          "weight_exp": c.weight_exp, "sign_mode": c.sign_mode, "scale": c.scale,
                          "bias_exp": c.bias_exp})
            worst = int(np.maximum(np.where(mant > 0, mant, 0).sum(1), -np.where(mant < 0, mant, 0).sum(1)).max(
                initial=0))
            worst_shifted = worst * 2.0 ** c.weight_exp
            entry["worst_case_accumulator"] = worst_shifted
            if not lo <= c.weight_exp <= hi:
                violations.append(f"{c.name}: weight_exp {c.weight_exp} outside the assumed Loihi range [{lo}, {hi}] "
                                  "(choose another --scale-exp)")
            if c.target_kind == "neuron":
                if worst_shifted >= 2 ** 15:
                    violations.append(f"{c.name}: worst-case dendritic sum {worst_shifted:.0f} exceeds the 16-bit "
                                      "accumulator (all inputs spiking)")
                if worst_shifted * 2 ** ACT_SHIFT > UV_MAX:
                    violations.append(f"{c.name}: worst-case input << 6 = {worst_shifted * 64:.0f} can wrap the "
                                      "24-bit u register")
            elif worst >= 2 ** 23:
                violations.append(f"{c.name}: worst-case accumulator {worst} exceeds a 24-bit graded payload")
            if c.bias_clipped:
                violations.append(f"{c.name}: {c.bias_clipped} bias values clipped to 13 bits (bias_exp 7)")
        else:
            entry.update({"weight_bits_storage": 32, "weight_levels": None, "weight_exp": None})
        conns.append(entry)
    if mf.quantized and (int(mf.quantization["vth_mant"]) << ACT_SHIFT) >= 2 ** 23:
        violations.append(f"vth_mant {mf.quantization['vth_mant']} << 6 >= 2**23")
    blocks = []
    for b in mf.blocks.values():
        reason = {"embedding": "real-valued embedding current (table lookup + LayerNorm): host-side input",
                  "attention": "Q (real) x K spikes, softmax, x V spikes: dynamic x dynamic products + softmax",
                  "residual_layernorm": "LayerNorm (mean/variance/division) of synaptic current + residual spikes",
                  "gelu": "GELU (erf) of the synaptic current"}[b.kind]
        blocks.append({"name": b.name, "kind": b.kind, "output": b.output, "runs_on": "host / embedded CPU",
                       "stock_loihi2_model": False, "reason": reason})
    blocks.append({"name": "classifier", "kind": "linear_on_asr", "output": "logits", "runs_on": "host (or the netx "
                   "head chain: Dense + non-leaky accumulators on a neurocore)", "stock_loihi2_model": True,
                   "reason": "linear map of the [CLS] ASR"})
    if mf.blocks:
        issues.append(f"{len(mf.blocks)} non-spiking blocks (attention with softmax, residual LayerNorm, GELU, "
                      "embedding) run on a host/embedded CPU with chip<->host traffic every time step")
    n_total = sum(p["neurons"] for p in pops)
    s_total = sum(c["synapses"] for c in conns)
    u_total = sum(c["unique_weights"] for c in conns)
    cores_conservative = sum(p["cores"] for p in pops) + sum(c["cores"] for c in conns)
    cores_lower = max(math.ceil(n_total / LOIHI2["neurons_per_core"]),
                      math.ceil(u_total / LOIHI2["synapses_per_core"]))
    totals = {"neurons": n_total, "synapses": s_total, "unique_weights": u_total,
              "share_neurons_in_stock_processes": _share(pops, "neurons"),
              "share_synapses_in_stock_processes": _share(conns, "synapses"),
              "cores_conservative": cores_conservative, "chips_conservative":
                  math.ceil(cores_conservative / LOIHI2["cores_per_chip"]),
              "cores_lower_bound": cores_lower, "chips_lower_bound": math.ceil(cores_lower / LOIHI2["cores_per_chip"]),
              "chips_by_chip_totals": max(math.ceil(n_total / LOIHI2["neurons_per_chip"]),
                                          math.ceil(s_total / LOIHI2["synapses_per_chip"])),
              "note": "conservative: every population and every connection on its own cores, synapses replicated per "
                      "token; lower bound: neuron-limited with 1x1-Conv weight sharing"}
    return {"seq_len": L, "precision": mf.precision, "neuron": cfg["neuron"], "populations": pops,
            "connections": conns, "blocks": blocks, "totals": totals, "violations": violations,
            "mapping_issues": issues, "limits": LOIHI2, "hw_validated": False}


# ------------------------------------------------------------------------------------ activity
def _inputs(mf: ModelFile, *, glue_dir, n: int, seq_len: int, inputs: str, seed: int = 0):
    """(list of (ids, types) per sentence, labels or None, description)."""
    cfg = mf.config
    max_len = min(int(seq_len), int(cfg["max_length"]))
    reason = None
    if inputs in ("auto", "sst2"):
        try:
            if not mf.tokenizer_files:
                raise ModelFileError("the model file has no tokenizer")
            # auto: the dev sentences of the GLUE task the model was trained for (SST-2 if unknown)
            trained_for = (cfg.get("extra") or {}).get("task")
            task = trained_for if inputs == "auto" and trained_for in TASKS else "sst2"
            spec = get_task(task)
            examples = load_glue(spec, "dev", glue_dir, limit=n)
            enc = encode(examples, file_tokenizer(mf), max_len)
            if max(max(x) for x in enc.input_ids) >= int(cfg["vocab_size"]):
                raise ModelFileError("tokenizer ids exceed the model's vocabulary")
            sents = list(zip(enc.input_ids, enc.token_type_ids))
            # a sample accuracy only where the labels are the model's own classes
            scored = (enc.labels is not None and not spec.is_regression and trained_for in (None, spec.name)
                      and spec.num_labels == int(cfg["num_labels"]))
            return sents, list(enc.labels) if scored else None, \
                f"{spec.glue_name} dev, first {len(sents)} sentences, max_length {max_len}"
        except (ModelFileError, FileNotFoundError, OSError, ValueError, KeyError) as exc:
            if inputs == "sst2":
                raise ModelFileError(f"cannot measure on SST-2: {exc}") from None
            reason = str(exc)
    rng = np.random.default_rng(seed)
    vocab = int(cfg["vocab_size"])
    sents = [(list(rng.integers(1, vocab, size=max_len)), [0] * max_len) for _ in range(n)]
    note = f"random token ids (seed {seed}), {n} x {max_len} tokens"
    return sents, None, note + (f"; GLUE dev sentences not used: {reason}" if reason else "")


def file_tokenizer(mf: ModelFile):
    """A ``transformers`` tokenizer from the files stored in the model file."""
    with tempfile.TemporaryDirectory(prefix="spikingbert-tok-") as tmp:
        mf.write_tokenizer(tmp)
        try:
            return AutoTokenizer.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, TypeError) as exc:  # invalid tokenizer files stored in the model file
            raise ModelFileError(f"{mf.path or 'model file'}: /tokenizer: unusable tokenizer files "
                                 f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _batches(sents, batch_size: int):
    order = sorted(range(len(sents)), key=lambda i: len(sents[i][0]))
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        ids, mask, tt = right_pad([sents[i][0] for i in idx], [sents[i][1] for i in idx])
        yield idx, ids, tt, mask


def measure_activity(mf: ModelFile, sents, labels, t_list, *, batch_size: int = 16) -> dict[int, dict]:
    """Per T: mean ASR per population over real tokens, spikes per sentence, sample accuracy."""

    model = model_from_file(mf)
    out: dict[int, dict] = {}
    names = list(mf.populations)
    lengths = np.array([len(s[0]) for s in sents])
    for T in t_list:
        spikes = {p: np.zeros(len(sents)) for p in names}
        preds = np.zeros(len(sents), dtype=np.int64)
        with torch.no_grad():
            for idx, ids, tt, mask in _batches(sents, batch_size):
                emb = model.embedding_current(ids, tt)
                act = model.simulate(emb, mask, T, record_scores=False)
                m = mask.to(torch.float64)[..., None]
                for p in names:
                    spikes[p][idx] = (act.spike_events[p].to(torch.float64) * m).sum((1, 2)).numpy()
                logits = model.classifier(act.asr[f"layer{mf.num_layers - 1}.output"][:, 0])
                preds[idx] = logits.argmax(-1).numpy()
        # spike events per neuron and step (a signed unit is two neurons)
        asr = {p: float(spikes[p].sum() / (T * lengths.sum() * mf.populations[p].width * _per_unit(mf, p)))
               for p in names}
        entry = {"t_conv": int(T), "asr": asr, "spikes_per_sentence": {p: float(spikes[p].mean()) for p in names},
                 "asr_mean": float(np.mean(list(asr.values()))),
                 "_spikes": spikes}
        if labels is not None and mf.config["problem_type"] == "classification":
            entry["sample_accuracy"] = float(np.mean(preds == np.asarray(labels)))
        out[int(T)] = entry
    return out


# ------------------------------------------------------------------------------------ operations
def ann_macs(hidden: int, layers: int, intermediate: int, L: np.ndarray, num_labels: int = 2) -> np.ndarray:
    """MACs of a non-spiking BERT encoder + pooler + classifier per sentence of length L."""
    L = np.asarray(L, dtype=np.float64)
    per_layer = 4 * L * hidden ** 2 + 2 * L * hidden * intermediate + 2 * L ** 2 * hidden
    return layers * per_layer + hidden ** 2 + hidden * num_labels


def chip_host_values(mf: ModelFile, tokens: float, T: int) -> dict[str, float]:
    """Values crossing between chip and host per sentence of ``tokens`` tokens if the populations and
    their synapses sat on neurocores and the non-spiking blocks on the host: every step, each block
    reads its synapses' graded currents and its input populations' spikes, and writes its output
    population's current; the embedding current is written once."""
    to_host = to_chip = 0.0
    for b in mf.blocks.values():
        if b.kind == "embedding":
            to_chip += tokens * mf.populations[b.output].width
            continue
        to_chip += T * tokens * mf.populations[b.output].width
        for role, name in b.inputs.items():
            if name in mf.connections:
                to_host += T * tokens * mf.connections[name].shape[0]
            elif name in mf.populations and role != "query_source":  # the query's source reaches it via its synapse
                to_host += T * tokens * mf.populations[name].width * _per_unit(mf, name)
    return {"chip_to_host (block inputs: synaptic currents and spikes, every step)": to_host,
            "host_to_chip (block output currents every step, the embedding current once)": to_chip}


def operations(mf: ModelFile, act: dict, lengths: np.ndarray, teacher: dict) -> dict[str, Any]:
    """Operation counts and energies (means per sentence) for one T of ``measure_activity``."""
    cfg = mf.config
    T = act["t_conv"]
    spikes = act["_spikes"]
    fan_out = _fan_out(mf)
    L = np.asarray(lengths, dtype=np.float64)
    h, f, heads = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_attention_heads"])
    n_layers = mf.num_layers
    syn_by_pop = {p: float(np.mean(spikes[p] * fan_out[p])) for p in mf.populations}
    syn_total = sum(syn_by_pop.values())
    fan_stock = _fan_out(mf, stock_only=True)
    syn_stock = sum(float(np.mean(spikes[p] * fan_stock[p])) for p in mf.populations)
    att_acc = float(np.mean(sum((spikes[f"layer{i}.key"] + spikes[f"layer{i}.value"]) * L for i in range(n_layers))))
    softmax = float(np.mean(n_layers * OPS_PER_SCORE * heads * L ** 2 * T))
    layernorm = float(np.mean(n_layers * 2 * OPS_PER_LAYERNORM_ELEMENT * L * h * T))
    gelu = float(np.mean(n_layers * OPS_PER_GELU_ELEMENT * L * f * T))
    block_bias = float(np.mean(n_layers * (3 * h + f) * L * T))  # biases of query, attn_out, intermediate, output
    embedding = float(np.mean(10 * L * h))  # once per sentence (constant current)
    classifier = float(h * int(cfg["num_labels"]))
    nonspiking_mult = softmax + layernorm + gelu + block_bias + embedding + classifier
    teacher_macs = float(np.mean(ann_macs(teacher["hidden_size"], teacher["num_hidden_layers"],
                                          teacher["intermediate_size"], L, int(cfg["num_labels"]))))
    same_macs = float(np.mean(ann_macs(h, n_layers, f, L, int(cfg["num_labels"]))))
    acc, mac = ENERGY["acc_pj"], ENERGY["mac_pj"]
    e_syn = syn_total * acc
    e_total = e_syn + att_acc * acc + nonspiking_mult * mac
    e_teacher, e_same = teacher_macs * mac, same_macs * mac
    return {
        "t_conv": T,
        "synaptic_acc_per_sentence": syn_total,
        "synaptic_acc_by_population": syn_by_pop,
        "share_synaptic_acc_in_stock_processes": syn_stock / syn_total if syn_total else 0.0,
        "chip_host_values_per_sentence": chip_host_values(mf, float(L.mean()), T),
        "nonspiking_per_sentence": {"attention_acc (QK^T, PV with binary K/V)": att_acc, "softmax": softmax,
                                    "layernorm": layernorm, "gelu": gelu, "block_bias_adds": block_bias,
                                    "embedding_current (once)": embedding, "classifier_mac (once)": classifier},
        "teacher_macs_per_sentence": teacher_macs,
        "same_size_ann_macs_per_sentence": same_macs,
        "energy_pj": {"snn_synaptic": e_syn, "snn_with_nonspiking": e_total, "teacher_ann": e_teacher,
                      "same_size_ann": e_same},
        "efficiency_vs_teacher": {"synaptic_only (paper style)": e_teacher / e_syn if e_syn else None,
                                  "with_nonspiking": e_teacher / e_total if e_total else None},
        "efficiency_vs_same_size_ann": {"synaptic_only (paper style)": e_same / e_syn if e_syn else None,
                                        "with_nonspiking": e_same / e_total if e_total else None},
    }


# ------------------------------------------------------------------------------------ fixed point
def fixed_point_check(mf: ModelFile, sents, *, n: int = 8, t_conv: int | None = None) -> dict[str, Any]:
    """Integer reference vs float simulation of the same weights on ``n`` sentences."""

    fp = FixedPointModel(mf)
    model = model_from_file(mf)
    T = int(t_conv or mf.config["t_conv"])
    diffs, agree, events, total = {}, 0, {}, 0
    for idx, ids, tt, mask in _batches(sents[:n], 8):
        r = fp.run(ids, mask, tt, T)
        with torch.no_grad():
            act = model.simulate(model.embedding_current(ids, tt), mask, T, record_scores=False)
            logits = model.classifier(act.asr[f"layer{mf.num_layers - 1}.output"][:, 0])
        m = mask.bool()
        for p in r.counts:
            d = (r.asr[p].float() - act.asr[p])[m].abs()
            diffs.setdefault(p, []).append(d)
        agree += int((r.logits.argmax(-1) == logits.argmax(-1)).sum())
        total += len(idx)
        for k, v in r.events.items():
            events[k] = events.get(k, 0) + v
    mean_diff = {p: float(torch.cat(v).mean()) for p, v in diffs.items()}
    return {"t_conv": T, "sentences": total, "asr_mean_abs_diff_vs_float": mean_diff,
            "asr_mean_abs_diff_overall": float(np.mean(list(mean_diff.values()))),
            "prediction_agreement_vs_float": agree / total if total else None, "overflow_events": events,
            "scale_exp": mf.quantization["scale_exp"], "current_unit": mf.current_unit}


# ------------------------------------------------------------------------------------ report
def read_accuracy_json(path: str | Path) -> dict[int, float]:
    """T -> accuracy from an eval JSON (a list of rows, {"runs": rows} or one row)."""
    data = json.loads(Path(path).read_text())
    rows = data.get("runs", [data]) if isinstance(data, dict) else data
    out = {}
    for r in rows:
        metrics = r.get("metrics", {})
        value = metrics.get("accuracy", next(iter(metrics.values()), None))
        if r.get("t_conv") is not None and value is not None:
            out[int(r["t_conv"])] = float(value)
    if not out:
        raise ValueError(f"{path}: no rows with t_conv and metrics")
    return out


def teacher_size(mf: ModelFile, override: dict | None = None) -> dict[str, Any]:
    t = dict((mf.provenance or {}).get("teacher") or {})
    source = t.get("source") and f"model file provenance ({t['source']})"
    if not all(k in t for k in ("hidden_size", "num_hidden_layers", "intermediate_size")):
        cfg = mf.config
        t = {"hidden_size": cfg.get("fit_size") or cfg["hidden_size"], "num_hidden_layers": cfg["num_hidden_layers"],
             "intermediate_size": cfg["intermediate_size"], "num_attention_heads": cfg["num_attention_heads"]}
        source = "assumed: the student's architecture (no teacher in the file's provenance; use --teacher-*)"
    for k, v in (override or {}).items():
        if v is not None:
            t[k] = int(v)
            source = "command line"
    t["source"] = source
    return t


def build_report(path: str | Path, *, seq_len: int | None = None, glue_dir=None, n_sentences: int = 64,
                 t_list: list[int] | None = None, inputs: str = "auto", accuracy_json: str | None = None,
                 teacher: dict | None = None, png: str | Path | None = None, fixed_point_sentences: int = 8,
                 measure: bool = True, batch_size: int = 16) -> dict[str, Any]:
    mf = read_model_file(path)
    cfg = mf.config
    L = int(seq_len or cfg["max_length"])
    report: dict[str, Any] = {"model_file": str(path), "profile": "paper", "schema_version": mf.schema_version,
                              "precision": mf.precision, "config": cfg, "hw_validated": False,
                              "hardware": hardware_check(mf, L), "energy_constants": ENERGY}
    if not measure:
        report["headline"] = headline(report)
        return report
    t_list = sorted(set(t_list or [4, 8, 16, 32]) | {int(cfg["t_conv"])})
    sents, labels, note = _inputs(mf, glue_dir=glue_dir, n=n_sentences, seq_len=L, inputs=inputs)
    acts = measure_activity(mf, sents, labels, t_list, batch_size=batch_size)
    lengths = np.array([len(s[0]) for s in sents])
    tsize = teacher_size(mf, teacher)
    report["activity"] = {"inputs": note, "sentences": len(sents), "mean_tokens": float(lengths.mean()),
                          "per_t": {T: {k: v for k, v in a.items() if not k.startswith("_")} for T, a in acts.items()}}
    report["teacher"] = tsize
    report["operations"] = {T: operations(mf, a, lengths, tsize) for T, a in acts.items()}
    acc = read_accuracy_json(accuracy_json) if accuracy_json else None
    report["accuracy_vs_t"] = ({"source": str(accuracy_json), "values": acc} if acc else
                               {"source": "sample accuracy of the measured sentences" if labels else None,
                                "values": {T: a.get("sample_accuracy") for T, a in acts.items()}
                                if labels else {}})
    if mf.quantized and fixed_point_sentences > 0:
        report["fixed_point"] = fixed_point_check(mf, sents, n=fixed_point_sentences)
    if png:
        plot_efficiency(report, png)
        report["png"] = str(png)
    report["headline"] = headline(report)
    return report


def plot_efficiency(report: dict, png: str | Path) -> None:
    """Accuracy and energy-efficiency factor vs T (like SpikingBERT's Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = report["operations"]
    ts = sorted(int(t) for t in ops)
    eff_t = [ops[t]["efficiency_vs_teacher"]["synaptic_only (paper style)"] for t in ts]
    eff_s = [ops[t]["efficiency_vs_same_size_ann"]["synaptic_only (paper style)"] for t in ts]
    eff_n = [ops[t]["efficiency_vs_same_size_ann"]["with_nonspiking"] for t in ts]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(ts, eff_t, "o-", color="tab:green", label="efficiency vs teacher ANN (synaptic)")
    ax.plot(ts, eff_s, "s--", color="tab:olive", label="efficiency vs same-size ANN (synaptic)")
    ax.plot(ts, eff_n, "^:", color="tab:gray", label="vs same-size ANN incl. non-spiking ops")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set_xlabel("time steps T")
    ax.set_ylabel("energy-efficiency factor E_ANN / E_SNN")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts)
    ax.set_xticklabels([str(t) for t in ts])
    acc = {int(k): v for k, v in (report.get("accuracy_vs_t", {}).get("values") or {}).items() if v is not None}
    handles, labels = ax.get_legend_handles_labels()
    if acc:
        ax2 = ax.twinx()
        ta = sorted(acc)
        ax2.plot(ta, [100 * acc[t] for t in ta], "D-", color="tab:blue", label="accuracy")
        ax2.set_ylabel("accuracy (%)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=7, loc="best")
    ax.set_title(f"{report['precision']} student: accuracy and efficiency vs T "
                 f"(ACC {ENERGY['acc_pj']} pJ, MAC {ENERGY['mac_pj']} pJ)", fontsize=9)
    fig.tight_layout()

    atomic_save_figure(fig, png)


def size_headline(profile: str, precision: str, totals: dict) -> dict[str, Any]:
    """The size part of a report's headline, the same keys for every profile."""
    keys = ("neurons", "synapses", "unique_weights", "cores_lower_bound", "cores_conservative", "chips_lower_bound",
            "chips_conservative", "share_neurons_in_stock_processes", "share_synapses_in_stock_processes")
    return {"profile": profile, "precision": precision, **{k: totals[k] for k in keys}, "per_t": {}}


def headline(report: dict) -> dict[str, Any]:
    """The numbers ``side_by_side_lines`` compares across profiles, from a paper-profile report. Host
    operations: the non-spiking blocks' operations (attention, softmax, LayerNorm, GELU, bias adds,
    embedding, classifier); energy: synaptic accumulates and those operations."""
    out = size_headline("paper", report["precision"], report["hardware"]["totals"])
    for T, o in (report.get("operations") or {}).items():
        out["per_t"][int(T)] = {
            "synaptic_acc": o["synaptic_acc_per_sentence"],
            "share_synaptic_acc_in_stock_processes": o["share_synaptic_acc_in_stock_processes"],
            "host_ops": sum(o["nonspiking_per_sentence"].values()),
            "chip_host_values": sum(o["chip_host_values_per_sentence"].values()),
            "energy_uj": o["energy_pj"]["snn_with_nonspiking"] / 1e6,
            "efficiency_vs_same_size_ann": o["efficiency_vs_same_size_ann"]["with_nonspiking"]}
    return out


def side_by_side_lines(headlines: list[dict], names: list[str]) -> list[str]:
    """A markdown table of reports' headlines (``headline``, ``loihi_headline``), one column each."""
    def pct(x):
        return f"{100 * x:.1f}%"

    rows = [("profile, precision", lambda h: f"{h['profile']}, {h['precision']}"),
            ("neurons", lambda h: f"{h['neurons']:,}"),
            ("synapses (stored) / unique weights", lambda h: f"{h['synapses']:,} / {h['unique_weights']:,}"),
            ("Loihi 2 cores (lower bound..conservative)", lambda h: f"{h['cores_lower_bound']}..{h['cores_conservative']}"),
            ("Loihi 2 chips", lambda h: f"{h['chips_lower_bound']}..{h['chips_conservative']}"),
            ("neurons in stock processes (neurocore model)", lambda h: pct(h["share_neurons_in_stock_processes"])),
            ("synapses in stock processes", lambda h: pct(h["share_synapses_in_stock_processes"]))]
    ts = sorted(set.intersection(*(set(h["per_t"]) for h in headlines))) if headlines else []
    for T in ts:
        rows += [(f"T={T}: synaptic accumulates / sentence", lambda h, T=T: f"{h['per_t'][T]['synaptic_acc']:.3g}"),
                 (f"T={T}: synaptic accumulates in stock processes",
                  lambda h, T=T: pct(h["per_t"][T]["share_synaptic_acc_in_stock_processes"])),
                 (f"T={T}: host operations / sentence", lambda h, T=T: f"{h['per_t'][T]['host_ops']:.3g}"),
                 (f"T={T}: chip<->host values / sentence", lambda h, T=T: f"{h['per_t'][T]['chip_host_values']:.3g}"),
                 (f"T={T}: energy / sentence (uJ)", lambda h, T=T: f"{h['per_t'][T]['energy_uj']:.3g}"),
                 (f"T={T}: vs same-size ANN", lambda h, T=T: f"{h['per_t'][T]['efficiency_vs_same_size_ann']:.2f}x")]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(fmt(h) for h in headlines) + " |" for label, fmt in rows]
    return lines


def totals_line(t: dict) -> str:
    """The report's size line (neurons, synapses, cores, chips), the same for every profile."""
    return (f"  neurons {t['neurons']:,}  synapses {t['synapses']:,} (unique weights {t['unique_weights']:,})  "
            f"cores {t['cores_lower_bound']}..{t['cores_conservative']}  chips {t['chips_lower_bound']}.."
            f"{t['chips_conservative']}")


def summary_lines(report: dict) -> list[str]:
    hw = report["hardware"]
    t = hw["totals"]
    lines = [f"{report['model_file']}: {report['precision']}, {hw['neuron']} neurons, seq_len {hw['seq_len']}",
             totals_line(t)]
    for v in hw["violations"]:
        lines.append(f"  VIOLATION: {v}")
    for v in hw["mapping_issues"]:
        lines.append(f"  mapping: {v}")
    for T, o in sorted((report.get("operations") or {}).items()):
        a = report["activity"]["per_t"][T]
        e = o["efficiency_vs_teacher"]["synaptic_only (paper style)"]
        es = o["efficiency_vs_same_size_ann"]["synaptic_only (paper style)"]
        lines.append(f"  T={T:>3}  ASR {a['asr_mean']:.3f}  ACs/sentence {o['synaptic_acc_per_sentence']:.3g}  "
                     f"efficiency vs teacher {e:.2f}x, vs same-size ANN {es:.2f}x")
    if "fixed_point" in report:
        fp = report["fixed_point"]
        lines.append(f"  fixed point (T={fp['t_conv']}, {fp['sentences']} sentences): mean |dASR| "
                     f"{fp['asr_mean_abs_diff_overall']:.4f}, prediction agreement "
                     f"{fp['prediction_agreement_vs_float']:.2f}, overflow events {fp['overflow_events'] or 'none'}")
    return lines
