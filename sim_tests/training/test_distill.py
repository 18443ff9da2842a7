"""Distillation stages, checkpoints/resume, DDP and the pipeline, on a tiny teacher and fixture data."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from lava_spikingbert.model.encoder import SpikingBert
from training.batching import encode
from training.common import improves
from training.distill import (StageSettings, attention_loss, default_layer_map, hidden_loss, init_student_from_teacher,
                              run_stage, settings_differences, soft_cross_entropy, student_config_from_teacher)
from training.readers import load_glue, plain_text_corpus
from training.tasks import get_task

from training_fixtures import FILL, NEG, POS, glue_dir, new_student, setup, tiny_teacher_dir  # noqa: F401  (fixtures)


def test_default_layer_map():
    assert default_layer_map(4, 12) == [3, 6, 9, 12]
    assert default_layer_map(4, 6) == [2, 3, 5, 6]
    assert default_layer_map(2, 2) == [1, 2]


def test_losses_ignore_padding_and_match_definitions():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    s = [torch.randn(2, 2, 3, 3)]
    t = [torch.randn(2, 2, 3, 3)]
    base = attention_loss(s, t, [1], mask)
    t2 = [t[0].clone()]
    t2[0][1, :, 2, :] = 1e4  # padded query row
    t2[0][1, :, :, 2] = -1e4  # padded key column
    assert torch.equal(attention_loss(s, t2, [1], mask), base)
    valid = torch.ones(2, 2, 3, 3, dtype=torch.bool)
    valid[1, :, 2, :] = False
    valid[1, :, :, 2] = False
    assert torch.allclose(base, ((s[0] - t[0])[valid] ** 2).mean())
    h_s = [torch.randn(2, 3, 4), torch.randn(2, 3, 4)]
    h_t = [torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)]
    expected = sum(((a - h_t[j])[mask.bool()] ** 2).mean() for a, j in zip(h_s, [0, 2]))
    assert torch.allclose(hidden_loss(h_s, h_t, [2], mask), expected)
    logits = torch.tensor([[2.0, -1.0]])
    teacher = torch.tensor([[30.0, -30.0]])
    assert torch.allclose(soft_cross_entropy(logits, teacher, 1.0),
                          torch.nn.functional.cross_entropy(logits, torch.tensor([0])), atol=1e-6)


def test_student_initialised_from_teacher(setup):
    teacher, *_ = setup
    student = new_student(teacher)
    bert = teacher.bert
    assert torch.equal(student.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    assert torch.equal(student.layers[1].output_norm.weight, bert.encoder.layer[1].output.LayerNorm.weight)
    assert torch.equal(student.layers[0].query.weight, bert.encoder.layer[0].attention.self.query.weight)
    assert student.config.fit_size == 32 and student.fit_dense is not None


# ------------------------------------------------------------------------------- stages
@pytest.mark.parametrize("stage", ["general", "intermediate", "prediction"])
def test_stage_trains_and_writes_hf_directory(stage, setup, tmp_path, glue_dir):
    teacher, tok, spec, train, dev = setup
    student = new_student(teacher)
    data = encode(plain_text_corpus(load_glue(spec, "train", glue_dir)), tok, 16) if stage == "general" else train
    before = {k: v.clone() for k, v in student.state_dict().items()}
    settings = StageSettings(stage=stage, max_steps=3, batch_size=8, lr=1e-3, t_conv=4, eval_every=2,
                             checkpoint_every=2)
    result = run_stage(settings, student, teacher, data, tmp_path / stage, tokenizer=tok, spec=spec, dev=dev,
                       progress=False)
    assert result.completed and result.steps == 3
    final = tmp_path / stage / "final"
    names = {p.name for p in final.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= names
    loaded = SpikingBert.from_pretrained(final)
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "training changed no weight"
    done = json.loads((tmp_path / stage / "stage_done.json").read_text())
    assert done["steps"] == 3 and done["sentences_per_s"] > 0
    if stage == "prediction":
        assert done["best_dev"] is not None and len(done["history"]) >= 2


def test_internal_loss_weights(setup, tmp_path):
    """rep_weight=0 leaves W_Td (used only by the hidden-state loss) untouched; both 0 is refused."""
    teacher, tok, spec, train, dev = setup
    student = new_student(teacher)
    before = student.fit_dense.weight.detach().clone()
    settings = StageSettings(stage="intermediate", max_steps=2, batch_size=8, lr=1e-3, t_conv=4, rep_weight=0.0,
                             weight_decay=0.0)  # (decoupled weight decay would move it anyway)
    run_stage(settings, student, teacher, train, tmp_path / "att_only", tokenizer=tok, spec=spec, progress=False)
    assert torch.equal(SpikingBert.from_pretrained(tmp_path / "att_only" / "final").fit_dense.weight, before)
    with pytest.raises(ValueError, match="rep_weight"):
        StageSettings(stage="intermediate", max_steps=2, att_weight=0.0, rep_weight=0.0)
    with pytest.raises(ValueError, match="augment_mask must be in"):
        StageSettings(stage="intermediate", max_steps=2, augment_mask=1.0)
    with pytest.raises(ValueError, match="internal-layer stages"):
        StageSettings(stage="prediction", max_steps=2, augment_mask=0.1)


def test_stage_forward_of_the_pipeline_choices():
    from lava_spikingbert.model.config import stage_forward

    stages = ("general", "intermediate", "prediction")
    assert [stage_forward("rate_ann_warmup", s) for s in stages] == ["rate_ann", "rate_ann", "spiking"]
    assert {stage_forward(f, s) for f in ("spiking", "rate_ann") for s in stages} == {"spiking", "rate_ann"}
    assert all(stage_forward("spiking", s) == "spiking" for s in stages)
    with pytest.raises(ValueError, match="train_forward must be one of"):
        stage_forward("bptt", "general")


def test_rate_ann_intermediate_stage_also_distils_logits():
    """The paper profile's stage 2 adds the teacher's logits when it trains the rate ANN; the
    paper's method (a spiking stage 2) keeps attention + hidden-state KD alone; an explicit weight wins."""
    from training.pipeline import BUDGETS, RATE_ANN_INTERMEDIATE_LOGIT_WEIGHT, _stage_settings

    b = BUDGETS["tiny"]
    assert RATE_ANN_INTERMEDIATE_LOGIT_WEIGHT > 0
    assert _stage_settings("intermediate", b, forward="rate_ann").logit_weight == RATE_ANN_INTERMEDIATE_LOGIT_WEIGHT
    assert _stage_settings("intermediate", b, forward="spiking").logit_weight == 0.0
    assert _stage_settings("general", b, forward="rate_ann").logit_weight == 0.0
    assert _stage_settings("intermediate", b, forward="rate_ann", logit_weight=0.5).logit_weight == 0.5


