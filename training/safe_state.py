"""Training states (optimizer, scheduler, RNG states, counters) saved without pickle.

A training state is a tree of dicts, lists, tuples, numbers, strings, tensors and numpy arrays.
It is written as ONE safetensors file: the tensors and arrays as safetensors entries, the rest of
the tree as JSON in the file's metadata (a tensor leaf becomes ``{"__tensor__": key}``). Reading
it parses JSON and safetensors only, so a state file from a stranger cannot run code (a pickled
``torch.save`` file can). Tensors keep their dtype and bits, so a resume stays bit-identical.

Earlier versions pickled the state with ``torch.save``; such files are never opened
(:func:`refuse_pickled_state`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lava_spikingbert.contract.atomic import atomic_file
from lava_spikingbert.contract.errors import SpikingBertError

STATE_FORMAT = "spikingbert-training-state"
STATE_FORMAT_VERSION = 1
_META_TREE, _META_FORMAT, _META_VERSION = "tree", "format", "format_version"
# the leaf markers of the JSON tree (a dict of the state never has these keys itself)
_TENSOR, _ARRAY, _TUPLE, _ITEMS, _FLOAT = "__tensor__", "__ndarray__", "__tuple__", "__items__", "__float__"


class TrainingStateError(SpikingBertError):
    """A training state file that is unreadable, foreign, of another version or of an unsafe format."""


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()  # clone: no two entries share memory
        return {_TENSOR: key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        # numpy dtypes torch lacks (the MT19937 key is uint32) travel widened to int64
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).astype(np.int64) if obj.dtype == np.uint32
                                        else np.ascontiguousarray(obj)).clone()
        return {_ARRAY: key, "dtype": obj.dtype.str}
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {_FLOAT: repr(obj)}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), tensors)
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(x, tensors) for x in obj]}
    if isinstance(obj, list):
        return [_encode(x, tensors) for x in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        # non-string keys (the optimizer's parameter indices): a list of pairs keeps their type
        return {_ITEMS: [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"training state: cannot store a {type(obj).__name__} without pickle")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(x, tensors, where) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if _TENSOR in obj or _ARRAY in obj:
        key = obj.get(_TENSOR, obj.get(_ARRAY))
        if key not in tensors:
            raise TrainingStateError(f"{where}: the state refers to a missing tensor {key!r}")
        if _TENSOR in obj:
            return tensors[key]
        return tensors[key].numpy().astype(np.dtype(str(obj["dtype"])))
    if _TUPLE in obj:
        return tuple(_decode(x, tensors, where) for x in obj[_TUPLE])
    if _ITEMS in obj:
        return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in obj[_ITEMS]}
    if _FLOAT in obj:
        return float(obj[_FLOAT])
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


def save_state(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (see the module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    metadata = {_META_FORMAT: STATE_FORMAT, _META_VERSION: str(STATE_FORMAT_VERSION),
                _META_TREE: json.dumps(tree, allow_nan=False)}
    with atomic_file(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_state(path: str | Path) -> dict:
    """Read a state written by :func:`save_state`; any problem is one :class:`TrainingStateError`."""
    path = Path(path)
    where = str(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise TrainingStateError(f"{where}: no training state") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise TrainingStateError(f"{where}: unreadable training state ({str(exc).splitlines()[0]})") from None
    if meta.get(_META_FORMAT) != STATE_FORMAT:
        raise TrainingStateError(f"{where}: not a training state of this project (format "
                                 f"{meta.get(_META_FORMAT)!r})")
    if meta.get(_META_VERSION) != str(STATE_FORMAT_VERSION):
        raise TrainingStateError(f"{where}: training state format version {meta.get(_META_VERSION)!r}; this "
                                 f"version reads {STATE_FORMAT_VERSION}")
    try:
        state = _decode(json.loads(meta[_META_TREE]), tensors, where)
    except TrainingStateError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise TrainingStateError(f"{where}: corrupt training state ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise TrainingStateError(f"{where}: corrupt training state (not a mapping)")
    return state


def refuse_pickled_state(path: str | Path, what: str) -> None:
    """Raise if ``path`` (a pickled state of an earlier version) exists; it is never unpickled."""
    path = Path(path)
    if path.exists():
        raise TrainingStateError(
            f"{path}: a training state in the pickle format of an earlier version; it is not loaded, since "
            f"unpickling a file can run code. {what}")


def require_keys(state: dict, keys: tuple[str, ...], where: str | Path) -> dict:
    """``state`` if it holds every key in ``keys``; else one error naming the missing ones."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise TrainingStateError(f"{where}: corrupt training state (missing {missing})")
    return state
