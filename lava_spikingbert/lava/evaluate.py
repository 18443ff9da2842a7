"""``spikingbert lava``: evaluate a model file (HDF5) on a GLUE task with the Lava simulator.

The Lava path is torch-free: the model file is read with ``hw_export.schema`` (h5py + numpy), the
sentences are tokenized with the tokenizer stored in the file (``tokenizers.Tokenizer.from_str``),
the embedding current is computed with numpy from the file's tables, and the graph is built from
the file's float weights (``floating_pt``) or its integer view (``fixed_pt``,
``lava_spikingbert.lava.fixed``). Only the parity reference imports torch (lazily):
``floating_pt`` -> ``SpikingBert.simulate`` of the model rebuilt from the file's float weights, fed
the *same* numpy embedding current; ``fixed_pt`` -> ``hw_export.fixed_point.FixedPointModel``.

Schedule: by default sentences are packed side by side into windows of 128 tokens with a
block-diagonal attention mask (``packing``; ``--batch-size`` windows per Lava run), which cuts the
simulated steps about five-fold on SST-2; ``--no-pack`` streams one sentence per window
(``--batch-size`` sentences per run, padded to the run's longest). Parity is checked per sentence
on its real tokens in every population either way. ``--workers N`` spreads the runs over N
spawned worker processes, each with its own Lava runtimes (for machines with more than 2 cores;
here the ~60 Lava processes of one run already fill both cores).

Backends: ``sim`` (Loihi2SimCfg, CPU). ``loihi2``: with lava-loihi installed
(``lava.utils.loihi.is_installed()``) the same graph runs under ``runner.loihi2_run_config``
(Loihi2HwCfg; stock models on neurocores, this package's processes on the host; not validated on
hardware); without it a one-line message on stderr and the simulator, and the result says so
(``backend`` "lava-sim", ``requested_backend`` "loihi2", ``backend_note``): simulator numbers are
never labelled as hardware numbers. See docs/loihi2.md.
"""

from __future__ import annotations

import sys
import time
import typing as ty
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def loihi2_available() -> bool:
    try:
        from lava.utils import loihi
        return bool(loihi.is_installed())
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return False


def load_file(path: str | Path):
    """``read_model_file`` without importing torch (``hw_export/__init__`` is empty; schema is h5py+numpy)."""
    from hw_export.schema import read_model_file

    return read_model_file(path)


def file_tokenizer(mf, max_length: int):
    """A torch-free ``tokenizers.Tokenizer`` from the file's ``tokenizer.json`` (truncation to max_length)."""
    from hw_export.schema import ModelFileError
    from tokenizers import Tokenizer

    data = mf.tokenizer_files.get("tokenizer.json")
    if not data:
        raise ModelFileError(f"{mf.path or 'model file'}: no tokenizer.json stored in /tokenizer")
    tok = Tokenizer.from_str(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else str(data))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def tokenize(tok, examples) -> tuple[list[np.ndarray], list[np.ndarray]]:
    ids, types = [], []
    for ex in examples:
        enc = tok.encode(ex.text_a, ex.text_b) if ex.text_b is not None else tok.encode(ex.text_a)
        ids.append(np.asarray(enc.ids, np.int64))
        types.append(np.asarray(enc.type_ids, np.int64))
    return ids, types


def pad(ids: list[np.ndarray], types: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, mask, types) int64 arrays, right-padded with 0."""
    from lava_spikingbert.inference import right_pad

    return tuple(t.numpy() for t in right_pad(ids, types))


def lava_params(mf, tag: str):
    if tag == "fixed_pt":
        from lava_spikingbert.lava.fixed import fixed_params
        return fixed_params(mf)
    if tag == "floating_pt":
        return mf.to_lava_params()
    raise ValueError(f"tag must be floating_pt or fixed_pt, got {tag!r}")


def lava_input(mf, params, ids: np.ndarray, types: np.ndarray) -> np.ndarray:
    """The EmbeddingSource data: float32 current (floating_pt) or integer Q(E) (fixed_pt), numpy only."""
    fixed = params.extra.get("fixed")
    if fixed:
        from lava_spikingbert.lava.fixed import embedding_grid
        return embedding_grid(mf, ids, types, params.layer_norm_eps, fixed["lam"])
    return params.embeddings.current(ids, types, params.layer_norm_eps)


def reference_counts(mf, tag: str, emb: np.ndarray, ids: np.ndarray, mask: np.ndarray, types: np.ndarray,
                     t_conv: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Torch reference (imports torch): per-population counts (B, L, W) and logits."""
    import torch

    if tag == "fixed_pt":
        from hw_export.fixed_point import FixedPointModel
        r = FixedPointModel(mf).run(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types), t_conv)
        return {k: v.numpy().astype(np.int64) for k, v in r.counts.items()}, r.logits.numpy()
    from hw_export.export import model_from_file
    model = model_from_file(mf)
    with torch.no_grad():
        act = model.simulate(torch.from_numpy(np.asarray(emb, np.float32)), torch.from_numpy(mask), t_conv)
        logits = model.classifier(act.asr[f"layer{model.config.num_hidden_layers - 1}.output"][:, 0])
    return {k: v.numpy().astype(np.int64) for k, v in act.spike_counts.items()}, logits.numpy()


