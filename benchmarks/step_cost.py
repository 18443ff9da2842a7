"""What one distillation step costs on training sets of different sentence lengths.

The budget sized from the data (``training.pipeline_data.sized_budget``) shortens the KD stages for
long sentences by how much a step's cost grows with the sentence. This measures that cost: for each
training set (SST-2 from GLUE, and custom files such as MR or SUBJ), the same student and teacher
run ``--steps`` optimizer steps of

* stage 2 as the rate ANN (task internal-layer KD: attention + hidden-state MSE), and
* stage 3 at the spiking equilibrium at ``--t`` steps (prediction-layer KD),

each after ``--warmup`` untimed steps, through the pipeline's own ``run_stage`` (batch 32,
length-bucketed batches, no dev evaluation), in one process or, under ``torchrun``, data-parallel as
the pipeline runs them (a step then also averages the gradients over the processes). Prints a
table (seconds per step and the ratio to the first data set, SST-2) and writes JSON.

Example::

    OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc_per_node 2 benchmarks/step_cost.py --threads 1 \\
        --teacher runs/mr/teacher --student runs/mr/stages/1-general/final \\
        --custom mr=/work/data/extra/mr/train.tsv subj=/work/data/extra/subj/train.tsv \\
        --json docs/results/step_cost_2proc.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import _common as C
from lava_spikingbert.model.student import load_student
from training.batching import encode
from training.common import init_distributed
from training.distill import StageSettings, run_stage
from training.pipeline_data import CustomFiles, mean_words
from training.readers import load_glue
from training.tasks import get_task
from training.teacher import load_teacher

STAGE_FORWARDS = (("intermediate", "rate_ann"), ("prediction", "spiking"))
BATCH = 32  # the budgets' global batch, split between the processes as in the pipeline


def training_sets(args) -> list[tuple[str, list]]:
    sets = [("sst2", load_glue(get_task("sst2"), "train", C.glue_dir(args.glue_dir)))]
    for item in args.custom:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--custom {item!r}: expected NAME=PATH")
        files = CustomFiles(train_file=path, data_file=path, name=name)
        sets.append((name, files.load(files.spec(), "train")))
    return sets


def seconds_per_step(stage: str, forward: str, student_dir: str, teacher, data, steps: int, warmup: int,
                     t: int, work_dir: Path, dist) -> float:
    """Wall seconds per optimizer step over ``steps`` steps after ``warmup`` untimed ones (the
    difference of two runs from the same start, so loading and the final save cancel out)."""
    walls = []
    for n in (warmup, warmup + steps):
        student = load_student(student_dir)
        settings = StageSettings(stage=stage, max_steps=n, batch_size=BATCH // dist.world_size, lr=1e-4, t_conv=t,
                                 eval_every=0, checkpoint_every=n + 1, forward=forward)
        stage_dir = work_dir / f"{stage}_{n}"
        if dist.is_main:
            shutil.rmtree(stage_dir, ignore_errors=True)
        dist.barrier()
        t0 = time.perf_counter()
        run_stage(settings, student, teacher, data, stage_dir, progress=False, dist=dist)
        walls.append(time.perf_counter() - t0)
    return (walls[1] - walls[0]) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p, model=False)
    p.add_argument("--teacher", required=True, help="a fine-tuned teacher directory (2 labels)")
    p.add_argument("--student", required=True, help="the student checkpoint every run starts from")
    p.add_argument("--custom", nargs="*", default=[], metavar="NAME=PATH",
                   help="custom training files (columns 'sentence' and 'label')")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--t", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--work-dir", default="runs/step_cost", help="scratch stage directories (replaced)")
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    dist = init_distributed()  # under torchrun: data-parallel steps, as the pipeline's KD stages run
    teacher, tokenizer = load_teacher(args.teacher, num_labels=2)
    rows, results = [], []
    for name, examples in training_sets(args):
        data = encode(examples, tokenizer, args.max_length)
        tokens = sum(len(ids) for ids in data.input_ids) / len(data.input_ids)
        entry = {"data": name, "sentences": len(examples), "mean_words": round(mean_words(examples), 3),
                 "mean_tokens": round(tokens, 3)}
        for stage, forward in STAGE_FORWARDS:
            entry[f"{stage}_{forward}_s_per_step"] = seconds_per_step(
                stage, forward, args.student, teacher, data, args.steps, args.warmup, args.t,
                Path(args.work_dir) / name, dist)
        results.append(entry)
    base = results[0]
    for entry in results:
        cells = []
        for stage, forward in STAGE_FORWARDS:
            key = f"{stage}_{forward}_s_per_step"
            ratio = entry[key] / base[key]
            entry[f"{stage}_{forward}_vs_first"] = ratio
            cells.append(f"{entry[key]:.3f} ({ratio:.2f}x)")
        rows.append([entry["data"], entry["mean_words"], entry["mean_tokens"], *cells])
    if not dist.is_main:
        return 0
    print(C.table(["data", "words", "tokens", "stage 2 rate ANN s/step", f"stage 3 spiking T={args.t} s/step"], rows))
    C.write_json(args.json, {**C.run_info(args), "steps": args.steps, "warmup": args.warmup, "t": args.t,
                             "batch_size": BATCH, "processes": dist.world_size, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
