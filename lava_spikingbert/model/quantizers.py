"""Weight quantizers for the spiking synapses (int8 / ternary / binary), pure torch.

Every quantizer keeps the latent full-precision weight ``W`` (the ``nn.Parameter`` the optimizer
updates) and returns the quantized weight ``Q(W)`` used by the simulation and by the steady-state
map; the gradient passes straight through (``dQ/dW := I``, the STE of BinaryConnect / BitNet).
``SynapseLinear.synaptic_weight()`` applies ``weight_quantizer``; ``attach_weight_quantizers`` sets
it on every spiking synapse. See docs/quantization.md.

All three grids are Loihi-2 weights *relative to the threshold*: a quantized weight is

    Q(W) = mantissa * 2**exponent * vth

with an integer ``mantissa`` that is a valid Lava Dense weight (MIXED sign mode: even integers in
[-256, 254]; EXCITATORY: 0..255; INHIBITORY: -255..0) and one integer ``exponent`` per matrix.
With the fixed-point threshold ``vth_mant = 2**p`` the Lava Dense weight exponent is simply
``weight_exp = exponent + p``: the current of one spike, ``mantissa << weight_exp << 6``, relative
to the threshold ``vth_mant << 6`` is then exactly ``Q(W) / vth`` (hw_export/quantize.py).

* ``int8``: ``exponent`` is the smallest integer with ``max|W|`` inside the mantissa range;
  mantissa = nearest grid point (round half to even). MIXED when ``W`` has both signs.
* ``ternary`` (1.58 bit, BitNet b1.58 absmean): ``alpha = mean|W|``; codes
  ``clip(round(W / (alpha + eps)), -1, 1)``; ``Q(W) = alpha_q * codes`` where ``alpha_q`` is
  ``alpha`` rounded to the nearest Loihi weight ``m * 2**e * vth`` with ``m`` even in [128, 254]
  (a relative change of at most 1/128), so ``+-alpha_q`` is exactly a Lava MIXED weight.
* ``binary`` (1 bit): ``mu = mean(W)``, ``alpha = mean|W - mu|``, ``Q(W) = alpha_q * sign(W - mu)``
  with ``sign(0) = +1``. Centering on the mean splits the codes evenly (BitNet b1); the mean itself
  is *not* added back, so the weights stay a symmetric +-alpha_q pair (one Loihi mantissa).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lava_spikingbert.contract.constants import LAYER_SYNAPSES, MANT_RANGE, WEIGHT_MODES
from lava_spikingbert.contract.model_file import sign_mode_of as sign_mode_of_mantissas
from lava_spikingbert.model.equilibrium import straight_through

# the SynapseLinear attributes that carry spikes (quantized); embeddings, LayerNorm, biases,
# the classifier and W_Td (fit_dense) stay full precision
SPIKING_SYNAPSES = LAYER_SYNAPSES + ("feedback",)

# Lava Dense weight mantissas (lava.utils.weightutils: clip_weights + truncate_weights, 8 bits)
MIXED_MIN, MIXED_MAX = MANT_RANGE["mixed"]  # even integers only
EXC_MIN, EXC_MAX = MANT_RANGE["excitatory"]
INH_MIN, INH_MAX = MANT_RANGE["inhibitory"]
EPS = 1e-8


def ceil_log2(x: float) -> int:
    """Smallest integer ``e`` with ``2**e >= x`` (x > 0), exact (no float log)."""
    if not x > 0 or not math.isfinite(x):
        raise ValueError(f"ceil_log2 needs a positive finite number, got {x!r}")
    f, e = math.frexp(x)  # x = f * 2**e, 0.5 <= f < 1
    return e - 1 if f == 0.5 else e


def snap_scale(x: float) -> tuple[int, int]:
    """Nearest ``m * 2**e`` to ``x > 0`` with ``m`` even in [128, 254]; returns ``(m, e)``.

    (7 significant bits, the most a symmetric MIXED Loihi weight carries.)"""
    if x <= 0:
        return 0, 0
    _, e2 = math.frexp(x)  # 2**(e2-1) <= x < 2**e2
    e = e2 - 8  # x / 2**e in [128, 256)
    m = 2 * round(x / 2.0 ** (e + 1))
    if m >= 256:
        m, e = 128, e + 1
    return int(m), int(e)


def sign_mode_of(mantissa: torch.Tensor) -> str:
    """Lava's ``determine_sign_mode`` on a mantissa matrix."""
    return sign_mode_of_mantissas(mantissa.numpy())


