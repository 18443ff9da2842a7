"""HF-style checkpoint directories: ``config.json`` + ``model.safetensors`` (+ files added by callers).

The functions take the model duck-typed (``config``, ``state_dict``, ``load_state_dict``), so the
encoder builds on them (``SpikingBert.save_pretrained`` / ``from_pretrained``) without a cycle.

``config.json`` names the checkpoint's model profile (``read_profile``): ``"profile": "loihi"`` for
the loihi profile's ``LoihiSpikingMixer``; no key (or ``"paper"``) for the paper profile's
``SpikingBert``. ``model.student.load_student`` loads either."""

from __future__ import annotations

from pathlib import Path

import json

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lava_spikingbert.contract.atomic import atomic_directory
from lava_spikingbert.contract.model_file import DEFAULT_PROFILE, PROFILES
from lava_spikingbert.model.config import ConfigError, SpikingBertConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def write_model_files(model, directory: str | Path) -> None:
    """Write config and weights into an existing directory (callers make the directory atomic)."""
    directory = Path(directory)
    model.config.save(directory / CONFIG_NAME)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "model_type": "spikingbert"})


def save_model(model, path: str | Path) -> Path:
    path = Path(path)
    with atomic_directory(path) as tmp:
        write_model_files(model, tmp)
    return path


def read_profile(path: str | Path) -> str:
    """The model profile of a checkpoint directory (``config.json``'s ``profile``; none: "paper")."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a checkpoint directory")
    config_file = path / CONFIG_NAME
    try:
        data = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{config_file}: missing (is this a spikingbert checkpoint directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{config_file}: not a JSON object")
    profile = data.get("profile", DEFAULT_PROFILE)
    if profile not in PROFILES:
        raise ConfigError(f"{config_file}: unknown model profile {profile!r} (known: {', '.join(PROFILES)})")
    return profile


def read_config(path: str | Path, **config_overrides) -> SpikingBertConfig:
    """The checkpoint directory's config, with run-time fields (e.g. ``t_conv``) overridden."""
    path = Path(path)
    profile = read_profile(path)
    if profile != DEFAULT_PROFILE:
        raise ConfigError(f"{path / CONFIG_NAME}: a {profile!r}-profile checkpoint, not a paper-profile "
                          f"SpikingBert (load it with model.student.load_student)")
    config = SpikingBertConfig.load(path / CONFIG_NAME)
    return config.replace(**config_overrides) if config_overrides else config


def load_weights(model, path: str | Path) -> None:
    """Load the directory's weights into ``model`` (built from its config); every tensor must match
    and be finite."""
    weights = Path(path) / WEIGHTS_NAME
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise ConfigError(f"{weights}: missing weights file") from None
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{weights}: unreadable safetensors file ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{weights}: weights do not match config.json "
                          f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise ConfigError(f"{weights}: tensor '{name}' holds non-finite values")
