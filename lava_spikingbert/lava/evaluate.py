"""``spikingbert lava``: evaluate a model file (HDF5) on a GLUE task with the Lava simulator.

The Lava path is torch-free: the model file is read with ``hw_export.schema`` (h5py + numpy), the
sentences are tokenized with the tokenizer stored in the file (``tokenizers.Tokenizer.from_str``),
the embedding current is computed with numpy from the file's tables, and the graph is built from
the file's float weights (``floating_pt``) or its integer view (``fixed_pt``,
``lava_spikingbert.lava.fixed``). Only the parity reference imports torch (lazily):
``floating_pt`` -> ``SpikingBert.simulate`` of the model rebuilt from the file's float weights, fed
the *same* numpy embedding current; ``fixed_pt`` -> ``hw_export.fixed_point.FixedPointModel``.

Backends: ``sim`` (Loihi2SimCfg, CPU). ``loihi2`` needs lava-loihi (``lava.utils.loihi.is_installed()``);
without it the command **refuses** with a one-line error (no silent fallback: a user asking for
hardware numbers must not get simulator numbers labelled as hardware). See docs/loihi2.md.
"""

from __future__ import annotations

import json
import time
import typing as ty
from pathlib import Path

import numpy as np


class BackendUnavailable(ValueError):
    """The requested backend cannot run here (one-line CLI error)."""


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


def pad(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    L = max(len(s) for s in seqs)
    out = np.zeros((len(seqs), L), np.int64)
    mask = np.zeros((len(seqs), L), np.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return out, mask


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


def evaluate(model: str | Path, task: str = "sst2", split: str = "dev", *, limit: int | None = None,
             tag: str = "fixed_pt", t_conv: int | None = None, glue_dir: str | None = None,
             backend: str = "sim", batch_size: int = 16, parity: bool = True,
             timeout: float | None = None, progress: bool = False) -> dict[str, ty.Any]:
    from tqdm.auto import tqdm

    from training.data import compute_metrics, get_task, load_glue  # no torch at module level

    from lava_spikingbert.lava.runner import run_batch

    if backend not in ("sim", "loihi2"):
        raise ValueError(f"backend must be sim or loihi2, got {backend!r}")
    if backend == "loihi2" and not loihi2_available():
        raise BackendUnavailable("--backend loihi2 needs lava-loihi (Intel INRC; lava.utils.loihi.is_installed() is "
                                 "False here); rerun with --backend sim (see docs/loihi2.md)")
    if backend == "loihi2":  # pragma: no cover - no hardware in CI
        raise BackendUnavailable("--backend loihi2: the host/neurocore split is documented in docs/loihi2.md but the "
                                 "hardware run path is not validated (HW_VALIDATED=false); use --backend sim")
    mf = load_file(model)
    params = lava_params(mf, tag)
    T = int(t_conv or params.t_conv)
    if T <= 0:
        raise ValueError(f"--t-conv must be positive, got {T}")
    spec = get_task(task)
    examples = load_glue(spec, split, glue_dir, limit=limit)
    if not examples:
        raise ValueError(f"{task} {split}: no examples")
    max_len = int(params.max_length or mf.config["max_length"])
    tok = file_tokenizer(mf, max_len)
    all_ids, all_types = tokenize(tok, examples)
    order = np.argsort([len(s) for s in all_ids], kind="stable")
    n = len(examples)
    logits = np.zeros((n, params.num_labels))
    ref_logits = np.zeros((n, params.num_labels))
    match = np.zeros(n, bool)
    asr_diff: dict[str, list[float]] = {}
    lava_s = 0.0
    t_start = time.perf_counter()
    # lava-nc sets the 'fork' start method when first imported and fails if it is already set;
    # tqdm's bar fixes it (multiprocessing lock), so Lava must be imported first
    import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401
    bar = tqdm(total=n, desc=f"lava {tag}", unit="sentence", disable=not progress)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad([all_ids[i] for i in idx])
        types, _ = pad([all_types[i] for i in idx])
        emb = lava_input(mf, params, ids, types)
        t0 = time.perf_counter()
        res = run_batch(params, emb, mask, t_steps=T, record="all" if parity else "cls", timeout=timeout)
        lava_s += time.perf_counter() - t0
        logits[idx] = res.logits
        if parity:
            ref_counts, ref_log = reference_counts(mf, tag, emb, ids, mask, types, T)
            ref_logits[idx] = ref_log
            ok = np.ones(len(idx), bool)
            for name, c in res.counts.items():
                r = ref_counts[name]
                ok &= (c == r).reshape(len(idx), -1).all(1)
                m = mask[:, :, None].astype(bool) & np.ones_like(c, bool)
                d = np.abs(c - r)[m] / T
                asr_diff.setdefault(name, []).extend([float(d.sum()), float(d.size)])
            match[idx] = ok
        bar.update(len(idx))
        if parity:
            bar.set_postfix(count_match=f"{match[order[:start + len(idx)]].mean():.4f}")
    bar.close()
    wall = time.perf_counter() - t_start
    preds = logits.argmax(-1) if not spec.is_regression else logits[:, 0]
    labels = [ex.label for ex in examples]
    metrics = compute_metrics(spec, preds, np.asarray(labels)) if all(x is not None for x in labels) else {}
    out: dict[str, ty.Any] = {
        "task": spec.name, "split": split, "n": n, "tag": tag, "t_conv": T,
        "backend": "lava-sim" if backend == "sim" else "lava-loihi2", "precision": mf.precision,
        "metrics": metrics,
        "prediction_agreement": float((ref_logits.argmax(-1) == logits.argmax(-1)).mean()) if parity else None,
        "spike_count_match": float(match.mean()) if parity else None,
        "per_population_asr_diff": ({k: sum(v[0::2]) / max(sum(v[1::2]), 1.0) for k, v in asr_diff.items()}
                                    if parity else None),  # mean over real (unpadded) tokens x neurons
        "sentences_per_s": n / lava_s if lava_s > 0 else None,
        "wall_s": wall, "lava_s": lava_s, "model": str(model),
    }
    return out


def cmd_lava(args) -> int:
    """CLI entry (``spikingbert lava``)."""
    res = evaluate(args.model, args.task, args.split, limit=args.limit, tag=args.tag, t_conv=args.t_conv,
                   glue_dir=args.glue_dir, backend=args.backend, batch_size=args.batch_size,
                   parity=not args.no_parity, progress=True)
    print(f"{res['task']} {res['split']} n={res['n']} {res['tag']} T={res['t_conv']} {res['backend']}: "
          f"metrics={res['metrics']} agreement={res['prediction_agreement']} "
          f"count_match={res['spike_count_match']} {res['sentences_per_s']:.2f} sent/s")
    if args.json:
        p = Path(args.json)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(res, indent=2))
        tmp.replace(p)
    return 0
