"""Example mixer-model specs (random weights) used by the parity and speed scripts.

``mixer_spec`` builds the block layout recommended in FINDINGS.md:

    x0 (input) -> per block b:
        m_b = IF( token_mix(x_{b-1}) + residual(x_{b-1}) )          # depthwise conv over tokens
        h_b = IF( W1_b m_b )                                         # token-wise d -> F
        o_b = IF( W2_b h_b + residual(m_b, delayed by 1 step) )     # token-wise F -> d
"""
import numpy as np

from .spec import Edge, GraphSpec, Population


def mixer_spec(tokens: int, d: int, ffn: int, blocks: int, kernel: int = 3,
               causal: bool = False, signed: bool = False, precision: str = 'fixed',
               seed: int = 0, residual: bool = True) -> GraphSpec:
    """A random mixer model: integer mantissas in the 8-bit range for ``'fixed'``, normal
    floats for ``'float'``. Thresholds and biases are set for moderate firing rates."""
    rng = np.random.default_rng(seed)

    def weights(shape, exp):
        if precision == 'fixed':
            return rng.integers(-40, 41, size=shape), exp
        return rng.normal(0, 40 / np.sqrt(3), size=shape) * 2.0 ** exp, 0

    def gains(c):
        return (rng.integers(20, 60, size=c), 0) if precision == 'fixed' else \
            (rng.uniform(20, 60, size=c), 0)

    def pop(name, c, vth):
        bias = rng.integers(-600, 2000, size=c) if precision == "fixed" else \
            rng.uniform(-600, 2000, size=c)
        return Population(name, c, vth=vth, bias=bias, bias_exp=1, signed=signed)

    pops = [pop('x0', d, 100)]
    edges = []
    prev = 'x0'
    for b in range(1, blocks + 1):
        m, h, o = f'm{b}', f'h{b}', f'o{b}'
        pops += [pop(m, d, 100), pop(h, ffn, 100), pop(o, d, 100)]
        w, e = weights((d, kernel), 0)
        edges.append(Edge(prev, m, 'token_mix', w, e, causal=causal))
        if residual:
            g, e = gains(d)
            edges.append(Edge(prev, m, 'residual', g, e))
        w, e = weights((ffn, d), -1)
        edges.append(Edge(m, h, 'token_wise', w, e))
        w, e = weights((d, ffn), 1)
        edges.append(Edge(h, o, 'token_wise', w, e))
        if residual:
            g, e = gains(d)
            edges.append(Edge(m, o, 'residual', g, e))
        prev = o
    return GraphSpec(tokens=tokens, populations=pops, edges=edges, input='x0', output=prev)


def random_inputs(spec: GraphSpec, windows: int, precision: str = 'fixed',
                  seed: int = 1) -> np.ndarray:
    """Per-window input currents (weight units) for the input population."""
    rng = np.random.default_rng(seed)
    p = spec.pop(spec.input)
    x = rng.integers(-60, 160, size=(windows, spec.tokens, p.channels))
    if precision == 'float':
        x = x + rng.uniform(0, 1, size=x.shape)
    signs = np.array([1, -1][:p.signs])
    return (x[..., None] * signs).reshape(windows, -1)
