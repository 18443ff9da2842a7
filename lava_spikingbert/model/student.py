"""The student of either model profile, loaded from a checkpoint directory by its ``config.json``.

``"paper"`` (or no ``profile`` key): SpikingBERT's ``SpikingBert``; ``"loihi"``: the stock-Lava
``LoihiSpikingMixer``. (A module of its own: the encoder imports ``checkpoint``, so ``checkpoint``
cannot import the models.)
"""

from __future__ import annotations

from pathlib import Path

from lava_spikingbert.model.checkpoint import read_profile
from lava_spikingbert.model.encoder import SpikingBert
from lava_spikingbert.model.loihi import LoihiSpikingMixer

STUDENT_CLASSES = {"paper": SpikingBert, "loihi": LoihiSpikingMixer}
# the forward ``mode`` that runs each profile's rate ANN (the steady-state map chained, no spikes)
RATE_ANN_MODES = {"paper": "steady_state", "loihi": "rate"}


def load_student(path: str | Path, **config_overrides) -> SpikingBert | LoihiSpikingMixer:
    """Load the checkpoint directory ``path`` (eval mode) as the student of its profile;
    ``config_overrides`` change run-time fields such as ``t_conv``."""
    return STUDENT_CLASSES[read_profile(path)].from_pretrained(path, **config_overrides)


def profile_of(model) -> str:
    """The profile of a student model object."""
    for profile, cls in STUDENT_CLASSES.items():
        if isinstance(model, cls):
            return profile
    raise TypeError(f"not a student model: {type(model).__name__}")


def rate_ann_mode(model) -> str:
    """The forward ``mode`` of a student model object's rate ANN."""
    return RATE_ANN_MODES[profile_of(model)]
