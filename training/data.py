"""GLUE / custom data loading, metrics, tokenisation and length-bucketed batching.

Everything a training script needs to go from GLUE's own TSV files (or any user TSV/CSV, or a
plain-text corpus) to padded torch batches:

* :data:`TASKS` / :func:`get_task` -- a registry of all GLUE tasks (:class:`TaskSpec`), describing
  each split's TSV layout (CoLA's train/dev files have no header), the label strings, the metrics
  and the metric used for model selection.
* :func:`load_glue`, :func:`load_custom`, :func:`plain_text_corpus`, :func:`load_hub` -- readers
  returning lists of :class:`Example`. Bad rows raise :class:`DataError` naming ``file:line``.
* :func:`compute_metrics` -- GLUE's metric conventions (accuracy, F1, MCC, Pearson/Spearman).
* :func:`encode` and :func:`length_bucketed_batches` -- tokenisation without padding, then batches
  padded only to the longest sentence of each batch, deterministic per (seed, epoch), shardable for
  DDP (disjoint shards, equal numbers of batches per rank).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "DataError",
    "SplitLayout",
    "TaskSpec",
    "TASKS",
    "get_task",
    "Example",
    "resolve_glue_dir",
    "glue_file",
    "load_glue",
    "load_custom",
    "infer_labels",
    "custom_task_spec",
    "load_hub",
    "plain_text_corpus",
    "compute_metrics",
    "EncodedDataset",
    "encode",
    "LengthBucketedBatches",
    "length_bucketed_batches",
]

# GLUE texts can be long (e.g. MNLI/QNLI paragraphs); never trip csv's 128 KiB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED_GLUE = REPO_ROOT.parent / "shared" / "data" / "glue"


class DataError(ValueError):
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
    "mnli": _glue(
        "mnli",
        "MNLI",
        "sentence1",
        "sentence2",
        "gold_label",
        ("contradiction", "entailment", "neutral"),
        ("accuracy",),
        "accuracy",
        ("mnli-m", "mnli_m", "mnli-matched"),
        dev_file="dev_matched.tsv",
        test_file="test_matched.tsv",
    ),
    "mnli-mm": _glue(
        "mnli-mm",
        "MNLI",
        "sentence1",
        "sentence2",
        "gold_label",
        ("contradiction", "entailment", "neutral"),
        ("accuracy",),
        "accuracy",
        ("mnli_mm", "mnlimm", "mnli-mismatched"),
        dev_file="dev_mismatched.tsv",
        test_file="test_mismatched.tsv",
    ),
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


def _split(split: str) -> str:
    s = split.strip().lower()
    if s not in SPLIT_ALIASES:
        raise ValueError(f"unknown split {split!r}; use one of train, dev (alias validation), test")
    return SPLIT_ALIASES[s]


@dataclass
class Example:
    guid: str
    text_a: str
    text_b: str | None
    label: int | float | None


# --------------------------------------------------------------------------------------------------
# Locating and reading files
# --------------------------------------------------------------------------------------------------


def resolve_glue_dir(path: str | os.PathLike | None = None) -> Path:
    """The GLUE root directory (holding ``SST-2/``, ``MNLI/``, ...).

    Order: the explicit ``path`` (a flag value), else the ``GLUE_DIR`` environment variable, else
    ``<repo>/../shared/data/glue`` if it exists. Raises ``FileNotFoundError`` naming what was tried.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"GLUE directory given explicitly does not exist: {p}")
        return p
    env = os.environ.get("GLUE_DIR")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"GLUE directory from environment variable GLUE_DIR does not exist: {p}")
        return p
    if DEFAULT_SHARED_GLUE.is_dir():
        return DEFAULT_SHARED_GLUE
    raise FileNotFoundError(
        "no GLUE directory found; tried: explicit path (none given), environment variable GLUE_DIR (unset), "
        f"default {DEFAULT_SHARED_GLUE} (missing). Pass --glue-dir or set GLUE_DIR."
    )


