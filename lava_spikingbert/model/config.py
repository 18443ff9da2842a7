"""The one configuration object of a spiking BERT student, saved as ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lava_spikingbert.contract.atomic import atomic_write_text
from lava_spikingbert.contract.constants import NEURON_KINDS, WEIGHT_MODES
from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.limits import MAX_CONFIG_BYTES, config_limit_errors

GRAD_POINTS = ("snn", "ann")
PROBLEM_TYPES = ("classification", "regression")
CONFIG_FORMAT_VERSION = 1  # config.json's "format_version" (files without it are read as version 1)
# what a training step's forward values are (``training.distill.StageSettings.forward``):
# "spiking" = the ASRs of a ``t_conv``-step simulation with gradients from the steady-state
# equations (SpikingBERT; the default); "rate_ann" = the steady-state map itself chained from the
# embeddings, no spikes (an ablation: the rate ANN the student's equations describe, trained with
# exact gradients; it measures how much of the accuracy limit is the architecture itself). Dev
# evaluations during training, which pick the best stage-3 checkpoint, simulate the spiking network
# in both cases: the product is the spiking student.
TRAIN_FORWARDS = ("spiking", "rate_ann")
# the pipeline's choices: a forward for all three stages, or "rate_ann_warmup": the two
# representation stages (general and internal-layer KD) train the rate ANN, and the prediction
# stage trains the spiking network at its equilibrium (SpikingBERT), starting from that ANN
PIPELINE_FORWARDS = TRAIN_FORWARDS + ("rate_ann_warmup",)


def stage_forward(pipeline_forward: str, stage: str) -> str:
    """The training forward of one distillation stage under a pipeline forward choice."""
    if pipeline_forward not in PIPELINE_FORWARDS:
        raise ValueError(f"train_forward must be one of {PIPELINE_FORWARDS}, got {pipeline_forward!r}")
    if pipeline_forward == "rate_ann_warmup":
        return "spiking" if stage == "prediction" else "rate_ann"
    return pipeline_forward


class ConfigError(SpikingBertError):
    """A configuration value is invalid; the message names the field."""


@dataclass
class SpikingBertConfig:
    """Architecture and dynamics of the spiking encoder.

    Defaults are the project's default student (4 spiking encoder layers, 384 wide, 12 heads,
    FFN 1536), sized for the offline MiniLM-L6 teacher; the paper's student is 768/3072/12/4.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    max_length: int = 128  # longest accepted input (tokens, incl. [CLS]/[SEP])
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    # spiking dynamics
    t_conv: int = 16  # simulation steps per sentence
    vth: float = 1.0  # firing threshold (same for every population, as in the paper)
    neuron: str = "if_subtract"  # see lava_spikingbert.model.neurons.NEURONS
    # optional last-layer -> embedding-population feedback (a true fixed point; off in the paper)
    feedback: bool = False
    # where the steady-state map is linearised for gradients: "snn" = each population's map is
    # evaluated on the simulated input ASRs (the Jacobian at the spiking equilibrium); "ann" = the
    # reference code's choice, the clamped-ANN chain recomputed from the embeddings
    grad_point: str = "snn"
    # heads
    num_labels: int = 2
    problem_type: str = "classification"
    fit_size: int | None = None  # teacher width for the W_Td distillation projection (None = none)
    # quantization of the synaptic weights (lava_spikingbert.model.quantizers; latent fp32 + straight-through)
    weights: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance (task, teacher, ...)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size", "max_length",
                    "t_conv", "num_labels")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {value!r}")
        for problem in config_limit_errors(self.to_dict()):  # before a model of that size is allocated
            raise ConfigError(f"config field {problem}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config field 'hidden_size' ({self.hidden_size}) must be divisible by "
                f"'num_attention_heads' ({self.num_attention_heads})")
        if self.max_length > self.max_position_embeddings:
            raise ConfigError(
                f"config field 'max_length' ({self.max_length}) exceeds 'max_position_embeddings' "
                f"({self.max_position_embeddings})")
        if not self.vth > 0:
            raise ConfigError(f"config field 'vth' must be > 0, got {self.vth!r}")
        for name, allowed in (("neuron", NEURON_KINDS), ("weights", WEIGHT_MODES),
                              ("grad_point", GRAD_POINTS), ("problem_type", PROBLEM_TYPES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"config field '{name}' must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"config field '{name}' must be in [0, 1), got {getattr(self, name)!r}")
        if self.problem_type == "regression" and self.num_labels != 1:
            raise ConfigError("config field 'num_labels' must be 1 for problem_type 'regression'")
        if self.fit_size is not None and (not isinstance(self.fit_size, int) or self.fit_size <= 0):
            raise ConfigError(f"config field 'fit_size' must be a positive integer or null, got {self.fit_size!r}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "SpikingBertConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"model_type", "format_version"})
        if unknown:
            raise ConfigError(f"{source}: unknown config field(s) {unknown}")
        version = data.get("format_version", CONFIG_FORMAT_VERSION)
        if version != CONFIG_FORMAT_VERSION or isinstance(version, bool):
            raise ConfigError(f"{source}: format_version {version!r}; this version reads {CONFIG_FORMAT_VERSION}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:  # e.g. a field holding a list where a number belongs
            raise ConfigError(f"{source}: {exc}") from None

    def to_json_string(self) -> str:
        payload = {"model_type": "spikingbert", "format_version": CONFIG_FORMAT_VERSION, **self.to_dict()}
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json_string())

    @classmethod
    def load(cls, path: str | Path) -> "SpikingBertConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise ConfigError(f"{path}: {path.stat().st_size} bytes, not a config (limit {MAX_CONFIG_BYTES})")
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no config.json (is this a spikingbert checkpoint directory?)") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("model_type", "spikingbert") != "spikingbert":
            raise ConfigError(f"{path}: model_type is not 'spikingbert'")
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes: Any) -> "SpikingBertConfig":
        return dataclasses.replace(self, **changes)
