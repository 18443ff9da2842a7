"""The two host processes at the boundary of the loihi-profile graph (everything between them is a
stock ``lava.proc`` process): ``HostCurrent`` (the per-token input current into the input
population's ``a_in``) and ``HostWindowCounter`` (per-window spike counts of a population, for the
host readout and for parity checks).

Data moves through ``.npy`` files memory-mapped by the models, not through ``Var.get``/``Var.set``
(Lava 0.10 moves a Var one element per message). Steps are numbered from 1 (Lava's ``time_step``);
window ``i`` of a stream with period ``P`` covers steps ``i*P + offset + 1 .. i*P + offset + length``.
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class HostCurrent(AbstractProcess):
    """Sends row ``i`` of a ``(windows, n)`` ``.npy`` array during the ``length`` steps of window
    ``i`` (zeros after the last window). Connect ``s_out`` straight to a LIF ``a_in``: the current
    arrives in the step it is sent (no synapse delay). Integer rows for fixed_pt, float for floating_pt."""

    def __init__(self, *, path: str, shape: tuple[int], period: int, length: int, name: str | None = None) -> None:
        super().__init__(path=path, shape=shape, period=period, length=length, name=name)
        self.s_out = OutPort(shape=shape)


class HostWindowCounter(AbstractProcess):
    """Adds the spikes of window ``i`` (steps ``i*period + offset + 1 ..`` ``+ length``) into row ``i``
    of a ``(windows, n)`` int32 ``.npy`` file that exists (zeros) before the run."""

    def __init__(self, *, path: str, shape: tuple[int], period: int, length: int, offset: int, windows: int,
                 name: str | None = None) -> None:
        super().__init__(path=path, shape=shape, period=period, length=length, offset=offset, windows=windows,
                         name=name)
        self.s_in = InPort(shape=shape)


def allocate_counts(path: str, windows: int, n: int) -> None:
    """Create the zero-filled count file a ``HostWindowCounter`` writes into."""
    np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(windows, n)).flush()


class _FileModel(PyLoihiProcessModel):
    mmap_mode = "r"
    dtype: ty.Any = None

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._data = np.load(proc_params["path"], mmap_mode=self.mmap_mode)
        self._period = int(proc_params["period"])
        self._length = int(proc_params["length"])


class _HostCurrentModel(_FileModel):
    s_out = None

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._zeros = np.zeros(proc_params["shape"], self.dtype)

    def run_spk(self) -> None:
        window, phase = divmod(self.time_step - 1, self._period)
        if window < len(self._data) and phase < self._length:
            self.s_out.send(np.asarray(self._data[window], self.dtype))
        else:
            self.s_out.send(self._zeros)


class _HostWindowCounterModel(_FileModel):
    s_in = None
    mmap_mode = "r+"  # the counts are written into the file

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._offset = int(proc_params["offset"])

    def run_spk(self) -> None:
        spikes = self.s_in.recv()
        window, phase = divmod(self.time_step - 1 - self._offset, self._period)
        if 0 <= window < len(self._data) and phase < self._length:
            self._data[window] += np.asarray(spikes).astype(np.int32)


@implements(proc=HostCurrent, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyHostCurrentModelFloat(_HostCurrentModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    dtype = np.float64


@implements(proc=HostCurrent, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyHostCurrentModelFixed(_HostCurrentModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=16)
    dtype = np.int32


@implements(proc=HostWindowCounter, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyHostWindowCounterModelFloat(_HostWindowCounterModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)


@implements(proc=HostWindowCounter, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyHostWindowCounterModelFixed(_HostWindowCounterModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
