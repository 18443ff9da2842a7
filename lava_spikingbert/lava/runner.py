"""Run a built graph on Lava's CPU simulator and read the results out.

``run_batch`` builds the graph for a batch (``builder.build_network``), compiles it with
``Loihi2SimCfg(select_tag="floating_pt", select_sub_proc_model=True)`` (models pre-selected through
``exception_proc_model_map``, see ``model_map``), runs ``N*T + max_depth`` steps in one run, reads
each recorded population's packed count history with ONE ``Var.get`` and computes the logits on
the host from the last output population's [CLS] ASR. ``schedule.plan_runs`` groups many sentences
into few such runs.

Lava is imported inside the functions that run it (``import_lava_runtime`` first): importing Lava
fixes the multiprocessing start method, which must happen on Lava's terms in every process,
including spawned workers.

Cleanup guarantee: the run is started non-blocking and watched (Lava's own blocking wait never
returns when a ProcessModel raises: ``LavaRunError`` with the model's traceback instead); the
runtime is always shut down in ``finally``: ``stop()`` in a helper thread with a timeout when the
run is healthy, otherwise the model processes are terminated and the shared memory released; then
every descendant OS process started since the run began (except multiprocessing's per-interpreter
resource tracker) is terminated by pid. Do not start unrelated child processes from other threads
while a run is in progress: they would count as the run's.
"""

from __future__ import annotations

import os
import threading
import time
import typing as ty
from dataclasses import dataclass, field

import numpy as np
import psutil

from lava_spikingbert.lava.builder import LavaNetwork, build_network
from lava_spikingbert.lava.lava_import import import_lava_runtime
from lava_spikingbert.lava.params import LavaModelParams


@dataclass
class LavaRunResult:
    """Counts of each recorded population over its own windows: name -> (N, tokens, width) int64,
    ``tokens`` = ``recorded_tokens[name]`` (slots of the per-window index if one was given);
    ``logits`` (N, labels) from the last output's [CLS] (None for packed windows: the caller
    knows where each sentence's [CLS] sits)."""

    counts: dict[str, np.ndarray]
    recorded_tokens: dict[str, tuple[int, ...]]
    logits: np.ndarray | None
    depths: dict[str, int]
    t_steps: int
    num_steps: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(-1)

    def asr(self, name: str) -> np.ndarray:
        return self.counts[name] / self.t_steps


def _descendants() -> dict[int, float]:
    out = {}
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            out[p.pid] = p.create_time()
        except psutil.Error:
            pass
    return out


class ChildGuard:
    """Remembers this process's descendants; ``reap()`` terminates those started since."""

    def __init__(self) -> None:
        self.before = _descendants()

    def new_children(self):
        procs = []
        for pid, created in _descendants().items():
            if self.before.get(pid) == created:
                continue  # existed before the run (same pid and start time)
            try:
                procs.append(psutil.Process(pid))
            except psutil.Error:
                pass
        return procs

    def reap(self, timeout: float = 5.0) -> list[int]:
        procs = [p for p in self.new_children() if not _is_resource_tracker(p)]
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=timeout)
        return [p.pid for p in procs]


def _is_resource_tracker(p) -> bool:
    """multiprocessing's resource tracker is shared by every later run of this Python process
    (it unlinks leaked shared memory); it exits with its parent and is left alone."""
    try:
        return "resource_tracker" in " ".join(p.cmdline())
    except Exception:
        return False


class _ModelMap(dict):
    """A class-keyed ``exception_proc_model_map`` that also answers lookups by Process instance.

    Lava's compiler checks ``proc in run_cfg.exception_proc_model_map`` per Process *instance*
    before falling back to ``_find_proc_models``, which re-executes every module of the Process's
    package for every instance (quadratic in the number of modules; most of a compile's time
    without bytecode caching). Answering by type selects the same models without the scan.
    """

    @staticmethod
    def _key(key):
        return key if isinstance(key, type) else type(key)

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, self._key(key))

    def __getitem__(self, key):
        return dict.__getitem__(self, self._key(key))


