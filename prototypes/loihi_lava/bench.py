"""Speed of the stock Lava graph in Loihi2SimCfg (ms per step, compile excluded).

Modes:
  grid      full mixer models over d, F, blocks, L, signed (token mixer and channel mixer
            as Sparse), fixed_pt and floating_pt
  impl      lowering alternatives at one size: token mixer Conv vs Sparse, channel mixer
            Conv 1x1 vs Sparse vs Dense(kron), and one Dense per token (channel mixer only)
  project   whole-dev-set time for every size from a cost model fitted to the grid
  devset    the whole SST-2 dev set end to end (random weights, real word-piece lengths),
            sentences packed along the token axis (``--lengths`` from sst2_packing)

Each grid measurement runs in a fresh interpreter, builds the network, runs one window
(compile, spawn, warm-up) and then times ``--steps`` more steps. Usage:
``OMP_NUM_THREADS=1 python -m prototypes.loihi_lava.bench grid --json OUT``
"""
import argparse
import itertools
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.io.sink import RingBuffer as Sink
from lava.proc.lif.process import LIF
from lava.proc.sparse.process import Sparse

from .builder import LavaNetwork
from .lowering import lower
from .models import mixer_spec, random_inputs
from .packing import layout_inputs, pack
from .spec import receptive_field
from .timing import Schedule

T = 16
MEMORY_LIMIT_GIB = 4  # address space per OS process of a measurement
MEMORY_FREE_GIB = 8   # start a measurement only with this much memory available


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


def available_gib() -> float:
    with open('/proc/meminfo') as f:
        info = dict(line.split(':', 1) for line in f)
    return int(info['MemAvailable'].split()[0]) / 2 ** 20


def measure_isolated(config: dict, timeout: float) -> dict:
    """``measure`` in a fresh interpreter (Lava keeps every built network alive: one process
    running a whole grid grew to 17 GB), each of its processes limited to MEMORY_LIMIT_GIB of
    address space. On timeout the child's process group is killed."""
    cmd = [sys.executable, '-m', 'prototypes.loihi_lava.bench', 'one', '--config',
           json.dumps(config)]
    for _ in range(12):  # the host is shared: start only with MEMORY_FREE_GIB available
        if available_gib() >= MEMORY_FREE_GIB:
            break
        time.sleep(10)
    else:
        return dict(config, error=f'less than {MEMORY_FREE_GIB} GiB available')
    limit = MEMORY_LIMIT_GIB * 2 ** 30
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: resource.setrlimit(
                                resource.RLIMIT_AS, (limit, limit)))
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
    if config.get('lengths'):
        return dict(config, lengths=len(config['lengths']),
                    **measure_devset(spec, config['precision'], config['lengths']))
    r = measure(spec, config['precision'], config.get('token_mix', 'sparse'),
                config.get('token_wise', 'sparse'), steps=config['steps'])
    return dict(config, **r)


def measure_devset(spec, precision, lengths) -> dict:
    """A whole evaluation set end to end: pack the sentences (random token currents) into
    rows of the token axis, run the stream, pool each sentence's output counts on the host."""
    t0 = time.perf_counter()
    reach = receptive_field(spec)
    placements, rows, truncated = pack(lengths, spec.tokens, reach)
    rng = np.random.default_rng(0)
    c = spec.pop(spec.input).channels
    sentences = [rng.integers(-60, 160, size=(n, c)) for n in lengths]
    x = layout_inputs(sentences, placements, rows, spec.tokens)
    signs = np.array([1, -1][:spec.pop(spec.input).signs])
    inputs = (x[..., None] * signs).reshape(rows, -1)
    if precision == 'float':
        inputs = inputs.astype(np.float64)
    graph = lower(spec, precision)
    net = LavaNetwork(graph, Schedule.for_graph(graph, T), inputs)
    build = time.perf_counter() - t0
    try:
        first = net.run(T)
        cpu0 = descendant_cpu_seconds()
        wall = net.run()
        cpu = descendant_cpu_seconds() - cpu0
        t1 = time.perf_counter()
        counts = net.counts().reshape(rows, spec.tokens, -1)
        pooled = np.stack([counts[row, start:start + min(n, spec.tokens)].sum(0)
                           for (i, row, start), n in zip(
                               placements, (lengths[i] for i, _, _ in placements))])
        readout = time.perf_counter() - t1
    finally:
        net.stop()
    return {'rows': rows, 'truncated': int(truncated), 'receptive_field': list(reach),
            'steps': net.steps, 'build_s': round(build, 1), 'first_run_s': round(first, 1),
            'run_s': round(wall, 1), 'cpu_s': round(cpu, 1), 'readout_s': round(readout, 2),
            'total_s': round(build + first + wall + readout, 1),
            'ms_per_step': round(1000 * wall / (net.steps - T), 2),
            'cpu_ms_per_step': round(1000 * cpu / (net.steps - T), 2),
            'synapses': sum(s.synapses for s in graph.synapses),
            'pooled_shape': list(pooled.shape), 'loadavg_1min': round(os.getloadavg()[0], 2)}


