"""Batch-parallel inference (lava_spikingbert.inference): same logits as one batch at a time."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import tiny_batch, tiny_model

from lava_spikingbert.inference import intra_op_threads, map_batches, predict_batches


def _batches(n: int = 6):
    out = []
    for k in range(n):  # different lengths and contents: the workers finish out of order
        ids, mask = tiny_batch(batch=2 + k % 3, length=6 + k, seed=10 + k)
        out.append((ids, mask, torch.zeros_like(ids)))
    return out


@pytest.mark.parametrize("weights", ["fp32", "int8", "ternary"])
def test_workers_give_the_logits_of_one_batch_at_a_time(weights):
    """Each worker runs predict_logits with one intra-op thread; the logits equal those of the
    sequential run with one thread bit for bit (int8/ternary: the integer synapse path, whose
    per-thread state must not leak between the concurrent simulations)."""
    model = tiny_model(weights=weights)
    batches = _batches()
    with intra_op_threads(1):
        expected = [model.predict_logits(*b) for b in batches]
    finished = []
    got = predict_batches(model, batches, workers=3, on_done=finished.append)
    assert sorted(finished) == list(range(len(batches)))
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    assert not any(lin.binary_input for _, lin in model.synapses())
    assert len({tuple(e.shape) for e in expected}) > 1  # the batches really differ


def test_worker_threads_use_one_intra_op_thread_and_restore_the_count():
    seen = []
    before = torch.get_num_threads()
    map_batches(lambda b: seen.append((threading.current_thread().name, torch.get_num_threads())) or b[0],
                _batches(4), workers=2)
    assert {n for _, n in seen} == {1}
    assert all(name.startswith("snn-infer") for name, _ in seen)
    assert torch.get_num_threads() == before


def test_worker_error_is_raised_and_bad_workers_rejected():
    def boom(b):
        if b[0].shape[1] == 8:
            raise RuntimeError("bad batch")
        return b[0]

    with pytest.raises(RuntimeError, match="bad batch"):
        map_batches(boom, _batches(4), workers=2)
    with pytest.raises(ValueError, match="workers"):
        map_batches(lambda b: b[0], _batches(2), workers=0)
