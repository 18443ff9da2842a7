"""The main job: teacher fine-tuning -> three distillation stages -> evaluation across T.

``run_pipeline`` leaves ``OUT/teacher/`` (fine-tuned HF BERT), ``OUT/student/`` (the final spiking
student, HF-style), ``OUT/stages/{1-general,2-intermediate,3-prediction}/``, ``OUT/eval_vs_T.json``,
``OUT/accuracy_vs_T.png`` and ``OUT/pipeline_summary.json``. Every step is skipped when its output
is complete, so re-running with ``resume=True`` after a kill continues where it stopped; the
settings are recorded in ``OUT/pipeline_settings.json`` and a re-run with other settings is refused.
``resume=False`` (``--restart``) trains everything again.

The paper profile's default (``train_forward="rate_ann_warmup"``) trains the general and internal-layer
stages as the rate ANN and the prediction stage at the spiking equilibrium; its internal-layer stage
adds soft cross-entropy on the teacher's logits to the attention + hidden-state losses
(``RATE_ANN_INTERMEDIATE_LOGIT_WEIGHT``), so the classifier is trained before the spiking stage.

``profile="loihi"`` trains the stock-Lava ``LoihiSpikingMixer`` (``model.loihi``) with the same
teacher and stages, mapped onto them as the measured recipe (benchmarks/loihi_topology.py) does:
a new student copies the teacher's embeddings and calibrates its populations; general KD = rate
ANN, hidden-state KD against the pre-trained teacher; internal-layer KD = rate ANN, hidden-state KD
+ soft cross-entropy on the fine-tuned teacher's logits; prediction KD = spiking at ``t_conv``
with equilibrium gradients, soft cross-entropy, the best dev checkpoint (the starting weights
count as a candidate), with the deployed ``weights`` (default int8, QAT). The evaluation then
reports the deployed model and the same weights at fp32.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lava_spikingbert.contract.atomic import atomic_save_figure, atomic_write_json
from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.run_lock import locks_directory
from lava_spikingbert.model.checkpoint import read_profile
from lava_spikingbert.model.config import SpikingBertConfig, stage_forward
from lava_spikingbert.model.encoder import SpikingBert
from lava_spikingbert.model.loihi import LoihiSpikingMixer
from lava_spikingbert.model.student import load_student
from training.batching import encode
from training.common import init_distributed, refuse_other_settings, seed_all
from training.distill import (STAGES, StageSettings, evaluate_student_at, init_loihi_student, init_student_from_teacher,
                              load_stage_result, loihi_config_from_teacher, run_stage, save_checkpoint,
                              settings_differences, stage_done, student_config_from_teacher)
from training.pipeline_data import HOLDOUT_FRACTION, HOLDOUT_MAX, CustomFiles, carve_holdout, mean_words, sized_budget
from training.readers import load_glue, plain_text_corpus
from training.tasks import get_task
from training.teacher import default_teacher_path, evaluate_teacher, finetune_teacher, load_teacher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """How much training each step gets. ``default`` fits in about an hour on 2 CPU cores."""

    teacher_epochs: float
    general_steps: int
    intermediate_steps: int
    prediction_steps: int
    batch_size: int = 32
    train_t_conv: int = 8  # simulation steps while training (evaluation uses the model's t_conv)
    eval_every: int = 200
    eval_batch_size: int = 64  # sentences per simulated batch in the final evaluation
    general_limit: int | None = None  # sentences of the general-KD corpus
    teacher_limit: int | None = None
    dev_limit: int | None = None
    # masking augmentation of the internal-layer stage (``StageSettings.augment_mask``): the longer
    # budgets see the training set several times over, and the teacher labels each perturbed sentence
    intermediate_mask: float = 0.0
    # and the share of inner whole words replaced by a nearest neighbour (``StageSettings.augment_replace``)
    intermediate_replace: float = 0.0
    # and the share of its steps that join the batch's sentences in pairs (``StageSettings.augment_join``)
    intermediate_join: float = 0.0
    # loihi profile, quantized weights: the prediction stage trains and selects its checkpoint for the
    # deployed weights and their fp32 latent weights together (``StageSettings.joint_fp32``)
    prediction_joint_fp32: bool = False


BUDGETS = {
    "tiny": Budget(teacher_epochs=1, general_steps=4, intermediate_steps=4, prediction_steps=6, batch_size=8,
                   train_t_conv=4, eval_every=3, general_limit=64, teacher_limit=64, dev_limit=32,
                   eval_batch_size=8),
    # train_t_conv 16: with the default rate-ANN warm-up only the prediction stage simulates, and
    # training it at the evaluation's T beat training at T=8. Stage 2 is the longest because its
    # rate-ANN steps are cheap and more of them raised the final accuracy; the lengths are chosen
    # so that the whole job fits in about an hour on 2 cores (measurements: docs/RESULTS.md)
    "default": Budget(teacher_epochs=1, general_steps=300, intermediate_steps=1300, prediction_steps=600,
                      train_t_conv=16, eval_every=200),
    # with the rate-ANN warm-up only the prediction stage simulates; it trains at the evaluation's
    # T=16 and gets the most steps of any budget, since the gap between the rate ANN and the
    # spiking net at T=16 is what stage 3 closes (docs/RESULTS.md)
    "full": Budget(teacher_epochs=3, general_steps=1000, intermediate_steps=4000, prediction_steps=2400,
                   train_t_conv=16, eval_every=400),
}
# the loihi profile (stock Lava processes): two rate-ANN stages (cheap steps, most of the budget;
# stage 1 short, since its targets are the pre-trained teacher's) and a spiking prediction stage at
# the evaluation's T with int8 QAT, evaluated every eval_every steps for the best dev checkpoint.
# "default": the whole main job (teacher included) sized for about an hour on 2 cores (docs/RESULTS.md)
LOIHI_BUDGETS = {
    "tiny": Budget(teacher_epochs=1, general_steps=4, intermediate_steps=4, prediction_steps=6, batch_size=8,
                   train_t_conv=4, eval_every=3, general_limit=64, teacher_limit=64, dev_limit=32,
                   eval_batch_size=8),
    "default": Budget(teacher_epochs=1, general_steps=500, intermediate_steps=3500, prediction_steps=600,
                      train_t_conv=16, eval_every=100),
    "full": Budget(teacher_epochs=3, general_steps=2000, intermediate_steps=12000, prediction_steps=2400,
                   train_t_conv=16, eval_every=200, intermediate_mask=0.15, intermediate_join=0.5,
                   prediction_joint_fp32=True),
}
PROFILE_BUDGETS = {"paper": BUDGETS, "loihi": LOIHI_BUDGETS}
# per profile: student depth and deployed weights when not given
PROFILE_DEFAULTS = {"paper": {"num_layers": 4, "weights": "fp32"}, "loihi": {"num_layers": 2, "weights": "int8"}}
EVAL_T = (4, 8, 16, 32, 64)
# the budget sized from the training set (training/pipeline_data.py: sized_budget); its lengths are the caps
ADAPTIVE_BUDGETS = ("default",)
SELECT_ON = ("dev", "holdout")  # the data the best checkpoint is chosen on
RUN_SETTINGS_FILE = "pipeline_settings.json"
USE_RESTART = " (use another --out, or --restart to start over in this one)"


# the internal-layer stage, when it trains the rate ANN, also distils the teacher's logits (soft
# cross-entropy, this weight): the classifier then learns in cheap rate-ANN steps instead of only in
# the spiking prediction stage. The paper's method (a spiking stage 2) keeps its attention +
# hidden-state losses alone. Measured in docs/RESULTS.md ("What was tried").
RATE_ANN_INTERMEDIATE_LOGIT_WEIGHT = 1.0


def _stage_settings(stage: str, budget: Budget, **overrides) -> StageSettings:
    steps = {"general": budget.general_steps, "intermediate": budget.intermediate_steps,
             "prediction": budget.prediction_steps}[stage]
    lr = {"general": 1e-4, "intermediate": 1e-4, "prediction": 5e-5}[stage]
    base = StageSettings(stage=stage, max_steps=steps, batch_size=budget.batch_size, lr=lr,
                         t_conv=budget.train_t_conv, checkpoint_every=max(1, min(100, steps // 4)),
                         eval_every=budget.eval_every if stage == "prediction" else 0,
                         augment_mask=budget.intermediate_mask if stage == "intermediate" else 0.0,
                         augment_replace=budget.intermediate_replace if stage == "intermediate" else 0.0,
                         augment_join=budget.intermediate_join if stage == "intermediate" else 0.0)
    settings = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if stage == "intermediate" and settings.forward == "rate_ann" and overrides.get("logit_weight") is None:
        settings = replace(settings, logit_weight=RATE_ANN_INTERMEDIATE_LOGIT_WEIGHT)
    return settings


def _loihi_stage_settings(stage: str, budget: Budget, **overrides) -> StageSettings:
    """The loihi profile's stage settings (learning rates of the measured recipe; the host
    embeddings, copied from the teacher, move at a tenth of the rate)."""
    lr = {"general": 1e-3, "intermediate": 1e-3, "prediction": 1e-4}[stage]
    base = _stage_settings(stage, budget, lr=lr)
    joint_fp32 = (budget.prediction_joint_fp32 and stage == "prediction"
                  and (overrides.get("weights") or base.weights) != "fp32")
    return replace(base, embed_lr=lr * 0.1, joint_fp32=joint_fp32, att_weight=0.0, rep_weight=1.0,
                   logit_weight=RATE_ANN_INTERMEDIATE_LOGIT_WEIGHT if stage == "intermediate" else 0.0,
                   eval_start=stage == "prediction",
                   **{k: v for k, v in overrides.items() if v is not None})


def plot_accuracy_vs_t(rows: list[dict], metric: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["t_conv"] for r in rows], [100 * r["metrics"][metric] for r in rows], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("simulation steps T")
    ax.set_ylabel(f"dev {metric} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_save_figure(fig, path)


@locks_directory("out_dir")  # one run per output directory (under torchrun: rank 0 holds it)
def run_pipeline(task: str = "sst2", out_dir: str | Path = "runs/sst2", *, glue_dir=None, teacher_path=None,
                 budget: str | Budget = "default", resume: bool = True, num_layers: int | None = None, t_conv: int = 16,
                 max_length: int = 64, init: str = "layers", gold_labels: bool = False, temperature: float = 1.0,
                 eval_t: tuple[int, ...] = EVAL_T, general_corpus: str | None = None, seed: int = 42,
                 weights: str | None = None, train_forward: str = "rate_ann_warmup", neuron: str = "if_signed_pair",
                 progress: bool = True, profile: str = "paper", custom: CustomFiles | None = None,
                 select_on: str = "dev", holdout_fraction: float = HOLDOUT_FRACTION,
                 dilations: list[int] | None = None) -> dict:
    """``num_layers`` and ``weights`` default to the profile's (``PROFILE_DEFAULTS``); ``budget``
    names one of the profile's budgets (``PROFILE_BUDGETS``); a budget named in ``ADAPTIVE_BUDGETS``
    is sized from the training set (``sized_budget``). ``custom``: the user's own files instead of a
    GLUE task (``task`` is then ignored). ``select_on``: the split the teacher's epoch and the
    prediction stage's checkpoint are chosen on, GLUE's dev split (which is also the reported one) or
    ``holdout``, a stratified share of the training set (``holdout_fraction``, at most
    ``HOLDOUT_MAX`` sentences, drawn with ``seed``) left out of training. ``dilations``: the loihi
    student's per-layer token-mixing dilations (``LoihiConfig.dilations``; None: 1 in every layer)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if profile not in PROFILE_BUDGETS:
        raise SpikingBertError(f"profile must be one of {tuple(PROFILE_BUDGETS)}, got {profile!r}")
    num_layers = num_layers if num_layers is not None else PROFILE_DEFAULTS[profile]["num_layers"]
    weights = weights if weights is not None else PROFILE_DEFAULTS[profile]["weights"]
    dist = init_distributed()
    b = PROFILE_BUDGETS[profile][budget] if isinstance(budget, str) else budget
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {select_on!r}")
    if custom is None and str(task).strip().lower() == "custom":
        raise ValueError("task 'custom' needs its files (--train-file, --data-file)")
    spec = custom.spec() if custom is not None else get_task(task)
    if profile == "loihi" and spec.is_regression:
        raise SpikingBertError(f"task {spec.name}: the loihi profile trains classifiers only")
    if dilations is not None and profile != "loihi":
        raise SpikingBertError("dilations: only the loihi profile mixes tokens by convolution")
    # the data is read first: the budget is sized from the training set, and the settings name the data
    train_ex = custom.load(spec, "train") if custom is not None else load_glue(spec, "train", glue_dir)
    dev_ex = custom.load(spec, "dev", limit=b.dev_limit) if custom is not None \
        else load_glue(spec, "dev", glue_dir, limit=b.dev_limit)
    holdout_ex = None
    selection = {"on": select_on}
    if select_on == "holdout":
        train_ex, holdout_ex = carve_holdout(train_ex, spec, seed=seed, fraction=holdout_fraction)
        selection.update({"fraction": holdout_fraction, "max_sentences": HOLDOUT_MAX, "seed": seed,
                          "sentences": len(holdout_ex), "stratified": not spec.is_regression})
    # a bad forward choice fails now, not after the teacher's fine-tuning; the rate-ANN stages' longer
    # budget for long sentences is measured to fit the hour for the paper profile only
    rate_ann_stages = [s for s in STAGES if stage_forward(train_forward, s) == "rate_ann" and profile == "paper"]
    budget_rule = None
    if isinstance(budget, str) and budget in ADAPTIVE_BUDGETS:
        b, budget_rule = sized_budget(b, len(train_ex), mean_words(train_ex), rate_ann_stages)
        if dist.is_main:
            logger.info("budget %r sized from the training set: %s", budget, budget_rule)
    # the budget's batch size is global: under torchrun every rank takes its share of each step's
    # batch (checked before the teacher's fine-tuning, not after)
    if b.batch_size % dist.world_size:
        raise ValueError(f"budget batch size {b.batch_size} is not divisible by the {dist.world_size} processes")
    per_rank_batch = b.batch_size // dist.world_size
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_teacher_path = teacher_path or default_teacher_path()
    _check_run_settings(out, {
        "task": spec.name, "budget": dataclasses.asdict(b), "teacher": str(base_teacher_path),
        "num_layers": num_layers, "t_conv": t_conv, "max_length": max_length, "init": init,
        "gold_labels": gold_labels, "temperature": temperature, "general_corpus": general_corpus, "seed": seed,
        "weights": weights, "train_forward": train_forward, "neuron": neuron, "profile": profile,
        "data": custom.record(spec) if custom is not None else None, "selection": selection,
        "budget_rule": budget_rule, "data_paths": custom.paths() if custom is not None else None,
        "dilations": dilations},
        resume=resume, dist=dist)
    if not resume:  # --restart: nothing of the earlier run may be continued, reused or mistaken for this one's
        if dist.is_main:
            for name in ("stages", "student"):
                shutil.rmtree(out / name, ignore_errors=True)
            for name in ("eval_vs_T.json", "accuracy_vs_T.png", "pipeline_summary.json"):
                (out / name).unlink(missing_ok=True)
        dist.barrier()
    timings: dict[str, dict] = {}
    t_start = time.perf_counter()

    # 1. teacher ------------------------------------------------------------------------------
    teacher_dir = out / "teacher"
    if not resume or not (teacher_dir / "teacher_metrics.json").is_file() \
            or not (teacher_dir / "config.json").is_file() or _teacher_incomplete(teacher_dir):
        if dist.is_main:
            t0 = time.perf_counter()
            with dist.main_only_threads():
                tm = finetune_teacher(spec, teacher_dir, glue_dir=glue_dir, teacher_path=base_teacher_path,
                                      epochs=b.teacher_epochs, max_length=max_length, seed=seed,
                                      limit_train=b.teacher_limit, limit_eval=b.dev_limit, resume=resume,
                                      overwrite=not resume, progress=progress,
                                      # GLUE with dev selection: the teacher reads GLUE's files itself
                                      train_examples=None if custom is None and holdout_ex is None
                                      else train_ex[: b.teacher_limit],
                                      eval_examples=None if custom is None and holdout_ex is None
                                      else (holdout_ex if holdout_ex is not None else dev_ex))
            timings["teacher"] = {"wall_s": time.perf_counter() - t0, "dev": tm.get("dev")}
        dist.barrier()
    teacher_metrics = _read_json(teacher_dir / "teacher_metrics.json")
    _check_teacher(teacher_dir, teacher_metrics.get("hparams") or {}, {
        "task": spec.name, "epochs": b.teacher_epochs, "max_length": max_length, "seed": seed,
        "limit_train": b.teacher_limit, "limit_eval": b.dev_limit})
    task_teacher, tokenizer = load_teacher(teacher_dir, num_labels=spec.num_labels, problem_type=spec.problem_type)
    base_teacher, _ = load_teacher(base_teacher_path, num_labels=None)
    if holdout_ex is not None:  # the teacher's recorded metrics are the holdout's; the reported ones are dev's
        teacher_metrics = {**teacher_metrics, "selected_on": "holdout", "holdout": teacher_metrics.get("dev"),
                           "dev": evaluate_teacher(task_teacher, tokenizer, spec, examples=dev_ex,
                                                   max_length=max_length)["metrics"] if dist.is_main else None}

    # data ----------------------------------------------------------------------------------------
    train = encode(train_ex, tokenizer, max_length)
    dev = encode(dev_ex, tokenizer, max_length)
    selection_data = encode(holdout_ex, tokenizer, max_length) if holdout_ex is not None else dev
    corpus = plain_text_corpus(general_corpus) if general_corpus else plain_text_corpus(train_ex)
    if b.general_limit:
        corpus = corpus[: b.general_limit]
    general = encode(corpus, tokenizer, max_length)

    # 2. student initialisation -------------------------------------------------------------------
    seed_all(seed)
    if profile == "loihi":
        config = loihi_config_from_teacher(base_teacher.config, num_layers=num_layers, t_conv=t_conv,
                                           max_length=max_length, num_labels=spec.num_labels, dilations=dilations)
    else:
        config = student_config_from_teacher(base_teacher.config, num_layers=num_layers, t_conv=t_conv,
                                             max_length=max_length, num_labels=spec.num_labels,
                                             problem_type="regression" if spec.is_regression else "classification",
                                             neuron=neuron)
    config.extra.update({"task": spec.name, "teacher": str(base_teacher_path), "init": init,
                         "train_forward": train_forward})
    if custom is not None and spec.labels:  # the class order, for evaluating the student on the files later
        config.extra["labels"] = list(spec.labels)
    if profile == "loihi":  # embeddings from the teacher, populations calibrated on the first stage's data
        student = LoihiSpikingMixer(config)
        init_loihi_student(student, base_teacher, general, embeddings=init != "none", seed=seed)
    else:
        student = SpikingBert(config)
        if init != "none":
            init_student_from_teacher(student, base_teacher, layers=(init == "layers"))

    # 3. the three distillation stages --------------------------------------------------------------
    stages = [("general", base_teacher, general, "1-general"),
              ("intermediate", task_teacher, train, "2-intermediate"),
              ("prediction", task_teacher, train, "3-prediction")]
    previous = None
    sentence_pairs = train.holds_pairs  # joining sentences (the budget's intermediate_join) needs single ones
    for stage, teacher, data, dirname in stages:
        stage_dir = out / "stages" / dirname
        if previous is not None:
            student = load_student(previous)
            student.config.t_conv = t_conv
        # the loihi profile's rate stages train fp32 weights; its prediction stage the deployed ones
        stage_weights = weights if profile == "paper" or stage == "prediction" else "fp32"
        make_settings = _loihi_stage_settings if profile == "loihi" else _stage_settings
        settings = make_settings(stage, b, seed=seed, weights=stage_weights, batch_size=per_rank_batch,
                                 forward=stage_forward(train_forward, stage),
                                 gold_labels=gold_labels if stage == "prediction" else None,
                                 temperature=temperature, augment_join=0.0 if sentence_pairs else None)
        if resume and stage_done(stage_dir):
            _check_completed_stage(stage_dir, settings, dist.world_size, neuron, profile)
            logger.info("stage %s already complete: %s", stage, stage_dir)
        else:
            run_stage(settings, student, teacher, data, stage_dir, tokenizer=tokenizer, spec=spec, dev=selection_data,
                      resume=resume, dist=dist, progress=progress)
        timings[stage] = {k: v for k, v in load_stage_result(stage_dir).items() if k in
                          ("wall_s", "sentences_per_s", "steps", "best_dev")}
        previous = stage_dir / "final"

    # 4. the final student and its accuracy vs T ----------------------------------------------------
    student_dir = out / "student"
    final = load_student(previous)
    if dist.is_main:
        save_checkpoint(student_dir, final, tokenizer)
    # the deployed model; for the loihi profile also the same weights unquantized (fp32)
    models = [(weights, final)]
    if profile == "loihi" and weights != "fp32":
        models.append(("fp32", load_student(previous, weights="fp32")))
    rows = []
    for precision, model in models:  # every rank simulates a share of the dev batches, once for all T
        for r in evaluate_student_at(model, dev, spec, eval_t, batch_size=b.eval_batch_size, progress=progress,
                                     dist=dist):
            T = r["t_conv"]
            r.pop("predictions")
            rows.append({"task": spec.name, "split": "dev", "backend": "torch", "precision": precision,
                         "profile": profile, "deployed": precision == weights, "selected_on": select_on, **r})
            if dist.is_main:
                logger.info("T=%d %s dev %s", T, precision, r["metrics"])
    if dist.is_main:
        atomic_write_json(out / "eval_vs_T.json", rows)
        deployed = [r for r in rows if r["deployed"]]
        plot_accuracy_vs_t(deployed, spec.main_metric, out / "accuracy_vs_T.png",
                           f"{spec.name}: spiking student ({profile}, {weights}) vs T")
        summary = {"task": spec.name, "profile": profile, "budget": b.__dict__, "processes": dist.world_size,
                   "teacher": teacher_metrics, "stages": timings, "selection": selection,
                   "budget_rule": budget_rule, "data": custom.paths() if custom is not None else None,
                   "eval_vs_T": rows, "wall_s": time.perf_counter() - t_start, "student_dir": str(student_dir)}
        atomic_write_json(out / "pipeline_summary.json", summary)
        _print_table(rows, spec.main_metric, teacher_metrics)
        print(f"checkpoints chosen on: {select_on}" + (f" ({len(holdout_ex)} training sentences held out)"
                                                       if holdout_ex is not None else " (the reported split)"))
    dist.barrier()
    return {"rows": rows, "student_dir": student_dir, "teacher": teacher_metrics}


