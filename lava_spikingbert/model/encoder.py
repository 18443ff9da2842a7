"""The spiking BERT encoder (SpikingBERT, Bal & Sengupta, AAAI-24) in PyTorch.

This module is the single source of truth for the model's equations. Each spiking encoder layer
holds six integrate-and-fire populations; the *synaptic maps* below (``key_current`` ...
``output_current``) turn source activity into a population's input current. The same maps are
applied to binary spikes in the time-stepped simulation and to rates in the steady-state map used
for gradients, and the exporter and the Lava processes are tested against them.

Per layer, with input activity ``x`` (spikes or ASRs of the previous layer's output population)::

    key        K   <- W_K x + b_K
    value      V   <- W_V x + b_V
    context    A   <- concat_h softmax((W_Q x + b_Q)_h K_h^T / sqrt(d) + M) V_h      (Q stays real)
    attn_out   IL1 <- LayerNorm(W_O A + b_O + x)
    intermediate   <- GELU(W_1 IL1 + b_1)
    output     OUT <- LayerNorm(W_2 intermediate + b_2 + IL1)

The embedding population ``embed`` is driven by the constant current LayerNorm(word + position +
type embedding). The classifier reads the [CLS] ASR of the last layer's output population.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from lava_spikingbert.contract.constants import EMBED, MASK_NEGATIVE, output_population
from lava_spikingbert.model.checkpoint import load_weights, read_config, save_model
from lava_spikingbert.model.config import SpikingBertConfig
from lava_spikingbert.model.equilibrium import attach_implicit_adjoint, straight_through
from lava_spikingbert.model.neurons import heaviside, make_neuron, surrogate_spike, time_chunks
from lava_spikingbert.model.quantizers import attach_weight_quantizers, int8_codes


def hidden_tap_names(num_layers: int) -> list[str]:
    """The populations distilled against the teacher's hidden states (embeddings + layer outputs)."""
    return [EMBED] + [f"layer{i}.output" for i in range(num_layers)]


class SynapseLinear(nn.Linear):
    """A linear synapse; ``weight_quantizer`` (set by quantization) maps latent to used weights.

    While ``binary_input`` holds (set by ``SpikingBert.simulate`` for the calling thread: the
    inputs are spikes, 0 or 1) and no gradient is recorded, a quantized synapse computes
    ``W x + b`` as an int8 x int8 -> int32 matrix product of the spikes and the weight codes,
    then ``b + step * acc``. The integer sum is exact, so this is the same map as ``F.linear``
    on ``Q(W)`` up to the rounding of the float accumulation (identical when the float sum is
    exact too). On CPUs with int8 dot-product instructions (AVX-512 VNNI) the integer product is
    faster than the fp32 one (measured in docs/RESULTS.md, issue 3).
    """

    weight_quantizer: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _quantized(self) -> tuple:
        """(IntWeights, derived tensors) of the current weight. Inside a simulation
        (``frozen_quantized_weights``) they are computed once per call and thread and reused at
        every time step; outside one they are recomputed, so no optimizer step can leave them stale
        (fused optimizers update weights in place without bumping their version counter)."""
        cache = _thread_state().quant_cache
        w = self.weight
        key = (w.data_ptr(), w.dtype, self.weight_quantizer)
        entry = cache.get(id(self)) if cache is not None else None
        if entry is None or entry[0] != key:
            entry = (key, self.weight_quantizer.integer(w), {})
            if cache is not None:
                cache[id(self)] = entry
        return entry[1:]

    def synaptic_weight(self) -> torch.Tensor:
        if self.weight_quantizer is None:
            return self.weight
        if torch.is_grad_enabled() and self.weight.requires_grad:  # training: straight-through gradient
            return self.weight_quantizer(self.weight)
        iw, derived = self._quantized()
        if "q" not in derived:  # what WeightQuantizer.quantize returns, from the cached integers
            derived["q"] = iw.dequantize(self.weight.dtype).to(self.weight.device)
        return derived["q"]

    def int8_weight(self) -> tuple[torch.Tensor, float] | None:
        """(int8 codes as an ``in x out`` view, step) of the quantized weight, cached until it changes."""
        iw, derived = self._quantized()
        if "int8" not in derived:
            op = int8_codes(iw)
            # the transposed view of the row-major (out x in) codes: oneDNN's int8 kernel is
            # faster with this operand column-major
            derived["int8"] = None if op is None else (op[0].contiguous().t(), op[1])
        return derived["int8"]

    @property
    def binary_input(self) -> bool:
        """Whether this thread's current simulation feeds the synapse with binary spikes."""
        return id(self) in _thread_state().binary_synapses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # cheap checks first: fp32 synapses (and training) never look up the thread's state
        if self.weight_quantizer is not None and not torch.is_grad_enabled() and x.device.type == "cpu" \
                and self.binary_input:
            op = self.int8_weight()
            if op is not None:
                codes_t, step = op
                acc = torch._int_mm(_spike_codes(x), codes_t)
                out = acc.to(x.dtype).mul_(step) if self.bias is None else torch.add(self.bias.to(x.dtype), acc,
                                                                                      alpha=step)
                return out.view(*x.shape[:-1], out.shape[-1])
        return F.linear(x, self.synaptic_weight(), self.bias)


