"""Simulator speed benchmark on random parameters (numpy only; no model file, no torch).

    python -m lava_spikingbert.lava.bench --hidden 384 --heads 12 --ffn 1536 --layers 4 \\
        --sentences 32 --length 24 [--pack --window 128]

Synapses are drawn at ~1.5/sqrt(fan_in) with biases ~0.2 and the embedding currents ~N(0, 1), so
populations fire at moderate rates like a trained model. Sentence lengths vary around
``--length`` (+-50%) unless ``--fixed-length``. Prints ms/step and s/sentence (incl. compile).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from lava_spikingbert.lava.params import LavaModelParams, LayerParams, LinearParams, NormParams


def random_params(hidden: int, heads: int, ffn: int, layers: int, t_conv: int = 16, seed: int = 0,
                  neuron: str = "if_subtract") -> LavaModelParams:
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
        classifier=lin(2, hidden))


def random_batch(n: int, length: int, hidden: int, seed: int = 1, fixed_length: bool = False):
    rng = np.random.default_rng(seed)
    lengths = np.full(n, length) if fixed_length else rng.integers(max(1, length // 2), length * 3 // 2 + 1, n)
    max_len = int(lengths.max())
    mask = (np.arange(max_len)[None] < lengths[:, None]).astype(np.int64)
    emb = rng.standard_normal((n, max_len, hidden)).astype(np.float32) * mask[..., None]
    return emb, mask


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
    ap.add_argument("--pack", action="store_true", help="pack sentences side by side (run_dataset)")
    ap.add_argument("--window", type=int, default=None, help="tokens per packed window")
    ap.add_argument("--block-latency", type=int, default=0)
    args = ap.parse_args(argv)

    from lava_spikingbert.lava.runner import run_batch, run_dataset

    params = random_params(args.hidden, args.heads, args.ffn, args.layers, args.t_conv)
    emb, mask = random_batch(args.sentences, args.length, args.hidden, fixed_length=args.fixed_length)
    t0 = time.perf_counter()
    if args.pack:
        res = run_dataset(params, emb, mask, pack=True, window_tokens=args.window,
                          block_latency=args.block_latency)
        runs = res.runs
    else:
        r = run_batch(params, emb, mask, record="cls", block_latency=args.block_latency)
        runs = [dict(sentences=args.sentences, windows=args.sentences, length=emb.shape[1], steps=r.num_steps,
                     **r.timings)]
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
