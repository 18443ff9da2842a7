"""lava-spikingbert: SpikingBERT in PyTorch, quantized and mapped onto Intel Lava / Loihi 2."""

from lava_spikingbert.config import ConfigError, SpikingBertConfig
from lava_spikingbert.encoder import Activity, SpikingBert, SpikingBertOutput, population_names

__all__ = ["Activity", "ConfigError", "SpikingBert", "SpikingBertConfig", "SpikingBertOutput", "population_names"]
__version__ = "0.1.0"
