"""Shared training fixtures: a tiny BERT teacher, a small SST-2-like GLUE directory, new students."""

from __future__ import annotations

import random

import pytest
import torch

from lava_spikingbert.model.encoder import SpikingBert
from training.batching import encode
from training.distill import init_student_from_teacher, student_config_from_teacher
from training.readers import load_glue
from training.tasks import get_task


POS = "good great wonderful charming moving funny brilliant lovely".split()
NEG = "bad awful boring dull tedious flat clumsy weak".split()
FILL = "the film movie story plot cast is a and of it this".split()


def _sentences(n: int, seed: int):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILL) for _ in range(rng.randint(2, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(POS if label else NEG))
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    d = root / "SST-2"
    d.mkdir()
    for split, n, seed in (("train", 48, 0), ("dev", 16, 1)):
        lines = ["sentence\tlabel"] + [f"{s}\t{lab}" for s, lab in _sentences(n, seed)]
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory):
    """A random 2-layer, 32-wide BERT with the real (local) bert-base-uncased vocabulary."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from training.teacher import default_teacher_path

    path = tmp_path_factory.mktemp("tiny_teacher")
    tok = AutoTokenizer.from_pretrained(default_teacher_path(), local_files_only=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def setup(tiny_teacher_dir, glue_dir):
    from training.teacher import load_teacher

    teacher, tok = load_teacher(tiny_teacher_dir, num_labels=2)
    spec = get_task("sst2")
    train = encode(load_glue(spec, "train", glue_dir), tok, 16)
    dev = encode(load_glue(spec, "dev", glue_dir), tok, 16)
    return teacher, tok, spec, train, dev


def new_student(teacher, dropout=0.1):
    torch.manual_seed(0)
    cfg = student_config_from_teacher(teacher.config, num_layers=2, t_conv=4, max_length=16,
                                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    student = SpikingBert(cfg)
    init_student_from_teacher(student, teacher, layers=True)
    return student


# ------------------------------------------------------------------------------- losses and init
