"""``spikingbert lava`` interrupted mid-run (SIGINT / SIGTERM, to the command or to its process
group, one or two workers): it ends with 130 / 143 and one line, and leaves no process and no
shared-memory file of its Lava runs behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lava_spikingbert.lava.supervise import mapped_shared_memory
from test_lava_fixed import cli_model  # noqa: F401  (fixture: a tiny model file and a 4-sentence SST-2 dev set)

ROOT = Path(__file__).resolve().parents[2]
END_WITHIN_S = 30  # generous bound on "ends"; the requirement is 10 s


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.lava
@pytest.mark.parametrize("sig,target,workers", [
    (signal.SIGINT, "group", 2),
    (signal.SIGTERM, "parent", 2),
    (signal.SIGTERM, "group", 1),
    (signal.SIGINT, "parent", 1),
])
def test_interrupt_ends_every_process_and_shared_memory(cli_model, sig, target, workers):  # noqa: F811
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    # a long run (T = 100000 steps per window) that is interrupted as soon as its Lava runtime is up
    proc = subprocess.Popen([sys.executable, "-m", "lava_spikingbert.cli", "lava", "--model",
                             str(cli_model / "tiny.h5"), "--task", "sst2", "--glue-dir", str(cli_model / "glue"),
                             "--t-conv", "100000", "--no-parity", "--no-pack", "--batch-size", "1",
                             "--workers", str(workers)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: the test can signal the group
    try:
        deadline = time.time() + 240
        segments: set[str] = set()
        while time.time() < deadline and proc.poll() is None:
            segments = mapped_shared_memory(p.pid for p in _tree(proc.pid))
            # each worker has a Lava runtime with its channels mapped
            if len(segments) >= 4 * workers and len({p.pid for p in _tree(proc.pid)}) > 4 * workers:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert segments, "no Lava run started"
        time.sleep(1.0)
        processes = _tree(proc.pid)
        segments |= mapped_shared_memory(p.pid for p in processes)
        if target == "group":
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        try:
            _, err = proc.communicate(timeout=END_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {END_WITHIN_S} s after {sig.name}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert len(said) == 1 and sig.name in said[0], err[-3000:]
    time.sleep(0.5)
    left = [p for p in processes if not _gone(p)]
    assert not left, [(p.pid, p.cmdline()) for p in left]
    leaked = [s for s in segments if os.path.exists(s)]
    assert not leaked, leaked


def test_supervised_child_computes_torch_after_the_parent_did():
    """The supervised child is forked: a parent that already ran torch's OpenMP pool (a test
    session, the pipeline's ``--export --lava``) must not leave the child's first parallel torch
    operation waiting for threads that did not survive the fork."""
    code = ("import torch\n"
            "from lava_spikingbert.lava.supervise import run_supervised\n"
            "torch.set_num_threads(2)\n"
            "a = torch.randn(512, 512)\n"
            "(a @ a).sum()  # the parent's pool runs\n"
            "def work():\n"
            "    b = torch.randn(512, 512)\n"
            "    return 0 if torch.isfinite((b @ b).sum()) else 1\n"
            "raise SystemExit(run_supervised(work, 'test'))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.communicate()
        pytest.fail("the supervised child hung in its first parallel torch operation")
    assert proc.returncode == 0, err[-2000:]
