"""Packing several sentences along the token axis of one window.

A token's output depends only on input positions within the graph's receptive field
``(left, right) = spec.receptive_field``. Sentences therefore cannot interact when
consecutive sentences are separated by ``gap = max(left, right)`` zero-input positions, and
a sentence sees exactly the context it would see alone when the row also keeps ``left``
free positions before its first sentence and ``right`` after its last (the token-axis edge
acts like zero padding of the synapses, not like zero-input neurons, so it must stay out of
reach). The torch model must use the same convention: ``left`` zero-input positions before
each sentence and at least ``right`` after it.
"""
import typing as ty

import numpy as np

Placement = ty.Tuple[int, int, int]  # (sentence index, row, start position)


def pack(lengths: ty.Sequence[int], tokens: int, reach: ty.Tuple[int, int],
         per_row: ty.Optional[int] = None) -> ty.Tuple[ty.List[Placement], int, int]:
    """First-fit-decreasing packing of sentences into rows of ``tokens`` positions.

    Sentences longer than ``tokens - left - right`` are truncated to that length.
    ``per_row=1`` gives one sentence per window. Returns (placements, rows, truncated).
    """
    left, right = reach
    gap = max(left, right)
    room = tokens - left - right
    if room <= 0:
        raise ValueError(f'token axis {tokens} is shorter than the margins {reach}')
    used: ty.List[int] = []  # end (exclusive) of the last sentence in each row
    count: ty.List[int] = []
    placements = []
    truncated = 0
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = min(lengths[i], room)
        truncated += lengths[i] > room
        for row, end in enumerate(used):
            start = end + gap
            if start + n + right <= tokens and (per_row is None or count[row] < per_row):
                break
        else:
            row, start = len(used), left
            used.append(0)
            count.append(0)
        used[row] = start + n
        count[row] += 1
        placements.append((i, row, start))
    return placements, len(used), truncated


def layout_inputs(embeddings: ty.Sequence[np.ndarray], placements: ty.Sequence[Placement],
                  rows: int, tokens: int) -> np.ndarray:
    """(rows, tokens, channels) input currents: each sentence's (n, C) rows at its place."""
    channels = embeddings[0].shape[1]
    out = np.zeros((rows, tokens, channels), dtype=np.asarray(embeddings[0]).dtype)
    for i, row, start in placements:
        e = embeddings[i][:tokens - start]
        out[row, start:start + len(e)] = e
    return out
