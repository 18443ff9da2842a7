"""How well a trained spiking student fits its teacher: train vs dev, spiking vs rate ANN.

For a student checkpoint (``--model``) and its fine-tuned teacher (``--teacher``), on a random
subset of the SST-2 *training* sentences (``--train-n``, default 1,500, seed ``--seed``) and on
all dev sentences (or, with ``--train-file`` and ``--data-file``, a custom classification task's
training file and the file it is reported on; columns ``sentence`` and ``label``):

* accuracy of the teacher, of the spiking student at each ``--t`` (default 16; the simulation the
  model is evaluated with), and the student's agreement with the teacher's predictions;
* accuracy of the student's rate ANN (every population's steady-state map ``a = g(F(a_in))``
  chained from the embeddings, no spikes; either profile, ``model.student.rate_ann_mode``). In the
  paper profile the spiking network does not converge to this ANN: LayerNorm, softmax and GELU act
  on instantaneous spikes, and the rate of f(spikes) is not f(rate) (``benchmarks/convergence.py``
  measures the per-population residual).

Why: if the student agrees with the teacher much less on the sentences it was trained on than a
generalisation gap would explain, the limit is fitting (the model and its training), not data.

Also per token-length bucket (``LENGTH_BUCKETS``): the dev sentences are about twice as long as the
training phrases on SST-2, so the buckets separate a length effect from a fitting one.

Output: a table, and ``--json`` with every number.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import _common as C


# token-count buckets ([CLS] and [SEP] included), name -> [low, high): short, medium, long sentences
LENGTH_BUCKETS = {"0-14": (0, 15), "15-29": (15, 30), ">=30": (30, None)}


@torch.no_grad()
def rate_ann_predictions(model, encoded, batch_size: int) -> np.ndarray:
    """Argmax of the student's rate ANN in the order of ``encoded``."""
    from lava_spikingbert.model.student import rate_ann_mode
    from training.batching import length_bucketed_batches

    model.eval()
    mode = rate_ann_mode(model)
    preds = np.zeros(len(encoded), dtype=np.int64)
    for b in length_bucketed_batches(encoded, batch_size, shuffle=False):
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], mode=mode)
        preds[b["index"].numpy()] = out.logits.argmax(-1).numpy()
    return preds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, model=False)
    parser.add_argument("--model", required=True, help="trained student checkpoint directory")
    parser.add_argument("--teacher", required=True, help="the fine-tuned teacher directory it was distilled from")
    parser.add_argument("--t", type=int, nargs="+", default=[16], help="simulation steps to evaluate")
    parser.add_argument("--train-n", type=int, default=1500, help="random training sentences to evaluate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--train-file", default=None, help="custom task: training TSV/CSV/JSONL (with --data-file)")
    parser.add_argument("--data-file", default=None, help="custom task: the file its results are reported on")
    args = parser.parse_args(argv)
    if (args.train_file is None) != (args.data_file is None):
        parser.error("--train-file and --data-file go together")
    C.setup_torch(args.threads)

    from lava_spikingbert.model.student import load_student
    from training.batching import encode
    from training.distill import evaluate_student_at
    from training.pipeline_data import CustomFiles
    from training.readers import load_glue
    from training.tasks import get_task
    from training.teacher import load_teacher, predict

    if args.train_file:
        custom = CustomFiles(args.train_file, args.data_file)
        spec = custom.spec()
        train, dev = custom.load(spec, "train"), custom.load(spec, "dev")
    else:
        spec = get_task("sst2")
        glue = C.glue_dir(args.glue_dir)
        train, dev = load_glue(spec, "train", glue), load_glue(spec, "dev", glue)
    student = load_student(args.model)
    teacher, tokenizer = load_teacher(args.teacher, num_labels=spec.num_labels)
    if not 0 < args.train_n <= len(train):
        raise SystemExit(f"--train-n must be in 1..{len(train)}, got {args.train_n}")
    pick = np.random.default_rng(args.seed).choice(len(train), args.train_n, replace=False)
    splits = {"train_subset": [train[i] for i in sorted(pick)], "dev": dev}

    rows, results = [], {}
    for split, examples in splits.items():
        enc = encode(examples, tokenizer, args.max_length)
        labels = np.asarray(enc.labels)
        teacher_pred = predict(teacher, enc, batch_size=args.batch_size).argmax(-1)
        r = {"n": len(enc), "mean_tokens": float(enc.lengths.mean()),
             "teacher_accuracy": float((teacher_pred == labels).mean())}
        cells = [split, r["n"], f"{r['mean_tokens']:.1f}", f"{100 * r['teacher_accuracy']:.2f}"]

        lengths = enc.lengths
        buckets = {k: (lengths >= lo) & (lengths < (hi if hi is not None else lengths.max() + 1))
                   for k, (lo, hi) in LENGTH_BUCKETS.items()}
        r["sentences_by_length"] = {k: int(m.sum()) for k, m in buckets.items()}
        r["teacher_accuracy_by_length"] = {k: float((teacher_pred == labels)[m].mean()) if m.any() else None
                                           for k, m in buckets.items()}

        def score(name: str, pred: np.ndarray, wall_s: float, **extra) -> dict:
            right = pred == labels
            d = {"accuracy": float(right.mean()),
                 "agreement_with_teacher": float((pred == teacher_pred).mean()), "wall_s": wall_s,
                 "accuracy_by_length": {k: float(right[m].mean()) if m.any() else None for k, m in buckets.items()},
                 **extra}
            rows.append([*cells, name, f"{100 * d['accuracy']:.2f}", f"{100 * d['agreement_with_teacher']:.2f}",
                         " / ".join("-" if v is None else f"{100 * v:.1f}" for v in d["accuracy_by_length"].values())])
            return d

        t0 = time.perf_counter()
        ann = rate_ann_predictions(student, enc, args.batch_size)
        r["rate_ann"] = score("rate ANN", ann, time.perf_counter() - t0)
        r["spiking"] = {}
        # every T is read from one simulation of the longest: wall_s is that simulation's, shared
        for ev in evaluate_student_at(student, enc, spec, args.t, batch_size=args.batch_size):
            T = ev["t_conv"]
            r["spiking"][str(T)] = score(f"spiking T={T}", np.asarray(ev["predictions"]), ev["wall_s"],
                                         simulated_steps=ev["simulated_steps"])
        results[split] = r

    print(C.table(["split", "n", "tokens", "teacher %", "student", "student %", "agrees with teacher %",
                   f"student % by tokens ({' / '.join(LENGTH_BUCKETS)})"], rows))
    payload = {**C.run_info(args), "model": str(args.model), "teacher": str(args.teacher),
               "train_subset_seed": args.seed, "results": results}
    C.write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
