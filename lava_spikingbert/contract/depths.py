"""Depths and delay lines of the Lava graph (pure Python; the model file records each population's depth).

The torch reference updates every population within a time step with no delay. In Lava every
synapse (connection) process adds one step: ``TokenLinear`` delivers at t+1 what it received at t,
while neurons and (with ``block_latency=0``) the current blocks pass data on within the step. A
population's *depth* ``d_p`` is the number of steps its input lags the embedding source; its Lava
spike train equals the torch train shifted by ``d_p`` (window k of the run = sentence k = steps
``k*T + d_p + [0, T)``). Paths of different depth that meet in one block are aligned with in-block
delay lines. Per layer with input population ``x`` at depth ``d`` and block latency ``l``::

    key, value   <- TokenLinear(x)                                    d + 1
    context      <- Attention(x delayed 1, key, value)                d + 1 + l
    attn_out     <- ResLN(TokenLinear(context), x delayed A)          context + 1 + l,  A = context + 1 - d
    intermediate <- GELU(TokenLinear(attn_out))                       attn_out + 1 + l
    output       <- ResLN(TokenLinear(intermediate), attn_out del. B) intermediate + 1 + l,
                                                                      B = intermediate + 1 - attn_out
    embed        <- EmbeddingSource                                   0

With ``l = 0`` a layer adds 4 steps (one per synapse hop: x -> K -> W_O -> W_1 -> W_2) and the
delays are query 1, A = 2, B = 2; with ``l = 1`` it adds 8 (A = 3, B = 3).
"""

from __future__ import annotations

from dataclasses import dataclass

from lava_spikingbert.contract.constants import EMBED, LAYER_POPULATIONS

SYNAPSE_LATENCY = 1  # TokenLinear / Dense


@dataclass(frozen=True)
class LayerPlan:
    """Depths of one layer's populations and its in-block delay lines."""

    in_depth: int
    block_latency: int

    @property
    def key(self) -> int:
        return self.in_depth + SYNAPSE_LATENCY

    value = key

    @property
    def context(self) -> int:
        return self.key + self.block_latency

    @property
    def attn_out(self) -> int:
        return self.context + SYNAPSE_LATENCY + self.block_latency

    @property
    def intermediate(self) -> int:
        return self.attn_out + SYNAPSE_LATENCY + self.block_latency

    @property
    def output(self) -> int:
        return self.intermediate + SYNAPSE_LATENCY + self.block_latency

    @property
    def query_delay(self) -> int:
        """x (depth d) meets K/V (depth d+1) in the attention block."""
        return self.key - self.in_depth

    @property
    def attention_offset(self) -> int:
        """Reference time 0 of sentence 0 at the attention inputs (selects the step's mask)."""
        return self.key

    @property
    def attn_residual_delay(self) -> int:
        """x (depth d) meets TokenLinear(context) (depth context + 1) in the first ResLN."""
        return self.context + SYNAPSE_LATENCY - self.in_depth

    @property
    def output_residual_delay(self) -> int:
        """attn_out meets TokenLinear(intermediate) (depth intermediate + 1) in the second ResLN."""
        return self.intermediate + SYNAPSE_LATENCY - self.attn_out

    def depths(self) -> dict[str, int]:
        return {p: getattr(self, p) for p in LAYER_POPULATIONS}


def layer_plans(num_layers: int, block_latency: int = 0) -> list[LayerPlan]:
    plans, d = [], 0
    for _ in range(num_layers):
        plans.append(LayerPlan(d, block_latency))
        d = plans[-1].output
    return plans


def population_depths(num_layers: int, block_latency: int = 0) -> dict[str, int]:
    """Depth of every population, in the order of ``constants.population_names``."""
    depths = {EMBED: 0}
    for i, plan in enumerate(layer_plans(num_layers, block_latency)):
        depths.update({f"layer{i}.{p}": d for p, d in plan.depths().items()})
    return depths
