"""Knowledge distillation of the spiking student from a BERT teacher (SpikingBERT's three steps).

1. general KD: attention-score + hidden-state MSE against a pre-trained (not fine-tuned) teacher on
   plain text;
2. task internal-layer KD: the same losses against the task-fine-tuned teacher on task data;
3. prediction-layer KD: soft cross-entropy with temperature on the teacher's logits, or gold labels
   (MSE for regression).

Every training step: the spiking network runs ``t_conv`` steps without autograd; the loss is taken
on its ASRs and time-averaged attention scores, and gradients come from the steady-state map at
that equilibrium (``SpikingBert.forward(mode="equilibrium")``). Hidden states are compared through
the learned projection W_Td (``model.fit_dense``), because ASRs live in [0, 1] while BERT hidden
states do not.

The loop below reads top to bottom; checkpoints are written atomically and ``resume=True``
continues a killed run to the same weights an uninterrupted run reaches.

The same loop trains the loihi profile's ``LoihiSpikingMixer`` (``model.loihi``; the profile is
the student's class): it has no attention, so the internal-layer loss is the hidden-state MSE of
its taps (embedding population and layer outputs, through its ``fit`` projections) alone, plus
``logit_weight`` times the soft cross-entropy on the teacher's logits; its rate ANN is
``mode="rate"``; its int8 weights are ``set_weights("int8")`` (QAT, straight-through).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lava_spikingbert.contract.atomic import atomic_directory, atomic_write_json, recover_directory
from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.run_lock import locks_directory
from lava_spikingbert.model.checkpoint import load_weights, read_profile, write_model_files
from lava_spikingbert.model.config import TRAIN_FORWARDS, SpikingBertConfig
from lava_spikingbert.model.encoder import SpikingBert
from lava_spikingbert.model.inference import predict_batches_at
from lava_spikingbert.model.loihi import HOST_EMBEDDINGS, LoihiConfig, LoihiSpikingMixer
from lava_spikingbert.model.quantizers import attach_weight_quantizers
from lava_spikingbert.model.student import load_student, profile_of, rate_ann_mode
from training.batching import (JOIN_CONNECTORS, EncodedDataset, WordNeighbours, join_row_pairs,
                               length_bucketed_batches, mask_inner_tokens, word_neighbours)
from training.common import (DistEnv, improves, linear_schedule, make_optimizer, refuse_other_settings,
                             rng_state, seed_all, set_rng_state, worse)
from training.safe_state import load_state, refuse_pickled_state, require_keys, save_state
from training.tasks import TaskSpec, compute_metrics
from training.teacher import teacher_outputs

logger = logging.getLogger(__name__)

STAGES = ("general", "intermediate", "prediction")
STATE_FILE = "training_state.safetensors"  # training.safe_state: safetensors + JSON, no pickle
LEGACY_STATE_FILE = "training_state.pt"  # the pickled state of earlier versions: never loaded
STATE_KEYS = ("settings", "step", "best", "history", "optimizer", "scheduler", "rng", "wall_s", "sentences")
DONE_FILE = "stage_done.json"


@dataclass
class StageSettings:
    stage: str
    max_steps: int
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float | None = None  # classifier learning rate (None: lr)
    warmup: float = 0.1
    weight_decay: float = 0.01
    decay: bool = True  # linear decay after warm-up (the reference keeps step 2 constant)
    t_conv: int | None = None  # simulation steps while training (None: the model's t_conv)
    eval_every: int = 0  # evaluate on dev every N steps (0: only at the end)
    checkpoint_every: int = 100
    temperature: float = 1.0
    gold_labels: bool = False  # prediction stage: labels instead of the teacher's logits
    seed: int = 42
    weights: str = "fp32"
    clip_norm: float = 1.0
    layer_map: list[int] | None = None  # student layer i -> teacher layer (1-based)
    att_weight: float = 1.0  # internal-layer KD loss = att_weight * attention MSE + rep_weight * hidden MSE
    rep_weight: float = 1.0
    run_steps: int | None = None  # stop (resumably) after this many steps in this call
    forward: str = "spiking"  # see TRAIN_FORWARDS
    logit_weight: float = 0.0  # internal-layer stages: + logit_weight * soft CE on the teacher's logits
    eval_start: bool = False  # prediction stage: the starting weights are a best-of-dev candidate (step 0)
    embed_lr: float | None = None  # learning rate of the host embeddings (None: lr)
    augment_mask: float = 0.0  # internal-layer stages: each inner token masked with this probability
    # internal-layer stages: each inner whole word replaced with this probability by one of its nearest
    # whole words in the teacher's input-embedding space (the teacher labels the changed sentence)
    augment_replace: float = 0.0
    # internal-layer stages: the share of steps whose batch is replaced by its sentences joined in pairs
    # (``join_row_pairs``): long, new sentences, labelled by the teacher, for the same tokens per step
    augment_join: float = 0.0
    # quantized loihi weights: every other step trains through the fp32 latent weights themselves, and
    # the prediction stage keeps the checkpoint whose worse dev score (quantized or fp32) is best, so the
    # deployed model and its fp32 weights are both trained and both selected for
    joint_fp32: bool = False

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.forward not in TRAIN_FORWARDS:
            raise ValueError(f"forward must be one of {TRAIN_FORWARDS}, got {self.forward!r}")
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.att_weight < 0 or self.rep_weight < 0 or self.att_weight + self.rep_weight == 0:
            raise ValueError(f"att_weight and rep_weight must be >= 0 and not both 0, got "
                             f"{self.att_weight}, {self.rep_weight}")
        if self.logit_weight < 0:
            raise ValueError(f"logit_weight must be >= 0, got {self.logit_weight}")
        if not 0.0 <= self.augment_mask < 1.0:
            raise ValueError(f"augment_mask must be in [0, 1), got {self.augment_mask}")
        if not 0.0 <= self.augment_replace < 1.0 or self.augment_mask + self.augment_replace >= 1.0:
            raise ValueError(f"augment_replace must be in [0, 1) with augment_mask + augment_replace < 1, got "
                             f"{self.augment_replace} (augment_mask {self.augment_mask})")
        if not 0.0 <= self.augment_join <= 1.0:
            raise ValueError(f"augment_join must be in [0, 1], got {self.augment_join}")
        if (self.augment_mask or self.augment_replace or self.augment_join) and self.stage == "prediction":
            raise ValueError("augment_mask, augment_replace and augment_join apply to the internal-layer stages "
                             "(general, intermediate) only")
        if self.joint_fp32 and self.weights == "fp32":
            raise ValueError("joint_fp32 needs quantized weights (int8, ternary or binary), got weights='fp32'")


# settings that change how a run is watched or cut into calls, not the weights it ends with
# (except eval_every in the prediction stage, whose output is the best dev checkpoint)
RUN_ONLY_SETTINGS = ("run_steps", "checkpoint_every", "eval_every")


def settings_differences(saved: dict, settings: StageSettings) -> dict[str, tuple]:
    """{name: (saved, now)} for every setting that would make a resumed (or reused) run end with
    other weights than the saved run. A setting missing from an older checkpoint counts as its
    default."""
    defaults = {f.name: f.default for f in fields(StageSettings)}
    run_only = set(RUN_ONLY_SETTINGS) - ({"eval_every"} if settings.stage == "prediction" else set())
    diff = {}
    for name, now in asdict(settings).items():
        was = saved.get(name, defaults[name])
        if name not in run_only and was != now:
            diff[name] = (was, now)
    return diff


# --------------------------------------------------------------------------- student set-up
def default_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Student layer i (0-based) learns from teacher layer ceil((i+1) * n_teacher / n_student)
    (1-based): 4 from 12 gives 3, 6, 9, 12 as in the paper; 4 from 6 gives 2, 3, 5, 6."""
    return [math.ceil((i + 1) * n_teacher / n_student) for i in range(n_student)]


