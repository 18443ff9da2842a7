"""Tests of training/teacher.py on a tiny random BERT (plus one load of the real default teacher)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from training.batching import encode, length_bucketed_batches
from training.readers import Example
from training.teacher import (
    SCORES_ATTN,
    default_teacher_path,
    evaluate_teacher,
    finetune_teacher,
    load_teacher,
    teacher_outputs,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A 2-layer, 32-wide random BertForSequenceClassification with the MiniLM (bert-base-uncased) vocab."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(default_teacher_path()))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    path = tmp_path_factory.mktemp("tiny_teacher")
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


WORDS = ["good", "bad", "great", "awful", "movie", "plot", "the", "a", "fun", "dull", "actors", "is"]


def _sst2_fixture(root, n_train=40, n_dev=16, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "SST-2"
    d.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            words = list(rng.choice(WORDS, size=int(rng.integers(2, 12))))
            label = int(sum(w in ("good", "great", "fun") for w in words) > sum(w in ("bad", "awful", "dull") for w in words))
            lines.append(f"{' '.join(words)} \t{label}")
        (d / name).write_text("\n".join(lines) + "\n")
    return root


def _batch(tokenizer, texts, pairs=None):
    ex = [Example(str(i), t, None if pairs is None else pairs[i], i % 2) for i, t in enumerate(texts)]
    (batch,) = list(length_bucketed_batches(encode(ex, tokenizer, 32), 16, shuffle=False))
    return batch


def test_scores_hidden_states_match_stock_attention(tiny_teacher):
    from transformers import BertForSequenceClassification

    model, tok = load_teacher(tiny_teacher)
    assert model.config._attn_implementation == SCORES_ATTN and not model.training
    batch = _batch(tok, ["a good movie", "the plot is dull and the actors are awful , really", "fun"],
                   pairs=["yes", "no it is not", "maybe so"])
    out = teacher_outputs(model, batch)
    B, L = batch["input_ids"].shape
    assert (batch["attention_mask"] == 0).any()  # the batch is padded
    assert out.logits.shape == (B, 2)
    assert len(out.hidden_states) == 3 and all(h.shape == (B, L, 32) for h in out.hidden_states)
    assert len(out.attention_scores) == 2 and all(s.shape == (B, 2, L, L) for s in out.attention_scores)
    assert not out.logits.requires_grad

    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    for impl in ("eager", "sdpa"):
        ref = BertForSequenceClassification.from_pretrained(tiny_teacher, attn_implementation=impl).eval()
        with torch.no_grad():
            r = ref(**inputs, output_hidden_states=True, output_attentions=impl == "eager")
        torch.testing.assert_close(out.logits, r.logits, atol=1e-5, rtol=1e-5)
        for h, rh in zip(out.hidden_states, r.hidden_states):
            torch.testing.assert_close(h, rh, atol=1e-5, rtol=1e-5)
        if impl == "eager":
            assert len(r.attentions) == 2
            for s, p in zip(out.attention_scores, r.attentions):
                torch.testing.assert_close(torch.softmax(s, dim=-1), p, atol=1e-6, rtol=1e-5)

    # pre-softmax: finite scale at real keys, additive mask at padded keys; masked_fill replaces the latter
    pad = (batch["attention_mask"] == 0)[:, None, None, :].expand_as(out.attention_scores[0])
    s0 = out.attention_scores[0]
    assert (s0[pad] < -1e30).all() and (s0[~pad].abs() < 1e3).all()
    filled = teacher_outputs(model, batch, masked_fill=0.0).attention_scores[0]
    assert (filled[pad] == 0).all() and torch.equal(filled[~pad], s0[~pad])
    # recomputing q.k^T / sqrt(d) by hand for layer 0 gives the same scores
    att = model.bert.encoder.layer[0].attention.self
    h0 = out.hidden_states[0]
    q = att.query(h0).view(B, L, 2, 16).transpose(1, 2)
    k = att.key(h0).view(B, L, 2, 16).transpose(1, 2)
    manual = (q @ k.transpose(-1, -2)) / 4.0
    torch.testing.assert_close(s0[~pad], manual.detach()[~pad], atol=1e-5, rtol=1e-5)


def test_teacher_outputs_switches_attention_and_handles_unpadded_batch(tiny_teacher):
    model, tok = load_teacher(tiny_teacher, attn_implementation="sdpa")
    batch = _batch(tok, ["good movie", "bad plot"])
    assert (batch["attention_mask"] == 1).all()
    with torch.no_grad():
        stock = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    out = teacher_outputs(model, batch, grad=True)
    assert model.config._attn_implementation == SCORES_ATTN
    assert out.logits.requires_grad
    torch.testing.assert_close(out.logits.detach(), stock, atol=1e-5, rtol=1e-5)
    assert all(torch.isfinite(s).all() for s in out.attention_scores)


def test_load_teacher_regression_and_errors(tiny_teacher, tmp_path):
    model, _ = load_teacher(tiny_teacher, problem_type="regression")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    model3, _ = load_teacher(tiny_teacher, num_labels=3)
    assert model3.classifier.out_features == 3
    with pytest.raises(FileNotFoundError, match="allow_download"):
        load_teacher("bert-base-uncased")
    with pytest.raises(ValueError, match="problem_type"):
        load_teacher(tiny_teacher, problem_type="multi_label_classification")


def _ft(tiny_teacher, glue, out, **kw):
    args = dict(glue_dir=glue, teacher_path=tiny_teacher, epochs=2, lr=1e-3, batch_size=8, max_length=16,
                seed=7, progress=False, save_state_every=2)
    args.update(kw)
    return finetune_teacher("sst2", out, **args)


def test_finetune_writes_loadable_hf_dir_and_metrics(tiny_teacher, tmp_path):
    glue = _sst2_fixture(tmp_path / "glue")
    out = tmp_path / "teacher_sst2"
    res = _ft(tiny_teacher, glue, out, eval_every=3)
    assert res["completed"] and res["global_step"] == 10 and res["epochs_done"] == 2
    metrics = json.loads((out / "teacher_metrics.json").read_text())
    assert metrics["task"] == "sst2" and metrics["dev_n"] == 16 and metrics["train_n"] == 40
    assert 0.0 <= metrics["dev"]["accuracy"] <= 1.0
    assert metrics["train_wall_s"] > 0 and metrics["train_sentences_per_s"] > 0
    steps = [h["step"] for h in metrics["history"]]
    assert steps == [3, 5, 6, 9, 10]  # every 3 steps + each epoch end
    best = max(h["accuracy"] for h in metrics["history"])
    assert metrics["dev"]["accuracy"] == best
    assert (out / "config.json").is_file() and (out / "training_state" / "state.safetensors").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dirs left
    model, tok = load_teacher(out, num_labels=None)
    assert model.config.num_labels == 2 and model.config.id2label == {0: "0", 1: "1"}
    ev = evaluate_teacher(model, tok, "sst2", "dev", glue, max_length=16)
    assert ev["n"] == 16 and ev["metrics"]["accuracy"] == pytest.approx(metrics["dev"]["accuracy"])
    assert set(ev) == {"metrics", "n", "wall_s", "sentences_per_s"}
    with pytest.raises(FileExistsError, match="resume"):
        _ft(tiny_teacher, glue, out)


def test_fractional_epochs_stop_mid_epoch(tiny_teacher, tmp_path):
    glue = _sst2_fixture(tmp_path / "glue")  # 40 sentences, batch 8: 5 steps per epoch
    res = _ft(tiny_teacher, glue, tmp_path / "t", epochs=1.5)
    assert res["completed"] and res["global_step"] == res["total_steps"] == 8
    assert [h["step"] for h in res["history"]] == [5, 8]  # epoch end + the stop
    again = _ft(tiny_teacher, glue, tmp_path / "t", epochs=1.5, resume=True)
    assert again["global_step"] == 8 and again["completed"]


def test_resume_matches_uninterrupted_run(tiny_teacher, tmp_path):
    glue = _sst2_fixture(tmp_path / "glue")
    full = _ft(tiny_teacher, glue, tmp_path / "full")
    part = _ft(tiny_teacher, glue, tmp_path / "part", stop_after_steps=3)
    assert not part["completed"] and part["global_step"] == 3
    # a stopped run cannot be silently restarted with other settings
    with pytest.raises(ValueError, match="lr"):
        _ft(tiny_teacher, glue, tmp_path / "part", resume=True, lr=5e-4)
    resumed = _ft(tiny_teacher, glue, tmp_path / "part", resume=True)
    assert resumed["completed"] and resumed["global_step"] == full["global_step"] == 10
    assert resumed["history"] == full["history"] and resumed["dev"] == full["dev"]
    from training.safe_state import load_state

    sa = load_state(tmp_path / "full" / "training_state" / "state.safetensors")
    sb = load_state(tmp_path / "part" / "training_state" / "state.safetensors")
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # resuming a completed run is a no-op returning its summary
    again = _ft(tiny_teacher, glue, tmp_path / "part", resume=True)
    assert again["global_step"] == 10 and again["completed"]


def test_default_teacher_loads_offline():
    path = default_teacher_path()
    assert (path / "config.json").is_file()
    model, tok = load_teacher()
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert model.config.num_attention_heads == 12 and tok.vocab_size == 30522
    out = teacher_outputs(model, _batch(tok, ["a charming journey .", "bleak"]))
    assert len(out.hidden_states) == 7 and out.attention_scores[0].shape[:2] == (2, 12)



def test_resume_with_other_examples_is_refused(tiny_teacher, tmp_path):
    """Examples passed in (custom files) are identified by content: a resume with others is refused."""
    from training.readers import load_glue

    glue = _sst2_fixture(tmp_path / "glue")
    train, dev = load_glue("sst2", "train", glue), load_glue("sst2", "dev", glue)
    out = tmp_path / "custom"
    part = _ft(tiny_teacher, glue, out, stop_after_steps=2, train_examples=train, eval_examples=dev)
    assert not part["completed"]
    with pytest.raises(ValueError, match="train_data_sha256"):
        _ft(tiny_teacher, glue, out, resume=True, train_examples=train[1:], eval_examples=dev)
    resumed = _ft(tiny_teacher, glue, out, resume=True, train_examples=train, eval_examples=dev)
    assert resumed["completed"]
