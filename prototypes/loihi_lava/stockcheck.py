"""Compile a built graph without running it, list its leaf processes and selected
ProcessModels, and check that only boundary processes are not stock.

``Compiler().compile(root, run_cfg)`` expands SubProcessModels and selects one ProcessModel
per leaf process without spawning anything (no OS processes, no /dev/shm segments). A compiled
graph cannot run any more: build a separate network for the check.

Usage: ``python -m prototypes.loihi_lava.stockcheck`` (prints the tables, runs a negative
control, exits non-zero if a check fails).
"""
import os
import sys
import typing as ty

import numpy as np
from lava.magma.compiler.compiler import Compiler
from lava.magma.core.run_configs import Loihi2SimCfg

from .builder import SELECT_TAG, LavaNetwork
from .io_procs.boundary import CurrentSource
from .lowering import lower
from .models import mixer_spec, random_inputs
from .timing import Schedule

STOCK_PREFIXES = ('lava.proc.', 'lava.lib.dl.')


def leaf_report(net: LavaNetwork) -> ty.List[dict]:
    """Compile ``net`` (no run) and describe every leaf process and its selected model."""
    cfg = Loihi2SimCfg(select_tag=SELECT_TAG[net.graph.precision])
    executable = Compiler().compile(net.source, cfg)
    rows = []
    for proc, builder in executable.proc_builders.items():
        model = builder.proc_model
        rows.append({'name': proc.name, 'process': f'{type(proc).__module__}.{type(proc).__name__}',
                     'model': f'{model.__module__}.{model.__name__}',
                     'boundary': proc in boundary_processes(net)})
    return rows


def boundary_processes(net: LavaNetwork) -> ty.List:
    """The host processes allowed at the edge of the graph: input, readout, recorders."""
    return [net.source, net.readout] + list(net.recorders)


def check_stock_only(rows: ty.List[dict]) -> ty.List[str]:
    """One line per non-boundary leaf process that is not from lava.proc / lava.lib.dl."""
    return [f"{r['name']}: {r['process']} (model {r['model']}) is not a stock Lava process"
            for r in rows if not r['boundary'] and not r['process'].startswith(STOCK_PREFIXES)]


def main() -> int:
    shm_before = set(os.listdir('/dev/shm'))
    failures = 0
    spec = mixer_spec(6, 4, 8, 2, signed=True)
    inputs = random_inputs(spec, 2)
    for precision in ('fixed', 'float'):
        for token_mix in ('sparse', 'conv'):
            graph = lower(spec, precision, token_mix=token_mix)
            net = LavaNetwork(graph, Schedule.for_graph(graph, 8), inputs)
            try:
                rows = leaf_report(net)
            finally:
                net.stop()
            problems = check_stock_only(rows)
            failures += bool(problems)
            print(f'\n{precision} / token mixer {token_mix}: {len(rows)} leaf processes, '
                  f'{"OK" if not problems else problems}')
            for r in rows:
                print(f"  {r['name']:10} {r['process']:52} {r['model']}"
                      f"{'  [boundary]' if r['boundary'] else ''}")
    # negative control: a custom process inside the graph must be flagged
    graph = lower(spec, 'fixed')
    net = LavaNetwork(graph, Schedule.for_graph(graph, 8), inputs)
    np.save(os.path.join(net.workdir, 'extra.npy'), np.zeros((1, graph.neuron('h1').n), int))
    extra = CurrentSource(path=os.path.join(net.workdir, 'extra.npy'),
                          shape=(graph.neuron('h1').n,), period=8, length=8, name='host_block')
    extra.s_out.connect(net.neurons['h1'].a_in)
    try:
        problems = check_stock_only(leaf_report(net))
    finally:
        net.stop()
    print('\nnegative control (custom process feeding h1):', problems)
    failures += not problems
    print('/dev/shm leftovers:', sorted(set(os.listdir('/dev/shm')) - shm_before))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
