"""``spikingbert lava`` on a profile-"loihi" model file: classify a GLUE split with the stock-process
Lava graph (``lava.loihi_graph``) and compare it with the torch references (top layer).

The run path is torch-free: the file's tokenizer, the host input map and readout in numpy
(``LoihiModelFile.input_current`` / ``input_integer`` / ``readout``), sentences packed along the
token axis of rows with the file's margin, one Lava stream for all rows. With parity the torch
reference of the tag runs on the same sentences, each alone with the margin convention:

* ``fixed_pt``: ``hw_export.loihi_fixed_point.LoihiFixedPoint`` (bit-accurate integer arithmetic);
  identical spike counts are expected in every population at every valid token;
* ``floating_pt``: the torch float model of the file's weights (float32) on the same host current;
  the Lava float models compute in float64, so a membrane within rounding of the threshold can
  differ.
"""

from __future__ import annotations

import sys
import time
import typing as ty
from pathlib import Path

import numpy as np

from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.model_file import LoihiModelFile, read_model_file
from lava_spikingbert.lava.lava_import import import_lava_runtime
from lava_spikingbert.lava.loihi_graph import TAGS, plan_rows, run_rows
from lava_spikingbert.lava.schedule import file_tokenizer, tokenize
from training.readers import load_glue
from training.tasks import compute_metrics, get_task


def reference_run(mf: LoihiModelFile, tag: str, ids: list[np.ndarray], types: list[np.ndarray], t_conv: int,
                  batch: int = 64):
    """The torch reference of ``tag`` on the sentences, in batches: (per-sentence counts, logits)."""
    # torch is imported only here: the Lava path runs without it
    from hw_export.loihi_export import model_from_loihi_file
    from hw_export.loihi_fixed_point import LoihiFixedPoint, float_reference

    counts: list[dict[str, np.ndarray]] = []
    logits = []
    fixed = LoihiFixedPoint(mf) if tag == "fixed_pt" else None
    model = model_from_loihi_file(mf) if tag == "floating_pt" else None
    order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths per batch
    out_counts: list[dict[str, np.ndarray] | None] = [None] * len(ids)
    out_logits = np.zeros((len(ids), mf.classifier_weight.shape[0]))
    for first in range(0, len(ids), batch):
        idx = order[first:first + batch]
        sub_ids, sub_types = [ids[i] for i in idx], [types[i] for i in idx]
        r = fixed.run(sub_ids, sub_types, t_conv) if fixed is not None else \
            float_reference(mf, sub_ids, sub_types, t_conv, model=model)
        for j, i in enumerate(idx):
            out_counts[i] = r.counts[j]
        out_logits[idx] = r.logits
    counts = [c for c in out_counts if c is not None]
    logits = out_logits
    return counts, logits


def compare_counts(lava: list[dict[str, np.ndarray]], ref: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, dict]:
    """Per sentence: identical counts in every population at every valid token; per population:
    [sentences that differ, spikes that differ (sum |d|), spikes counted by Lava]."""
    match = np.ones(len(lava), bool)
    per_pop: dict[str, list[int]] = {}
    for s, (a, b) in enumerate(zip(lava, ref)):
        for name, c in a.items():
            d = np.abs(c.astype(np.int64) - b[name])
            acc = per_pop.setdefault(name, [0, 0, 0])
            differs = bool(d.any())
            acc[0] += differs
            acc[1] += int(d.sum())
            acc[2] += int(c.sum())
            match[s] &= not differs
    return match, per_pop


