"""Graph specification of a spiking mixer model and its timing model.

A model is a DAG of populations over a token axis of length ``tokens`` (L). Every population
holds ``L x channels`` IF neurons (``2 x`` for signed coding: an on and an off neuron per
unit); the neuron index of (token ``l``, channel ``c``, sign ``s``) is ``(l * C + c) * S + s``.
Edges are static synapses of three kinds:

* ``token_mix``: depthwise convolution over tokens; ``weight`` is ``(C, k)`` in correlation
  order (torch ``Conv1d`` convention): centred ``out[l] = sum_j w[j] in[l + j - (k-1)/2]``,
  causal ``out[l] = sum_j w[j] in[l + j - (k-1)]``.
* ``token_wise``: the same ``(C_out, C_in)`` matrix at every token (channel mixer).
* ``residual``: per-channel gain ``(C,)`` from a population to one with the same channels.

Units: weights are integer mantissas scaled by ``2**weight_exp``; ``vth`` and input currents
are in the same weight units; the bias is ``bias * 2**bias_exp / 64`` weight units (Loihi
shifts synaptic input and threshold by 6 bits, but not the bias). A float model uses the
same numbers with float mantissas.

Timing (measured in FINDINGS.md): a synapse process delivers at step t+1 what it received at
step t; the input current reaches the input population without delay. ``depths`` gives each
population's depth (longest path in hops from the input); an edge from depth ``a`` into depth
``b`` gets ``delay = b - a - 1`` extra steps so that all inputs of a population are aligned.
"""
from dataclasses import dataclass, field
import typing as ty

import numpy as np

EDGE_KINDS = ('token_mix', 'token_wise', 'residual')


@dataclass
class Population:
    """``L x channels`` IF neurons (LIF with du=4095, dv=0 in fixed point)."""
    name: str
    channels: int
    vth: float
    bias: ty.Union[float, np.ndarray] = 0
    bias_exp: int = 0
    signed: bool = False

    @property
    def signs(self) -> int:
        return 2 if self.signed else 1


@dataclass
class Edge:
    """A static synapse from population ``src`` into population ``dst``."""
    src: str
    dst: str
    kind: str
    weight: np.ndarray
    weight_exp: int = 0
    causal: bool = False

    def __post_init__(self):
        if self.kind not in EDGE_KINDS:
            raise ValueError(f'edge {self.src}->{self.dst}: unknown kind {self.kind!r}')


@dataclass
class GraphSpec:
    """Populations, edges, the population driven by the input and the one read out."""
    tokens: int
    populations: ty.List[Population]
    edges: ty.List[Edge]
    input: str
    output: str
    meta: dict = field(default_factory=dict)

    def pop(self, name: str) -> Population:
        for p in self.populations:
            if p.name == name:
                return p
        raise KeyError(name)

    def size(self, name: str) -> int:
        """Number of neurons of population ``name``."""
        p = self.pop(name)
        return self.tokens * p.channels * p.signs


def depths(spec: GraphSpec) -> ty.Dict[str, int]:
    """Depth of every population: longest path (in synapse hops) from the input population.

    Raises if the graph has a cycle or a population the input does not reach.
    """
    incoming = {p.name: [e for e in spec.edges if e.dst == p.name] for p in spec.populations}
    depth: ty.Dict[str, int] = {}

    def visit(name: str, stack: ty.Tuple[str, ...]) -> int:
        if name in stack:
            raise ValueError(f'cycle through population {name!r}')
        if name not in depth:
            if name == spec.input:
                if incoming[name]:
                    raise ValueError(f'input population {name!r} must have no incoming edge')
                depth[name] = 0
            elif not incoming[name]:
                raise ValueError(f'population {name!r} is not reached from the input')
            else:
                depth[name] = 1 + max(visit(e.src, stack + (name,)) for e in incoming[name])
        return depth[name]

    for p in spec.populations:
        visit(p.name, ())
    return depth


def edge_delays(spec: GraphSpec) -> ty.List[int]:
    """Extra delay of every edge (0 on the longest path) that aligns all inputs of a population."""
    d = depths(spec)
    return [d[e.dst] - d[e.src] - 1 for e in spec.edges]


def receptive_field(spec: GraphSpec) -> ty.Tuple[int, int]:
    """(left, right) reach in tokens of the output population back onto the input: positions
    farther than this from a token cannot influence it."""
    reach: ty.Dict[str, ty.Tuple[int, int]] = {spec.input: (0, 0)}
    for name in sorted(depths(spec), key=depths(spec).get):
        for e in spec.edges:
            if e.dst != name:
                continue
            left, right = reach[e.src]
            if e.kind == 'token_mix':
                k = e.weight.shape[1]
                left, right = (left + k - 1, right) if e.causal else \
                    (left + (k - 1) // 2, right + (k - 1) // 2)
            old = reach.get(name, (0, 0))
            reach[name] = (max(old[0], left), max(old[1], right))
    return reach[spec.output]
