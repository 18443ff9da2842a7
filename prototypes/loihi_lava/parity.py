"""Parity of the stock Lava graph with the numpy reference, spike for spike.

For a tiny random 2-block mixer with residuals, several sentences in one run (per-window
LIFReset), every population and every step is compared between ``Loihi2SimCfg`` and
``reference.Reference``:

* fixed_pt (bit-accurate) for each lowering variant (token mixer Sparse/Conv, channel mixer
  Sparse/Conv 1x1/Dense, signed/unsigned, causal/centred, current/bias input);
* floating_pt with float weights against the float64 reference (mismatches are reported with
  the distance of ``v`` to threshold: summation order differs);
* the timing claims: ``period = T`` (pipelined) gives the same per-window counts as
  ``period = T + depth``, and each sentence's counts equal a run of that sentence alone.

Usage: ``python -m prototypes.loihi_lava.parity [--json OUT]``
"""
import argparse
import itertools
import json
import os

import numpy as np

from .builder import LavaNetwork
from .lowering import lower
from .models import mixer_spec, random_inputs
from .reference import Reference
from .spec import receptive_field
from .timing import Schedule

TOKENS, D, FFN, BLOCKS, T, WINDOWS = 6, 4, 8, 2, 8, 4
OPTIONS = {'spmv': True}  # set from the command line


def reference_run(graph, schedule, inputs):
    """Rasters of every population and output counts per window from the reference."""
    ref = Reference(graph, schedule.period, schedule.offsets())
    steps = schedule.total_steps(len(inputs))
    zeros = np.zeros_like(inputs[0])
    rasters = {n.name: [] for n in graph.neurons}
    for t in range(1, steps + 1):
        window, phase = divmod(t - 1, schedule.period)
        x = inputs[window] if window < len(inputs) and phase < schedule.steps_per_window else zeros
        for name, s in ref.step(x).items():
            rasters[name].append(s)
    rasters = {k: np.array(v, dtype=np.int32) for k, v in rasters.items()}
    return rasters, window_counts(rasters[graph.spec.output], schedule, len(inputs))


def window_counts(raster, schedule, windows):
    """Sum a raster over each window of the output population."""
    off, P, T = schedule.readout_offset, schedule.period, schedule.steps_per_window
    return np.array([raster[w * P + off:w * P + off + T].sum(0) for w in range(windows)])


def lava_run(graph, schedule, inputs, input_mode='current', record=True):
    net = LavaNetwork(graph, schedule, inputs, input_mode=input_mode,
                      record=[n.name for n in graph.neurons] if record else (),
                      spmv=OPTIONS['spmv'])
    try:
        net.run()
        rasters = {n.name: net.raster(n.name) for n in graph.neurons} if record else {}
        return rasters, net.counts()
    finally:
        net.stop()


def fixed_case(signed, causal, token_mix, token_wise, input_mode):
    spec = mixer_spec(TOKENS, D, FFN, BLOCKS, signed=signed, causal=causal)
    if input_mode == 'bias':  # same bias in weight units, expressed with bias_exp = 6
        pop = spec.pop(spec.input)
        pop.bias, pop.bias_exp = pop.bias // 32, 6
    graph = lower(spec, 'fixed', token_mix=token_mix, token_wise=token_wise)
    schedule = Schedule.for_graph(graph, T)
    inputs = random_inputs(spec, WINDOWS)
    ref_rasters, ref_counts = reference_run(graph, schedule, inputs)
    rasters, counts = lava_run(graph, schedule, inputs, input_mode)
    diff = {k: int((rasters[k] != ref_rasters[k]).sum()) for k in ref_rasters}
    return {
        'precision': 'fixed', 'signed': signed, 'causal': causal, 'token_mix': token_mix,
        'token_wise': token_wise, 'input': input_mode,
        'processes': [s.process for s in graph.synapses],
        'steps': schedule.total_steps(WINDOWS),
        'spikes': int(sum(r.sum() for r in ref_rasters.values())),
        'mismatched_spikes': sum(diff.values()),
        'counts_equal': bool(np.array_equal(counts, ref_counts)),
        'output_spikes_per_window': ref_counts.sum(1).tolist(),
    }


def float_case(signed):
    spec = mixer_spec(TOKENS, D, FFN, BLOCKS, signed=signed, precision='float')
    graph = lower(spec, 'float')
    schedule = Schedule.for_graph(graph, T)
    inputs = random_inputs(spec, WINDOWS, 'float')
    ref_rasters, ref_counts = reference_run(graph, schedule, inputs)
    rasters, counts = lava_run(graph, schedule, inputs)
    diff = {k: int((rasters[k] != ref_rasters[k]).sum()) for k in ref_rasters}
    return {'precision': 'float', 'signed': signed,
            'spikes': int(sum(r.sum() for r in ref_rasters.values())),
            'mismatched_spikes': sum(diff.values()),
            'counts_equal': bool(np.array_equal(counts, ref_counts))}