# Per-thread simulation state, so that several threads can simulate batches with one model at
# once (``lava_spikingbert.model.inference.predict_batches``): the synapses this thread feeds with spikes,
# the last spike tensor converted to int8 (query, key and value read the same spikes; the
# tensor itself is held, so an identity + version match cannot be a recycled address), and the
# quantized synapse weights of the running simulation (None outside one).
_local = threading.local()


def _thread_state():
    if not hasattr(_local, "binary_synapses"):
        _local.binary_synapses = set()
        _local.spike_codes = []
        _local.quant_cache = None
    return _local


def _spike_codes(x: torch.Tensor) -> torch.Tensor:
    """``x`` (0/1 spikes) as a 2-D int8 matrix."""
    last = _thread_state().spike_codes
    if last and last[0] is x and last[1] == x._version:
        return last[2]
    codes = x.reshape(-1, x.shape[-1]).to(torch.int8)
    last[:] = [x, x._version, codes]
    return codes


@contextmanager
def frozen_quantized_weights():
    """Quantize each synapse's weight at most once while the block runs (in this thread): the
    weights cannot change during one simulation, and requantizing them at every step is costly."""
    state = _thread_state()
    outermost = state.quant_cache is None
    if outermost:
        state.quant_cache = {}
    try:
        yield
    finally:
        if outermost:
            state.quant_cache = None


@contextmanager
def binary_synapse_inputs(model: nn.Module, enabled: bool):
    """Mark every ``SynapseLinear`` of ``model`` as fed by spikes in this thread while the block runs."""
    state = _thread_state()
    ids = {id(m) for m in model.modules() if isinstance(m, SynapseLinear)} if enabled else set()
    added = ids - state.binary_synapses
    state.binary_synapses |= added
    try:
        yield
    finally:
        state.binary_synapses -= added
        state.spike_codes.clear()


