"""Current blocks: non-spiking maps between synapses and neurons (host math in the simulator).

* ``ResidualLayerNorm``: ``LN(a + r) * gamma + beta`` with ``a`` a synaptic current (TokenLinear
  output, bias included) and ``r`` the residual spikes of a shallower population, delayed in-block
  by ``residual_delay`` steps so both refer to the same reference time step;
* ``GELU``: ``gelu(a)``.

Timing: with ``latency=0`` (default) a block receives, computes and sends within the same step
(no synapse hop, like a dendritic computation); with ``latency=1`` it behaves like a connection
process (sends last step's result first). The builder's depth bookkeeping takes either.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikingbert.lava import kernels


def _check_latency(latency: int) -> int:
    if latency not in (0, 1):
        raise ValueError(f"latency must be 0 or 1, got {latency!r}")
    return int(latency)


class CurrentBlockModel(PyLoihiProcessModel):
    """Base of the current-block models: ``compute(t)`` receives the inputs of 0-based step t and
    returns the output current, sent this step (latency 0) or the next (latency 1)."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.latency = proc_params["latency"]
        kernels.single_threaded_blas()

    def compute(self, t: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_spk(self) -> None:
        if self.latency:
            self.a_out.send(self.a_buff)
        y = self.compute(self.time_step - 1)
        if self.latency:
            self.a_buff = y
        else:
            self.a_out.send(y)


class ResidualLayerNorm(AbstractProcess):
    """a_in (L, W) current + r_in (L, W) residual spikes (delayed by ``residual_delay``) -> LN -> a_out."""

    def __init__(self, *, shape: tuple[int, int], gamma: np.ndarray, beta: np.ndarray, eps: float,
                 residual_delay: int = 0, latency: int = 0, lam: float = 1.0, name: str | None = None,
                 log_config: LogConfig | None = None) -> None:
        shape = tuple(int(s) for s in shape)
        super().__init__(shape=shape, eps=float(eps), residual_delay=int(residual_delay),
                         latency=_check_latency(latency), lam=float(lam), name=name, log_config=log_config)
        self.a_in = InPort(shape=shape)
        self.r_in = InPort(shape=shape)
        self.a_out = OutPort(shape=shape)
        self.gamma = Var(shape=(shape[1],), init=np.asarray(gamma))
        self.beta = Var(shape=(shape[1],), init=np.asarray(beta))
        self.a_buff = Var(shape=shape, init=0)


@implements(proc=ResidualLayerNorm, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyResidualLayerNormModelFloat(CurrentBlockModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float32)
    r_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float32)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float32)
    gamma: np.ndarray = LavaPyType(np.ndarray, np.float32)
    beta: np.ndarray = LavaPyType(np.ndarray, np.float32)
    a_buff: np.ndarray = LavaPyType(np.ndarray, np.float32)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.eps = proc_params["eps"]
        self.residual = kernels.DelayLine(proc_params["shape"], proc_params["residual_delay"])

    def compute(self, t: int) -> np.ndarray:
        a = np.asarray(self.a_in.recv(), dtype=np.float32)
        r = self.residual.push(np.asarray(self.r_in.recv(), dtype=np.float32))
        return kernels.layer_norm(a + r, self.gamma, self.beta, self.eps)


class GELU(AbstractProcess):
    """a_in (L, W) -> gelu(a_in) (exact erf form, as torch's default)."""

    def __init__(self, *, shape: tuple[int, int], latency: int = 0, lam: float = 1.0, name: str | None = None,
                 log_config: LogConfig | None = None) -> None:
        shape = tuple(int(s) for s in shape)
        super().__init__(shape=shape, latency=_check_latency(latency), lam=float(lam), name=name,
                         log_config=log_config)
        self.a_in = InPort(shape=shape)
        self.a_out = OutPort(shape=shape)
        self.a_buff = Var(shape=shape, init=0)


@implements(proc=GELU, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyGELUModelFloat(CurrentBlockModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float32)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float32)
    a_buff: np.ndarray = LavaPyType(np.ndarray, np.float32)

    def compute(self, t: int) -> np.ndarray:
        return kernels.gelu(np.asarray(self.a_in.recv(), dtype=np.float32))


# ------------------------------------------------------------------ fixed_pt (docs/fixed_point.md §2.6-2.8)
@implements(proc=ResidualLayerNorm, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyResidualLayerNormModelFixed(CurrentBlockModel):
    """``Q(LN(z + r))`` in float64; ``z`` the exact block input from the fixed TokenLinear."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)
    r_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float64)
    gamma: np.ndarray = LavaPyType(np.ndarray, np.float64)
    beta: np.ndarray = LavaPyType(np.ndarray, np.float64)
    a_buff: np.ndarray = LavaPyType(np.ndarray, np.float64)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.eps = proc_params["eps"]
        self.lam = proc_params["lam"]
        self.residual = kernels.DelayLine(proc_params["shape"], proc_params["residual_delay"])

    def compute(self, t: int) -> np.ndarray:
        from lava_spikingbert.lava.fixed import layer_norm64, to_grid

        a = np.asarray(self.a_in.recv(), dtype=np.float64)
        r = np.asarray(self.residual.push(np.asarray(self.r_in.recv(), dtype=np.float64)), dtype=np.float64)
        return to_grid(layer_norm64(a + r, self.gamma, self.beta, self.eps), self.lam)


@implements(proc=GELU, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyGELUModelFixed(CurrentBlockModel):
    """``Q(GELU(z))`` in float64."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float64)
    a_buff: np.ndarray = LavaPyType(np.ndarray, np.float64)

    def compute(self, t: int) -> np.ndarray:
        from lava_spikingbert.lava.fixed import gelu64, to_grid

        return to_grid(gelu64(np.asarray(self.a_in.recv(), dtype=np.float64)), self.proc_params["lam"])