def test_internal_stage_logit_term_is_mse_for_regression(setup, tiny_teacher_dir, tmp_path):
    """For a regression task the internal-layer stage's logit term is the MSE to the teacher's score
    (a softmax over one output would be a constant, a silent no-op)."""
    from training.batching import length_bucketed_batches
    from training.common import DistEnv
    from training.distill import StageRun, student_config_from_teacher
    from training.teacher import load_teacher

    _, tok, _, train, _ = setup
    teacher, _ = load_teacher(tiny_teacher_dir, num_labels=1, problem_type="regression")
    torch.manual_seed(0)
    student = SpikingBert(student_config_from_teacher(teacher.config, num_layers=2, t_conv=4, max_length=16,
                                                      num_labels=1, problem_type="regression"))
    settings = StageSettings(stage="intermediate", max_steps=1, batch_size=8, t_conv=4, forward="rate_ann",
                             logit_weight=1.0)
    run = StageRun(settings, student, teacher, train, tmp_path / "reg", tokenizer=tok, spec=None, dev=None,
                   dist=DistEnv())
    run.prepare(resume=False)
    batch = next(iter(length_bucketed_batches(train, 8, shuffle=False)))
    _, parts = run._train_step(batch)
    assert parts["logit"] > 0


def test_train_forward_chooses_spiking_or_rate_ann_values(setup, tmp_path, monkeypatch):
    """forward="spiking" trains on simulated ASRs; "rate_ann" (the ablation) never simulates and
    its first step's update equals plain autograd through the steady-state map."""
    teacher, tok, spec, train, dev = setup
    calls = []
    real_simulate = SpikingBert.simulate

    def counting_simulate(self, *args, **kwargs):
        calls.append(kwargs.get("t_conv", args[2] if len(args) > 2 else None))
        return real_simulate(self, *args, **kwargs)

    monkeypatch.setattr(SpikingBert, "simulate", counting_simulate)
    kw = dict(stage="prediction", max_steps=1, batch_size=8, lr=1e-3, t_conv=4, eval_every=0, warmup=0.0)
    run_stage(StageSettings(**kw), new_student(teacher, dropout=0.0), teacher, train, tmp_path / "spk",
              tokenizer=tok, progress=False)
    assert calls == [4]
    calls.clear()
    student = new_student(teacher, dropout=0.0)
    result = run_stage(StageSettings(**kw, forward="rate_ann"), student, teacher, train, tmp_path / "ann",
                       tokenizer=tok, progress=False)
    assert result.completed and calls == []
    # the same step by hand: gradients of the soft cross-entropy through the rate ANN
    from training.batching import length_bucketed_batches
    from training.teacher import teacher_outputs

    ref = new_student(teacher, dropout=0.0)
    ref.train()
    batches = length_bucketed_batches(train, 8, shuffle=True, seed=42, epoch=0)
    batch = batches.collate(batches.batch_indices()[0])
    out = ref(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], mode="steady_state")
    soft_cross_entropy(out.logits, teacher_outputs(teacher, batch).logits, 1.0).backward()
    trained = SpikingBert.from_pretrained(tmp_path / "ann" / "final")
    moved = trained.classifier.weight - ref.classifier.weight.detach()
    assert moved.abs().max() > 0
    # Adam's first step moves every weight by -lr * sign(grad) (up to eps and weight decay)
    g = ref.classifier.weight.grad
    big = g.abs() > 1e-6
    assert torch.equal(torch.sign(moved[big]), -torch.sign(g[big]))
    with pytest.raises(ValueError, match="forward"):
        StageSettings(stage="prediction", max_steps=1, forward="bptt")