class SharedDropout:
    """Dropout whose mask is drawn once per forward pass and reused at every time step and in the
    steady-state map, so the spiking values and their gradients come from the same network
    (the reference code draws new masks per step and per surrogate pass)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.masks: dict[tuple, torch.Tensor] = {}

    def __call__(self, site: str, x: torch.Tensor, p: float, sample_dims: int) -> torch.Tensor:
        if not self.enabled or p <= 0.0:
            return x
        shape = tuple(x.shape[-sample_dims:])
        key = (site, shape)
        mask = self.masks.get(key)
        if mask is None:
            keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)
            mask = keep / (1.0 - p)
            self.masks[key] = mask
        return x * mask


NO_DROPOUT = SharedDropout(False)


class SpikingEmbeddings(nn.Module):
    """BERT embeddings; their LayerNorm output is the constant input current of ``embed``."""

    def __init__(self, config: SpikingBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout_p = config.hidden_dropout_prob

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                dropout: SharedDropout = NO_DROPOUT) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None] \
            + self.token_type_embeddings(token_type_ids)
        return dropout("embed", self.LayerNorm(x), self.dropout_p, 3)


class SpikingEncoderLayer(nn.Module):
    """The synaptic maps of one spiking encoder layer (leading dims may include time)."""

    def __init__(self, config: SpikingBertConfig, index: int) -> None:
        super().__init__()
        h, f = config.hidden_size, config.intermediate_size
        self.index = index
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.query = SynapseLinear(h, h)
        self.key = SynapseLinear(h, h)
        self.value = SynapseLinear(h, h)
        self.attn_out = SynapseLinear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.intermediate = SynapseLinear(h, f)
        self.output = SynapseLinear(f, h)
        self.output_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.hidden_p = config.hidden_dropout_prob
        self.attn_p = config.attention_probs_dropout_prob

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (..., L, H) -> (..., heads, L, d)
        return x.unflatten(-1, (self.num_heads, self.head_size)).transpose(-2, -3)

    def key_current(self, x_in: torch.Tensor) -> torch.Tensor:
        return self.key(x_in)

    def value_current(self, x_in: torch.Tensor) -> torch.Tensor:
        return self.value(x_in)

    def context_current(self, x_in: torch.Tensor, x_key: torch.Tensor, x_value: torch.Tensor,
                        mask_bias: torch.Tensor, dropout: SharedDropout = NO_DROPOUT,
                        query_positions: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Spiking attention: real-valued queries from the input activity against key/value
        activity; returns (context current, pre-softmax scores incl. the padding mask)."""
        x_q = x_in if query_positions is None else x_in[..., query_positions, :]
        q = self._heads(self.query(x_q))
        k = self._heads(x_key)
        v = self._heads(x_value)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + mask_bias
        probs = dropout(f"attn{self.index}", torch.softmax(scores, dim=-1), self.attn_p, 4)
        context = (probs @ v).transpose(-2, -3).flatten(-2)
        return context, scores

    def attn_out_current(self, x_context: torch.Tensor, x_in: torch.Tensor,
                         dropout: SharedDropout = NO_DROPOUT) -> torch.Tensor:
        return self.attn_norm(dropout(f"so{self.index}", self.attn_out(x_context), self.hidden_p, 3) + x_in)

    def intermediate_current(self, x_attn_out: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.intermediate(x_attn_out))

    def output_current(self, x_intermediate: torch.Tensor, x_attn_out: torch.Tensor,
                       dropout: SharedDropout = NO_DROPOUT) -> torch.Tensor:
        return self.output_norm(dropout(f"out{self.index}", self.output(x_intermediate), self.hidden_p, 3)
                                + x_attn_out)

    def run_populations(self, x_in: torch.Tensor, activate: Callable[[str, torch.Tensor], torch.Tensor],
                        mask_bias: torch.Tensor, dropout: SharedDropout, query_positions: slice | None,
                        on_scores: Callable[[torch.Tensor], None]) -> torch.Tensor:
        """The layer's six populations in update order: each population's current from its sources'
        activity, turned into its own activity by ``activate(name, current)`` (spikes in the
        simulation, rates in the steady-state map); ``on_scores`` receives the attention scores.
        Returns the output population's activity."""
        p = f"layer{self.index}."
        a_k = activate(p + "key", self.key_current(x_in))
        a_v = activate(p + "value", self.value_current(x_in))
        ctx, scores = self.context_current(x_in, a_k, a_v, mask_bias, dropout, query_positions)
        on_scores(scores)
        x_res = x_in if query_positions is None else x_in[..., query_positions, :]
        a_a = activate(p + "context", ctx)
        a_1 = activate(p + "attn_out", self.attn_out_current(a_a, x_res, dropout))
        a_2 = activate(p + "intermediate", self.intermediate_current(a_1))
        return activate(p + "output", self.output_current(a_2, a_1, dropout))


@dataclass
class Activity:
    """Per-population ASRs (``B x L x width``) and per-layer attention scores (``B x h x Lq x L``)."""

    asr: dict[str, torch.Tensor] = field(default_factory=dict)
    attention_scores: list[torch.Tensor] = field(default_factory=list)
    t_conv: int | None = None
    spike_counts: dict[str, torch.Tensor] | None = None  # simulation only (float counts; signed units: on - off)
    # simulation only: spike events per unit (= spike_counts for 0/1 neurons; on + off for signed units)
    spike_events: dict[str, torch.Tensor] | None = None
    trains: dict[str, torch.Tensor] | None = None  # simulation with record_trains: T x B x L x width
    # simulation with ``counts_at``: every population's spike counts after each of those steps
    counts_at: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)


@dataclass
class SpikingBertOutput:
    logits: torch.Tensor
    activity: Activity
    hidden_asr: list[torch.Tensor]  # [embed, layer0.output, ...]: the hidden-state distillation taps
    loss: torch.Tensor | None = None
    projected_hidden: list[torch.Tensor] | None = None  # hidden_asr through W_Td (if fit_size)

    @property
    def attention_scores(self) -> list[torch.Tensor]:
        return self.activity.attention_scores


