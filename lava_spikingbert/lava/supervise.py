"""Interrupting ``spikingbert lava`` ends everything it started.

One Lava run is dozens of OS processes (one per Lava process, forked) exchanging data through
shared memory in ``/dev/shm`` that a manager process owns; ``--workers N`` adds N spawned workers,
each starting such runs. A Ctrl-C reaches the whole foreground process group: every one of those
processes then raises in the middle of a channel operation, and the parent may wait forever for
them; a SIGTERM kills the manager before it unlinks its segments.

So the command runs in a forked child placed in a process group of its own, and this process
only waits for it. SIGINT or SIGTERM (to this process or to its group, which the child's group is
not part of) stops the child's group as a whole: frozen with SIGSTOP (no process can fork or exit
any more), the shared-memory files every member maps noted from ``/proc/PID/maps``, every member
killed with SIGKILL, the noted files unlinked. Only files mapped by the group's own processes are
removed: other programs' Lava runs on the same machine keep theirs. The command then exits with
130 (SIGINT) or 143 (SIGTERM) and one line on stderr. After a normal end the same sweep removes
anything the child's group left behind.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
import typing as ty

import psutil

SHM_DIR = "/dev/shm/"
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame) -> None:
    raise _Interrupted(signum)


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in process group ``pgid``."""
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid:
                members.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return members


def mapped_shared_memory(pids: ty.Iterable[int]) -> set[str]:
    """The ``/dev/shm`` files (not yet unlinked) mapped by any of ``pids``."""
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    at = line.find(SHM_DIR)
                    if at >= 0 and not line.rstrip().endswith("(deleted)"):
                        found.add(line[at:].rstrip("\n"))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return found


def stop_group(pgid: int, timeout: float = 5.0) -> tuple[int, int]:
    """Freeze, sweep and kill process group ``pgid``; returns (processes killed, files removed)."""
    try:
        os.killpg(pgid, signal.SIGSTOP)
    except ProcessLookupError:
        return 0, 0
    members = group_members(pgid)  # (after the stop: nobody forks a new member any more)
    segments = mapped_shared_memory(members)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(psutil.pid_exists(p) and _alive(p) for p in members):
        time.sleep(0.02)
    removed = 0
    for path in segments:
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError:  # someone else's file after all (permissions): leave it
            pass
    return len(members), removed


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _exit_code(status: int) -> int:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 1


def _one_torch_thread() -> None:
    """In the forked child: torch computes on one thread. A parent that already ran torch's OpenMP
    thread pool (a test session, or the pipeline's ``--export --lava`` after training) leaves the
    child a pool whose threads did not survive the fork, and the first parallel operation there (the
    torch reference of the parity check) would wait for them forever."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def run_supervised(work: ty.Callable[[], int], name: str) -> int:
    """Run ``work()`` (returns an exit code) in a child in its own process group; see the module
    docstring. Returns the child's exit code, or 130/143 after an interrupt."""
    sys.stdout.flush()
    sys.stderr.flush()
    previous = {s: signal.getsignal(s) for s in EXIT_CODES}
    for s in EXIT_CODES:  # before the fork: no moment in which a signal would leave the child alone
        signal.signal(s, _raise_interrupted)
    pid = os.fork()
    if pid == 0:  # the child: the command itself, with the usual signal behaviour
        code = 1
        try:
            os.setpgid(0, 0)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _one_torch_thread()
            code = work()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported like an uncaught exception, then the child ends
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    try:
        try:
            os.setpgid(pid, pid)  # (set on both sides: whichever runs first)
        except OSError:
            pass
        try:
            _, status = os.waitpid(pid, 0)
            code = _exit_code(status)
            stop_group(pid)  # anything the run left behind
            return code
        except _Interrupted as interrupt:
            for s in EXIT_CODES:  # a second Ctrl-C must not cut the cleanup short
                signal.signal(s, signal.SIG_IGN)
            killed, removed = stop_group(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            print(f"\n{name}: interrupted by {signal.Signals(interrupt.signum).name}; stopped {killed} "
                  f"process(es) and removed {removed} shared-memory file(s)", file=sys.stderr)
            return EXIT_CODES[interrupt.signum]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
