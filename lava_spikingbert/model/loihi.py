"""The "loihi" profile: a spiking token-mixing network made only of what stock Lava processes compute.

Every population is Lava's stock ``LIF`` used as an integrate-and-fire neuron that resets to zero
(``du=4095, dv=0``: ``v += I``; spike when ``v > vth``; ``v := 0`` after a spike), and every synapse
is a static linear map that a stock ``Dense``/``Sparse``/``Conv`` process computes. There is no
softmax attention, no LayerNorm and no GELU inside the network: the neuron is the nonlinearity,
token mixing is a depthwise convolution over the token axis (ConvMixer-style), and residuals are a
second synapse into the same neuron. Only the two ends run on the host: the input current (word +
position + type embedding, LayerNorm, a linear map to the network width) and the readout (the last
population's spike counts pooled over the valid tokens, by default their mean and their maximum side
by side, then a linear classifier).

Populations, in update order (``d`` = ``hidden_size``, ``f`` = ``intermediate_size``)::

    embed            (d)  <- host current  I_in = P(LN(word + pos + type))   (0 at padded positions)
    layer{i}.mix     (d)  <- DWConv_k(x) + b_mix             depthwise Conv over tokens (groups=d)
    layer{i}.hidden  (f)  <- W_1 s_mix + b_1                 Dense (1x1 Conv)
    layer{i}.out     (d)  <- W_2 s_hidden + b_2 + r * s_mix  Dense + diagonal residual synapse

``x`` is ``embed`` for layer 0 and ``layer{i-1}.out`` after it. The depthwise kernel includes the
token itself, so the token-mixing synapse carries its own residual path.

Margins: with ``mixing="bidirectional"`` (the default) a token reads ``(k-1)/2`` neighbours on
each side per layer, so every valid token's output depends only on the input currents within
``R = num_layers * (k-1)/2`` positions of it (its cone; ``config.margin``). The torch model
simulates, for every batch, ``R`` zero-input positions before the first token and ``R`` zero-input
positions after the longest valid sentence (a shorter sentence's right padding is zero-input too),
and nothing more: positions beyond those do not exist (the convolution's zero padding). Token ``j``
keeps BERT position id ``j``. The row's edges then lie outside every valid token's cone, so a Lava
row that holds several sentences separated by ``>= R`` zero-input positions (and ``>= R`` from the
row's ends) gives spike counts identical to the torch model's at every valid position, however
many sentences share the row. Zero-input positions are not silent (the later populations have
biases): they must be simulated, which is why the margin is part of the model, not of the graph.
With ``mixing="causal"`` a token reads itself and the ``k - 1`` tokens before it: the left margin
is ``R = num_layers * (k - 1)`` and the right margin 0 (see ``margins``).

Normalisation: none inside the network. ``calibrate_`` sets a per-channel gain and offset for every
population's input current from the statistics of a data batch (a BatchNorm with frozen
statistics) and folds them into that population's synaptic weights and biases at once, so the
trained model is plain weights and biases.

Training follows SpikingBERT: the forward values are the ASRs of a ``t_conv``-step spiking
simulation (no autograd graph), and gradients come from the steady-state map ``a = g(F(a_in))``
evaluated at the simulated input ASRs (``equilibrium`` mode). ``g`` is a smooth description of the
reset-to-zero neuron's rate (``LIFResetZero.rate``); ``rate_forward="staircase"`` lets the rate ANN
use the neuron's exact constant-current rate in the forward pass with the smooth map's gradient.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from lava_spikingbert.contract.constants import (LOIHI_POOLING_BEFORE_CHOICE, LOIHI_POOLING_PARTS, LOIHI_POOLINGS,
                                                 MIXER_LAYER_POPULATIONS, WEIGHT_MODES, pooled_width,
                                                 population_names)
from lava_spikingbert.contract.atomic import atomic_write_text
from lava_spikingbert.contract.model_file import loihi_dilation_problem, loihi_layer_dilations, loihi_margin
from lava_spikingbert.model.checkpoint import CONFIG_NAME, load_weights, read_profile, save_model
from lava_spikingbert.model.config import ConfigError
from lava_spikingbert.model.encoder import NO_DROPOUT, SharedDropout
from lava_spikingbert.model.equilibrium import straight_through
from lava_spikingbert.model.neurons import LIFResetZero, time_chunks
from lava_spikingbert.model.quantizers import make_quantizer

MIXINGS = ("bidirectional", "causal")
# the host readout's pooling of the last population over the valid tokens: the mean, the maximum, or both
# side by side (the default; measured in docs/RESULTS.md, "Loihi-native profile")
READOUTS = tuple(LOIHI_POOLINGS)
RATE_FORWARDS = ("smooth", "staircase")
# the weight modes this profile trains (the contract lists every mode a model file can hold)
LOIHI_WEIGHT_MODES = WEIGHT_MODES[:2]
MODES = ("simulate", "equilibrium", "rate")
# the synapse weights that carry spikes (quantized in int8 mode); biases, the host-side input map,
# the classifier and the distillation projections stay full precision
SPIKING_WEIGHTS = ("mix_weight", "fc1.weight", "fc2.weight", "res_weight")
# the host-side embedding parameters (copied from the teacher; trained with a smaller step)
HOST_EMBEDDINGS = ("word_embeddings.", "position_embeddings.", "token_type_embeddings.", "embed_norm.")


class LoihiConfigError(ConfigError):
    """A configuration value is invalid; the message names the field."""


@dataclass
class LoihiConfig:
    """Architecture and dynamics of the loihi-profile student (validated on construction)."""

    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0
    embed_size: int = 384  # host-side embedding width (the teacher's, so its embeddings can be copied)
    layer_norm_eps: float = 1e-12  # host-side embedding LayerNorm only
    hidden_size: int = 256  # d: width of the embed / mix / out populations
    intermediate_size: int = 1024  # f: width of the hidden populations
    num_layers: int = 4
    kernel_size: int = 5  # token-mixing window (odd for bidirectional mixing)
    # per layer, the spacing of the window's taps on the token axis (None: 1 in every layer); a
    # dilation widens a layer's reach without adding synapses
    dilations: list[int] | None = None
    mixing: str = "bidirectional"
    max_length: int = 64  # positions of the fixed-length Lava graph (tokens incl. [CLS]/[SEP])
    t_conv: int = 16
    vth: float = 1.0
    rate_forward: str = "smooth"  # the rate ANN's forward map (gradients always use the smooth map)
    readout: str = "mean_max"  # pooling over tokens before the host classifier (READOUTS)
    dropout: float = 0.1
    num_labels: int = 2
    fit_size: int | None = 384  # teacher width for the hidden-state KD projections (None: none)
    weights: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("vocab_size", "max_position_embeddings", "type_vocab_size", "embed_size", "hidden_size",
                     "intermediate_size", "num_layers", "kernel_size", "max_length", "t_conv", "num_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LoihiConfigError(f"config field '{name}' must be a positive integer, got {value!r}")
        if self.mixing not in MIXINGS:
            raise LoihiConfigError(f"config field 'mixing' must be one of {MIXINGS}, got {self.mixing!r}")
        if self.mixing == "bidirectional" and self.kernel_size % 2 == 0:
            raise LoihiConfigError(f"config field 'kernel_size' must be odd for bidirectional mixing, "
                                   f"got {self.kernel_size}")
        problem = loihi_dilation_problem(self.dilations, self.num_layers)
        if problem:
            raise LoihiConfigError(f"config field 'dilations' {problem}")
        if self.dilations is not None:
            self.dilations = loihi_layer_dilations(self.num_layers, self.dilations)
        if self.readout not in READOUTS:
            raise LoihiConfigError(f"config field 'readout' must be one of {READOUTS}, got {self.readout!r}")
        if self.rate_forward not in RATE_FORWARDS:
            raise LoihiConfigError(f"config field 'rate_forward' must be one of {RATE_FORWARDS}, "
                                   f"got {self.rate_forward!r}")
        if self.weights not in LOIHI_WEIGHT_MODES:
            raise LoihiConfigError(f"config field 'weights' must be one of {LOIHI_WEIGHT_MODES}, got {self.weights!r}")
        if self.max_length > self.max_position_embeddings:
            raise LoihiConfigError(f"config field 'max_length' ({self.max_length}) exceeds "
                                   f"'max_position_embeddings' ({self.max_position_embeddings})")
        if not (isinstance(self.vth, (int, float)) and self.vth > 0):
            raise LoihiConfigError(f"config field 'vth' must be > 0, got {self.vth!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoihiConfigError(f"config field 'dropout' must be in [0, 1), got {self.dropout!r}")
        if self.fit_size is not None and (not isinstance(self.fit_size, int) or self.fit_size <= 0):
            raise LoihiConfigError(f"config field 'fit_size' must be a positive integer or null, "
                                   f"got {self.fit_size!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise LoihiConfigError(f"config field 'pad_token_id' must be a token id, got {self.pad_token_id!r}")

    @property
    def half_window(self) -> int:
        """Tokens a position reads on each side per layer (left only for causal mixing)."""
        return self.kernel_size - 1 if self.mixing == "causal" else (self.kernel_size - 1) // 2

    @property
    def layer_dilations(self) -> list[int]:
        """The token-mixing dilation of every layer."""
        return loihi_layer_dilations(self.num_layers, self.dilations)

    @property
    def margin(self) -> int:
        """R: the reach of a valid token's cone, ``half_window`` times the sum of the layers'
        dilations (``contract.model_file.loihi_margin``); the torch model simulates R zero-input
        positions before the first token (and, bidirectional, after the longest sentence), and a Lava
        row separates sentences by at least R zero-input positions."""
        return loihi_margin(self.num_layers, self.kernel_size, self.mixing, self.dilations)

    @property
    def margins(self) -> tuple[int, int]:
        """(left, right) zero-input positions simulated around the tokens: (R, R), or (R, 0) for causal
        mixing (a token never reads to its right)."""
        return self.margin, (0 if self.mixing == "causal" else self.margin)

    @property
    def neurons_per_token(self) -> int:
        """LIF neurons per token position (embed + every layer's mix, hidden and out)."""
        return self.hidden_size + self.num_layers * (2 * self.hidden_size + self.intermediate_size)

    def population_names(self) -> list[str]:
        return population_names(self.num_layers, MIXER_LAYER_POPULATIONS)

    def tap_names(self) -> list[str]:
        """Populations distilled against the teacher's hidden states (embedding + layer outputs)."""
        return ["embed"] + [f"layer{i}.out" for i in range(self.num_layers)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoihiConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"model_type", "profile"})
        if unknown:
            raise LoihiConfigError(f"unknown config field(s) {unknown}")
        return cls(**{"readout": LOIHI_POOLING_BEFORE_CHOICE, **{k: v for k, v in data.items() if k in known}})

    def save(self, path: str | Path) -> None:
        payload = {"model_type": "spikingbert", "profile": "loihi", **self.to_dict()}
        atomic_write_text(Path(path), json.dumps(payload, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LoihiConfig":
        path = Path(path)
        data = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        if data.get("profile") != "loihi":
            raise LoihiConfigError(f"{path}: not a loihi-profile config")
        return cls.from_dict(data)


@dataclass
class LoihiActivity:
    """Per-population values (``B x L x width``): ASRs of a simulation, or rates of the rate ANN."""

    asr: dict[str, torch.Tensor] = field(default_factory=dict)
    spike_counts: dict[str, torch.Tensor] | None = None  # simulation only
    t_conv: int | None = None
    # simulation with ``counts_at``: every population's spike counts after each of those steps
    counts_at: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)


@dataclass
class LoihiOutput:
    logits: torch.Tensor
    activity: LoihiActivity
    attention_mask: torch.Tensor  # B x L of the simulated positions (1 = valid token), margins included
    hidden: list[torch.Tensor]  # the KD taps (embed, layer0.out, ...) at the token positions (B x n x d)
    projected: list[torch.Tensor] | None = None  # the taps through the per-tap projections to teacher width
    token_mask: torch.Tensor | None = None  # B x n: the valid tokens among the taps' positions (n = longest)


class MixerLayer(nn.Module):
    """The synapses of one layer: token mixing (depthwise Conv), FFN (two Dense), residual (diagonal)."""

    def __init__(self, config: LoihiConfig, dilation: int = 1) -> None:
        super().__init__()
        d, f, k = config.hidden_size, config.intermediate_size, config.kernel_size
        self.mixing = config.mixing
        self.kernel_size = k
        self.dilation = dilation
        self.mix_weight = nn.Parameter(torch.empty(d, 1, k))
        self.mix_bias = nn.Parameter(torch.zeros(d))
        self.fc1 = nn.Linear(d, f)
        self.fc2 = nn.Linear(f, d)
        self.res_weight = nn.Parameter(torch.ones(d))  # s_mix -> out, one weight per channel
        # the token itself gets the largest tap: the mixing synapse starts close to a residual path
        with torch.no_grad():
            self.mix_weight.normal_(0.0, 0.5 / math.sqrt(k))
            centre = k - 1 if self.mixing == "causal" else (k - 1) // 2
            self.mix_weight[:, 0, centre] += 1.0
        self.dropout_p = config.dropout
        self.weight_fn: Callable[[torch.Tensor], torch.Tensor] = lambda w: w

    def mix_current(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise convolution over the token axis of ``x`` (``... x L x d``), zero beyond the ends."""
        lead, (L, d) = x.shape[:-2], x.shape[-2:]
        y = x.reshape(-1, L, d).transpose(1, 2)
        span = (self.kernel_size - 1) * self.dilation  # tap j reads position l + dilation * (j - centre)
        y = F.pad(y, (span, 0) if self.mixing == "causal" else (span // 2, span // 2))
        y = F.conv1d(y, self.weight_fn(self.mix_weight), self.mix_bias, dilation=self.dilation, groups=d)
        return y.transpose(1, 2).reshape(*lead, L, d)

    def hidden_current(self, s_mix: torch.Tensor, dropout: SharedDropout = NO_DROPOUT) -> torch.Tensor:
        return F.linear(dropout("fc1", s_mix, self.dropout_p, 3), self.weight_fn(self.fc1.weight), self.fc1.bias)

    def out_current(self, s_hidden: torch.Tensor, s_mix: torch.Tensor, dropout: SharedDropout = NO_DROPOUT) -> torch.Tensor:
        return (F.linear(dropout("fc2", s_hidden, self.dropout_p, 3), self.weight_fn(self.fc2.weight), self.fc2.bias)
                + self.weight_fn(self.res_weight) * s_mix)

    @torch.no_grad()
    def scale_population_(self, population: str, gain: torch.Tensor, shift: torch.Tensor) -> None:
        """Fold ``I -> gain * I + shift`` (per channel) into the synapses feeding ``population``."""
        if population == "mix":
            self.mix_weight.mul_(gain[:, None, None])
            self.mix_bias.mul_(gain).add_(shift)
        elif population == "hidden":
            self.fc1.weight.mul_(gain[:, None])
            self.fc1.bias.mul_(gain).add_(shift)
        elif population == "out":
            self.fc2.weight.mul_(gain[:, None])
            self.fc2.bias.mul_(gain).add_(shift)
            self.res_weight.mul_(gain)
        else:
            raise ValueError(f"unknown population {population!r}")


class LoihiSpikingMixer(nn.Module):
    """The loihi-profile spiking student: host input current -> LIF populations -> host readout."""

    def __init__(self, config: LoihiConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.neuron = LIFResetZero(config.vth)
        e, d = config.embed_size, config.hidden_size
        # host side: embedding lookup -> LayerNorm -> linear map to the network's input current
        self.word_embeddings = nn.Embedding(config.vocab_size, e, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, e)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, e)
        self.embed_norm = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.input_map = nn.Linear(e, d)
        nn.init.normal_(self.input_map.weight, std=1.0 / math.sqrt(e))
        nn.init.zeros_(self.input_map.bias)
        self.layers = nn.ModuleList(MixerLayer(config, dilation) for dilation in config.layer_dilations)
        for layer in self.layers:
            for lin in (layer.fc1, layer.fc2):
                nn.init.normal_(lin.weight, std=1.0 / math.sqrt(lin.in_features))
                nn.init.zeros_(lin.bias)
        # host side: readout of the last population
        self.classifier = nn.Linear(pooled_width(config.readout, d), config.num_labels)
        self.fit = (nn.ModuleList(nn.Linear(d, config.fit_size) for _ in config.tap_names())
                    if config.fit_size else None)
        self.set_weights(config.weights)

    # ------------------------------------------------------------------ weights
    def set_weights(self, mode: str) -> None:
        """Use fp32 synapse weights, or int8 Loihi weights (straight-through gradient: QAT).

        The int8 grid is ``make_quantizer("int8", vth)`` (``model.quantizers.Int8Quantizer``), applied
        separately to each of the four spiking weight tensors of a layer (``SPIKING_WEIGHTS``:
        ``mix_weight`` (d x 1 x k, all taps and channels together), ``fc1.weight``, ``fc2.weight``,
        ``res_weight`` (the d diagonal weights)). Per tensor ``W``, with ``w = W / vth``:

        * both signs (MIXED): ``e`` = the smallest integer with ``max(w) <= 254 * 2**e`` and
          ``min(w) >= -256 * 2**e``; mantissa ``m = 2 * round(w / 2**(e+1))`` clipped to the even
          integers of [-256, 254] (step ``2**(e+1)``: 7 significant bits and a sign);
        * all ``w >= 0`` (EXCITATORY): ``e`` smallest with ``max(w) <= 255 * 2**e``, ``m = round(w / 2**e)``
          in [0, 255]; all ``w <= 0`` (INHIBITORY): likewise with [-255, 0]; an all-zero tensor: ``m = 0, e = 0``;
        * ``round`` is torch's round half to even, computed in float64; ``Q(W) = m * 2**e * vth``.

        So each tensor is an 8-bit Lava weight mantissa with one power-of-two exponent: with the
        fixed-point threshold ``vth_mant = 2**p`` it is Lava's ``weight`` = ``m`` and
        ``weight_exp = e + p`` (``IntWeights``; ``make_quantizer("int8", vth).integer(W)`` gives ``m``
        and ``e``). Biases, the host-side input map, the classifier and ``fit`` stay full precision.
        """
        if mode not in LOIHI_WEIGHT_MODES:
            raise LoihiConfigError(f"weights must be one of {LOIHI_WEIGHT_MODES}, got {mode!r}")
        self.config.weights = mode
        if mode == "fp32":
            fn = lambda w: w  # noqa: E731
        else:
            fn = make_quantizer(mode, self.config.vth)
        for layer in self.layers:
            layer.weight_fn = fn

    # ------------------------------------------------------------------ host input
    def sim_length(self, attention_mask: torch.Tensor) -> int:
        """Positions simulated for a batch: the left margin, the longest valid sentence, the right
        margin (``config.margins``; see the module docstring)."""
        left, right = self.config.margins
        longest = int(attention_mask.sum(-1).max()) if attention_mask.numel() else 0
        return left + max(1, longest) + right

    def fit_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   token_type_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-pad or crop a right-padded batch to its token positions plus the right margin
        (``sim_length`` minus the left margin, which ``margined_current`` prepends)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be B x L, got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).long()
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        valid = attention_mask.sum(-1)
        if int(valid.max()) > self.config.max_length:
            raise ValueError(f"a sentence has {int(valid.max())} tokens; the model takes at most "
                             f"{self.config.max_length}")
        if not torch.equal(attention_mask.bool(), torch.arange(input_ids.shape[1])[None] < valid[:, None]):
            raise ValueError("attention_mask must mark a prefix of each row (right padding)")
        L = self.sim_length(attention_mask) - self.config.margins[0]
        cur = input_ids.shape[1]
        if L <= cur:
            return input_ids[:, :L], attention_mask[:, :L], token_type_ids[:, :L]
        pad = (0, L - cur)
        return (F.pad(input_ids, pad, value=self.config.pad_token_id), F.pad(attention_mask, pad),
                F.pad(token_type_ids, pad))

    def margined_current(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                         token_type_ids: torch.Tensor | None, dropout: SharedDropout = NO_DROPOUT
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``embed`` current and the valid-token mask over all ``sim_length`` simulated positions
        (left margin, tokens, right margin); token ``j`` sits at position ``left + j`` and keeps its
        BERT position id ``j``."""
        ids, mask, types = self.fit_inputs(input_ids, attention_mask, token_type_ids)
        current = self.input_current(ids, mask, types, dropout)
        left = self.config.margins[0]
        return F.pad(current, (0, 0, left, 0)), F.pad(mask, (left, 0))

    def input_current(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      token_type_ids: torch.Tensor, dropout: SharedDropout = NO_DROPOUT) -> torch.Tensor:
        """Host side: the constant per-token input current of ``embed`` (zero at padded positions)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
             + self.token_type_embeddings(token_type_ids))
        current = self.input_map(dropout("embed", self.embed_norm(x), self.config.dropout, 3))
        return current * attention_mask[..., None].to(current.dtype)

    # ------------------------------------------------------------------ the network's equations
    def propagate(self, current: torch.Tensor, settle: Callable[[str, torch.Tensor], torch.Tensor],
                  dropout: SharedDropout = NO_DROPOUT) -> torch.Tensor:
        """Drive every population in update order; ``settle(name, current)`` returns its output
        (spikes over a time chunk in the simulation, rates in the steady-state map)."""
        x = settle("embed", current)
        for i, layer in enumerate(self.layers):
            s_mix = settle(f"layer{i}.mix", layer.mix_current(x))
            s_hidden = settle(f"layer{i}.hidden", layer.hidden_current(s_mix, dropout))
            x = settle(f"layer{i}.out", layer.out_current(s_hidden, s_mix, dropout))
        return x

    def rate(self, current: torch.Tensor) -> torch.Tensor:
        """The steady-state rate map ``g`` of the reset-to-zero LIF for a constant current."""
        smooth = self.neuron.rate(current)
        if self.config.rate_forward == "staircase":
            return straight_through(self.neuron.rate_exact(current.detach()), smooth)
        return smooth

    @torch.no_grad()
    def simulate(self, current: torch.Tensor, t_conv: int | None = None, *, dropout: SharedDropout = NO_DROPOUT,
                 chunk_steps: int | None = None, counts_at=()) -> LoihiActivity:
        """The spiking network: ``t_conv`` steps of every population driven by ``current``
        (``B x L x d``, constant in time); returns ASRs and spike counts per population.

        Populations are updated in order within a step (each population's T-step window sees its
        parents' windows). The graph is feed-forward, so whole chunks of time steps are computed
        population by population; the membranes carry over between chunks. ``counts_at``: step
        counts (at most ``t_conv``) after which the spike counts are also kept (``counts_at`` of
        the result; see ``neurons.time_chunks``).
        """
        T = int(t_conv if t_conv is not None else self.config.t_conv)
        if T <= 0:
            raise ValueError(f"t_conv must be positive, got {T}")
        if any(not 0 < int(t) <= T for t in counts_at):
            raise ValueError(f"counts_at {sorted(counts_at)} must lie in 1..t_conv={T}")
        B, L, _ = current.shape
        if chunk_steps is None:  # bound the widest per-chunk tensor (results do not depend on it)
            widest = max(self.config.hidden_size, self.config.intermediate_size)
            chunk_steps = max(1, (64 * 2**20) // max(1, 4 * B * L * widest))
        chunk = max(1, min(int(chunk_steps), T))
        membranes: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}

        def settle(name: str, drive: torch.Tensor) -> torch.Tensor:
            v = membranes.get(name)
            if v is None:
                v = self.neuron.initial_state(drive[0])
            out = drive if drive.is_contiguous() and drive.data_ptr() != current.data_ptr() else drive.clone()
            self.neuron.run_steps(v, out, out)  # spikes overwrite the currents in place
            membranes[name] = v
            counts[name] = out.sum(0) if name not in counts else counts[name] + out.sum(0)
            return out

        kept: dict[int, dict[str, torch.Tensor]] = {}
        for t0, n in time_chunks(T, chunk, counts_at):
            self.propagate(current.expand(n, *current.shape).contiguous(), settle, dropout)
            if t0 + n in counts_at:  # ``counts`` entries are replaced, never updated in place
                kept[t0 + n] = dict(counts)
        return LoihiActivity(asr={k: c / T for k, c in counts.items()}, spike_counts=counts, t_conv=T,
                             counts_at=kept)

    def steady_state(self, current: torch.Tensor, *, equilibrium: LoihiActivity | None = None,
                     dropout: SharedDropout = NO_DROPOUT) -> LoihiActivity:
        """The steady-state map ``a = g(F(a_in))`` over all populations (differentiable).

        Without ``equilibrium``: the rate ANN. With a simulation result: every population's value
        is its simulated ASR, its gradient that of ``g(F(a_in))`` with ``a_in`` the simulated input
        ASRs (the Jacobian of the steady-state map at the spiking equilibrium; no BPTT).
        """
        out = LoihiActivity(t_conv=equilibrium.t_conv if equilibrium is not None else None)

        def settle(name: str, drive: torch.Tensor) -> torch.Tensor:
            a = self.rate(drive)
            if equilibrium is not None:
                a = straight_through(equilibrium.asr[name], a)
            out.asr[name] = a
            return a

        self.propagate(current, settle, dropout)
        return out

    # ------------------------------------------------------------------ host readout
    def readout(self, last: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Host side: the last population's ASR pooled over the valid tokens (``config.readout``: mean,
        max or both) -> linear classifier."""
        m = attention_mask[..., None].to(last.dtype)
        masked = last * m  # rates are >= 0: a masked position never wins the max
        pool = {"mean": lambda: masked.sum(-2) / m.sum(-2).clamp_min(1.0), "max": lambda: masked.amax(-2)}
        return self.classifier(torch.cat([pool[part]() for part in LOIHI_POOLING_PARTS[self.config.readout]], -1))

    @torch.no_grad()
    def predict_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       token_type_ids: torch.Tensor | None = None, t_conv: int | None = None,
                       integer_synapses: bool = True) -> torch.Tensor:
        """Logits of the spiking simulation (the interface ``model.inference.predict_batches`` uses).
        ``integer_synapses`` is accepted for that interface; the synapses here multiply 0/1 spikes
        with the (int8-grid) weights directly."""
        T = int(t_conv if t_conv is not None else self.config.t_conv)
        return self.predict_logits_at(input_ids, attention_mask, token_type_ids, (T,))[T]

    @torch.no_grad()
    def predict_logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          token_type_ids: torch.Tensor | None, steps, *,
                          integer_synapses: bool = True) -> dict[int, torch.Tensor]:
        """``{T: predict_logits(..., t_conv=T)}`` for every ``T`` in ``steps``, read from one
        simulation of ``max(steps)`` steps (``neurons.time_chunks`` says why that is exact)."""
        steps = sorted({int(t) for t in steps})
        if not steps or steps[0] <= 0:
            raise ValueError(f"steps must be positive step counts, got {steps}")
        dropout = SharedDropout(self.training)
        current, mask = self.margined_current(input_ids, attention_mask, token_type_ids, dropout)
        activity = self.simulate(current.detach(), steps[-1], dropout=dropout, counts_at=steps)
        last = f"layer{self.config.num_layers - 1}.out"
        return {T: self.readout(activity.counts_at[T][last] / T, mask) for T in steps}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, mode: str | None = None,
                t_conv: int | None = None) -> LoihiOutput:
        """``mode``: "simulate" (spiking, no gradients; the inference default), "equilibrium"
        (spiking values, steady-state gradients; the training default) or "rate" (the rate ANN)."""
        if mode is None:
            mode = "equilibrium" if (self.training and torch.is_grad_enabled()) else "simulate"
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        dropout = SharedDropout(self.training)  # one mask per position and channel, reused at every step
        current, mask = self.margined_current(input_ids, attention_mask, token_type_ids, dropout)
        if mode == "simulate":
            activity = self.simulate(current.detach(), t_conv, dropout=dropout)
        elif mode == "equilibrium":
            sim = self.simulate(current.detach(), t_conv, dropout=dropout)
            activity = self.steady_state(current, equilibrium=sim, dropout=dropout)
            activity.spike_counts = sim.spike_counts
        else:
            activity = self.steady_state(current, dropout=dropout)
        last = activity.asr[f"layer{self.config.num_layers - 1}.out"]
        logits = self.readout(last, mask)
        left, right = self.config.margins
        tokens = slice(left, mask.shape[1] - right)  # token j of the input at position left + j
        hidden = [activity.asr[name][:, tokens] for name in self.config.tap_names()]
        projected = [p(h) for p, h in zip(self.fit, hidden)] if self.fit is not None else None
        return LoihiOutput(logits=logits, activity=activity, attention_mask=mask, hidden=hidden, projected=projected,
                           token_mask=mask[:, tokens])

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` (with ``"profile": "loihi"``) + ``model.safetensors`` atomically."""
        return save_model(self, path)

    @classmethod
    def from_pretrained(cls, path: str | Path, **config_overrides) -> "LoihiSpikingMixer":
        """Load a loihi-profile checkpoint directory in eval mode; ``config_overrides`` change fields
        such as ``t_conv`` or ``weights``."""
        path = Path(path)
        profile = read_profile(path)
        if profile != "loihi":
            raise LoihiConfigError(f"{path / CONFIG_NAME}: a {profile!r}-profile checkpoint, not a loihi one")
        config = LoihiConfig.load(path / CONFIG_NAME)
        if config_overrides:
            unknown = sorted(set(config_overrides) - {f.name for f in dataclasses.fields(LoihiConfig)})
            if unknown:
                raise LoihiConfigError(f"unknown config field(s) {unknown}")
            config = dataclasses.replace(config, **config_overrides)
        model = cls(config)
        load_weights(model, path)
        return model.eval()

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def calibrate_(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   token_type_ids: torch.Tensor | None = None, *, mean: float = 0.25, std: float = 1.0) -> None:
        """Give every population's input current the per-channel mean ``mean * vth`` and standard
        deviation ``std * vth`` over the valid tokens of a batch (rate ANN, population by population),
        folded into its synapses: a BatchNorm with frozen statistics that leaves no trace at export."""
        current, mask = self.margined_current(input_ids, attention_mask, token_type_ids)
        valid = mask.bool()
        vth = self.config.vth

        def stats(current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            flat = current[valid]
            return flat.mean(0), flat.std(0).clamp_min(1e-6)

        mu, sd = stats(current)
        gain = std * vth / sd
        self.input_map.weight.mul_(gain[:, None])
        self.input_map.bias.mul_(gain).add_(mean * vth - mu * gain)
        x = self.rate(self.margined_current(input_ids, attention_mask, token_type_ids)[0])
        for layer in self.layers:
            for pop in MIXER_LAYER_POPULATIONS:
                if pop == "mix":
                    drive = lambda: layer.mix_current(x)  # noqa: E731
                elif pop == "hidden":
                    drive = lambda: layer.hidden_current(s_mix)  # noqa: E731
                else:
                    drive = lambda: layer.out_current(s_hidden, s_mix)  # noqa: E731
                mu, sd = stats(drive())
                gain = std * vth / sd
                layer.scale_population_(pop, gain, mean * vth - mu * gain)
                a = self.rate(drive())
                if pop == "mix":
                    s_mix = a
                elif pop == "hidden":
                    s_hidden = a
                else:
                    x = a

    def init_from_teacher(self, teacher) -> None:
        """Copy the teacher's word/position/type embeddings and their LayerNorm (same width)."""
        bert = teacher.bert if hasattr(teacher, "bert") else teacher
        emb = bert.embeddings
        pairs = ((self.word_embeddings, emb.word_embeddings), (self.position_embeddings, emb.position_embeddings),
                 (self.token_type_embeddings, emb.token_type_embeddings), (self.embed_norm, emb.LayerNorm))
        with torch.no_grad():
            for ours, theirs in pairs:
                for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
                    if p.shape != q.shape:
                        raise ValueError(f"cannot copy teacher embedding {name} {tuple(q.shape)} into "
                                         f"{tuple(p.shape)}: set embed_size to the teacher's width")
                    p.copy_(q)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters on the chip (synapse weights + biases) and on the host (input, readout)."""
        chip = sum(p.numel() for n, p in self.named_parameters() if n.startswith("layers."))
        host = sum(p.numel() for n, p in self.named_parameters()
                   if not n.startswith("layers.") and not n.startswith("fit."))
        return {"chip": chip, "host": host}
