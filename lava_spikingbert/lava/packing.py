"""Pack several sentences side by side into one window of ``window_tokens`` tokens.

Every operation of the encoder is per token except attention, so sentences that share a window
stay independent when attention is restricted to a block-diagonal query x key mask (keys of other
sentences get the same additive -10000 as padding: probability exactly 0 in float32). Packing
removes padding waste and divides the number of simulated steps (and with it the per-process
per-step overhead of the simulator, which dominates at small widths) by the sentences per window.
Results per sentence equal the unpacked run up to float32 summation order in the softmax / the
attention matmul (exact zeros added in other places).

Sentences are placed first-fit-decreasing by length; only their real tokens are packed (right
padding is dropped); unused tokens at the end of a window get zero input and attend nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PackedBatch:
    emb: np.ndarray        # (W, window_tokens, H) embedding currents (the input's float dtype)
    allowed: np.ndarray    # (W, window_tokens, window_tokens) uint8: query may attend key
    cls_index: np.ndarray  # (W, S) position of each slot's [CLS] in its window, -1 = empty slot
    window: np.ndarray     # (N,) window of each sentence
    slot: np.ndarray       # (N,) slot of each sentence in its window
    start: np.ndarray      # (N,) first token of each sentence in its window
    length: np.ndarray     # (N,) real tokens of each sentence

    @property
    def n_windows(self) -> int:
        return self.emb.shape[0]

    def select(self, windows: np.ndarray) -> tuple["PackedBatch", np.ndarray]:
        """The sub-batch of the given windows (window numbers renumbered) and the indices of the
        sentences it holds (its per-sentence fields are in that order)."""
        windows = np.asarray(windows)
        remap = -np.ones(self.n_windows, dtype=np.int64)
        remap[windows] = np.arange(len(windows))
        keep = np.flatnonzero(remap[self.window] >= 0)
        return PackedBatch(emb=self.emb[windows], allowed=self.allowed[windows], cls_index=self.cls_index[windows],
                          window=remap[self.window[keep]], slot=self.slot[keep], start=self.start[keep],
                           length=self.length[keep]), keep

    def chunks(self, max_windows: int):
        """``select`` over consecutive groups of at most ``max_windows`` windows (one Lava run each)."""
        for first in range(0, self.n_windows, max_windows):
            yield self.select(np.arange(first, min(first + max_windows, self.n_windows)))


def pack_sentences(emb_current: np.ndarray, attention_mask: np.ndarray, window_tokens: int) -> PackedBatch:
    """(N, L, H) currents + (N, L) right-padded 0/1 masks -> windows of ``window_tokens`` tokens."""
    emb = np.asarray(emb_current)
    # float64 stays float64: the fixed_pt input is an integer grid that the builder keeps in float64
    emb = emb if emb.dtype in (np.float32, np.float64) else emb.astype(np.float32)
    mask = np.asarray(attention_mask)
    if emb.ndim != 3 or mask.shape != emb.shape[:2]:
        raise ValueError(f"emb_current (N, L, H) and attention_mask (N, L) expected, got {emb.shape}, {mask.shape}")
    n, _, h = emb.shape
    lengths = mask.sum(1).astype(np.int64)
    if n == 0 or lengths.min() <= 0:
        raise ValueError("every sentence needs at least one token")
    if np.any(mask[np.arange(mask.shape[1])[None, :] >= lengths[:, None]] != 0):
        raise ValueError("attention_mask must be right-padded (ones then zeros)")
    if lengths.max() > window_tokens:
        raise ValueError(f"a sentence of {lengths.max()} tokens does not fit a window of {window_tokens}")
    free: list[int] = []
    members: list[list[int]] = []
    window = np.zeros(n, dtype=np.int64)
    for i in np.argsort(-lengths, kind="stable"):
        for w, room in enumerate(free):
            if room >= lengths[i]:
                break
        else:
            w = len(free)
            free.append(window_tokens)
            members.append([])
        free[w] -= lengths[i]
        members[w].append(int(i))
        window[i] = w
    n_win, n_slots = len(members), max(len(m) for m in members)
    out_emb = np.zeros((n_win, window_tokens, h), dtype=emb.dtype)
    allowed = np.zeros((n_win, window_tokens, window_tokens), dtype=np.uint8)
    cls_index = -np.ones((n_win, n_slots), dtype=np.int64)
    slot = np.zeros(n, dtype=np.int64)
    start = np.zeros(n, dtype=np.int64)
    for w, sentences in enumerate(members):
        pos = 0
        for s, i in enumerate(sorted(sentences)):
            m = lengths[i]
            out_emb[w, pos:pos + m] = emb[i, :m]
            allowed[w, pos:pos + m, pos:pos + m] = 1
            cls_index[w, s] = pos
            slot[i], start[i] = s, pos
            pos += m
    return PackedBatch(emb=out_emb, allowed=allowed, cls_index=cls_index, window=window, slot=slot, start=start,
                       length=lengths)


def pack_with_margins(lengths: np.ndarray, row_tokens: int, margin: int) -> tuple[np.ndarray, np.ndarray, int]:
    """First-fit-decreasing packing of sentences along the token axis of rows of ``row_tokens``
    positions for a network whose output reaches ``margin`` positions to each side (the loihi
    profile's token mixing): ``margin`` zero-input positions before the first sentence of a row,
    between consecutive sentences and after the last one. Returns (row, start) per sentence and the
    number of rows."""
    lengths = np.asarray(lengths, np.int64)
    if lengths.size == 0 or lengths.min() <= 0:
        raise ValueError("every sentence needs at least one token")
    if lengths.max() + 2 * margin > row_tokens:
        raise ValueError(f"a sentence of {lengths.max()} tokens plus margins 2 x {margin} does not fit a row of "
                         f"{row_tokens} positions")
    ends: list[int] = []  # end (exclusive) of the last sentence in each row
    row = np.zeros(len(lengths), np.int64)
    start = np.zeros(len(lengths), np.int64)
    for i in np.argsort(-lengths, kind="stable"):
        n = int(lengths[i])
        for r, end in enumerate(ends):
            if end + margin + n + margin <= row_tokens:
                break
        else:
            r, end = len(ends), 0
            ends.append(0)
        start[i] = end + margin
        row[i] = r
        ends[r] = int(start[i]) + n
    return row, start, len(ends)
