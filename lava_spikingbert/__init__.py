"""lava-spikingbert: SpikingBERT in PyTorch, quantized and mapped onto Intel Lava / Loihi 2.

The torch model is imported lazily so that the Lava run path (``lava_spikingbert.lava``, numpy +
lava + h5py only) never loads torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Activity", "ConfigError", "SpikingBert", "SpikingBertConfig", "SpikingBertOutput", "population_names"]

_LAZY = {
    "ConfigError": "lava_spikingbert.config",
    "SpikingBertConfig": "lava_spikingbert.config",
    "Activity": "lava_spikingbert.encoder",
    "SpikingBert": "lava_spikingbert.encoder",
    "SpikingBertOutput": "lava_spikingbert.encoder",
    "population_names": "lava_spikingbert.encoder",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lava_spikingbert' has no attribute {name!r}")