def glue_file(task: str | TaskSpec, split: str, glue_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``split``'s TSV for a GLUE task (``<glue_dir>/<GLUE name>/<file>``); need not exist."""
    spec = get_task(task)
    split = _split(split)
    if spec.glue_name is None:
        raise ValueError(f"task {spec.name!r} is not a GLUE task; use load_custom")
    root = resolve_glue_dir(glue_dir)
    # Accept glue_dir pointing at the task directory itself.
    task_dir = root if root.name == spec.glue_name and not (root / spec.glue_name).is_dir() else root / spec.glue_name
    return task_dir / spec.files[split]


def _delimiter_for(path: Path, delimiter: str | None) -> str:
    if delimiter is not None:
        return delimiter
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab", ".txt"):
        return "\t"
    if suffix == ".csv":
        return ","
    raise DataError(f"{path}: cannot infer the delimiter from extension {suffix!r}; pass delimiter=")


def _column_index(col: str | int, header: list[str] | None, path: Path, what: str) -> int:
    if isinstance(col, int):
        return col
    assert header is not None
    if col not in header:
        raise DataError(f"{path}:1: {what} column {col!r} not in header {header}")
    return header.index(col)


def _read_table(
    path: Path,
    layout: SplitLayout,
    labels: Sequence[str] | None,
    regression: bool,
    *,
    delimiter: str = "\t",
    quoting: int = csv.QUOTE_NONE,
    guid_prefix: str,
    limit: int | None = None,
    skip_empty: bool = False,
    context: str = "",
) -> list[Example]:
    """Parse one delimited file into Examples with strict, ``file:line``-naming error reporting."""
    if not path.is_file():
        raise FileNotFoundError(f"{context}data file not found: {path}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    label_to_id = None if (regression or labels is None) else {lab: i for i, lab in enumerate(labels)}
    examples: list[Example] = []
    skipped: list[int] = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        header: list[str] | None = None
        n_cols = layout.n_columns
        if layout.header:
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{path}:1: empty file, expected a header line") from None
            header = [h.strip() for h in header]
            n_cols = len(header)
        ia = _column_index(layout.text_a, header, path, "text")
        ib = None if layout.text_b is None else _column_index(layout.text_b, header, path, "second text")
        il = None if layout.label is None else _column_index(layout.label, header, path, "label")
        needed = max(i for i in (ia, ib, il) if i is not None)
        for row in reader:
            line = reader.line_num
            if limit is not None and len(examples) >= limit:
                break
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if n_cols is not None and len(row) != n_cols:
                raise DataError(
                    f"{path}:{line}: malformed row: expected {n_cols} {'tab' if delimiter == chr(9) else repr(delimiter)}"
                    f"-separated columns, found {len(row)}"
                )
            if len(row) <= needed:
                raise DataError(f"{path}:{line}: malformed row: needs at least {needed + 1} columns, found {len(row)}")
            text_a = row[ia].strip()
            text_b = None if ib is None else row[ib].strip()
            if not text_a or (ib is not None and not text_b):
                if skip_empty:
                    skipped.append(line)
                    continue
                raise DataError(f"{path}:{line}: empty text in column {layout.text_a if not text_a else layout.text_b!r}")
            label: int | float | None = None
            if il is not None:
                raw = row[il].strip()
                if regression:
                    try:
                        label = float(raw)
                    except ValueError:
                        raise DataError(f"{path}:{line}: label {raw!r} is not a number (regression task)") from None
                    if not math.isfinite(label):
                        raise DataError(f"{path}:{line}: label {raw!r} is not finite")
                else:
                    assert label_to_id is not None
                    if raw not in label_to_id:
                        raise DataError(f"{path}:{line}: unknown label {raw!r}; expected one of {list(label_to_id)}")
                    label = label_to_id[raw]
            examples.append(Example(f"{guid_prefix}-{line}", text_a, text_b, label))
    if skipped:
        shown = ", ".join(str(n) for n in skipped[:50]) + (" ..." if len(skipped) > 50 else "")
        warnings.warn(f"{path}: skipped {len(skipped)} row(s) with empty text at line(s) {shown}", stacklevel=3)
    return examples


def load_glue(
    task: str | TaskSpec,
    split: str,
    glue_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    *,
    skip_empty: bool = False,
) -> list[Example]:
    """Read ``split`` (train / dev / test) of a GLUE task from GLUE's own TSV files.

    Labels become class indices into ``spec.labels`` (float scores for STS-B); test splits have
    ``label=None``. ``limit`` keeps the first N examples. Malformed rows / unknown labels / empty
    texts raise :class:`DataError` naming ``file:line`` (``skip_empty=True`` instead skips empty
    texts with one warning listing their lines).
    """
    spec = get_task(task)
    split = _split(split)
    path = glue_file(spec, split, glue_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"GLUE task {spec.name!r} ({spec.glue_name}) split {split!r}: file not found: {path}"
        )
    return _read_table(
        path,
        spec.layouts[split],
        spec.labels,
        spec.is_regression,
        guid_prefix=f"{spec.name}-{split}",
        limit=limit,
        skip_empty=skip_empty,
        context=f"GLUE task {spec.name!r}: ",
    )


def _custom_layout(text_columns: Sequence[str], label_column: str | None) -> SplitLayout:
    if isinstance(text_columns, str):
        text_columns = [text_columns]
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"text_columns must name 1 or 2 columns, got {list(text_columns)}")
    return SplitLayout(
        text_a=text_columns[0], text_b=text_columns[1] if len(text_columns) == 2 else None, label=label_column
    )


def _check_task_type(task_type: str) -> bool:
    if task_type not in ("classification", "regression"):
        raise ValueError(f"task_type must be 'classification' or 'regression', got {task_type!r}")
    return task_type == "regression"


def infer_labels(path: str | os.PathLike, label_column: str, delimiter: str | None = None) -> list[str]:
    """Sorted unique label strings of ``label_column`` in a headed TSV/CSV file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    delim = _delimiter_for(path, delimiter)
    quoting = csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL
    seen: set[str] = set()
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delim, quoting=quoting)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}:1: empty file, expected a header line") from None
        il = _column_index(label_column, header, path, "label")
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{reader.line_num}: malformed row: expected {len(header)} columns, found {len(row)}"
                )
            if row[il].strip():
                seen.add(row[il].strip())
    if not seen:
        raise DataError(f"{path}: no labels found in column {label_column!r}")
    return sorted(seen)


def load_custom(
    path: str | os.PathLike,
    text_columns: Sequence[str],
    label_column: str | None,
    task_type: str = "classification",
    labels: Sequence[str] | None = None,
    delimiter: str | None = None,
    *,
    limit: int | None = None,
    skip_empty: bool = False,
) -> list[Example]:
    """Read any headed TSV/CSV: 1 or 2 text columns and a label column (or None for unlabelled).

    The delimiter comes from the extension (.tsv -> tab, .csv -> comma) unless given. TSV is read
    without quote processing (like GLUE); CSV with standard double-quote quoting. For classification
    the labels default to the sorted unique values of the file (pass the training labels explicitly
    when reading a dev/test file, or use ``custom_task_spec(...).labels``).
    """
    path = Path(path)
    regression = _check_task_type(task_type)
    if not path.is_file():
        raise FileNotFoundError(f"custom data file not found: {path}")
    delim = _delimiter_for(path, delimiter)
    if label_column is not None and not regression and labels is None:
        labels = infer_labels(path, label_column, delim)
    return _read_table(
        path,
        _custom_layout(text_columns, label_column),
        None if regression else labels,
        regression,
        delimiter=delim,
        quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL,
        guid_prefix=path.stem,
        limit=limit,
        skip_empty=skip_empty,
    )


def custom_task_spec(
    name: str = "custom",
    *,
    task_type: str = "classification",
    labels: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    text_columns: Sequence[str] = ("sentence",),
    label_column: str = "label",
    delimiter: str | None = None,
) -> TaskSpec:
    """A :class:`TaskSpec` for custom data.

    Classification: labels given, or inferred (sorted unique) from ``path``; metrics accuracy + F1
    (binary, main = accuracy) or accuracy. Regression: pearson, spearman, corr (main = corr).
    """
    regression = _check_task_type(task_type)
    if regression:
        labels_t = None
        metrics, main = ("pearson", "spearman", "corr"), "corr"
    else:
        if labels is None:
            if path is None:
                raise ValueError("custom classification task needs labels= or path= to infer them from")
            labels = infer_labels(path, label_column, delimiter)
        labels_t = tuple(str(x) for x in labels)
        if len(labels_t) < 2:
            raise DataError(f"a classification task needs >= 2 labels, got {list(labels_t)}")
        metrics, main = (("accuracy", "f1"), "accuracy") if len(labels_t) == 2 else (("accuracy",), "accuracy")
    layout = _custom_layout(text_columns, label_column)
    return TaskSpec(
        name=name,
        glue_name=None,
        files={},
        layouts={"train": layout, "dev": layout, "test": layout},
        labels=labels_t,
        metrics=metrics,
        main_metric=main,
    )


def plain_text_corpus(path_or_examples: str | os.PathLike | Iterable[Example], limit: int | None = None) -> list[Example]:
    """Unlabelled examples for general distillation.

    A path: one sentence per line (blank lines skipped). A list of Examples: copies with ``label=None``
    (e.g. ``plain_text_corpus(load_glue("sst2", "train"))``).
    """
    out: list[Example] = []
    if isinstance(path_or_examples, (str, os.PathLike)):
        path = Path(path_or_examples)
        if not path.is_file():
            raise FileNotFoundError(f"plain-text corpus not found: {path}")
        with open(path, encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, 1):
                if limit is not None and len(out) >= limit:
                    break
                text = line.strip()
                if text:
                    out.append(Example(f"{path.stem}-{lineno}", text, None, None))
        return out
    for ex in path_or_examples:
        if limit is not None and len(out) >= limit:
            break
        out.append(Example(ex.guid, ex.text_a, ex.text_b, None))
    return out


# Hub names for load_hub: (dataset config, text columns).
_HUB = {
    "cola": ("cola", ("sentence", None)),
    "sst2": ("sst2", ("sentence", None)),
    "mrpc": ("mrpc", ("sentence1", "sentence2")),
    "stsb": ("stsb", ("sentence1", "sentence2")),
    "qqp": ("qqp", ("question1", "question2")),
    "mnli": ("mnli", ("premise", "hypothesis")),
    "mnli-mm": ("mnli", ("premise", "hypothesis")),
    "qnli": ("qnli", ("question", "sentence")),
    "rte": ("rte", ("sentence1", "sentence2")),
    "wnli": ("wnli", ("sentence1", "sentence2")),
}


def load_hub(task: str | TaskSpec, split: str, limit: int | None = None, repo: str = "nyu-mll/glue") -> list[Example]:
    """Load a GLUE split through the HuggingFace ``datasets`` package (needs network or its cache).

    Labels are mapped to this registry's label order (the hub orders MNLI labels differently).
    """
    spec = get_task(task)
    split = _split(split)
    try:
        import datasets  # noqa: F401  (optional dependency, imported lazily)
    except ImportError as err:
        raise ImportError(
            "load_hub needs the optional 'datasets' package (pip install datasets, or the project's [hub] extra); "
            "offline, use load_glue with GLUE's TSV files instead"
        ) from err
    config, (col_a, col_b) = _HUB[spec.name]
    hub_split = {"train": "train", "dev": "validation", "test": "test"}[split]
    if spec.name.startswith("mnli") and split != "train":
        hub_split += "_mismatched" if spec.name == "mnli-mm" else "_matched"
    try:
        ds = datasets.load_dataset(repo, config, split=hub_split)
    except Exception as err:  # offline, unknown repo, ...
        raise DataError(
            f"could not load {repo}/{config} split {hub_split!r} from the hub ({type(err).__name__}: {err}); "
            "offline (HF_HUB_OFFLINE=1 or no network)? Use load_glue with local TSV files."
        ) from err
    names = getattr(ds.features.get("label"), "names", None)
    out: list[Example] = []
    for i, row in enumerate(ds):
        if limit is not None and len(out) >= limit:
            break
        raw = row.get("label")
        label: int | float | None
        if raw is None or (not spec.is_regression and int(raw) < 0):
            label = None
        elif spec.is_regression:
            label = float(raw)
        elif names is not None and spec.labels is not None and set(spec.labels) <= set(names):
            label = spec.label_index(names[int(raw)])
        else:
            label = int(raw)
        out.append(Example(f"{spec.name}-{split}-{i}", row[col_a], None if col_b is None else row[col_b], label))
    return out


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
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

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


# --------------------------------------------------------------------------------------------------
# Tokenisation and batching
# --------------------------------------------------------------------------------------------------


@dataclass
class EncodedDataset:
    """Token ids without padding (one list per example), in the order of the examples."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[int | float] | None  # None when the examples carry no labels
    is_regression: bool = False
    max_length: int = 0
    guids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(examples: Sequence[Example], tokenizer, max_length: int, *, chunk_size: int = 4096) -> EncodedDataset:
    """Tokenise (with [CLS]/[SEP]; pairs truncated longest-first) to at most ``max_length`` tokens."""
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS] x [SEP] needs 3 tokens), got {max_length}")
    n = len(examples)
    ids: list[list[int] | None] = [None] * n
    tts: list[list[int] | None] = [None] * n
    singles = [i for i, ex in enumerate(examples) if ex.text_b is None]
    pairs = [i for i, ex in enumerate(examples) if ex.text_b is not None]
    for group, is_pair in ((singles, False), (pairs, True)):
        for start in range(0, len(group), chunk_size):
            idx = group[start : start + chunk_size]
            a = [examples[i].text_a for i in idx]
            b = [examples[i].text_b for i in idx] if is_pair else None
            enc = tokenizer(
                a,
                b,
                truncation=True,
                max_length=max_length,
                padding=False,
                return_token_type_ids=True,
                return_attention_mask=False,
            )
            for j, i in enumerate(idx):
                ids[i] = list(enc["input_ids"][j])
                tts[i] = list(enc["token_type_ids"][j])
    labels = [ex.label for ex in examples]
    has = [lab is not None for lab in labels]
    if any(has) and not all(has):
        missing = [examples[i].guid for i, h in enumerate(has) if not h][:5]
        raise DataError(f"some examples have labels and some do not (unlabelled e.g. {missing})")
    is_reg = bool(any(has)) and any(isinstance(lab, float) for lab in labels)
    return EncodedDataset(
        input_ids=ids,  # type: ignore[arg-type]
        token_type_ids=tts,  # type: ignore[arg-type]
        labels=labels if all(has) and n else None,  # type: ignore[arg-type]
        is_regression=is_reg,
        max_length=max_length,
        guids=[ex.guid for ex in examples],
    )


