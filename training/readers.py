"""Readers of GLUE's TSV files, user TSV/CSV/JSON-lines files and plain-text corpora.

Each returns a list of :class:`Example`; bad rows raise :class:`~training.tasks.DataError` naming
``file:line``. No torch.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from training.tasks import DataError, SplitLayout, TaskSpec, get_task, split_name
from training.text_files import check_text_file

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED_GLUE = REPO_ROOT.parent / "shared" / "data" / "glue"
# GLUE texts can be long (e.g. MNLI/QNLI paragraphs); csv's default 128 KiB field limit is raised
# when a table is read
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)


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
    split = split_name(split)
    if spec.glue_name is None:
        raise ValueError(f"task {spec.name!r} is not a GLUE task; use load_custom")
    root = resolve_glue_dir(glue_dir)
    # Accept glue_dir pointing at the task directory itself.
    task_dir = root if root.name == spec.glue_name and not (root / spec.glue_name).is_dir() else root / spec.glue_name
    return task_dir / spec.files[split]


JSONL = "jsonl"  # the "delimiter" of a JSON-lines file: one JSON object per line, columns are its keys


def _delimiter_for(path: Path, delimiter: str | None) -> str:
    if delimiter is not None:
        return delimiter
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab", ".txt"):
        return "\t"
    if suffix == ".csv":
        return ","
    if suffix in (".jsonl", ".ndjson"):
        return JSONL
    raise DataError(f"{path}: cannot infer the format from extension {suffix!r} (.tsv, .csv or .jsonl); "
                    "pass delimiter=")


@contextmanager
def _rows(path: Path, delimiter: str, columns: Sequence[str | int]) -> Iterator[Iterator[tuple[int, list[str]]]]:
    """The lines of a delimited file as (line number, cells), or of a JSON-lines file as (line
    number, the values of ``columns`` as strings; the first item is ``columns`` itself, the header).
    TSV is read without quote processing (like GLUE), CSV with standard double-quote quoting."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        if delimiter != JSONL:
            reader = csv.reader(fh, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else
                                csv.QUOTE_MINIMAL)
            yield ((reader.line_num, row) for row in reader)
            return

        def objects():
            yield 0, [str(c) for c in columns]
            for line, text in enumerate(fh, 1):
                if not text.strip():
                    yield line, []
                    continue
                try:
                    obj = json.loads(text)
                except ValueError as exc:
                    raise DataError(f"{path}:{line}: not a JSON object ({exc})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{line}: not a JSON object (found {type(obj).__name__})")
                missing = [c for c in columns if c not in obj]
                if missing:
                    raise DataError(f"{path}:{line}: missing key(s) {missing}")
                yield line, ["" if obj[c] is None else str(obj[c]) for c in columns]
        yield objects()


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
    check_text_file(path)
    label_to_id = None if (regression or labels is None) else {lab: i for i, lab in enumerate(labels)}
    examples: list[Example] = []
    skipped: list[int] = []
    columns = [c for c in (layout.text_a, layout.text_b, layout.label) if c is not None]
    if delimiter == JSONL and not layout.header:
        raise DataError(f"{path}: a JSON-lines file names its columns; this layout has none")
    with _rows(path, delimiter, columns) as reader:
        header: list[str] | None = None
        n_cols = layout.n_columns
        if layout.header:
            try:
                header = next(reader)[1]
            except StopIteration:
                raise DataError(f"{path}:1: empty file, expected a header line") from None
            header = [h.strip() for h in header]
            n_cols = len(header)
        ia = _column_index(layout.text_a, header, path, "text")
        ib = None if layout.text_b is None else _column_index(layout.text_b, header, path, "second text")
        il = None if layout.label is None else _column_index(layout.label, header, path, "label")
        needed = max(i for i in (ia, ib, il) if i is not None)
        for line, row in reader:
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
    if not examples and limit != 0:  # refused before any training, not after it
        raise DataError(f"{path}: no examples (only a header, blank lines or skipped rows)")
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
    split = split_name(split)
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
    seen: set[str] = set()
    check_text_file(path)
    with _rows(path, delim, [label_column]) as reader:
        try:
            header = [h.strip() for h in next(reader)[1]]
        except StopIteration:
            raise DataError(f"{path}:1: empty file, expected a header line") from None
        il = _column_index(label_column, header, path, "label")
        for line, row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{line}: malformed row: expected {len(header)} columns, found {len(row)}")
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
    """Read any headed TSV/CSV or JSON-lines file: 1 or 2 text columns and a label column (or None for
    unlabelled).

    The format comes from the extension (.tsv -> tab, .csv -> comma, .jsonl/.ndjson -> one JSON
    object per line whose keys are the columns; values become strings, null an empty text) unless
    ``delimiter`` is given. TSV is read without quote processing (like GLUE); CSV with standard
    double-quote quoting. For classification
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
        duplicates = sorted({x for x in labels_t if labels_t.count(x) > 1})
        if duplicates or "" in labels_t:
            raise DataError(f"labels {list(labels_t)}: each label must be given once and not be empty"
                            f"{f' (repeated: {duplicates})' if duplicates else ''}")
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
        check_text_file(path)
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