def equivalence_case():
    """Token mixer as depthwise Conv vs banded Sparse, channel mixer as Conv 1x1 vs
    block-diagonal Sparse: identical spikes (Lava fixed_pt) once the weights are what both
    models use unchanged (even, 8-bit, weight_exp = 0; Conv keeps odd weights and ignores
    weight_exp, Sparse truncates and applies it)."""
    spec = mixer_spec(TOKENS, D, FFN, BLOCKS, signed=True)
    for e in spec.edges:
        e.weight, e.weight_exp = (np.asarray(e.weight) // 2) * 2, 0
    inputs = random_inputs(spec, WINDOWS)
    runs = {}
    for tm, tw in (('sparse', 'sparse'), ('conv', 'conv')):
        graph = lower(spec, 'fixed', token_mix=tm, token_wise=tw)
        runs[tm] = lava_run(graph, Schedule.for_graph(graph, T), inputs)[0]
    mismatched = sum(int((runs['sparse'][k] != runs['conv'][k]).sum()) for k in runs['sparse'])
    return {'spikes': int(sum(r.sum() for r in runs['sparse'].values())),
            'conv_vs_sparse_mismatched_spikes': mismatched}


def packing_case():
    """Two sentences in one row of the token axis: with the gap equal to the receptive field
    each sentence's output counts equal those of a row holding it alone; one position less
    and they leak (negative control)."""
    L = 24
    spec = mixer_spec(L, D, FFN, BLOCKS, signed=True)
    graph = lower(spec, 'fixed')
    reach = receptive_field(spec)
    rng = np.random.default_rng(5)
    sentences = [rng.integers(-60, 160, size=(n, D)) for n in (6, 7)]
    result = {'receptive_field': list(reach)}
    for gap in (max(reach), max(reach) - 1):
        starts = [reach[0], reach[0] + 6 + gap]
        rows = []
        for keep in ((0, 1), (0,), (1,)):
            x = np.zeros((L, D), dtype=np.int64)
            for i in keep:
                x[starts[i]:starts[i] + len(sentences[i])] = sentences[i]
            rows.append((x[..., None] * np.array([1, -1])).reshape(-1))
        counts = lava_run(graph, Schedule.for_graph(graph, T), np.array(rows), record=False)[1]
        counts = counts.reshape(3, L, -1)
        equal = [np.array_equal(counts[0, s:s + len(e)], counts[1 + i, s:s + len(e)])
                 for i, (s, e) in enumerate(zip(starts, sentences))]
        result[f'gap_{gap}_isolated'] = bool(all(equal))
    return result


def timing_case():
    """Pipelined windows (period = T) vs padded windows (period = T + depth) vs one sentence
    per run: identical per-window output counts (Lava, fixed_pt, counts only)."""
    spec = mixer_spec(TOKENS, D, FFN, BLOCKS, signed=True)
    graph = lower(spec, 'fixed')
    inputs = random_inputs(spec, WINDOWS)
    piped = lava_run(graph, Schedule.for_graph(graph, T), inputs, record=False)[1]
    padded = lava_run(graph, Schedule.for_graph(graph, T, T + graph.depth), inputs,
                      record=False)[1]
    alone = np.concatenate([lava_run(graph, Schedule.for_graph(graph, T), inputs[i:i + 1],
                                     record=False)[1] for i in range(WINDOWS)])
    return {'depth': graph.depth, 'pipelined_equals_padded': bool(np.array_equal(piped, padded)),
            'pipelined_equals_alone': bool(np.array_equal(piped, alone)),
            'output_spikes_per_window': piped.sum(1).tolist()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--json', help='write the results here')
    parser.add_argument('--binary', action='store_true',
                        help='synapses take binary spikes (spmv=False, the hardware setting)')
    args = parser.parse_args()
    OPTIONS['spmv'] = not args.binary
    shm_before = set(os.listdir('/dev/shm'))
    results = {'spmv': OPTIONS['spmv'], 'fixed': [], 'float': []}
    variants = [(s, c, tm, tw, 'current') for s, c, tm, tw in itertools.product(
        (False, True), (False, True), ('sparse', 'conv'), ('sparse',))]
    variants += [(True, False, 'sparse', 'conv', 'current'),
                 (False, False, 'sparse', 'dense', 'current'),
                 (True, False, 'sparse', 'sparse', 'bias')]
    for v in variants:
        r = fixed_case(*v)
        results['fixed'].append(r)
        print('fixed signed={signed!s:5} causal={causal!s:5} mix={token_mix:6} '
              'wise={token_wise:6} input={input:7} spikes={spikes:5} '
              'mismatched={mismatched_spikes} counts_equal={counts_equal}'.format(**r), flush=True)
    for signed in (False, True):
        r = float_case(signed)
        results['float'].append(r)
        print('float signed={signed!s:5} spikes={spikes:5} mismatched={mismatched_spikes} '
              'counts_equal={counts_equal}'.format(**r), flush=True)
    results['equivalence'] = equivalence_case()
    print('equivalence', results['equivalence'], flush=True)
    results['packing'] = packing_case()
    print('packing', results['packing'], flush=True)
    results['timing'] = timing_case()
    print('timing', results['timing'])
    leaked = sorted(set(os.listdir('/dev/shm')) - shm_before)
    results['shm_leftovers'] = leaked
    print('/dev/shm leftovers:', leaked)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
