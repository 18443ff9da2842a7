"""Speed of the stock Lava graph in Loihi2SimCfg (ms per step, compile excluded).

Modes:
  grid      full mixer models over d, F, blocks, L, signed (token mixer and channel mixer
            as Sparse), fixed_pt and floating_pt
  impl      lowering alternatives at one size: token mixer Conv vs Sparse, channel mixer
            Conv 1x1 vs Sparse vs Dense(kron), and one Dense per token (channel mixer only)

Each grid measurement runs in a fresh interpreter, builds the network, runs one window
(compile, spawn, warm-up) and then times ``--steps`` more steps. Usage:
``OMP_NUM_THREADS=1 python -m prototypes.loihi_lava.bench grid --json OUT``
"""
import argparse
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.lif.process import LIF
from lava.proc.sparse.process import Sparse

from .builder import LavaNetwork
from .lowering import lower
from .models import mixer_spec, random_inputs
from .timing import Schedule

T = 16


def descendant_cpu_seconds() -> float:
    """user + system CPU seconds of all live descendants of this process (/proc)."""
    children = {}
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(pid), fields))
    total, todo = 0, [os.getpid()]
    while todo:
        for pid, fields in children.get(todo.pop(), []):
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
            todo.append(pid)
    return total / os.sysconf('SC_CLK_TCK')


def measure(spec, precision, token_mix='sparse', token_wise='sparse', steps=64):
    """Wall and CPU time per step of the full graph for ``steps`` timed steps after one
    warm-up window (compile, spawn). CPU seconds of all Lava processes per step are less
    sensitive to other load on the host than wall time."""
    t0 = time.perf_counter()
    graph = lower(spec, precision, token_mix=token_mix, token_wise=token_wise)
    schedule = Schedule.for_graph(graph, T)
    windows = math.ceil((steps + T) / T)
    inputs = random_inputs(spec, windows, precision)
    net = LavaNetwork(graph, schedule, inputs)
    build = time.perf_counter() - t0
    try:
        first = net.run(T)
        load = os.getloadavg()[0]
        cpu0 = descendant_cpu_seconds()
        wall = net.run(steps)
        cpu = descendant_cpu_seconds() - cpu0
        counts = net.counts()
    finally:
        net.stop()
    return {
        'precision': precision, 'token_mix': token_mix, 'token_wise': token_wise,
        'processes': len(graph.neurons) + len(graph.synapses) + 2,
        'neurons': sum(n.n for n in graph.neurons),
        'synapses': sum(s.synapses for s in graph.synapses),
        'depth': graph.depth, 'build_s': round(build, 2), 'first_run_s': round(first, 2),
        'timed_steps': steps, 'ms_per_step': round(1000 * wall / steps, 2),
        'cpu_ms_per_step': round(1000 * cpu / steps, 2),
        'output_rate': round(float(counts[:2].mean()) / T, 3), 'loadavg_1min': round(load, 2),
    }


