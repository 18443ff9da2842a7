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
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikingbert.lava import kernels
from lava_spikingbert.lava.fixed import gelu64, layer_norm64, to_grid
from lava_spikingbert.lava.procs._bases import CurrentBlockModel


def _check_latency(latency: int) -> int:
    if latency not in (0, 1):
        raise ValueError(f"latency must be 0 or 1, got {latency!r}")
    return int(latency)


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


class ResidualLayerNormModel(CurrentBlockModel):
    """Shared part of the ResidualLayerNorm models: the block input ``a + r``, with the residual
    spikes ``r`` delayed by ``residual_delay`` steps."""

    dense_in_ports = ("a_in", "r_in")
    dense_out_ports = ("a_out",)
    dense_arrays = ("gamma", "beta", "a_buff")

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.eps = proc_params["eps"]
        self.residual = kernels.DelayLine(proc_params["shape"], proc_params["residual_delay"])

    def block_input(self) -> np.ndarray:
        a = self.receive(self.a_in)
        # DelayLine buffers float32 (exact for spikes): back to the model's type (a no-op in float32)
        r = np.asarray(self.residual.push(self.receive(self.r_in)), dtype=self.dtype)
        return a + r


@implements(proc=ResidualLayerNorm, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyResidualLayerNormModelFloat(ResidualLayerNormModel, dtype=np.float32):
    def compute(self, t: int) -> np.ndarray:
        return kernels.layer_norm(self.block_input(), self.gamma, self.beta, self.eps)


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


class GELUModel(CurrentBlockModel):
    """Ports of the GELU models."""

    dense_in_ports = ("a_in",)
    dense_out_ports = ("a_out",)
    dense_arrays = ("a_buff",)


@implements(proc=GELU, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyGELUModelFloat(GELUModel, dtype=np.float32):
    def compute(self, t: int) -> np.ndarray:
        return kernels.gelu(self.receive(self.a_in))


# ------------------------------------------------------------------ fixed_pt (docs/fixed_point.md §2.6-2.8)
@implements(proc=ResidualLayerNorm, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyResidualLayerNormModelFixed(ResidualLayerNormModel, dtype=np.float64):
    """``Q(LN(z + r))`` in float64; ``z`` the exact block input from the fixed TokenLinear."""

    def compute(self, t: int) -> np.ndarray:
        return to_grid(layer_norm64(self.block_input(), self.gamma, self.beta, self.eps), self.lam)


@implements(proc=GELU, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyGELUModelFixed(GELUModel, dtype=np.float64):
    """``Q(GELU(z))`` in float64."""

    def compute(self, t: int) -> np.ndarray:
        return to_grid(gelu64(self.receive(self.a_in)), self.lam)
