"""``IFNeuron``: the spiking BERT population (tokens x width) with in-graph reset and spike counts.

Dynamics per time step ``t`` (0-based: ``t = time_step - 1``), with the input current ``a`` that
arrived this step::

    if t >= reset_offset and (t - reset_offset) % reset_interval == 0:  v = 0     # new sample window
    v += a + bias
    if_subtract   (the paper's neuron, lava_spikingbert.model.neurons.IFSubtract):
        s = v >= vth;  v -= vth where s
    lif_reset_zero (Lava's LIF with du=1, dv=0; neurons.LIFResetZero):
        s = v >  vth;  v  = 0   where s
    if_signed_pair (neurons.IFSignedPair): an "on" and an "off" if_subtract neuron per unit,
        the off one integrating ``-(a + bias)`` in ``v_off``; the unit sends ``s_on - s_off``
        (-1, 0 or 1; on Loihi 2 two neurons whose synapses carry +W and -W)

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

from lava_spikingbert.contract.constants import NEURON_KINDS, SIGNED_NEURONS, SUBTRACTIVE_NEURONS
from lava_spikingbert.lava.counts import WindowCounter
from lava_spikingbert.lava.fixed import wrap24
from lava_spikingbert.lava.procs._bases import (
    DenseModel,
    WindowCountingProcess,
    window_count_layout,
)

V_MAX_FIXED = 2 ** 23 - 1


class IFNeuron(WindowCountingProcess):
    """Integrate-and-fire population of shape (tokens, width) with per-sample reset and counts.

    Parameters
    ----------
    shape: (L, W) tokens x neurons per token.
    vth: threshold (float; for fixed_pt an integer in weight units, compared as ``vth << 6``).
    bias_mant, bias_exp: per-neuron bias; float: ``bias_mant`` (``bias_exp`` ignored, as Lava LIF);
        fixed: ``bias_mant << bias_exp`` in membrane units.
    kind: "if_subtract", "lif_reset_zero" or "if_signed_pair".
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
        if kind not in NEURON_KINDS:
            raise ValueError(f"IFNeuron kind must be one of {NEURON_KINDS}, got {kind!r}")
        if int(reset_interval) <= 0 or int(reset_offset) < 0:
            raise ValueError(f"reset_interval must be > 0 and reset_offset >= 0, got {reset_interval}, {reset_offset}")
        layout, record_index = window_count_layout(shape, n_samples, reset_interval, record_tokens, record_index,
                                                   signed=kind in SIGNED_NEURONS)
        if any(not 0 <= t < shape[0] for t in layout.tokens):
            raise ValueError(f"record_tokens {layout.tokens} outside [0, {shape[0]})")
        super().__init__(shape=shape, kind=kind, reset_interval=int(reset_interval),
                         reset_offset=int(reset_offset), count_layout=layout, record_index=record_index,
                         name=name, log_config=log_config)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.v = Var(shape=shape, init=0)
        self.v_off = Var(shape=shape, init=0)  # the off neurons of if_signed_pair (unused otherwise)
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
        self.signed = proc_params["kind"] in SIGNED_NEURONS
        self.subtract = proc_params["kind"] in SUBTRACTIVE_NEURONS
        self.interval = proc_params["reset_interval"]
        self.offset = proc_params["reset_offset"]
        self.counter = WindowCounter(proc_params["count_layout"], self.interval, self.offset,
                                     proc_params["record_index"])

    def input_current(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def integrate(self, v: np.ndarray, a: np.ndarray, sign: int) -> np.ndarray:  # pragma: no cover - abstract
        """``v`` after integrating the current ``sign * (a + bias)`` (not yet reset)."""
        raise NotImplementedError

    def threshold(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def integrate_and_fire(self, a: np.ndarray) -> np.ndarray:
        """Integrate ``a`` and fire: the spikes (0/1, or -1/0/1 for signed pairs), membranes reset."""
        vth = self.threshold()
        v = self.integrate(self.v, a, 1)
        s = self.fire(v, vth).astype(self.dtype)
        self.v[:] = v
        if self.signed:
            v_off = self.integrate(self.v_off, a, -1)
            s -= self.fire(v_off, vth)
            self.v_off[:] = v_off
        return s

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
            self.v_off[:] = 0
        spikes = self.integrate_and_fire(a)
        self.counter.update(t, spikes, self.counts)
        self.s_out.send(spikes)


@implements(proc=IFNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyIFNeuronModelFloat(IFNeuronModel, dtype=np.float32):
    """float32 IF neuron; see the module docstring."""

    dense_arrays = ("v", "v_off", "vth", "bias_mant", "bias_exp")

    def input_current(self) -> np.ndarray:
        return self.receive(self.a_in)

    def threshold(self):
        return self.vth[0]

    def integrate(self, v: np.ndarray, a: np.ndarray, sign: int) -> np.ndarray:
        # ``v + I`` / ``v - I`` as the torch neurons round them (the builder's bias here is 0)
        return v + (a + self.bias_mant) if sign > 0 else v - (a + self.bias_mant)


@implements(proc=IFNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PyIFNeuronModelFixed(IFNeuronModel, dtype=np.float64):
    """Integer IF neuron in Lava-LIF units (``du=4095, dv=0`` LIF with the chosen reset); ports carry
    exact integers as float64 (the fixed_pt TokenLinear/blocks compute in float64)."""

    v: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    v_off: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    vth: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=17)
    bias_mant: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=13)
    bias_exp: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=3)

    def input_current(self) -> np.ndarray:
        return np.asarray(self.a_in.recv()).astype(np.int64)  # integer a_in (exact in float64)

    def threshold(self):
        return int(self.vth[0]) << 6

    def integrate(self, v: np.ndarray, a: np.ndarray, sign: int) -> np.ndarray:
        # an off neuron is a LIF whose synapses and bias are negated: it receives -a, -bias
        bias = sign * (self.bias_mant.astype(np.int64) << self.bias_exp.astype(np.int64))
        u = wrap24((sign * a) << 6)  # Lava LIF's 24-bit u wrap (docs/fixed_point.md §2.9)
        return np.clip(v.astype(np.int64) + u + bias, -V_MAX_FIXED, V_MAX_FIXED)
