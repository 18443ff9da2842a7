"""Inference throughput of the spiking simulation: reference-style schedule vs ours.

Both compute the same model (the default student, same weights, T = ``--t-conv`` = 16) with the
SAME synaptic maps of ``lava_spikingbert.model.encoder`` (``layer.key_current`` ... ``output_current``)
and the same IF dynamics (u += I; s = u >= vth; u -= vth * s); they differ only in the schedule:

(a) reference-style (``reference_logits``): what the reference code's ``snn_forward`` does at
    evaluation. Every sentence is padded to ``--pad-to`` = 128 tokens (max_seq_length 128),
    batches of 32 in file order, step-major (per time step all 25 populations are updated in
    order, each from this step's spikes of its sources), dense, every population at every token
    (also the last layer, although only its [CLS] ASR is read), IF update written as in the
    reference (``u = u + I; s = (u >= vth).float(); u = u - vth * s; a = a + s``; new tensors every
    step). Left out, to be generous to the reference: its per-step diagnostics (25 ``.item()``
    means), the ``u * leaky`` multiply (leaky = 1.0) and the per-step attention-score sums.
(b) ours: length buckets (sentences sorted by length, batches of at most 32 sentences of the
    same length, so nothing is padded; ``--mixed-lengths``: plain batches of 32 of the sorted
    order, padded to the longest) + ``SpikingBert.predict_logits`` (population-major chunks of
    time steps, the last layer computed for [CLS] only, in-place membrane loop), ``--workers``
    batches at a time (``lava_spikingbert.model.inference.predict_batches``: one batch per core, each
    with one intra-op thread; default: one worker per ``--threads``; 1 = one batch at a time
    with ``--threads`` intra-op threads, the session-2..4 schedule). With quantized
    synapses (a QAT checkpoint, or ``--quantize``) ours multiplies the binary spikes with the int8
    weight codes (``torch._int_mm``, exact integer sums); the reference keeps float products of
    the same Q(W), as the reference code would (``--float-synapses`` turns ours to float too).

``--reference-workers N`` runs the reference schedule N batches at a time the same way (not what
the reference code does; it shows how much of our gain the batch-parallel threads alone give).

Timing: ``--reference-limit`` sentences (default 96 = 3 full batches; each reference batch costs
the same because every sentence is padded to 128 tokens, so a subset measures its throughput
without bias; ``--reference-limit 0`` = all) and ``--limit`` sentences for ours (default: all 872
dev sentences). The machine is shared, so the two are interleaved: reference batch k, then the
k-th share of our batches, ... Both get a warm-up run first. Sentences/s are wall-clock; the
process CPU seconds of each side are reported too (``speedup_cpu_time``: with 1 thread the
least contention-sensitive measure; with 2 threads it includes OpenMP spin-waiting). Agreement: argmax predictions of (a)
and (b) on the reference subset (and how many logits are bit-identical).

``--profile`` additionally prints a torch.profiler table of one of our batches (where the time goes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import _common as C
from lava_spikingbert.model.inference import map_batches, predict_batches
from lava_spikingbert.model.neurons import IFSubtract


@torch.no_grad()
def reference_logits(model, input_ids, attention_mask, token_type_ids, t_conv: int,
                     extras: bool = False) -> torch.Tensor:
    """Reference-style simulation (step-major, dense, all populations at all tokens); logits.

    ``extras`` adds the rest of the reference loop's per-step work: the leak multiply
    ``u = u * leaky`` (leaky = 1.0), the per-layer attention-score sums and the diagnostic
    running means (``.item()`` of sample 0 of every population, full means of two of them).
    """
    layers = model.layers
    neuron = model.neuron
    literal = type(neuron) is IFSubtract  # the reference code's own IF lines
    vth, leaky = neuron.vth, 1.0
    emb = model.embedding_current(input_ids, token_type_ids)
    bias = model.mask_bias(attention_mask, emb.dtype)
    u: dict[str, torch.Tensor] = {}
    a: dict[str, torch.Tensor] = {}
    attn_sums: list[torch.Tensor | None] = [None] * len(layers)
    diagnostics: list[float] = []

    def fire(name: str, current: torch.Tensor) -> torch.Tensor:
        prev = u.get(name)
        if prev is None:
            prev = torch.zeros_like(current)
        if literal:
            mem = prev + current
            spike = (mem >= vth).float()
            mem = mem - vth * spike
            u[name] = mem * leaky if extras else mem
        else:
            u[name], spike = neuron.step(prev, current)
        a[name] = spike if name not in a else a[name] + spike
        return spike

    for t in range(t_conv):
        x = fire("embed", emb)
        for i, layer in enumerate(layers):
            p = f"layer{i}."
            s_k = fire(p + "key", layer.key_current(x))
            s_v = fire(p + "value", layer.value_current(x))
            ctx, scores = layer.context_current(x, s_k, s_v, bias)
            if extras:
                attn_sums[i] = scores if attn_sums[i] is None else attn_sums[i] + scores
            s_a = fire(p + "context", ctx)
            s_1 = fire(p + "attn_out", layer.attn_out_current(s_a, x))
            s_2 = fire(p + "intermediate", layer.intermediate_current(s_1))
            x = fire(p + "output", layer.output_current(s_2, s_1))
        if extras:
            names = list(a)
            diagnostics += [torch.mean(a[k][0] / (t + 1)).item() for k in names]
            diagnostics += [(torch.mean(a[k]) / (t + 1)).item() for k in names[:2]]
    cls_asr = a[f"layer{len(layers) - 1}.output"][:, 0] / t_conv
    return model.classifier(cls_asr)


def split_evenly(items: list, parts: int) -> list[list]:
    parts = max(1, parts)
    k, r = divmod(len(items), parts)
    out, start = [], 0
    for j in range(parts):
        end = start + k + (1 if j < r else 0)
        out.append(items[start:end])
        start = end
    return out


def profile_batch(model, batch, t_conv: int, integer: bool = True) -> str:
    from torch.profiler import ProfilerActivity, profile

    ids, mask, tt = batch
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model.predict_logits(ids, mask, tt, t_conv, integer_synapses=integer)
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=28, max_shapes_column_width=60)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser)
    parser.add_argument("--limit", type=int, default=None, help="our run: first N dev sentences (default all 872)")
    parser.add_argument("--reference-limit", type=int, default=96,
                        help="reference run: first N dev sentences (default 96; 0 = same as ours)")
    parser.add_argument("--t-conv", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pad-to", type=int, default=128, help="reference padding length (max_seq_length)")
    parser.add_argument("--workers", type=int, default=None,
                        help="ours: batches simulated at once, one intra-op thread each (default: --threads)")
    parser.add_argument("--reference-workers", type=int, default=1,
                        help="reference: batches simulated at once, one intra-op thread each (default 1: one "
                             "batch at a time with --threads intra-op threads, as the reference code runs)")
    parser.add_argument("--profile", action="store_true", help="print a profile of one of our batches")
    parser.add_argument("--mixed-lengths", action="store_true",
                        help="ours: cut the length-sorted sentences into batches of --batch-size regardless of "
                             "length (padding to the longest) instead of equal-length buckets")
    parser.add_argument("--quantize", default=None, choices=("int8", "ternary", "binary"),
                        help="quantize the synapses of the benchmarked model first (post-training; a QAT "
                             "checkpoint already carries its weight mode); both schedules use the same Q(W)")
    parser.add_argument("--float-synapses", action="store_true",
                        help="ours: float matrix products also for quantized synapses (no int8 kernels)")
    parser.add_argument("--reference-extras", action="store_true",
                        help="also time the reference loop with its per-step extras (leak multiply, "
                             "attention-score sums, diagnostics) on the same sentences")
    args = parser.parse_args(argv)
    C.setup_torch(args.threads)
    workers = args.threads if args.workers is None else args.workers
    rw = max(1, args.reference_workers)

    model, weights = C.build_model(args)
    if args.quantize:
        from lava_spikingbert.model.quantizers import attach_weight_quantizers
        attach_weight_quantizers(model, args.quantize)
        weights += f", synapses quantized post-training to {args.quantize}"
    integer = model.config.weights != "fp32" and not args.float_synapses
    data = C.load_sst2("dev", args.glue_dir, args.limit)
    ids = C.tokenize([s for s, _ in data], max_length=args.pad_to)
    n = len(ids)
    n_ref = n if not args.reference_limit else min(args.reference_limit, n)
    T, bs = args.t_conv, args.batch_size
    print(f"weights: {weights}; ours with {'int8' if integer else 'float'} synaptic products of the spikes")
    print(f"{n} SST-2 dev sentences for ours, {n_ref} for the reference; T={T}; batch {bs}; "
          f"{sum(map(len, ids))} real tokens; threads {torch.get_num_threads()}")

    ours_batches = [(idx, C.pad_batch([ids[i] for i in idx]))
                    for idx in C.bucketed(ids, bs, exact_length=not args.mixed_lengths)]
    ref_batches = [(list(range(s, min(s + bs, n_ref))),
                    C.pad_batch([ids[i] for i in range(s, min(s + bs, n_ref))], args.pad_to))
                   for s in range(0, n_ref, bs)]

    # warm-up at full batch size (kernels, first touch of the allocator's memory), in the threads
    # the timed runs use
    with torch.no_grad():
        map_batches(lambda b: reference_logits(model, *b, 2, extras=args.reference_extras),
                    [b for _, b in ref_batches[:rw]], workers=rw)
        largest = sorted(ours_batches, key=lambda ib: -ib[1][0].numel())[:max(2, workers)]
        predict_batches(model, [b for _, b in largest], 2, workers=workers, integer_synapses=integer)

    ours_logits = torch.empty(n, model.config.num_labels)
    ref_logits = torch.empty(n_ref, model.config.num_labels)
    t_ours = t_ref = c_ours = c_ref = t_lit = c_lit = 0.0
    lit_logits = torch.empty(n_ref, model.config.num_labels)
    load_start = os.getloadavg()[0]
    ref_groups = [ref_batches[k:k + rw] for k in range(0, len(ref_batches), rw)]
    groups = split_evenly(ours_batches, len(ref_groups))
    done_ours = 0
    for ref_group, group in zip(ref_groups, groups):
        start, cpu = time.perf_counter(), time.process_time()
        outs = map_batches(lambda b: reference_logits(model, *b, T), [b for _, b in ref_group], workers=rw)
        t_ref += time.perf_counter() - start
        c_ref += time.process_time() - cpu
        for (r_idx, _), out in zip(ref_group, outs):
            ref_logits[r_idx] = out
        if args.reference_extras:
            start, cpu = time.perf_counter(), time.process_time()
            outs = map_batches(lambda b: reference_logits(model, *b, T, extras=True), [b for _, b in ref_group],
                               workers=rw)
            t_lit += time.perf_counter() - start
            c_lit += time.process_time() - cpu
            for (r_idx, _), out in zip(ref_group, outs):
                lit_logits[r_idx] = out
        start, cpu = time.perf_counter(), time.process_time()
        outs = predict_batches(model, [b for _, b in group], T, workers=workers, integer_synapses=integer)
        t_ours += time.perf_counter() - start
        c_ours += time.process_time() - cpu
        for (idx, _), out in zip(group, outs):
            ours_logits[idx] = out
        done_ours += sum(len(i) for i, _ in group)
        print(f"  reference {ref_group[-1][0][-1] + 1}/{n_ref} sentences {t_ref:.1f}s | ours "
              f"{done_ours}/{n} {t_ours:.1f}s", flush=True)

    ref_sps, ours_sps = n_ref / t_ref, n / t_ours
    sub = ours_logits[:n_ref]
    agreement = float((sub.argmax(-1) == ref_logits.argmax(-1)).float().mean())
    identical = float((sub == ref_logits).all(-1).float().mean())
    labels = torch.tensor([y for _, y in data])
    ours_acc = float((ours_logits.argmax(-1) == labels).float().mean())
    ref_acc = float((ref_logits.argmax(-1) == labels[:n_ref]).float().mean())
    max_diff = float((sub - ref_logits).abs().max())
    ref_tokens = n_ref * args.pad_to
    our_tokens = sum(b[0].numel() for _, b in ours_batches)
    result = {
        "n": n, "n_reference": n_ref, "t_conv": T, "batch_size": bs, "pad_to": args.pad_to,
        "reference_sps": ref_sps, "ours_sps": ours_sps, "speedup": ours_sps / ref_sps,
        "reference_seconds": t_ref, "ours_seconds": t_ours,
        "reference_cpu_seconds": c_ref, "ours_cpu_seconds": c_ours,
        "speedup_cpu_time": (n / c_ours) / (n_ref / c_ref), "load_avg_1min_at_start": load_start,
        "threads": torch.get_num_threads(), "ours_workers": workers, "reference_workers": rw,
        "agreement": agreement, "logits_bit_identical_fraction": identical, "max_abs_logit_diff": max_diff,
        "ours_accuracy": ours_acc, "reference_accuracy_on_its_subset": ref_acc,
        "tokens_per_sentence": {"reference": ref_tokens / n_ref, "ours_padded": our_tokens / n,
                                "real": sum(map(len, ids)) / n},
        "weights": weights, "weight_mode": model.config.weights, "integer_synapses": integer,
        "target_speedup": 10.0, "ours_batches": len(ours_batches),
        "ours_batching": "sorted, mixed lengths" if args.mixed_lengths else "equal-length buckets",
        "target_met": ours_sps / ref_sps >= 10.0,
        **C.run_info(args),
    }
    rows = [["(a) reference: pad 128, step-major, dense" + (f", {rw} batches at a time" if rw > 1 else ""),
             n_ref, t_ref, c_ref, ref_sps, ref_tokens / n_ref],
            [f"(b) ours: {'sorted batches' if args.mixed_lengths else 'equal-length buckets'} + predict_logits"
             + (" (int8 products)" if integer else "") + (f", {workers} batches at a time" if workers > 1 else ""),
             n, t_ours, c_ours, ours_sps, our_tokens / n]]
    if args.reference_extras:
        result.update({"reference_extras_sps": n_ref / t_lit, "reference_extras_seconds": t_lit,
                       "reference_extras_cpu_seconds": c_lit, "speedup_vs_reference_extras": ours_sps / (n_ref / t_lit),
                       "reference_extras_logits_identical": bool(torch.equal(lit_logits, ref_logits))})
        rows.insert(1, ["(a') reference + its per-step extras", n_ref, t_lit, c_lit, n_ref / t_lit, ref_tokens / n_ref])
    print()
    print(C.table(["schedule", "sentences", "wall s", "CPU s", "sentences/s", "tokens/sentence"], rows))
    if args.reference_extras:
        print(f"vs (a'): {result['speedup_vs_reference_extras']:.2f}x")
    print(f"CPU seconds: reference {c_ref:.1f}, ours {c_ours:.1f} -> speedup in CPU time "
          f"{result['speedup_cpu_time']:.2f}x; load average {load_start:.1f} at start")
    print(f"speedup {ours_sps / ref_sps:.2f}x (target 10x: {'met' if result['target_met'] else 'NOT met'}); "
          f"prediction agreement {agreement:.4f} on {n_ref} sentences, logits bit-identical {identical:.4f}, "
          f"max |logit diff| {max_diff:.3g}")
    print(f"dev accuracy: ours {ours_acc:.4f} on {n} sentences; reference {ref_acc:.4f} on its {n_ref}")
    if args.profile:
        print(profile_batch(model, ours_batches[len(ours_batches) // 2][1], T, integer))
    C.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
