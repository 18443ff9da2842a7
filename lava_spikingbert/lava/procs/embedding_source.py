"""``EmbeddingSource``: streams each sentence's embedding current from an in-graph buffer.

``data`` (n_samples, L, H) holds the constant input current of the ``embed`` population for every
sentence of the run; at 0-based step ``t`` the source sends ``data[(t - offset) // interval]``
(zeros before ``offset`` and after the last sentence). No host writes during the run; the source
is a root (no latency): the population it drives has depth 0.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikingbert.lava.procs._bases import DenseModel


class EmbeddingSource(AbstractProcess):
    """a_out (L, H): sentence k's current during steps ``offset + k*interval + [0, interval)``."""

    def __init__(self, *, data: np.ndarray, interval: int, offset: int = 0, name: str | None = None,
                 log_config: LogConfig | None = None) -> None:
        data = np.asarray(data)
        if data.ndim != 3:
            raise ValueError(f"EmbeddingSource data must be (n_samples, L, H), got {data.shape}")
        if int(interval) <= 0 or int(offset) < 0:
            raise ValueError(f"interval must be > 0 and offset >= 0, got {interval}, {offset}")
        super().__init__(interval=int(interval), offset=int(offset), name=name, log_config=log_config)
        self.a_out = OutPort(shape=data.shape[1:])
        self.data = Var(shape=data.shape, init=data)


@implements(proc=EmbeddingSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyEmbeddingSourceModelFloat(DenseModel, dtype=np.float32):
    dense_out_ports = ("a_out",)
    dense_arrays = ("data",)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.interval = proc_params["interval"]
        self.offset = proc_params["offset"]

    def run_spk(self) -> None:
        t = self.time_step - 1 - self.offset
        k = t // self.interval if t >= 0 else -1
        if 0 <= k < self.data.shape[0]:
            self.a_out.send(self.data[k])
        else:
            self.a_out.send(np.zeros(self.data.shape[1:], dtype=self.dtype))


@implements(proc=EmbeddingSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyEmbeddingSourceModelFixed(PyEmbeddingSourceModelFloat, dtype=np.float64):
    """Streams the integer embed input ``Q(E)`` (float64 integers, computed on the host from the
    model file's tables, ``lava_spikingbert.lava.fixed.embedding_grid``)."""
