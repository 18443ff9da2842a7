"""Atomic file and directory writes: a crash never leaves a half-written checkpoint or report."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write ``path``'s new content into (by any writer: plain
    bytes, h5py, ...); on success it replaces ``path`` in one rename, on error it is removed.
    The file gets the permissions a plain ``open`` would give (0666 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_save_figure(fig, path: str | Path, dpi: int = 120) -> None:
    """Render a matplotlib figure to PNG in memory, write it atomically, close the figure."""
    import matplotlib.pyplot as plt  # only where a figure is saved: readers of model files never plot

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _swap_paths(path: Path) -> tuple[Path, Path]:
    return path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")


def recover_directory(path: str | Path, carry: Iterable[str] = ()) -> None:
    """Finish or roll back a replacement by ``atomic_directory`` that a crash interrupted.

    The new directory is complete before the old one is moved aside, so: ``path`` missing with
    both the new (``.NAME.tmp``) and the old (``.NAME.old``) copy present means the crash came
    between the two renames (finish it, carrying ``carry`` over); only the old copy: roll back;
    a new copy beside an existing ``path`` is an unfinished write (drop it)."""
    path = Path(path)
    tmp, old = _swap_paths(path)
    # unfinished writes of earlier versions (mkdtemp's 8 random characters; not another entry's tmp)
    stale_name = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    if path.parent.is_dir():
        for stale in path.parent.iterdir():
            if stale_name.fullmatch(stale.name) and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    if path.exists():
        for p in (tmp, old):
            if p.exists():
                shutil.rmtree(p)
    elif old.exists() and tmp.exists():
        for name in carry:
            if (old / name).exists() and not (tmp / name).exists():
                os.replace(old / name, tmp / name)
        os.replace(tmp, path)
        shutil.rmtree(old)
    elif old.exists():
        os.replace(old, path)
    elif tmp.exists():
        shutil.rmtree(tmp)


@contextmanager
def atomic_directory(path: str | Path, carry: Iterable[str] = ()) -> Iterator[Path]:
    """Yield an empty sibling directory; on success it replaces ``path``. One writer per ``path``
    at a time (the new copy has a fixed name; here only the main rank writes).

    The previous content of ``path`` stays until the new directory is complete; the entries named
    in ``carry`` (e.g. a training state kept beside a model) move from the old directory into the
    new one. A crash at any point leaves either the old or the new directory, restored by
    ``recover_directory`` (called here and by readers that resume from ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path, carry)
    tmp, old = _swap_paths(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        os.replace(path, old)
        for name in carry:
            if (old / name).exists() and not (tmp / name).exists():
                os.replace(old / name, tmp / name)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
