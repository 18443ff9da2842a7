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
from lava.magma.core.process.process import LogConfig
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spikingbert.lava.counts import WindowCounter
from lava_spikingbert.lava.procs._bases import WindowCountingProcess, window_count_layout


class SpikeCounter(WindowCountingProcess):
    """Counts s_in (L, W) spikes per window ``offset + k*interval + [0, interval)`` (0-based steps)."""

    def __init__(self, *, shape: tuple[int, int], interval: int, offset: int = 0, n_samples: int = 1,
                 record_tokens: ty.Sequence[int] = (), record_index: np.ndarray | None = None,
                 name: str | None = None, log_config: LogConfig | None = None) -> None:
        shape = tuple(int(s) for s in shape)
        layout, record_index = window_count_layout(shape, n_samples, interval, record_tokens, record_index)
        super().__init__(interval=int(interval), offset=int(offset), count_layout=layout,
                         record_index=record_index, name=name, log_config=log_config)
        self.s_in = InPort(shape=shape)
        self.counts = Var(shape=layout.var_shape, init=0)


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
