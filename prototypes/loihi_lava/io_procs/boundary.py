"""Boundary Processes and their CPU ProcessModels (floating_pt and fixed_pt).

Everything between these processes is a stock ``lava.proc`` process. Processes and models
share this one module (as ``lava.proc.io.reset`` does): Lava's compiler loads sibling modules
by file path, where relative imports fail.

Data moves through ``.npy`` files, not through ``Var.get``/``Var.set``: Lava 0.10 moves a Var
one element per message (~45 us each), while a memory-mapped file costs nothing per step.

Time convention (shared with ``timing.py``): steps are numbered from 1; window ``i`` of a
stream with period ``P`` starts at step ``i * P + 1 + offset``.
"""
import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort, PyRefPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort, RefPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class CurrentSource(AbstractProcess):
    """Sends row ``i`` of a ``(windows, n)`` array as a graded current during the first
    ``length`` steps of window ``i`` and zeros otherwise.

    Connect ``s_out`` straight to a LIF ``a_in`` (no synapse process, no delay): the
    fixed-point LIF adds ``value << 6`` to ``u``. The array must be integer for
    ``fixed_pt`` and float for ``floating_pt``.
    """

    def __init__(self, *, path: str, shape: ty.Tuple[int], period: int, length: int,
                 name: ty.Optional[str] = None) -> None:
        super().__init__(path=path, shape=shape, period=period, length=length, name=name)
        self.s_out = OutPort(shape=shape)


class BiasWriter(AbstractProcess):
    """Writes row ``i`` of a ``(rows, n)`` array into a Var (a LIF ``bias_mant``) at the
    end of the step before window ``i`` starts: a per-sentence bias instead of a current.

    Row 0 must already be the Var's initial value; a last row after the final window
    restores the plain bias. Connect with ``connect_var``.
    """

    def __init__(self, *, path: str, shape: ty.Tuple[int], period: int,
                 name: ty.Optional[str] = None) -> None:
        super().__init__(path=path, shape=shape, period=period, name=name)
        self.target = RefPort(shape=shape)

    def connect_var(self, var: Var) -> None:
        """Connect the RefPort to ``var`` (e.g. ``lif.bias_mant``)."""
        self.target.connect_var(var)


class WindowCounter(AbstractProcess):
    """Counts spikes per neuron and window into a ``(windows, n)`` int32 ``.npy`` file.

    Window ``i`` covers steps ``i * period + offset + 1 .. i * period + offset + length``.
    With ``period=length=1, offset=0`` it records the full raster (row = step - 1).
    The file must exist (zeros) before the run; read it after ``run`` returns.
    """

    def __init__(self, *, path: str, shape: ty.Tuple[int], period: int, length: int,
                 offset: int, windows: int, name: ty.Optional[str] = None) -> None:
        super().__init__(path=path, shape=shape, period=period, length=length,
                         offset=offset, windows=windows, name=name)
        self.s_in = InPort(shape=shape)


def allocate_counts(path: str, windows: int, n: int) -> None:
    """Create the zero-filled count file a WindowCounter writes into."""
    np.lib.format.open_memmap(path, mode='w+', dtype=np.int32, shape=(windows, n)).flush()


class _PyFileModel(PyLoihiProcessModel):
    """A boundary model whose data lives in the ``.npy`` file ``path``, windows of ``period`` steps."""
    mmap_mode = 'r'
    dtype = None

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._data = np.load(proc_params['path'], mmap_mode=self.mmap_mode)
        self._period = proc_params['period']
        self._length = proc_params.get('length')


class _PyCurrentSource(_PyFileModel):
    s_out = None

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._zeros = np.zeros(proc_params['shape'], self.dtype)

    def run_spk(self):
        window, phase = divmod(self.time_step - 1, self._period)
        if window < len(self._data) and phase < self._length:
            self.s_out.send(np.asarray(self._data[window], self.dtype))
        else:
            self.s_out.send(self._zeros)


class _PyBiasWriter(_PyFileModel):
    target = None

    def post_guard(self):
        window = self.time_step // self._period
        return self.time_step % self._period == 0 and window < len(self._data)

    def run_post_mgmt(self):
        self.target.write(np.asarray(self._data[self.time_step // self._period], self.dtype))
        self.target.wait()


class _PyWindowCounter(_PyFileModel):
    s_in = None
    mmap_mode = 'r+'  # the counts are written into the file

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._offset = proc_params['offset']

    def run_spk(self):
        spikes = self.s_in.recv()
        window, phase = divmod(self.time_step - 1 - self._offset, self._period)
        if 0 <= window < len(self._data) and phase < self._length:
            self._data[window] += spikes.astype(np.int32)


def _float_and_fixed(proc, base, port: str, port_kind, fixed_precision: int) -> tuple:
    """The floating_pt and fixed_pt CPU models of ``proc``: ``base`` with its ``port`` typed as
    float, or as int32 of ``fixed_precision`` bits (the two differ in nothing else)."""
    models = []
    for tag_name, suffix, dtype, py_type in (
            ('floating_pt', 'Float', np.float64, LavaPyType(port_kind, float)),
            ('fixed_pt', 'Fixed', np.int32, LavaPyType(port_kind, np.int32, precision=fixed_precision))):
        cls = type('Py' + base.__name__.removeprefix('_Py') + suffix, (base,),
                   {port: py_type, 'dtype': dtype, '__module__': __name__,
                    '__annotations__': {port: type(py_type)}})
        models.append(implements(proc=proc, protocol=LoihiProtocol)(requires(CPU)(tag(tag_name)(cls))))
    return tuple(models)


PyCurrentSourceFloat, PyCurrentSourceFixed = _float_and_fixed(
    CurrentSource, _PyCurrentSource, 's_out', PyOutPort.VEC_DENSE, 24)
PyBiasWriterFloat, PyBiasWriterFixed = _float_and_fixed(
    BiasWriter, _PyBiasWriter, 'target', PyRefPort.VEC_DENSE, 13)
PyWindowCounterFloat, PyWindowCounterFixed = _float_and_fixed(
    WindowCounter, _PyWindowCounter, 's_in', PyInPort.VEC_DENSE, 24)