def model_map(tag: str = "floating_pt") -> dict:
    """{Process class: ProcessModel class} of this package's processes (and Lava's LIFReset) for ``tag``."""
    import_lava_runtime()
    from lava.proc.lif.models import PyLifResetModelBitAcc, PyLifResetModelFloat
    from lava.proc.lif.process import LIFReset

    from lava_spikingbert.lava.procs import (current_blocks, embedding_source, encoder_layer, ifneuron,
                                             spike_counter, spiking_attention, token_linear)
    # Process: (floating_pt model, fixed_pt model)
    models = {
        encoder_layer.SpikingEncoderLayer: (encoder_layer.SubSpikingEncoderLayerModel,) * 2,
        spike_counter.SpikeCounter: (spike_counter.PySpikeCounterModel,) * 2,
        ifneuron.IFNeuron: (ifneuron.PyIFNeuronModelFloat, ifneuron.PyIFNeuronModelFixed),
        token_linear.TokenLinear: (token_linear.PyTokenLinearModelFloat, token_linear.PyTokenLinearModelFixed),
        spiking_attention.SpikingAttention: (spiking_attention.PySpikingAttentionModelFloat,
                                             spiking_attention.PySpikingAttentionModelFixed),
        current_blocks.ResidualLayerNorm: (current_blocks.PyResidualLayerNormModelFloat,
                                           current_blocks.PyResidualLayerNormModelFixed),
        current_blocks.GELU: (current_blocks.PyGELUModelFloat, current_blocks.PyGELUModelFixed),
        embedding_source.EmbeddingSource: (embedding_source.PyEmbeddingSourceModelFloat,
                                           embedding_source.PyEmbeddingSourceModelFixed),
        LIFReset: (PyLifResetModelFloat, PyLifResetModelBitAcc),
    }
    if tag in ("floating_pt", "fixed_pt"):
        return _ModelMap({proc: pair[tag == "fixed_pt"] for proc, pair in models.items()})
    raise ValueError(f"unknown tag {tag!r}")


def sim_run_config(tag: str = "floating_pt"):
    """``Loihi2SimCfg(select_tag=tag, select_sub_proc_model=True)`` with the models pre-selected."""
    import_lava_runtime()
    from lava.magma.core.run_configs import Loihi2SimCfg
    return Loihi2SimCfg(select_tag=tag, select_sub_proc_model=True, exception_proc_model_map=model_map(tag))


class LavaRunError(RuntimeError):
    """A Lava model process failed (its traceback is in the message) or the run timed out."""


def loihi2_run_config(tag: str = "fixed_pt"):
    """``Loihi2HwCfg`` for a Loihi-2 system (needs lava-loihi; see docs/loihi2.md).

    Every process of the fixed_pt graph is one of this package's custom processes, so every one is
    mapped explicitly to its CPU (host) fixed_pt model through ``exception_proc_model_map``: none
    runs on a neurocore. Raises a one-line ``RuntimeError`` without lava-loihi (``Loihi2HwCfg``
    cannot even select models then). NOT validated on hardware (HW_VALIDATED=false).
    """
    import_lava_runtime()
    from lava.utils import loihi

    if not loihi.is_installed():
        raise RuntimeError("Loihi 2 backend needs lava-loihi (lava.utils.loihi.is_installed() is False)")
    from lava.magma.core.run_configs import Loihi2HwCfg  # pragma: no cover - needs lava-loihi

    host = _ModelMap({k: v for k, v in model_map(tag).items() if k.__module__.startswith("lava_spikingbert.")})
    return Loihi2HwCfg(select_sub_proc_model=True, exception_proc_model_map=host)  # pragma: no cover


def _actors(runtime) -> list:
    infra = getattr(runtime, "_messaging_infrastructure", None)
    return list(getattr(infra, "actors", []) or [])


