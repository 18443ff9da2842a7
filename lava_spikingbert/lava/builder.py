"""Build the Lava graph of the spiking BERT encoder for a batch of sentences.

The graph (``EmbeddingSource -> embed -> SpikingEncoderLayer x N``) processes all sentences of the
batch in one run, *pipelined*: sentence k occupies window ``k*T + d_p + [0, T)`` of a population
at depth ``d_p`` (``lava_spikingbert.contract.depths``), and every population resets itself at the
start of each of its windows. Because every input of a population at depth d comes from depth
d-1 (aligned by delay lines), consecutive windows need no padding between sentences: a run of N
sentences takes ``N*T + max_depth`` steps, and each population's count over its own windows equals
the torch simulation's count of that sentence (``SpikingBert.simulate``). Before its first window
a population sees pipeline-fill garbage (zero inputs, LayerNorm biases), which is never counted
and never reaches another population's window.

All windows share one length L: either one sentence per window (padded, each with its own key
mask) or several sentences packed side by side with a block-diagonal query x key mask
(``packing.pack_sentences``; ``schedule.plan_runs`` does either for a whole data set).
"""

from __future__ import annotations

import typing as ty
from dataclasses import dataclass, field

import numpy as np

from lava_spikingbert.contract.constants import EMBED, LAYER_POPULATIONS, output_population, population_names
from lava_spikingbert.contract.depths import layer_plans, population_depths
from lava_spikingbert.lava.counts import CountLayout, check_record_index, resolve_tokens
from lava_spikingbert.lava.lava_import import import_lava_runtime
from lava_spikingbert.lava.params import LavaModelParams, attention_mask_bias

RecordSpec = ty.Union[str, ty.Mapping[str, ty.Any]]


def resolve_record(record: RecordSpec, num_layers: int, length: int,
                   n_samples: int | None = None) -> dict[str, ty.Any]:
    """Which tokens of which population to count: name -> tuple of positions, or an
    (n_samples, R) int array of per-window positions (-1 = empty slot; packed sentences).

    ``"all"``: every population, every token (parity tests); ``"cls"``: only the last output's
    [CLS] (what the classifier needs; cheapest readout); ``"hidden"``: all tokens of ``embed`` and
    each layer's output (the distillation taps); or a mapping name -> "all" | "cls" | None |
    token positions | per-window index array. Unless given as an index array, the last output's
    [CLS] is always recorded (logits).
    """
    names = population_names(num_layers)
    last = names[-1]
    if isinstance(record, str):
        if record == "all":
            spec: dict[str, ty.Any] = {n: "all" for n in names}
        elif record == "cls":
            spec = {}
        elif record == "hidden":
            spec = {n: "all" for n in names if n == EMBED or n.endswith(".output")}
        else:
            raise ValueError(f"record must be 'all', 'cls', 'hidden' or a mapping, got {record!r}")
    else:
        spec = dict(record)
        unknown = set(spec) - set(names)
        if unknown:
            raise ValueError(f"record names unknown populations {sorted(unknown)}; known: {names}")
    out: dict[str, ty.Any] = {}
    for n in names:
        r = spec.get(n)
        if isinstance(r, np.ndarray):
            if n_samples is None:
                raise ValueError("per-window record index arrays need n_samples")
            out[n] = check_record_index(r, n_samples, length)
        else:
            out[n] = resolve_tokens(r, length)
    if not isinstance(out[last], np.ndarray):
        out[last] = tuple(sorted(set(out[last]) | {0}))
    return out


