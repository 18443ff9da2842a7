"""Base classes shared by the Processes and ProcessModels of this package.

Nothing here is a ProcessModel of its own: the bases carry no ``@implements``/``@requires``/``@tag``,
so Lava's model search (which executes every module of this folder, see ``__init__``) never selects
one, and the concrete models' decorators stay the only place that binds a model to a Process.
This module only defines; it must run nothing at import.
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.process import AbstractProcess

from lava_spikingbert.lava import kernels
from lava_spikingbert.lava.counts import CountLayout, check_record_index


# ------------------------------------------------------------------ Processes
def window_count_layout(shape: tuple[int, int], n_samples: int, interval: int, record_tokens: ty.Sequence[int],
                        record_index: np.ndarray | None, signed: bool = False) -> tuple[CountLayout, np.ndarray | None]:
    """Count layout of a (tokens, width) population counted per window of ``interval`` steps, and
    the validated per-window index. With an index (packed sentences) the layout's tokens are its
    slots ``0..R-1`` and ``record_tokens`` is ignored. ``signed``: counts of on/off units (>= -interval)."""
    if record_index is not None:
        record_index = check_record_index(record_index, int(n_samples), shape[0])
        record_tokens = range(record_index.shape[1])
    layout = CountLayout(n_samples=int(n_samples), tokens=tuple(int(t) for t in record_tokens),
                         width=shape[1], max_count=int(interval), min_count=-int(interval) if signed else 0)
    return layout, record_index


class WindowCountingProcess(AbstractProcess):
    """Base of the Processes that store per-window spike counts in a packed ``counts`` Var; their
    ``__init__`` passes the ``count_layout`` (see ``window_count_layout``) as a Process parameter."""

    @property
    def count_layout(self) -> CountLayout:
        return self.proc_params["count_layout"]


# ------------------------------------------------------------------ ProcessModels
class DenseModel(PyLoihiProcessModel):
    """Base of the models whose dense ports and array Vars share one numeric type: float32 in the
    floating_pt models, float64 (exact integers) in the fixed_pt ones.

    A subclass names its ports and arrays in ``dense_in_ports``, ``dense_out_ports`` and
    ``dense_arrays``; a concrete model picks the type with a class keyword,
    ``class PyXModelFloat(XModel, dtype=np.float32)``, which declares the ``LavaPyType`` of each
    name. A floating_pt / fixed_pt pair then differs only in that keyword and in its arithmetic.
    Vars of another type (integer neuron state, packed counts) are declared as usual.
    """

    dtype: ty.ClassVar[type | None] = None
    dense_in_ports: ty.ClassVar[tuple[str, ...]] = ()
    dense_out_ports: ty.ClassVar[tuple[str, ...]] = ()
    dense_arrays: ty.ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, dtype: type | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if dtype is None:  # an intermediate base: its concrete models choose the type
            return
        cls.dtype = dtype
        for name in cls.dense_in_ports:
            setattr(cls, name, LavaPyType(PyInPort.VEC_DENSE, dtype))
        for name in cls.dense_out_ports:
            setattr(cls, name, LavaPyType(PyOutPort.VEC_DENSE, dtype))
        for name in cls.dense_arrays:
            setattr(cls, name, LavaPyType(np.ndarray, dtype))

    def receive(self, port: PyInPort) -> np.ndarray:
        """This step's data on ``port`` as the model's type."""
        return np.asarray(port.recv(), dtype=self.dtype)


class CurrentOutputModel(DenseModel):
    """Base of the models that turn this step's inputs into one current on ``a_out``:
    ``compute(t)`` receives the inputs of 0-based step t and returns the current, sent this step
    (``latency`` 0) or, through the ``a_buff`` Var, the next (``latency`` 1: a connection process
    such as Lava's ``Dense``, which sends last step's result first)."""

    latency: int = 1

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        kernels.single_threaded_blas()

    def compute(self, t: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_spk(self) -> None:
        if self.latency:
            self.a_out.send(self.a_buff)
        current = self.compute(self.time_step - 1)
        if self.latency:
            self.a_buff = current
        else:
            self.a_out.send(current)


class CurrentBlockModel(CurrentOutputModel):
    """Base of the current-block models (``current_blocks``, ``spiking_attention``), whose
    Process chooses the latency (0 or 1) and the current unit ``lam`` of the fixed_pt output grid
    (``fixed.to_grid``; the float models ignore it)."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.latency = proc_params["latency"]
        self.lam = proc_params["lam"]
