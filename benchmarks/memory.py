"""Peak memory and wall time of ONE training step: equilibrium (implicit) training vs BPTT.

For every T in ``--t`` (default 8 16 32 64) and both modes, one training step of the default
student (forward + backward + AdamW step) on the first ``--batch-size`` (16) SST-2 train
sentences (padded to the longest of them), labels = the gold labels:

* implicit: ``model(ids, mask, labels=y, mode="equilibrium")``: T-step spiking simulation under
  ``no_grad``, values = the simulated ASRs, gradients through one pass of the steady-state map;
* bptt: ``mode="bptt"``: the same simulation with a surrogate spike derivative, differentiated
  through all T steps (the usual baseline; the autograd graph holds every step).

Each (mode, T) runs in fresh Python processes (``subprocess``), so peaks cannot pollute each other:
one for memory, started with ``MALLOC_MMAP_THRESHOLD_=131072`` (every tensor >= 128 KiB is its
own mapping, returned to the OS when freed, so RSS follows the live memory; with glibc's default
dynamic threshold freed blocks stay in the heap and the peak depends on the allocation history:
+-20% run to run, reported as ``*_peak_mb_default_malloc``), one for the time (default allocator).
Inside the child: build model + optimizer, one warm-up step at the same T (allocates the
optimizer state and grads; the first step at a new size is several times slower because of
first-touch page faults), ``malloc_trim(0)``, read RSS (baseline), reset the kernel's peak-RSS
counter (``echo 5 > /proc/self/clear_refs``), run the measured step at T and read ``VmHWM`` after
its forward, backward and optimizer phases (resetting the counter after each): ``peak_mb`` =
the largest ``VmHWM - baseline`` (the extra resident memory the step needed at its peak),
``phase_peak_mb`` per phase. A 1 ms RSS sampling thread gives a cross-check
(``sampled_peak_mb``; it can miss very short peaks, and is the result only if the peak counter
cannot be reset). Time = wall time of the step (``time.perf_counter``), the fastest of
``--repeats`` steps; CPU seconds and the load average are reported too (the machine is shared).
``--old-chunking`` simulates all T steps as one chunk, the default before the chunk budget.

Target: implicit peak at T=64 <= 1.15 x its peak at T=8 while BPTT grows with T.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import _common as C

MODES = {"implicit": "equilibrium", "bptt": "bptt"}


# ---------------------------------------------------------------------------------------- child
def _status_mb(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024.0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class _Sampler(threading.Thread):
    def __init__(self, interval: float = 0.001) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)


def child(args) -> dict:
    import torch

    C.setup_torch(args.threads)
    if args.old_chunking:  # the previous default: one chunk of all T steps
        import lava_spikingbert.model.encoder as encoder

        encoder.SIM_CHUNK_BYTES = 1 << 62
    model, weights = C.build_model(args)
    model.train()
    data = C.load_sst2("train", args.glue_dir, args.batch_size)
    ids, mask, tt = C.pad_batch(C.tokenize([s for s, _ in data]))
    labels = torch.tensor([y for _, y in data])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    mode = MODES[args.mode]

    def step(T: int, phases: dict | None = None) -> float:
        def mark(name: str) -> None:  # peak of this phase, then restart the peak counter
            if phases is not None:
                phases[name] = _status_mb("VmHWM") - base
                _reset_peak()

        out = model(ids, mask, tt, labels=labels, t_conv=T, mode=mode)
        mark("forward")
        out.loss.backward()
        mark("backward")
        opt.step()
        opt.zero_grad(set_to_none=True)
        mark("optimizer")
        return float(out.loss.detach())

    torch.manual_seed(0)
    step(args.t)  # warm-up: the same step once (optimizer state, grads, first-touch of memory)
    _malloc_trim()
    base = _status_mb("VmRSS")
    exact = _reset_peak()
    phases: dict = {}
    sampler = _Sampler()
    sampler.peak = int(base * 2**20)
    sampler.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    loss = step(args.t, phases if exact else None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    sampler.stop.set()
    sampler.join()
    sampled = sampler.peak / 2**20 - base
    walls, cpus = [wall], [cpu]
    for _ in range(max(0, args.repeats - 1)):  # more steps, for the time only
        cpu0, t0 = time.process_time(), time.perf_counter()
        step(args.t)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - cpu0)
    peak = max(phases.values()) if exact else sampled
    return {
        "mode": args.mode, "T": args.t, "peak_mb": peak, "phase_peak_mb": phases or None,
        "sampled_peak_mb": sampled, "baseline_rss_mb": base,
        "step_s": min(walls), "step_s_all": walls, "step_cpu_s": min(cpus), "loss": loss,
        "batch_shape": list(ids.shape), "weights": weights,
        "chunk_steps": model.default_chunk_steps(model.embedding_current(ids, tt), args.t),
        "load_avg_1min": os.getloadavg()[0],
    }


# ---------------------------------------------------------------------------------------- parent
# glibc: every allocation >= 128 KiB gets its own mapping and is unmapped when freed (the default
# raises this threshold dynamically and keeps freed memory in the heap), so RSS follows live memory
FIXED_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run_child(args, mode: str, T: int, repeats: int, env_extra: dict | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--mode", mode, "--t", str(T),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--gain", str(args.gain),
           "--seed", str(args.seed), "--repeats", str(repeats)]
    if args.old_chunking:
        cmd.append("--old-chunking")
    if args.glue_dir:
        cmd += ["--glue-dir", args.glue_dir]
    if args.model:
        cmd += ["--model", args.model]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} T={T} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = result["T"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    panels = ((ax1, "peak_mb", "peak extra RSS of one training step (MB)", "memory"),
              (ax2, "step_s", "wall time of one training step (s)", "time"))
    for ax, key, ylabel, title in panels:
        ax.plot(T, result[f"implicit_{key}"], "o-", label="equilibrium (implicit)")
        ax.plot(T, result[f"bptt_{key}"], "s-", label="BPTT (surrogate)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(T, [str(t) for t in T])
        ax.set_xlabel("time steps T")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
    b, l = result["batch_shape"]
    fig.suptitle(f"SpikingBERT default student, batch {b} x {l} tokens, 2 threads")
    fig.tight_layout()
    C.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser)
    parser.add_argument("--t", type=int, nargs="+", default=[8, 16, 32, 64], help="time steps to measure")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--modes", nargs="+", default=["implicit", "bptt"], choices=sorted(MODES))
    parser.add_argument("--repeats", type=int, default=1,
                        help="measured steps per configuration; the time is the fastest (memory: the first)")
    parser.add_argument("--old-chunking", action="store_true",
                        help="simulate all T steps as one chunk (the default before this benchmark), for comparison")
    parser.add_argument("--png", default=str(C.REPO / "docs" / "figures" / "memory_vs_T.png"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.t = args.t[0]
        print("RESULT " + json.dumps(child(args)), flush=True)
        return None

    rows: dict[str, dict[int, dict]] = {m: {} for m in args.modes}
    for T in args.t:
        for mode in args.modes:
            r = run_child(args, mode, T, 1, FIXED_MMAP_ENV)  # memory
            timed = run_child(args, mode, T, args.repeats)  # time (default allocator)
            r["peak_mb_default_malloc"] = timed["peak_mb"]
            r["phase_peak_mb_default_malloc"] = timed["phase_peak_mb"]
            r["step_s_fixed_mmap"] = r["step_s"]
            for key in ("step_s", "step_s_all", "step_cpu_s", "load_avg_1min"):
                r[key] = timed[key]
            rows[mode][T] = r
            ph = r["phase_peak_mb"] or {}
            print(f"  {mode:8s} T={T:3d}: peak {r['peak_mb']:8.1f} MB ("
                  + ", ".join(f"{k} {v:.0f}" for k, v in ph.items())
                  + f"; sampled {r['sampled_peak_mb']:.0f}; default malloc {r['peak_mb_default_malloc']:.0f}), "
                  f"step {r['step_s']:6.2f} s wall / {r['step_cpu_s']:6.2f} s CPU, chunk {r['chunk_steps']}, "
                  f"load {r['load_avg_1min']:.1f}", flush=True)
    first = next(iter(next(iter(rows.values())).values()))
    result: dict = {"T": list(args.t), "batch_size": args.batch_size, "batch_shape": first["batch_shape"],
                    "weights": first["weights"], "old_chunking": args.old_chunking, "repeats": args.repeats,
                    "peak_definition": "max over the step's phases (forward, backward, optimizer) of VmHWM minus "
                    "the RSS before the step (fresh process per configuration, after a warm-up step and "
                    "malloc_trim), with MALLOC_MMAP_THRESHOLD_=131072 so that RSS follows live memory; "
                    "*_peak_mb_default_malloc: the same with glibc's default (dynamic) threshold",
                    "step_s_definition": "wall time of the fastest measured step (default allocator, separate "
                    "process)"}
    for mode in args.modes:
        for key in ("peak_mb", "sampled_peak_mb", "phase_peak_mb", "peak_mb_default_malloc",
                    "phase_peak_mb_default_malloc", "step_s", "step_cpu_s", "step_s_fixed_mmap", "chunk_steps",
                    "load_avg_1min"):
            result[f"{mode}_{key}"] = [rows[mode][T][key] for T in args.t]
    if "implicit" in rows and len(args.t) > 1:
        imp = result["implicit_peak_mb"]
        ratio = imp[-1] / imp[0]
        result["implicit_peak_ratio_last_first"] = ratio
        result["target"] = f"implicit peak at T={args.t[-1]} <= 1.15 x at T={args.t[0]}; BPTT grows with T"
        result["target_met"] = bool(ratio <= 1.15 and ("bptt" not in rows or all(
            b > a for a, b in zip(result["bptt_peak_mb"], result["bptt_peak_mb"][1:]))))
    result.update(C.run_info(args))
    headers = ["T"] + [f"{m} {k}" for m in args.modes for k in ("peak MB", "step s")]
    table_rows = [[T] + [v for m in args.modes for v in (rows[m][T]["peak_mb"], rows[m][T]["step_s"])]
                  for T in args.t]
    print()
    print(f"weights: {result['weights']}; batch {result['batch_shape']}")
    print(C.table(headers, table_rows))
    if "target_met" in result:
        print(f"implicit peak T={args.t[-1]} / T={args.t[0]} = {result['implicit_peak_ratio_last_first']:.3f} "
              f"-> target {'met' if result['target_met'] else 'NOT met'}")
    if {"implicit", "bptt"} <= set(rows):
        plot(result, args.png)
    C.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
