"""Tokenisation and length-bucketed batching: from examples to padded torch batches.

:func:`encode` tokenises without padding; :func:`length_bucketed_batches` pads each batch only to
its longest sentence, deterministic per (seed, epoch), shardable for DDP (disjoint shards, equal
numbers of batches per rank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from lava_spikingbert.model.inference import right_pad
from training.readers import Example


# --------------------------------------------------------------------------------------------------
# Tokenisation and batching
# --------------------------------------------------------------------------------------------------


@dataclass
class EncodedDataset:
    """Token ids without padding (one list per example), in the order of the examples."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[int | float] | None  # None when the examples carry no labels
    is_regression: bool = False
    max_length: int = 0
    guids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def holds_pairs(self) -> bool:
        """Whether any example is a sentence pair (a token of segment 1)."""
        return any(any(types) for types in self.token_type_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(examples: Sequence[Example], tokenizer, max_length: int, *, chunk_size: int = 4096) -> EncodedDataset:
    """Tokenise (with [CLS]/[SEP]; pairs truncated longest-first) to at most ``max_length`` tokens."""
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS] x [SEP] needs 3 tokens), got {max_length}")
    n = len(examples)
    ids: list[list[int] | None] = [None] * n
    tts: list[list[int] | None] = [None] * n
    singles = [i for i, ex in enumerate(examples) if ex.text_b is None]
    pairs = [i for i, ex in enumerate(examples) if ex.text_b is not None]
    for group, is_pair in ((singles, False), (pairs, True)):
        for start in range(0, len(group), chunk_size):
            idx = group[start : start + chunk_size]
            a = [examples[i].text_a for i in idx]
            b = [examples[i].text_b for i in idx] if is_pair else None
            enc = tokenizer(
                a,
                b,
                truncation=True,
                max_length=max_length,
                padding=False,
                return_token_type_ids=True,
                return_attention_mask=False,
            )
            for j, i in enumerate(idx):
                ids[i] = list(enc["input_ids"][j])
                tts[i] = list(enc["token_type_ids"][j])
    labels = [ex.label for ex in examples]
    has = [lab is not None for lab in labels]
    if any(has) and not all(has):
        missing = [examples[i].guid for i, h in enumerate(has) if not h][:5]
        raise DataError(f"some examples have labels and some do not (unlabelled e.g. {missing})")
    is_reg = bool(any(has)) and any(isinstance(lab, float) for lab in labels)
    return EncodedDataset(
        input_ids=ids,  # type: ignore[arg-type]
        token_type_ids=tts,  # type: ignore[arg-type]
        labels=labels if all(has) and n else None,  # type: ignore[arg-type]
        is_regression=is_reg,
        max_length=max_length,
        guids=[ex.guid for ex in examples],
    )