@dataclass
class IntWeights:
    """The integer form of one quantized matrix: ``Q(W) = mantissa * 2**exponent * vth``."""

    mantissa: torch.Tensor  # int32, Lava Dense weight values
    exponent: int  # relative to vth; the Lava weight_exp is exponent + p (vth_mant = 2**p)
    sign_mode: str  # Lava sign mode of the mantissas ("mixed", "excitatory", "inhibitory")
    vth: float
    mode: str
    alpha: float | None = None  # ternary/binary: the (snapped) magnitude alpha_q
    alpha_raw: float | None = None  # ternary/binary: the absmean before snapping

    @property
    def scale(self) -> float:
        """Float weight of one mantissa LSB, as float32 (what the torch model multiplies with)."""
        return float(torch.tensor(2.0 ** self.exponent * self.vth, dtype=torch.float32))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.mantissa.to(dtype) * torch.tensor(self.scale, dtype=dtype)


class WeightQuantizer:
    """Base class: ``integer(W)`` (no grad) and ``__call__(W)`` = Q(W) with a straight-through gradient."""

    mode = "fp32"

    def __init__(self, vth: float = 1.0) -> None:
        if not vth > 0:
            raise ValueError(f"vth must be positive, got {vth!r}")
        self.vth = float(vth)

    def integer(self, weight: torch.Tensor) -> IntWeights:  # pragma: no cover - abstract
        raise NotImplementedError

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """Q(W) without gradient, in ``weight``'s dtype."""
        return self.integer(weight).dequantize(weight.dtype).to(weight.device)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        q = self.quantize(weight.detach())
        return straight_through(q, weight)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vth={self.vth})"


