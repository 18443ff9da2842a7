"""The loihi-profile Lava graph, built from a profile-"loihi" model file (no torch).

Every population is one stock ``lava.proc.lif.LIFReset`` of ``L_row * width`` neurons (neuron
index ``l * width + c``), every synapse one stock ``lava.proc.sparse`` process:

============  ==============================================  =========================
synapse kind  matrix                                          process
============  ==============================================  =========================
token_mix     banded: block (l, l + D*(j - left)) = diag(w[:, j])  ``Sparse`` (D: the layer's dilation)
channel       block-diagonal ``kron(I_L, W)``                  ``Sparse``
residual      diagonal ``kron(I_L, diag(w))``                  ``DelaySparse`` (delay 1)
============  ==============================================  =========================

fixed_pt: the file's integer mantissas, ``weight_exp``, ``vth_mant``, ``bias_mant``/``bias_exp``,
``du=4095, dv=0`` (the bit-accurate models). floating_pt: the file's float weights, ``vth``, the
float bias, ``du=1, dv=0`` (the float models). Between the two host processes of
``procs.loihi_boundary`` (``HostCurrent`` into ``embed``'s ``a_in``, ``HostWindowCounter`` on the
populations that are read out) there is nothing but these stock processes (``stock_check``).

Timing: a synapse delivers at t+1 what it got at t (+ delay), the host current arrives at t. A
population at depth k sees window i at steps ``i*T + 1 + k .. i*T + T + k`` and resets there
(``reset_offset = (1 + k) % T``); windows are pipelined (period T), a stream of W windows takes
``W*T + max depth`` steps.

Rows: sentences are packed along the token axis of rows of ``row_tokens`` positions with the
file's margin R (``lava.packing.pack_with_margins``): R zero-input positions before the first
sentence, between sentences and after the last, so every valid token's counts equal those of the
sentence simulated alone with R zero positions on each side (the torch convention).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import typing as ty
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sps

from lava_spikingbert.contract.constants import EMBED, IF_DU_FLOAT, IF_DV_FLOAT, is_stock_process
from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.model_file import LoihiModelFile, LoihiSynapse, ModelFileError, loihi_layout
from lava_spikingbert.lava.lava_import import import_lava_runtime
from lava_spikingbert.lava.packing import pack_with_margins

TAGS = ("floating_pt", "fixed_pt")


# ------------------------------------------------------------------------------------ rows
@dataclass
class LoihiRows:
    """Sentences packed into rows: host input (rows, L_row, d) and where each sentence sits."""

    inputs: np.ndarray  # int64 a_in (fixed_pt) or float64 current (floating_pt)
    row: np.ndarray  # (S,)
    start: np.ndarray  # (S,)
    length: np.ndarray  # (S,)

    @property
    def n_rows(self) -> int:
        return int(self.inputs.shape[0])


def plan_rows(mf: LoihiModelFile, ids: list[np.ndarray], types: list[np.ndarray], tag: str,
              row_tokens: int | None = None) -> LoihiRows:
    """Pack sentences into rows of ``row_tokens`` positions with the file's margin; each token gets
    the host input of its sentence position (position id j for token j)."""
    if tag not in TAGS:
        raise ValueError(f"tag must be one of {TAGS}, got {tag!r}")
    fixed = tag == "fixed_pt"
    if fixed and not mf.quantized:
        raise ModelFileError(f"{mf.path or 'model file'}: precision {mf.precision} has no fixed-point form; "
                             "export with --precision int8 (or run --tag floating_pt)")
    R = mf.margin
    lengths = np.array([len(x) for x in ids], np.int64)
    need = int(lengths.max()) + 2 * R
    row_tokens = int(row_tokens or -(-need // 16) * 16)  # default: the longest sentence + margins, rounded up to 16
    if int(lengths.max()) + 2 * R > row_tokens:
        raise SpikingBertError(f"--window {row_tokens} is shorter than the longest sentence ({int(lengths.max())} "
                               f"tokens) plus twice the margin {R}")
    row, start, n_rows = pack_with_margins(lengths, row_tokens, R)
    d = int(mf.config["hidden_size"])
    out = np.zeros((n_rows, row_tokens, d), np.int64 if fixed else np.float64)
    for s, (i, t) in enumerate(zip(ids, types)):
        cur = mf.input_current(np.asarray(i), np.asarray(t))
        out[row[s], start[s]:start[s] + lengths[s]] = mf.input_integer(cur) if fixed else cur
    return LoihiRows(out, row, start, lengths)


# ------------------------------------------------------------------------------------ lowering
def synapse_matrix(syn: LoihiSynapse, n_tokens: int, fixed: bool, mixing: str) -> sps.csr_matrix:
    """The (L*width_out, L*width_in) weight matrix of one synapse over a row of ``n_tokens``."""
    w = syn.weight_mant.astype(np.int32) if fixed else syn.weight.astype(np.float64)
    L = n_tokens
    if syn.kind == "channel":
        m = sps.kron(sps.identity(L, dtype=w.dtype, format="csr"), sps.csr_matrix(w), format="csr")
    elif syn.kind == "residual":
        m = sps.kron(sps.identity(L, dtype=w.dtype, format="csr"), sps.diags(w, format="csr"), format="csr")
    elif syn.kind == "token_mix":
        C, k = w.shape
        left = k - 1 if mixing == "causal" else (k - 1) // 2
        rows, cols, vals = [], [], []
        c = np.arange(C)
        for j in range(k):
            if not np.any(w[:, j]):
                continue
            for l in range(L):
                src = l + syn.dilation * (j - left)
                if 0 <= src < L:
                    rows.append(l * C + c)
                    cols.append(src * C + c)
                    vals.append(w[:, j])
        n = L * C
        m = (sps.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
             if rows else sps.csr_matrix((n, n), dtype=w.dtype))
    else:
        raise ValueError(f"synapse {syn.name}: unknown kind {syn.kind!r}")
    m = sps.csr_matrix(m)
    m.eliminate_zeros()
    return m


def model_map(tag: str) -> dict:
    """{Process class: ProcessModel class}: the stock models of ``tag`` and the boundary models."""
    import_lava_runtime()
    from lava.proc.lif.models import PyLifResetModelBitAcc, PyLifResetModelFloat
    from lava.proc.lif.process import LIFReset
    from lava.proc.sparse.models import (PyDelaySparseModelBitAcc, PyDelaySparseModelFloat, PySparseModelBitAcc,
                                         PySparseModelFloat)
    from lava.proc.sparse.process import DelaySparse, Sparse

    from lava_spikingbert.lava.procs import loihi_boundary as hb
    from lava_spikingbert.lava.runner import _ModelMap

    pairs = {LIFReset: (PyLifResetModelFloat, PyLifResetModelBitAcc),
             Sparse: (PySparseModelFloat, PySparseModelBitAcc),
             DelaySparse: (PyDelaySparseModelFloat, PyDelaySparseModelBitAcc),
             hb.HostCurrent: (hb.PyHostCurrentModelFloat, hb.PyHostCurrentModelFixed),
             hb.HostWindowCounter: (hb.PyHostWindowCounterModelFloat, hb.PyHostWindowCounterModelFixed)}
    if tag not in TAGS:
        raise ValueError(f"unknown tag {tag!r}")
    return _ModelMap({proc: pair[tag == "fixed_pt"] for proc, pair in pairs.items()})


def sim_run_config(tag: str):
    import_lava_runtime()
    from lava.magma.core.run_configs import Loihi2SimCfg
    return Loihi2SimCfg(select_tag=tag, exception_proc_model_map=model_map(tag))


# ------------------------------------------------------------------------------------ network
@dataclass
class LoihiNetwork:
    """The built (not yet compiled) graph of one stream of rows."""

    mf: LoihiModelFile
    tag: str
    t_steps: int
    n_rows: int
    n_tokens: int
    source: ty.Any
    neurons: dict[str, ty.Any]
    synapses: dict[str, ty.Any]
    counters: dict[str, ty.Any]
    count_paths: dict[str, str]
    depths: dict[str, int]
    workdir: str
    stored_synapses: int = 0
    extra_boundary: list = field(default_factory=list)  # further host processes the caller declares as boundary

    @property
    def num_steps(self) -> int:
        return self.n_rows * self.t_steps + max(self.depths.values())

    def boundary(self) -> list:
        return [self.source, *self.counters.values(), *self.extra_boundary]

    def counts(self, name: str) -> np.ndarray:
        """(rows, L_row, width) int32 spike counts of a recorded population over its windows."""
        width = self.mf.populations[name].width
        return np.array(np.load(self.count_paths[name], mmap_mode="r")).reshape(self.n_rows, self.n_tokens, width)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def build_network(mf: LoihiModelFile, rows: LoihiRows, tag: str, *, t_steps: int | None = None,
                  record: ty.Sequence[str] | None = None, spmv: bool = True) -> LoihiNetwork:
    """The stock-process graph of ``mf`` for ``rows``.

    ``record``: populations counted per window (default: only the output population, which the
    readout needs). ``spmv`` (simulation only): ``num_message_bits=1`` on the synapses, so the CPU
    models compute ``W.dot(s)`` (same result for 0/1 spikes, several times faster); build with
    ``spmv=False`` for Loihi 2 (binary spikes)."""
    import_lava_runtime()
    from lava.proc.lif.process import LIFReset
    from lava.proc.sparse.process import DelaySparse, Sparse

    from lava_spikingbert.lava.procs.loihi_boundary import HostCurrent, HostWindowCounter, allocate_counts

    if tag not in TAGS:
        raise ValueError(f"tag must be one of {TAGS}, got {tag!r}")
    fixed = tag == "fixed_pt"
    T = int(t_steps or mf.config["t_conv"])
    if T <= 0:
        raise SpikingBertError(f"t_steps must be positive, got {T}")
    n_rows, L, _ = rows.inputs.shape
    pops_l, syns_l = loihi_layout(mf.config)
    depths = {p["name"]: p["depth"] for p in pops_l}
    out_name = mf.output_population
    record = list(record) if record is not None else [out_name]
    if out_name not in record:
        record.append(out_name)
    workdir = tempfile.mkdtemp(prefix="loihi_lava_")
    try:
        neurons = {}
        for p in pops_l:
            pop = mf.populations[p["name"]]
            n = L * pop.width
            if fixed:
                kw = dict(vth=int(pop.vth_mant), du=int(pop.du), dv=int(pop.dv),
                          bias_mant=np.tile(pop.bias_mant.astype(np.int32), L), bias_exp=int(pop.bias_exp))
            else:
                kw = dict(vth=float(pop.vth), du=IF_DU_FLOAT, dv=IF_DV_FLOAT,
                          bias_mant=np.tile(pop.bias.astype(np.float64), L), bias_exp=0)
            neurons[pop.name] = LIFReset(shape=(n,), reset_interval=T, reset_offset=(1 + depths[pop.name]) % T,
                                         name=pop.name, **kw)
        synapses = {}
        stored = 0
        bits = 1 if spmv else 0
        for s in syns_l:
            syn = mf.synapses[s["name"]]
            w = synapse_matrix(syn, L, fixed, mf.config["mixing"])
            stored += int(w.nnz)
            common = dict(weights=w, weight_exp=int(syn.weight_exp) if fixed else 0, num_message_bits=bits,
                          name=syn.name)
            if syn.delay:
                delays = w.copy()
                delays.data = np.full(delays.nnz, syn.delay, dtype=int)  # Lava checks dtype == int
                proc = DelaySparse(delays=delays, max_delay=syn.delay, **common)
            else:
                proc = Sparse(**common)
            neurons[syn.source].s_out.connect(proc.s_in)
            proc.a_out.connect(neurons[syn.target].a_in)
            synapses[syn.name] = proc
        in_path = os.path.join(workdir, "input.npy")
        d = int(mf.config["hidden_size"])
        np.save(in_path, rows.inputs.reshape(n_rows, L * d).astype(np.int32 if fixed else np.float64))
        source = HostCurrent(path=in_path, shape=(L * d,), period=T, length=T, name="host_input")
        source.s_out.connect(neurons[EMBED].a_in)
        counters, paths = {}, {}
        for name in record:
            n = L * mf.populations[name].width
            paths[name] = os.path.join(workdir, f"counts_{name}.npy")
            allocate_counts(paths[name], n_rows, n)
            counters[name] = HostWindowCounter(path=paths[name], shape=(n,), period=T, length=T,
                                               offset=depths[name], windows=n_rows, name=f"count_{name}")
            neurons[name].s_out.connect(counters[name].s_in)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return LoihiNetwork(mf=mf, tag=tag, t_steps=T, n_rows=n_rows, n_tokens=L, source=source, neurons=neurons,
                        synapses=synapses, counters=counters, count_paths=paths, depths=depths, workdir=workdir,
                        stored_synapses=stored)


def run_network(net: LoihiNetwork, *, timeout: float | None = None, chunk_steps: int | None = None,
                progress: ty.Callable[[int, int], None] | None = None, stop_timeout: float = 60.0,
                run_cfg=None) -> dict[str, float]:
    """Compile and run the whole stream (in chunks of ``chunk_steps`` for progress reports);
    always shut the runtime down and reap its processes. Returns timings; read ``net.counts``
    afterwards, then ``net.cleanup()``."""
    from lava.magma.core.run_conditions import RunSteps

    from lava_spikingbert.lava.runner import ChildGuard, shutdown, wait_for_run

    cfg = run_cfg if run_cfg is not None else sim_run_config(net.tag)
    guard = ChildGuard()
    timings: dict[str, float] = {}
    total = net.num_steps
    chunk = int(chunk_steps or total)
    try:
        t0 = time.perf_counter()
        net.source.create_runtime(run_cfg=cfg)
        t1 = time.perf_counter()
        done = 0
        while done < total:
            n = min(chunk, total - done)
            net.source.run(condition=RunSteps(num_steps=n, blocking=False))
            wait_for_run(net.source.runtime, None if timeout is None else max(1.0, timeout - (time.perf_counter() - t1)))
            done += n
            if progress is not None:
                progress(done, total)
        t2 = time.perf_counter()
        timings.update(compile_s=t1 - t0, run_s=t2 - t1, ms_per_step=1e3 * (t2 - t1) / total, steps=float(total))
    finally:
        t3 = time.perf_counter()
        shutdown(net.source, guard, stop_timeout)
        timings["stop_s"] = time.perf_counter() - t3
    return timings


# ------------------------------------------------------------------------------------ stock-only check
def leaf_processes(net: LoihiNetwork, run_cfg=None) -> list[dict]:
    """Compile the graph (no run, no OS processes) and describe every leaf process and its model."""
    import_lava_runtime()
    from lava.magma.compiler.compiler import Compiler

    cfg = run_cfg if run_cfg is not None else sim_run_config(net.tag)
    executable = Compiler().compile(net.source, cfg)
    boundary = {id(p) for p in net.boundary()}
    rows = []
    for proc, builder in executable.proc_builders.items():
        model = builder.proc_model
        rows.append({"name": proc.name, "process": f"{type(proc).__module__}.{type(proc).__name__}",
                     "model": f"{model.__module__}.{model.__name__}", "boundary": id(proc) in boundary})
    return rows


def stock_problems(rows: list[dict]) -> list[str]:
    """One line per leaf process that is neither a declared boundary process nor from
    ``lava.proc`` / ``lava.lib.dl``."""
    return [f"{r['name']}: {r['process']} (model {r['model']}) is not a stock Lava process"
            for r in rows if not r["boundary"] and not is_stock_process(r["process"])]


# ------------------------------------------------------------------------------------ one stream
@dataclass
class LoihiRunResult:
    """Per sentence: population -> (n_tokens, width) counts of its valid tokens; logits; timings."""

    counts: list[dict[str, np.ndarray]]
    logits: np.ndarray
    timings: dict[str, float]
    rows: int
    steps: int
    synapses: int


def run_rows(mf: LoihiModelFile, rows: LoihiRows, tag: str, *, t_steps: int | None = None, record_all: bool = False,
             timeout: float | None = None, chunk_steps: int | None = None,
             progress: ty.Callable[[int, int], None] | None = None, spmv: bool = True) -> LoihiRunResult:
    """Build, run and read out one stream of rows; logits by the file's host readout."""
    names = [p["name"] for p in loihi_layout(mf.config)[0]]
    net = build_network(mf, rows, tag, t_steps=t_steps, record=names if record_all else None, spmv=spmv)
    try:
        timings = run_network(net, timeout=timeout, chunk_steps=chunk_steps, progress=progress)
        t0 = time.perf_counter()
        full = {name: net.counts(name) for name in net.count_paths}
        per = [{name: c[r, s:s + n].copy() for name, c in full.items()}
               for r, s, n in zip(rows.row, rows.start, rows.length)]
        timings["readout_s"] = time.perf_counter() - t0
    finally:
        net.cleanup()
    T = net.t_steps
    logits = np.stack([mf.readout(c[mf.output_population], T) for c in per])
    return LoihiRunResult(per, logits, timings, net.n_rows, net.num_steps, net.stored_synapses)
