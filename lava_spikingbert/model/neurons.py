"""Neuron kinds: one-step dynamics for the simulation and the steady-state rate for training.

Every kind has

* ``step(v, current, spike_fn)``: one time step of the membrane ``v`` driven by ``current``;
  returns the new membrane and the binary spikes;
* ``rate(current)``: the differentiable steady-state map ``a = g(I)`` the equilibrium gradients
  flow through (the average spiking rate a population converges to under a constant current);
* ``rate_exact(current)``: the rate the simulation really converges to for a constant current
  (equal to ``rate`` for the paper's neuron; a staircase for Lava's reset-to-zero LIF);
* ``initial_state(like)``: the resting membrane state for a population shaped like ``like``;
* ``run_steps(v, currents, out)``: ``step`` over the leading (time) dim of ``currents`` without
  autograd, in place on ``v``, spikes written into ``out`` (which may be ``currents`` itself):
  the simulator's inner loop, bit-identical to calling ``step`` per time step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

SpikeFn = Callable[[torch.Tensor, bool], torch.Tensor]


def heaviside(x: torch.Tensor, strict: bool) -> torch.Tensor:
    """Spike where ``x >= 0`` (``x > 0`` if strict), as a float tensor of 0/1."""
    return (x > 0).to(x.dtype) if strict else (x >= 0).to(x.dtype)


class _AtanSurrogate(torch.autograd.Function):
    """Heaviside forward, arctan-shaped pseudo-derivative backward (for the BPTT baseline only)."""

    alpha = 2.0

    @staticmethod
    def forward(ctx, x: torch.Tensor, strict: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return heaviside(x, strict)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        a = _AtanSurrogate.alpha
        return grad * (a / 2) / (1 + (math.pi / 2 * a * x) ** 2), None


def surrogate_spike(x: torch.Tensor, strict: bool) -> torch.Tensor:
    return _AtanSurrogate.apply(x, strict)


class _ThresholdNeuron:
    """What every neuron kind shares: one threshold ``vth`` and a resting membrane of zeros."""

    def __init__(self, vth: float) -> None:
        self.vth = float(vth)

    def initial_state(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(like)


class IFSubtract(_ThresholdNeuron):
    """The paper's neuron: integrate-and-fire, ``u >= vth`` fires, reset by subtracting ``vth``.

    With a constant current I the charge identity ``vth * spikes(T) = T*I - u(T)`` with
    ``0 <= u < vth`` gives ASR = clamp(I / vth, 0, 1) within 1/T.
    """

    name = "if_subtract"
    strict = False  # fires on u >= vth
    signed = False  # spikes are 0/1

    def step(self, v: torch.Tensor, current: torch.Tensor, spike_fn: SpikeFn = heaviside):
        v = v + current
        s = spike_fn(v - self.vth, self.strict)
        return v - self.vth * s, s

    def run_steps(self, v: torch.Tensor, currents: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # ``v + I`` rounds as in ``step``; ``v >= vth`` is exactly ``v - vth >= 0`` (IEEE subtraction
        # keeps the sign); subtracting ``vth * s`` subtracts exactly vth or 0
        for t in range(currents.shape[0]):
            s = out[t]
            v.add_(currents[t])
            torch.ge(v, self.vth, out=s)
            v.sub_(s, alpha=self.vth)
        return out

    def rate(self, current: torch.Tensor) -> torch.Tensor:
        return torch.clamp(current / self.vth, 0.0, 1.0)

    def rate_exact(self, current: torch.Tensor) -> torch.Tensor:
        return self.rate(current)


class LIFResetZero(_ThresholdNeuron):
    """Lava's stock LIF used as an IF neuron (du=1, dv=0): ``v > vth`` fires, reset to zero.

    A constant current I > 0 fires once every ``floor(vth/I) + 1`` steps: the exact rate is a
    staircase with zero derivative almost everywhere. ``rate`` is its smooth mid-step version
    ``I / (vth + I/2)`` (exact at every step's midpoint, slope 1/vth at 0, reaches 1 at 2*vth),
    which is what a model trained for this neuron differentiates through.
    """

    name = "lif_reset_zero"
    strict = True  # fires on v > vth
    signed = False

    def step(self, v: torch.Tensor, current: torch.Tensor, spike_fn: SpikeFn = heaviside):
        v = v + current
        s = spike_fn(v - self.vth, self.strict)
        return v * (1 - s), s

    def run_steps(self, v: torch.Tensor, currents: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        for t in range(currents.shape[0]):
            s = out[t]
            v.add_(currents[t])
            torch.gt(v, self.vth, out=s)
            v.addcmul_(v, s, value=-1.0)  # v * (1 - s): exactly 0 after a spike
        return out

    def rate(self, current: torch.Tensor) -> torch.Tensor:
        drive = torch.relu(current)
        return torch.clamp(drive / (self.vth + 0.5 * drive), max=1.0)

    def rate_exact(self, current: torch.Tensor) -> torch.Tensor:
        positive = current > 0
        safe = torch.where(positive, current, torch.ones_like(current))
        period = torch.floor(self.vth / safe) + 1
        return torch.where(positive, 1.0 / period, torch.zeros_like(current))


class IFSignedPair(_ThresholdNeuron):
    """Signed rate coding with two of the paper's neurons per unit: an "on" IF neuron driven by
    ``+I`` and an "off" one driven by ``-I`` (both fire on ``u >= vth``, reset by subtraction).
    The unit's output spike is ``s_on - s_off`` in {-1, 0, 1}, so its ASR is
    ``clamp(I / vth, -1, 1)`` within 1/T: the negative half of a LayerNorm output, which a single
    neuron's [0, 1] rate loses, is carried by the off neuron. On Lava each unit is two LIF
    neurons, and a synapse from the unit is a pair of weights ``(+W, -W)``.

    The membrane state has a leading dim of 2: (on, off). The two never fire in the same step
    (``v_on + v_off`` starts at 0 and only falls, so both cannot reach ``vth > 0``).
    """

    name = "if_signed_pair"
    strict = False
    signed = True  # spikes are -1/0/1

    def initial_state(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros((2, *like.shape), dtype=like.dtype, device=like.device)

    def step(self, v: torch.Tensor, current: torch.Tensor, spike_fn: SpikeFn = heaviside):
        v = v + torch.stack((current, -current))
        s = spike_fn(v - self.vth, self.strict)
        return v - self.vth * s, s[0] - s[1]

    def run_steps(self, v: torch.Tensor, currents: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        v_on, v_off = v[0], v[1]  # views: updated in place
        s_off = torch.empty_like(v_off)
        for t in range(currents.shape[0]):
            v_on.add_(currents[t])
            v_off.sub_(currents[t])
            torch.ge(v_off, self.vth, out=s_off)
            v_off.sub_(s_off, alpha=self.vth)
            s = out[t]  # may alias currents[t], which is no longer needed
            torch.ge(v_on, self.vth, out=s)
            v_on.sub_(s, alpha=self.vth)
            s.sub_(s_off)
        return out

    def rate(self, current: torch.Tensor) -> torch.Tensor:
        return torch.clamp(current / self.vth, -1.0, 1.0)

    def rate_exact(self, current: torch.Tensor) -> torch.Tensor:
        return self.rate(current)


NEURONS = {cls.name: cls for cls in (IFSubtract, LIFResetZero, IFSignedPair)}


def time_chunks(t_conv: int, chunk: int, stops=()) -> list[tuple[int, int]]:
    """``(first step, steps)`` of the chunks a ``t_conv``-step simulation runs in: ``chunk`` steps
    at a time, also cut at every step count in ``stops`` so the counts can be read there.

    The network starts at rest and its input is constant in time, so the first ``t`` steps of a
    longer simulation are exactly a ``t``-step simulation: one run of ``max(stops)`` steps gives the
    result at every ``t`` in ``stops``."""
    cuts = sorted({t for t in range(0, t_conv, max(1, int(chunk)))} | {int(t) for t in stops if 0 < t < t_conv})
    return [(t0, t1 - t0) for t0, t1 in zip(cuts, cuts[1:] + [t_conv])]


def make_neuron(kind: str, vth: float):
    try:
        return NEURONS[kind](vth)
    except KeyError:
        raise ValueError(f"unknown neuron kind {kind!r}; choose one of {sorted(NEURONS)}") from None
