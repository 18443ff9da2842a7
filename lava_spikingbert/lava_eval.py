"""``spikingbert lava``: evaluate a model file (HDF5) on a GLUE task with the Lava simulator, and
check it against the torch reference (top layer: data, Lava runtime and, for parity, torch).

The run path is torch-free: the model file is read with ``lava_spikingbert.contract.model_file``
(h5py + numpy), the sentences are tokenized with the tokenizer stored in the file, the graph's
input is computed with numpy from the file's tables and the runs are planned by
``lava_spikingbert.lava.schedule``. Only the parity reference imports torch
(``lava_spikingbert.parity``), and only when parity is asked for. Parity is checked per sentence on
its real tokens in every population. ``--workers N`` spreads the runs over N spawned worker
processes, each with its own Lava runtimes (for machines with more than 2 cores: the dozens of
Lava processes of one run already fill two).

Backends: ``sim`` (Loihi2SimCfg, CPU). ``loihi2``: with lava-loihi installed
(``lava.utils.loihi.is_installed()``) the same graph runs under ``runner.loihi2_run_config``
(Loihi2HwCfg; every process of the graph on the host CPU; not validated on hardware); without it a
one-line message on stderr and the simulator, and the result says so (``backend`` "lava-sim",
``requested_backend`` "loihi2", ``backend_note``): simulator numbers are never labelled as
hardware numbers. See docs/loihi2.md.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import sys
import time
import typing as ty
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.model_file import model_file_profile, read_model_file
from lava_spikingbert.lava.runner import import_lava_runtime, loihi2_run_config
from lava_spikingbert.lava.schedule import (LavaRun, file_tokenizer, graph_input, pad, params_for_tag, plan_runs,
                                            run_lava, tokenize)
from training.readers import load_glue
from training.tasks import compute_metrics, get_task


def loihi2_available() -> bool:
    try:
        from lava.utils import loihi  # Lava is imported after import_lava_runtime (see runner)
        return bool(loihi.is_installed())
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return False


@dataclass
class RunOutcome:
    """What one Lava run contributes to the result (small: no spike counts)."""

    sentences: np.ndarray
    logits: np.ndarray
    ref_logits: np.ndarray | None
    match: np.ndarray | None                  # per sentence: identical counts in every population
    asr_diff: dict[str, list[float]]  # name -> [sum |dASR|, elements]
    lava_s: float
    ref_s: float
    steps: int
    windows: int


def process_run(mf, params, run: LavaRun, *, tag: str, t_conv: int, parity: bool, timeout: float | None = None,
                run_cfg=None) -> RunOutcome:
    """Simulate one run with Lava; with ``parity`` also the torch reference on the same sentences,
    compared per sentence on its real tokens in every population."""
    T = t_conv
    t0 = time.perf_counter()
    res, logits = run_lava(params, run, T, record_all=parity, timeout=timeout, run_cfg=run_cfg)
    lava_s = time.perf_counter() - t0
    outcome = RunOutcome(run.sentences, logits, None, None, {}, lava_s, 0.0, res.num_steps, run.emb.shape[0])
    if not parity:
        return outcome
    # torch is imported only here: a host without torch runs the Lava path with parity off
    from lava_spikingbert.parity import count_differences, reference_counts

    ids, mask, types = pad(run.ids, run.types)
    emb = graph_input(params, ids, types) if run.packed else run.emb
    t0 = time.perf_counter()
    ref_counts, outcome.ref_logits = reference_counts(mf, tag, emb, ids, mask, types, T)
    outcome.ref_s = time.perf_counter() - t0
    outcome.match, outcome.asr_diff = count_differences(res.counts, run, ref_counts, mask.sum(1), T)
    return outcome


_WORKER: dict[str, ty.Any] = {}


def _worker_init(model: str, tag: str) -> None:
    """Worker process: load the model file once."""
    import_lava_runtime()
    mf = read_model_file(model)
    _WORKER.update(mf=mf, params=params_for_tag(mf, tag))


def _worker_run(run: LavaRun, kwargs: dict) -> RunOutcome:
    return process_run(_WORKER["mf"], _WORKER["params"], run, **kwargs)


def evaluate(model: str | Path, task: str = "sst2", split: str = "dev", *, limit: int | None = None,
             tag: str = "fixed_pt", t_conv: int | None = None, glue_dir: str | None = None,
             backend: str = "sim", batch_size: int = 16, parity: bool = True, pack: bool = True,
             window_tokens: int | None = None, workers: int = 1, timeout: float | None = None,
             progress: bool = False, examples: ty.Sequence | None = None, spec=None) -> dict[str, ty.Any]:
    """Classify a GLUE split with the Lava simulator; with ``parity``, compare every sentence's
    per-population spike counts (real tokens) and prediction with the torch reference on the same
    file. ``pack``: several sentences per window (see ``plan_runs``); ``batch_size`` then counts
    windows per run. ``examples`` and ``spec`` (a ``TaskSpec``) replace the GLUE task's file
    (custom data; ``limit`` keeps the first ones)."""
    if model_file_profile(model) == "loihi":  # the file says which profile it holds
        from lava_spikingbert.loihi_eval import evaluate_loihi

        if backend != "sim" or workers != 1:
            raise SpikingBertError("profile loihi: only --backend sim with one worker is implemented")
        return evaluate_loihi(model, task, split, limit=limit, tag=tag, t_conv=t_conv, glue_dir=glue_dir,
                              parity=parity, row_tokens=window_tokens, timeout=timeout, progress=progress,
                              examples=examples, spec=spec)
    if backend not in ("sim", "loihi2"):
        raise SpikingBertError(f"backend must be sim or loihi2, got {backend!r}")
    requested, backend_note, run_cfg = backend, None, None
    if backend == "loihi2" and not loihi2_available():
        # said once, on stderr, and written into the result: simulator numbers are labelled lava-sim
        backend_note = ("lava-loihi is not installed (lava.utils.loihi.is_installed() is False): running on the "
                        "CPU simulator Loihi2SimCfg instead; see docs/loihi2.md")
        print(f"spikingbert lava: {backend_note}", file=sys.stderr)
        backend = "sim"
    elif backend == "loihi2":  # pragma: no cover - needs lava-loihi and a Loihi 2 system
        run_cfg = loihi2_run_config(tag)  # every process of the graph on the host CPU
        backend_note = "Loihi2HwCfg; not validated on hardware (docs/loihi2.md)"
    if batch_size <= 0:
        raise SpikingBertError(f"--batch-size must be positive, got {batch_size}")
    if workers <= 0:
        raise SpikingBertError(f"--workers must be positive, got {workers}")
    if workers > 1 and run_cfg is not None:  # pragma: no cover - needs lava-loihi
        raise SpikingBertError("--workers > 1 runs on the simulator only")
    mf = read_model_file(model)
    params = params_for_tag(mf, tag)
    T = int(t_conv if t_conv is not None else params.t_conv)
    if T <= 0:
        raise SpikingBertError(f"--t-conv must be positive, got {T}")
    spec = get_task(spec if spec is not None else task)
    if params.num_labels != spec.num_labels:
        raise SpikingBertError(f"{model}: the model has {params.num_labels} outputs; task {spec.name} needs "
                         f"{spec.num_labels} (is --task the task it was trained for?)")
    examples = load_glue(spec, split, glue_dir, limit=limit) if examples is None else list(examples)[:limit]
    if not examples:
        raise SpikingBertError(f"{task} {split}: no examples")
    max_len = int(params.max_length or mf.config["max_length"])
    tok = file_tokenizer(mf, max_len)
    all_ids, all_types = tokenize(tok, examples)
    n = len(examples)
    logits = np.zeros((n, params.num_labels))
    ref_logits = np.zeros((n, params.num_labels))
    match = np.zeros(n, bool)
    done = np.zeros(n, bool)
    asr_diff: dict[str, list[float]] = {}  # name -> [sum |dASR|, elements]
    lava_s, ref_s, steps, n_runs, n_windows = 0.0, 0.0, 0, 0, 0
    t_start = time.perf_counter()
    import_lava_runtime()  # before tqdm's bar fixes the start method
    bar = tqdm(total=n, desc=f"lava {tag}{' packed' if pack else ''}", unit="sentence", disable=not progress)
    kwargs = dict(tag=tag, t_conv=T, parity=parity, timeout=timeout)
    runs = plan_runs(params, all_ids, all_types, batch_size, pack, window_tokens)
    pool = None
    try:
        if workers > 1:
            # fresh interpreters (spawn), not daemonic: each worker starts its own Lava runtimes
            pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_worker_init, initargs=(str(model), tag))
            outcomes = (f.result() for f in cf.as_completed([pool.submit(_worker_run, r, kwargs) for r in runs]))
        else:
            outcomes = (process_run(mf, params, r, run_cfg=run_cfg, **kwargs) for r in runs)
        for o in outcomes:
            logits[o.sentences] = o.logits
            lava_s, ref_s = lava_s + o.lava_s, ref_s + o.ref_s
            steps, n_runs, n_windows = steps + o.steps, n_runs + 1, n_windows + o.windows
            if parity:
                ref_logits[o.sentences] = o.ref_logits
                match[o.sentences] = o.match
                for name, (d, size) in o.asr_diff.items():
                    acc = asr_diff.setdefault(name, [0.0, 0.0])
                    acc[0] += d
                    acc[1] += size
            done[o.sentences] = True
            bar.update(len(o.sentences))
            if parity:
                bar.set_postfix(count_match=f"{match[done].mean():.4f}")
    finally:
        if pool is not None:  # on an error: drop the queued runs, wait for the running ones (their stop())
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    wall = time.perf_counter() - t_start
    preds = logits.argmax(-1) if not spec.is_regression else logits[:, 0]
    labels = [ex.label for ex in examples]
    metrics = compute_metrics(spec, preds, np.asarray(labels)) if all(x is not None for x in labels) else {}
    out: dict[str, ty.Any] = {
        "task": spec.name, "split": split, "n": n, "tag": tag, "t_conv": T,
        "backend": "lava-sim" if backend == "sim" else "lava-loihi2", "requested_backend": requested,
        "backend_note": backend_note, "precision": mf.precision,
        "metrics": metrics,
        # classification: same class as the torch reference; regression: same score (float32 tolerance)
        "prediction_agreement": (float(np.isclose(ref_logits[:, 0], logits[:, 0], rtol=1e-4, atol=1e-5).mean())
                                 if spec.is_regression else float((ref_logits.argmax(-1) == logits.argmax(-1)).mean()))
        if parity else None,
        "spike_count_match": float(match.mean()) if parity else None,
        "per_population_asr_diff": ({k: v[0] / max(v[1], 1.0) for k, v in asr_diff.items()}
                                    if parity else None),  # mean over real tokens x neurons
        # one process: sentences per second of Lava time; with workers the runs overlap (lava_s sums the
        # workers' Lava time), so the elapsed time is the honest measure
        "sentences_per_s": (n / wall if workers > 1 else n / lava_s) if lava_s > 0 else None, "workers": workers,
        "wall_s": wall, "lava_s": lava_s, "model": str(model),
        # the torch reference on the same sentences (unpacked, padded per run): its speed for comparison
        "reference_s": ref_s if parity else None,
        "reference_sentences_per_s": n / ref_s if parity and ref_s > 0 else None,
        "packed": pack, "lava_runs": n_runs, "windows": n_windows, "steps": steps,
    }
    return out