@dataclass
class LavaRun:
    """One Lava run: its input windows and where each of its sentences sits in them."""

    sentences: np.ndarray  # (S,) indices into the example list
    emb: np.ndarray        # (W, L, H) EmbeddingSource data
    mask: np.ndarray       # (W, L) key masks (one sentence per window) or (W, L, L) packed query x key masks
    window: np.ndarray     # (S,) window of each sentence
    slot: np.ndarray       # (S,) slot of each sentence in its window (0 when unpacked)
    start: np.ndarray      # (S,) first token of each sentence in its window (0 when unpacked)
    cls_index: np.ndarray  # (W, slots) [CLS] position of each slot, -1 = empty (record index array)
    ids: list[np.ndarray]    # (S,) token ids of each sentence (the torch reference pads them itself)
    types: list[np.ndarray]  # (S,) token type ids


def plan_runs(mf, params, all_ids: list[np.ndarray], all_types: list[np.ndarray], batch_size: int,
              pack: bool, window_tokens: int | None) -> ty.Iterator[LavaRun]:
    """Lava runs over all sentences.

    Unpacked: ``batch_size`` sentences per run (shortest first), one per window, padded to the
    run's longest.
    Packed: sentences side by side in windows of ``window_tokens`` tokens (default: 128 or the
    longest sentence) with block-diagonal attention (``packing``, first-fit by decreasing length),
    ``batch_size`` windows per run in packing order.
    """
    if not pack:
        order = np.argsort([len(s) for s in all_ids], kind="stable")
        for first in range(0, len(order), batch_size):
            idx = order[first:first + batch_size]
            run_ids, run_types = [all_ids[i] for i in idx], [all_types[i] for i in idx]
            ids, mask, types = pad(run_ids, run_types)
            zeros = np.zeros(len(idx), np.int64)
            yield LavaRun(idx, lava_input(mf, params, ids, types), mask, np.arange(len(idx)), zeros, zeros,
                          np.zeros((len(idx), 1), np.int64), run_ids, run_types)
        return
    from lava_spikingbert.lava.packing import pack_sentences

    lengths = np.array([len(s) for s in all_ids])
    window_tokens = int(window_tokens or max(128, int(lengths.max())))
    if window_tokens < lengths.max():
        raise ValueError(f"--window {window_tokens} is shorter than the longest sentence ({lengths.max()} tokens)")
    ids, mask, types = pad(all_ids, all_types)
    packed = pack_sentences(lava_input(mf, params, ids, types), mask, window_tokens)
    for sub, idx in packed.chunks(batch_size):
        yield LavaRun(idx, sub.emb, sub.allowed, sub.window, sub.slot, sub.start, sub.cls_index,
                      [all_ids[i] for i in idx], [all_types[i] for i in idx])


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
    from lava_spikingbert.lava.runner import run_batch

    T = t_conv
    out_name = f"layer{params.num_hidden_layers - 1}.output"
    record = "all" if parity else {out_name: run.cls_index}
    t0 = time.perf_counter()
    res = run_batch(params, run.emb, run.mask, t_steps=T, record=record, timeout=timeout, run_cfg=run_cfg)
    lava_s = time.perf_counter() - t0
    cls = res.counts[out_name][run.window, run.start] if parity else res.counts[out_name][run.window, run.slot]
    logits = params.logits_from_asr(cls.astype(np.float32) / np.float32(T))
    outcome = RunOutcome(run.sentences, logits, None, None, {}, lava_s, 0.0, res.num_steps, run.emb.shape[0])
    if not parity:
        return outcome
    ids, mask, types = pad(run.ids, run.types)
    packed = run.mask.ndim == 3
    emb = lava_input(mf, params, ids, types) if packed else run.emb
    t0 = time.perf_counter()
    ref_counts, outcome.ref_logits = reference_counts(mf, tag, emb, ids, mask, types, T)
    outcome.ref_s = time.perf_counter() - t0
    lengths = mask.sum(1)
    outcome.match = np.ones(len(run.sentences), bool)
    diff = outcome.asr_diff = {name: [0.0, 0.0] for name in res.counts}
    for j in range(len(run.sentences)):  # real tokens only: padding has no meaning in a packed window
        w, s, m = run.window[j], run.start[j], lengths[j]
        for name, c in res.counts.items():
            d = np.abs(c[w, s:s + m] - ref_counts[name][j, :m])
            outcome.match[j] &= not d.any()
            diff[name][0] += float(d.sum()) / T
            diff[name][1] += float(d.size)
    return outcome