def student_config_from_teacher(teacher_config, *, num_layers: int = 4, t_conv: int = 16,
                                max_length: int = 128, num_labels: int = 2,
                                problem_type: str = "classification", **overrides) -> SpikingBertConfig:
    """A student as wide as the teacher (so embeddings and layers can be copied), ``num_layers`` deep."""
    return SpikingBertConfig(
        vocab_size=teacher_config.vocab_size,
        hidden_size=teacher_config.hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=teacher_config.num_attention_heads,
        intermediate_size=teacher_config.intermediate_size,
        max_position_embeddings=teacher_config.max_position_embeddings,
        type_vocab_size=teacher_config.type_vocab_size,
        max_length=min(max_length, teacher_config.max_position_embeddings),
        pad_token_id=teacher_config.pad_token_id if teacher_config.pad_token_id is not None else 0,
        layer_norm_eps=teacher_config.layer_norm_eps,
        t_conv=t_conv,
        num_labels=1 if problem_type == "regression" else num_labels,
        problem_type=problem_type,
        fit_size=teacher_config.hidden_size,
        **overrides,
    )


def loihi_config_from_teacher(teacher_config, *, num_layers: int = 2, t_conv: int = 16, max_length: int = 64,
                              num_labels: int = 2, **overrides) -> LoihiConfig:
    """A loihi-profile student whose host embeddings are as wide as the teacher's (so they can be
    copied) and whose KD projections map to the teacher's width; the network's own widths are
    ``LoihiConfig``'s defaults unless overridden."""
    return LoihiConfig(
        vocab_size=teacher_config.vocab_size,
        max_position_embeddings=teacher_config.max_position_embeddings,
        type_vocab_size=teacher_config.type_vocab_size,
        pad_token_id=teacher_config.pad_token_id if teacher_config.pad_token_id is not None else 0,
        embed_size=teacher_config.hidden_size,
        layer_norm_eps=teacher_config.layer_norm_eps,
        fit_size=teacher_config.hidden_size,
        num_layers=num_layers,
        max_length=min(max_length, teacher_config.max_position_embeddings),
        t_conv=t_conv,
        num_labels=num_labels,
        **overrides,
    )


