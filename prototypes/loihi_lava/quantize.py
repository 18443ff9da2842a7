"""Map a float GraphSpec (float weights, thresholds, biases in weight units) to the integer
mantissas and exponents of the stock fixed-point models.

Spikes are unitless, so every population ``p`` gets its own scale ``s_p`` (integer weight
units per float unit) applied to its threshold, its bias and all its incoming weights:

* ``s_p = min(VTH_MAX / vth, A_IN_MAX / worst_case_a_in, 2**19 / (64 |bias|))``, rounded
  down to a power of two (the worst case is every presynaptic neuron spiking in one step,
  summed over all incoming edges, or the largest input current for the input population;
  ``a_in_budget`` may replace it by a measured maximum; 2**19 = 4096 << 7 is the largest
  bias);
* ``vth = round(vth * s_p)``; bias mantissa ``round(bias * s_p * 64 / 2**bias_exp)`` with the
  smallest ``bias_exp`` in [0, 7] that fits 13 bits;
* per edge ``weight_exp = ceil(log2(max|W| * s_p / 254))`` clamped to [-8, 7] and mantissas
  rounded to the 8-bit grid of the edge's sign mode (MIXED: even values in [-256, 254]).

Negative ``weight_exp`` shifts the accumulated sum right (floor) in the bit-accurate models,
so ``s_p`` large enough for ``weight_exp >= 0`` is exact up to weight rounding.
"""
import copy
import math
import typing as ty

import numpy as np

from .lowering import lower, sign_pattern
from .ranges import A_IN_MAX, BIAS_MAX, VTH_MAX, WEIGHT_EXP, worst_case_sums
from .spec import GraphSpec


def _grid(values: np.ndarray, mixed: bool) -> np.ndarray:
    """Round to the representable 8-bit mantissas (MIXED: even in [-256, 254])."""
    if mixed:
        return np.clip(2 * np.round(values / 2), -256, 254).astype(np.int64)
    return np.clip(np.round(values), -255, 255).astype(np.int64)


def population_scales(spec: GraphSpec, input_max: float,
                      a_in_budget: ty.Optional[ty.Dict[str, float]] = None) -> ty.Dict[str, float]:
    """Power-of-two scale per population (see module docstring); ``input_max`` is the
    largest |input current| of the input population in float units."""
    graph = lower(spec, 'float')
    worst = {n.name: np.zeros(n.n) for n in graph.neurons}
    for syn in graph.synapses:
        neg, pos = worst_case_sums(syn.weights, 0)
        if syn.process == 'Conv':
            neg, pos = np.tile(neg, spec.tokens), np.tile(pos, spec.tokens)
        worst[syn.dst] += np.maximum(-neg, pos)
    scales = {}
    for p, n in zip(spec.populations, graph.neurons):
        reach = input_max if p.name == spec.input else worst[p.name].max()
        reach = (a_in_budget or {}).get(p.name, reach)
        bias = np.abs(n.bias).max(initial=0)
        limits = [VTH_MAX / p.vth if p.vth > 0 else math.inf,
                  A_IN_MAX / reach if reach > 0 else math.inf,
                  (BIAS_MAX + 1) * 2 ** 7 / (64 * bias) if bias > 0 else math.inf]
        scales[p.name] = 2.0 ** math.floor(math.log2(min(limits)))
    return scales


def to_fixed(spec: GraphSpec, input_max: float,
             a_in_budget: ty.Optional[ty.Dict[str, float]] = None
             ) -> ty.Tuple[GraphSpec, ty.Dict[str, float]]:
    """Integer GraphSpec for ``precision='fixed'`` from a float one, and the scales (the
    input currents must be multiplied by ``scales[spec.input]`` and rounded)."""
    scales = population_scales(spec, input_max, a_in_budget)
    out = copy.deepcopy(spec)
    for p in out.populations:
        s = scales[p.name]
        p.vth = int(round(p.vth * s))
        bias = np.asarray(p.bias, dtype=np.float64) * 2.0 ** p.bias_exp / 64 * s * 64
        exp = 0
        while exp < 7 and np.abs(np.round(bias / 2 ** exp)).max(initial=0) > BIAS_MAX:
            exp += 1
        p.bias, p.bias_exp = np.round(bias / 2 ** exp).astype(np.int64), exp
    for e in out.edges:
        w = np.asarray(e.weight, dtype=np.float64) * 2.0 ** e.weight_exp * scales[e.dst]
        mixed = (w.min(initial=0) < 0 < w.max(initial=0)) or \
            (sign_pattern(out.pop(e.src).signed, out.pop(e.dst).signed) < 0).any()
        top = np.abs(w).max(initial=0)
        exp = math.ceil(math.log2(top / 254)) if top > 0 else 0
        exp = min(max(exp, WEIGHT_EXP[0]), WEIGHT_EXP[1])
        e.weight, e.weight_exp = _grid(w / 2.0 ** exp, mixed), exp
    return out, scales


def _demo_spec(d: int, ffn: int, signed: bool, seed: int = 0) -> GraphSpec:
    """A float 2-block mixer at a trained model's scale: vth 1, W ~ N(0, 1/fan_in)."""
    from .spec import Edge, Population
    rng = np.random.default_rng(seed)
    pops = [Population('x0', d, 1.0, bias=rng.normal(0, 0.1, d) * 64, signed=signed)]
    edges, prev = [], 'x0'
    for b in (1, 2):
        pops += [Population(f'{n}{b}', c, 1.0, bias=rng.normal(0, 0.1, c) * 64, signed=signed)
                 for n, c in (('m', d), ('h', ffn), ('o', d))]
        edges += [Edge(prev, f'm{b}', 'token_mix', rng.normal(0, 3 ** -0.5, (d, 3))),
                  Edge(prev, f'm{b}', 'residual', rng.uniform(0.5, 1, d)),
                  Edge(f'm{b}', f'h{b}', 'token_wise', rng.normal(0, d ** -0.5, (ffn, d))),
                  Edge(f'h{b}', f'o{b}', 'token_wise', rng.normal(0, ffn ** -0.5, (d, ffn))),
                  Edge(f'm{b}', f'o{b}', 'residual', rng.uniform(0.5, 1, d))]
        prev = f'o{b}'
    return GraphSpec(8, pops, edges, 'x0', prev)


def main():
    """Print the integer mapping of demo float models at the candidate sizes."""
    from .ranges import check_ranges
    for d, ffn, signed in ((192, 384, False), (256, 512, False), (256, 1024, False),
                           (384, 768, True)):
        fixed, scales = to_fixed(_demo_spec(d, ffn, signed), input_max=4.0)
        print(f'd={d} F={ffn} signed={signed}')
        for p in fixed.populations:
            into = [f'{e.kind}:exp={e.weight_exp},max|w|={int(np.abs(e.weight).max())}'
                    for e in fixed.edges if e.dst == p.name]
            print(f'  {p.name:3} scale={int(scales[p.name]):5} vth={p.vth:5} '
                  f'bias_exp={p.bias_exp}  in: {", ".join(into)}')
        print('  check_ranges:', check_ranges(fixed) or 'OK')


if __name__ == '__main__':
    main()
