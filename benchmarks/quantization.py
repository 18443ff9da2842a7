"""Accuracy of a trained student at fp32 and after post-training quantization (int8 / ternary / binary).

    .venv/bin/python benchmarks/quantization.py --model runs/sst2/student --t-conv 16 \
        --json runs/sst2/quantization.json [--qat runs/sst2_ternary/student ...] [--limit 200] \
        [--fixed-point 64]

Every row is the torch spiking simulation (``evaluate_student``) on SST-2 dev at the same T:

* ``fp32``: the checkpoint as trained;
* ``int8 / ternary / binary (PTQ)``: ``hw_export.quantize.quantize_model`` of the same weights
  (docs/quantization.md), nothing retrained;
* ``--qat DIR ...``: checkpoints trained with ``--weights MODE`` (quantization-aware KD), as they are;
* ``--fixed-point N``: the int8 PTQ model once more through the integer fixed-point reference
  (``hw_export.fixed_point``) on the first N dev sentences, with its agreement with the float run.

Without ``--model`` a random student (see benchmarks/_common.py) is used: only for checking the
script, its accuracies are chance level.
"""

from __future__ import annotations

import argparse
import time

from _common import (add_common_args, build_model, glue_dir, run_info, setup_torch, table, tokenizer,
                     write_json)
from lava_spikingbert.model.inference import right_pad


def _tokenizer_for(model_dir: str | None):
    from pathlib import Path

    if model_dir and (Path(model_dir) / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    return tokenizer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--t-conv", type=int, default=None, help="simulation steps (default: the model's t_conv)")
    parser.add_argument("--limit", type=int, default=None, help="dev sentences (default: all 872)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens (default: the model's max_length)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--modes", default="int8,ternary,binary", help="PTQ modes to evaluate")
    parser.add_argument("--qat", nargs="*", default=[], help="quantization-aware trained checkpoints to add")
    parser.add_argument("--fixed-point", type=int, default=0, help="sentences for the int8 fixed-point check")
    parser.add_argument("--scale-exp", type=int, default=10)
    args = parser.parse_args()
    setup_torch(args.threads)

    from hw_export.quantize import quantize_model
    from lava_spikingbert.model.encoder import SpikingBert
    from training.batching import encode
    from training.readers import load_glue
    from training.tasks import get_task
    from training.distill import evaluate_student

    model, weights_text = build_model(args)
    T = int(args.t_conv or model.config.t_conv)
    max_len = int(args.max_length or model.config.max_length)
    spec = get_task("sst2")
    examples = load_glue(spec, "dev", glue_dir(args.glue_dir), limit=args.limit)
    dev = encode(examples, _tokenizer_for(args.model), max_len)

    def evaluate(name: str, m, source: str, method: str) -> dict:
        r = evaluate_student(m, dev, spec, t_conv=T, batch_size=args.batch_size)
        preds = r.pop("predictions")
        row = {"name": name, "precision": m.config.weights, "method": method, "source": source, "t_conv": T,
               "n": r["n"],
               "accuracy": r["metrics"]["accuracy"], "sentences_per_s": r["sentences_per_s"], "_preds": preds}
        print(f"{name:<24} accuracy {100 * row['accuracy']:.2f}%  ({r['n']} sentences, T={T})", flush=True)
        return row

    rows = []
    base = model.config.weights
    rows.append(evaluate(base if base == "fp32" else f"{base} (as trained)", model, weights_text, "as_trained"))
    for mode in [m for m in args.modes.split(",") if m]:
        if base != "fp32" and mode != base:
            print(f"{mode:<24} skipped: the model was trained with {base} weights")
            continue
        if mode == base:
            continue
        rows.append(evaluate(f"{mode} (PTQ)", quantize_model(model, mode), f"PTQ of {args.model or 'random'}", "ptq"))
    for d in args.qat:
        qat = SpikingBert.from_pretrained(d)
        rows.append(evaluate(f"{qat.config.weights} (QAT {d})", qat, f"QAT checkpoint {d}", "qat"))
    for r in rows:  # points vs the model as trained (fp32 when the model is fp32)
        r["delta_pp"] = round(100 * (r["accuracy"] - rows[0]["accuracy"]), 4)

    fixed = None
    if args.fixed_point > 0:
        from hw_export.fixed_point import FixedPointModel

        q = model if base in ("int8", "ternary", "binary") else quantize_model(model, "int8")
        fp = FixedPointModel.from_model(q, scale_exp=args.scale_exp)
        n = min(args.fixed_point, len(dev))
        start, correct, agree, events = time.perf_counter(), 0, 0, {}
        # the float simulation of the same quantized model: the model itself, or its int8 PTQ row
        # (evaluated here when --modes left it out)
        ref = rows[0] if q is model else next((r for r in rows if r["name"] == "int8 (PTQ)"), None)
        ref_preds = (ref or evaluate("int8 (PTQ)", q, "fixed-point reference", "ptq"))["_preds"]
        for s in range(0, n, 16):
            idx = list(range(s, min(n, s + 16)))
            ids, mask, tt = right_pad([dev.input_ids[i] for i in idx], [dev.token_type_ids[i] for i in idx])
            res = fp.run(ids, mask, tt, T)
            pred = res.logits.argmax(-1).tolist()
            correct += sum(int(p == dev.labels[i]) for p, i in zip(pred, idx))
            agree += sum(int(p == ref_preds[i]) for p, i in zip(pred, idx))
            for k_, v in res.events.items():
                events[k_] = events.get(k_, 0) + v
        fixed = {"precision": q.config.weights, "scale_exp": args.scale_exp, "n": n, "t_conv": T,
                 "accuracy": correct / n, "agreement_with_float": agree / n, "overflow_events": events,
                 "wall_s": time.perf_counter() - start}
        print(f"fixed point ({q.config.weights}, p={args.scale_exp}) on {n}: accuracy {100 * correct / n:.2f}%, "
              f"agreement with float {100 * agree / n:.1f}%, events {events or 'none'}")

    for r in rows:
        r.pop("_preds")
    print()
    print(table(["model", "precision", "T", "n", "accuracy %", "vs first row (points)", "sentences/s"],
                [[r["name"], r["precision"], r["t_conv"], r["n"], 100 * r["accuracy"], r["delta_pp"],
                  r["sentences_per_s"]] for r in rows]))
    write_json(args.json, {"benchmark": "quantization", "weights": weights_text, "task": "sst2", "split": "dev",
                           "t_conv": T, "rows": rows, "fixed_point": fixed, **run_info(args)})


if __name__ == "__main__":
    main()