class LengthBucketedBatches:
    """Iterable of padded batches (see :func:`length_bucketed_batches`); ``len()`` = batches per rank."""

    def __init__(
        self,
        encoded: EncodedDataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        bucket_size_multiplier: int = 50,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        pad_id: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if bucket_size_multiplier < 1:
            raise ValueError(f"bucket_size_multiplier must be >= 1, got {bucket_size_multiplier}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.encoded = encoded
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.bucket_size_multiplier = bucket_size_multiplier
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.pad_id = pad_id
        self._plan = self._make_plan()

    # The plan: a list of index arrays (one per batch) for this rank.
    def _make_plan(self) -> list[np.ndarray]:
        n = len(self.encoded)
        lengths = self.encoded.lengths
        bs, ws = self.batch_size, self.world_size
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(n)
        else:
            order = np.argsort(lengths, kind="stable")
        if self.drop_last:
            # Equal-size shards of full batches only (training): drop the remainder of this epoch's order.
            per_rank = (n // ws) // bs * bs
            order = order[: per_rank * ws]
        shard = order[self.rank :: ws]  # disjoint; sizes differ by at most one
        max_shard = -(-len(order) // ws)
        n_batches = -(-max_shard // bs)
        if self.shuffle:
            # Sort by length inside buckets of bs * multiplier examples, cut into batches, shuffle batches.
            bucket = bs * self.bucket_size_multiplier
            batches: list[np.ndarray] = []
            for start in range(0, len(shard), bucket):
                chunk = shard[start : start + bucket]
                chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
                batches.extend(chunk[i : i + bs] for i in range(0, len(chunk), bs))
            brng = np.random.default_rng([self.seed, self.epoch, 1])
            perm = brng.permutation(len(batches))
            batches = [batches[i] for i in perm]
        else:
            batches = [shard[i : i + bs] for i in range(0, len(shard), bs)]
        # Equalise the number of batches across ranks (a short shard may need one more, smaller batch).
        while len(batches) < n_batches:
            j = max(range(len(batches)), key=lambda k: len(batches[k]), default=None)
            if j is None or len(batches[j]) < 2:
                raise ValueError(
                    f"cannot give every rank {n_batches} non-empty batches: {n} examples, world_size={ws}, "
                    f"batch_size={bs}; use drop_last=True or a larger dataset / smaller world"
                )
            half = len(batches[j]) // 2
            batches[j : j + 1] = [batches[j][:half], batches[j][half:]]
        return batches

    def __len__(self) -> int:
        return len(self._plan)

    @property
    def num_examples(self) -> int:
        return int(sum(len(b) for b in self._plan))

    def batch_indices(self) -> list[np.ndarray]:
        return [b.copy() for b in self._plan]

    def collate(self, idx: np.ndarray) -> dict:
        enc = self.encoded
        input_ids, attention_mask, token_type_ids = right_pad(
            [enc.input_ids[i] for i in idx], [enc.token_type_ids[i] for i in idx], pad_id=self.pad_id)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "index": torch.as_tensor(np.asarray(idx, dtype=np.int64)),
        }
        if enc.labels is not None:
            labs = [enc.labels[i] for i in idx]
            batch["labels"] = torch.tensor(labs, dtype=torch.float32 if enc.is_regression else torch.long)
        return batch

    def __iter__(self) -> Iterator[dict]:
        for idx in self._plan:
            yield self.collate(idx)


def length_bucketed_batches(encoded: EncodedDataset, batch_size: int, shuffle: bool, **options) -> LengthBucketedBatches:
    """Batches padded only to their longest sentence.

    ``shuffle=True`` (training): a permutation from ``(seed, epoch)``, sorted by length inside buckets
    of ``batch_size * bucket_size_multiplier`` examples, cut into batches, batch order shuffled.
    ``shuffle=False`` (evaluation): sorted by length, every example exactly once. With
    ``world_size > 1`` the ranks get disjoint strided shards of the same global order and the same
    number of batches (a short shard gets one batch split in two); ``drop_last=True`` instead keeps
    only full batches of equal-size shards. Each batch is a dict of long tensors ``input_ids``,
    ``attention_mask``, ``token_type_ids``, ``index`` (positions in ``encoded``) and ``labels`` (long,
    float for regression; absent for unlabelled data). The result is re-iterable and has ``len()``.
    """
    return LengthBucketedBatches(encoded, batch_size, shuffle, **options)


@dataclass(frozen=True)
class WordNeighbours:
    """For each token id of a WordPiece vocabulary: ``table`` (vocab x k, long), its k nearest whole
    words, or -1 in every column for a token that is not a whole word; ``continuation`` (vocab, bool),
    whether the token continues a word (``##...``)."""

    table: torch.Tensor
    continuation: torch.Tensor


def mask_inner_tokens(batch: dict, probability: float, mask_id: int, generator: torch.Generator, *,
                      replace: float = 0.0, neighbours: WordNeighbours | None = None) -> dict:
    """A copy of a right-padded ``batch`` in which each valid token other than a row's first and
    last ([CLS], [SEP]) is replaced by ``mask_id`` with ``probability``: perturbed sentences for
    distillation, which the teacher labels as it sees them (Tang et al. 2019's masking). With
    ``replace`` > 0, a further share ``replace`` of the inner tokens that are whole words (a
    ``neighbours.table`` row without -1, not followed by a ``##`` piece) becomes one of its k
    neighbours, drawn uniformly (Tang et al.'s replacement, with nearest neighbours in an embedding
    space instead of part-of-speech classes); the masking draws are the same with or without it."""
    if not (0.0 <= probability < 1.0 and 0.0 <= replace < 1.0 and probability + replace < 1.0):
        raise ValueError(f"masking and replacement probabilities must be >= 0 with a sum below 1, got "
                         f"{probability} and {replace}")
    ids, valid = batch["input_ids"], batch["attention_mask"].bool()
    positions = torch.arange(ids.shape[1])[None]
    inner = valid & (positions > 0) & (positions < valid.sum(-1, keepdim=True) - 1)
    draw = torch.rand(ids.shape, generator=generator)
    out = ids.masked_fill(inner & (draw < probability), mask_id)
    if replace:
        if neighbours is None:
            raise ValueError("replacement needs the neighbour table (word_neighbours)")
        choice = torch.randint(neighbours.table.shape[1], ids.shape, generator=generator)
        candidate = neighbours.table[ids, choice]
        followed_by_piece = torch.zeros_like(inner)
        followed_by_piece[:, :-1] = neighbours.continuation[ids[:, 1:]]
        hit = (inner & (draw >= probability) & (draw < probability + replace) & (candidate >= 0)
               & ~followed_by_piece)
        out = torch.where(hit, candidate, out)
    return {**batch, "input_ids": out}


# what joins two sentences in ``join_row_pairs``: nothing, a comma, or a conjunction (words, tokenised
# with the run's tokenizer)
JOIN_CONNECTORS = ("", ",", "and", "but")


def join_row_pairs(batch: dict, connectors: Sequence[Sequence[int]], generator: torch.Generator, *,
                   max_length: int, pad_id: int = 0) -> dict:
    """A batch of single sentences with its rows joined in pairs: with ``h = ceil(n / 2)`` of the ``n``
    rows, row ``i`` and row ``h + i`` become ``[CLS] a connector b [SEP]``, the connector drawn
    uniformly from ``connectors`` (token-id sequences, may be empty), and cut to ``max_length`` tokens
    by dropping the end of the second sentence (its [SEP] stays). An odd batch keeps its middle
    row alone. Longer, never-seen sentences for distillation, which the teacher labels as it sees
    them; the result carries no gold labels or dataset indices."""
    if not connectors:
        raise ValueError("join_row_pairs needs at least one connector (an empty one joins directly)")
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3, got {max_length}")
    if bool(batch["token_type_ids"].any()):
        raise ValueError("join_row_pairs joins single sentences; this batch holds sentence pairs")
    lengths = batch["attention_mask"].sum(-1).tolist()
    rows = [batch["input_ids"][r, :n].tolist() for r, n in enumerate(lengths)]
    half = (len(rows) + 1) // 2
    choice = torch.randint(len(connectors), (len(rows) - half,), generator=generator).tolist()
    joined = []
    for i in range(half):
        if half + i >= len(rows):
            joined.append(rows[i])
            continue
        first, second = rows[i], rows[half + i]
        tokens = first[:-1] + list(connectors[choice[i]]) + second[1:]
        joined.append(tokens if len(tokens) <= max_length else tokens[:max_length - 1] + tokens[-1:])
    input_ids, attention_mask, token_type_ids = right_pad(joined, pad_id=pad_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def word_neighbours(tokens: Sequence[str], embeddings: torch.Tensor, k: int = 8, *,
                    chunk: int = 2048) -> WordNeighbours:
    """The ``k`` nearest other whole words (alphabetic, two letters or more, not a ``##`` piece) of
    each whole-word token by cosine similarity of ``embeddings`` (vocab x d, e.g. the teacher's input
    embeddings); -1 rows for every other token (special, unused, punctuation, pieces)."""
    if len(tokens) != embeddings.shape[0]:
        raise ValueError(f"{len(tokens)} tokens but {embeddings.shape[0]} embedding rows")
    words = torch.tensor([len(t) > 1 and t.isalpha() for t in tokens])
    idx = torch.nonzero(words).flatten()
    table = torch.full((len(tokens), k), -1, dtype=torch.long)
    continuation = torch.tensor([t.startswith("##") for t in tokens])
    if len(idx) <= k:
        return WordNeighbours(table, continuation)
    unit = torch.nn.functional.normalize(embeddings[idx].double(), dim=1)
    for start in range(0, len(idx), chunk):
        sim = unit[start:start + chunk] @ unit.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = -math.inf  # not itself
        table[idx[start:start + chunk]] = idx[sim.topk(k, dim=1).indices]
    return WordNeighbours(table, continuation)