def test_resume_refuses_different_settings(setup, tmp_path):
    teacher, tok, spec, train, dev = setup
    kw = dict(stage="prediction", max_steps=3, batch_size=8, lr=1e-3, t_conv=4, eval_every=0)
    first = run_stage(StageSettings(**kw, run_steps=1, forward="rate_ann"), new_student(teacher), teacher, train,
                      tmp_path / "s", tokenizer=tok, progress=False)
    assert not first.completed
    with pytest.raises(ValueError, match=r"refusing to resume .*forward: 'rate_ann' -> 'spiking'"):
        run_stage(StageSettings(**kw), new_student(teacher), teacher, train, tmp_path / "s", tokenizer=tok,
                  resume=True, progress=False)
    with pytest.raises(ValueError, match=r"lr: 0.001 -> 0.002"):
        run_stage(StageSettings(**{**kw, "lr": 2e-3}, forward="rate_ann"), new_student(teacher), teacher, train,
                  tmp_path / "s", tokenizer=tok, resume=True, progress=False)
    # no t_conv given: the stage trains at the student's own (4) and records that number
    with pytest.raises(ValueError, match=r"t_conv: 4 -> 8"):
        run_stage(StageSettings(**{**kw, "t_conv": 8}, forward="rate_ann"), new_student(teacher), teacher, train,
                  tmp_path / "s", tokenizer=tok, resume=True, progress=False)
    third = run_stage(StageSettings(**{**kw, "t_conv": None}, run_steps=1, forward="rate_ann"), new_student(teacher),
                      teacher, train, tmp_path / "s", tokenizer=tok, resume=True, progress=False)
    assert third.steps == 2
    # how often it checkpoints or how far one call runs does not change the weights: resumable
    second = run_stage(StageSettings(**kw, run_steps=1, checkpoint_every=7, forward="rate_ann"),
                       new_student(teacher), teacher, train, tmp_path / "s", tokenizer=tok, resume=True,
                       progress=False)
    assert second.steps == 3