def _call_with_timeout(fn, timeout: float) -> bool:
    """Run ``fn()`` in a daemon thread; True if it returned without error within ``timeout``."""
    result: dict[str, ty.Any] = {}

    def target() -> None:
        try:
            fn()
            result["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - a failed stop falls back to abort
            result["error"] = exc

    th = threading.Thread(target=target, name="lava-shutdown", daemon=True)
    th.start()
    th.join(timeout)
    return bool(result.get("ok")) and not th.is_alive()


def wait_for_run(runtime, timeout: float | None, poll_s: float = 0.02) -> None:
    """Wait for a non-blocking ``run`` to finish, watching the model processes.

    Lava's blocking wait never returns when a ProcessModel raises: its RuntimeService collects
    the per-phase answers of all models in turn and blocks on the models that wait for the dead
    one. Here the RuntimeServices' answers are polled and a model process that exited early is
    reported (with its traceback) instead of waited for.
    """
    from lava.magma.runtime.mgmt_token_enums import MGMT_RESPONSE, enum_equal

    pending = list(runtime.service_to_runtime)
    actors = _actors(runtime)
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        progressed = False
        for port in list(pending):
            if port.probe():
                data = port.recv()
                if not enum_equal(data, MGMT_RESPONSE.DONE):
                    raise LavaRunError(f"Lava runtime service answered {data} instead of DONE"
                                       + _actor_errors(actors))
                pending.remove(port)
                progressed = True
        if not pending:
            break
        dead = [a for a in actors if not a.is_alive()]
        if dead:
            raise LavaRunError(f"{len(dead)} Lava process(es) exited during the run" + _actor_errors(dead))
        if deadline is not None and time.monotonic() > deadline:
            raise LavaRunError(f"Lava run did not finish within {timeout} s")
        if not progressed:
            time.sleep(poll_s)
    runtime._is_running = False  # what Runtime._get_resp_for_run does on completion


def _actor_errors(actors) -> str:
    msgs = []
    for a in actors:
        try:
            exc = a.exception
        except Exception:  # noqa: BLE001
            exc = None
        if exc:
            msgs.append(str(exc[1]).strip())
    return ("\n--- model process traceback ---\n" + "\n".join(msgs)) if msgs else ""


def _abort_runtime(runtime, timeout: float = 10.0) -> None:
    """Tear a runtime down without its (deadlock-prone) stop protocol: kill the model and runtime
    service processes, then shut the shared-memory manager down (it unlinks the channels)."""
    for a in _actors(runtime):
        try:
            if a.is_alive():
                a.terminate()
        except Exception:  # noqa: BLE001
            pass
    for a in _actors(runtime):
        try:
            a._popen.wait(timeout) if a._popen is not None else None
            if a.is_alive():
                a.kill()
        except Exception:  # noqa: BLE001
            pass
    infra = getattr(runtime, "_messaging_infrastructure", None)
    if infra is not None and getattr(infra, "smm", None) is not None:
        _call_with_timeout(infra.smm.shutdown, timeout)
    # Runtime.__del__ would call stop() again and block forever on the dead services
    runtime._is_running = False
    runtime._is_started = False


def shutdown(process, guard: "ChildGuard | None" = None, stop_timeout: float = 60.0) -> bool:
    """Stop the runtime of ``process``'s graph: Lava's ``stop()`` (in a thread, with a timeout) when
    the run is healthy, otherwise (a model process died, the runtime never started, or ``stop``
    hung) abort it; finally terminate every descendant process started since ``guard`` was made.
    True if the graceful ``stop()`` did it all."""
    stopped = False
    runtime = getattr(process, "runtime", None)
    if runtime is not None:
        if getattr(runtime, "_is_started", False) and all(a.is_alive() for a in _actors(runtime)):
            stopped = _call_with_timeout(process.stop, stop_timeout)
        if not stopped:
            _abort_runtime(runtime)
    killed = guard.reap() if guard is not None else []
    return stopped and not killed


def run_network(net: LavaNetwork, *, timeout: float | None = None, stop_timeout: float = 60.0,
                run_cfg=None) -> LavaRunResult:
    """Compile, run ``net.num_steps`` steps, read counts, compute logits; always clean up.

    ``run_cfg``: default ``sim_run_config(net.tag)`` (Loihi2SimCfg); ``loihi2_run_config`` for a chip.

    Raises ``LavaRunError`` (with the model traceback) if a ProcessModel fails, or if the run
    exceeds ``timeout`` seconds; no child process survives either way.
    """
    from lava.magma.core.run_conditions import RunSteps

    cfg = run_cfg if run_cfg is not None else sim_run_config(getattr(net, "tag", "floating_pt"))
    guard = ChildGuard()
    root = net.root
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        root.create_runtime(run_cfg=cfg)  # compile + spawn the model processes
        t1 = time.perf_counter()
        root.run(condition=RunSteps(num_steps=net.num_steps, blocking=False))
        wait_for_run(root.runtime, timeout)
        t2 = time.perf_counter()
        counts = {}
        for name in net.recorded():
            counts[name] = net.layouts[name].unpack(net.count_vars[name].get())
        t3 = time.perf_counter()
        timings.update(compile_s=t1 - t0, run_s=t2 - t1, readout_s=t3 - t2,
                       ms_per_step=1e3 * (t2 - t1) / net.num_steps)
    finally:
        t4 = time.perf_counter()
        shutdown(root, guard, stop_timeout)
        timings["stop_s"] = time.perf_counter() - t4
    out_name = net.output_name
    logits = None
    if out_name not in net.record_index:  # one sentence per window: its [CLS] is token 0
        cls_pos = net.layouts[out_name].tokens.index(0)
        logits = net.params.logits_from_asr(counts[out_name][:, cls_pos].astype(np.float32) / np.float32(net.t_steps))
    return LavaRunResult(counts=counts, recorded_tokens={n: net.layouts[n].tokens for n in counts},
                         logits=logits, depths=dict(net.depths), t_steps=net.t_steps, num_steps=net.num_steps,
                         timings=timings)


def run_batch(params: LavaModelParams, emb_current: np.ndarray, attention_mask: np.ndarray | None = None,
              *, timeout: float | None = None, stop_timeout: float = 60.0, run_cfg=None,
              **build_kwargs) -> LavaRunResult:
    """Build and run one batch (see ``builder.build_network`` for ``build_kwargs``; ``run_network``
    for ``run_cfg``)."""
    t0 = time.perf_counter()
    net = build_network(params, emb_current, attention_mask, **build_kwargs)
    build_s = time.perf_counter() - t0
    result = run_network(net, timeout=timeout, stop_timeout=stop_timeout, run_cfg=run_cfg)
    result.timings["build_s"] = build_s
    return result