MODES = ("equilibrium", "simulate", "steady_state", "bptt")
# default simulation chunk: time steps per population-major chunk are chosen so that the widest
# per-chunk tensor stays below this size (bounded memory in t_conv; no results depend on it)
SIM_CHUNK_BYTES = 16 * 2**20


class SpikingBert(nn.Module):
    """Spiking BERT encoder + classification/regression head on the [CLS] ASR."""

    def __init__(self, config: SpikingBertConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.neuron = make_neuron(config.neuron, config.vth)
        self.embeddings = SpikingEmbeddings(config)
        self.layers = nn.ModuleList(SpikingEncoderLayer(config, i) for i in range(config.num_hidden_layers))
        h = config.hidden_size
        # optional last-output -> embedding-population feedback (makes the equilibrium implicit)
        self.feedback = SynapseLinear(h, h, bias=False) if config.feedback else None
        self.classifier = nn.Linear(h, config.num_labels)
        self.fit_dense = nn.Linear(h, config.fit_size) if config.fit_size else None
        self.apply(self._init_weights)
        if self.feedback is not None:  # start near the feed-forward model, inside the contractive regime
            nn.init.normal_(self.feedback.weight, std=0.1 * config.initializer_range)
        if config.weights != "fp32":  # quantized synapses (latent fp32 weights, straight-through)
            attach_weight_quantizers(self, config.weights)
        self.last_adjoint_stats: dict | None = None

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     token_type_ids: torch.Tensor | None):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > self.config.max_length:
            raise ValueError(f"input length {length} exceeds the model's max_length {self.config.max_length}; "
                             "truncate when tokenizing (max_length=...)")
        if length == 0:
            raise ValueError("input_ids has no tokens")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"input_ids must lie in [0, {self.config.vocab_size}); "
                             f"got range [{int(input_ids.min())}, {int(input_ids.max())}]")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t.shape != input_ids.shape:
                raise ValueError(f"{name} shape {tuple(t.shape)} differs from input_ids {tuple(input_ids.shape)}")
        return input_ids, attention_mask, token_type_ids

    def mask_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return ((1.0 - attention_mask.to(dtype)) * MASK_NEGATIVE)[:, None, None, :]

    def embedding_current(self, input_ids, token_type_ids, dropout: SharedDropout = NO_DROPOUT):
        return self.embeddings(input_ids, token_type_ids, dropout)

    # ------------------------------------------------------------------ spiking simulation
    def default_chunk_steps(self, emb_current: torch.Tensor, t_conv: int) -> int:
        """Time steps per chunk: as many as keep the widest per-step tensor of the chunk (the FFN
        current or the attention scores) within ``SIM_CHUNK_BYTES``; at least 1."""
        cfg = self.config
        tokens = emb_current[..., 0].numel()  # batch x length
        width = max(cfg.intermediate_size, cfg.hidden_size, cfg.num_attention_heads * emb_current.shape[-2])
        per_step = tokens * width * emb_current.element_size()
        return max(1, min(int(t_conv), SIM_CHUNK_BYTES // max(1, per_step)))

    def simulate(self, emb_current: torch.Tensor, attention_mask: torch.Tensor, t_conv: int | None = None, *,
                 dropout: SharedDropout = NO_DROPOUT, spike_fn=heaviside, record_scores: bool = True,
                 cls_only: bool = False, chunk_steps: int | None = None,
                 record_trains: bool = False, integer_synapses: bool = True, counts_at=()) -> Activity:
        """Run the spiking network for ``t_conv`` steps; returns every population's ASR.

        Populations are updated in order within a step, with no delay (the paper's schedule).
        Without feedback each population only needs its sources' spike trains, so the work is
        done population by population over chunks of ``chunk_steps`` time steps (big matrix
        products); with feedback the chunk is one step. The result does not depend on the chunk.
        The default chunk holds at most ``SIM_CHUNK_BYTES`` per population current, so memory
        does not grow with ``t_conv`` (and large short-lived tensors, which cost page faults on
        every allocation, are avoided).
        ``cls_only`` computes the last layer only where the [CLS] readout needs it (inference).
        Call under ``torch.no_grad()`` unless ``spike_fn`` is a surrogate (BPTT baseline).
        ``integer_synapses``: quantized synapses multiply the binary spikes with int8 kernels
        (see ``SynapseLinear``; no effect on fp32 weights or when autograd records).
        ``counts_at``: step counts (at most ``t_conv``) after which the spike counts are also kept
        (``Activity.counts_at``; see ``neurons.time_chunks``).
        """
        binary = integer_synapses and spike_fn is heaviside and not torch.is_grad_enabled()
        with binary_synapse_inputs(self, binary and self.config.weights != "fp32"), frozen_quantized_weights():
            return self._simulate(emb_current, attention_mask, t_conv, dropout=dropout, spike_fn=spike_fn,
                                  record_scores=record_scores, cls_only=cls_only, chunk_steps=chunk_steps,
                                  record_trains=record_trains, counts_at=counts_at)

    def _simulate(self, emb_current: torch.Tensor, attention_mask: torch.Tensor, t_conv: int | None, *,
                  dropout: SharedDropout, spike_fn, record_scores: bool, cls_only: bool,
                  chunk_steps: int | None, record_trains: bool, counts_at=()) -> Activity:
        T = int(t_conv if t_conv is not None else self.config.t_conv)
        if T <= 0:
            raise ValueError(f"t_conv must be positive, got {T}")
        if any(not 0 < int(t) <= T for t in counts_at):
            raise ValueError(f"counts_at {sorted(counts_at)} must lie in 1..t_conv={T}")
        if self.feedback is not None:
            chunk = 1
            cls_only = False
        else:
            chunk = self.default_chunk_steps(emb_current, T) if chunk_steps is None else int(chunk_steps)
            chunk = max(1, min(chunk, T))
        bias = self.mask_bias(attention_mask, emb_current.dtype)
        neuron = self.neuron
        membranes: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        events: dict[str, torch.Tensor] = {}  # signed units only
        trains: dict[str, list[torch.Tensor]] = {}
        score_sums: list[torch.Tensor | None] = [None] * len(self.layers)
        last = len(self.layers) - 1
        prev_out = None  # previous step's last-layer output spikes (feedback only)
        # binary spikes without autograd: the membrane loop runs in place (no temporaries)
        in_place = spike_fn is heaviside and not torch.is_grad_enabled()

        def fire(name: str, current: torch.Tensor, owned: bool = True) -> torch.Tensor:
            v = membranes.get(name)
            if v is None:
                v = neuron.initial_state(current[0])
            if in_place:  # the spikes overwrite ``current`` when nobody else reads it
                out = neuron.run_steps(v, current, current if owned else
                                       torch.empty(current.shape, dtype=current.dtype, device=current.device))
            else:
                spikes = []
                for t in range(current.shape[0]):
                    v, s = neuron.step(v, current[t], spike_fn)
                    spikes.append(s)
                out = torch.stack(spikes)
            membranes[name] = v
            counts[name] = out.sum(0) if name not in counts else counts[name] + out.sum(0)
            if neuron.signed:  # an on and an off neuron never fire in the same step: |s| counts both
                n_events = out.abs().sum(0)
                events[name] = n_events if name not in events else events[name] + n_events
            if record_trains:
                trains.setdefault(name, []).append(out.detach())
            return out

        kept: dict[int, dict[str, torch.Tensor]] = {}
        for t0, n in time_chunks(T, chunk, counts_at):
            current = expanded = emb_current.expand(n, *emb_current.shape)
            if self.feedback is not None and prev_out is not None:
                current = current + self.feedback(prev_out)
            x = fire(EMBED, current, owned=current is not expanded)
            for i, layer in enumerate(self.layers):

                def add_scores(scores: torch.Tensor, i: int = i) -> None:
                    if not record_scores:
                        return
                    acc = score_sums[i]
                    for t in range(scores.shape[0]):  # step by step: the same rounding for every chunking
                        if acc is None:
                            acc = scores[t].clone()
                        elif in_place:
                            acc.add_(scores[t])
                        else:
                            acc = acc + scores[t]
                    score_sums[i] = acc

                x = layer.run_populations(x, fire, bias, dropout, slice(0, 1) if (cls_only and i == last) else None,
                                          add_scores)
            prev_out = x
            if t0 + n in counts_at:  # ``counts`` entries are replaced, never updated in place
                kept[t0 + n] = dict(counts)
        activity = Activity(counts_at=kept, asr={k: c / T for k, c in counts.items()}, t_conv=T, spike_counts=counts,
                            spike_events=events if neuron.signed else counts)
        if record_scores:
            activity.attention_scores = [s / T for s in score_sums]
        if record_trains:
            activity.trains = {k: torch.cat(v) for k, v in trains.items()}
        return activity

    # ------------------------------------------------------------------ steady-state map
    def steady_state(self, emb_current: torch.Tensor, attention_mask: torch.Tensor, *,
                     equilibrium: Activity | None = None, dropout: SharedDropout = NO_DROPOUT,
                     feedback_input: torch.Tensor | None = None, cls_only: bool = False,
                     join: bool = True) -> Activity:
        """One pass of the steady-state map ``a = g(F(a_in))`` over all populations, with taps.

        Without ``equilibrium`` this is the rate-coded ANN the spiking network converges to. With
        it (a simulation result) every population's output value is replaced by the simulated ASR
        while its gradient is that of the map (see ``straight_through``); ``config.grad_point``
        chooses whether each map is evaluated on the simulated input ASRs ("snn", the Jacobian at
        the spiking equilibrium) or on the map's own chain ("ann", the reference code).
        ``join=False`` returns the map's own values ``g(F(a_in))`` evaluated on the simulated
        input ASRs instead (the residual of the steady-state equation is ``asr - that``).
        """
        rate = self.neuron.rate
        bias = self.mask_bias(attention_mask, emb_current.dtype)
        at_snn = self.config.grad_point == "snn"
        out = Activity(t_conv=equilibrium.t_conv if equilibrium is not None else None)
        last = len(self.layers) - 1

        def settle(name: str, current: torch.Tensor) -> torch.Tensor:
            a = rate(current)
            if equilibrium is None:
                out.asr[name] = a
                return a
            if not join:
                out.asr[name] = a
                return equilibrium.asr[name]
            joined = straight_through(equilibrium.asr[name], a)
            out.asr[name] = joined
            return joined if at_snn else a

        current = emb_current
        if self.feedback is not None and feedback_input is not None:
            current = current + self.feedback(feedback_input)
        x = settle(EMBED, current)
        for i, layer in enumerate(self.layers):

            def keep_scores(scores: torch.Tensor, i: int = i) -> None:
                if join and equilibrium is not None and equilibrium.attention_scores:
                    scores = straight_through(equilibrium.attention_scores[i], scores)
                out.attention_scores.append(scores)

            x = layer.run_populations(x, settle, bias, dropout, slice(0, 1) if (cls_only and i == last) else None,
                                      keep_scores)
        return out

    def fixed_point(self, emb_current: torch.Tensor, attention_mask: torch.Tensor, *, max_iter: int = 100,
                    tol: float = 1e-7) -> Activity:
        """The steady state of the feedback network by plain iteration (rate-domain reference).

        Differentiable (autograd unrolls the iterations): the brute-force check of the implicit
        adjoint. Raises if the iteration has not converged after ``max_iter`` steps.
        """
        name = output_population(len(self.layers))
        z = torch.zeros_like(emb_current)
        change = float("inf")
        for _ in range(max_iter):
            act = self.steady_state(emb_current, attention_mask, feedback_input=z)
            z_new = act.asr[name]
            change = float((z_new - z).detach().abs().max())
            if change <= tol:
                return act
            z = z_new
        raise RuntimeError(f"fixed_point: no convergence after {max_iter} iterations (last change {change:.3g}); "
                           "the feedback weights are too strong for a contractive equilibrium")

    def equilibrium_taps(self, emb_current: torch.Tensor, attention_mask: torch.Tensor, sim: Activity,
                         dropout: SharedDropout = NO_DROPOUT) -> Activity:
        """Simulated values with steady-state gradients; the IFT adjoint when there is feedback."""
        if self.feedback is None:
            return self.steady_state(emb_current, attention_mask, equilibrium=sim, dropout=dropout)
        name = output_population(len(self.layers))
        z_star = sim.asr[name].detach().requires_grad_(torch.is_grad_enabled())
        first = self.steady_state(emb_current, attention_mask, equilibrium=sim, dropout=dropout,
                                  feedback_input=z_star)
        z_out = first.asr[name]
        self.last_adjoint_stats = attach_implicit_adjoint(z_out, z_star)
        return self.steady_state(emb_current, attention_mask, equilibrium=sim, dropout=dropout,
                                 feedback_input=z_out)

    # ------------------------------------------------------------------ full forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None, *,
                t_conv: int | None = None, mode: str | None = None) -> SpikingBertOutput:
        """``mode``: "equilibrium" (training default: simulate without autograd, gradients from
        the steady-state map), "simulate" (inference default), "steady_state" (the rate ANN
        alone) or "bptt" (surrogate-gradient backprop through time; the memory baseline)."""
        input_ids, attention_mask, token_type_ids = self.check_inputs(input_ids, attention_mask, token_type_ids)
        if mode is None:
            mode = "equilibrium" if (self.training and torch.is_grad_enabled()) else "simulate"
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        dropout = SharedDropout(self.training)
        emb = self.embedding_current(input_ids, token_type_ids, dropout)
        if mode == "simulate":
            with torch.no_grad():
                activity = self.simulate(emb, attention_mask, t_conv, dropout=dropout)
        elif mode == "equilibrium":
            with torch.no_grad():
                sim = self.simulate(emb.detach(), attention_mask, t_conv, dropout=dropout)
            activity = self.equilibrium_taps(emb, attention_mask, sim, dropout)
            activity.spike_counts, activity.spike_events = sim.spike_counts, sim.spike_events
        elif mode == "bptt":
            activity = self.simulate(emb, attention_mask, t_conv, dropout=dropout, spike_fn=surrogate_spike)
        else:
            activity = (self.fixed_point(emb, attention_mask) if self.feedback is not None
                        else self.steady_state(emb, attention_mask, dropout=dropout))
        return self.head(activity, labels)

    def head(self, activity: Activity, labels: torch.Tensor | None = None) -> SpikingBertOutput:
        n = len(self.layers)
        cls_asr = activity.asr[output_population(n)][:, 0]
        logits = self.classifier(cls_asr)  # the reference's ReLU is a no-op on an ASR in [0, 1]
        hidden = [activity.asr[name] for name in hidden_tap_names(n)]
        projected = [self.fit_dense(h) for h in hidden] if self.fit_dense is not None else None
        loss = None
        if labels is not None:
            if self.config.problem_type == "regression":
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels)
        return SpikingBertOutput(logits=logits, activity=activity, hidden_asr=hidden, loss=loss,
                                 projected_hidden=projected)

    @torch.no_grad()
    def predict_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       token_type_ids: torch.Tensor | None = None, t_conv: int | None = None, *,
                       integer_synapses: bool = True) -> torch.Tensor:
        """Inference: the spiking simulation with the last layer computed for [CLS] only."""
        T = int(t_conv if t_conv is not None else self.config.t_conv)
        return self.predict_logits_at(input_ids, attention_mask, token_type_ids, (T,),
                                      integer_synapses=integer_synapses)[T]

    @torch.no_grad()
    def predict_logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          token_type_ids: torch.Tensor | None, steps, *,
                          integer_synapses: bool = True) -> dict[int, torch.Tensor]:
        """``{T: predict_logits(..., t_conv=T)}`` for every ``T`` in ``steps``, read from one
        simulation of ``max(steps)`` steps (``neurons.time_chunks`` says why that is exact)."""
        steps = sorted({int(t) for t in steps})
        if not steps or steps[0] <= 0:
            raise ValueError(f"steps must be positive step counts, got {steps}")
        input_ids, attention_mask, token_type_ids = self.check_inputs(input_ids, attention_mask, token_type_ids)
        emb = self.embedding_current(input_ids, token_type_ids)
        activity = self.simulate(emb, attention_mask, steps[-1], record_scores=False, cls_only=True,
                                 integer_synapses=integer_synapses, counts_at=steps)
        out = output_population(len(self.layers))
        return {T: self.classifier(activity.counts_at[T][out][:, 0] / T) for T in steps}

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically into the directory ``path``."""
        return save_model(self, path)

    @classmethod
    def from_pretrained(cls, path: str | Path, **config_overrides) -> "SpikingBert":
        """Load a checkpoint directory in eval mode; ``config_overrides`` change run-time fields such
        as ``t_conv``."""
        model = cls(read_config(path, **config_overrides))
        load_weights(model, path)
        return model.eval()

    def synapses(self) -> Iterable[tuple[str, SynapseLinear]]:
        for name, module in self.named_modules():
            if isinstance(module, SynapseLinear):
                yield name, module