class Int8Quantizer(WeightQuantizer):
    """8-bit Loihi weights with one exponent per matrix (sign mode from the signs of ``W``)."""

    mode = "int8"

    def integer(self, weight: torch.Tensor) -> IntWeights:
        w = weight.detach().to(torch.float64).cpu() / self.vth
        wmax, wmin = (float(w.max()), float(w.min())) if w.numel() else (0.0, 0.0)
        if wmax == 0.0 and wmin == 0.0:
            m = torch.zeros(w.shape, dtype=torch.int32)
            return IntWeights(m, 0, "excitatory", self.vth, self.mode)
        if wmin >= 0.0:
            e = ceil_log2(wmax / EXC_MAX)
            m = torch.round(w / 2.0 ** e).clamp(EXC_MIN, EXC_MAX)
        elif wmax <= 0.0:
            e = ceil_log2(-wmin / -INH_MIN)
            m = torch.round(w / 2.0 ** e).clamp(INH_MIN, INH_MAX)
        else:
            e = max(ceil_log2(wmax / MIXED_MAX) if wmax > 0 else -10 ** 6,
                    ceil_log2(-wmin / -MIXED_MIN) if wmin < 0 else -10 ** 6)
            m = 2.0 * torch.round(w / 2.0 ** (e + 1)).clamp(MIXED_MIN // 2, MIXED_MAX // 2)
        m = m.to(torch.int32)
        return IntWeights(m, int(e), sign_mode_of(m), self.vth, self.mode)


class TernaryQuantizer(WeightQuantizer):
    """1.58-bit absmean quantizer (BitNet b1.58) with a Loihi-representable scale."""

    mode = "ternary"

    def integer(self, weight: torch.Tensor) -> IntWeights:
        w = weight.detach().to(torch.float64).cpu() / self.vth
        alpha = float(w.abs().mean()) if w.numel() else 0.0
        codes = torch.clamp(torch.round(w / (alpha + EPS)), -1, 1).to(torch.int32)
        ma, e = snap_scale(alpha)
        m = codes * ma
        return IntWeights(m, e, sign_mode_of(m), self.vth, self.mode, alpha=ma * 2.0 ** e * self.vth,
                          alpha_raw=alpha * self.vth)


class BinaryQuantizer(WeightQuantizer):
    """1-bit quantizer: ``alpha_q * sign(W - mean W)``, ``alpha = mean|W - mean W|``."""

    mode = "binary"

    def integer(self, weight: torch.Tensor) -> IntWeights:
        w = weight.detach().to(torch.float64).cpu() / self.vth
        centred = w - w.mean() if w.numel() else w
        alpha = float(centred.abs().mean()) if w.numel() else 0.0
        codes = torch.where(centred >= 0, 1, -1).to(torch.int32)
        ma, e = snap_scale(alpha)
        m = codes * ma
        return IntWeights(m, e, sign_mode_of(m), self.vth, self.mode, alpha=ma * 2.0 ** e * self.vth,
                          alpha_raw=alpha * self.vth)


QUANTIZERS = {q.mode: q for q in (Int8Quantizer, TernaryQuantizer, BinaryQuantizer)}


def make_quantizer(mode: str, vth: float = 1.0) -> WeightQuantizer | None:
    """The quantizer of ``mode`` ("fp32" gives None: no quantization)."""
    if mode == "fp32":
        return None
    try:
        return QUANTIZERS[mode](vth)
    except KeyError:
        raise ValueError(f"unknown weight mode {mode!r}; choose one of {WEIGHT_MODES}") from None


def int8_codes(iw: IntWeights) -> tuple[torch.Tensor, float] | None:
    """``Q(W) = codes * step`` with ``codes`` in int8, for integer matrix products with spikes.

    ``step`` is the LSB weight times the greatest common divisor of the mantissas (2 for the
    even MIXED grid, the magnitude for ternary/binary), so the codes are as small as possible.
    Returns None when they still do not fit in [-128, 127] (e.g. an all-excitatory matrix
    that uses mantissas above 127).
    """
    m = iw.mantissa
    nonzero = torch.unique(m[m != 0].abs()).tolist()
    g = math.gcd(*nonzero) if nonzero else 1
    codes = torch.div(m, g, rounding_mode="floor")
    if codes.numel() and (int(codes.min()) < -128 or int(codes.max()) > 127):
        return None
    step = float(torch.tensor(iw.scale, dtype=torch.float32) * g)
    return codes.to(torch.int8), step


def spiking_synapses(model) -> list[tuple[str, torch.nn.Module]]:
    """``(module name, SynapseLinear)`` of every spiking synapse of a ``SpikingBert``."""
    return [(name, module) for name, module in model.synapses() if name.rsplit(".", 1)[-1] in SPIKING_SYNAPSES]


def attach_weight_quantizers(model, mode: str):
    """Set ``weight_quantizer`` of every spiking synapse to ``mode``'s quantizer (None for fp32)
    and ``model.config.weights = mode``. Returns ``model`` (changed in place)."""
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown weight mode {mode!r}; choose one of {WEIGHT_MODES}")
    vth = float(model.config.vth)
    for _, lin in spiking_synapses(model):
        lin.weight_quantizer = make_quantizer(mode, vth)
    model.config.weights = mode
    return model


def integer_weights(module) -> IntWeights:
    """The integer form of a quantized synapse's weight (raises for an fp32 synapse)."""
    q = getattr(module, "weight_quantizer", None)
    if q is None:
        raise ValueError("synapse has no weight quantizer (fp32); quantize the model first")
    return q.integer(module.weight)
