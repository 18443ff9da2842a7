"""The facts every layer shares: population and synapse names, neuron kinds, weight modes, the
attention mask value and the Loihi 2 fixed-point limits. Each is written here once; the torch
model, the exporter, the fixed-point reference and the Lava runtime import them from here.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------ the graph
EMBED = "embed"  # the embedding population (driven by the embedding current)
# the six integrate-and-fire populations of one encoder layer, in update order
LAYER_POPULATIONS = ("key", "value", "context", "attn_out", "intermediate", "output")
# the token-wise synapses of one encoder layer (query feeds the attention block, the others a population or block)
LAYER_SYNAPSES = ("query", "key", "value", "attn_out", "intermediate", "output")


def population_names(num_layers: int, layer_populations: tuple[str, ...] = LAYER_POPULATIONS) -> list[str]:
    """All populations in update order: ``embed``, then ``layer{i}.{p}`` for each of the layer's
    populations (the paper profile's ``key, ..., output`` unless ``layer_populations`` says otherwise)."""
    return [EMBED] + [f"layer{i}.{p}" for i in range(num_layers) for p in layer_populations]


# the loihi profile (stock Lava processes only): three populations per mixer layer, in update
# order: the token mixer's output, the channel mixer's hidden population, and the layer's output
MIXER_LAYER_POPULATIONS = ("mix", "hidden", "out")


def output_population(num_layers: int) -> str:
    """The population whose [CLS] rate the classifier reads: the last layer's output."""
    return f"layer{num_layers - 1}.output"


# ------------------------------------------------------------------------------ neurons
NEURON_KINDS = ("if_subtract", "lif_reset_zero", "if_signed_pair")
# neuron kinds whose unit is an on and an off neuron (spikes -1/0/1), and those that reset by
# subtraction (no stock Loihi 2 model)
SIGNED_NEURONS = ("if_signed_pair",)
SUBTRACTIVE_NEURONS = ("if_subtract", "if_signed_pair")

# ------------------------------------------------------------------------------ weights
WEIGHT_MODES = ("fp32", "int8", "ternary", "binary")  # also the model file's precisions
QUANTIZED_MODES = ("int8", "ternary", "binary")
SIGN_MODES = ("mixed", "excitatory", "inhibitory")

# additive attention-mask value of a padded key; exp() of it is exactly 0 in float32/float64.
# The model file records the value it was exported with, and its readers use the file's value.
MASK_NEGATIVE = -10000.0

# ------------------------------------------------------------------------------ Loihi 2 fixed point
# (lava-nc 0.10.0; docs/fixed_point.md)
# Lava Dense weight mantissas per sign mode (lava.utils.weightutils: 8 bits; MIXED keeps even values only)
MANT_RANGE = {"mixed": (-256, 254), "excitatory": (0, 255), "inhibitory": (-255, 0)}
BIAS_MANT_MIN, BIAS_MANT_MAX = -4096, 4095  # 13-bit signed
BIAS_EXP_MIN, BIAS_EXP_MAX = 0, 7
VTH_MANT_MAX = 2 ** 17 - 1  # 17-bit unsigned; vth_mant << 6 must stay below 2**23
UV_MAX = 2 ** 23 - 1  # 24-bit signed state (v saturates at +-UV_MAX)
ACT_SHIFT = 6  # a_in << 6, vth << 6
BLOCK_OUT_MAX = 2 ** 17 - 1  # current-block outputs are clamped to +-BLOCK_OUT_MAX (a << 6 fits 24 bits)
DEFAULT_SCALE_EXP = 10  # vth_mant = 2**10

# ------------------------------------------------------------------------------ the loihi profile (stock processes)
# (lava-nc 0.10.0 bit-accurate LIF/Sparse models; docs/model_file.md "profile loihi")
A_IN_MAX = 2 ** 15 - 1  # 16-bit signed dendritic sum (Sparse a_out, LIF a_in)
WEIGHT_EXP_MIN, WEIGHT_EXP_MAX = -8, 7  # synapse weight exponent
DELAY_MAX = 63  # DelaySparse: 6-bit delays
# the LIF as an integrate-and-fire neuron: the current decays fully each step (u = a_in), no leak on v
IF_DU_FIXED, IF_DV_FIXED = 4095, 0
IF_DU_FLOAT, IF_DV_FLOAT = 1.0, 0.0
# synapse kinds of the loihi profile: depthwise token mixing (banded), token-wise channel mixing
# (block-diagonal), per-channel residual gain (diagonal)
LOIHI_SYNAPSE_KINDS = ("token_mix", "channel", "residual")
# the loihi profile's host readout: how the last population's rates are pooled over a sentence's valid
# tokens (config "readout") -> the model file's /readout "pooling" attribute. The classifier reads
# the poolings side by side (mean first). Models and files from before the choice pool by the mean.
LOIHI_POOLINGS = {"mean": "mean_over_valid_tokens", "max": "max_over_valid_tokens",
                  "mean_max": "mean_and_max_over_valid_tokens"}
LOIHI_POOLING_PARTS = {"mean": ("mean",), "max": ("max",), "mean_max": ("mean", "max")}  # in the classifier's order
LOIHI_POOLING_BEFORE_CHOICE = "mean"


def pooled_width(readout: str, width: int) -> int:
    """Values the classifier reads for a population of ``width`` neurons per token: ``width`` per pooling."""
    return width * len(LOIHI_POOLING_PARTS[readout])

# ------------------------------------------------------------------------------ Lava processes per profile
# The Lava process class each part of a profile's graph is built from (paper: lava.builder;
# loihi: lava.loihi_graph; tests compare these names with the compiled graphs). Only processes from
# the stock libraries have Loihi 2 neurocore models; the reports count the shares from these names.
STOCK_PREFIXES = ("lava.proc.", "lava.lib.dl.")
LAVA_PROCESSES = {
    "paper": {"population": "lava_spikingbert.lava.procs.ifneuron.IFNeuron",
              "connection": "lava_spikingbert.lava.procs.token_linear.TokenLinear",
              # the query synapse is part of the attention block's process
              "attention_query": "lava_spikingbert.lava.procs.spiking_attention.SpikingAttention"},
    "loihi": {"population": "lava.proc.lif.process.LIFReset", "synapse": "lava.proc.sparse.process.Sparse",
              "delayed_synapse": "lava.proc.sparse.process.DelaySparse"},
}


def is_stock_process(qualified_name: str) -> bool:
    """Whether a process class (module-qualified name) comes from lava-nc or lava-dl."""
    return qualified_name.startswith(STOCK_PREFIXES)
