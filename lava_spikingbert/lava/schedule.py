"""From sentences to Lava runs, torch-free: the model file's tokenizer, padding, the graph's input
(embedding current or its integer grid) and the one scheduler of Lava runs (``plan_runs``).

``plan_runs`` packs sentences side by side into windows of 128 tokens with a block-diagonal
attention mask by default (``packing``; ``batch_size`` windows per run), which cuts the simulated
steps about five-fold on SST-2; unpacked it streams one sentence per window (``batch_size``
sentences per run, shortest first, padded to the run's longest). ``run_lava`` runs one planned run
and reads each sentence's logits from its [CLS] counts.
"""

from __future__ import annotations

import typing as ty
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from lava_spikingbert.contract.constants import output_population
from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.model_file import ModelFile, ModelFileError
from lava_spikingbert.lava.fixed import embedding_grid, fixed_params
from lava_spikingbert.lava.packing import pack_sentences
from lava_spikingbert.lava.params import LavaModelParams, params_from_file
from lava_spikingbert.lava.runner import LavaRunResult, run_batch

TAGS = ("floating_pt", "fixed_pt")
DEFAULT_WINDOW_TOKENS = 128


def file_tokenizer(mf: ModelFile, max_length: int):
    """A torch-free ``tokenizers.Tokenizer`` from the file's ``tokenizer.json`` (truncation to max_length)."""
    data = mf.tokenizer_files.get("tokenizer.json")
    if not data:
        raise ModelFileError(f"{mf.path or 'model file'}: no tokenizer.json stored in /tokenizer")
    try:
        tok = Tokenizer.from_str(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else str(data))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception on invalid JSON/models
        raise ModelFileError(f"{mf.path or 'model file'}: /tokenizer/tokenizer.json is not a valid tokenizer "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def tokenize(tok, examples) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token ids and token type ids of examples with ``text_a`` (and optional ``text_b``)."""
    ids, types = [], []
    for ex in examples:
        enc = tok.encode(ex.text_a, ex.text_b) if ex.text_b is not None else tok.encode(ex.text_a)
        ids.append(np.asarray(enc.ids, np.int64))
        types.append(np.asarray(enc.type_ids, np.int64))
    return ids, types


def pad(ids: list[np.ndarray], types: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, mask, types) int64 arrays, right-padded with 0 to the longest sequence."""
    width = max(len(x) for x in ids)
    out = np.zeros((3, len(ids), width), np.int64)
    for row, (seq, typ) in enumerate(zip(ids, types)):
        out[0, row, : len(seq)] = seq
        out[1, row, : len(seq)] = 1
        out[2, row, : len(seq)] = typ
    return out[0], out[1], out[2]


def params_for_tag(mf: ModelFile, tag: str) -> LavaModelParams:
    """The graph parameters of a model file: float weights (``floating_pt``) or the integer view (``fixed_pt``)."""
    if tag == "fixed_pt":
        return fixed_params(mf)
    if tag == "floating_pt":
        return params_from_file(mf)
    raise ValueError(f"tag must be one of {TAGS}, got {tag!r}")


def graph_input(params: LavaModelParams, ids: np.ndarray, types: np.ndarray) -> np.ndarray:
    """The EmbeddingSource data: float32 current (floating_pt) or integer Q(E) (fixed_pt)."""
    fixed = params.extra.get("fixed")
    if fixed:
        emb = params.embeddings
        tables = {"word": emb.word, "position": emb.position, "token_type": emb.token_type,
                  "gamma": emb.norm.gamma, "beta": emb.norm.beta}
        return embedding_grid(tables, ids, types, params.layer_norm_eps, fixed["lam"])
    return params.embeddings.current(ids, types, params.layer_norm_eps)


@dataclass
class LavaRun:
    """One Lava run: its input windows and where each of its sentences sits in them."""

    sentences: np.ndarray  # (S,) indices into the example list
    emb: np.ndarray        # (W, L, H) EmbeddingSource data
    mask: np.ndarray       # (W, L) key masks (one sentence per window) or (W, L, L) packed query x key masks
    window: np.ndarray     # (S,) window of each sentence
    slot: np.ndarray       # (S,) slot of each sentence in its window (0 when unpacked)
    start: np.ndarray      # (S,) first token of each sentence in its window (0 when unpacked)
    cls_index: np.ndarray  # (W, slots) [CLS] position of each slot, -1 = empty (record index array)
    ids: list[np.ndarray]    # (S,) token ids of each sentence (a reference pads them itself)
    types: list[np.ndarray]  # (S,) token type ids

    @property
    def packed(self) -> bool:
        return self.mask.ndim == 3


def plan_runs(params: LavaModelParams, all_ids: list[np.ndarray], all_types: list[np.ndarray], batch_size: int,
              pack: bool = True, window_tokens: int | None = None) -> ty.Iterator[LavaRun]:
    """Lava runs over all sentences.

    Unpacked: ``batch_size`` sentences per run (shortest first), one per window, padded to the
    run's longest.
    Packed: sentences side by side in windows of ``window_tokens`` tokens (default: 128 or the
    longest sentence) with block-diagonal attention (``packing``, first-fit by decreasing length),
    ``batch_size`` windows per run in packing order.
    """
    if batch_size <= 0:
        raise SpikingBertError(f"batch_size must be positive, got {batch_size}")
    if not pack:
        order = np.argsort([len(s) for s in all_ids], kind="stable")
        for first in range(0, len(order), batch_size):
            idx = order[first:first + batch_size]
            run_ids, run_types = [all_ids[i] for i in idx], [all_types[i] for i in idx]
            ids, mask, types = pad(run_ids, run_types)
            zeros = np.zeros(len(idx), np.int64)
            yield LavaRun(idx, graph_input(params, ids, types), mask, np.arange(len(idx)), zeros, zeros,
                          np.zeros((len(idx), 1), np.int64), run_ids, run_types)
        return
    lengths = np.array([len(s) for s in all_ids])
    window_tokens = int(window_tokens or max(DEFAULT_WINDOW_TOKENS, int(lengths.max())))
    if window_tokens < lengths.max():
        raise SpikingBertError(f"--window {window_tokens} is shorter than the longest sentence ({lengths.max()} tokens)")
    ids, mask, types = pad(all_ids, all_types)
    packed = pack_sentences(graph_input(params, ids, types), mask, window_tokens)
    for sub, idx in packed.chunks(batch_size):
        yield LavaRun(idx, sub.emb, sub.allowed, sub.window, sub.slot, sub.start, sub.cls_index,
                      [all_ids[i] for i in idx], [all_types[i] for i in idx])


def run_lava(params: LavaModelParams, run: LavaRun, t_conv: int, *, record_all: bool = False,
             timeout: float | None = None, run_cfg=None, **build_kwargs) -> tuple[LavaRunResult, np.ndarray]:
    """Simulate one planned run; returns the run result and each sentence's logits (S, labels).

    ``record_all``: count every population at every token (for parity checks); otherwise only
    each sentence's [CLS] in the last output population."""
    out_name = output_population(params.num_hidden_layers)
    record = "all" if record_all else {out_name: run.cls_index}
    res = run_batch(params, run.emb, run.mask, t_steps=t_conv, record=record, timeout=timeout, run_cfg=run_cfg,
                    **build_kwargs)
    counts = res.counts[out_name]
    cls = counts[run.window, run.start] if record_all else counts[run.window, run.slot]
    return res, params.logits_from_asr(cls.astype(np.float32) / np.float32(t_conv))
