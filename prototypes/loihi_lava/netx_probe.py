"""Can a residual-free mixer chain ship as a lava-dl netx HDF5? Write one, load it with
stock ``netx.hdf5.Network`` and compare its spikes with our builder (fixed_pt).

Chain (one block, unsigned, no residual): x0 (L, 1, d) -> depthwise conv over tokens
(netx 'conv', groups=d) -> token-wise d->F and F->d as 1x1 'conv' layers. netx layers are
fixed_pt only, use ``bias_exp=6`` and have no weight exponent in the file (weights are the
8-bit values).
x0 stays a stock LIFReset outside the file: netx's 'input' block leaves its ``inp`` port
unconnected (it expects bias-encoded input), so a host current cannot enter through it.
(A 'flatten' + 'dense' route for the token-wise layers deadlocked in the simulator here.)

Usage: ``python -m prototypes.loihi_lava.netx_probe`` (imports torch via lava-dl: slow).
"""
import os
import tempfile

import h5py
import numpy as np
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.lif.process import LIFReset

from .builder import LavaNetwork
from .io_procs.boundary import CurrentSource, WindowCounter, allocate_counts
from .lowering import lower
from .models import random_inputs
from .spec import Edge, GraphSpec, Population
from .timing import Schedule

L, D, F, K, T, WINDOWS, VTH = 6, 4, 8, 3, 8, 3, 40


def chain_spec(seed: int = 0) -> GraphSpec:
    rng = np.random.default_rng(seed)
    even = lambda shape: 2 * rng.integers(-20, 21, size=shape)  # netx: exp 0, even ints
    pops = [Population(n, c, VTH, bias=rng.integers(-10, 30, size=c), bias_exp=6)
            for n, c in (('x0', D), ('m1', D), ('h1', F), ('o1', D))]
    edges = [Edge('x0', 'm1', 'token_mix', even((D, K))),
             Edge('m1', 'h1', 'token_wise', even((F, D))),
             Edge('h1', 'o1', 'token_wise', even((D, F)))]
    return GraphSpec(L, pops, edges, input='x0', output='o1')


def write_netx(spec: GraphSpec, path: str) -> None:
    """Write the chain in the netx HDF5 layout (shapes reversed, torch kernel order)."""
    def neuron(group, pop):
        n = group.create_group('neuron')
        n['type'], n['iDecay'], n['vDecay'] = b'CUBA', 4096, 0
        n['vThMant'], n['refDelay'], n['gradedSpike'] = pop.vth, 1, False
    pops = {p.name: p for p in spec.populations}
    mix, wise1, wise2 = spec.edges
    with h5py.File(path, 'w') as f:
        layer = f.create_group('layer')
        g = layer.create_group('0')
        g['type'], g['shape'] = b'conv', [D, 1, L]
        g['weight'] = mix.weight[:, None, None, :]  # (C_out, C_in/groups, H, W), correlation
        g['stride'], g['padding'], g['dilation'] = [1, 1], [0, (K - 1) // 2], [1, 1]
        g['groups'] = D
        neuron(g, pops['m1'])
        g['bias'] = pops['m1'].bias
        for i, (edge, pop) in enumerate(((wise1, 'h1'), (wise2, 'o1')), start=1):
            g = layer.create_group(str(i))
            g['type'], g['shape'] = b'conv', [edge.weight.shape[0], 1, L]
            g['weight'] = edge.weight[:, :, None, None]  # 1x1 conv = token-wise linear
            g['stride'], g['padding'], g['dilation'], g['groups'] = [1, 1], [0, 0], [1, 1], 1
            neuron(g, pops[pop])
            g['bias'] = pops[pop].bias


def run_netx(path: str, spec: GraphSpec, inputs: np.ndarray, workdir: str,
             steps: int) -> np.ndarray:
    """Host current -> x0 (stock LIFReset, depth 0) -> netx Network (depth 1..3) -> raster."""
    from lava.lib.dl import netx  # imports torch: only here
    x0 = spec.pop('x0')
    net = netx.hdf5.Network(net_config=path, input_shape=(L, 1, D), reset_interval=T,
                            reset_offset=1)
    lif = LIFReset(shape=(L, 1, D), vth=x0.vth, du=4095, dv=0,
                   bias_mant=np.tile(x0.bias, L).reshape(L, 1, D), bias_exp=x0.bias_exp,
                   reset_interval=T, reset_offset=1)
    np.save(os.path.join(workdir, 'in.npy'), inputs.astype(np.int32))
    src = CurrentSource(path=os.path.join(workdir, 'in.npy'), shape=(L, 1, D), period=T,
                        length=T)
    out = os.path.join(workdir, 'raster.npy')
    allocate_counts(out, steps, L * D)
    rec = WindowCounter(path=out, shape=(L * D,), period=1, length=1, offset=0, windows=steps)
    src.s_out.connect(lif.a_in)
    lif.s_out.connect(net.inp)
    net.out.flatten().connect(rec.s_in)
    try:
        net.run(condition=RunSteps(num_steps=steps),
                run_cfg=Loihi2SimCfg(select_tag='fixed_pt', select_sub_proc_model=True))
    finally:
        net.stop()
    print(net)
    return np.array(np.load(out))


def main():
    spec = chain_spec()
    graph = lower(spec, 'fixed')
    schedule = Schedule.for_graph(graph, T)
    inputs = random_inputs(spec, WINDOWS)
    steps = schedule.total_steps(WINDOWS)
    ours = LavaNetwork(graph, schedule, inputs, record=['o1'], spmv=False)
    try:
        ours.run()
        ours_raster = ours.raster('o1')
    finally:
        ours.stop()
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, 'chain.net')
        write_netx(spec, path)
        netx_raster = run_netx(path, spec, inputs, workdir, steps)
    print(f'output spikes: ours {int(ours_raster.sum())}, netx {int(netx_raster.sum())}, '
          f'mismatched {int((ours_raster != netx_raster).sum())} over {steps} steps')


if __name__ == '__main__':
    main()
