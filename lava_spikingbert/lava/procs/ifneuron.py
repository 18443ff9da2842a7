"""``IFNeuron``: the spiking BERT population (tokens x width) with in-graph reset and spike counts.

Dynamics per time step ``t`` (0-based: ``t = time_step - 1``), with the input current ``a`` that
arrived this step::

    if t >= reset_offset and (t - reset_offset) % reset_interval == 0:  v = 0     # new sample window
    v += a + bias
    if_subtract   (the paper's neuron, lava_spikingbert.neurons.IFSubtract):
        s = v >= vth;  v -= vth where s
    lif_reset_zero (Lava's LIF with du=1, dv=0; neurons.LIFResetZero):
        s = v >  vth;  v  = 0   where s

Window ``k`` of the population is the steps ``reset_offset + k*reset_interval + [0, reset_interval)``;
the spikes of the recorded tokens are counted per window and the count of window ``k`` (for
``k < n_samples``) is stored, packed (see ``lava_spikingbert.lava.counts``), in ``counts[k]`` when
the window ends. Steps before ``reset_offset`` (pipeline fill) are not counted. The host reads all
samples' counts with one ``counts.get()`` after the run.

Float model: float32 state, ``v + (a + bias)`` in the torch model's order (the builder puts the
synaptic biases into the TokenLinear, so ``bias`` is 0 and ``v + a`` is bit-equal to torch).
Fixed model: Lava-LIF conventions (``a << 6``, ``bias = bias_mant << bias_exp`` without ``<< 6``,
``vth << 6``, Lava's 24-bit ``u`` wrap, 24-bit ``v`` saturating), used by the fixed_pt graph
(docs/fixed_point.md §2.9; ``lava_spikingbert.lava.fixed``).
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import LogConfig
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikingbert.lava.counts import WindowCounter
from lava_spikingbert.lava.fixed import wrap24
from lava_spikingbert.lava.procs._bases import DenseModel, WindowCountingProcess, window_count_layout

KINDS = ("if_subtract", "lif_reset_zero")
V_MAX_FIXED = 2 ** 23 - 1


class IFNeuron(WindowCountingProcess):
    """Integrate-and-fire population of shape (tokens, width) with per-sample reset and counts.

    Parameters
    ----------
    shape: (L, W) tokens x neurons per token.
    vth: threshold (float; for fixed_pt an integer in weight units, compared as ``vth << 6``).
    bias_mant, bias_exp: per-neuron bias; float: ``bias_mant`` (``bias_exp`` ignored, as Lava LIF);
        fixed: ``bias_mant << bias_exp`` in membrane units.
    kind: "if_subtract" or "lif_reset_zero".
    reset_interval: window length T (steps per sample); reset_offset: first step of window 0.
    n_samples: number of windows whose counts are stored; record_tokens: token positions counted;
    record_index: instead, per-window positions (n_samples, R), -1 = empty slot (packed sentences).
    """

    def __init__(self, *, shape: tuple[int, int], vth: float = 1.0, bias_mant: ty.Any = 0.0,
                 bias_exp: ty.Any = 0, kind: str = "if_subtract", reset_interval: int,
                 reset_offset: int = 0, n_samples: int = 1, record_tokens: ty.Sequence[int] = (),
                 record_index: np.ndarray | None = None, name: str | None = None,
                 log_config: LogConfig | None = None) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2:
            raise ValueError(f"IFNeuron shape must be (tokens, width), got {shape}")
        if kind not in KINDS:
            raise ValueError(f"IFNeuron kind must be one of {KINDS}, got {kind!r}")
        if int(reset_interval) <= 0 or int(reset_offset) < 0:
            raise ValueError(f"reset_interval must be > 0 and reset_offset >= 0, got {reset_interval}, {reset_offset}")
        layout, record_index = window_count_layout(shape, n_samples, reset_interval, record_tokens, record_index)
        if any(not 0 <= t < shape[0] for t in layout.tokens):
            raise ValueError(f"record_tokens {layout.tokens} outside [0, {shape[0]})")
        super().__init__(shape=shape, kind=kind, reset_interval=int(reset_interval),
                         reset_offset=int(reset_offset), count_layout=layout, record_index=record_index,
                         name=name, log_config=log_config)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.v = Var(shape=shape, init=0)
        self.vth = Var(shape=(1,), init=vth)
        self.bias_mant = Var(shape=shape, init=np.broadcast_to(np.asarray(bias_mant), shape).copy())
        self.bias_exp = Var(shape=shape, init=np.broadcast_to(np.asarray(bias_exp), shape).copy())
        self.counts = Var(shape=layout.var_shape, init=0)


class IFNeuronModel(DenseModel):
    """The step shared by the IFNeuron models (window reset, threshold and reset rule, counting);
    a model supplies its input conversion and its integration (see the module docstring)."""

    dense_in_ports = ("a_in",)
    dense_out_ports = ("s_out",)
    counts: np.ndarray = LavaPyType(np.ndarray, np.float64)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.subtract = proc_params["kind"] == "if_subtract"
        self.interval = proc_params["reset_interval"]
        self.offset = proc_params["reset_offset"]
        self.counter = WindowCounter(proc_params["count_layout"], self.interval, self.offset,
                                     proc_params["record_index"])

    def input_current(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def integrate_and_fire(self, a: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Integrate the current ``a`` into ``v``; return the spike mask (``v`` reset by ``fire``)."""
        raise NotImplementedError

    def fire(self, v: np.ndarray, vth) -> np.ndarray:
        """Spike mask of ``v`` against ``vth``; resets the spiking entries of ``v`` in place."""
        if self.subtract:
            s = v >= vth
            v[s] -= vth
        else:
            s = v > vth
            v[s] = 0
        return s

    def run_spk(self) -> None:
        t = self.time_step - 1
        a = self.input_current()
        if t >= self.offset and (t - self.offset) % self.interval == 0:
            self.v[:] = 0  # each sample window starts from rest
        spikes = self.integrate_and_fire(a).astype(self.dtype)
        self.counter.update(t, spikes, self.counts)
        self.s_out.send(spikes)


@implements(proc=IFNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyIFNeuronModelFloat(IFNeuronModel, dtype=np.float32):
    """float32 IF neuron; see the module docstring."""

    dense_arrays = ("v", "vth", "bias_mant", "bias_exp")

    def input_current(self) -> np.ndarray:
        return self.receive(self.a_in)

    def integrate_and_fire(self, a: np.ndarray) -> np.ndarray:
        self.v += a + self.bias_mant
        return self.fire(self.v, self.vth[0])


@implements(proc=IFNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PyIFNeuronModelFixed(IFNeuronModel, dtype=np.float64):
    """Integer IF neuron in Lava-LIF units (``du=4095, dv=0`` LIF with the chosen reset); ports carry
    exact integers as float64 (the fixed_pt TokenLinear/blocks compute in float64)."""

    v: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    vth: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=17)
    bias_mant: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=13)
    bias_exp: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=3)

    def input_current(self) -> np.ndarray:
        return np.asarray(self.a_in.recv()).astype(np.int64)  # integer a_in (exact in float64)

    def integrate_and_fire(self, a: np.ndarray) -> np.ndarray:
        bias = self.bias_mant.astype(np.int64) << self.bias_exp.astype(np.int64)
        u = wrap24(a << 6)  # Lava LIF's 24-bit u wrap (docs/fixed_point.md §2.9)
        v = np.clip(self.v.astype(np.int64) + u + bias, -V_MAX_FIXED, V_MAX_FIXED)
        s = self.fire(v, int(self.vth[0]) << 6)
        self.v[:] = v
        return s