# settings introduced after runs had recorded theirs, with the value those runs used
SETTINGS_ADDED_LATER = {"neuron": "if_subtract", "profile": "paper", "data": None, "selection": {"on": "dev"},
                         "dilations": None}
# settings recorded for the reader but not compared on a resume: the budget rule's inputs follow from
# the data (compared as "data" or the task) and its outcome is compared as "budget"; paths may move
SETTINGS_RECORDED_ONLY = ("budget_rule", "data_paths")


def _budget_defaults() -> dict:
    return {f.name: f.default for f in dataclasses.fields(Budget) if f.default is not dataclasses.MISSING}


def _check_run_settings(out: Path, settings: dict, *, resume: bool, dist) -> None:
    """Outputs in ``out`` are reused only by a run with the same settings: compare with the settings
    recorded by the run that made them (``--restart`` starts over and records the new ones)."""
    path = out / RUN_SETTINGS_FILE
    settings = json.loads(json.dumps(settings))  # as JSON would give them back (tuples -> lists)
    if resume and path.is_file():
        saved = {**SETTINGS_ADDED_LATER, **_read_json(path)}
        if isinstance(saved.get("budget"), dict):  # a budget field added later: those runs had its default
            saved["budget"] = {**_budget_defaults(), **saved["budget"]}
        refuse_other_settings({k: (saved.get(k), v) for k, v in settings.items()
                               if k not in SETTINGS_RECORDED_ONLY and saved.get(k) != v},
                              f"{out} holds the outputs of a run with other settings{USE_RESTART}")
    elif resume and any((out / d).exists() for d in ("teacher", "stages")):
        logger.warning("%s: earlier outputs without a record of their settings (%s); reusing them", out,
                       RUN_SETTINGS_FILE)
    if dist.is_main:
        atomic_write_json(path, settings)
    dist.barrier()