class LengthBucketedBatches:
    """Iterable of padded batches (see :func:`length_bucketed_batches`); ``len()`` = batches per rank."""

    def __init__(
        self,
        encoded: EncodedDataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        bucket_size_multiplier: int = 50,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        pad_id: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if bucket_size_multiplier < 1:
            raise ValueError(f"bucket_size_multiplier must be >= 1, got {bucket_size_multiplier}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.encoded = encoded
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.bucket_size_multiplier = bucket_size_multiplier
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.pad_id = pad_id
        self._plan = self._make_plan()

    # The plan: a list of index arrays (one per batch) for this rank.
    def _make_plan(self) -> list[np.ndarray]:
        n = len(self.encoded)
        lengths = self.encoded.lengths
        bs, ws = self.batch_size, self.world_size
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(n)
        else:
            order = np.argsort(lengths, kind="stable")
        if self.drop_last:
            # Equal-size shards of full batches only (training): drop the remainder of this epoch's order.
            per_rank = (n // ws) // bs * bs
            order = order[: per_rank * ws]
        shard = order[self.rank :: ws]  # disjoint; sizes differ by at most one
        max_shard = -(-len(order) // ws)
        n_batches = -(-max_shard // bs)
        if self.shuffle:
            # Sort by length inside buckets of bs * multiplier examples, cut into batches, shuffle batches.
            bucket = bs * self.bucket_size_multiplier
            batches: list[np.ndarray] = []
            for start in range(0, len(shard), bucket):
                chunk = shard[start : start + bucket]
                chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
                batches.extend(chunk[i : i + bs] for i in range(0, len(chunk), bs))
            brng = np.random.default_rng([self.seed, self.epoch, 1])
            perm = brng.permutation(len(batches))
            batches = [batches[i] for i in perm]
        else:
            batches = [shard[i : i + bs] for i in range(0, len(shard), bs)]
        # Equalise the number of batches across ranks (a short shard may need one more, smaller batch).
        while len(batches) < n_batches:
            j = max(range(len(batches)), key=lambda k: len(batches[k]), default=None)
            if j is None or len(batches[j]) < 2:
                raise ValueError(
                    f"cannot give every rank {n_batches} non-empty batches: {n} examples, world_size={ws}, "
                    f"batch_size={bs}; use drop_last=True or a larger dataset / smaller world"
                )
            half = len(batches[j]) // 2
            batches[j : j + 1] = [batches[j][:half], batches[j][half:]]
        return batches

    def __len__(self) -> int:
        return len(self._plan)

    @property
    def num_examples(self) -> int:
        return int(sum(len(b) for b in self._plan))

    def batch_indices(self) -> list[np.ndarray]:
        return [b.copy() for b in self._plan]

    def collate(self, idx: np.ndarray) -> dict:
        import torch

        from lava_spikingbert.inference import right_pad

        enc = self.encoded
        input_ids, attention_mask, token_type_ids = right_pad(
            [enc.input_ids[i] for i in idx], [enc.token_type_ids[i] for i in idx], pad_id=self.pad_id)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "index": torch.as_tensor(np.asarray(idx, dtype=np.int64)),
        }
        if enc.labels is not None:
            labs = [enc.labels[i] for i in idx]
            batch["labels"] = torch.tensor(labs, dtype=torch.float32 if enc.is_regression else torch.long)
        return batch

    def __iter__(self) -> Iterator[dict]:
        for idx in self._plan:
            yield self.collate(idx)


def length_bucketed_batches(
    encoded: EncodedDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    bucket_size_multiplier: int = 50,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> LengthBucketedBatches:
    """Batches padded only to their longest sentence.

    ``shuffle=True`` (training): a permutation from ``(seed, epoch)``, sorted by length inside buckets
    of ``batch_size * bucket_size_multiplier`` examples, cut into batches, batch order shuffled.
    ``shuffle=False`` (evaluation): sorted by length, every example exactly once. With
    ``world_size > 1`` the ranks get disjoint strided shards of the same global order and the same
    number of batches (a short shard gets one batch split in two); ``drop_last=True`` instead keeps
    only full batches of equal-size shards. Each batch is a dict of long tensors ``input_ids``,
    ``attention_mask``, ``token_type_ids``, ``index`` (positions in ``encoded``) and ``labels`` (long,
    float for regression; absent for unlabelled data). The result is re-iterable and has ``len()``.
    """
    return LengthBucketedBatches(
        encoded,
        batch_size,
        shuffle,
        seed=seed,
        epoch=epoch,
        bucket_size_multiplier=bucket_size_multiplier,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
    )
