"""``TokenLinear``: the same synapses ``W`` (out, in) applied at every token position.

Input spikes (L, in) at step t -> current ``x W^T + b`` (L, out) delivered at step t+1, like
Lava's ``Dense`` (every connection process adds one time step: ``send(a_buff)`` first, then
``a_buff = f(recv())``), so a TokenLinear can replace a Dense in the delay bookkeeping.

The bias is applied here (float model) so that the downstream neuron sees ``x W^T + b`` exactly
as ``torch.nn.functional.linear`` computes it.

TODO(loihi): a hardware realisation as a SubProcessModel of stock processes: 1x1 ``Conv`` over the
token axis (Loihi-native weight sharing) or a block-diagonal ``Sparse``, with the bias moved into
the downstream neuron's ``bias_mant``; plus a fixed_pt numpy model (integer weights on the Dense
grid, computed in float64 for BLAS speed, exact below 2**53). Selected with
``exception_proc_model_map`` per backend.
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
from lava_spikingbert.lava.procs._bases import CurrentOutputModel


class TokenLinear(AbstractProcess):
    """Token-wise linear synapses: s_in (L, in) -> a_out (L, out), one step of latency."""

    def __init__(self, *, weight: np.ndarray, bias: np.ndarray | None = None, n_tokens: int,
                 weight_exp: int = 0, lam: float = 1.0, target: str = "neuron",
                 name: str | None = None, log_config: LogConfig | None = None) -> None:
        # weight_exp / lam / target are used by the fixed_pt model only (docs/fixed_point.md §2.3-2.4)
        if target not in ("neuron", "block"):
            raise ValueError(f"TokenLinear target must be 'neuron' or 'block', got {target!r}")
        weight = np.asarray(weight)
        if weight.ndim != 2:
            raise ValueError(f"TokenLinear weight must be (out, in), got {weight.shape}")
        n_out, n_in = weight.shape
        if bias is not None and np.shape(bias) != (n_out,):
            raise ValueError(f"TokenLinear bias shape {np.shape(bias)} != ({n_out},)")
        super().__init__(n_tokens=int(n_tokens), weight_exp=int(weight_exp), lam=float(lam), target=target,
                         name=name, log_config=log_config)
        self.s_in = InPort(shape=(int(n_tokens), n_in))
        self.a_out = OutPort(shape=(int(n_tokens), n_out))
        self.weight = Var(shape=(n_out, n_in), init=weight)
        self.bias = Var(shape=(n_out,), init=0 if bias is None else np.asarray(bias))
        self.a_buff = Var(shape=(int(n_tokens), n_out), init=0)


class TokenLinearModel(CurrentOutputModel):
    """Ports of the TokenLinear models; one step of latency (``CurrentOutputModel.latency``)."""

    dense_in_ports = ("s_in",)
    dense_out_ports = ("a_out",)
    dense_arrays = ("weight", "bias", "a_buff")


@implements(proc=TokenLinear, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTokenLinearModelFloat(TokenLinearModel, dtype=np.float32):
    """float32: one (L, in) @ (in, out) matmul per step."""

    def compute(self, t: int) -> np.ndarray:
        return kernels.linear(self.receive(self.s_in), self.weight, self.bias)


@implements(proc=TokenLinear, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTokenLinearModelFixed(TokenLinearModel, dtype=np.float64):
    """Integer mantissa weights, exact accumulator ``acc = s @ W_mant^T`` in float64 (BLAS, exact
    below 2**53). Into a neuron: ``a = acc << weight_exp`` (floor for a negative exponent, Lava
    ``Dense``), bias on the neuron; into a host block: ``z = acc * 2**weight_exp * lam + b``."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.exp = proc_params["weight_exp"]
        self.to_block = proc_params["target"] == "block"
        self.scale = 2.0 ** self.exp * proc_params["lam"]

    def compute(self, t: int) -> np.ndarray:
        acc = self.receive(self.s_in) @ self.weight.T
        if self.to_block:
            return acc * self.scale + self.bias
        if self.exp >= 0:
            return acc * float(2 ** self.exp)
        return np.floor(acc / float(2 ** -self.exp))