def _check_completed_stage(stage_dir: Path, settings: StageSettings, world_size: int, neuron: str,
                           profile: str = "paper") -> None:
    """A completed stage is reused only if it was trained with these settings and neuron kind (also
    when the run settings file predates it); the batch is compared as the global batch of all processes."""
    done = load_stage_result(stage_dir)
    saved = dict(done.get("settings") or {})
    if "batch_size" in saved:
        saved["batch_size"] *= int(done.get("world_size", 1))
    diff = settings_differences(saved, replace(settings, batch_size=settings.batch_size * world_size))
    trained_profile = read_profile(stage_dir / "final")
    if trained_profile != profile:
        diff["profile"] = (trained_profile, profile)
    elif profile == "paper":
        trained_neuron = SpikingBertConfig.load(stage_dir / "final").neuron
        if trained_neuron != neuron:
            diff["neuron"] = (trained_neuron, neuron)
    refuse_other_settings(diff, f"{stage_dir} was completed with other settings{USE_RESTART}")


def _check_teacher(teacher_dir: Path, saved: dict, expected: dict) -> None:
    """The fine-tuned teacher in ``teacher_dir`` must come from this run's settings."""
    refuse_other_settings({k: (saved[k], v) for k, v in expected.items() if k in saved and saved[k] != v},
                          f"{teacher_dir} was fine-tuned with other settings{USE_RESTART}")


def _teacher_incomplete(teacher_dir: Path) -> bool:
    m = _read_json(teacher_dir / "teacher_metrics.json") if (teacher_dir / "teacher_metrics.json").is_file() else {}
    return not m.get("completed", True)


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _print_table(rows: list[dict], metric: str, teacher: dict) -> None:
    print(f"\n{'T':>4} | {'weights':>7} | {'dev ' + metric:>12} | {'sentences/s':>11} (one simulation of the longest T)")
    print("-" * 44)
    for r in rows:
        print(f"{r['t_conv']:>4} | {r['precision']:>7} | {100 * r['metrics'][metric]:>11.2f}% | "
              f"{r['sentences_per_s']:>11.1f}")
    tm = (teacher or {}).get("dev") or {}
    if metric in tm:
        print(f"teacher | {100 * tm[metric]:.2f}%")

