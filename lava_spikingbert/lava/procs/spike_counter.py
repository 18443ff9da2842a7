"""``SpikeCounter``: per-sample spike counts of a population that has no counter of its own
(Lava's stock ``LIF``/``LIFReset``). Same window and packing rules as ``IFNeuron.counts``."""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikingbert.lava.counts import CountLayout, WindowCounter, check_record_index


class SpikeCounter(AbstractProcess):
    """Counts s_in (L, W) spikes per window ``offset + k*interval + [0, interval)`` (0-based steps)."""

    def __init__(self, *, shape: tuple[int, int], interval: int, offset: int = 0, n_samples: int = 1,
                 record_tokens: ty.Sequence[int] = (), record_index: np.ndarray | None = None,
                 name: str | None = None, log_config: LogConfig | None = None) -> None:
        shape = tuple(int(s) for s in shape)
        if record_index is not None:
            record_index = check_record_index(record_index, int(n_samples), shape[0])
            record_tokens = range(record_index.shape[1])
        layout = CountLayout(n_samples=int(n_samples), tokens=tuple(int(t) for t in record_tokens),
                             width=shape[1], max_count=int(interval))
        super().__init__(interval=int(interval), offset=int(offset), count_layout=layout,
                         record_index=record_index, name=name, log_config=log_config)
        self.s_in = InPort(shape=shape)
        self.counts = Var(shape=layout.var_shape, init=0)

    @property
    def count_layout(self) -> CountLayout:
        return self.proc_params["count_layout"]


@implements(proc=SpikeCounter, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt", "fixed_pt")
class PySpikeCounterModel(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    counts: np.ndarray = LavaPyType(np.ndarray, np.float64)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.counter = WindowCounter(proc_params["count_layout"], proc_params["interval"], proc_params["offset"],
                                     proc_params["record_index"])

    def run_spk(self) -> None:
        s = np.asarray(self.s_in.recv(), dtype=np.float64)
        self.counter.update(self.time_step - 1, s, self.counts)