def init_loihi_student(student: LoihiSpikingMixer, teacher, calibration: EncodedDataset | None, *,
                       embeddings: bool = True, seed: int = 42, calibration_size: int = 256) -> None:
    """Copy the teacher's embeddings (``embeddings``), then calibrate every population's input
    current on ``calibration_size`` sentences of ``calibration`` (``LoihiSpikingMixer.calibrate_``)."""
    if embeddings:
        student.init_from_teacher(teacher)
    if calibration is not None and len(calibration):
        b = next(iter(length_bucketed_batches(calibration, calibration_size, shuffle=True, seed=seed)))
        student.calibrate_(b["input_ids"], b["attention_mask"], b["token_type_ids"])


def init_student_from_teacher(student: SpikingBert, teacher, *, layers: bool = True,
                              layer_map: list[int] | None = None) -> list[str]:
    """Copy the teacher's embeddings (and, with ``layers``, its mapped encoder layers) into the
    student. Returns the names of the copied student tensors."""
    bert = teacher.bert if hasattr(teacher, "bert") else teacher
    t_state = bert.state_dict()
    copied = []

    def copy(dst: torch.Tensor, key: str, name: str) -> None:
        src = t_state[key]
        if src.shape != dst.shape:
            raise ValueError(f"cannot initialise student {name} {tuple(dst.shape)} from teacher {key} "
                             f"{tuple(src.shape)}: widths differ (use --init none)")
        with torch.no_grad():
            dst.copy_(src)
        copied.append(name)

    for name, p in student.embeddings.named_parameters():
        copy(p, f"embeddings.{name}", f"embeddings.{name}")
    if layers:
        n_t = bert.config.num_hidden_layers
        lmap = layer_map or default_layer_map(len(student.layers), n_t)
        pairs = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                 "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
                 "intermediate": "intermediate.dense", "output": "output.dense", "output_norm": "output.LayerNorm"}
        for i, layer in enumerate(student.layers):
            t_prefix = f"encoder.layer.{lmap[i] - 1}."
            for ours, theirs in pairs.items():
                for pname, p in getattr(layer, ours).named_parameters():
                    copy(p, f"{t_prefix}{theirs}.{pname}", f"layers.{i}.{ours}.{pname}")
    return copied


# --------------------------------------------------------------------------- losses
def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
    valid = mask.bool()
    return (valid[:, None, :, None] & valid[:, None, None, :])  # B x 1 x Lq x Lk


def attention_loss(student_scores: list[torch.Tensor], teacher_scores: list[torch.Tensor],
                   layer_map: list[int], mask: torch.Tensor) -> torch.Tensor:
    """MSE of pre-softmax attention scores over real (query, key) pairs; padded entries are
    ignored on both sides. With different head counts the head-averaged maps are compared."""
    pairs = _pair_mask(mask)
    total = 0.0
    for i, s in enumerate(student_scores):
        t = teacher_scores[layer_map[i] - 1].to(s.dtype)
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        m = pairs.expand_as(s)
        total = total + F.mse_loss(s[m], t[m])
    return total


def hidden_loss(projected: list[torch.Tensor], teacher_hidden: list[torch.Tensor], layer_map: list[int],
                mask: torch.Tensor) -> torch.Tensor:
    """MSE between W_Td * ASR and the teacher's hidden states on real tokens: the student's
    embedding population against the teacher's embeddings, layer i against teacher layer map[i].
    The student's positions are the first ones of the teacher's (the loihi student's taps end at
    its longest sentence; ``mask`` covers the student's positions)."""
    valid = mask.bool()
    sources = [0] + list(layer_map)
    total = 0.0
    for p, j in zip(projected, sources):
        total = total + F.mse_loss(p[valid], teacher_hidden[j][:, : p.shape[1]].to(p.dtype)[valid])
    return total


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    target = F.softmax(teacher_logits / temperature, dim=-1)
    return -(target * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()


def teacher_output_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                        regression: bool) -> torch.Tensor:
    """KD on the teacher's outputs: soft cross-entropy, or the MSE to the teacher's score for
    regression (a softmax over one output would be a constant)."""
    if regression:
        return F.mse_loss(logits.squeeze(-1), teacher_logits.squeeze(-1).to(logits.dtype))
    return soft_cross_entropy(logits, teacher_logits, temperature)