def devset(args):
    """Whole-dev-set runs (random weights, real lengths) for the given sizes."""
    with open(args.lengths) as f:
        hist = json.load(f)['histogram']
    lengths = [n for n, k in enumerate(hist) for _ in range(k)]
    rows = []
    for d, mult, blocks, L in itertools.product(args.d, args.ffn_mult, args.blocks, args.tokens):
        config = dict(d=d, ffn=mult * d, blocks=blocks, tokens=L, signed=False,
                      precision=args.precision[0], steps=0, lengths=lengths)
        r = measure_isolated(config, args.timeout)
        r.pop('lengths', None)
        r['sentences'] = len(lengths)
        rows.append(r)
        save(args.json, [r])
        print(r, flush=True)
    return rows


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
            save(args.json, [r])
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
    process): L x (LIF d -> Dense d->F -> LIF F), driven by bias, all outputs into one sink."""
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
    # one sink summing all outputs connects the L chains into one graph (Lava 0.10 cannot
    # compile ConcatPorts)
    sink = Sink(shape=(F,), buffer=1)
    for b in outputs:
        b.s_out.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag='fixed_pt')
    root = sink
    try:
        t0 = time.perf_counter()
        root.run(condition=RunSteps(num_steps=T), run_cfg=cfg)
        t1, cpu1 = time.perf_counter(), descendant_cpu_seconds()
        root.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
        t2, cpu2 = time.perf_counter(), descendant_cpu_seconds()
    finally:
        root.stop()
    return {'impl': 'dense_per_token', 'processes': 3 * L + 1, 'first_run_s': round(t1 - t0, 2),
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
    for name, steps in () if args.only_per_token else (
            ('sparse', args.steps), ('dense', 20), ('conv', 3)):
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
    if args.only_per_token:
        return rows
    conv_d = min(d, 96)  # depthwise Conv needs groups <= 127 in the simulator
    spec = mixer_spec(L, conv_d, 2 * conv_d, 2, signed=False)
    for tm in ('sparse', 'conv'):
        r = measure(spec, 'fixed', token_mix=tm, steps=args.steps)
        r.update(layer='full_model', d=conv_d, ffn=2 * conv_d, blocks=2, tokens=L)
        rows.append(r)
        print(r, flush=True)
    return rows


def save(path, rows):
    """Append ``rows`` to the JSON list in ``path`` (if given)."""
    if path:
        old = json.load(open(path)) if os.path.exists(path) else []
        with open(path, 'w') as f:
            json.dump(old + rows, f, indent=1)


def project(args):
    """Whole-dev-set time at T=16 for every grid size from a cost model fitted to the grid
    measurements: CPU ms/step = a * processes + b * Msynapses + c * kneurons; wall on 2
    dedicated cores = ``--wall-per-cpu`` * CPU (0.57-0.63 observed in the quietest runs)."""
    with open(args.lengths) as f:
        hist = json.load(f)['histogram']
    lengths = [n for n, k in enumerate(hist) for _ in range(k)]
    measured = [r for r in json.load(open(args.json)) if 'cpu_ms_per_step' in r
                and r.get('precision') == 'fixed' and 'lengths' not in r and 'rows' not in r]
    X = np.array([[r['processes'], r['synapses'] / 1e6, r['neurons'] / 1e3] for r in measured])
    coef = np.linalg.lstsq(X, np.array([r['cpu_ms_per_step'] for r in measured]), rcond=None)[0]
    print(f'fixed_pt CPU ms/step = {coef[0]:.3f} * processes + {coef[1]:.3f} * Msynapses + '
          f'{coef[2]:.3f} * kneurons  ({len(measured)} measurements)')
    rows = []
    for d, mult, blocks, signed in itertools.product(args.d, args.ffn_mult, args.blocks,
                                                     (False, True)):
        F, S = mult * d, 2 if signed else 1
        syn_token = blocks * (2 * F * d + 3 * d + 2 * d) * S * S
        neu_token = (d + blocks * (2 * d + F)) * S
        procs = 2 + (1 + 3 * blocks) + 5 * blocks
        for L, packed in ((64, False), (64, True), (128, True)):
            _, n_rows, truncated = pack(lengths, L, (blocks, blocks), None if packed else 1)
            steps = n_rows * T + 3 * blocks
            cpu = steps * (coef[0] * procs + coef[1] * syn_token * L / 1e6
                           + coef[2] * neu_token * L / 1e3) / 1000
            r = dict(d=d, ffn=F, blocks=blocks, signed=signed, tokens=L, packed=packed,
                     rows=n_rows, steps=steps, synapses_per_token=syn_token,
                     synapses=syn_token * L, cpu_min=round(cpu / 60, 1),
                     wall_min=round(args.wall_per_cpu * cpu / 60, 1))
            rows.append(r)
            print(f"d={d:3} F={F:4} blocks={blocks} signed={signed!s:5} L={L:3} "
                  f"{'packed' if packed else 'single':6} rows={n_rows:3} "
                  f"synapses/token={syn_token / 1e6:5.2f}M wall~{r['wall_min']:5.1f} min "
                  f"(CPU {r['cpu_min']:5.1f} min){'  <= 10' if r['wall_min'] <= 10 else ''}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('mode', choices=('grid', 'impl', 'devset', 'project', 'one'))
    parser.add_argument('--wall-per-cpu', type=float, default=0.6,
                        help="mode 'project': wall time per CPU time on 2 dedicated cores")
    parser.add_argument('--lengths', help="mode 'devset': sst2_packing JSON (histogram)")
    parser.add_argument('--config', help="mode 'one': a JSON measurement config")
    parser.add_argument('--d', type=int, nargs='+', default=[192, 256, 384])
    parser.add_argument('--ffn-mult', type=int, nargs='+', default=[2, 4])
    parser.add_argument('--blocks', type=int, nargs='+', default=[2, 4])
    parser.add_argument('--tokens', type=int, nargs='+', default=[32, 64])
    parser.add_argument('--precision', nargs='+', default=['fixed', 'float'])
    parser.add_argument('--per-token-l', type=int, nargs='*', default=[8, 16])
    parser.add_argument('--only-per-token', action='store_true',
                        help="mode 'impl': measure only the one-Dense-per-token layout")
    parser.add_argument('--steps', type=int, default=64)
    parser.add_argument('--max-synapses', type=float, default=4.5e7,
                        help='skip fixed_pt grid points above this (memory, time)')
    parser.add_argument('--float-max-synapses', type=float, default=2e7,
                        help='skip floating_pt grid points above this')
    parser.add_argument('--timeout', type=float, default=400, help='seconds per measurement')
    parser.add_argument('--json', help="append the rows to this JSON list file ('project': "
                        "read the grid measurements from it)")
    parser.add_argument('--project-json', help="mode 'project': write the projection here")
    args = parser.parse_args()
    if args.mode == 'one':
        print(json.dumps(measure_config(json.loads(args.config))))
        return
    shm_before = set(os.listdir('/dev/shm'))
    rows = {'grid': grid, 'impl': impl, 'devset': devset, 'project': project}[args.mode](args)
    print('/dev/shm leftovers:', sorted(set(os.listdir('/dev/shm')) - shm_before))
    if args.mode == 'impl':
        save(args.json, rows)
    elif args.mode == 'project' and args.project_json:
        with open(args.project_json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