@dataclass
class LavaNetwork:
    """The built (not yet compiled) graph plus everything needed to run it and read it out."""

    params: LavaModelParams
    n_samples: int
    n_tokens: int
    t_steps: int
    block_latency: int
    neuron_impl: str
    source: ty.Any
    embed: ty.Any
    layers: list
    depths: dict[str, int]
    layouts: dict[str, CountLayout]
    count_vars: dict[str, ty.Any] = field(repr=False)
    record_index: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    tag: str = "floating_pt"

    @property
    def max_depth(self) -> int:
        return max(self.depths.values())

    @property
    def num_steps(self) -> int:
        """Steps until the deepest population's last window ends."""
        return self.n_samples * self.t_steps + self.max_depth

    @property
    def root(self):
        """Any process of the graph; ``run``/``stop`` on it act on the whole graph."""
        return self.source

    @property
    def output_name(self) -> str:
        return output_population(self.params.num_hidden_layers)

    def recorded(self) -> list[str]:
        return [n for n, lay in self.layouts.items() if lay.recording]


def build_network(params: LavaModelParams, emb_current: np.ndarray, attention_mask: np.ndarray | None = None, *,
                  t_steps: int | None = None, record: RecordSpec = "all", block_latency: int = 0,
                  neuron_impl: str = "ifneuron") -> LavaNetwork:
    """Build the graph for ``emb_current`` (N, L, H) float32 and ``attention_mask``: (N, L) 0/1 key
    masks (one sentence per window), or (N, L, L) query x key masks (several packed sentences per
    window, block-diagonal; see ``packing``).

    ``t_steps``: steps per sentence (default ``params.t_conv``); ``record``: see
    :func:`resolve_record`; ``block_latency``: 0 or 1 steps per current block (attention, LayerNorm,
    GELU); ``neuron_impl``: "ifneuron" (our IFNeuron, both neuron kinds) or "lava_lif" (Lava's stock
    ``LIFReset`` + ``SpikeCounter``; only for ``neuron == "lif_reset_zero"``).
    """
    # imported when a graph is built: importing Lava fixes the multiprocessing start method (see
    # lava_import), and planning runs or reading counts must not do that
    import_lava_runtime()
    from lava_spikingbert.lava.procs.embedding_source import EmbeddingSource
    from lava_spikingbert.lava.procs.encoder_layer import NEURON_IMPLS, SpikingEncoderLayer
    from lava_spikingbert.lava.procs.ifneuron import IFNeuron
    from lava_spikingbert.lava.procs.spike_counter import SpikeCounter

    params.validate()
    fixed = params.extra.get("fixed")  # fixed_pt graph (lava_spikingbert.lava.fixed.fixed_params)
    # fixed_pt: emb_current is the integer embed input Q(E) (float64 integers, fixed.embedding_grid)
    emb = np.asarray(emb_current, dtype=np.float64 if fixed else np.float32)
    if emb.ndim != 3 or emb.shape[2] != params.hidden_size:
        raise ValueError(f"emb_current must be (n_samples, L, {params.hidden_size}), got {emb.shape}")
    if not np.all(np.isfinite(emb)):
        raise ValueError("emb_current has non-finite values")
    n_samples, n_tokens, h = emb.shape
    if n_samples == 0 or n_tokens == 0:
        raise ValueError(f"empty batch: emb_current shape {emb.shape}")
    mask = np.ones((n_samples, n_tokens), dtype=np.int64) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape not in ((n_samples, n_tokens), (n_samples, n_tokens, n_tokens)):
        raise ValueError(f"attention_mask shape {mask.shape} is neither {(n_samples, n_tokens)} (key mask) nor "
                         f"{(n_samples, n_tokens, n_tokens)} (query x key mask)")
    if mask.ndim == 2 and params.max_length is not None and n_tokens > params.max_length:
        raise ValueError(f"{n_tokens} tokens exceed the model's max_length {params.max_length}")
    mask_bias = attention_mask_bias(mask, params.mask_negative)
    T = int(params.t_conv if t_steps is None else t_steps)
    if T <= 0:
        raise ValueError(f"t_steps must be positive, got {T}")
    if block_latency not in (0, 1):
        raise ValueError(f"block_latency must be 0 or 1, got {block_latency!r}")
    if neuron_impl not in NEURON_IMPLS:
        raise ValueError(f"neuron_impl must be one of {NEURON_IMPLS}, got {neuron_impl!r}")
    if fixed and neuron_impl != "ifneuron":
        raise ValueError("the fixed_pt graph uses neuron_impl='ifneuron' (stock LIF cannot take block currents exactly)")
    if neuron_impl == "lava_lif" and params.neuron != "lif_reset_zero":
        raise ValueError(f"neuron_impl='lava_lif' needs neuron 'lif_reset_zero' (Lava's LIF resets to zero), "
                         f"the model uses {params.neuron!r}")

    n_layers = params.num_hidden_layers
    rec = resolve_record(record, n_layers, n_tokens, n_samples)
    indices = {n: r for n, r in rec.items() if isinstance(r, np.ndarray)}
    depths = population_depths(n_layers, block_latency)

    source = EmbeddingSource(data=emb, interval=T, name="embedding_source")
    embed_index = indices.get(EMBED)
    embed_tokens = tuple(range(embed_index.shape[1])) if embed_index is not None else rec[EMBED]
    if neuron_impl == "ifneuron":
        embed = IFNeuron(shape=(n_tokens, h), vth=fixed["vth_mant"] if fixed else params.vth, kind=params.neuron,
                         reset_interval=T,
                         reset_offset=depths[EMBED], n_samples=n_samples, record_tokens=embed_tokens,
                         record_index=embed_index, name=EMBED)
        count_vars = {EMBED: embed.counts}
        embed_layout = embed.count_layout
    else:
        from lava.proc.lif.process import LIFReset
        embed = LIFReset(shape=(n_tokens, h), du=1.0, dv=0.0, vth=params.vth, bias_mant=0.0, reset_interval=T,
                         reset_offset=(depths[EMBED] + 1) % T, name=EMBED)
        counter = SpikeCounter(shape=(n_tokens, h), interval=T, offset=depths[EMBED], n_samples=n_samples,
                               record_tokens=embed_tokens, record_index=embed_index, name="embed.counter")
        embed.s_out.connect(counter.s_in)
        count_vars = {EMBED: counter.counts}
        embed_layout = counter.count_layout
    source.a_out.connect(embed.a_in)
    layouts = {EMBED: embed_layout}

    layers = []
    x = embed.s_out
    for i, (lp, plan) in enumerate(zip(params.layers, layer_plans(n_layers, block_latency))):
        layer = SpikingEncoderLayer(
            layer=lp, n_tokens=n_tokens, num_heads=params.num_attention_heads, vth=params.vth, kind=params.neuron,
            interval=T, n_samples=n_samples, in_depth=plan.in_depth, mask_bias=mask_bias,
            layer_norm_eps=params.layer_norm_eps, record={p: rec[f"layer{i}.{p}"] for p in LAYER_POPULATIONS},
            block_latency=block_latency, neuron_impl=neuron_impl, name=f"layer{i}",
            fixed=None if not fixed else {
                "lam": fixed["lam"], "vth_mant": fixed["vth_mant"], "score_scale": fixed["score_scale"][i],
                "synapses": {k.split(".", 1)[1]: v for k, v in fixed["synapses"].items() if k.startswith(f"layer{i}.")}})
        x.connect(layer.s_in)
        x = layer.s_out
        layers.append(layer)
        for p in LAYER_POPULATIONS:
            layouts[f"layer{i}.{p}"] = layer.count_layouts[p]
            count_vars[f"layer{i}.{p}"] = getattr(layer, f"{p}_counts")
    assert layouts.keys() == depths.keys()
    return LavaNetwork(params=params, n_samples=n_samples, n_tokens=n_tokens, t_steps=T,
                       block_latency=block_latency, neuron_impl=neuron_impl, source=source, embed=embed,
                       layers=layers, depths=depths, layouts=layouts, count_vars=count_vars, record_index=indices,
                       tag="fixed_pt" if fixed else "floating_pt")