def evaluate_loihi(model: str | Path, task: str = "sst2", split: str = "dev", *, limit: int | None = None,
                   tag: str = "fixed_pt", t_conv: int | None = None, glue_dir: str | None = None,
                   parity: bool = True, row_tokens: int | None = None, timeout: float | None = None,
                   progress: bool = False, max_tokens: int | None = None, examples: ty.Sequence | None = None,
                   spec=None) -> dict[str, ty.Any]:
    """Classify a GLUE split with the loihi-profile Lava graph; with ``parity`` compare every
    sentence's per-population counts and prediction with the torch reference of ``tag``.
    ``max_tokens``: keep only the sentences of at most that many tokens (shorter rows, a smaller
    graph; the result says how many were left out). ``examples`` and ``spec`` (a ``TaskSpec``)
    replace the GLUE task's file (custom data; ``limit`` keeps the first ones)."""
    if tag not in TAGS:
        raise SpikingBertError(f"--tag must be one of {TAGS}, got {tag!r}")
    t_start = time.perf_counter()
    mf = read_model_file(model)
    if not isinstance(mf, LoihiModelFile):
        raise SpikingBertError(f"{model}: profile {mf.profile}, not loihi")
    T = int(t_conv if t_conv is not None else mf.config["t_conv"])
    if T <= 0:
        raise SpikingBertError(f"--t-conv must be positive, got {T}")
    spec = spec if spec is not None else get_task(task)
    if int(mf.config["num_labels"]) != spec.num_labels or spec.is_regression:
        raise SpikingBertError(f"{model}: the model has {mf.config['num_labels']} outputs; task {spec.name} needs "
                               f"{spec.num_labels} classes")
    examples = load_glue(spec, split, glue_dir, limit=limit) if examples is None else list(examples)[:limit]
    if not examples:
        raise SpikingBertError(f"{task} {split}: no examples")
    tok = file_tokenizer(mf, int(mf.config["max_length"]))
    ids, types = tokenize(tok, examples)
    n_all = len(examples)
    if max_tokens is not None:
        keep = [i for i, x in enumerate(ids) if len(x) <= max_tokens]
        if not keep:
            raise SpikingBertError(f"no sentence of at most {max_tokens} tokens")
        examples, ids, types = [examples[i] for i in keep], [ids[i] for i in keep], [types[i] for i in keep]
    import_lava_runtime()
    rows = plan_rows(mf, ids, types, tag, row_tokens)

    def report(done: int, total: int) -> None:
        if progress:
            el = time.perf_counter() - t_run
            print(f"\rlava {tag}: step {done}/{total} ({el:.0f} s)", end="" if done < total else "\n",
                  file=sys.stderr, flush=True)

    t_run = time.perf_counter()
    res = run_rows(mf, rows, tag, t_steps=T, record_all=parity, timeout=timeout,
                   chunk_steps=max(T, (rows.n_rows // 20) * T) if progress else None, progress=report)
    lava_s = time.perf_counter() - t_run
    preds = res.logits.argmax(-1)
    labels = np.asarray([ex.label for ex in examples])
    metrics = compute_metrics(spec, preds, labels) if all(ex.label is not None for ex in examples) else {}
    out: dict[str, ty.Any] = {
        "profile": "loihi", "task": spec.name, "split": split, "n": len(examples), "n_left_out": n_all - len(examples),
        "max_tokens": max_tokens, "tag": tag, "t_conv": T,
        "backend": "lava-sim", "precision": mf.precision, "metrics": metrics, "model": str(model),
        "rows": rows.n_rows, "row_tokens": int(rows.inputs.shape[1]), "margin": mf.margin, "steps": res.steps,
        "stored_synapses": res.synapses, "lava_s": lava_s, "timings": res.timings,
        "sentences_per_s": len(examples) / lava_s if lava_s > 0 else None,
        "prediction_agreement": None, "spike_count_match": None, "per_population": None, "reference_s": None,
        "predictions": preds.tolist(),
    }
    if parity:
        t0 = time.perf_counter()
        ref_counts, ref_logits = reference_run(mf, tag, ids, types, T)
        out["reference_s"] = time.perf_counter() - t0
        match, per_pop = compare_counts(res.counts, ref_counts)
        out["prediction_agreement"] = float((ref_logits.argmax(-1) == preds).mean())
        out["spike_count_match"] = float(match.mean())
        out["per_population"] = {k: {"sentences_differing": v[0], "spikes_differing": v[1], "lava_spikes": v[2]}
                                 for k, v in per_pop.items()}
        out["reference_metrics"] = compute_metrics(spec, ref_logits.argmax(-1), labels) if metrics else {}
        out["max_logit_diff"] = float(np.abs(ref_logits - res.logits).max())
    out["wall_s"] = time.perf_counter() - t_start
    return out
