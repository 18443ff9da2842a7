"""Window schedule of a stream of sentences through a lowered graph.

Sentence ``i`` is driven during steps ``i * period + 1 .. i * period + T``. A population at
depth ``k`` sees that sentence during ``i * period + 1 + k .. i * period + T + k`` and resets
(LIFReset, u = v = 0 before integrating) at the first of these steps: ``reset_offset =
(1 + k) % period``. Every edge is delay-aligned (``spec.edge_delays``), so a population's
window only ever receives its parents' same-sentence windows: ``period = T`` is enough
(windows are pipelined through the depth) and the stream needs ``windows * period + depth``
steps. The readout counts the output population during its T-step window.
"""
from dataclasses import dataclass
import typing as ty

from .lowering import LoweredGraph


@dataclass
class Schedule:
    steps_per_window: int
    period: int
    depth: ty.Dict[str, int]
    output: str

    @classmethod
    def for_graph(cls, graph: LoweredGraph, T: int, period: ty.Optional[int] = None):
        period = T if period is None else period
        if period < T:
            raise ValueError('period must be >= T')
        return cls(T, period, {n.name: n.depth for n in graph.neurons}, graph.spec.output)

    def reset_offset(self, name: str) -> int:
        return (1 + self.depth[name]) % self.period

    def offsets(self) -> ty.Dict[str, int]:
        return {name: self.reset_offset(name) for name in self.depth}

    @property
    def readout_offset(self) -> int:
        return self.depth[self.output]

    def total_steps(self, windows: int) -> int:
        return windows * self.period + self.readout_offset
