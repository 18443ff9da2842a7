"""Lower a GraphSpec to the parameters of stock Lava processes (and of the reference).

Every population becomes one ``LIFReset`` process of ``L * C * S`` neurons, every edge one
synapse process:

=============  ===========================================  ===============================
edge kind      ``'sparse'`` (default)                        alternatives
=============  ===========================================  ===============================
token_mix      banded ``Sparse`` (``DelaySparse`` if delayed)  ``Conv`` depthwise (groups=C)
token_wise     block-diagonal ``Sparse`` = kron(I_L, W)        ``Conv`` 1x1, ``Dense`` kron
residual       diagonal ``Sparse`` / ``DelaySparse``            none
=============  ===========================================  ===============================

Signed populations (on/off pairs) live in one process; an edge gets the sign pattern
``[[1, -1], [-1, 1]]`` (both signed), ``[[1, -1]]`` (signed source) or ``[[1], [-1]]``
(signed target) Kronecker-multiplied into every channel block.

``precision='fixed'`` keeps integer mantissas and exponents (what the bit-accurate models
get); ``precision='float'`` folds exponents into float weights, the bias into weight units
(``bias * 2**bias_exp / 64``) and uses ``du=1`` (float LIF semantics of "current = input").
"""
from dataclasses import dataclass
import typing as ty

import numpy as np
import scipy.sparse as sps

from .spec import Edge, GraphSpec, depths, edge_delays

FIXED_DU, FIXED_DV = 4095, 0
FLOAT_DU, FLOAT_DV = 1.0, 0.0


@dataclass
class NeuronParams:
    """Parameters of one LIFReset process."""
    name: str
    n: int
    vth: float
    bias: np.ndarray
    bias_exp: int
    du: float
    dv: float
    depth: int


@dataclass
class SynapseParams:
    """Parameters of one synapse process: ``process`` is Sparse, DelaySparse, Conv or Dense."""
    name: str
    src: str
    dst: str
    process: str
    weights: ty.Union[sps.csr_matrix, np.ndarray]
    weight_exp: int
    delay: int
    conv: ty.Optional[dict]
    edge: Edge

    @property
    def synapses(self) -> int:
        """Stored synapses (Conv: kernel entries, i.e. with weight sharing)."""
        if sps.issparse(self.weights):
            return int(self.weights.nnz)
        return int(np.count_nonzero(self.weights))


@dataclass
class LoweredGraph:
    spec: GraphSpec
    precision: str
    neurons: ty.List[NeuronParams]
    synapses: ty.List[SynapseParams]

    @property
    def depth(self) -> int:
        return max(n.depth for n in self.neurons)

    def neuron(self, name: str) -> NeuronParams:
        return next(n for n in self.neurons if n.name == name)


def sign_pattern(src_signed: bool, dst_signed: bool) -> np.ndarray:
    """(S_dst, S_src) matrix applied inside every channel block of a signed edge."""
    rows = [1, -1] if dst_signed else [1]
    cols = [1, -1] if src_signed else [1]
    return np.outer(rows, cols)


def lower(spec: GraphSpec, precision: str = 'fixed', token_mix: str = 'sparse',
          token_wise: str = 'sparse') -> LoweredGraph:
    """Lower ``spec``; ``token_mix`` in {'sparse', 'conv'}, ``token_wise`` in
    {'sparse', 'conv', 'dense'}."""
    if precision not in ('fixed', 'float'):
        raise ValueError(f'precision must be fixed or float, not {precision!r}')
    depth = depths(spec)
    neurons = [_lower_population(spec, p.name, precision, depth[p.name])
               for p in spec.populations]
    synapses = []
    for edge, delay in zip(spec.edges, edge_delays(spec)):
        impl = {'token_mix': token_mix, 'token_wise': token_wise, 'residual': 'sparse'}[edge.kind]
        synapses.append(_lower_edge(spec, edge, delay, impl, precision))
    return LoweredGraph(spec, precision, neurons, synapses)


def _lower_population(spec: GraphSpec, name: str, precision: str, depth: int) -> NeuronParams:
    p = spec.pop(name)
    signs = np.array([1, -1][:p.signs])
    bias_c = np.broadcast_to(np.asarray(p.bias), (p.channels,))
    bias = np.tile(np.outer(bias_c, signs).ravel(), spec.tokens)
    if precision == 'fixed':
        return NeuronParams(name, bias.size, p.vth, bias.astype(np.int64), p.bias_exp,
                            FIXED_DU, FIXED_DV, depth)
    return NeuronParams(name, bias.size, float(p.vth),
                        bias.astype(np.float64) * 2.0 ** p.bias_exp / 64, 0,
                        FLOAT_DU, FLOAT_DV, depth)


