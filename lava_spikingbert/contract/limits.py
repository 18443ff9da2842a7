"""Bounds on what a model file or checkpoint from someone else may declare, checked before anything
is allocated, looped over or written (a few bytes of JSON must not drive memory to gigabytes).

The bounds are far above any BERT-sized student (BERT-large: hidden 1024, 24 layers, vocabulary
30522) and far below what exhausts a machine.
"""

from __future__ import annotations

import os

# upper bounds of the integer config fields shared by the model file and checkpoint config.json
CONFIG_LIMITS = {
    "vocab_size": 1_000_000,
    "hidden_size": 16_384,
    "num_hidden_layers": 256,
    "num_attention_heads": 1_024,
    "intermediate_size": 65_536,
    "max_position_embeddings": 65_536,
    "type_vocab_size": 1_024,
    "max_length": 65_536,
    "t_conv": 1_000_000,
    "num_labels": 100_000,
    "fit_size": 16_384,
}
MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32: the largest model a config may describe
MAX_CONFIG_BYTES = 1 << 20  # a config.json larger than this is not a config
MAX_DATASET_BYTES = 8 << 30  # one HDF5 dataset, as declared
MAX_COMPRESSION_RATIO = 100  # declared bytes per stored byte (gzip of real weights: about 1)
MAX_TOKENIZER_FILES = 16
MAX_TOKENIZER_BYTES = 64 << 20


def config_limit_errors(cfg: dict) -> list[str]:
    """``field: value exceeds limit`` for every integer field above its bound, and the parameter
    count; fields missing or not integers are left to the caller's own checks."""
    errors = []
    for name, limit in CONFIG_LIMITS.items():
        value = cfg.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            errors.append(f"'{name}' {value} exceeds the limit {limit}")
    if errors:
        return errors
    try:
        h, f, n = (int(cfg[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
        tables = (int(cfg["vocab_size"]) + int(cfg["max_position_embeddings"]) + int(cfg["type_vocab_size"])) * h
    except (KeyError, TypeError, ValueError):
        return errors
    params = tables + n * (4 * h * h + 2 * h * f)
    if params > MAX_PARAMETERS:
        errors.append(f"the config describes {params} parameters, more than the limit {MAX_PARAMETERS}")
    return errors


def plain_file_name(name: object) -> bool:
    """Whether ``name`` is a plain file name: no directory part, not absolute, not '.'/'..'."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and name not in (".", "..")
            and "/" not in name and "\\" not in name and "\x00" not in name
            and os.path.basename(name) == name and not os.path.isabs(name))
