"""The pipeline's data: the user's own files (``--task custom``), the record that identifies them,
the validation split carved from the training data (``--select-on holdout``) and the budget sized
from the training set (``--budget default``).

No torch: plain lists of :class:`~training.readers.Example`.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from training.readers import Example, custom_task_spec, load_custom
from training.tasks import DataError, TaskSpec

# --------------------------------------------------------------------------------------------------
# The user's own files
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomFiles:
    """A task given as two headed TSV/CSV files: ``train_file`` (training) and ``data_file`` (the
    labelled split the results are reported on, like GLUE's dev split)."""

    train_file: str
    data_file: str
    text_columns: tuple[str, ...] = ("sentence",)
    label_column: str = "label"
    task_type: str = "classification"
    labels: tuple[str, ...] | None = None  # None: the sorted values of the training file's label column
    name: str = "custom"

    def spec(self) -> TaskSpec:
        labels = list(self.labels) if self.labels else None
        infer_from = self.train_file if labels is None and self.task_type == "classification" else None
        return custom_task_spec(self.name, task_type=self.task_type, labels=labels, path=infer_from,
                                text_columns=list(self.text_columns), label_column=self.label_column)

    def load(self, spec: TaskSpec, split: str, limit: int | None = None) -> list[Example]:
        """The training file (``split="train"``) or the data file (any other split)."""
        path = self.train_file if split == "train" else self.data_file
        return load_custom(path, list(self.text_columns), self.label_column, self.task_type, labels=spec.labels,
                           limit=limit)

    def record(self, spec: TaskSpec) -> dict:
        """What identifies the data: the files' contents (size, SHA-256), the columns and the classes
        in their order. A resume whose record differs is refused."""
        return {"train_file": file_identity(self.train_file), "data_file": file_identity(self.data_file),
                "text_columns": list(self.text_columns), "label_column": self.label_column,
                "task_type": self.task_type, "labels": None if spec.labels is None else list(spec.labels)}

    def paths(self) -> dict:
        return {"train_file": str(Path(self.train_file).resolve()), "data_file": str(Path(self.data_file).resolve())}


def file_identity(path: str | Path) -> dict:
    """Size and SHA-256 of a file's bytes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"custom data file not found: {path}")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


# --------------------------------------------------------------------------------------------------
# A validation split carved from the training data
# --------------------------------------------------------------------------------------------------

HOLDOUT_FRACTION = 0.1
HOLDOUT_MAX = 1000  # sentences: enough to rank checkpoints; more only slows the stage-3 evaluations


def holdout_size(n_train: int, fraction: float = HOLDOUT_FRACTION, max_sentences: int = HOLDOUT_MAX) -> int:
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    if n_train < 2:
        raise DataError(f"cannot carve a validation split from {n_train} training sentence(s)")
    return max(1, min(max_sentences, round(fraction * n_train), n_train - 1))


def carve_holdout(examples: Sequence[Example], spec: TaskSpec, *, seed: int, fraction: float = HOLDOUT_FRACTION,
                  max_sentences: int = HOLDOUT_MAX) -> tuple[list[Example], list[Example]]:
    """Split the training examples into (the rest, the holdout), both in file order.

    The holdout has ``holdout_size`` sentences drawn with ``seed``. Classification: stratified, each
    class gets its share of the holdout (largest remainders), so the holdout's class balance is the
    training set's. Regression: a plain random sample."""
    examples = list(examples)
    k = holdout_size(len(examples), fraction, max_sentences)
    rng = random.Random(seed)
    if spec.is_regression:
        chosen = set(rng.sample(range(len(examples)), k))
    else:
        by_class: dict[int, list[int]] = {}
        for i, ex in enumerate(examples):
            by_class.setdefault(int(ex.label), []).append(i)
        classes = sorted(by_class)
        exact = {c: k * len(by_class[c]) / len(examples) for c in classes}
        take = {c: math.floor(exact[c]) for c in classes}
        for c in sorted(classes, key=lambda c: (take[c] - exact[c], c))[: k - sum(take.values())]:
            take[c] += 1
        chosen = set()
        for c in classes:
            chosen.update(rng.sample(by_class[c], take[c]))
    rest = [ex for i, ex in enumerate(examples) if i not in chosen]
    holdout = [ex for i, ex in enumerate(examples) if i in chosen]
    return rest, holdout


# --------------------------------------------------------------------------------------------------
# The budget sized from the training set
# --------------------------------------------------------------------------------------------------

# The default budget's lengths were tuned on SST-2 (docs/RESULTS.md); the rule keeps them for a set
# like SST-2 and scales them for others. Work is counted in sentences of REFERENCE_WORDS words:
# a step costs about in proportion to its tokens, so sentences longer than SST-2's get fewer steps.
REFERENCE_WORDS = 10.0  # mean words per training example the default's lengths are sized for (SST-2: 9.4)
TEACHER_FLOOR_STEPS = 1000  # optimizer steps a small set's teacher gets at least (in more epochs)
TEACHER_CAP_SENTENCES = 80_000  # sentences of REFERENCE_WORDS the teacher sees at most (the time cap)
TEACHER_MAX_EPOCHS = 10
STAGE_EPOCHS = {"general": 2, "intermediate": 10, "prediction": 5}  # passes over a set too small for the cap
STAGE_FLOOR_STEPS = {"general": 100, "intermediate": 400, "prediction": 200}
# The longest sentences (as a length factor) for which the stages trained as the rate ANN keep the
# tuned lengths: just above SUBJ's, whose main job with them fits the hour (docs/RESULTS.md, "Bring
# your own data"); longer sentences shorten those stages in proportion.
RATE_ANN_FULL_LENGTH_FACTOR = 2.5
# The prediction stage may spend up to this multiple of its tuned (SST-2) time on longer sentences:
# its cap is divided by ``f / PREDICTION_TIME_ALLOWANCE``, not by ``f``. It is where the spiking
# student learns to match its teacher, and the long-sentence sets gained from more of its steps
# (docs/RESULTS.md, "Bring your own data"); the teacher and the other stages are capped, which
# leaves the hour room for it.
PREDICTION_TIME_ALLOWANCE = 1.5
_STAGE_FIELDS = {"general": "general_steps", "intermediate": "intermediate_steps", "prediction": "prediction_steps"}


def mean_words(examples: Sequence[Example]) -> float:
    """Mean whitespace-separated words per example (both texts of a pair)."""
    if not examples:
        raise DataError("no training examples")
    total = sum(len(ex.text_a.split()) + (len(ex.text_b.split()) if ex.text_b else 0) for ex in examples)
    return total / len(examples)


def sized_budget(base, n_train: int, words: float, rate_ann_stages: Sequence[str] = ()):
    """``base`` (a ``training.pipeline.Budget`` whose lengths are the caps) sized for a training set of
    ``n_train`` examples of ``words`` mean words. Returns ``(budget, rule)``, ``rule`` being the
    inputs and the outcome, for the settings record and the log.

    * length factor ``f = max(1, words / REFERENCE_WORDS)``: a longer sentence costs more per step;
    * teacher: ``n_train`` sentences (one epoch), but at least ``TEACHER_FLOOR_STEPS`` batches and at
      most ``TEACHER_CAP_SENTENCES / f`` sentences, in at most ``TEACHER_MAX_EPOCHS`` epochs;
    * each distillation stage: ``STAGE_EPOCHS[stage]`` passes over the set, at least
      ``STAGE_FLOOR_STEPS[stage]`` steps and at most ``base``'s steps ``/ f`` (the floor wins when the
      two cross); the prediction stage's cap is divided by ``f / PREDICTION_TIME_ALLOWANCE`` instead
      (not below ``base``'s), and it evaluates as often relative to its length as ``base``'s;
    * a stage named in ``rate_ann_stages`` (trained as the rate ANN, no time steps) keeps ``base``'s
      cap up to ``f = RATE_ANN_FULL_LENGTH_FACTOR`` and is divided by ``f / RATE_ANN_FULL_LENGTH_FACTOR``
      beyond: its step costs less than a spiking step and grows less with the sentence
      (docs/own_data.md), and stage 2's length is what moved the student's accuracy most on SST-2
      (docs/RESULTS.md, "What was tried").
    """
    unknown = set(rate_ann_stages) - set(_STAGE_FIELDS)
    if unknown:
        raise ValueError(f"rate_ann_stages: unknown stage(s) {sorted(unknown)}; stages are {tuple(_STAGE_FIELDS)}")
    if n_train <= 0:
        raise DataError("no training examples")
    f = max(1.0, words / REFERENCE_WORDS)
    batch = base.batch_size
    floor_sentences = TEACHER_FLOOR_STEPS * batch
    cap_sentences = TEACHER_CAP_SENTENCES / f
    sentences = max(floor_sentences, min(cap_sentences, n_train))  # the floor wins when the two cross
    # one pass exactly when it fits (SST-2's tuned default); else the fraction or multiple of one
    teacher_epochs = 1 if sentences == n_train else round(min(TEACHER_MAX_EPOCHS, sentences / n_train), 4)
    steps = {}
    for stage, field in _STAGE_FIELDS.items():
        allowance = (RATE_ANN_FULL_LENGTH_FACTOR if stage in rate_ann_stages
                     else PREDICTION_TIME_ALLOWANCE if stage == "prediction" else 1.0)
        cap = getattr(base, field) if f <= allowance else math.floor(getattr(base, field) * allowance / f)
        wanted = math.ceil(STAGE_EPOCHS[stage] * n_train / batch)
        steps[field] = max(STAGE_FLOOR_STEPS[stage], min(cap, wanted))
    eval_every = max(1, round(base.eval_every * steps["prediction_steps"] / base.prediction_steps))
    budget = replace(base, teacher_epochs=teacher_epochs, eval_every=eval_every, **steps)
    rule = {"training_sentences": n_train, "mean_words": round(words, 3), "length_factor": round(f, 4),
            "rate_ann_stages": [s for s in _STAGE_FIELDS if s in rate_ann_stages],
            "rate_ann_full_length_factor": RATE_ANN_FULL_LENGTH_FACTOR,
            "prediction_time_allowance": PREDICTION_TIME_ALLOWANCE,
            "teacher_epochs": teacher_epochs, "teacher_sentences": round(teacher_epochs * n_train),
            **steps, "eval_every": eval_every}
    return budget, rule