def test_settings_differences_reads_old_checkpoints_with_defaults():
    now = StageSettings(stage="general", max_steps=5)
    old = {k: v for k, v in asdict(now).items() if k not in ("forward", "rep_weight")}
    assert settings_differences(old, now) == {}
    assert settings_differences({**old, "seed": 1}, now) == {"seed": (1, 42)}


def test_empty_training_data_is_a_clear_error(setup, tmp_path):
    teacher, tok, spec, train, dev = setup
    empty = encode([], tok, 32)
    with pytest.raises(ValueError, match="stage general: no training data"):
        run_stage(StageSettings(stage="general", max_steps=2, batch_size=8, t_conv=4), new_student(teacher),
                  teacher, empty, tmp_path / "e", tokenizer=tok, progress=False)


def test_improves_ignores_nan():
    assert improves(0.5, None) and improves(float("nan"), None)
    assert improves(0.3, float("nan"))  # a NaN first evaluation (constant predictions) is replaced
    assert not improves(float("nan"), 0.3) and not improves(0.3, 0.3) and improves(0.31, 0.3)


def test_resume_reaches_the_same_weights(setup, tmp_path):
    teacher, tok, spec, train, dev = setup
    settings = StageSettings(stage="intermediate", max_steps=6, batch_size=8, lr=1e-3, t_conv=4, checkpoint_every=2)
    ref = run_stage(settings, new_student(teacher), teacher, train, tmp_path / "ref", tokenizer=tok, progress=False)
    # a run stopped after 3 steps (between checkpoints), then resumed from the step-2 checkpoint
    # ... the stop leaves a checkpoint at step 3 itself; also check the mid-run kill case below
    part = StageSettings(**{**settings.__dict__, "run_steps": 3})
    first = run_stage(part, new_student(teacher), teacher, train, tmp_path / "resumed", tokenizer=tok, progress=False)
    assert not first.completed and first.steps == 3
    second = run_stage(settings, new_student(teacher), teacher, train, tmp_path / "resumed", tokenizer=tok,
                       resume=True, progress=False)
    assert second.completed and second.steps == 6
    a = SpikingBert.from_pretrained(ref.final_dir).state_dict()
    b = SpikingBert.from_pretrained(second.final_dir).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_kill(tmp_path, glue_dir, tiny_teacher_dir):
    """A real SIGKILL right after the first checkpoint; --resume ends with the uninterrupted weights."""
    import psutil

    out = tmp_path / "killed"
    args = ["distill", "--stage", "intermediate", "--task", "sst2",
            "--glue-dir", str(glue_dir), "--teacher", str(tiny_teacher_dir), "--layers", "2", "--t-conv", "4",
            "--train-t-conv", "4", "--max-length", "16", "--batch-size", "8", "--lr", "1e-3", "--steps", "20",
            "--checkpoint-every", "3"]
    cmd = [sys.executable, "-m", "lava_spikingbert.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the run stops itself (SIGSTOP) once its first checkpoint is written, so the kill always lands
    # between checkpoints, however fast the machine
    stop_after_checkpoint = (
        "import os, signal, sys\n"
        "import training.distill as d\n"
        "save = d.save_checkpoint\n"
        "def save_then_stop(path, model, tokenizer=None, state=None):\n"
        "    save(path, model, tokenizer, state)\n"
        "    if state is not None:\n"
        "        os.kill(os.getpid(), signal.SIGSTOP)\n"
        "d.save_checkpoint = save_then_stop\n"
        "from lava_spikingbert.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", stop_after_checkpoint, *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED \
            and time.time() < deadline:
        time.sleep(0.05)
    assert (out / "checkpoint" / "training_state.safetensors").is_file()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    from training.safe_state import load_state

    assert load_state(out / "checkpoint" / "training_state.safetensors")["step"] == 3
    assert not (out / "final").exists()
    resumed = subprocess.run(cmd + ["--out", str(out), "--resume"], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")], env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    a = SpikingBert.from_pretrained(out / "final").state_dict()
    b = SpikingBert.from_pretrained(tmp_path / "ref" / "final").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_torchrun_two_processes(tmp_path, glue_dir, tiny_teacher_dir):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "lava_spikingbert.cli", "distill",
           "--stage", "intermediate", "--task", "sst2", "--glue-dir", str(glue_dir), "--teacher",
           str(tiny_teacher_dir), "--layers", "2", "--t-conv", "4", "--train-t-conv", "4", "--max-length", "16",
           "--batch-size", "4", "--lr", "1e-3", "--steps", "4", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    done = json.loads((out / "stage_done.json").read_text())
    assert done["steps"] == 4 and done["world_size"] == 2
    assert done["sentences"] == 4 * 4 * 2  # both ranks' batches counted
    SpikingBert.from_pretrained(out / "final")


def test_pipeline_under_torchrun_splits_each_batch_and_the_evaluation(tmp_path, glue_dir, tiny_teacher_dir):
    """scripts/main.sh runs the pipeline with one process per core: the budget's batch is global
    (each rank takes half), the teacher is fine-tuned once, and the sharded dev evaluation gives
    the same predictions as evaluating the final student in one process. (Run with the signed
    neuron and the rate-ANN warm-up: stages 1-2 train the rate ANN, stage 3 the spiking network.)"""
    from lava_spikingbert.model.inference import intra_op_threads
    from training.batching import encode
    from training.readers import load_glue
    from training.tasks import get_task
    from training.distill import evaluate_student
    from training.teacher import load_teacher

    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "lava_spikingbert.cli", "pipeline",
           "--task", "sst2", "--glue-dir", str(glue_dir), "--teacher", str(tiny_teacher_dir), "--budget", "tiny",
           "--layers", "2", "--t-conv", "4", "--max-length", "16", "--out", str(out),
           "--neuron", "if_signed_pair", "--train-forward", "rate_ann_warmup"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((out / "pipeline_summary.json").read_text())
    assert summary["processes"] == 2
    for stage, dirname, forward in (("general", "1-general", "rate_ann"), ("intermediate", "2-intermediate", "rate_ann"),
                                    ("prediction", "3-prediction", "spiking")):
        done = json.loads((out / "stages" / dirname / "stage_done.json").read_text())
        assert done["world_size"] == 2 and done["settings"]["batch_size"] == summary["budget"]["batch_size"] // 2
        assert done["sentences"] == done["steps"] * summary["budget"]["batch_size"], stage
        assert done["settings"]["forward"] == forward, stage
    spec = get_task("sst2")
    _, tokenizer = load_teacher(out / "teacher", num_labels=2)
    dev = encode(load_glue(spec, "dev", glue_dir, limit=summary["budget"]["dev_limit"]), tokenizer, 16)
    student = SpikingBert.from_pretrained(out / "student")
    assert student.config.neuron == "if_signed_pair"
    for row in summary["eval_vs_T"]:  # one intra-op thread, as each rank had (same float rounding)
        with intra_op_threads(1):
            alone = evaluate_student(student, dev, spec, t_conv=row["t_conv"], batch_size=8, workers=1)
        assert row["n"] == alone["n"] > 8 and row["metrics"] == alone["metrics"], row["t_conv"]  # >1 batch


def test_pipeline_tiny_end_to_end(tmp_path, glue_dir, tiny_teacher_dir):
    from training.pipeline import Budget, run_pipeline

    budget = Budget(teacher_epochs=1, general_steps=2, intermediate_steps=2, prediction_steps=3, batch_size=8,
                    train_t_conv=4, eval_every=2)
    out = tmp_path / "run"
    result = run_pipeline("sst2", out, glue_dir=glue_dir, teacher_path=tiny_teacher_dir, budget=budget,
                          num_layers=2, t_conv=4, max_length=16, eval_t=(2, 4), progress=False)
    for sub in ("teacher", "student"):
        assert (out / sub / "config.json").is_file()
    rows = json.loads((out / "eval_vs_T.json").read_text())
    assert [r["t_conv"] for r in rows] == [2, 4]
    for r in rows:
        assert set(r) >= {"task", "split", "n", "metrics", "t_conv", "backend", "precision", "wall_s",
                          "sentences_per_s"}
        assert r["n"] == 16
    assert (out / "accuracy_vs_T.png").stat().st_size > 1000
    summary = json.loads((out / "pipeline_summary.json").read_text())
    assert set(summary["stages"]) >= {"general", "intermediate", "prediction"}
    assert result["student_dir"] == out / "student"
    stage2 = json.loads((out / "stages" / "2-intermediate" / "stage_done.json").read_text())["settings"]
    assert stage2["forward"] == "rate_ann" and stage2["logit_weight"] > 0  # the head learns in the rate ANN
    # the eval command on the final student, with --json
    js = tmp_path / "eval.json"
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "lava_spikingbert.cli", "eval", "--model", str(out / "student"),
                           "--task", "sst2", "--glue-dir", str(glue_dir), "--t-conv", "4", "--json", str(js)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(js.read_text())
    assert payload["t_conv"] == 4 and payload["n"] == 16 and payload["backend"] == "torch"
    # the same simulation in other batches: the same accuracy, up to one sentence on a float-rounding tie
    assert abs(payload["metrics"]["accuracy"] - rows[1]["metrics"]["accuracy"]) <= 1 / 16
    # a task with another number of classes than the model's outputs is refused, naming both
    proc = subprocess.run([sys.executable, "-m", "lava_spikingbert.cli", "eval", "--model", str(out / "student"),
                           "--task", "custom", "--data-file", str(glue_dir / "SST-2" / "dev.tsv"),
                           "--labels", "0,1,2"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "has 2 outputs; task custom needs 3" in proc.stderr, proc.stderr[-2000:]
    # a second run finds everything complete and only re-evaluates
    again = run_pipeline("sst2", out, glue_dir=glue_dir, teacher_path=tiny_teacher_dir, budget=budget,
                         num_layers=2, t_conv=4, max_length=16, eval_t=(4,), progress=False)
    assert again["rows"][0]["metrics"] == rows[1]["metrics"]
    # a settings file from before a budget field existed stands for the field's default, which those
    # runs used: accepted
    recorded = json.loads((out / "pipeline_settings.json").read_text())
    assert recorded["budget"].pop("intermediate_join") == 0.0
    (out / "pipeline_settings.json").write_text(json.dumps(recorded))
    run_pipeline("sst2", out, glue_dir=glue_dir, teacher_path=tiny_teacher_dir, budget=budget,
                 num_layers=2, t_conv=4, max_length=16, eval_t=(4,), progress=False)
    # other settings in the same --out are refused (nothing is silently reused) ...
    with pytest.raises(ValueError, match=r"other settings .*seed: 42 -> 1"):
        run_pipeline("sst2", out, glue_dir=glue_dir, teacher_path=tiny_teacher_dir, budget=budget, seed=1,
                     num_layers=2, t_conv=4, max_length=16, eval_t=(4,), progress=False)
    # (a settings file from before the neuron setting existed stands for the paper's neuron, which
    # every earlier run used: the default signed neuron is refused there)
    recorded = json.loads((out / "pipeline_settings.json").read_text())
    assert recorded.pop("neuron") == "if_signed_pair" and recorded["train_forward"] == "rate_ann_warmup"
    (out / "pipeline_settings.json").write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match=r"other settings .*neuron: 'if_subtract' -> 'if_signed_pair'"):
        run_pipeline("sst2", out, glue_dir=glue_dir, teacher_path=tiny_teacher_dir, budget=budget,
                     num_layers=2, t_conv=4, max_length=16, eval_t=(4,), progress=False)
    (out / "pipeline_settings.json").unlink()
    with pytest.raises(ValueError, match=r"1-general was completed with other settings .*neuron: 'if_signed_pair' "
                                         r"-> 'if_subtract'"):
        run_pipeline("sst2", out, glue_dir=glue_dir, teacher_path=tiny_teacher_dir, budget=budget,
                     neuron="if_subtract", num_layers=2, t_conv=4, max_length=16, eval_t=(4,), progress=False)
    # outputs of an earlier version (no settings file) are checked against the stages' own records
    (out / "pipeline_settings.json").unlink()
    with pytest.raises(ValueError, match=r"1-general was completed with other settings .*temperature: 1.0 -> 2.0"):
        run_pipeline("sst2", out, glue_dir=glue_dir, teacher_path=tiny_teacher_dir, budget=budget, temperature=2.0,
                     num_layers=2, t_conv=4, max_length=16, eval_t=(4,), progress=False)
    (out / "pipeline_settings.json").unlink()
    with pytest.raises(ValueError, match=r"teacher was fine-tuned with other settings .*seed: 42 -> 1"):
        run_pipeline("sst2", out, glue_dir=glue_dir, teacher_path=tiny_teacher_dir, budget=budget, seed=1,
                     num_layers=2, t_conv=4, max_length=16, eval_t=(4,), progress=False)
    # ... unless the run restarts: everything is trained again with the new settings, and nothing
    # of the earlier stages (checkpoints, best models, completion marks) is left to be continued
    (out / "stages" / "2-intermediate" / "checkpoint" / "earlier-run").write_text("x")
    run_pipeline("sst2", out, glue_dir=glue_dir, teacher_path=tiny_teacher_dir, budget=budget, seed=1,
                 resume=False, num_layers=2, t_conv=4, max_length=16, eval_t=(4,), progress=False)
    assert json.loads((out / "teacher" / "teacher_metrics.json").read_text())["hparams"]["seed"] == 1
    for stage in ("1-general", "2-intermediate", "3-prediction"):
        assert json.loads((out / "stages" / stage / "stage_done.json").read_text())["settings"]["seed"] == 1
    assert json.loads((out / "pipeline_settings.json").read_text())["seed"] == 1
    assert not (out / "stages" / "2-intermediate" / "checkpoint" / "earlier-run").exists()


def test_cli_errors_are_one_line(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "lava_spikingbert.cli", "eval", "--model", str(tmp_path / "nope"),
                           "--task", "sst2"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "not a checkpoint directory" in proc.stderr
    for flag, value in (("--eval-t", "4,x"), ("--t-conv", "0")):
        proc = subprocess.run([sys.executable, "-m", "lava_spikingbert.cli", "pipeline", flag, value], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and f"argument {flag}:" in proc.stderr, proc.stderr


def test_teacher_command_trains_on_custom_files(tmp_path, glue_dir, tiny_teacher_dir):
    d = glue_dir / "SST-2"
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "lava_spikingbert.cli", "teacher", "--task", "custom",
                           "--train-file", str(d / "train.tsv"), "--data-file", str(d / "dev.tsv"),
                           "--teacher", str(tiny_teacher_dir), "--epochs", "0.2", "--out", str(tmp_path / "t"),
                           "--max-length", "16"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "t" / "teacher_metrics.json").read_text())
    assert metrics["dev_n"] == 16 and metrics["train_n"] == 48, metrics


def test_head_lr_gives_the_classifier_its_own_rate(setup):
    from training.common import linear_schedule, make_optimizer

    teacher, *_ = setup
    student = new_student(teacher)
    opt = make_optimizer(student, 1e-4, 0.01, head_lr=5e-3)
    head = {id(p) for p in student.classifier.parameters()}
    groups = [g for g in opt.param_groups if {id(p) for p in g["params"]} & head]
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == head
    assert groups[0]["lr"] == 5e-3 and groups[0]["weight_decay"] == 0.0
    assert all(g["lr"] == 1e-4 for g in opt.param_groups if g is not groups[0])
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == sum(1 for p in student.parameters() if p.requires_grad)
    sched = linear_schedule(opt, 0, 10)  # the schedule scales both rates alike
    opt.step()
    sched.step()
    assert groups[0]["lr"] == pytest.approx(5e-3 * 0.9) and opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.9)
    plain = make_optimizer(student, 1e-4, 0.01)
    assert len(plain.param_groups) == 2


def test_custom_data_distill_then_eval_keeps_the_class_order(tmp_path, glue_dir, tiny_teacher_dir):
    """A student distilled on custom string labels records their order, so evaluating it on a file
    that lacks one of the classes (no --labels) still maps every label to the trained class id."""
    rows = [line.split("\t") for line in (glue_dir / "SST-2" / "train.tsv").read_text().splitlines()[1:]]
    names = {"0": "neg", "1": "pos"}
    (tmp_path / "train.tsv").write_text("text\tsentiment\n" + "".join(f"{s}\t{names[y]}\n" for s, y in rows))
    (tmp_path / "dev.tsv").write_text("text\tsentiment\n" + "".join(f"{s}\tpos\n" for s, y in rows if y == "1"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    data = ["--task", "custom", "--text-columns", "text", "--label-column", "sentiment"]
    proc = subprocess.run([sys.executable, "-m", "lava_spikingbert.cli", "distill", "--stage", "prediction", *data,
                           "--train-file", str(tmp_path / "train.tsv"), "--data-file", str(tmp_path / "train.tsv"),
                           "--teacher", str(tiny_teacher_dir), "--layers", "2", "--t-conv", "4",
                           "--train-t-conv", "4", "--max-length", "16", "--batch-size", "8", "--steps", "2",
                           "--gold-labels", "--neuron", "if_signed_pair", "--out", str(tmp_path / "s")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    student = SpikingBert.from_pretrained(tmp_path / "s" / "final")
    assert student.config.extra["labels"] == ["neg", "pos"]
    assert student.config.neuron == "if_signed_pair"  # (a signed student, made and evaluated through the CLI)
    js = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "lava_spikingbert.cli", "eval", "--model",
                           str(tmp_path / "s" / "final"),
                           *data, "--data-file", str(tmp_path / "dev.tsv"), "--t-conv", "4", "--max-length", "16",
                           "--json", str(js)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(js.read_text())
    assert out["n"] == sum(y == "1" for _, y in rows)
    # every dev label is 'pos' = class 1: the accuracy is the share of class-1 predictions
    from transformers import AutoTokenizer

    from training.readers import custom_task_spec, load_custom
    from training.distill import evaluate_student

    tok = AutoTokenizer.from_pretrained(tmp_path / "s" / "final", local_files_only=True)
    spec = custom_task_spec(labels=["neg", "pos"])
    dev = encode(load_custom(tmp_path / "dev.tsv", ["text"], "sentiment", labels=spec.labels), tok, 16)
    preds = evaluate_student(student, dev, spec, t_conv=4)["predictions"]
    assert out["metrics"]["accuracy"] == pytest.approx(sum(p == 1 for p in preds) / len(preds))


@pytest.mark.lava
def test_regression_pair_task_from_distillation_to_lava(tmp_path, tiny_teacher_dir):
    """STS-B (sentence pairs, a score): distill -> eval -> int8 export -> Lava fixed point, which
    reproduces the torch reference's scores exactly."""
    rng = random.Random(3)
    glue = tmp_path / "glue"
    (glue / "STS-B").mkdir(parents=True)
    for split, n in (("train", 24), ("dev", 8)):
        rows = ["sentence1\tsentence2\tscore"]
        for _ in range(n):
            a = " ".join(rng.choice(FILL + POS) for _ in range(rng.randint(2, 6)))
            b = " ".join(rng.choice(FILL + NEG) for _ in range(rng.randint(2, 6)))
            rows.append(f"{a}\t{b}\t{rng.uniform(0, 5):.2f}")
        (glue / "STS-B" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "lava_spikingbert.cli", *map(str, args)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]

    cli("distill", "--stage", "prediction", "--task", "stsb", "--glue-dir", glue, "--teacher", tiny_teacher_dir,
        "--gold-labels", "--layers", "2", "--t-conv", "4", "--train-t-conv", "4", "--max-length", "24",
        "--batch-size", "8", "--steps", "2", "--out", tmp_path / "s")
    student = SpikingBert.from_pretrained(tmp_path / "s" / "final")
    assert student.config.problem_type == "regression" and student.config.num_labels == 1
    cli("eval", "--model", tmp_path / "s" / "final", "--task", "stsb", "--glue-dir", glue, "--t-conv", "4",
        "--json", tmp_path / "eval.json")
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["n"] == 8 and set(ev["metrics"]) >= {"pearson", "spearman", "corr"}
    cli("export", "--model", tmp_path / "s" / "final", "--precision", "int8", "--out", tmp_path / "m.h5")
    cli("lava", "--model", tmp_path / "m.h5", "--task", "stsb", "--glue-dir", glue, "--limit", "4", "--tag", "fixed_pt",
        "--t-conv", "4", "--no-pack", "--json", tmp_path / "lava.json")
    out = json.loads((tmp_path / "lava.json").read_text())
    assert out["n"] == 4 and out["spike_count_match"] == 1.0 and out["prediction_agreement"] == 1.0
