"""The loihi profile through the distillation stages, the pipeline and the eval command (tiny)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.model.checkpoint import read_profile
from lava_spikingbert.model.loihi import LoihiSpikingMixer
from lava_spikingbert.model.student import load_student
from training.distill import StageSettings, init_loihi_student, loihi_config_from_teacher, run_stage

from training_fixtures import glue_dir, new_student, setup, tiny_teacher_dir  # noqa: F401  (fixtures)


def new_loihi_student(teacher, train) -> LoihiSpikingMixer:
    torch.manual_seed(0)
    config = loihi_config_from_teacher(teacher.config, num_layers=2, t_conv=4, max_length=16, hidden_size=24,
                                       intermediate_size=48, kernel_size=3)
    student = LoihiSpikingMixer(config)
    init_loihi_student(student, teacher, train, calibration_size=32)
    return student


def test_loihi_stages_train_and_resume_to_the_same_weights(setup, tmp_path):
    teacher, tok, spec, train, dev = setup
    # internal-layer stage (rate ANN, hidden-state KD + soft CE on the teacher's logits)
    # masking augmentation on: a resumed run must draw the same masks as an uninterrupted one
    settings = StageSettings(stage="intermediate", max_steps=6, batch_size=8, lr=1e-3, t_conv=4, checkpoint_every=2,
                             forward="rate_ann", att_weight=0.0, logit_weight=1.0, embed_lr=1e-4, augment_mask=0.3)
    ref = run_stage(settings, new_loihi_student(teacher, train), teacher, train, tmp_path / "ref", tokenizer=tok,
                    progress=False)
    done = json.loads((tmp_path / "ref" / "stage_done.json").read_text())
    assert done["settings"]["logit_weight"] == 1.0 and read_profile(ref.final_dir) == "loihi"
    part = StageSettings(**{**settings.__dict__, "run_steps": 3})
    first = run_stage(part, new_loihi_student(teacher, train), teacher, train, tmp_path / "resumed", tokenizer=tok,
                      progress=False)
    assert not first.completed and first.steps == 3
    second = run_stage(settings, new_loihi_student(teacher, train), teacher, train, tmp_path / "resumed",
                       tokenizer=tok, resume=True, progress=False)
    assert second.completed and second.steps == 6
    a, b = load_student(ref.final_dir).state_dict(), load_student(second.final_dir).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    unmasked = run_stage(StageSettings(**{**settings.__dict__, "augment_mask": 0.0}), new_loihi_student(teacher, train),
                         teacher, train, tmp_path / "unmasked", tokenizer=tok, progress=False)
    c = load_student(unmasked.final_dir).state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the masks changed what was learned
    start = load_student(ref.final_dir)
    # prediction stage: spiking, int8 QAT, best of dev with the starting weights as candidate (step 0)
    pred = StageSettings(stage="prediction", max_steps=4, batch_size=8, lr=1e-4, t_conv=4, eval_every=2,
                         weights="int8", eval_start=True)
    result = run_stage(pred, start, teacher, train, tmp_path / "pred", tokenizer=tok, spec=spec, dev=dev,
                       progress=False)
    assert [h["step"] for h in result.history] == [0, 2, 4]
    final = load_student(result.final_dir)
    assert isinstance(final, LoihiSpikingMixer) and final.config.weights == "int8"
    best = max(h["accuracy"] for h in result.history)
    assert result.best_metric == best


def test_resume_refuses_a_checkpoint_of_the_other_profile(setup, tmp_path):
    teacher, tok, spec, train, dev = setup
    settings = StageSettings(stage="intermediate", max_steps=4, batch_size=8, lr=1e-3, t_conv=4, checkpoint_every=2,
                             forward="rate_ann", run_steps=2)
    run_stage(settings, new_student(teacher), teacher, train, tmp_path / "stage", tokenizer=tok, progress=False)
    with pytest.raises(SpikingBertError, match=r"refusing to resume .*profile: 'paper' -> 'loihi'"):
        run_stage(settings, new_loihi_student(teacher, train), teacher, train, tmp_path / "stage", tokenizer=tok,
                  resume=True, progress=False)


def test_pipeline_loihi_tiny_end_to_end(tmp_path, glue_dir, tiny_teacher_dir):
    from training.pipeline import run_pipeline

    out = tmp_path / "run"
    run = dict(glue_dir=glue_dir, teacher_path=tiny_teacher_dir, budget="tiny", t_conv=4, max_length=16,
               eval_t=(2, 4), progress=False)
    result = run_pipeline("sst2", out, profile="loihi", **run)
    student = load_student(out / "student")
    assert isinstance(student, LoihiSpikingMixer) and student.config.weights == "int8"  # deployed = QAT int8
    assert student.config.num_layers == 2
    rows = json.loads((out / "eval_vs_T.json").read_text())
    assert [(r["precision"], r["t_conv"], r["deployed"]) for r in rows] == \
        [("int8", 2, True), ("int8", 4, True), ("fp32", 2, False), ("fp32", 4, False)]
    assert all(r["profile"] == "loihi" and r["n"] == 16 for r in rows)
    stages = {s: json.loads((out / "stages" / d / "stage_done.json").read_text())["settings"]
              for s, d in (("general", "1-general"), ("intermediate", "2-intermediate"), ("prediction", "3-prediction"))}
    assert [stages[s]["forward"] for s in stages] == ["rate_ann", "rate_ann", "spiking"]
    assert [stages[s]["weights"] for s in stages] == ["fp32", "fp32", "int8"]
    assert stages["intermediate"]["logit_weight"] > 0 and stages["prediction"]["eval_start"]
    assert json.loads((out / "pipeline_settings.json").read_text())["profile"] == "loihi"
    # the eval command dispatches on the checkpoint's profile and reproduces the pipeline's T=4 number
    js = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "lava_spikingbert.cli", "eval", "--model", str(out / "student"),
                           "--task", "sst2", "--glue-dir", str(glue_dir), "--t-conv", "4", "--limit", "16",
                           "--json", str(js)], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(js.read_text())
    assert payload["precision"] == "int8" and payload["n"] == 16
    assert abs(payload["metrics"]["accuracy"] - rows[1]["metrics"]["accuracy"]) <= 1 / 16
    # a re-run finds everything complete; the other profile in the same --out is refused
    again = run_pipeline("sst2", out, profile="loihi", **{**run, "eval_t": (4,)})
    assert again["rows"][0]["metrics"] == rows[1]["metrics"]
    with pytest.raises(ValueError, match=r"other settings .*profile: 'loihi' -> 'paper'"):
        run_pipeline("sst2", out, profile="paper", **{**run, "eval_t": (4,)})
    (out / "pipeline_settings.json").unlink()  # the stages' own records refuse it too
    with pytest.raises(ValueError, match=r"1-general was completed with other settings .*profile: 'loihi' -> 'paper'"):
        run_pipeline("sst2", out, profile="paper", **{**run, "eval_t": (4,)})
    assert result["student_dir"] == out / "student"


def test_embed_lr_gives_the_host_embeddings_their_own_rate(setup):
    from lava_spikingbert.model.loihi import HOST_EMBEDDINGS
    from training.common import make_optimizer

    teacher, tok, spec, train, dev = setup
    student = new_loihi_student(teacher, train)
    opt = make_optimizer(student, 1e-3, 0.01, embed_lr=1e-4, embed_prefixes=HOST_EMBEDDINGS)
    by_lr = {}
    for group in opt.param_groups:
        for p in group["params"]:
            by_lr[id(p)] = (group["lr"], group["weight_decay"])
    for name, p in student.named_parameters():
        expected = 1e-4 if name.startswith(HOST_EMBEDDINGS) else 1e-3
        assert by_lr[id(p)][0] == expected, name
    assert by_lr[id(student.word_embeddings.weight)] == (1e-4, 0.0)
    assert by_lr[id(student.layers[0].fc1.weight)] == (1e-3, 0.01)
    # without embed_lr every parameter keeps the base rate
    assert {g["lr"] for g in make_optimizer(student, 1e-3, 0.01).param_groups} == {1e-3}


def test_joint_fp32_alternates_the_weights_and_selects_on_the_worse_score(setup, tmp_path):
    teacher, tok, spec, train, dev = setup
    start = new_loihi_student(teacher, train)
    seen = []  # the weights each training forward pass ran with
    forward = start.forward

    def spy(*args, **kwargs):
        if start.training:
            seen.append(start.config.weights)
        return forward(*args, **kwargs)

    start.forward = spy
    pred = StageSettings(stage="prediction", max_steps=4, batch_size=8, lr=1e-3, t_conv=4, eval_every=2,
                         weights="int8", eval_start=True, joint_fp32=True)
    result = run_stage(pred, start, teacher, train, tmp_path / "joint", tokenizer=tok, spec=spec, dev=dev,
                       progress=False)
    assert seen == ["int8", "fp32", "int8", "fp32"]
    assert [h["step"] for h in result.history] == [0, 2, 4]
    for h in result.history:
        assert h["accuracy"] == min(h["accuracy_int8"], h["accuracy_fp32"])
    assert result.best_metric == max(h["accuracy"] for h in result.history)
    # the kept checkpoint is the deployed (int8) model; under both weight sets it scores what its
    # evaluation recorded
    final = load_student(result.final_dir)
    assert final.config.weights == "int8"
    best = next(h for h in result.history if h["accuracy"] == result.best_metric)
    from training.distill import evaluate_student
    for mode in ("int8", "fp32"):
        final.set_weights(mode)
        assert evaluate_student(final, dev, spec)["metrics"]["accuracy"] == best[f"accuracy_{mode}"]
    # a resumed run alternates on the same steps and ends with the same weights
    part = StageSettings(**{**pred.__dict__, "run_steps": 3})
    run_stage(part, new_loihi_student(teacher, train), teacher, train, tmp_path / "resumed", tokenizer=tok, spec=spec,
              dev=dev, progress=False)
    resumed = run_stage(pred, new_loihi_student(teacher, train), teacher, train, tmp_path / "resumed", tokenizer=tok,
                        spec=spec, dev=dev, resume=True, progress=False)
    assert resumed.history == result.history
    a, b = load_student(result.final_dir).state_dict(), load_student(resumed.final_dir).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_joint_fp32_needs_quantized_loihi_weights(setup, tmp_path):
    teacher, tok, spec, train, dev = setup
    with pytest.raises(ValueError, match="joint_fp32 needs quantized weights"):
        StageSettings(stage="prediction", max_steps=2, weights="fp32", joint_fp32=True)
    pred = StageSettings(stage="prediction", max_steps=2, batch_size=8, t_conv=4, weights="int8", joint_fp32=True)
    with pytest.raises(SpikingBertError, match="joint_fp32 is for the loihi profile"):
        run_stage(pred, new_student(teacher), teacher, train, tmp_path / "paper", tokenizer=tok, spec=spec, dev=dev,
                  progress=False)


def test_full_loihi_budget_trains_the_prediction_stage_for_both_weight_sets():
    from training.pipeline import LOIHI_BUDGETS, _loihi_stage_settings

    full, default = LOIHI_BUDGETS["full"], LOIHI_BUDGETS["default"]
    assert _loihi_stage_settings("prediction", full, weights="int8").joint_fp32
    assert not _loihi_stage_settings("prediction", full, weights="fp32").joint_fp32
    assert not _loihi_stage_settings("intermediate", full, weights="fp32").joint_fp32
    assert not _loihi_stage_settings("prediction", default, weights="int8").joint_fp32
    assert _loihi_stage_settings("intermediate", full).augment_join == full.intermediate_join > 0
    assert _loihi_stage_settings("general", full).augment_join == 0.0


def _augmented_stage_weights(setup, tmp_path, settings: StageSettings, option: str) -> tuple[dict, dict, dict]:
    """Final weights of a rate-ANN stage-2 run with ``settings``, of the same run stopped after 2 steps
    and resumed, and of the run with ``option`` set to 0."""
    teacher, tok, spec, train, dev = setup

    def run(stage_settings, name, **kwargs):
        return run_stage(stage_settings, new_loihi_student(teacher, train), teacher, train, tmp_path / name,
                         tokenizer=tok, progress=False, **kwargs)

    ref = run(settings, "ref")
    run(dataclasses.replace(settings, run_steps=2), "resumed")
    resumed = run(settings, "resumed", resume=True)
    plain = run(dataclasses.replace(settings, **{option: 0.0}), "plain")
    return tuple(load_student(r.final_dir).state_dict() for r in (ref, resumed, plain))


def test_replacement_augmentation_changes_what_is_learned_and_resumes_exactly(setup, tmp_path):
    settings = StageSettings(stage="intermediate", max_steps=4, batch_size=8, lr=1e-3, t_conv=4, checkpoint_every=2,
                             forward="rate_ann", att_weight=0.0, augment_replace=0.5)
    a, b, c = _augmented_stage_weights(setup, tmp_path, settings, "augment_replace")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same replacements on a resumed run
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the replacements changed what was learned
    with pytest.raises(ValueError, match="augment_replace must be in"):
        StageSettings(stage="intermediate", max_steps=2, augment_mask=0.6, augment_replace=0.5)
    with pytest.raises(ValueError, match="internal-layer stages"):
        StageSettings(stage="prediction", max_steps=2, augment_replace=0.1)


def test_joining_augmentation_changes_what_is_learned_and_resumes_exactly(setup, tmp_path):
    teacher, tok, spec, train, dev = setup
    settings = StageSettings(stage="intermediate", max_steps=4, batch_size=8, lr=1e-3, t_conv=4, checkpoint_every=2,
                             forward="rate_ann", att_weight=0.0, logit_weight=1.0, augment_join=0.5)
    a, b, c = _augmented_stage_weights(setup, tmp_path, settings, "augment_join")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same joins on a resumed run
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the joined sentences changed what was learned
    pairs = dataclasses.replace(train, token_type_ids=[[0] * (len(t) - 1) + [1] for t in train.token_type_ids])
    with pytest.raises(SpikingBertError, match="augment_join joins single sentences"):
        run_stage(settings, new_loihi_student(teacher, train), teacher, pairs, tmp_path / "pairs", tokenizer=tok,
                  progress=False)
    with pytest.raises(ValueError, match="augment_join must be in"):
        StageSettings(stage="intermediate", max_steps=2, augment_join=1.5)
    with pytest.raises(ValueError, match="internal-layer stages"):
        StageSettings(stage="prediction", max_steps=2, augment_join=0.5)
