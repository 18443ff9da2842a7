"""``spikingbert``: the command line. Argument parsing and wiring only; the work lives in the packages.

The top layer: it may import every package. Each subcommand imports its own stack when it runs
(the imports inside the ``cmd_*`` functions): ``spikingbert lava`` needs Lava and no torch, the
training commands need torch and no Lava, and neither should pay for, or depend on, the other.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lava_spikingbert.contract.atomic import atomic_write_json
from lava_spikingbert.contract.constants import NEURON_KINDS, WEIGHT_MODES
from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.model_file import PROFILES
from lava_spikingbert.model.config import PIPELINE_FORWARDS, TRAIN_FORWARDS

EXIT_USAGE = 2


class CliError(Exception):
    """A user error reported as one line (no stack trace)."""


# ------------------------------------------------------------------------------------ data helpers
def _add_data_args(p: argparse.ArgumentParser, task_required: bool = False) -> None:
    p.add_argument("--task", default=None if not task_required else "sst2",
                   help="GLUE task (sst2, cola, mrpc, stsb, qqp, mnli, mnli-mm, qnli, rte, wnli) or 'custom'")
    p.add_argument("--glue-dir", default=None, help="GLUE directory (default: $GLUE_DIR or ../shared/data/glue)")
    _add_custom_file_args(p)


def _add_custom_file_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-file", default=None, help="custom TSV/CSV/JSONL (with --task custom): the split to use")
    p.add_argument("--train-file", default=None, help="custom TSV/CSV/JSONL training file (with --task custom)")
    p.add_argument("--text-columns", default="sentence", help="custom data: 1 or 2 comma-separated text columns")
    p.add_argument("--label-column", default="label", help="custom data: label column")
    p.add_argument("--task-type", default="classification", choices=("classification", "regression"))
    p.add_argument("--labels", default=None, help="custom data: comma-separated label values (default: inferred)")


def _task_and_examples(args, split: str, limit: int | None = None):
    from training.readers import custom_task_spec, load_custom, load_glue
    from training.tasks import get_task

    if (args.task or "").lower() == "custom":
        path = args.data_file if split != "train" else (args.train_file or args.data_file)
        if not path:
            raise CliError("--task custom needs --data-file (and --train-file for training)")
        cols = [c for c in args.text_columns.split(",") if c]
        labels = args.labels.split(",") if args.labels else None
        spec = custom_task_spec(task_type=args.task_type, labels=labels,
                                path=(args.train_file or path) if labels is None and args.task_type == "classification"
                                else None, text_columns=cols, label_column=args.label_column)
        return spec, load_custom(path, cols, args.label_column, args.task_type,
                                 labels=spec.labels, limit=limit)
    spec = get_task(args.task or "sst2")
    return spec, load_glue(spec, split, args.glue_dir, limit=limit)


def _check_output_file(path: str | None, flag: str) -> None:
    """Refuse an output file path that cannot be written, before the work whose result it keeps."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{flag} {path} is a directory; give a file path")
    parent = next((q for q in p.absolute().parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CliError(f"{flag} {path}: {parent} is a file, not a directory")


def _custom_files(args):
    """The pipeline's ``CustomFiles`` from ``--task custom`` and its file options (None for a GLUE task)."""
    from training.pipeline_data import CustomFiles

    if (args.task or "").lower() != "custom":
        return None
    if not args.train_file or not args.data_file:
        raise CliError("--task custom needs --train-file (training) and --data-file (the split reported on)")
    return CustomFiles(args.train_file, args.data_file, text_columns=tuple(c for c in args.text_columns.split(",") if c),
                       label_column=args.label_column, task_type=args.task_type,
                       labels=tuple(args.labels.split(",")) if args.labels else None)


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        atomic_write_json(Path(path), payload)
        print(f"wrote {path}")


# ------------------------------------------------------------------------------------ subcommands
def cmd_teacher(args) -> int:
    from training.teacher import finetune_teacher

    _check_output_file(args.json, "--json")
    train_ex = dev_ex = None  # GLUE: finetune_teacher reads the files itself
    if (args.task or "").lower() == "custom":
        _, train_ex = _task_and_examples(args, "train", limit=args.limit_train)
        spec, dev_ex = _task_and_examples(args, "dev", limit=args.limit)
    else:
        spec, _ = _task_and_examples(args, "dev", limit=1)
    result = finetune_teacher(spec, args.out, glue_dir=args.glue_dir, teacher_path=args.teacher, epochs=args.epochs,
                              lr=args.lr, batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
                              limit_train=args.limit_train, limit_eval=args.limit, resume=args.resume,
                              overwrite=args.overwrite, eval_every=args.eval_every,
                              train_examples=train_ex, eval_examples=dev_ex)
    dev = result.get("dev") or {}
    print(f"teacher dev {spec.main_metric}: {dev.get(spec.main_metric)}  ->  {args.out}")
    _write_json(args.json, {"task": spec.name, "split": "dev", "n": result.get("dev_n"), "metrics": dev,
                            "t_conv": None, "backend": "torch", "precision": "fp32", "model": "teacher",
                            "wall_s": result.get("wall_s"), "sentences_per_s": result.get("dev_eval_sentences_per_s")})
    return 0


def cmd_distill(args) -> int:
    from lava_spikingbert.model.checkpoint import read_profile
    from lava_spikingbert.model.encoder import SpikingBert
    from lava_spikingbert.model.loihi import LoihiSpikingMixer
    from lava_spikingbert.model.student import load_student
    from training.common import init_distributed, seed_all
    from training.batching import encode
    from training.readers import plain_text_corpus
    from training.distill import (StageSettings, init_loihi_student, init_student_from_teacher, loihi_config_from_teacher,
                                  run_stage, student_config_from_teacher)
    from training.distill import stage_has_outputs
    from training.teacher import load_teacher

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {args.out} is a file; give a directory")
    if not args.resume and not args.overwrite and stage_has_outputs(out):
        raise CliError(f"{args.out} already holds a checkpoint of this stage: continue it with --resume, or start "
                       "over with --overwrite")
    dist = init_distributed()
    spec, train_ex = _task_and_examples(args, "train", limit=args.limit_train)
    _, dev_ex = _task_and_examples(args, "dev", limit=args.limit)
    teacher_path = args.teacher
    teacher, tokenizer = load_teacher(teacher_path, num_labels=spec.num_labels if args.stage != "general" else None,
                                      problem_type=spec.problem_type)
    if args.max_length > teacher.config.max_position_embeddings:
        raise CliError(f"--max-length {args.max_length} exceeds the teacher's position table "
                       f"({teacher.config.max_position_embeddings} positions)")
    if args.dilations is not None and (args.student or args.profile != "loihi"):
        raise CliError("--dilations sets up a new loihi-profile student (--profile loihi, no --student)")
    layer_map = args.layer_map
    seed_all(args.seed)  # a new student's random parts (W_Td, classifier) are reproducible
    if args.student:
        profile = read_profile(args.student)
        if args.profile is not None and args.profile != profile:
            raise CliError(f"--profile {args.profile}: {args.student} holds a {profile!r}-profile student")
        student = load_student(args.student)
        if args.max_length > student.config.max_length:
            raise CliError(f"--max-length {args.max_length} exceeds the student's max_length "
                           f"{student.config.max_length} ({args.student}/config.json)")
        if student.config.num_labels != spec.num_labels:
            raise CliError(f"{args.student} has {student.config.num_labels} outputs; task {spec.name} needs "
                           f"{spec.num_labels}")
    elif args.profile == "loihi":
        if spec.is_regression:
            raise CliError(f"task {spec.name}: the loihi profile trains classifiers only")
        config = loihi_config_from_teacher(teacher.config, num_layers=args.layers or 2, t_conv=args.t_conv,
                                           max_length=args.max_length, num_labels=spec.num_labels,
                                           dilations=args.dilations)
        student = LoihiSpikingMixer(config)
        calibration = encode(train_ex, tokenizer, args.max_length)
        init_loihi_student(student, teacher, calibration, embeddings=args.init != "none", seed=args.seed)
    else:
        config = student_config_from_teacher(teacher.config, num_layers=args.layers or 4, t_conv=args.t_conv,
                                             max_length=args.max_length, num_labels=spec.num_labels,
                                             problem_type="regression" if spec.is_regression else "classification",
                                             neuron=args.neuron)
        student = SpikingBert(config)
        if args.init != "none":
            init_student_from_teacher(student, teacher, layers=args.init == "layers", layer_map=layer_map)
    if spec.labels:  # the class order (custom data: as given or inferred), for evaluating the checkpoint later
        recorded = student.config.extra.get("labels")
        if recorded is not None and list(recorded) != list(spec.labels):
            raise CliError(f"{args.student} was trained with the classes {recorded}; this data gives "
                           f"{list(spec.labels)} (pass --labels {','.join(recorded)})")
        student.config.extra["labels"] = list(spec.labels)
    student.config.extra.setdefault("task", spec.name)
    if args.stage == "general":
        corpus = plain_text_corpus(args.corpus) if args.corpus else plain_text_corpus(train_ex)
        train = encode(corpus, tokenizer, args.max_length)
    else:
        train = encode(train_ex, tokenizer, args.max_length)
    dev = encode(dev_ex, tokenizer, args.max_length)
    settings = StageSettings(stage=args.stage, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             head_lr=args.head_lr, t_conv=args.train_t_conv, eval_every=args.eval_every,
                             temperature=args.temperature,
                             gold_labels=args.gold_labels, seed=args.seed, weights=args.weights, layer_map=layer_map,
                             checkpoint_every=args.checkpoint_every, run_steps=args.run_steps,
                             att_weight=args.att_weight, rep_weight=args.rep_weight,
                             forward=args.train_forward, logit_weight=args.logit_weight,
                             eval_start=args.eval_start, embed_lr=args.embed_lr, joint_fp32=args.joint_fp32)
    result = run_stage(settings, student, teacher, train, args.out, tokenizer=tokenizer, spec=spec, dev=dev,
                       resume=args.resume, dist=dist)
    if dist.is_main:
        state = "complete" if result.completed else f"stopped at step {result.steps} (resume with --resume)"
        print(f"stage {args.stage}: {state}; output {result.final_dir if result.completed else args.out}")
    return 0


def cmd_eval(args) -> int:
    import torch

    from lava_spikingbert.model.student import load_student
    from training.batching import encode
    from training.distill import evaluate_student_at

    _check_output_file(args.json, "--json")
    torch.set_num_threads(args.threads)
    model = load_student(args.model)  # either profile (config.json says which)
    tokenizer = _load_tokenizer(args.model)
    if (args.task or "").lower() == "custom" and not args.labels and model.config.extra.get("labels"):
        args.labels = ",".join(model.config.extra["labels"])  # the classes in the order it was trained with
    spec, examples = _task_and_examples(args, args.split, limit=args.limit)
    if not examples:
        raise CliError(f"no examples to evaluate ({spec.name} {args.split}, --limit {args.limit})")
    if model.config.num_labels != spec.num_labels:
        raise CliError(f"{args.model} has {model.config.num_labels} outputs; task {spec.name} needs "
                       f"{spec.num_labels} (is --task the task it was trained for?)")
    rows = []
    enc = encode(examples, tokenizer, min(args.max_length, model.config.max_length))
    for r in evaluate_student_at(model, enc, spec, args.t_conv, batch_size=args.batch_size, progress=True,
                                 workers=args.workers):  # one simulation of the longest T gives every T
        T = r["t_conv"]
        r.pop("predictions")
        row = {"task": spec.name, "split": args.split, "backend": "torch", "precision": model.config.weights, **r}
        rows.append(row)
        print(f"T={T:>3}  {spec.main_metric}={100 * r['metrics'].get(spec.main_metric, float('nan')):.2f}%  "
              f"n={r['n']}  {r['sentences_per_s']:.1f} sentences/s")
    _write_json(args.json, rows[0] if len(rows) == 1 else {"runs": rows})
    return 0


def cmd_pipeline(args) -> int:
    from training.pipeline import run_pipeline
    from training.pipeline_data import HOLDOUT_FRACTION

    eval_t = tuple(args.eval_t)
    if args.holdout_fraction is not None and args.select_on != "holdout":
        raise CliError("--holdout-fraction needs --select-on holdout")
    if args.lava and not args.export:
        raise CliError("--lava needs --export (the model file it runs)")
    run_pipeline(args.task, args.out, glue_dir=args.glue_dir, teacher_path=args.teacher, budget=args.budget,
                 resume=not args.restart, num_layers=args.layers, t_conv=args.t_conv, max_length=args.max_length,
                 init=args.init, gold_labels=args.gold_labels, temperature=args.temperature, eval_t=eval_t,
                 general_corpus=args.corpus, seed=args.seed, weights=args.weights,
                 train_forward=args.train_forward, neuron=args.neuron, profile=args.profile,
                 custom=_custom_files(args), select_on=args.select_on,
                 holdout_fraction=HOLDOUT_FRACTION if args.holdout_fraction is None else args.holdout_fraction,
                 dilations=args.dilations)
    if args.export and os.environ.get("RANK", "0") == "0":  # under torchrun: once, after every rank finished
        _export_after_pipeline(args)
    return 0


def _export_after_pipeline(args) -> None:
    """``pipeline --export P [--lava N]``: the final student's model file ``OUT/student_P.h5``, its
    report (``OUT/report_P.json``, ``.png``) and, with ``--lava``, a Lava run on the first N
    sentences of the reported split (``OUT/lava_P.json``), as the commands export, report and lava do."""
    out = Path(args.out)
    model_file = out / f"student_{args.export}.h5"
    _export_checkpoint(out / "student", args.export, model_file)
    report, lines = _build_report(model_file, glue_dir=args.glue_dir, accuracy_json=str(out / "eval_vs_T.json"),
                                  png=out / f"report_{args.export}.png")
    print("\n".join(lines))
    _write_json(str(out / f"report_{args.export}.json"), report)
    if not args.lava:
        return
    from lava_spikingbert.lava_eval import evaluate

    custom = _custom_files(args)
    spec = custom.spec() if custom is not None else None
    examples = custom.load(spec, "dev", limit=args.lava) if custom is not None else None
    res = evaluate(model_file, args.task, "dev", limit=args.lava, tag="floating_pt" if args.export == "fp32"
                   else "fixed_pt", glue_dir=args.glue_dir, examples=examples, spec=spec, progress=True)
    print(f"lava {res['tag']} on {res['n']} sentences: metrics={res['metrics']} "
          f"agreement with torch={res['prediction_agreement']} count_match={res['spike_count_match']}")
    _write_json(str(out / f"lava_{args.export}.json"), res)


def _export_checkpoint(model: str | Path, precision: str, out: str | Path, **paper_options) -> None:
    """Write the model file of a checkpoint of either profile (its config.json says which)."""
    from hw_export.export import export_model
    from hw_export.loihi_export import export_loihi
    from lava_spikingbert.model.checkpoint import read_profile

    if read_profile(model) == "loihi":
        mf = export_loihi(model, precision, out)
        print(f"wrote {out} (profile loihi, schema {mf.schema_version}, {mf.precision}, "
              f"{len(mf.populations)} populations, {len(mf.synapses)} synapses, margin {mf.margin})")
        return
    mf = export_model(model, precision, out, **paper_options)
    netx_head = paper_options.get("netx_head")
    print(f"wrote {out} (schema {mf.schema_version}, {mf.precision}, {len(mf.populations)} populations, "
          f"{len(mf.connections)} connections)" + (f"; netx head {netx_head}" if netx_head else ""))


def cmd_export(args) -> int:
    _check_output_file(args.out, "--out")
    _check_output_file(args.netx_head, "--netx-head")
    _export_checkpoint(args.model, args.precision, args.out, scale_exp=args.scale_exp, netx_head=args.netx_head,
                       head_t_conv=args.head_t_conv)
    return 0


def _build_report(model: str | Path, *, seq_len=None, glue_dir=None, n_sentences: int = 64, t_list=None,
                  measure: bool = True, **paper_options) -> tuple[dict, list[str]]:
    """The resource/energy report of a model file of either profile (the file says which) and its
    summary lines; ``paper_options`` only apply to the paper profile."""
    from lava_spikingbert.contract.model_file import model_file_profile

    common = dict(seq_len=seq_len, glue_dir=glue_dir, n_sentences=n_sentences, t_list=t_list, measure=measure)
    if model_file_profile(model) == "loihi":
        from hw_export.loihi_report import build_loihi_report, loihi_summary_lines

        report = build_loihi_report(model, **common)
        return report, loihi_summary_lines(report)
    from hw_export.report import build_report, summary_lines

    report = build_report(model, **common, **paper_options)
    return report, summary_lines(report)


def cmd_report(args) -> int:
    _check_output_file(args.json, "--json")
    _check_output_file(args.png, "--png")
    teacher = {"hidden_size": args.teacher_hidden, "num_hidden_layers": args.teacher_layers,
               "intermediate_size": args.teacher_intermediate}
    if args.compare is not None and not Path(args.compare).is_file():
        raise SpikingBertError(f"--compare: model file not found: {args.compare}")
    common = dict(glue_dir=args.glue_dir, n_sentences=args.n_sentences,
                  t_list=list(args.t_list) if args.t_list else None, measure=not args.no_measure)
    report, lines = _build_report(args.model, seq_len=args.seq_len, **common, inputs=args.inputs,
                                  accuracy_json=args.accuracy_json, teacher=teacher, png=args.png,
                                  fixed_point_sentences=args.fixed_point_sentences)
    print("\n".join(lines))
    if args.compare is not None:
        from hw_export.report import side_by_side_lines

        other, other_lines = _build_report(args.compare, seq_len=report["hardware"]["seq_len"], **common,
                                           inputs=args.inputs, teacher=teacher, fixed_point_sentences=0)
        print("\n".join(other_lines))
        table = side_by_side_lines([report["headline"], other["headline"]], [args.model, args.compare])
        print(f"side by side (seq_len {report['hardware']['seq_len']}; per sentence: mean over the measured "
              "sentences):")
        print("\n".join(table))
        report = {**report, "compared_with": other, "side_by_side": table}
    _write_json(args.json, report)
    return 0


def cmd_lava(args) -> int:
    from lava_spikingbert.lava_eval import evaluate

    _check_output_file(args.json, "--json")
    res = evaluate(args.model, args.task, args.split, limit=args.limit, tag=args.tag, t_conv=args.t_conv,
                   glue_dir=args.glue_dir, backend=args.backend, batch_size=args.batch_size,
                   parity=not args.no_parity, pack=args.pack, window_tokens=args.window, workers=args.workers,
                   progress=True)
    print(f"{res['task']} {res['split']} n={res['n']} {res['tag']} T={res['t_conv']} {res['backend']}"
          f"{' (profile loihi)' if res.get('profile') == 'loihi' else ''}: "
          f"metrics={res['metrics']} agreement={res['prediction_agreement']} "
          f"count_match={res['spike_count_match']} {res['sentences_per_s']:.2f} sent/s")
    _write_json(args.json, res)
    return 0


def _load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    if not (Path(model_dir) / "tokenizer_config.json").is_file():
        raise CliError(f"{model_dir}: no tokenizer files in the checkpoint directory")
    try:  # never custom code from a checkpoint (an "auto_map" would otherwise prompt to run it)
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        raise CliError(f"{model_dir}: unusable tokenizer files ({str(exc).splitlines()[0] if str(exc) else exc!r})") \
            from None


# ------------------------------------------------------------------------------------ parser
def add_dilations_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dilations", type=int_list, default=None, metavar="D1,D2,...",
                   help="loihi profile, new student: each layer's token-mixing dilation (default: 1 in every layer)")


def int_list(text: str) -> list[int]:
    """argparse type of a comma-separated list of positive integers (argparse names the flag on error)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _checked_number(text: str, convert, accept, expected: str):
    """Convert an argparse value and refuse it unless ``accept(value)``; ``expected`` names the range."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text if convert is float else value}")
    return value