def _lower_edge(spec: GraphSpec, edge: Edge, delay: int, impl: str,
                precision: str) -> SynapseParams:
    src, dst = spec.pop(edge.src), spec.pop(edge.dst)
    sign = sign_pattern(src.signed, dst.signed)
    weight = np.asarray(edge.weight)
    weight_exp = edge.weight_exp
    if precision == 'float':
        weight, weight_exp = weight.astype(np.float64) * 2.0 ** weight_exp, 0
    else:
        if not np.array_equal(weight, np.round(weight)):
            raise ValueError(f'edge {edge.src}->{edge.dst}: fixed point needs integer weights')
        weight = weight.astype(np.int32)
    name = f'{edge.src}->{edge.dst}:{edge.kind}'
    L = spec.tokens
    if edge.kind == 'token_mix':
        if src.channels != dst.channels:
            raise ValueError(f'{name}: token_mix needs equal channel counts')
        if impl == 'conv':
            if delay:
                raise ValueError(f'{name}: Conv has no delay; put token mixers on the longest path')
            w, conv = _depthwise_conv(weight, edge.causal, sign, L)
            return SynapseParams(name, edge.src, edge.dst, 'Conv', w, weight_exp, 0, conv, edge)
        matrix = _banded(weight, edge.causal, sign, L)
    elif edge.kind == 'token_wise':
        if weight.shape != (dst.channels, src.channels):
            raise ValueError(f'{name}: token_wise weight must be (C_dst, C_src)')
        block = np.kron(weight, sign)
        if impl == 'conv':
            conv = dict(input_shape=(L, 1, block.shape[1]), padding=(0, 0), groups=1)
            return SynapseParams(name, edge.src, edge.dst, 'Conv', block[:, None, None, :],
                                 weight_exp, 0, conv, edge)
        if impl == 'dense':
            if delay:
                raise ValueError(f'{name}: use Sparse for delayed edges')
            return SynapseParams(name, edge.src, edge.dst, 'Dense', np.kron(np.eye(L, dtype=block.dtype), block),
                                 weight_exp, 0, None, edge)
        matrix = sps.kron(sps.identity(L, dtype=block.dtype), sps.csr_matrix(block))
    else:
        if src.channels != dst.channels or weight.shape != (src.channels,):
            raise ValueError(f'{name}: residual needs equal channels and a (C,) gain')
        block = np.kron(np.diag(weight), sign)
        matrix = sps.kron(sps.identity(L, dtype=block.dtype), sps.csr_matrix(block))
    matrix = sps.csr_matrix(matrix)
    matrix.eliminate_zeros()
    process = 'DelaySparse' if delay else 'Sparse'
    return SynapseParams(name, edge.src, edge.dst, process, matrix, weight_exp, delay, None, edge)


def _centred_taps(weight: np.ndarray, causal: bool) -> np.ndarray:
    """Kernel of odd length K in centred correlation order equivalent to ``weight``."""
    k = weight.shape[1]
    if causal:
        return np.concatenate([weight, np.zeros((weight.shape[0], k - 1), weight.dtype)], 1)
    if k % 2 == 0:
        raise ValueError('a centred token mixer needs an odd kernel')
    return weight


def _banded(weight: np.ndarray, causal: bool, sign: np.ndarray, L: int) -> sps.csr_matrix:
    """Token-mixing matrix: block (l, l + j - p) = diag(taps[:, j]) (x) sign."""
    taps = _centred_taps(weight, causal)
    C, K = taps.shape
    p = (K - 1) // 2
    So, Si = sign.shape
    rows, cols, vals = [], [], []
    c = np.arange(C)
    for j in range(K):
        for l in range(L):
            m = l + j - p
            if not 0 <= m < L or not np.any(taps[:, j]):
                continue
            for o in range(So):
                for i in range(Si):
                    rows.append((l * C + c) * So + o)
                    cols.append((m * C + c) * Si + i)
                    vals.append(taps[:, j] * sign[o, i])
    n_out, n_in = L * C * So, L * C * Si
    if not rows:
        return sps.csr_matrix((n_out, n_in), dtype=weight.dtype)
    return sps.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n_out, n_in))


def _depthwise_conv(weight: np.ndarray, causal: bool, sign: np.ndarray,
                    L: int) -> ty.Tuple[np.ndarray, dict]:
    """Lava Conv kernel (C*So, K, 1, Si) with groups=C: Lava convolves (flips the kernel)."""
    taps = _centred_taps(weight, causal)
    C, K = taps.shape
    So, Si = sign.shape
    kernel = np.zeros((C * So, K, 1, Si), dtype=taps.dtype)
    for o in range(So):
        for i in range(Si):
            kernel[o::So, :, 0, i] = taps[:, ::-1] * sign[o, i]
    conv = dict(input_shape=(L, 1, C * Si), padding=((K - 1) // 2, 0), groups=C)
    return kernel, conv
