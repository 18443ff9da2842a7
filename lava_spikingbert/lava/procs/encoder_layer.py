"""``SpikingEncoderLayer``: one spiking encoder layer as a hierarchical Process.

The SubProcessModel wires (see ``lava_spikingbert.contract.depths`` for depths and delays)::

    s_in ─┬─ TokenLinear(W_K,b_K) ─ key ───────────┐
          ├─ TokenLinear(W_V,b_V) ─ value ─────────┤
          ├─ (delay 1) ── SpikingAttention(W_Q,b_Q, mask) ─ context ─ TokenLinear(W_O,b_O) ─┐
          └─ (delay A) ─────────────────────────────────────────────── ResidualLayerNorm ───┘
                                                                              │
      attn_out ─┬─ TokenLinear(W_1,b_1) ─ GELU ─ intermediate ─ TokenLinear(W_2,b_2) ─┐
                └─ (delay B) ─────────────────────────────────── ResidualLayerNorm ───┘─ output ─ s_out

Every population (IFNeuron, or stock LIFReset + SpikeCounter for ``lif_reset_zero`` with
``neuron_impl="lava_lif"``) resets at its own depth, and its per-sentence counts are exposed as the
layer's ``<population>_counts`` Vars (aliases).
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements
from lava.magma.core.model.sub.model import AbstractSubProcessModel
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.process import LIFReset

from lava_spikingbert.contract.constants import LAYER_POPULATIONS, SIGNED_NEURONS
from lava_spikingbert.contract.depths import LayerPlan
from lava_spikingbert.lava.counts import CountLayout, check_record_index
from lava_spikingbert.lava.procs.current_blocks import GELU, ResidualLayerNorm
from lava_spikingbert.lava.procs.ifneuron import IFNeuron
from lava_spikingbert.lava.procs.spike_counter import SpikeCounter
from lava_spikingbert.lava.procs.spiking_attention import SpikingAttention
from lava_spikingbert.lava.procs.token_linear import TokenLinear

NEURON_IMPLS = ("ifneuron", "lava_lif")


class SpikingEncoderLayer(AbstractProcess):
    """s_in (L, H) layer-input spikes -> s_out (L, H) output-population spikes.

    ``layer``: a ``LayerParams``; ``in_depth``: depth of the input population; ``interval``: T;
    ``mask_bias``: (n_samples, L) additive key masks or (n_samples, L, L) query x key masks;
    ``record``: population -> recorded tokens (a tuple, or an (n_samples, R) per-window index).
    """

    def __init__(self, *, layer: ty.Any, n_tokens: int, num_heads: int, vth: float, kind: str,
                 interval: int, n_samples: int, in_depth: int, mask_bias: np.ndarray, layer_norm_eps: float,
                 record: ty.Mapping[str, ty.Sequence[int]] | None = None, block_latency: int = 0,
                 neuron_impl: str = "ifneuron", fixed: ty.Mapping[str, ty.Any] | None = None,
                 name: str | None = None, log_config: LogConfig | None = None) -> None:
        # fixed: fixed_pt graph info of this layer (lava_spikingbert.lava.fixed): lam, vth_mant, score_scale,
        # and per linear name weight_exp / target_kind (/ bias_mant, bias_exp for neuron targets)
        if neuron_impl not in NEURON_IMPLS:
            raise ValueError(f"neuron_impl must be one of {NEURON_IMPLS}, got {neuron_impl!r}")
        if neuron_impl == "lava_lif" and kind != "lif_reset_zero":
            raise ValueError("Lava's stock LIF implements only the 'lif_reset_zero' neuron kind")
        h = layer.query.weight.shape[0]
        f = layer.intermediate.weight.shape[0]
        record = dict(record or {})
        unknown = set(record) - set(LAYER_POPULATIONS)
        if unknown:
            raise ValueError(f"unknown populations in record: {sorted(unknown)}")
        widths = {p: (f if p == "intermediate" else h) for p in LAYER_POPULATIONS}
        indices = {p: check_record_index(r, int(n_samples), int(n_tokens))
                   for p, r in record.items() if isinstance(r, np.ndarray)}
        layouts = {p: CountLayout(n_samples=int(n_samples),
                                  tokens=tuple(range(indices[p].shape[1])) if p in indices else tuple(record.get(p, ())),
                                  width=widths[p], max_count=int(interval),
                                  min_count=-int(interval) if kind in SIGNED_NEURONS else 0)
                   for p in LAYER_POPULATIONS}
        plan = LayerPlan(int(in_depth), int(block_latency))
        super().__init__(layer=layer, n_tokens=int(n_tokens), num_heads=int(num_heads), vth=float(vth), kind=kind,
                         interval=int(interval), n_samples=int(n_samples), plan=plan, mask_bias=mask_bias,
                         layer_norm_eps=float(layer_norm_eps), layouts=layouts, record_index=indices, widths=widths,
                         block_latency=int(block_latency), neuron_impl=neuron_impl, fixed=fixed, name=name,
                         log_config=log_config)
        self.s_in = InPort(shape=(int(n_tokens), h))
        self.s_out = OutPort(shape=(int(n_tokens), h))
        for p in LAYER_POPULATIONS:
            setattr(self, f"{p}_counts", Var(shape=layouts[p].var_shape, init=0))

    @property
    def plan(self) -> LayerPlan:
        return self.proc_params["plan"]

    @property
    def count_layouts(self) -> dict[str, CountLayout]:
        return self.proc_params["layouts"]


@implements(proc=SpikingEncoderLayer, protocol=LoihiProtocol)
class SubSpikingEncoderLayerModel(AbstractSubProcessModel):
    def __init__(self, proc: SpikingEncoderLayer) -> None:
        p = proc.proc_params
        layer, plan, lat = p["layer"], p["plan"], p["block_latency"]
        n, h, T = p["n_tokens"], p["widths"]["key"], p["interval"]
        prefix = proc.name
        fx = p.get("fixed")
        lam = fx["lam"] if fx else 1.0

        def population(name: str):
            shape, depth, layout = (n, p["widths"][name]), getattr(plan, name), p["layouts"][name]
            index = p["record_index"].get(name)
            if p["neuron_impl"] == "ifneuron":
                nb = {}
                if fx:
                    nb = {"vth": fx["vth_mant"]}
                    syn = fx["synapses"].get(name)
                    if syn is not None and syn["target_kind"] == "neuron":
                        nb.update(bias_mant=syn["bias_mant"][None, :], bias_exp=syn["bias_exp"])
                neuron = IFNeuron(shape=shape, **{"vth": p["vth"], **nb}, kind=p["kind"], reset_interval=T,
                                  reset_offset=depth,
                                  n_samples=p["n_samples"], record_tokens=layout.tokens, record_index=index,
                                  name=f"{prefix}.{name}")
                counter = neuron
            else:  # Lava LIF as IF neuron: du=1 (u = this step's input), dv=0, v > vth, reset to 0
                neuron = LIFReset(shape=shape, du=1.0, dv=0.0, vth=p["vth"], bias_mant=0.0, reset_interval=T,
                                  reset_offset=(depth + 1) % T, name=f"{prefix}.{name}")  # LIFReset counts steps from 1
                counter = SpikeCounter(shape=shape, interval=T, offset=depth, n_samples=p["n_samples"],
                                       record_tokens=layout.tokens, record_index=index,
                                       name=f"{prefix}.{name}.counter")
                neuron.s_out.connect(counter.s_in)
                setattr(self, f"{name}_counter", counter)  # sub-Processes are found via attributes
            getattr(proc.vars, f"{name}_counts").alias(counter.vars.counts)
            setattr(self, name, neuron)
            return neuron

        def linear(lin, name: str) -> TokenLinear:
            if not fx:
                return TokenLinear(weight=lin.weight, bias=lin.bias, n_tokens=n)
            syn = fx["synapses"][name]
            to_block = syn["target_kind"] == "block"
            return TokenLinear(weight=lin.weight, bias=lin.bias if to_block else None, n_tokens=n,
                               weight_exp=syn["weight_exp"], lam=lam, target="block" if to_block else "neuron")

        self.key_synapses, self.value_synapses = linear(layer.key, "key"), linear(layer.value, "value")
        fxq = {} if not fx else {"q_exp": fx["synapses"]["query"]["weight_exp"], "lam": lam,
                                 "score_scale": fx["score_scale"]}
        key, value = population("key"), population("value")
        self.attention = SpikingAttention(n_tokens=n, num_heads=p["num_heads"], q_weight=layer.query.weight,
                                          q_bias=layer.query.bias, mask_bias=p["mask_bias"], interval=T,
                                          offset=plan.attention_offset, query_delay=plan.query_delay, latency=lat,
                                          **fxq)
        context = population("context")
        self.attn_out_synapses = linear(layer.attn_out, "attn_out")
        self.attn_norm = ResidualLayerNorm(shape=(n, h), gamma=layer.attn_norm.gamma, beta=layer.attn_norm.beta,
                                           eps=p["layer_norm_eps"], residual_delay=plan.attn_residual_delay,
                                           latency=lat, lam=lam)
        attn_out = population("attn_out")
        self.intermediate_synapses = linear(layer.intermediate, "intermediate")
        self.gelu = GELU(shape=(n, p["widths"]["intermediate"]), latency=lat, lam=lam)
        intermediate = population("intermediate")
        self.output_synapses = linear(layer.output, "output")
        self.output_norm = ResidualLayerNorm(shape=(n, h), gamma=layer.output_norm.gamma,
                                             beta=layer.output_norm.beta, eps=p["layer_norm_eps"],
                                             residual_delay=plan.output_residual_delay, latency=lat,
                                             lam=lam)
        output = population("output")

        proc.in_ports.s_in.connect([self.key_synapses.s_in, self.value_synapses.s_in, self.attention.x_in,
                                    self.attn_norm.r_in])
        self.key_synapses.a_out.connect(key.a_in)
        self.value_synapses.a_out.connect(value.a_in)
        key.s_out.connect(self.attention.k_in)
        value.s_out.connect(self.attention.v_in)
        self.attention.a_out.connect(context.a_in)
        context.s_out.connect(self.attn_out_synapses.s_in)
        self.attn_out_synapses.a_out.connect(self.attn_norm.a_in)
        self.attn_norm.a_out.connect(attn_out.a_in)
        attn_out.s_out.connect([self.intermediate_synapses.s_in, self.output_norm.r_in])
        self.intermediate_synapses.a_out.connect(self.gelu.a_in)
        self.gelu.a_out.connect(intermediate.a_in)
        intermediate.s_out.connect(self.output_synapses.s_in)
        self.output_synapses.a_out.connect(self.output_norm.a_in)
        self.output_norm.a_out.connect(output.a_in)
        output.s_out.connect(proc.out_ports.s_out)
