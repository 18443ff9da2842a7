"""Shared fixtures: tiny spiking BERT models whose populations are actually active."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from hw_export.export import export_model
from lava_spikingbert.model.config import SpikingBertConfig
from lava_spikingbert.model.encoder import SpikingBert

QUANT = ("int8", "ternary", "binary")
TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_length=12, max_position_embeddings=16, t_conv=16, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)


def make_active(model: SpikingBert, gain: float = 1.5, seed: int = 0) -> SpikingBert:
    """Re-draw synapses at ~gain/sqrt(fan_in) with small positive biases so that every population
    fires at a moderate rate (the 0.02 BERT init leaves most of a tiny model silent)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, lin in model.synapses():
            fan_in = lin.weight.shape[1]
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * gain / fan_in ** 0.5)
            if lin.bias is not None:
                lin.bias.copy_(0.2 + 0.1 * torch.randn(lin.bias.shape, generator=g))
        for emb in (model.embeddings.word_embeddings, model.embeddings.position_embeddings,
                    model.embeddings.token_type_embeddings):
            emb.weight.copy_(torch.randn(emb.weight.shape, generator=g))
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=g))
    return model


def tiny_model(seed: int = 0, **overrides) -> SpikingBert:
    torch.manual_seed(seed)
    model = SpikingBert(SpikingBertConfig(**{**TINY, **overrides}))
    return make_active(model, seed=seed).eval()


def tiny_batch(batch: int = 3, length: int = 10, seed: int = 1, vocab: int = 64):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for b in range(1, batch):  # ragged lengths: later rows are padded
        n = max(3, length - 2 * b)
        ids[b, n:] = 0
        mask[b, n:] = 0
    return ids, mask


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def batch():
    return tiny_batch()


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """A tiny checkpoint and its model files of every precision."""
    d = tmp_path_factory.mktemp("export")
    model = tiny_model()
    model.save_pretrained(d / "tiny")
    out = {}
    for prec in ("fp32", *QUANT):
        export_model(d / "tiny", prec, d / f"tiny_{prec}.h5")
        out[prec] = d / f"tiny_{prec}.h5"
    return d, out