_WORKER: dict[str, ty.Any] = {}


def _worker_init(model: str, tag: str) -> None:
    """Worker process: load the model file once."""
    from lava_spikingbert.lava.runner import import_lava_runtime

    import_lava_runtime()
    mf = load_file(model)
    _WORKER.update(mf=mf, params=lava_params(mf, tag))


def _worker_run(run: LavaRun, kwargs: dict) -> RunOutcome:
    return process_run(_WORKER["mf"], _WORKER["params"], run, **kwargs)


def evaluate(model: str | Path, task: str = "sst2", split: str = "dev", *, limit: int | None = None,
             tag: str = "fixed_pt", t_conv: int | None = None, glue_dir: str | None = None,
             backend: str = "sim", batch_size: int = 16, parity: bool = True, pack: bool = True,
             window_tokens: int | None = None, workers: int = 1, timeout: float | None = None,
             progress: bool = False) -> dict[str, ty.Any]:
    """Classify a GLUE split with the Lava simulator; with ``parity``, compare every sentence's
    per-population spike counts (real tokens) and prediction with the torch reference on the same
    file. ``pack``: several sentences per window (see ``plan_runs``); ``batch_size`` then counts
    windows per run."""
    from tqdm.auto import tqdm

    from training.data import compute_metrics, get_task, load_glue  # no torch at module level

    if backend not in ("sim", "loihi2"):
        raise ValueError(f"backend must be sim or loihi2, got {backend!r}")
    requested, backend_note, run_cfg = backend, None, None
    if backend == "loihi2" and not loihi2_available():
        # said once, on stderr, and written into the result: simulator numbers are labelled lava-sim
        backend_note = ("lava-loihi is not installed (lava.utils.loihi.is_installed() is False): running on the "
                        "CPU simulator Loihi2SimCfg instead; see docs/loihi2.md")
        print(f"spikingbert lava: {backend_note}", file=sys.stderr)
        backend = "sim"
    elif backend == "loihi2":  # pragma: no cover - needs lava-loihi and a Loihi 2 system
        from lava_spikingbert.lava.runner import loihi2_run_config
        run_cfg = loihi2_run_config(tag)  # stock models on neurocores, this package's on the host
        backend_note = "Loihi2HwCfg; not validated on hardware (docs/loihi2.md)"
    if batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    if workers <= 0:
        raise ValueError(f"--workers must be positive, got {workers}")
    if workers > 1 and run_cfg is not None:  # pragma: no cover - needs lava-loihi
        raise ValueError("--workers > 1 runs on the simulator only")
    mf = load_file(model)
    params = lava_params(mf, tag)
    T = int(t_conv if t_conv is not None else params.t_conv)
    if T <= 0:
        raise ValueError(f"--t-conv must be positive, got {T}")
    spec = get_task(task)
    if params.num_labels != spec.num_labels:
        raise ValueError(f"{model}: the model has {params.num_labels} outputs; task {spec.name} needs "
                         f"{spec.num_labels} (is --task the task it was trained for?)")
    examples = load_glue(spec, split, glue_dir, limit=limit)
    if not examples:
        raise ValueError(f"{task} {split}: no examples")
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
    from lava_spikingbert.lava.runner import import_lava_runtime

    import_lava_runtime()  # before tqdm's bar fixes the start method
    bar = tqdm(total=n, desc=f"lava {tag}{' packed' if pack else ''}", unit="sentence", disable=not progress)
    kwargs = dict(tag=tag, t_conv=T, parity=parity, timeout=timeout)
    runs = plan_runs(mf, params, all_ids, all_types, batch_size, pack, window_tokens)
    pool = None
    try:
        if workers > 1:
            import concurrent.futures as cf
            import multiprocessing

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


def cmd_lava(args) -> int:
    """CLI entry (``spikingbert lava``)."""
    res = evaluate(args.model, args.task, args.split, limit=args.limit, tag=args.tag, t_conv=args.t_conv,
                   glue_dir=args.glue_dir, backend=args.backend, batch_size=args.batch_size,
                   parity=not args.no_parity, pack=args.pack, window_tokens=args.window, workers=args.workers,
                   progress=True)
    print(f"{res['task']} {res['split']} n={res['n']} {res['tag']} T={res['t_conv']} {res['backend']}: "
          f"metrics={res['metrics']} agreement={res['prediction_agreement']} "
          f"count_match={res['spike_count_match']} {res['sentences_per_s']:.2f} sent/s")
    if args.json:
        from lava_spikingbert.fileio import atomic_write_json

        atomic_write_json(Path(args.json), res)
    return 0
