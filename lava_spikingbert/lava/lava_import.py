"""Import Lava on its own terms, once per process (used by every module that imports Lava lazily).

lava-nc calls ``multiprocessing.set_start_method('fork')`` without ``force`` when its
multiprocessing runtime module is first imported, which raises if the start method is already
fixed: by a spawned worker ("spawn"), or by anything that touched the default context first
(tqdm's lock, a DataLoader, ``get_start_method()``). Clearing it (public API) lets Lava's own
choice apply. Importing any Lava Process imports that module, so the Lava runtime imports Lava
inside the functions that build or run a graph, after :func:`import_lava_runtime`.
"""

from __future__ import annotations

import importlib
import multiprocessing
import sys

LAVA_MP_MODULE = "lava.magma.runtime.message_infrastructure.multiprocessing"


def import_lava_runtime() -> None:
    """Import Lava's multiprocessing runtime if this process has not yet (see the module docstring)."""
    if LAVA_MP_MODULE in sys.modules:
        return
    if multiprocessing.get_start_method(allow_none=True) is not None:
        multiprocessing.set_start_method(None, force=True)
    importlib.import_module(LAVA_MP_MODULE)
