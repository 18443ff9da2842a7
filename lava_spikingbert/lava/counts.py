"""Per-sample spike counts, packed so that the host reads them with few ``Var.get`` elements.

Lava 0.10's ``Var.get`` sends one float64 per message, so its cost grows with the number of
elements read, and a population's count history (samples x tokens x width) is stored *packed*:
each count needs ``bits = max_count.bit_length()`` bits (the counts of a window of ``T`` steps
are <= T), and ``52 // bits`` of them share one float64 word (integers below 2**53 are exact).
With T=16 that is 10 counts per word, a tenth of the elements to read.

Pure numpy, used both inside the ProcessModels (``pack``) and on the host (``unpack``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MANTISSA_BITS = 52  # float64 represents every integer below 2**53 exactly


@dataclass(frozen=True)
class CountLayout:
    """How a population's count history is laid out in its ``counts`` Var.

    ``tokens``: the recorded token positions (empty: record nothing); ``width``: neurons per token;
    ``max_count``: the largest count a window can produce (its length T); ``min_count``: the
    smallest (0, or ``-T`` for signed on/off units, whose count is on minus off spikes). A count
    is stored as ``count - min_count``.
    """

    n_samples: int
    tokens: tuple[int, ...]
    width: int
    max_count: int
    packed: bool = True
    min_count: int = 0

    def __post_init__(self) -> None:
        if self.n_samples <= 0 or self.width <= 0 or self.max_count <= 0 or self.min_count > 0:
            raise ValueError(f"CountLayout needs positive n_samples/width/max_count and min_count <= 0, got {self}")
        if self.bits > _MANTISSA_BITS:
            raise ValueError(f"count range [{self.min_count}, {self.max_count}] too large to count in float64")

    @property
    def recording(self) -> bool:
        return len(self.tokens) > 0

    @property
    def bits(self) -> int:
        return int(self.max_count - self.min_count).bit_length()

    @property
    def per_word(self) -> int:
        return max(1, _MANTISSA_BITS // self.bits) if self.packed else 1

    @property
    def n_values(self) -> int:
        return len(self.tokens) * self.width

    @property
    def n_words(self) -> int:
        return -(-self.n_values // self.per_word)

    @property
    def var_shape(self) -> tuple[int, int]:
        """Shape of the ``counts`` Var (a 1x1 dummy when nothing is recorded)."""
        return (self.n_samples, self.n_words) if self.recording else (1, 1)

    def pack(self, counts: np.ndarray) -> np.ndarray:
        """(len(tokens), width) counts of one window -> (n_words,) float64 words."""
        flat = np.zeros(self.n_words * self.per_word, dtype=np.float64)
        flat[:self.n_values] = np.asarray(counts, dtype=np.float64).ravel() - self.min_count
        weights = np.ldexp(1.0, self.bits * np.arange(self.per_word))
        return flat.reshape(self.n_words, self.per_word) @ weights  # exact: all sums < 2**52

    def unpack(self, words: np.ndarray) -> np.ndarray:
        """(n_samples, n_words) words from ``Var.get`` -> (n_samples, len(tokens), width) int64 counts."""
        if not self.recording:
            raise ValueError("this population records no counts")
        words = np.asarray(words, dtype=np.float64).reshape(self.n_samples, self.n_words)
        w = np.rint(words).astype(np.int64)
        if np.any(w < 0) or np.any(np.abs(words - w) > 0):
            raise ValueError("count words are not non-negative integers (corrupted readout?)")
        shifts = (self.bits * np.arange(self.per_word)).astype(np.int64)
        vals = (w[:, :, None] >> shifts) & ((1 << self.bits) - 1)
        vals = vals.reshape(self.n_samples, -1)[:, :self.n_values] + self.min_count
        return vals.reshape(self.n_samples, len(self.tokens), self.width)


class WindowCounter:
    """Counts spikes of the recorded tokens per window and packs each finished window into
    ``counts[k]``. Shared by the neuron models and ``SpikeCounter`` (held by the model, not a
    ProcessModel itself).

    ``index``: optional (n_samples, R) per-window token positions (-1: empty slot, counts 0), for
    windows that hold several packed sentences whose [CLS] tokens sit at different positions; the
    layout's ``tokens`` are then the slots ``0..R-1``.
    """

    def __init__(self, layout: CountLayout, interval: int, offset: int, index: np.ndarray | None = None) -> None:
        self.layout = layout
        self.interval = int(interval)
        self.offset = int(offset)
        self.all_tokens = layout.tokens == tuple(range(len(layout.tokens)))
        self.current = np.zeros((len(layout.tokens), layout.width), dtype=np.float64)
        self.index = None
        if index is not None:
            self.index = check_record_index(index, layout.n_samples, None)
            if self.index.shape[1] != len(layout.tokens):
                raise ValueError(f"record index has {self.index.shape[1]} slots, layout {len(layout.tokens)}")

    def window(self, t: int) -> tuple[int, int]:
        """(sample k, phase j) of 0-based step t; k < 0 before the first window."""
        if t < self.offset:
            return -1, 0
        return divmod(t - self.offset, self.interval)

    def update(self, t: int, spikes: np.ndarray, counts: np.ndarray) -> None:
        if not self.layout.recording:
            return
        k, j = self.window(t)
        if k < 0 or k >= self.layout.n_samples:
            return
        if j == 0:
            self.current[:] = 0
        if self.index is not None:
            row = self.index[k]
            self.current += spikes[np.maximum(row, 0)] * (row >= 0)[:, None]
        elif self.all_tokens:
            self.current += spikes[:len(self.layout.tokens)]
        else:
            self.current += spikes[list(self.layout.tokens)]
        if j == self.interval - 1:
            counts[k] = self.layout.pack(self.current)


def check_record_index(index, n_samples: int, length: int | None) -> np.ndarray:
    """Validate a per-window token index: int array (n_samples, R), entries in [-1, length)."""
    idx = np.asarray(index)
    if idx.ndim != 2 or idx.shape[0] != n_samples or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"record index must be an int array (n_samples={n_samples}, R), got {idx.dtype} {idx.shape}")
    if idx.size and (idx.min() < -1 or (length is not None and idx.max() >= length)):
        raise ValueError(f"record index entries must lie in [-1, {length})")
    return idx.astype(np.int64)


def resolve_tokens(record, length: int) -> tuple[int, ...]:
    """``record``: True/"all" -> every token, False/None/"none" -> nothing, "cls" -> (0,),
    or an iterable of token positions."""
    if record is True or record == "all":
        return tuple(range(length))
    if record is False or record is None or record == "none":
        return ()
    if record == "cls":
        return (0,)
    tokens = tuple(int(t) for t in record)
    for t in tokens:
        if not 0 <= t < length:
            raise ValueError(f"recorded token {t} outside [0, {length})")
    return tokens
