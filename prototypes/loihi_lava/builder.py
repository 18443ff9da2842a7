"""Build and run the Lava graph of a lowered spec from stock processes.

Between the boundary processes (``io_procs.CurrentSource`` or ``BiasWriter`` at the input,
``io_procs.WindowCounter`` at the readout) there are only ``lava.proc`` processes:
``LIFReset`` per population and ``Sparse``/``DelaySparse``/``Conv``/``Dense`` per edge.
A built network runs its stream once, possibly in several ``run`` calls (Lava cannot rerun a
compiled graph): build a new one per stream.
"""
import os
import shutil
import tempfile
import time
import typing as ty

import numpy as np
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.lif.process import LIFReset
from lava.proc.sparse.process import DelaySparse, Sparse

from .io_procs.boundary import BiasWriter, CurrentSource, WindowCounter, allocate_counts
from .lowering import LoweredGraph, SynapseParams
from .timing import Schedule

SELECT_TAG = {'fixed': 'fixed_pt', 'float': 'floating_pt'}


class LavaNetwork:
    """The Lava processes of ``graph`` driven by ``inputs`` (windows x input neurons).

    ``input_mode='current'`` sends each window's row as a graded current every step of the
    window; ``'bias'`` writes ``population bias + row`` into the input population's
    ``bias_mant`` once per window (needs ``period == T`` and, in fixed point, the input
    population's ``bias_exp == 6`` so that bias and current share units). ``record`` names
    populations whose full spike raster is written (parity tests only).

    ``spmv=True`` (simulation only) sets ``num_message_bits=1`` on Sparse/DelaySparse/Dense:
    their CPU models then compute ``W.dot(s)`` instead of ``W[:, s].sum(1)`` (column slicing),
    4x faster for 0/1 spikes with identical results (verified by ``parity.py``). On Loihi 2
    it would declare graded spikes: build with ``spmv=False`` for hardware.
    """

    def __init__(self, graph: LoweredGraph, schedule: Schedule, inputs: np.ndarray,
                 input_mode: str = 'current', record: ty.Sequence[str] = (),
                 spmv: bool = True):
        self.graph, self.schedule = graph, schedule
        self.message_bits = 1 if spmv else 0
        self.fixed = graph.precision == 'fixed'
        self.windows = len(inputs)
        self.steps = schedule.total_steps(self.windows)
        self.workdir = tempfile.mkdtemp(prefix='loihi_lava_')
        self._ran = False
        self.steps_done = 0
        dtype = np.int32 if self.fixed else np.float64
        spec = graph.spec
        in_params = graph.neuron(spec.input)
        self.neurons = {}
        for n in graph.neurons:
            bias = n.bias
            if n.name == spec.input and input_mode == 'bias':
                bias = self._bias_rows(in_params, inputs, dtype)[0]
            self.neurons[n.name] = LIFReset(
                shape=(n.n,), vth=n.vth, du=n.du, dv=n.dv,
                bias_mant=bias.astype(dtype), bias_exp=n.bias_exp,
                reset_interval=schedule.period, reset_offset=schedule.reset_offset(n.name),
                name=n.name)
        self.synapses = [self._synapse(s) for s in graph.synapses]

        if input_mode == 'current':
            path = self._save('input.npy', np.asarray(inputs, dtype))
            self.source = CurrentSource(path=path, shape=(in_params.n,), period=schedule.period,
                                        length=schedule.steps_per_window, name='input')
            self.source.s_out.connect(self.neurons[spec.input].a_in)
        elif input_mode == 'bias':
            if schedule.period != schedule.steps_per_window:
                raise ValueError("input_mode='bias' needs period == T")
            path = self._save('bias.npy', self._bias_rows(in_params, inputs, dtype))
            self.source = BiasWriter(path=path, shape=(in_params.n,), period=schedule.period,
                                     name='input')
            self.source.connect_var(self.neurons[spec.input].bias_mant)
        else:
            raise ValueError(f'unknown input_mode {input_mode!r}')

        out_n = graph.neuron(spec.output).n
        self.counts_path = os.path.join(self.workdir, 'counts.npy')
        allocate_counts(self.counts_path, self.windows, out_n)
        self.readout = WindowCounter(path=self.counts_path, shape=(out_n,),
                                     period=schedule.period, length=schedule.steps_per_window,
                                     offset=schedule.readout_offset, windows=self.windows,
                                     name='readout')
        self.neurons[spec.output].s_out.connect(self.readout.s_in)
        self.raster_paths = {}
        self.recorders = []
        for name in record:
            path = os.path.join(self.workdir, f'raster_{name}.npy')
            allocate_counts(path, self.steps, graph.neuron(name).n)
            rec = WindowCounter(path=path, shape=(graph.neuron(name).n,), period=1, length=1,
                                offset=0, windows=self.steps, name=f'record_{name}')
            self.neurons[name].s_out.connect(rec.s_in)
            self.recorders.append(rec)
            self.raster_paths[name] = path

    def _save(self, filename: str, array: np.ndarray) -> str:
        path = os.path.join(self.workdir, filename)
        np.save(path, array)
        return path

    def _bias_rows(self, params, inputs: np.ndarray, dtype) -> np.ndarray:
        if self.fixed and params.bias_exp != 6:
            raise ValueError("input_mode='bias' needs the input population's bias_exp == 6")
        rows = np.asarray(inputs)
        rows = np.concatenate([rows, np.zeros_like(rows[:1])])  # after the last window: bias only
        return (params.bias[None, :] + rows).astype(dtype)

    def _synapse(self, s: SynapseParams):
        weights = s.weights
        if s.process == 'Conv':
            proc = Conv(weight=weights, weight_exp=s.weight_exp, name=s.name, **s.conv)
            self.neurons[s.src].s_out.reshape(s.conv['input_shape']).connect(proc.s_in)
            proc.a_out.flatten().connect(self.neurons[s.dst].a_in)
            return proc
        common = dict(weight_exp=s.weight_exp, num_message_bits=self.message_bits, name=s.name)
        if s.process == 'Dense':
            proc = Dense(weights=weights, **common)
        elif s.process == 'Sparse':
            proc = Sparse(weights=weights, **common)
        elif s.process == 'DelaySparse':
            delays = weights.copy()
            delays.data = np.full(delays.nnz, s.delay, dtype=int)
            proc = DelaySparse(weights=weights, delays=delays, max_delay=s.delay, **common)
        else:
            raise ValueError(f'unknown synapse process {s.process!r}')
        self.neurons[s.src].s_out.connect(proc.s_in)
        proc.a_out.connect(self.neurons[s.dst].a_in)
        return proc

    def run(self, num_steps: ty.Optional[int] = None) -> float:
        """Run ``num_steps`` more steps (default: the rest of the stream); return the wall
        time in seconds. The first call compiles and spawns the processes."""
        remaining = self.steps - self.steps_done
        num_steps = remaining if num_steps is None else min(num_steps, remaining)
        cfg = Loihi2SimCfg(select_tag=SELECT_TAG[self.graph.precision])
        t0 = time.perf_counter()
        self.source.run(condition=RunSteps(num_steps=num_steps), run_cfg=cfg)
        self._ran = True
        self.steps_done += num_steps
        return time.perf_counter() - t0

    def counts(self) -> np.ndarray:
        """Output-population spike counts per window, (windows, neurons)."""
        return np.array(np.load(self.counts_path, mmap_mode='r'))

    def raster(self, name: str) -> np.ndarray:
        """Recorded spikes of population ``name``, (steps, neurons), row = step - 1."""
        return np.array(np.load(self.raster_paths[name], mmap_mode='r'))

    def stop(self) -> None:
        """Stop the runtime (if it ran) and delete the work files (read ``counts`` and
        ``raster`` first). Call in ``finally``."""
        try:
            if self._ran:
                self.source.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
