"""Static check of a fixed-point GraphSpec against the Loihi 2 ranges of the stock models.

The CPU models do not saturate (a 16-bit ``a_out``/``a_in`` carries any int32), so this
check must. Ranges (``lava/proc/*/models.py`` LavaPyType precisions and clip code):

* weights: 8-bit mantissa by sign mode of the whole matrix (after the on/off sign pattern):
  MIXED even in [-256, 254], EXCITATORY [0, 255], INHIBITORY [-255, 0]; ``weight_exp`` in
  [-8, 7]. ``Conv`` in the simulator ignores ``weight_exp`` (must be 0) and its int8
  ``groups`` Var silently wraps for groups >= 128 (output all zero).
* dendritic sum (``a_out``/``a_in``) 16-bit signed: checked for the worst case (every
  presynaptic neuron spikes in the same step) over all edges into a population, plus the
  input current.
* ``vth`` 17-bit unsigned (``vth << 6 < 2**23``); ``bias`` 13-bit signed mantissa,
  ``bias_exp`` in [0, 7]. ``u = a_in << 6`` cannot wrap once a_in is 16-bit. ``v`` saturates
  at +-(2**23 - 1): harmless at the top (the neuron still spikes and resets), data-dependent
  at the bottom (a strongly inhibited neuron: fixed and float differ) and not checked here.
* delays (DelaySparse) <= 63.
"""
import typing as ty

import numpy as np
import scipy.sparse as sps

from .lowering import lower
from .spec import GraphSpec

A_IN_MAX = 2 ** 15 - 1
VTH_MAX = 2 ** 17 - 1
BIAS_MAX = 2 ** 12 - 1
WEIGHT_EXP = (-8, 7)
DELAY_MAX = 63
CONV_GROUPS_MAX = 127


def worst_case_sums(weights, weight_exp: int) -> ty.Tuple[np.ndarray, np.ndarray]:
    """Per target neuron: (most negative, most positive) dendritic sum of one step."""
    w = weights if sps.issparse(weights) else np.asarray(weights)
    if not sps.issparse(w) and w.ndim == 4:  # Conv kernel: per output channel
        flat = w.reshape(w.shape[0], -1)
        pos, neg = np.clip(flat, 0, None).sum(1), np.clip(flat, None, 0).sum(1)
    else:
        pos = np.asarray(w.maximum(0).sum(1)).ravel() if sps.issparse(w) else \
            np.clip(w, 0, None).sum(1)
        neg = np.asarray(w.minimum(0).sum(1)).ravel() if sps.issparse(w) else \
            np.clip(w, None, 0).sum(1)
    scale = 2.0 ** weight_exp
    return np.floor(neg * scale), np.floor(pos * scale)


def check_ranges(spec: GraphSpec, inputs: ty.Optional[np.ndarray] = None) -> ty.List[str]:
    """Violations of the Loihi 2 ranges, one line each naming the population or edge and
    the offending value; empty if the spec fits. ``inputs``: (windows, neurons) currents."""
    problems: ty.List[str] = []
    graph = lower(spec, 'fixed')
    lo = {n.name: np.zeros(n.n) for n in graph.neurons}
    hi = {n.name: np.zeros(n.n) for n in graph.neurons}
    for syn in graph.synapses:
        where = f'edge {syn.name} ({syn.process})'
        values = syn.weights.data if sps.issparse(syn.weights) else np.ravel(syn.weights)
        if values.size:
            if values.min() >= 0:
                mode, bad = 'EXCITATORY', values[(values < 0) | (values > 255)]
            elif values.max() <= 0:
                mode, bad = 'INHIBITORY', values[(values > 0) | (values < -255)]
            else:
                mode, bad = 'MIXED', values[(values % 2 != 0) | (values < -256) | (values > 254)]
            if bad.size and syn.process != 'Conv':
                problems.append(f'{where}: weight {int(bad[0])} not representable in 8-bit '
                                f'{mode} mode ({bad.size} such weights)')
            if syn.process == 'Conv' and (values.min() < -256 or values.max() > 255):
                problems.append(f'{where}: weight {int(np.abs(values).max())} exceeds 8 bits')
        if not WEIGHT_EXP[0] <= syn.weight_exp <= WEIGHT_EXP[1]:
            problems.append(f'{where}: weight_exp {syn.weight_exp} outside {list(WEIGHT_EXP)}')
        if syn.process == 'Conv' and syn.weight_exp != 0:
            problems.append(f'{where}: weight_exp {syn.weight_exp} != 0 is ignored by the '
                            f'Conv simulator model')
        if syn.process == 'Conv' and syn.conv['groups'] > CONV_GROUPS_MAX:
            problems.append(f'{where}: groups {syn.conv["groups"]} > {CONV_GROUPS_MAX} wraps the '
                            f'simulator\'s int8 groups Var (output silently zero)')
        if syn.delay > DELAY_MAX:
            problems.append(f'{where}: delay {syn.delay} > {DELAY_MAX}')
        neg, pos = worst_case_sums(syn.weights, syn.weight_exp)
        if syn.process == 'Conv':
            L = spec.tokens
            neg, pos = np.tile(neg, L), np.tile(pos, L)
        lo[syn.dst] += neg
        hi[syn.dst] += pos
    if inputs is not None:
        x = np.asarray(inputs)
        lo[spec.input] += x.min(0)
        hi[spec.input] += x.max(0)
    for n in graph.neurons:
        pop = spec.pop(n.name)
        where = f'population {n.name}'
        if float(pop.vth) != int(pop.vth) or not 0 <= pop.vth <= VTH_MAX:
            problems.append(f'{where}: vth {pop.vth} not an integer in [0, {VTH_MAX}]')
        bias = np.asarray(pop.bias)
        if not np.array_equal(bias, np.round(bias)) or np.abs(bias).max() > BIAS_MAX + 1 \
                or bias.max() > BIAS_MAX:
            problems.append(f'{where}: bias mantissa {bias.flat[np.abs(bias).argmax()]} '
                            f'outside 13 bits [-4096, 4095]')
        if not 0 <= pop.bias_exp <= 7:
            problems.append(f'{where}: bias_exp {pop.bias_exp} outside [0, 7]')
        worst = max(-lo[n.name].min(), hi[n.name].max())
        if worst > A_IN_MAX:
            i = int(np.argmax(np.maximum(-lo[n.name], hi[n.name])))
            problems.append(f'{where}: worst-case a_in {int(worst)} at neuron {i} exceeds '
                            f'16 bits ({A_IN_MAX})')
    return problems
