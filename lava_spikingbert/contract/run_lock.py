"""One run per output directory: an exclusive lock that names its holder.

A run that writes into a directory (``teacher``, ``distill``, ``pipeline``) holds an advisory
``flock`` on the sibling file ``.NAME.lock`` (beside the directory, not inside it: the teacher's
directory is replaced as a whole when a better model is kept). The holder writes its PID into
the file; a second run into the same directory refuses with one line naming that PID. The kernel
drops the lock when its holder exits however it exits (also kill -9), so the lock of a dead run
is simply taken over. The holder removes the file when it ends normally; a run that locked a file
another one removed just then sees that its file is no longer the one at the path, and retries.

Nested locks of one process on one directory (the pipeline's stages, a command that locks what
its library call locks again) are counted, not re-taken. Under torchrun all ranks write into one
directory and only rank 0 locks it (``RANK`` is set by torchrun for every process).
"""

from __future__ import annotations

import fcntl
import functools
import inspect
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from lava_spikingbert.contract.errors import SpikingBertError

_HELD: dict[Path, list] = {}  # resolved directory -> [open lock file, nesting depth]


class DirectoryLockedError(SpikingBertError):
    """Another live run writes into the same output directory."""


def lock_path(directory: str | os.PathLike) -> Path:
    d = Path(directory).resolve()
    return d.parent / f".{d.name}.lock"


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def directory_lock(directory: str | os.PathLike, *, enabled: bool | None = None) -> Iterator[None]:
    """Hold the exclusive lock of ``directory`` for the duration (``enabled`` default: rank 0 only)."""
    if enabled is None:
        enabled = _is_main_rank()
    if not enabled:
        yield
        return
    key = Path(directory).resolve()
    if key in _HELD:  # already ours (nested)
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    path = lock_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = _acquire(path, key)
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _HELD[key] = [fh, 1]
    try:
        yield
    finally:
        _HELD.pop(key, None)
        try:
            path.unlink()  # (still locked: a run that opened it meanwhile sees the file is gone, and retries)
        except FileNotFoundError:
            pass
        fh.close()  # closing the file drops the flock


def _acquire(path: Path, key: Path, attempts: int = 20):
    """The open, flock-ed lock file at ``path`` (the file at the path, not one removed meanwhile)."""
    for _ in range(attempts):
        fh = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise DirectoryLockedError(f"{key} is in use by another run (PID {holder}; lock {path}): wait for it "
                                       "to finish or use another output directory") from None
        except BaseException:
            fh.close()
            raise
        try:
            same = os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fh
        fh.close()  # removed by its previous holder after we opened it: take the new one
    raise DirectoryLockedError(f"{key}: could not take the lock {path} (it keeps being replaced)")


def locks_directory(argument: str) -> Callable:
    """Decorator: the call holds :func:`directory_lock` on the directory passed as ``argument``."""

    def wrap(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with directory_lock(bound.arguments[argument]):
                return fn(*args, **kwargs)

        return locked

    return wrap