def measure_isolated(config: dict, timeout: float) -> dict:
    """``measure`` in a fresh interpreter (Lava keeps every built network alive: one process
    running a whole grid grew to 17 GB). On timeout the child's process group is killed."""
    cmd = [sys.executable, '-m', 'prototypes.loihi_lava.bench', 'one', '--config',
           json.dumps(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return dict(config, error=f'timeout after {timeout} s')
    lines = [line for line in out.splitlines() if line.startswith('{')]
    if proc.returncode or not lines:
        return dict(config, error=(err.strip().splitlines() or ['?'])[-1])
    return json.loads(lines[-1])


def measure_config(config: dict) -> dict:
    spec = mixer_spec(config['tokens'], config['d'], config['ffn'], config['blocks'],
                      signed=config['signed'], precision=config['precision'])
    r = measure(spec, config['precision'], config.get('token_mix', 'sparse'),
                config.get('token_wise', 'sparse'), steps=config['steps'])
    return dict(config, **r)


def grid(args):
    rows = []
    for d, mult, blocks, L, signed in itertools.product(
            args.d, args.ffn_mult, args.blocks, args.tokens, (False, True)):
        estimate = blocks * L * (2 * mult * d * d + 5 * d) * (4 if signed else 1)
        for precision in args.precision:
            limit = args.max_synapses if precision == 'fixed' else args.float_max_synapses
            config = dict(d=d, ffn=mult * d, blocks=blocks, tokens=L, signed=signed,
                          precision=precision, steps=args.steps)
            if estimate > limit:
                print(f'skip {config}: ~{estimate:,} synapses > {limit:,.0f}', flush=True)
                continue
            r = measure_isolated(config, args.timeout)
            rows.append(r)
            if 'error' in r:
                print(f'error {config}: {r["error"]}', flush=True)
                continue
            print(f"d={d:3} F={mult * d:4} blocks={blocks} L={L:2} signed={signed!s:5} "
                  f"{precision:5} procs={r['processes']:2} synapses={r['synapses']:>11,} "
                  f"ms/step={r['ms_per_step']:8.2f} cpu-ms/step={r['cpu_ms_per_step']:8.2f} "
                  f"first={r['first_run_s']:5.1f}s "
                  f"build={r['build_s']:5.1f}s load={r['loadavg_1min']}", flush=True)
    return rows


def per_token_channel_mixer(L, d, F, steps):
    """Channel mixer with one LIF and one Dense process per token (no token axis in any
    process): L x (LIF d -> Dense d->F -> LIF F), driven by bias, outputs concatenated."""
    rng = np.random.default_rng(0)
    w = rng.integers(-40, 41, size=(F, d))
    inputs, outputs = [], []
    for _ in range(L):
        a = LIF(shape=(d,), vth=100, du=4095, dv=0, bias_mant=rng.integers(0, 200, d), bias_exp=6)
        dense = Dense(weights=w)
        b = LIF(shape=(F,), vth=100, du=4095, dv=0)
        a.s_out.connect(dense.s_in)
        dense.a_out.connect(b.a_in)
        inputs.append(a)
        outputs.append(b)
    # the per-token populations need no sink to run; the first LIF is the run root
    cfg = Loihi2SimCfg(select_tag='fixed_pt')
    root = inputs[0]
    try:
        t0 = time.perf_counter()
        root.run(condition=RunSteps(num_steps=T), run_cfg=cfg)
        t1, cpu1 = time.perf_counter(), descendant_cpu_seconds()
        root.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
        t2, cpu2 = time.perf_counter(), descendant_cpu_seconds()
    finally:
        root.stop()
    return {'impl': 'dense_per_token', 'processes': 3 * L, 'first_run_s': round(t1 - t0, 2),
            'ms_per_step': round(1000 * (t2 - t1) / steps, 2),
            'cpu_ms_per_step': round(1000 * (cpu2 - cpu1) / steps, 2)}


def channel_mixer(L, d, F, impl, steps):
    """One token-wise layer LIF(L*d) -> synapse -> LIF(L*F) as Sparse kron, Dense kron or
    Conv 1x1, fixed_pt, inputs by bias."""
    rng = np.random.default_rng(0)
    w = rng.integers(-40, 41, size=(F, d))
    a = LIF(shape=(L * d,), vth=100, du=4095, dv=0, bias_mant=rng.integers(0, 200, L * d),
            bias_exp=6)
    b = LIF(shape=(L * F,), vth=100, du=4095, dv=0)
    if impl == 'conv':
        syn = Conv(weight=w[:, None, None, :], input_shape=(L, 1, d))
        a.s_out.reshape((L, 1, d)).connect(syn.s_in)
        syn.a_out.flatten().connect(b.a_in)
    else:
        big = np.kron(np.eye(L, dtype=int), w)
        syn = Sparse(weights=big) if impl == 'sparse' else Dense(weights=big)
        a.s_out.connect(syn.s_in)
        syn.a_out.connect(b.a_in)
    cfg = Loihi2SimCfg(select_tag='fixed_pt')
    try:
        t0 = time.perf_counter()
        a.run(condition=RunSteps(num_steps=2), run_cfg=cfg)
        t1, cpu1 = time.perf_counter(), descendant_cpu_seconds()
        a.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
        t2, cpu2 = time.perf_counter(), descendant_cpu_seconds()
    finally:
        a.stop()
    return {'impl': impl, 'processes': 3, 'first_run_s': round(t1 - t0, 2),
            'ms_per_step': round(1000 * (t2 - t1) / steps, 2),
            'cpu_ms_per_step': round(1000 * (cpu2 - cpu1) / steps, 2)}


def impl(args):
    rows = []
    L, d, F = args.tokens[0], args.d[0], args.ffn_mult[0] * args.d[0]
    for name, steps in (('sparse', args.steps), ('dense', 20), ('conv', 3)):
        r = channel_mixer(L, d, F, name, steps)
        r.update(layer='channel_mixer', tokens=L, d=d, ffn=F, load=round(os.getloadavg()[0], 2))
        rows.append(r)
        print(r, flush=True)
    for tokens in args.per_token_l:
        r = per_token_channel_mixer(tokens, d, F, args.steps)
        r.update(layer='channel_mixer', tokens=tokens, d=d, ffn=F,
                 load=round(os.getloadavg()[0], 2))
        rows.append(r)
        print(r, flush=True)
    conv_d = min(d, 96)  # depthwise Conv needs groups <= 127 in the simulator
    spec = mixer_spec(L, conv_d, 2 * conv_d, 2, signed=False)
    for tm in ('sparse', 'conv'):
        r = measure(spec, 'fixed', token_mix=tm, steps=args.steps)
        r.update(layer='full_model', d=conv_d, ffn=2 * conv_d, blocks=2, tokens=L)
        rows.append(r)
        print(r, flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('mode', choices=('grid', 'impl', 'one'))
    parser.add_argument('--config', help="mode 'one': a JSON measurement config")
    parser.add_argument('--d', type=int, nargs='+', default=[192, 256, 384])
    parser.add_argument('--ffn-mult', type=int, nargs='+', default=[2, 4])
    parser.add_argument('--blocks', type=int, nargs='+', default=[2, 4])
    parser.add_argument('--tokens', type=int, nargs='+', default=[32, 64])
    parser.add_argument('--precision', nargs='+', default=['fixed', 'float'])
    parser.add_argument('--per-token-l', type=int, nargs='*', default=[8, 16])
    parser.add_argument('--steps', type=int, default=64)
    parser.add_argument('--max-synapses', type=float, default=7e7,
                        help='skip fixed_pt grid points above this (memory, time)')
    parser.add_argument('--float-max-synapses', type=float, default=4e7,
                        help='skip floating_pt grid points above this')
    parser.add_argument('--timeout', type=float, default=400, help='seconds per measurement')
    parser.add_argument('--json', help='append the rows to this JSON list file')
    args = parser.parse_args()
    if args.mode == 'one':
        print(json.dumps(measure_config(json.loads(args.config))))
        return
    shm_before = set(os.listdir('/dev/shm'))
    rows = grid(args) if args.mode == 'grid' else impl(args)
    print('/dev/shm leftovers:', sorted(set(os.listdir('/dev/shm')) - shm_before))
    if args.json:
        old = json.load(open(args.json)) if os.path.exists(args.json) else []
        with open(args.json, 'w') as f:
            json.dump(old + rows, f, indent=1)


if __name__ == '__main__':
    main()
