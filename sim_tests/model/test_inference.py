"""Batch-parallel inference (lava_spikingbert.model.inference): same logits as one batch at a time."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import tiny_batch, tiny_model

from lava_spikingbert.model.inference import intra_op_threads, map_batches, predict_batches


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


def _sharded_eval(rank: int, world: int, store: str, result_dir: str) -> None:
    import json

    from training.common import DistEnv
    from training.tasks import get_task
    from training.distill import evaluate_student

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        r = evaluate_student(_regressor(), _dataset(), get_task("stsb"), t_conv=8, batch_size=4,
                             dist=DistEnv(rank=rank, world_size=world))
        with open(f"{result_dir}/rank{rank}.json", "w") as f:
            json.dump(r["predictions"], f)
    finally:
        torch.distributed.destroy_process_group()


def _regressor():  # regression: the "predictions" are the raw outputs, so any lost shard shows
    return tiny_model(num_labels=1, problem_type="regression")


def _dataset():
    from training.batching import EncodedDataset

    g = torch.Generator().manual_seed(3)
    ids = [[1] + torch.randint(2, 64, (int(n),), generator=g).tolist() + [2]
           for n in torch.randint(3, 9, (20,), generator=g)]
    return EncodedDataset(input_ids=ids, token_type_ids=[[0] * len(x) for x in ids], labels=[float(i % 5) for i in range(20)],
                         is_regression=True)


def test_sharded_evaluation_gives_every_rank_all_predictions(tmp_path):
    """Under torchrun each rank simulates a share of the dev batches; all ranks end with the same
    predictions as one process evaluating everything."""
    import json

    import torch.multiprocessing as mp

    from training.tasks import get_task
    from training.distill import evaluate_student

    mp.spawn(_sharded_eval, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    alone = evaluate_student(_regressor(), _dataset(), get_task("stsb"), t_conv=8, batch_size=4, workers=1)
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert per_rank[0] == per_rank[1] == alone["predictions"]
    assert len(set(alone["predictions"])) > 10 and 0.0 not in alone["predictions"]