def positive_int(text: str) -> int:
    """argparse type of a positive integer (simulation steps, training steps)."""
    return _checked_number(text, int, lambda v: v > 0, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type of an integer >= 0 (0: the feature is off)."""
    return _checked_number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type of a positive finite number (epochs)."""
    return _checked_number(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def add_neuron_arg(p: argparse.ArgumentParser, default: str = "if_subtract") -> None:
    p.add_argument("--neuron", default=default, choices=NEURON_KINDS,
                   help=f"new student: neuron kind (if_subtract = the paper's IF neuron, rates in [0, 1]; "
                        f"if_signed_pair = an on and an off IF neuron per unit, rates in [-1, 1]; default {default})")


def add_train_forward_arg(p: argparse.ArgumentParser, pipeline: bool = False) -> None:
    p.add_argument("--train-forward", default="rate_ann_warmup" if pipeline else "spiking",
                   choices=PIPELINE_FORWARDS if pipeline else TRAIN_FORWARDS,
                   help="forward values while training: 'spiking' (simulated ASRs, gradients from the "
                        "steady-state equations; SpikingBERT) or 'rate_ann' (the steady-state map alone, "
                        "no spikes: an ablation measuring the architecture's own limit)"
                        + ("; 'rate_ann_warmup' (default): rate_ann for the general and internal-layer "
                           "stages, spiking for the prediction stage. The paper: --train-forward spiking "
                           "--neuron if_subtract" if pipeline else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikingbert", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("teacher", help="fine-tune a BERT teacher on a task")
    _add_data_args(p)
    p.add_argument("--teacher", default=None, help="local HF BERT directory (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=positive_float, default=3, help="may be fractional (stops mid-epoch)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-length", type=positive_int, default=64)
    p.add_argument("--eval-every", type=non_negative_int, default=None,
                   help="also evaluate on dev every N steps; the best dev checkpoint is kept")
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="dev sentences")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("distill", help="one knowledge-distillation stage of the spiking student")
    _add_data_args(p)
    p.add_argument("--stage", required=True, choices=("general", "intermediate", "prediction"))
    p.add_argument("--teacher", default=None, help="teacher directory (general: pre-trained; else fine-tuned)")
    p.add_argument("--student", default=None, help="student checkpoint to start from (default: new student)")
    p.add_argument("--init", default="layers", choices=("layers", "embeddings", "none"),
                   help="new student: copy teacher embeddings (+ mapped layers)")
    p.add_argument("--layers", type=positive_int, default=None, help="new student: layers (default: 4 paper, 2 loihi)")
    add_dilations_arg(p)
    p.add_argument("--profile", default=None, choices=PROFILES,
                   help="new student: model profile (default paper; loihi = stock Lava processes only); "
                        "with --student it must match the checkpoint's")
    p.add_argument("--layer-map", type=int_list, default=None,
                   help="teacher layer (1-based) per student layer, e.g. 3,6,9,12")
    p.add_argument("--t-conv", type=positive_int, default=16, help="new student: evaluation simulation steps")
    add_neuron_arg(p)
    p.add_argument("--train-t-conv", type=positive_int, default=None, help="simulation steps while training")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=positive_int, required=True)
    p.add_argument("--run-steps", type=positive_int, default=None, help="stop (resumably) after this many steps")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--head-lr", type=float, default=None,
                   help="learning rate of the classifier (default: --lr); a fresh head needs a larger one")
    p.add_argument("--max-length", type=positive_int, default=64)
    p.add_argument("--eval-every", type=non_negative_int, default=0)
    p.add_argument("--checkpoint-every", type=positive_int, default=100)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--att-weight", type=float, default=1.0, help="internal-layer KD: weight of the attention MSE")
    p.add_argument("--rep-weight", type=float, default=1.0, help="internal-layer KD: weight of the hidden-state MSE")
    p.add_argument("--logit-weight", type=float, default=0.0,
                   help="general/internal-layer KD: + this weight * soft cross-entropy on the teacher's logits")
    p.add_argument("--eval-start", action="store_true",
                   help="prediction stage: the starting weights are a candidate for the best dev checkpoint")
    p.add_argument("--embed-lr", type=float, default=None, help="learning rate of the embeddings (default: --lr)")
    p.add_argument("--gold-labels", action="store_true", help="prediction stage: train on gold labels")
    p.add_argument("--corpus", default=None, help="general stage: plain-text file, one sentence per line")
    p.add_argument("--weights", default="fp32", choices=WEIGHT_MODES)
    p.add_argument("--joint-fp32", action="store_true",
                   help="loihi profile, quantized --weights: every other step trains the fp32 weights, and the "
                        "prediction stage keeps the checkpoint whose worse dev score (quantized or fp32) is best")
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="dev sentences")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="start over, replacing a checkpoint already in --out")
    add_train_forward_arg(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("eval", help="evaluate a spiking student (torch simulation)")
    _add_data_args(p)
    p.add_argument("--model", required=True)
    p.add_argument("--split", default="dev")
    p.add_argument("--t-conv", type=positive_int, nargs="+", default=[16],
                   help="simulation steps; several are all read from one simulation of the longest")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--max-length", type=positive_int, default=128)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--workers", type=positive_int, default=None,
                   help="batches simulated at once, one intra-op thread each (default: --threads; 1 = one "
                        "batch at a time with --threads intra-op threads)")
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("pipeline", help="teacher -> 3 KD stages -> evaluation vs T (the main job)")
    p.add_argument("--task", default="sst2", help="GLUE task, or 'custom' with --train-file and --data-file")
    p.add_argument("--glue-dir", default=None)
    _add_custom_file_args(p)
    p.add_argument("--select-on", default="dev", choices=("dev", "holdout"),
                   help="the data the teacher's epoch and the prediction stage's checkpoint are chosen on: the "
                        "reported dev split (default), or 'holdout', a stratified share of the training set "
                        "that is left out of training")
    p.add_argument("--holdout-fraction", type=float, default=None,
                   help="with --select-on holdout: the share of the training set held out (default 0.1, at most "
                        "1000 sentences)")
    p.add_argument("--export", default=None, choices=WEIGHT_MODES,
                   help="at the end: write the final student's model file OUT/student_<precision>.h5 and its "
                        "Loihi-2 report (OUT/report_<precision>.json)")
    p.add_argument("--lava", type=positive_int, default=None, metavar="N",
                   help="with --export: run the model file on the Lava simulator on the first N sentences of the "
                        "reported split (fixed_pt; fp32: floating_pt), checking it against torch")
    p.add_argument("--out", default="runs/sst2")
    p.add_argument("--budget", default="default", choices=("tiny", "default", "full"),
                   help="training lengths: 'default' is sized from the training set (SST-2 gets the tuned 1-epoch "
                        "teacher and 300/1300/600 steps; docs/RESULTS.md), 'tiny' (a smoke test) and 'full' are fixed")
    p.add_argument("--teacher", default=None, help="base teacher directory (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--restart", action="store_true",
                   help="train everything again (teacher and all stages), replacing the outputs in --out; "
                        "without it a re-run continues them and refuses other settings")
    p.add_argument("--profile", default="paper", choices=PROFILES,
                   help="paper = SpikingBERT's graph (default); loihi = a spiking ConvMixer of stock Lava "
                        "processes (its own budgets, 2 layers, int8 QAT by default)")
    p.add_argument("--layers", type=positive_int, default=None, help="student layers (default: 4 paper, 2 loihi)")
    add_dilations_arg(p)
    p.add_argument("--t-conv", type=positive_int, default=16)
    add_neuron_arg(p, default="if_signed_pair")
    p.add_argument("--max-length", type=positive_int, default=64)
    p.add_argument("--init", default="layers", choices=("layers", "embeddings", "none"))
    p.add_argument("--gold-labels", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--eval-t", type=int_list, default="4,8,16,32,64",
                   help="the final student's simulation steps, all read from one simulation of the longest")
    p.add_argument("--corpus", default=None)
    p.add_argument("--weights", default=None, choices=WEIGHT_MODES,
                   help="the deployed weights (default: fp32 paper, int8 loihi)")
    p.add_argument("--seed", type=int, default=42)
    add_train_forward_arg(p, pipeline=True)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("export", help="write the HDF5 model file (and a netx head) for Lava / Loihi 2")
    p.add_argument("--model", required=True, help="student checkpoint directory")
    p.add_argument("--precision", default="int8", choices=WEIGHT_MODES)
    p.add_argument("--out", required=True, help="model file (.h5)")
    p.add_argument("--scale-exp", type=int, default=10, help="fixed point: vth_mant = 2**scale_exp")
    p.add_argument("--netx-head", default=None, help="also write the classifier head as a lava-dl netx HDF5")
    p.add_argument("--head-t-conv", type=positive_int, default=None, help="T the netx head's range is checked for")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="Loihi-2 static check, resources, operations and energy of a model file")
    p.add_argument("--model", required=True, help="model file (.h5) written by 'spikingbert export'")
    p.add_argument("--json", default=None)
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="tokens per sentence (default: config max_length)")
    p.add_argument("--glue-dir", default=None, help="GLUE directory (default: $GLUE_DIR or ../shared/data/glue)")
    p.add_argument("--n-sentences", type=positive_int, default=64, help="SST-2 dev sentences for measured ASRs")
    p.add_argument("--t-list", type=int_list, default="4,8,16,32",
                   help="time steps T to measure (plus the config's t_conv)")
    p.add_argument("--inputs", default="auto", choices=("auto", "sst2", "random"))
    p.add_argument("--accuracy-json", default=None, help="eval JSON (e.g. runs/sst2/eval_vs_T.json) for the plot")
    p.add_argument("--png", default=None, help="accuracy and efficiency vs T plot")
    p.add_argument("--teacher-hidden", type=int, default=None)
    p.add_argument("--teacher-layers", type=int, default=None)
    p.add_argument("--teacher-intermediate", type=int, default=None)
    p.add_argument("--fixed-point-sentences", type=non_negative_int, default=8)
    p.add_argument("--no-measure", action="store_true", help="static check only (no simulation)")
    p.add_argument("--compare", default=None, metavar="OTHER.h5",
                   help="also report this model file (e.g. the other profile's) at the same seq_len and T, and "
                        "print the two side by side")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("lava", help="run a model file (.h5) on the Lava simulator: task metric, parity, speed")
    p.add_argument("--model", required=True, help="model file (.h5) written by 'spikingbert export'")
    p.add_argument("--task", default="sst2")
    p.add_argument("--split", default="dev")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--tag", default="fixed_pt", choices=("floating_pt", "fixed_pt"))
    p.add_argument("--t-conv", type=positive_int, default=None)
    p.add_argument("--glue-dir", default=None)
    p.add_argument("--backend", default="sim", choices=("sim", "loihi2"))
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="sentences per Lava run (windows per run with --pack)")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=True,
                   help="several sentences side by side per window (block-diagonal attention; default): "
                        "fewer simulated steps. --no-pack: one sentence per window")
    p.add_argument("--window", type=positive_int, default=None,
                   help="tokens per packed window (default 128); profile loihi: positions per row "
                        "(default: longest sentence + 2 margins, rounded up to 16)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="Lava runs in this many parallel worker processes (for machines with more cores)")
    p.add_argument("--no-parity", action="store_true", help="skip the torch reference")
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_lava, supervised=True)  # interrupts end every Lava process (lava.supervise)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("training").setLevel(logging.INFO)
    if getattr(args, "supervised", False):
        from lava_spikingbert.lava.supervise import run_supervised

        return run_supervised(lambda: _run_command(args), f"spikingbert {args.command}")
    return _run_command(args)


def _run_command(args) -> int:
    """The subcommand, with user errors reported as one line."""
    try:
        return args.func(args)
    except CliError as exc:
        print(f"spikingbert: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SpikingBertError, FileNotFoundError, FileExistsError) as exc:
        if args.verbose:
            raise
        print(f"spikingbert {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("spikingbert: interrupted (checkpoints written so far are kept; rerun with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
