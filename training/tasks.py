"""The GLUE task registry and its metrics.

* :data:`TASKS` / :func:`get_task` -- every GLUE task (:class:`TaskSpec`): each split's TSV layout
  (CoLA's train/dev files have no header), the label strings, the metrics and the metric used for
  model selection;
* :func:`compute_metrics` -- GLUE's metric conventions (accuracy, F1, MCC, Pearson/Spearman).

No torch: the Lava evaluation scores its predictions with these too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from lava_spikingbert.contract.errors import SpikingBertError


class DataError(SpikingBertError):
    """Malformed or inconsistent input data; the message names ``file:line`` where possible."""


# --------------------------------------------------------------------------------------------------
# Task registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitLayout:
    """Where the fields of one split live in its delimited file.

    Columns are header names (``header=True``) or 0-based indices (``header=False``); ``n_columns``
    is the expected column count of a headerless file (a file with a header must have
    ``len(header)`` columns on every row). ``label=None`` means the split has no labels (test).
    """

    text_a: str | int
    text_b: str | int | None = None
    label: str | int | None = None
    header: bool = True
    n_columns: int | None = None


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a (GLUE or custom) sentence / sentence-pair task."""

    name: str
    glue_name: str | None  # GLUE directory name, e.g. "SST-2"; None for custom data
    files: Mapping[str, str] = field(hash=False)  # split -> file name inside the task directory
    layouts: Mapping[str, SplitLayout] = field(hash=False)  # split -> layout
    labels: tuple[str, ...] | None  # label strings as they appear in the files; None = regression
    metrics: tuple[str, ...]
    main_metric: str  # key of compute_metrics(...) used for model selection
    aliases: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return any(layout.text_b is not None for layout in self.layouts.values())

    @property
    def problem_type(self) -> str:
        """The HuggingFace ``config.problem_type`` matching this task."""
        return "regression" if self.is_regression else "single_label_classification"

    def label_index(self, label: str) -> int:
        assert self.labels is not None
        return self.labels.index(label)


def _glue(
    name: str,
    glue_name: str,
    text_a: str,
    text_b: str | None,
    label: str,
    labels: Sequence[str] | None,
    metrics: Sequence[str],
    main_metric: str,
    aliases: Sequence[str] = (),
    dev_file: str = "dev.tsv",
    test_file: str = "test.tsv",
) -> TaskSpec:
    labelled = SplitLayout(text_a, text_b, label)
    return TaskSpec(
        name=name,
        glue_name=glue_name,
        files={"train": "train.tsv", "dev": dev_file, "test": test_file},
        layouts={"train": labelled, "dev": labelled, "test": SplitLayout(text_a, text_b, None)},
        labels=None if labels is None else tuple(labels),
        metrics=tuple(metrics),
        main_metric=main_metric,
        aliases=tuple(aliases),
    )


def _mnli(name: str, aliases: Sequence[str], part: str) -> TaskSpec:
    """MNLI with the matched or mismatched dev/test files."""
    return _glue(name, "MNLI", "sentence1", "sentence2", "gold_label", ("contradiction", "entailment", "neutral"),
                 ("accuracy",), "accuracy", aliases, dev_file=f"dev_{part}.tsv", test_file=f"test_{part}.tsv")


_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

_COLA_TRAIN = SplitLayout(text_a=3, label=1, header=False, n_columns=4)  # [source, label, star, sentence]
TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        name="cola",
        glue_name="CoLA",
        files={"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"},
        layouts={"train": _COLA_TRAIN, "dev": _COLA_TRAIN, "test": SplitLayout("sentence")},
        labels=_BIN,
        metrics=("mcc", "accuracy"),
        main_metric="mcc",
    ),
    "sst2": _glue("sst2", "SST-2", "sentence", None, "label", _BIN, ("accuracy",), "accuracy", ("sst",)),
    "mrpc": _glue(
        "mrpc", "MRPC", "#1 String", "#2 String", "Quality", _BIN, ("accuracy", "f1", "acc_and_f1"), "acc_and_f1"
    ),
    "stsb": _glue(
        "stsb", "STS-B", "sentence1", "sentence2", "score", None, ("pearson", "spearman", "corr"), "corr", ("sts",)
    ),
    "qqp": _glue(
        "qqp", "QQP", "question1", "question2", "is_duplicate", _BIN, ("accuracy", "f1", "acc_and_f1"), "acc_and_f1"
    ),
    "mnli": _mnli("mnli", ("mnli-m", "mnli_m", "mnli-matched"), "matched"),
    "mnli-mm": _mnli("mnli-mm", ("mnli_mm", "mnlimm", "mnli-mismatched"), "mismatched"),
    "qnli": _glue("qnli", "QNLI", "question", "sentence", "label", _NLI2, ("accuracy",), "accuracy"),
    "rte": _glue("rte", "RTE", "sentence1", "sentence2", "label", _NLI2, ("accuracy",), "accuracy"),
    "wnli": _glue("wnli", "WNLI", "sentence1", "sentence2", "label", _BIN, ("accuracy",), "accuracy"),
}

SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "val": "dev", "eval": "dev", "test": "test"}


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for key in TASKS:  # canonical names first; aliases never shadow them ("MNLI" -> mnli, not mnli-mm)
        table[_norm(key)] = key
    for key, spec in TASKS.items():
        for alias in (key, spec.glue_name or key, *spec.aliases):
            table.setdefault(_norm(alias), key)
            table.setdefault(_norm(alias).replace("-", ""), key)
    return table


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look up a GLUE task by name or alias (``"sst2"``, ``"SST-2"``, ``"sst-2"``, ``"STS-B"``, ...)."""
    if isinstance(name, TaskSpec):
        return name
    table = _alias_table()
    key = _norm(str(name))
    if key in table:
        return TASKS[table[key]]
    if key.replace("-", "") in table:
        return TASKS[table[key.replace("-", "")]]
    raise KeyError(
        f"unknown task {name!r}; valid GLUE tasks: {', '.join(TASKS)} "
        "(aliases like 'SST-2', 'sst-2', 'STS-B' are accepted; use load_custom/custom_task_spec for other data)"
    )


def split_name(split: str) -> str:
    s = split.strip().lower()
    if s not in SPLIT_ALIASES:
        raise ValueError(f"unknown split {split!r}; use one of train, dev (alias validation), test")
    return SPLIT_ALIASES[s]


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def compute_metrics(spec: TaskSpec | str, preds, labels) -> dict[str, float]:
    """GLUE metrics for ``spec``.

    ``preds`` may be class ids, logits (N x C, argmax taken) or regression outputs (N or N x 1).
    Keys: accuracy, f1 (positive class = label index 1), acc_and_f1, mcc, pearson, spearman, corr
    (mean of pearson and spearman) -- whichever ``spec.metrics`` lists. ``spec.main_metric`` is one
    of them.
    """
    spec = get_task(spec) if isinstance(spec, str) else spec
    p = np.asarray(_to_numpy(preds))
    y = np.asarray(_to_numpy(labels))
    if spec.is_regression:
        p = p.reshape(len(p), -1)[:, 0] if p.ndim > 1 else p
        p = p.astype(np.float64)
        y = y.astype(np.float64)
    else:
        if p.ndim == 2:
            p = p.argmax(axis=1)
        p = p.astype(np.int64)
        y = y.astype(np.int64)
    if p.shape != y.shape:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} differ in shape")
    if len(y) == 0:
        raise ValueError("compute_metrics: no examples")
    out: dict[str, float] = {}
    wanted = set(spec.metrics) | {spec.main_metric}
    if "accuracy" in wanted or "acc_and_f1" in wanted:
        out["accuracy"] = float(accuracy_score(y, p))
    if "f1" in wanted or "acc_and_f1" in wanted:
        out["f1"] = float(f1_score(y, p, pos_label=1, average="binary", zero_division=0))
    if "acc_and_f1" in wanted:
        out["acc_and_f1"] = (out["accuracy"] + out["f1"]) / 2
    if "mcc" in wanted:
        out["mcc"] = float(matthews_corrcoef(y, p))
    if {"pearson", "spearman", "corr"} & wanted:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input -> nan, reported as nan
            out["pearson"] = float(pearsonr(p, y)[0]) if len(y) > 1 else float("nan")
            out["spearman"] = float(spearmanr(p, y)[0]) if len(y) > 1 else float("nan")
        out["corr"] = (out["pearson"] + out["spearman"]) / 2
    return out


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return x
