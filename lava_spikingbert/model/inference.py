"""Batch-parallel inference: several batches simulated at once, one per thread.

The simulation of a batch of short sentences is a chain of modest matrix products and many small
element-wise steps (the membrane loop, LayerNorm, GELU, the spike counts). Spread over the cores
inside every op (intra-op threads), those small ops scale poorly and leave cores idle part of
the time. Giving each core a batch of its own instead
(worker threads that run the torch ops with one intra-op thread each; torch releases the GIL
inside its ops) keeps both cores busy. docs/RESULTS.md (issue 3) has the measured gain.

Every batch is computed exactly as ``SpikingBert.predict_logits`` computes it with one intra-op
thread, so the logits do not depend on the number of workers.
"""

from __future__ import annotations

from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Sequence

import torch

Batch = Sequence[torch.Tensor]  # (input_ids, attention_mask, token_type_ids)


def right_pad(input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]] | None = None, *,
              pad_id: int = 0, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, token_type_ids) long tensors of token sequences, right-padded
    with ``pad_id`` (type 0, mask 0) to ``length`` (default: the longest sequence)."""
    width = max(len(x) for x in input_ids) if length is None else int(length)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(input_ids), width, dtype=torch.long)
    types = torch.zeros(len(input_ids), width, dtype=torch.long)
    for r, seq in enumerate(input_ids):
        ids[r, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[r, : len(seq)] = 1
        if token_type_ids is not None:
            types[r, : len(seq)] = torch.as_tensor(token_type_ids[r], dtype=torch.long)
    return ids, mask, types


@contextmanager
def intra_op_threads(n: int):
    """Run the block with ``n`` intra-op threads (process-wide in torch), then restore the count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def map_batches(fn: Callable[[Batch], torch.Tensor], batches: Sequence[Batch], *, workers: int | None = None,
                on_done: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """``[fn(b) for b in batches]`` with ``workers`` threads of one intra-op thread each.

    ``workers`` defaults to torch's intra-op thread count (one per core). The batches are handed
    out largest first so that the workers finish together; ``workers=1`` runs them one after
    another with the current intra-op threads. ``on_done(i)`` is called (from the calling thread)
    as batch ``i`` finishes, e.g. to advance a progress bar. A worker's error is raised here.
    """
    workers = torch.get_num_threads() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(batches) <= 1:
        results = []
        for i, batch in enumerate(batches):
            results.append(fn(batch))
            if on_done is not None:
                on_done(i)
        return results

    order = sorted(range(len(batches)), key=lambda i: -batches[i][0].numel())
    results: list[torch.Tensor | None] = [None] * len(batches)
    with intra_op_threads(1):
        pool = ThreadPoolExecutor(max_workers=min(workers, len(batches)), thread_name_prefix="snn-infer")
        try:
            pending = {pool.submit(fn, batches[i]): i for i in order}
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    i = pending.pop(future)
                    results[i] = future.result()
                    if on_done is not None:
                        on_done(i)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return results  # type: ignore[return-value]


def predict_batches(model, batches: Sequence[Batch], t_conv: int | None = None, *, workers: int | None = None,
                    integer_synapses: bool = True,
                    on_done: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """``model.predict_logits`` of every batch ``(input_ids, attention_mask, token_type_ids)``, in
    the order given, ``workers`` batches at a time (see ``map_batches``)."""
    T = int(t_conv if t_conv is not None else model.config.t_conv)
    return [r[T] for r in predict_batches_at(model, batches, (T,), workers=workers,
                                              integer_synapses=integer_synapses, on_done=on_done)]


def predict_batches_at(model, batches: Sequence[Batch], steps: Sequence[int], *, workers: int | None = None,
                       integer_synapses: bool = True,
                       on_done: Callable[[int], None] | None = None) -> list[dict[int, torch.Tensor]]:
    """``model.predict_logits_at`` of every batch: the logits at every step count in ``steps``,
    from one simulation per batch of the longest."""
    return map_batches(lambda b: model.predict_logits_at(*b, steps, integer_synapses=integer_synapses),
                       batches, workers=workers, on_done=on_done)
