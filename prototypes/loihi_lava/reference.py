"""Numpy step-by-step reference of a lowered graph, reproducing lava-nc 0.10.0's models.

``precision='fixed'`` is bit-accurate (int64) to the ``fixed_pt`` CPU models:

* ``PyLifResetModelBitAcc`` (``lava/proc/lif/models.py``): at a reset step u = v = 0 before
  the update; ``u = trunc0(u * (4096 - (du + 1)) / 2**12) + (a_in << 6)`` wrapped into 24 bits
  (the model's own two-sided wrap), ``v = clip(trunc0(v * (4096 - dv) / 2**12) + u +
  (bias << bias_exp), +-(2**23 - 1))``, spike where ``v > vth << 6``, then ``v = 0`` there.
* ``PyDenseModelBitAcc`` / ``PySparseModelBitAcc`` / ``PyDelaySparseModelBitAcc``: weights
  clipped and truncated once by sign mode (``lava/utils/weightutils.py``, num_weight_bits=8:
  MIXED keeps even values in [-256, 254], EXCITATORY [0, 255], INHIBITORY [-255, 0]); output
  ``(W @ s) << weight_exp`` (arithmetic right shift, i.e. floor, for negative exponents),
  delivered one step later (``+ delay`` for DelaySparse).
* ``PyConvModelFixed``: true convolution with groups, **no** weight clipping and **no**
  ``weight_exp``; the result wraps into 24 bits (``signed_clamp``).

``precision='float'`` follows the float models (``u = u * (1 - du) + a_in``,
``v = v * (1 - dv) + u + bias``, spike where ``v > vth``) in float64.

The input current enters the input population's ``a_in`` at the step it is sent; every
synapse delivers at step t + 1 + delay the spikes of step t.
"""
import typing as ty

import numpy as np
import scipy.sparse as sps

from .lowering import LoweredGraph, SynapseParams

UV_MAX = 2 ** 23


def effective_weights(syn: SynapseParams) -> ty.Union[np.ndarray, sps.csr_matrix]:
    """Weights as the fixed-point model uses them after clipping and truncation (8 bits)."""
    if syn.process == 'Conv':
        return syn.weights
    w = syn.weights
    values = w.data if sps.issparse(w) else w
    lo, hi = (values.min(initial=0), values.max(initial=0))
    if lo >= 0:
        out = np.clip(values, 0, 255)
    elif hi <= 0:
        out = -np.clip(-values, 0, 255)
    else:
        out = (np.clip(values, -256, 255) >> 1) << 1
    if sps.issparse(w):
        w = w.copy()
        w.data = out.astype(np.int64)
        w.eliminate_zeros()
        return w
    return out.astype(np.int64)


def conv_tokens(x: np.ndarray, kernel: np.ndarray, padding: int, groups: int) -> np.ndarray:
    """Lava's Conv on an (L, 1, C_in) input with a (C_out, K, 1, C_in/groups) kernel:
    ``out[l, co] = sum_{j, i} kernel[co, j, 0, i] * x[l + padding - j, group(co) * cg + i]``."""
    L, _, c_in = x.shape
    c_out, K, _, cg = kernel.shape
    og = c_out // groups
    xp = np.pad(x[:, 0, :], ((padding, padding), (0, 0))).reshape(L + 2 * padding, groups, cg)
    kern = kernel[:, :, 0, :].reshape(groups, og, K, cg)
    l_out = L + 2 * padding - K + 1
    out = np.zeros((l_out, groups, og), dtype=np.result_type(x, kernel))
    for j in range(K):
        out += np.einsum('lgi,goi->lgo', xp[K - 1 - j:K - 1 - j + l_out], kern[:, :, j, :])
    return out.reshape(l_out, 1, c_out)


class Reference:
    """Steps a lowered graph with the stock models' arithmetic.

    ``period`` and ``offsets`` are the LIFReset ``reset_interval`` and per-population
    ``reset_offset`` (see ``timing.py``).
    """

    def __init__(self, graph: LoweredGraph, period: int, offsets: ty.Dict[str, int]):
        self.graph = graph
        self.fixed = graph.precision == 'fixed'
        self.period = period
        self.offsets = {k: v % period for k, v in offsets.items()}
        dtype = np.int64 if self.fixed else np.float64
        self.u = {n.name: np.zeros(n.n, dtype) for n in graph.neurons}
        self.v = {n.name: np.zeros(n.n, dtype) for n in graph.neurons}
        self.weights = [effective_weights(s) if self.fixed else s.weights for s in graph.synapses]
        self.buffers = [np.zeros((graph.neuron(s.dst).n, s.delay + 1), dtype)
                        for s in graph.synapses]
        self.time_step = 0

    def step(self, current: np.ndarray) -> ty.Dict[str, np.ndarray]:
        """Advance one step with ``current`` into the input population; return all spikes."""
        self.time_step += 1
        a_in = {n.name: np.zeros(n.n, self.u[n.name].dtype) for n in self.graph.neurons}
        a_in[self.graph.spec.input] += current
        for syn, buf in zip(self.graph.synapses, self.buffers):
            a_in[syn.dst] += buf[:, 0]
        spikes = {n.name: self._neuron_step(n, a_in[n.name]) for n in self.graph.neurons}
        for i, (syn, w) in enumerate(zip(self.graph.synapses, self.weights)):
            out = self._synapse_out(syn, w, spikes[syn.src])
            buf = np.roll(self.buffers[i], -1, axis=1)
            buf[:, -1] = 0
            buf[:, syn.delay] += out
            self.buffers[i] = buf
        return spikes

    def _neuron_step(self, n, a_in: np.ndarray) -> np.ndarray:
        u, v = self.u[n.name], self.v[n.name]
        if self.time_step % self.period == self.offsets[n.name]:
            u[:] = 0
            v[:] = 0
        if self.fixed:
            dec = u * (4096 - (n.du + 1))
            x = np.sign(dec) * (np.abs(dec) >> 12) + (a_in << 6)
            wrapped = np.where(x > UV_MAX, x - 2 * UV_MAX, x)
            u[:] = np.where(wrapped <= -UV_MAX, x + 2 * UV_MAX, wrapped)
            dec = v * (4096 - n.dv)
            bias = n.bias << n.bias_exp if n.bias_exp >= 0 else n.bias >> -n.bias_exp
            v[:] = np.clip(np.sign(dec) * (np.abs(dec) >> 12) + u + bias,
                           -UV_MAX + 1, UV_MAX - 1)
            s = v > (int(n.vth) << 6)
        else:
            u[:] = u * (1 - n.du) + a_in
            v[:] = v * (1 - n.dv) + u + n.bias
            s = v > n.vth
        v[s] = 0
        return s

    def _synapse_out(self, syn: SynapseParams, w, s: np.ndarray) -> np.ndarray:
        dtype = np.int64 if self.fixed else np.float64
        if syn.process == 'Conv':
            L, _, c_in = syn.conv['input_shape']
            out = conv_tokens(s.reshape(L, 1, c_in).astype(dtype), w,
                              syn.conv['padding'][0], syn.conv['groups']).ravel()
            if self.fixed:
                out = (out + UV_MAX) % (2 * UV_MAX) - UV_MAX
            return out
        acc = w @ s.astype(dtype)
        if self.fixed and syn.weight_exp:
            acc = acc << syn.weight_exp if syn.weight_exp > 0 else acc >> -syn.weight_exp
        return np.asarray(acc).ravel()
