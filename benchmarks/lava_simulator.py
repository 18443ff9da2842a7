"""Lava simulator speed on random parameters (numpy only; no model file, no torch).

    .venv/bin/python benchmarks/lava_simulator.py --hidden 384 --heads 12 --ffn 1536 --layers 4 \\
        --sentences 32 --length 24 [--pack --window 128]

Synapses are drawn at ~1.5/sqrt(fan_in) with biases ~0.2 and random embedding tables, so
populations fire at moderate rates like a trained model. The runs are planned as
``spikingbert lava`` plans them (``lava_spikingbert.lava.schedule.plan_runs``). Sentence lengths vary around
``--length`` (+-50%) unless ``--fixed-length``. Prints ms/step and s/sentence (incl. compile).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from lava_spikingbert.lava.params import EmbeddingParams, LavaModelParams, LayerParams, LinearParams, NormParams
from lava_spikingbert.lava.schedule import plan_runs, run_lava


def random_params(hidden: int, heads: int, ffn: int, layers: int, t_conv: int = 16, seed: int = 0,
                  neuron: str = "if_subtract", vocab: int = 1000, max_length: int = 512) -> LavaModelParams:
    rng = np.random.default_rng(seed)

    def lin(n_out: int, n_in: int) -> LinearParams:
        return LinearParams(rng.standard_normal((n_out, n_in)) * 1.5 / np.sqrt(n_in),
                            0.2 + 0.1 * rng.standard_normal(n_out))

    def norm(n: int) -> NormParams:
        return NormParams(1 + 0.1 * rng.standard_normal(n), 0.1 * rng.standard_normal(n))

    return LavaModelParams(
        hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn, num_hidden_layers=layers, vth=1.0,
        neuron=neuron, t_conv=t_conv, layer_norm_eps=1e-12,
        layers=[LayerParams(lin(hidden, hidden), lin(hidden, hidden), lin(hidden, hidden), lin(hidden, hidden),
                            norm(hidden), lin(ffn, hidden), lin(hidden, ffn), norm(hidden)) for _ in range(layers)],
        classifier=lin(2, hidden),
        embeddings=EmbeddingParams(rng.standard_normal((vocab, hidden)), rng.standard_normal((max_length, hidden)),
                                   rng.standard_normal((2, hidden)), norm(hidden)))


def random_sentences(n: int, length: int, vocab: int, seed: int = 1, fixed_length: bool = False):
    """Token ids and type ids of ``n`` random sentences, lengths around ``length`` (+-50%)."""
    rng = np.random.default_rng(seed)
    lengths = np.full(n, length) if fixed_length else rng.integers(max(1, length // 2), length * 3 // 2 + 1, n)
    ids = [rng.integers(1, vocab, int(m)) for m in lengths]
    return ids, [np.zeros_like(x) for x in ids]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--t-conv", type=int, default=16)
    ap.add_argument("--sentences", type=int, default=16)
    ap.add_argument("--length", type=int, default=24)
    ap.add_argument("--fixed-length", action="store_true")
    ap.add_argument("--pack", action="store_true", help="pack sentences side by side into windows")
    ap.add_argument("--window", type=int, default=None, help="tokens per packed window")
    ap.add_argument("--block-latency", type=int, default=0)
    args = ap.parse_args(argv)

    params = random_params(args.hidden, args.heads, args.ffn, args.layers, args.t_conv)
    ids, types = random_sentences(args.sentences, args.length, 1000, fixed_length=args.fixed_length)
    t0 = time.perf_counter()
    runs = []
    batch = args.sentences if not args.pack else 1024  # one run: every sentence (unpacked) or window (packed)
    for run in plan_runs(params, ids, types, batch, pack=args.pack, window_tokens=args.window):
        res, _ = run_lava(params, run, args.t_conv, block_latency=args.block_latency)
        runs.append(dict(sentences=len(run.sentences), windows=run.emb.shape[0], length=run.emb.shape[1],
                         steps=res.num_steps, **res.timings))
    total = time.perf_counter() - t0
    steps = sum(r["steps"] for r in runs)
    run_s = sum(r["run_s"] for r in runs)
    out = dict(config=vars(args), total_s=round(total, 2), steps=steps, ms_per_step=round(1e3 * run_s / steps, 1),
               run_s_per_sentence=round(run_s / args.sentences, 3), total_s_per_sentence=round(total / args.sentences, 3),
               runs=[{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in runs])
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
