"""Test harness: run the netx classifier head and the same chain built from stock Lava processes
(``hw_export.netx_head`` writes the head; these run it on Lava's simulator, fixed_pt)."""

from __future__ import annotations

import os

import numpy as np

from hw_export.netx_head import HeadChain
from lava_spikingbert.lava.runner import ChildGuard, import_lava_runtime, shutdown, wait_for_run

import_lava_runtime()  # before any Lava import: Lava fixes the multiprocessing start method on import

from lava.lib.dl.netx import hdf5  # noqa: E402
from lava.magma.core.run_conditions import RunSteps  # noqa: E402
from lava.magma.core.run_configs import Loihi2SimCfg  # noqa: E402
from lava.proc.dense.process import Dense  # noqa: E402
from lava.proc.io.sink import RingBuffer as Sink  # noqa: E402
from lava.proc.io.source import RingBuffer as Source  # noqa: E402
from lava.proc.lif.process import LIF  # noqa: E402
from lava.proc.monitor.process import Monitor  # noqa: E402


def _run(source_proc, neuron, spikes: np.ndarray, extra_steps: int = 1, timeout: float | None = 600.0):
    """Drive ``source_proc`` -> ... -> ``neuron`` with ``spikes`` (T, H); returns (v trace, s trace)."""
    import_lava_runtime()
    spikes = np.asarray(spikes)
    steps = spikes.shape[0] + extra_steps
    data = np.zeros((spikes.shape[1], steps), dtype=np.int32)
    data[:, : spikes.shape[0]] = spikes.T
    src = Source(data=data)
    src.s_out.connect(source_proc)
    sink = Sink(shape=neuron.s_out.shape, buffer=steps)
    neuron.s_out.connect(sink.a_in)
    mon = Monitor()
    mon.probe(neuron.v, steps)
    # as lava_spikingbert.lava.runner.run_network: a non-blocking run watched for dead model
    # processes (Lava's blocking wait hangs when one raises), and a stop that cannot hang and
    # leaves no child process behind
    guard = ChildGuard()
    try:
        src.create_runtime(run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        src.run(condition=RunSteps(num_steps=steps, blocking=False))
        wait_for_run(src.runtime, timeout)
        v = mon.get_data()[neuron.name]["v"]
        s = sink.data.get().T
    finally:
        shutdown(src, guard)
    return np.asarray(v, dtype=np.int64), np.asarray(s, dtype=np.int64)


def run_chain_lava(chain: HeadChain, spikes: np.ndarray):
    """Our builder: ``Dense(weight)`` + ``LIF(du=4095, dv=0, vth, bias_mant, bias_exp=6)``, fixed_pt.

    Returns the per-step voltage and spikes, (T+1, C) each (the Dense delivers one step later)."""
    c, h = chain.shape
    dense = Dense(weights=chain.weight.astype(np.int32))
    lif = LIF(shape=(c,), du=4095, dv=0, vth=chain.vth_mant, bias_mant=chain.bias_mant.astype(np.int32),
              bias_exp=6)
    dense.a_out.connect(lif.a_in)
    return _run(dense.s_in, lif, spikes)


def run_chain_netx(path: str | os.PathLike, spikes: np.ndarray):
    """The netx loader: ``lava.lib.dl.netx.hdf5.Network(path)`` (fixed_pt), same outputs as above."""
    net = hdf5.Network(net_config=str(path))
    return _run(net.inp, net.layers[-1].neuron, spikes)


def run_dense_lif_lava(weight: np.ndarray, weight_exp: int, bias_mant: np.ndarray, bias_exp: int, vth_mant: int,
                       spikes: np.ndarray, *, kind: str = "lif_reset_zero"):
    """One stock Lava Dense + LIF population (fixed_pt) driven by ``spikes`` (T, H): the reference
    check of the fixed-point spec for neuron-bound synapses. Only ``lif_reset_zero`` has a stock model."""
    if kind != "lif_reset_zero":
        raise ValueError("stock Lava LIF implements lif_reset_zero only (subtractive reset needs a custom model)")
    n = weight.shape[0]
    dense = Dense(weights=np.asarray(weight, dtype=np.int32), weight_exp=int(weight_exp))
    lif = LIF(shape=(n,), du=4095, dv=0, vth=int(vth_mant), bias_mant=np.asarray(bias_mant, dtype=np.int32),
              bias_exp=np.full((n,), int(bias_exp), dtype=np.int32))
    dense.a_out.connect(lif.a_in)
    return _run(dense.s_in, lif, spikes)