def prediction_loss(logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor | None,
                    settings: StageSettings, regression: bool) -> torch.Tensor:
    if teacher_logits is not None and not settings.gold_labels:
        return teacher_output_loss(logits, teacher_logits, settings.temperature, regression)
    if labels is None:
        if regression:
            raise ValueError("regression prediction stage needs labels or teacher outputs")
        raise SpikingBertError("prediction stage with gold labels needs labelled data")
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    return F.cross_entropy(logits, labels)


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_student(model: SpikingBert, encoded: EncodedDataset, spec: TaskSpec, *, t_conv: int | None = None,
                     batch_size: int = 64, progress: bool = False, workers: int | None = None,
                     dist: DistEnv | None = None) -> dict:
    """Task metrics of the spiking simulation at ``t_conv`` steps, plus wall time and throughput.

    The batches are simulated ``workers`` at a time (default: one per intra-op thread; see
    ``lava_spikingbert.model.inference.predict_batches``). Under torchrun (``dist``) every rank takes a
    share of the batches and all ranks get the same result."""
    T = int(t_conv if t_conv is not None else model.config.t_conv)
    return evaluate_student_at(model, encoded, spec, (T,), batch_size=batch_size, progress=progress,
                               workers=workers, dist=dist)[0]


def evaluate_student_at(model: SpikingBert, encoded: EncodedDataset, spec: TaskSpec, steps: Sequence[int], *,
                        batch_size: int = 64, progress: bool = False, workers: int | None = None,
                        dist: DistEnv | None = None) -> list[dict]:
    """``evaluate_student`` at every step count in ``steps`` (one result each, in increasing ``T``),
    all read from one simulation of ``max(steps)`` steps: the results equal separate simulations
    (``lava_spikingbert.model.neurons.time_chunks``). ``wall_s`` and ``sentences_per_s`` are those
    of that one simulation, and ``simulated_steps`` says how long it ran."""
    dist = dist or DistEnv()
    steps = sorted({int(t) for t in steps})
    was_training = model.training
    model.eval()
    n = len(encoded)
    logits = {T: torch.zeros(n, model.config.num_labels) for T in steps}
    start = time.perf_counter()
    batches = dist.shard(list(length_bucketed_batches(encoded, batch_size, shuffle=False)))
    inputs = [(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in batches]
    desc = f"eval T={steps[0]}" if len(steps) == 1 else f"eval T={','.join(map(str, steps))}"
    with tqdm(total=len(batches), desc=desc, disable=not (progress and dist.is_main), leave=False) as bar:
        outputs = predict_batches_at(model, inputs, steps, workers=workers, on_done=lambda i: bar.update())
    for batch, out in zip(batches, outputs):
        for T in steps:
            logits[T][batch["index"]] = out[T].float()
    for T in steps:
        dist.sum_(logits[T])  # every sentence was simulated by exactly one rank; the others hold zeros
    wall = time.perf_counter() - start
    model.train(was_training)
    results = []
    for T in steps:
        preds = logits[T].squeeze(-1).numpy() if spec.is_regression else logits[T].argmax(-1).numpy()
        metrics = compute_metrics(spec, preds, encoded.labels) if encoded.labels is not None else {}
        results.append({"metrics": metrics, "n": n, "t_conv": T, "wall_s": wall,
                        "sentences_per_s": n / wall if wall else None, "simulated_steps": steps[-1],
                        "predictions": preds.tolist()})
    return results


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, model: SpikingBert, tokenizer=None, state: dict | None = None) -> None:
    with atomic_directory(path) as tmp:
        write_model_files(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if state is not None:
            save_state(tmp / STATE_FILE, state)


def stage_has_outputs(stage_dir: Path) -> bool:
    """Whether ``stage_dir`` holds a checkpoint or final model of an earlier run (reads nothing)."""
    ckpt = Path(stage_dir) / "checkpoint"
    return any((ckpt / name).is_file() for name in (STATE_FILE, LEGACY_STATE_FILE)) \
        or (Path(stage_dir) / "final").is_dir()


def stage_done(stage_dir: Path) -> bool:
    return (stage_dir / DONE_FILE).is_file() and (stage_dir / "final" / "config.json").is_file()


# --------------------------------------------------------------------------- one stage
@dataclass
class StageResult:
    stage: str
    steps: int
    final_dir: Path
    wall_s: float
    sentences_per_s: float
    best_metric: float | None = None
    history: list[dict] = field(default_factory=list)
    completed: bool = True


@locks_directory("stage_dir")  # one run per stage directory (under torchrun: rank 0 holds it)
def run_stage(settings: StageSettings, student: SpikingBert, teacher, train: EncodedDataset, stage_dir: str | Path,
              *, tokenizer=None, spec: TaskSpec | None = None, dev: EncodedDataset | None = None,
              resume: bool = False, dist: DistEnv | None = None, progress: bool = True) -> StageResult:
    """Train ``student`` for one distillation stage; writes ``stage_dir/final`` (the stage's output:
    the best dev checkpoint for the prediction stage, the last one otherwise) and keeps a resumable
    ``stage_dir/checkpoint``."""
    run = StageRun(settings, student, teacher, train, Path(stage_dir), tokenizer=tokenizer, spec=spec, dev=dev,
                   dist=dist or DistEnv())
    run.prepare(resume)
    run.train(progress)
    return run.finish()


class StageRun:
    """One distillation stage in named steps: check the inputs, prepare the stage directory (or
    resume from its checkpoint), train, evaluate on dev, write the final model."""

    def __init__(self, settings: StageSettings, student: SpikingBert, teacher, train: EncodedDataset,
                 stage_dir: Path, *, tokenizer, spec: TaskSpec | None, dev: EncodedDataset | None, dist: DistEnv):
        self.student, self.teacher, self.train_data, self.dev, self.spec = student, teacher, train, dev, spec
        self.tokenizer, self.dist = tokenizer, dist
        self.stage_dir = stage_dir
        self.ckpt_dir, self.final_dir = stage_dir / "checkpoint", stage_dir / "final"
        self.profile = profile_of(student)
        if self.profile == "loihi":  # the stage trains with its weights (int8: QAT, straight-through)
            student.set_weights(settings.weights)
        elif settings.joint_fp32:
            raise SpikingBertError("joint_fp32 is for the loihi profile (its weights switch between fp32 and "
                                   "quantized in place)")
        elif settings.weights != "fp32":  # quantization-aware KD: latent fp32 weights, quantized forward, STE
            attach_weight_quantizers(student, settings.weights)
        self.layer_map, self.needs_teacher = self._check_inputs(settings)
        self.regression = getattr(student.config, "problem_type", "classification") == "regression"
        # the T the stage trains with, recorded as a number (None means the student's own t_conv)
        self.settings = replace(settings, t_conv=int(settings.t_conv or student.config.t_conv))
        self.step, self.best, self.history = 0, None, []
        self.wall_before, self.seen, self.start = 0.0, 0, time.perf_counter()
        self.steps_this_call = 0
        self._word_neighbours: WordNeighbours | None = None  # built on first use (augment_replace)
        self._connector_ids: list[list[int]] | None = None  # tokenised on first use (augment_join)

    def _check_inputs(self, settings: StageSettings) -> tuple[list[int] | None, bool]:
        """(teacher layer per student layer, whether the stage needs the teacher's outputs)."""
        student, teacher = self.student, self.teacher
        if settings.stage == "prediction" and settings.gold_labels and self.train_data.labels is None:
            raise SpikingBertError("prediction stage with gold labels needs labelled training data")
        n_teacher_layers = teacher.config.num_hidden_layers if teacher is not None else None
        layer_map = settings.layer_map or (default_layer_map(len(student.layers), n_teacher_layers)
                                           if n_teacher_layers else None)
        if layer_map is not None and (len(layer_map) != len(student.layers)
                                      or not all(1 <= j <= (n_teacher_layers or 0) for j in layer_map)):
            raise SpikingBertError(f"layer_map {layer_map} must give one teacher layer in 1..{n_teacher_layers} "
                             f"for each of the {len(student.layers)} student layers")
        if settings.augment_join and self.train_data.holds_pairs:
            raise SpikingBertError(f"stage {settings.stage}: augment_join joins single sentences; the training data "
                                   "holds sentence pairs")
        needs_teacher = settings.stage != "prediction" or not settings.gold_labels
        if needs_teacher and teacher is None:
            raise SpikingBertError(f"stage {settings.stage!r} needs a teacher")
        projections = student.fit if self.profile == "loihi" else student.fit_dense
        if settings.stage != "prediction" and projections is None:
            raise SpikingBertError("internal-layer distillation needs the W_Td projection: build the student with fit_size")
        return layer_map, needs_teacher

    # ------------------------------------------------------------------ before training
    def prepare(self, resume: bool) -> None:
        """Recover or clear the stage directory, seed, build the optimizer; resume if asked."""
        settings, dist = self.settings, self.dist
        if dist.is_main:  # (the main rank writes the stage directory; the others wait, then read)
            recover_directory(self.ckpt_dir)  # a crash while a checkpoint replaced the previous one
            if not resume:  # a fresh run: an earlier run's completion mark, best model and checkpoint are void
                (self.stage_dir / DONE_FILE).unlink(missing_ok=True)
                shutil.rmtree(self.stage_dir / "best", ignore_errors=True)
                shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        dist.barrier()
        seed_all(settings.seed)
        self.student.train()
        self.optimizer = make_optimizer(self.student, settings.lr, settings.weight_decay, head_lr=settings.head_lr,
                                        embed_lr=settings.embed_lr,
                                        embed_prefixes=HOST_EMBEDDINGS if self.profile == "loihi" else ("embeddings.",))
        self.scheduler = linear_schedule(self.optimizer, int(settings.warmup * settings.max_steps),
                                         settings.max_steps, decay=settings.decay)
        if resume:
            refuse_pickled_state(self.ckpt_dir / LEGACY_STATE_FILE,
                                 "Start over with --overwrite (pipeline: --restart).")
        if resume and (self.ckpt_dir / STATE_FILE).is_file():
            self._resume()

    def _resume(self) -> None:
        """Continue from the checkpoint: weights, optimizer, schedule, RNG, counters (same settings only)."""
        ckpt_dir, dist = self.ckpt_dir, self.dist
        state = require_keys(load_state(ckpt_dir / STATE_FILE), STATE_KEYS, ckpt_dir / STATE_FILE)
        saved = dict(state["settings"])
        if saved.get("t_conv") is None:  # earlier versions saved None for "the student's t_conv"
            saved["t_conv"] = json.loads((ckpt_dir / "config.json").read_text())["t_conv"]
        diff = settings_differences(saved, self.settings)
        saved_profile = read_profile(ckpt_dir)
        if saved_profile != self.profile:
            diff["profile"] = (saved_profile, self.profile)
        saved_world = state.get("world_size")  # not recorded by checkpoints of earlier versions
        if saved_world is not None and saved_world != dist.world_size:
            diff["processes"] = (saved_world, dist.world_size)
        refuse_other_settings(diff, f"{ckpt_dir}: refusing to resume with different settings")
        load_weights(self.student, ckpt_dir)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        self.wall_before, self.seen = state["wall_s"], state["sentences"]
        set_rng_state(state["rng"])
        if dist.is_main:
            logger.info("resuming stage %s at step %d/%d", self.settings.stage, self.step, self.settings.max_steps)

    # ------------------------------------------------------------------ training
    def train(self, progress: bool) -> None:
        """Train until ``max_steps`` (or ``run_steps`` more steps), evaluating and checkpointing on schedule."""
        settings, dist = self.settings, self.dist
        per_epoch = len(length_bucketed_batches(self.train_data, settings.batch_size, shuffle=True,
                                                seed=settings.seed, rank=dist.rank, world_size=dist.world_size))
        if per_epoch == 0:
            raise SpikingBertError(f"stage {settings.stage}: no training data ({len(self.train_data)} examples for "
                             f"{dist.world_size} process(es)); check the corpus / training file and --limit-train")
        self.start = time.perf_counter()
        if settings.eval_start and self.step == 0 and not self.history:
            self.evaluate()  # the starting weights compete for the best dev checkpoint (step 0)
        bar = tqdm(total=settings.max_steps, initial=self.step, desc=f"KD {settings.stage}",
                   disable=not (progress and dist.is_main))
        running = None
        while self.step < settings.max_steps and not self._paused():
            epoch, skip = divmod(self.step, per_epoch)
            batches = length_bucketed_batches(self.train_data, settings.batch_size, shuffle=True, seed=settings.seed,
                                              epoch=epoch, rank=dist.rank, world_size=dist.world_size)
            for idx in batches.batch_indices()[skip:]:
                batch = batches.collate(idx)
                loss, parts = self._train_step(batch)
                self.step += 1
                self.steps_this_call += 1
                self.seen += int(batch["attention_mask"].shape[0]) * dist.world_size
                running = loss if running is None else 0.95 * running + 0.05 * loss
                bar.update(1)
                bar.set_postfix(loss=f"{running:.4f}", **{k: f"{v:.3f}" for k, v in parts.items()})
                if settings.eval_every and self.step % settings.eval_every == 0 and self.step < settings.max_steps:
                    self.evaluate()
                if self.step % settings.checkpoint_every == 0 and self.step < settings.max_steps and dist.is_main:
                    save_checkpoint(self.ckpt_dir, self.student, self.tokenizer, self.checkpoint_state())
                if self.step >= settings.max_steps or self._paused():
                    break
        bar.close()

    def _paused(self) -> bool:
        """Whether this call has run its ``run_steps`` (a resumable stop before ``max_steps``)."""
        return bool(self.settings.run_steps) and self.steps_this_call >= self.settings.run_steps

    def _train_step(self, batch: dict) -> tuple[float, dict[str, float]]:
        """One optimizer step on a batch; returns the loss and its parts."""
        settings, student = self.settings, self.student
        loihi = self.profile == "loihi"
        mode = "equilibrium" if settings.forward == "spiking" else rate_ann_mode(student)
        if settings.joint_fp32:  # odd steps through the fp32 weights (the same steps on a resumed run)
            student.set_weights("fp32" if self.step % 2 else settings.weights)
        if settings.augment_join:  # whether this step joins: the same on every rank (equal work per step)
            g = torch.Generator().manual_seed(settings.seed * 1_000_033 + STAGES.index(settings.stage) * 100_019
                                              + self.step)
            if torch.rand((), generator=g).item() < settings.augment_join:
                batch = join_row_pairs(batch, self._connectors(), g, max_length=self.train_data.max_length)
        if settings.augment_mask or settings.augment_replace:  # the same draws on a resumed run: seeded by
            # stage, step and rank
            g = torch.Generator().manual_seed(settings.seed * 1_000_003 + STAGES.index(settings.stage) * 100_003
                                              + self.step * 101 + self.dist.rank)
            batch = mask_inner_tokens(batch, settings.augment_mask, self._mask_id(), g,
                                      replace=settings.augment_replace, neighbours=self._neighbours())
        mask = batch["attention_mask"]
        out = student(batch["input_ids"], mask, batch["token_type_ids"], mode=mode, t_conv=settings.t_conv)
        t_out = teacher_outputs(self.teacher, batch) if self.needs_teacher else None
        if settings.stage == "prediction":
            loss = prediction_loss(out.logits, t_out.logits if t_out is not None else None,
                                   batch.get("labels"), settings, self.regression)
            parts = {"pred": loss.item()}
        elif loihi:  # no attention: hidden-state KD of the taps (token positions) only
            rep = hidden_loss(out.projected, t_out.hidden_states, self.layer_map, out.token_mask)
            loss = settings.rep_weight * rep
            parts = {"rep": rep.item()}
        else:
            att = attention_loss(out.attention_scores, t_out.attention_scores, self.layer_map, mask)
            rep = hidden_loss(out.projected_hidden, t_out.hidden_states, self.layer_map, mask)
            loss = settings.att_weight * att + settings.rep_weight * rep
            parts = {"att": att.item(), "rep": rep.item()}
        if settings.stage != "prediction" and settings.logit_weight:
            if t_out.logits is None:
                raise SpikingBertError(f"stage {settings.stage!r}: logit_weight needs a teacher with a task head")
            logit = teacher_output_loss(out.logits, t_out.logits, settings.temperature, self.regression)
            loss = loss + settings.logit_weight * logit
            parts["logit"] = logit.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(student)
        if settings.clip_norm:
            torch.nn.utils.clip_grad_norm_(student.parameters(), settings.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        if settings.joint_fp32:
            student.set_weights(settings.weights)
        return loss.item(), parts

    def _neighbours(self) -> WordNeighbours | None:
        """The teacher's whole-word neighbours, built on first use (``augment_replace``)."""
        if not self.settings.augment_replace:
            return None
        if self._word_neighbours is None:
            if self.tokenizer is None or self.teacher is None:
                raise SpikingBertError(f"stage {self.settings.stage}: augment_replace needs the teacher and its "
                                       "tokenizer")
            embeddings = self.teacher.get_input_embeddings().weight.detach().cpu()
            tokens = self.tokenizer.convert_ids_to_tokens(list(range(embeddings.shape[0])))
            self._word_neighbours = word_neighbours(tokens, embeddings)
        return self._word_neighbours

    def _connectors(self) -> list[list[int]]:
        """``JOIN_CONNECTORS`` as token ids of this run's tokenizer (``augment_join``), tokenised once."""
        if self._connector_ids is None:
            if self.tokenizer is None:
                raise SpikingBertError(f"stage {self.settings.stage}: augment_join needs the tokenizer")
            ids = [self.tokenizer(word, add_special_tokens=False)["input_ids"] if word else []
                   for word in JOIN_CONNECTORS]
            unk = getattr(self.tokenizer, "unk_token_id", None)
            if any(unk is not None and unk in seq for seq in ids):
                raise SpikingBertError(f"stage {self.settings.stage}: augment_join: the tokenizer has no token for "
                                       f"one of the connectors {JOIN_CONNECTORS}")
            self._connector_ids = ids
        return self._connector_ids

    def _mask_id(self) -> int:
        mask_id = getattr(self.tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise SpikingBertError(f"stage {self.settings.stage}: augment_mask needs a tokenizer with a mask token")
        return int(mask_id)

    def checkpoint_state(self) -> dict:
        return {"settings": asdict(self.settings), "world_size": self.dist.world_size, "step": self.step,
                "best": self.best, "history": self.history, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                "wall_s": self.wall_before + (time.perf_counter() - self.start), "sentences": self.seen}

    def evaluate(self) -> float | None:
        """Dev metric of the prediction stage (keeps the best model in ``stage_dir/best``)."""
        settings, spec, dist = self.settings, self.spec, self.dist
        if self.dev is None or spec is None or settings.stage != "prediction":
            return None
        value, n = self._dev_metric()
        record = {"step": self.step, spec.main_metric: value, "n": n}
        if settings.joint_fp32:  # the selection value is the worse of the two; both are recorded
            self.student.set_weights("fp32")
            fp32_value, _ = self._dev_metric()
            self.student.set_weights(settings.weights)
            record.update({f"{spec.main_metric}_{settings.weights}": value, f"{spec.main_metric}_fp32": fp32_value})
            value = record[spec.main_metric] = worse(value, fp32_value)
        self.history.append(record)
        if improves(value, self.best):
            self.best = value
            if dist.is_main:
                save_checkpoint(self.stage_dir / "best", self.student, self.tokenizer)
        if dist.is_main:
            both = (f" ({settings.weights} {record[f'{spec.main_metric}_{settings.weights}']:.4f}, fp32 "
                    f"{record[f'{spec.main_metric}_fp32']:.4f})" if settings.joint_fp32 else "")
            logger.info("stage %s step %d: dev %s = %.4f%s (best %.4f)", settings.stage, self.step,
                        spec.main_metric, value, both, self.best)
        return value

    def _dev_metric(self) -> tuple[float, int]:
        """(main dev metric, sentences) of the student as it stands; leaves it in training mode."""
        result = evaluate_student(self.student, self.dev, self.spec, dist=self.dist)
        self.student.train()
        return result["metrics"][self.spec.main_metric], result["n"]

    # ------------------------------------------------------------------ after training
    def finish(self) -> StageResult:
        """A resumable checkpoint when stopped early; else the final evaluation, model and record."""
        settings, dist, step = self.settings, self.dist, self.step
        wall = self.wall_before + (time.perf_counter() - self.start)
        rate = self.seen / wall if wall else 0.0
        if step < settings.max_steps:  # interrupted on purpose (run_steps): leave a resumable checkpoint
            if dist.is_main:
                save_checkpoint(self.ckpt_dir, self.student, self.tokenizer, self.checkpoint_state())
            dist.barrier()
            return StageResult(settings.stage, step, self.final_dir, wall, rate, self.best, self.history, False)
        self.evaluate()
        dist.check_in_sync(self.student)
        if dist.is_main:
            if settings.stage == "prediction" and (self.stage_dir / "best").is_dir():
                save_checkpoint(self.final_dir, load_student(self.stage_dir / "best"), self.tokenizer)
            else:
                save_checkpoint(self.final_dir, self.student, self.tokenizer)
            save_checkpoint(self.ckpt_dir, self.student, self.tokenizer, self.checkpoint_state())
            result = {"stage": settings.stage, "steps": step, "wall_s": wall, "sentences": self.seen,
                      "world_size": dist.world_size, "sentences_per_s": self.seen / wall if wall else None,
                      "best_dev": self.best, "history": self.history, "settings": asdict(settings)}
            atomic_write_json(self.stage_dir / DONE_FILE, result)
        dist.barrier()
        return StageResult(settings.stage, step, self.final_dir, wall, rate, self.best, self.history, True)


def load_stage_result(stage_dir: Path) -> dict:
    return json.loads((Path(stage_dir) / DONE_FILE).read_text())
