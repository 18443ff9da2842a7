"""The lava-spikingbert model file (HDF5): one module that writes AND reads/validates it.

This is the contract between the PyTorch side (the exporter writes it, the fixed-point reference
reads it) and the Lava runtime (reads it): only h5py, numpy and the shared constants are imported
here. The layout is documented in docs/model_file.md; :data:`SCHEMA_VERSION` changes whenever it
does.

In memory a model file is a :class:`ModelFile`: configuration, tokenizer files, embedding tables,
the populations (IF neuron groups, per token), the connections (token-wise synapses, float weights
or integer Loihi mantissas + exponents), the non-spiking current blocks (embedding, attention,
residual LayerNorm, GELU), the classifier and the fixed-point parameters.

* :func:`write_model_file` writes one atomically (temporary sibling + rename);
* :func:`read_model_file` reads and validates one; every problem raises :class:`ModelFileError`
  naming the file and the HDF5 path of the offending group/dataset/attribute;
* :meth:`ModelFile.integer_view` gives the integer (fixed-point) view.

The file's ``profile`` attribute names the model profile the graph follows. ``"paper"`` is
SpikingBERT's graph (custom IF neurons and host current blocks); files without the attribute are
read as ``"paper"``. A further profile adds its layout to :func:`graph_layout` and its block kinds
to :data:`BLOCK_READERS`; the shared parts of the file stay as they are.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from lava_spikingbert.contract.atomic import atomic_file
from lava_spikingbert.contract.constants import (ACT_SHIFT, BIAS_EXP_MAX, BIAS_EXP_MIN, BIAS_MANT_MAX, BIAS_MANT_MIN,
                                                 EMBED, MANT_RANGE, NEURON_KINDS, QUANTIZED_MODES, SIGN_MODES,
                                                 VTH_MANT_MAX, WEIGHT_MODES, population_names)
from lava_spikingbert.contract.depths import population_depths
from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.limits import (MAX_COMPRESSION_RATIO, MAX_DATASET_BYTES, MAX_TOKENIZER_BYTES,
                                              MAX_TOKENIZER_FILES, config_limit_errors, plain_file_name)

FORMAT = "lava-spikingbert"
# 2: the loihi profile's readout pooling (config "readout"); a version-1 file pools by the mean.
# 3: the loihi profile's per-layer token-mixing dilations (config "dilations"); older files have none
SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (1, 2, 3)
PROFILES = ("paper", "loihi")  # the model profiles (checkpoints record theirs in config.json too)
DEFAULT_PROFILE = "paper"  # the profile of files written before the attribute existed

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
REQUIRED_CONFIG = {"vocab_size": int, "hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int,
                   "intermediate_size": int, "max_position_embeddings": int, "type_vocab_size": int,
                   "max_length": int, "layer_norm_eps": float, "t_conv": int, "vth": float, "neuron": str,
                   "num_labels": int, "problem_type": str, "weights": str}
POSITIVE_CONFIG = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "max_position_embeddings", "type_vocab_size", "max_length", "t_conv", "num_labels")


class ModelFileError(SpikingBertError):
    """The model file is unreadable, foreign, of another schema version, or inconsistent."""


# ------------------------------------------------------------------------------------ graph
@dataclass
class Population:
    """A group of IF neurons: ``width`` neurons per token (L tokens at run time)."""

    name: str
    kind: str
    width: int
    vth: float
    depth: int  # longest population-to-population path from `embed` in the synchronous step
    schedule_index: int  # update order within a time step (SpikingBert.simulate)
    lava_depth: int  # synapse hops from the embedding source in the Lava graph (block latency 0)
    driver: str  # the block or connection whose output is this population's input current
    layer: int  # -1 for embed
    vth_mant: int | None = None  # fixed point: threshold mantissa (compared as vth_mant << 6)


@dataclass
class Connection:
    """A token-wise synapse ``y = W s + b`` (W: (out, in)) from a population's spikes."""

    name: str
    source: str  # population
    target: str  # population (target_kind "neuron") or block ("block")
    target_kind: str
    weight: np.ndarray  # float32 (out, in): the weights as used (mantissa * scale if quantized)
    bias: np.ndarray  # float32 (out,)
    mode: str  # "fp32" | "int8" | "ternary" | "binary"
    weight_mant: np.ndarray | None = None  # int16 (out, in) Lava Dense weights
    exponent: int | None = None  # W = weight_mant * 2**exponent * vth
    weight_exp: int | None = None  # Lava Dense weight_exp = exponent + scale_exp
    sign_mode: str | None = None
    scale: float | None = None  # float32(2**exponent * vth): float weight of one mantissa LSB
    alpha: float | None = None  # ternary/binary magnitude (= mantissa magnitude * scale)
    alpha_raw: float | None = None  # ternary/binary absmean before snapping to the Loihi grid
    bias_mant: np.ndarray | None = None  # int16 (out,), neuron-bound fixed point: LIF bias_mant
    bias_exp: int | None = None  # LIF bias_exp (bias = bias_mant << bias_exp, membrane LSBs)
    bias_clipped: int = 0  # number of bias values clipped to the 13-bit range

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)  # type: ignore[return-value]


@dataclass
class Block:
    """A non-spiking current block (runs on a host / embedded CPU, not on neurocores)."""

    name: str
    kind: str  # "embedding" | "attention" | "residual_layernorm" | "gelu"
    output: str  # population
    inputs: dict[str, str]
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # gamma / beta (float32)


@dataclass
class IntSynapse:
    """Integer view of one connection (what the Lava fixed_pt graph is built from)."""

    name: str
    source: str
    target: str
    target_kind: str
    weight_mant: np.ndarray
    exponent: int
    weight_exp: int
    sign_mode: str
    scale: float
    bias: np.ndarray
    bias_mant: np.ndarray | None
    bias_exp: int | None


@dataclass
class IntegerView:
    """The fixed-point model: threshold mantissa, current unit and the integer synapses."""

    scale_exp: int
    vth_mant: int
    vth: float
    synapses: dict[str, IntSynapse]

    @property
    def current_unit(self) -> float:
        """Float current of one ``a_in`` LSB (one weight unit): ``vth / 2**scale_exp``."""
        return self.vth / 2.0 ** self.scale_exp

    def equals(self, other: "IntegerView") -> bool:
        return not self.differences(other)

    def differences(self, other: "IntegerView") -> list[str]:
        out = []
        for attr in ("scale_exp", "vth_mant", "vth"):
            if getattr(self, attr) != getattr(other, attr):
                out.append(f"{attr}: {getattr(self, attr)} != {getattr(other, attr)}")
        if set(self.synapses) != set(other.synapses):
            out.append(f"synapse names differ: {sorted(set(self.synapses) ^ set(other.synapses))}")
        for name in sorted(set(self.synapses) & set(other.synapses)):
            a, b = self.synapses[name], other.synapses[name]
            for attr in ("source", "target", "target_kind", "exponent", "weight_exp", "sign_mode", "scale",
                         "bias_exp"):
                if getattr(a, attr) != getattr(b, attr):
                    out.append(f"{name}.{attr}: {getattr(a, attr)} != {getattr(b, attr)}")
            for attr in ("weight_mant", "bias", "bias_mant"):
                x, y = getattr(a, attr), getattr(b, attr)
                if (x is None) != (y is None) or (x is not None and (x.shape != y.shape or not np.array_equal(x, y))):
                    out.append(f"{name}.{attr} differs")
        return out


def graph_layout(cfg: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """The expected populations, connections and blocks of a config (dicts, in schedule order).

    The synchronous schedule of ``SpikingBert.simulate``: per time step ``embed``, then per layer
    key, value, context, attn_out, intermediate, output, each from this step's source spikes.
    """
    h, f, n = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_hidden_layers"])
    lava_depth = population_depths(n)  # the Lava graph's depths (block latency 0)
    pops: list[dict] = [{"name": EMBED, "width": h, "depth": 0, "lava_depth": lava_depth[EMBED], "driver": "embedding",
                         "layer": -1}]
    conns: list[dict] = []
    blocks: list[dict] = [{"name": "embedding", "kind": "embedding", "output": EMBED,
                           "inputs": {"tables": "/embeddings"}}]
    x, d = EMBED, 0  # layer input population and its depth
    for i in range(n):
        p = f"layer{i}."
        drivers = {"key": (p + "key", 1), "value": (p + "value", 1), "context": (p + "attention", 2),
                   "attn_out": (p + "attn_norm", 3), "intermediate": (p + "gelu", 4), "output": (p + "output_norm", 5)}
        pops += [{"name": p + name, "width": f if name == "intermediate" else h, "depth": d + step,
                  "lava_depth": lava_depth[p + name], "driver": driver, "layer": i}
                 for name, (driver, step) in drivers.items()]
        conns += [
            {"name": p + "query", "source": x, "target": p + "attention", "target_kind": "block", "shape": (h, h)},
            {"name": p + "key", "source": x, "target": p + "key", "target_kind": "neuron", "shape": (h, h)},
            {"name": p + "value", "source": x, "target": p + "value", "target_kind": "neuron", "shape": (h, h)},
            {"name": p + "attn_out", "source": p + "context", "target": p + "attn_norm", "target_kind": "block",
             "shape": (h, h)},
            {"name": p + "intermediate", "source": p + "attn_out", "target": p + "gelu", "target_kind": "block",
             "shape": (f, h)},
            {"name": p + "output", "source": p + "intermediate", "target": p + "output_norm",
             "target_kind": "block", "shape": (h, f)},
        ]
        blocks += [
            {"name": p + "attention", "kind": "attention", "output": p + "context",
             "inputs": {"query_synapse": p + "query", "query_source": x, "key": p + "key", "value": p + "value"}},
            {"name": p + "attn_norm", "kind": "residual_layernorm", "output": p + "attn_out",
             "inputs": {"synapse": p + "attn_out", "residual": x}},
            {"name": p + "gelu", "kind": "gelu", "output": p + "intermediate",
             "inputs": {"synapse": p + "intermediate"}},
            {"name": p + "output_norm", "kind": "residual_layernorm", "output": p + "output",
             "inputs": {"synapse": p + "output", "residual": p + "attn_out"}},
        ]
        x, d = p + "output", d + 5
    for k, pop in enumerate(pops):
        pop["schedule_index"] = k
    return pops, conns, blocks


# ------------------------------------------------------------------------------------ model file
class _FileMembers:
    """What both profiles' model files have: ``precision``, ``tokenizer_files`` and ``path`` (fields
    of the dataclasses below) and the behaviour built on them."""

    precision: str
    tokenizer_files: dict[str, bytes]
    path: str | None

    @property
    def quantized(self) -> bool:
        return self.precision in QUANTIZED_MODES

    def write_tokenizer(self, directory: str | os.PathLike) -> Path:
        """Write the stored tokenizer files into ``directory`` (for ``AutoTokenizer.from_pretrained``)."""
        if not self.tokenizer_files:
            raise ModelFileError(f"{self.path or 'model file'}: /tokenizer holds no files")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name, data in self.tokenizer_files.items():
            if not plain_file_name(name):  # (read_model_file refuses these; a ModelFile may be built by hand)
                raise ModelFileError(f"{self.path or 'model file'}: /tokenizer file name {name!r} is not a plain name")
            (d / name).write_bytes(data)
        return d


@dataclass
class ModelFile(_FileMembers):
    """In-memory content of a model file (what :func:`write_model_file` writes and
    :func:`read_model_file` returns)."""

    precision: str
    config: dict[str, Any]
    embeddings: dict[str, np.ndarray]  # word, position, token_type, gamma, beta (float32)
    populations: dict[str, Population]
    connections: dict[str, Connection]
    blocks: dict[str, Block]
    classifier_weight: np.ndarray
    classifier_bias: np.ndarray
    quantization: dict[str, Any] = field(default_factory=dict)  # scale_exp, vth_mant, ... (quantized)
    tokenizer_files: dict[str, bytes] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    profile: str = DEFAULT_PROFILE
    path: str | None = None

    # ------------------------------------------------------------------ convenience
    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def mask_negative(self) -> float:
        """The additive attention-mask value of a padded key the model was exported with."""
        return float(self.blocks["layer0.attention"].attrs["mask_negative"])

    @property
    def scale_exp(self) -> int | None:
        return self.quantization.get("scale_exp")

    @property
    def current_unit(self) -> float | None:
        p = self.scale_exp
        return None if p is None else float(self.config["vth"]) / 2.0 ** p

    def integer_view(self) -> IntegerView:
        """The fixed-point view (quantized files only)."""
        if not self.quantized:
            raise ModelFileError(f"{self.path or 'model file'}: precision {self.precision} has no integer view; "
                                 "export with --precision int8|ternary|binary")
        syn = {}
        for name, c in self.connections.items():
            syn[name] = IntSynapse(name=name, source=c.source, target=c.target, target_kind=c.target_kind,
                                   weight_mant=c.weight_mant, exponent=int(c.exponent), weight_exp=int(c.weight_exp),
                                   sign_mode=c.sign_mode, scale=float(c.scale), bias=c.bias,
                                   bias_mant=c.bias_mant, bias_exp=c.bias_exp)
        return IntegerView(scale_exp=int(self.quantization["scale_exp"]), vth_mant=int(self.quantization["vth_mant"]),
                           vth=float(self.config["vth"]), synapses=syn)


# ------------------------------------------------------------------------------------ writing
def _set_attrs(obj, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, (dict, list, tuple)) and not (isinstance(v, tuple) and all(isinstance(x, int) for x in v)):
            obj.attrs[k] = json.dumps(v)
        elif isinstance(v, bool):
            obj.attrs[k] = np.bool_(v)
        else:
            obj.attrs[k] = v


def write_model_file(path: str | os.PathLike, mf: ModelFile) -> Path:
    """Write ``mf`` to ``path`` atomically (a temporary sibling replaced in one rename)."""
    path = Path(path)
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
        _write_loihi(f, mf) if isinstance(mf, LoihiModelFile) else _write(f, mf)
    mf.path = str(path)
    return path


def _write_common(f: h5py.File, mf: "ModelFile | LoihiModelFile") -> h5py.Group:
    """The sections every profile's file has: the root attributes, /config (returned), /provenance
    and /tokenizer."""
    f.attrs["format"] = FORMAT
    f.attrs["schema_version"] = np.int64(SCHEMA_VERSION)
    f.attrs["precision"] = mf.precision
    f.attrs["profile"] = mf.profile
    config = f.create_group("config")
    config.attrs["json"] = json.dumps(mf.config, sort_keys=True, default=str)
    g = f.create_group("provenance")
    g.attrs["json"] = json.dumps(mf.provenance, sort_keys=True, default=str)
    g = f.create_group("tokenizer")
    g.attrs["files"] = json.dumps(sorted(mf.tokenizer_files))
    for name, data in sorted(mf.tokenizer_files.items()):
        g.create_dataset(name, data=np.frombuffer(data, dtype=np.uint8))
    return config


def _write(f: h5py.File, mf: ModelFile) -> None:
    quant = mf.precision in QUANTIZED_MODES
    config = _write_common(f, mf)
    for k, v in mf.config.items():
        if isinstance(v, (bool, int, float, str)):
            config.attrs[k] = v
    g = f.create_group("embeddings")
    for k in ("word", "position", "token_type"):
        g.create_dataset(k, data=np.asarray(mf.embeddings[k], dtype=np.float32))
    n = g.create_group("norm")
    n.create_dataset("gamma", data=np.asarray(mf.embeddings["gamma"], dtype=np.float32))
    n.create_dataset("beta", data=np.asarray(mf.embeddings["beta"], dtype=np.float32))
    g.attrs["eps"] = float(mf.config["layer_norm_eps"])
    g.attrs["block"] = "embedding"
    g = f.create_group("populations")
    for pop in mf.populations.values():
        pg = g.create_group(pop.name)
        _set_attrs(pg, {"kind": pop.kind, "width": int(pop.width), "vth": float(pop.vth), "depth": int(pop.depth),
                        "schedule_index": int(pop.schedule_index), "lava_depth": int(pop.lava_depth),
                        "driver": pop.driver, "layer": int(pop.layer),
                        "vth_mant": None if pop.vth_mant is None else int(pop.vth_mant)})
    g = f.create_group("connections")
    for c in mf.connections.values():
        cg = g.create_group(c.name)
        _set_attrs(cg, {"source": c.source, "target": c.target, "target_kind": c.target_kind, "mode": c.mode,
                        "out_features": int(c.shape[0]), "in_features": int(c.shape[1])})
        if quant:
            cg.create_dataset("weight_mant", data=np.asarray(c.weight_mant, dtype=np.int16))
            _set_attrs(cg, {"exponent": int(c.exponent), "weight_exp": int(c.weight_exp), "sign_mode": c.sign_mode,
                            "scale": float(c.scale), "alpha": c.alpha, "alpha_raw": c.alpha_raw,
                            "bias_clipped": int(c.bias_clipped)})
            if c.bias_mant is not None:
                cg.create_dataset("bias_mant", data=np.asarray(c.bias_mant, dtype=np.int16))
                cg.attrs["bias_exp"] = int(c.bias_exp)
        else:
            cg.create_dataset("weight", data=np.asarray(c.weight, dtype=np.float32))
        cg.create_dataset("bias", data=np.asarray(c.bias, dtype=np.float32))
    g = f.create_group("blocks")
    for b in mf.blocks.values():
        bg = g.create_group(b.name)
        bg.attrs["kind"] = b.kind
        bg.attrs["output"] = b.output
        bg.attrs["inputs"] = json.dumps(b.inputs, sort_keys=True)
        _set_attrs(bg, b.attrs)
        for k, a in b.arrays.items():
            bg.create_dataset(k, data=np.asarray(a, dtype=np.float32))
    g = f.create_group("classifier")
    g.create_dataset("weight", data=np.asarray(mf.classifier_weight, dtype=np.float32))
    g.create_dataset("bias", data=np.asarray(mf.classifier_bias, dtype=np.float32))
    _set_attrs(g, {"source": f"layer{mf.num_layers - 1}.output", "token": 0, "input": "asr",
                   "problem_type": mf.config["problem_type"], "num_labels": int(mf.config["num_labels"])})
    g = f.create_group("quantization")
    g.attrs["mode"] = mf.precision
    if quant:
        q = mf.quantization
        _set_attrs(g, {k: q[k] for k in ("scale_exp", "vth_mant", "current_unit", "membrane_lsb", "rounding",
                                        "block_output_max", "weight_exp_range_assumed") if k in q})
        names = sorted(mf.connections)
        g.create_dataset("names", data=np.array([s.encode() for s in names], dtype="S"))
        g.create_dataset("scale", data=np.array([mf.connections[s].scale for s in names], dtype=np.float64))
        g.create_dataset("exponent", data=np.array([mf.connections[s].exponent for s in names], dtype=np.int32))
        g.create_dataset("weight_exp", data=np.array([mf.connections[s].weight_exp for s in names], dtype=np.int32))
        g.create_dataset("alpha", data=np.array([np.nan if mf.connections[s].alpha is None
                                                 else mf.connections[s].alpha for s in names], dtype=np.float64))


# ------------------------------------------------------------------------------------ reading
class _Reader:
    def __init__(self, f: h5py.File, label: str) -> None:
        self.f = f
        self.label = label

    def fail(self, where: str, what: str):
        raise ModelFileError(f"{self.label}: {where}: {what}")

    def group(self, path: str) -> h5py.Group:
        try:
            obj = self.f[path]
        except KeyError:
            self.fail(path, "required group is missing")
        except Exception as exc:  # corrupt object headers
            self.fail(path, f"unreadable ({exc})")
        if not isinstance(obj, h5py.Group):
            self.fail(path, "expected a group, found a dataset")
        return obj

    def attr(self, obj, key: str, kind: type | tuple, required: bool = True, default: Any = None):
        where = f"{obj.name} attribute '{key}'"
        if key not in obj.attrs:
            if required:
                self.fail(where, "required attribute is missing")
            return default
        try:
            v = obj.attrs[key]
        except Exception as exc:
            self.fail(where, f"unreadable ({exc})")
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, np.generic):
            v = v.item()
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
            self.fail(where, f"expected {'/'.join(k.__name__ for k in kinds)}, got {type(v).__name__} {v!r}")
        return v

    def json_attr(self, obj, key: str):
        s = self.attr(obj, key, str)
        try:
            return json.loads(s)
        except json.JSONDecodeError as exc:
            self.fail(f"{obj.name} attribute '{key}'", f"not valid JSON ({exc})")

    def check_size(self, obj: h5py.Dataset, path: str, max_bytes: int) -> None:
        """Refuse a dataset whose declared size is over ``max_bytes`` or far above what the file stores
        for it (a compressed dataset of fill values can declare gigabytes in a few bytes)."""
        declared = int(np.prod(obj.shape, dtype=np.float64) * obj.dtype.itemsize)
        try:
            stored = int(obj.id.get_storage_size())
        except Exception as exc:  # corrupt layout messages
            self.fail(path, f"unreadable ({exc})")
        if declared > max_bytes or declared > MAX_COMPRESSION_RATIO * max(stored, 1) + (1 << 16):
            self.fail(path, f"declares {declared} bytes ({stored} stored); refused before reading")

    def dataset(self, path: str, dtype, shape: tuple | None = None, finite: bool = False,
                required: bool = True, max_bytes: int = MAX_DATASET_BYTES) -> np.ndarray | None:
        if path not in self.f:
            if required:
                self.fail(path, "required dataset is missing")
            return None
        obj = self.f[path]
        if not isinstance(obj, h5py.Dataset):
            self.fail(path, "expected a dataset, found a group")
        if obj.dtype != np.dtype(dtype):
            self.fail(path, f"dtype {obj.dtype}, expected {np.dtype(dtype)}")
        if shape is not None and tuple(obj.shape) != tuple(shape):
            self.fail(path, f"shape {tuple(obj.shape)}, expected {tuple(shape)}")
        self.check_size(obj, path, max_bytes)
        try:
            data = obj[()]
        except Exception as exc:  # truncated / corrupt data chunks
            self.fail(path, f"unreadable data ({exc})")
        if finite and not np.all(np.isfinite(data)):
            self.fail(path, "holds non-finite values")
        return np.asarray(data)


def read_model_file(path: str | os.PathLike) -> "ModelFile | LoihiModelFile":
    """Read and validate a model file (a :class:`ModelFile`, or a :class:`LoihiModelFile` for
    profile "loihi"); raises :class:`ModelFileError` naming the problem."""
    path = Path(path)
    label = str(path)
    if not path.exists():
        raise ModelFileError(f"{label}: no such file")
    if path.is_dir():
        raise ModelFileError(f"{label}: is a directory, not a model file (.h5)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        msg = str(exc)
        hint = "truncated file" if "truncated" in msg else "not an HDF5 file or corrupt"
        raise ModelFileError(f"{label}: cannot open as HDF5 ({hint}: {msg.splitlines()[0]})") from None
    with f:
        try:
            mf = _read(_Reader(f, label))
        except ModelFileError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:  # low-level h5py errors
            raise ModelFileError(f"{label}: unreadable ({type(exc).__name__}: {exc})") from None
    mf.path = label
    return mf


def _read(r: _Reader) -> "ModelFile | LoihiModelFile":
    """The whole file, section by section; each step validates what it reads."""
    version, precision, profile = _read_header(r)
    if profile == "loihi":
        return _read_loihi(r, version, precision)
    cfg = _read_config(r, precision)
    provenance = _read_provenance(r)
    tokenizer_files = _read_tokenizer(r)
    embeddings = _read_embeddings(r, cfg)
    quantization = _read_quantization(r, precision)
    pops_l, conns_l, blocks_l = graph_layout(cfg)
    n = cfg["num_hidden_layers"]
    populations = _read_populations(r, pops_l, quantization.get("vth_mant"), n)
    connections = _read_connections(r, conns_l, precision, quantization, float(cfg["vth"]), n)
    blocks = _read_blocks(r, blocks_l, cfg)
    h, labels = cfg["hidden_size"], cfg["num_labels"]
    return ModelFile(precision=precision, config=cfg, embeddings=embeddings, populations=populations,
                     connections=connections, blocks=blocks,
                     classifier_weight=r.dataset("/classifier/weight", np.float32, (labels, h), finite=True),
                     classifier_bias=r.dataset("/classifier/bias", np.float32, (labels,), finite=True),
                     quantization=quantization, tokenizer_files=tokenizer_files, provenance=provenance,
                     schema_version=version, profile=profile)


def _read_header(r: _Reader) -> tuple[int, str, str]:
    """(schema version, precision, profile) from the root attributes."""
    f = r.f
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT:
        r.fail("/ attribute 'format'", f"foreign HDF5 file: expected '{FORMAT}', got {fmt!r}"
               if fmt is not None else f"foreign HDF5 file (no '{FORMAT}' format attribute)")
    version = r.attr(f, "schema_version", int)
    if version not in READABLE_SCHEMA_VERSIONS:
        newer = "newer" if version > SCHEMA_VERSION else "older"
        r.fail("/ attribute 'schema_version'", f"schema version {version} ({newer} than this reader); this reader "
                                               f"supports versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}")
    precision = r.attr(f, "precision", str)
    if precision not in WEIGHT_MODES:
        r.fail("/ attribute 'precision'", f"must be one of {WEIGHT_MODES}, got {precision!r}")
    profile = r.attr(f, "profile", str, required=False, default=DEFAULT_PROFILE)
    if profile not in PROFILES:
        r.fail("/ attribute 'profile'", f"must be one of {PROFILES}, got {profile!r}")
    return version, precision, profile


def _read_config(r: _Reader, precision: str) -> dict[str, Any]:
    cfg = r.json_attr(r.group("/config"), "json")
    if not isinstance(cfg, dict):
        r.fail("/config attribute 'json'", "must be a JSON object")
    for key, kind in REQUIRED_CONFIG.items():
        v = cfg.get(key)
        ok = isinstance(v, kind) and not isinstance(v, bool) if kind is not float else \
            isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            r.fail(f"/config field '{key}'", f"missing or not a {kind.__name__} (got {v!r})")
    for key in POSITIVE_CONFIG:
        if cfg[key] <= 0:
            r.fail(f"/config field '{key}'", f"must be positive, got {cfg[key]}")
    for problem in config_limit_errors(cfg):  # before any layout loop or allocation
        r.fail("/config", problem)
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        r.fail("/config field 'hidden_size'", "not divisible by num_attention_heads")
    if cfg["neuron"] not in NEURON_KINDS:
        r.fail("/config field 'neuron'", f"must be one of {NEURON_KINDS}, got {cfg['neuron']!r}")
    if not (cfg["vth"] > 0 and math.isfinite(cfg["vth"])):
        r.fail("/config field 'vth'", f"must be a positive finite number, got {cfg['vth']!r}")
    if cfg["weights"] != precision:
        r.fail("/config field 'weights'", f"{cfg['weights']!r} differs from the file precision {precision!r}")
    return cfg


def _read_provenance(r: _Reader) -> dict[str, Any]:
    prov = r.json_attr(r.group("/provenance"), "json")
    return prov if isinstance(prov, dict) else {"value": prov}


def _read_tokenizer(r: _Reader) -> dict[str, bytes]:
    files = r.json_attr(r.group("/tokenizer"), "files")
    if not isinstance(files, list) or len(files) > MAX_TOKENIZER_FILES:
        r.fail("/tokenizer attribute 'files'", f"must be a list of at most {MAX_TOKENIZER_FILES} file names")
    for name in files:  # the names become files in a directory (write_tokenizer): plain names only
        if not plain_file_name(name):
            r.fail("/tokenizer attribute 'files'", f"{name!r} is not a plain file name")
    return {name: r.dataset(f"/tokenizer/{name}", np.uint8, max_bytes=MAX_TOKENIZER_BYTES).tobytes()
            for name in files}


def _read_embeddings(r: _Reader, cfg: dict) -> dict[str, np.ndarray]:
    h = cfg["hidden_size"]
    return {"word": r.dataset("/embeddings/word", np.float32, (cfg["vocab_size"], h), finite=True),
            "position": r.dataset("/embeddings/position", np.float32, (cfg["max_position_embeddings"], h),
                                  finite=True),
            "token_type": r.dataset("/embeddings/token_type", np.float32, (cfg["type_vocab_size"], h), finite=True),
            "gamma": r.dataset("/embeddings/norm/gamma", np.float32, (h,), finite=True),
            "beta": r.dataset("/embeddings/norm/beta", np.float32, (h,), finite=True)}


def _read_quantization(r: _Reader, precision: str) -> dict[str, Any]:
    qg = r.group("/quantization")
    quantization: dict[str, Any] = {"mode": r.attr(qg, "mode", str)}
    if quantization["mode"] != precision:
        r.fail("/quantization attribute 'mode'", f"{quantization['mode']!r} differs from precision {precision!r}")
    if precision not in QUANTIZED_MODES:
        return quantization
    p = r.attr(qg, "scale_exp", int)
    vth_mant = r.attr(qg, "vth_mant", int)
    if vth_mant != 2 ** p:
        r.fail("/quantization attribute 'vth_mant'", f"{vth_mant} != 2**scale_exp = {2 ** p}")
    if not 1 <= vth_mant <= VTH_MANT_MAX or (vth_mant << ACT_SHIFT) >= 2 ** 23:
        r.fail("/quantization attribute 'vth_mant'",
               f"{vth_mant} outside the 17-bit threshold range (vth_mant << 6 must be < 2**23)")
    quantization.update({"scale_exp": p, "vth_mant": vth_mant,
                         "current_unit": r.attr(qg, "current_unit", float),
                         "membrane_lsb": r.attr(qg, "membrane_lsb", float),
                         "rounding": r.attr(qg, "rounding", str),
                         "block_output_max": r.attr(qg, "block_output_max", int),
                         "weight_exp_range_assumed": r.attr(qg, "weight_exp_range_assumed", str, False, None)})
    return quantization


def _reject_unexpected(r: _Reader, group: str, found: dict, num_layers: int) -> None:
    extra = sorted(set(r.group(group).keys()) - set(found))
    if extra:
        r.fail(group, f"unexpected {group.strip('/')} {extra} for {num_layers} layers")


def _read_populations(r: _Reader, layout: list[dict], vth_mant: int | None, num_layers: int) -> dict[str, Population]:
    quant = vth_mant is not None
    r.group("/populations")
    pops: dict[str, Population] = {}
    for want in layout:
        g = r.group(f"/populations/{want['name']}")
        kind = r.attr(g, "kind", str)
        if kind not in NEURON_KINDS:
            r.fail(f"{g.name} attribute 'kind'", f"must be one of {NEURON_KINDS}, got {kind!r}")
        width = r.attr(g, "width", int)
        if width != want["width"]:
            r.fail(f"{g.name} attribute 'width'", f"{width}, expected {want['width']} from /config")
        pv = r.attr(g, "vth", float)
        if not (pv > 0 and math.isfinite(pv)):
            r.fail(f"{g.name} attribute 'vth'", f"must be positive, got {pv}")
        pm = r.attr(g, "vth_mant", int, required=quant)
        if quant and pm != vth_mant:
            r.fail(f"{g.name} attribute 'vth_mant'", f"{pm} differs from /quantization vth_mant {vth_mant}")
        pops[want["name"]] = Population(
            name=want["name"], kind=kind, width=width, vth=pv, depth=r.attr(g, "depth", int),
            schedule_index=r.attr(g, "schedule_index", int), lava_depth=r.attr(g, "lava_depth", int),
            driver=r.attr(g, "driver", str), layer=r.attr(g, "layer", int), vth_mant=pm)
    _reject_unexpected(r, "/populations", pops, num_layers)
    return pops


def _read_connections(r: _Reader, layout: list[dict], precision: str, quantization: dict, vth: float,
                      num_layers: int) -> dict[str, Connection]:
    r.group("/connections")
    conns: dict[str, Connection] = {}
    for want in layout:
        name = want["name"]
        base = f"/connections/{name}"
        g = r.group(base)
        for key in ("source", "target", "target_kind"):
            v = r.attr(g, key, str)
            if v != want[key]:
                r.fail(f"{base} attribute '{key}'", f"{v!r}, expected {want[key]!r}")
        mode = r.attr(g, "mode", str)
        if mode != precision:
            r.fail(f"{base} attribute 'mode'", f"{mode!r} differs from precision {precision!r}")
        bias = r.dataset(f"{base}/bias", np.float32, (want["shape"][0],), finite=True)
        ends = dict(name=name, source=want["source"], target=want["target"], target_kind=want["target_kind"],
                    bias=bias, mode=mode)
        if precision in QUANTIZED_MODES:
            conns[name] = _read_integer_connection(r, g, want, quantization["scale_exp"], vth, ends)
        else:
            conns[name] = Connection(weight=r.dataset(f"{base}/weight", np.float32, want["shape"], finite=True),
                                     **ends)
    _reject_unexpected(r, "/connections", conns, num_layers)
    return conns


def _read_integer_connection(r: _Reader, g, want: dict, scale_exp: int, vth: float, ends: dict) -> Connection:
    """A quantized connection: Loihi mantissas within their sign mode's range, exponents, neuron biases."""
    base, shape = g.name, want["shape"]
    mant = r.dataset(f"{base}/weight_mant", np.int16, shape)
    sign_mode = r.attr(g, "sign_mode", str)
    if sign_mode not in SIGN_MODES:
        r.fail(f"{base} attribute 'sign_mode'", f"must be one of {SIGN_MODES}, got {sign_mode!r}")
    lo, hi = MANT_RANGE[sign_mode]
    if mant.size and (int(mant.min()) < lo or int(mant.max()) > hi):
        r.fail(f"{base}/weight_mant", f"values in [{int(mant.min())}, {int(mant.max())}] outside the "
                                      f"{sign_mode} range [{lo}, {hi}]")
    if sign_mode == "mixed" and np.any(mant % 2):
        r.fail(f"{base}/weight_mant", "odd values in a mixed-sign matrix (Lava keeps only even mantissas)")
    detected = sign_mode_of(mant)
    if detected != sign_mode:
        r.fail(f"{base} attribute 'sign_mode'", f"{sign_mode!r} but the mantissas are {detected}")
    e = r.attr(g, "exponent", int)
    wexp = r.attr(g, "weight_exp", int)
    if wexp != e + scale_exp:
        r.fail(f"{base} attribute 'weight_exp'", f"{wexp} != exponent + scale_exp = {e + scale_exp}")
    scale = r.attr(g, "scale", float)
    if scale != float(np.float32(2.0 ** e * vth)):
        r.fail(f"{base} attribute 'scale'", f"{scale!r} != float32(2**exponent * vth)")
    bias_mant = r.dataset(f"{base}/bias_mant", np.int16, (shape[0],), required=want["target_kind"] == "neuron")
    bias_exp = None
    if bias_mant is not None:
        if bias_mant.size and (int(bias_mant.min()) < BIAS_MANT_MIN or int(bias_mant.max()) > BIAS_MANT_MAX):
            r.fail(f"{base}/bias_mant", f"values outside the 13-bit range [{BIAS_MANT_MIN}, {BIAS_MANT_MAX}]")
        bias_exp = r.attr(g, "bias_exp", int)
        if not BIAS_EXP_MIN <= bias_exp <= BIAS_EXP_MAX:
            r.fail(f"{base} attribute 'bias_exp'", f"{bias_exp} outside [{BIAS_EXP_MIN}, {BIAS_EXP_MAX}]")
    return Connection(weight=mant.astype(np.float32) * np.float32(scale), weight_mant=mant, exponent=e,
                      weight_exp=wexp, sign_mode=sign_mode, scale=scale,
                      alpha=r.attr(g, "alpha", float, False), alpha_raw=r.attr(g, "alpha_raw", float, False),
                      bias_mant=bias_mant, bias_exp=bias_exp, bias_clipped=r.attr(g, "bias_clipped", int, False, 0),
                      **ends)


# ---- one reader per block kind: (reader, group, config) -> (attrs, arrays)
def _read_attention_block(r: _Reader, g, cfg: dict) -> tuple[dict, dict]:
    attrs = {"num_heads": r.attr(g, "num_heads", int), "head_size": r.attr(g, "head_size", int)}
    if attrs["num_heads"] != cfg["num_attention_heads"] or attrs["num_heads"] * attrs["head_size"] != cfg["hidden_size"]:
        r.fail(f"{g.name} attribute 'num_heads'", "inconsistent with /config")
    attrs["score_scale"] = r.attr(g, "score_scale", float)
    attrs["mask_negative"] = r.attr(g, "mask_negative", float)
    return attrs, {}


def _read_residual_layernorm_block(r: _Reader, g, cfg: dict) -> tuple[dict, dict]:
    h = cfg["hidden_size"]
    return {"eps": r.attr(g, "eps", float)}, {"gamma": r.dataset(f"{g.name}/gamma", np.float32, (h,), finite=True),
                                              "beta": r.dataset(f"{g.name}/beta", np.float32, (h,), finite=True)}


def _read_gelu_block(r: _Reader, g, cfg: dict) -> tuple[dict, dict]:
    form = r.attr(g, "form", str)
    if form != "erf":
        r.fail(f"{g.name} attribute 'form'", f"only 'erf' is supported, got {form!r}")
    return {"form": form}, {}


def _read_embedding_block(r: _Reader, g, cfg: dict) -> tuple[dict, dict]:
    return {"eps": r.attr(g, "eps", float)}, {}


BLOCK_READERS: dict[str, Callable[[_Reader, Any, dict], tuple[dict, dict]]] = {
    "attention": _read_attention_block, "residual_layernorm": _read_residual_layernorm_block,
    "gelu": _read_gelu_block, "embedding": _read_embedding_block}


def _read_blocks(r: _Reader, layout: list[dict], cfg: dict) -> dict[str, Block]:
    r.group("/blocks")
    blocks: dict[str, Block] = {}
    for want in layout:
        base = f"/blocks/{want['name']}"
        g = r.group(base)
        for key, value in (("kind", r.attr(g, "kind", str)), ("output", r.attr(g, "output", str)),
                           ("inputs", r.json_attr(g, "inputs"))):
            if value != want[key]:
                r.fail(f"{base} attribute '{key}'", f"{value!r}, expected {want[key]!r}")
        attrs, arrays = BLOCK_READERS[want["kind"]](r, g, cfg)
        blocks[want["name"]] = Block(name=want["name"], kind=want["kind"], output=want["output"],
                                     inputs=want["inputs"], attrs=attrs, arrays=arrays)
    return blocks


def sign_mode_of(mant: np.ndarray) -> str:
    """Lava's ``determine_sign_mode`` of a mantissa matrix."""
    if mant.size == 0 or int(mant.min()) >= 0:
        return "excitatory"
    if int(mant.max()) <= 0:
        return "inhibitory"
    return "mixed"


# ==================================================================================== profile "loihi"
# A spiking token-mixing network made only of what stock Lava processes compute (LIFReset
# populations, Sparse/DelaySparse synapses), with the host at the two ends: the per-token input
# current (embeddings -> LayerNorm -> linear) and the readout (the last population's spike counts
# pooled over a sentence's valid tokens: mean, max or both -> linear classifier). Layout: docs/model_file.md.
from lava_spikingbert.contract.constants import (A_IN_MAX, DELAY_MAX, IF_DU_FIXED, IF_DV_FIXED,  # noqa: E402
                                                 LOIHI_POOLING_BEFORE_CHOICE, LOIHI_POOLING_PARTS, LOIHI_POOLINGS,
                                                 LOIHI_SYNAPSE_KINDS,
                                                 MIXER_LAYER_POPULATIONS, WEIGHT_EXP_MAX, WEIGHT_EXP_MIN,
                                                 pooled_width)

LOIHI_PRECISIONS = ("fp32", "int8")
LOIHI_MIXINGS = ("bidirectional", "causal")
LOIHI_REQUIRED_CONFIG = {"vocab_size": int, "max_position_embeddings": int, "type_vocab_size": int,
                         "pad_token_id": int, "embed_size": int, "layer_norm_eps": float, "hidden_size": int,
                         "intermediate_size": int, "num_layers": int, "kernel_size": int, "mixing": str,
                         "max_length": int, "t_conv": int, "vth": float, "num_labels": int, "weights": str,
                         "margin": int}
LOIHI_POSITIVE_CONFIG = ("vocab_size", "max_position_embeddings", "type_vocab_size", "embed_size", "hidden_size",
                         "intermediate_size", "num_layers", "kernel_size", "max_length", "t_conv", "num_labels")
LOIHI_INPUT_POPULATION = EMBED


def loihi_dilation_problem(dilations: Any, num_layers: int) -> str | None:
    """Why ``dilations`` is not a valid per-layer dilation list (None: valid; null means 1 everywhere)."""
    if dilations is None:
        return None
    if (not isinstance(dilations, (list, tuple)) or len(dilations) != num_layers
            or any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in dilations)):
        return f"must be null or {num_layers} positive integers (one per layer), got {dilations!r}"
    return None


def loihi_layer_dilations(num_layers: int, dilations: list[int] | None) -> list[int]:
    """Every layer's token-mixing dilation (null: 1 in every layer)."""
    return [int(v) for v in dilations] if dilations is not None else [1] * num_layers


def loihi_margin(num_layers: int, kernel_size: int, mixing: str = "bidirectional",
                 dilations: list[int] | None = None) -> int:
    """Zero-input positions a sentence needs on each side (the receptive field of the last
    population on the input): per layer, ``(kernel_size - 1) // 2`` taps times that layer's dilation
    for bidirectional mixing; causal mixing reads only to the left (``kernel_size - 1`` taps)."""
    reach = kernel_size - 1 if mixing == "causal" else (kernel_size - 1) // 2
    return reach * sum(loihi_layer_dilations(num_layers, dilations))


def loihi_layout(cfg: dict) -> tuple[list[dict], list[dict]]:
    """The expected populations and synapses of a loihi-profile config (dicts, in update order).

    Depth = synapse hops from the input population (each synapse delivers one step later); a
    synapse from depth a into depth b gets ``delay = b - a - 1`` (the residual ``mix -> out``
    skips ``hidden``), so all inputs of a population are aligned."""
    d, f, n, k = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_layers"]), int(cfg["kernel_size"])
    dilations = loihi_layer_dilations(n, cfg.get("dilations"))
    pops = [{"name": EMBED, "width": d, "depth": 0, "layer": -1}]
    syns: list[dict] = []
    x = EMBED
    for i in range(n):
        p = f"layer{i}."
        widths = {"mix": d, "hidden": f, "out": d}
        pops += [{"name": p + name, "width": widths[name], "depth": 3 * i + 1 + j, "layer": i}
                 for j, name in enumerate(MIXER_LAYER_POPULATIONS)]
        syns += [{"name": p + "mix", "source": x, "target": p + "mix", "kind": "token_mix", "shape": (d, k), "delay": 0,
                  "dilation": dilations[i]},
                 {"name": p + "fc1", "source": p + "mix", "target": p + "hidden", "kind": "channel", "shape": (f, d),
                  "delay": 0},
                 {"name": p + "fc2", "source": p + "hidden", "target": p + "out", "kind": "channel", "shape": (d, f),
                  "delay": 0},
                 {"name": p + "res", "source": p + "mix", "target": p + "out", "kind": "residual", "shape": (d,),
                  "delay": 1}]
        x = p + "out"
    return pops, syns


@dataclass
class LoihiPopulation:
    """One stock ``LIFReset`` population: ``width`` neurons per token position."""

    name: str
    width: int
    depth: int  # synapse hops from the input population
    layer: int  # -1 for embed
    vth: float
    bias: np.ndarray  # float32 (width,): the float bias (current units, added every step)
    reset_interval: int  # = t_conv: the neuron resets (u = v = 0) once per window
    reset_offset: int  # (1 + depth) % t_conv: the first step of this population's window
    du: int = IF_DU_FIXED
    dv: int = IF_DV_FIXED
    # fixed point (int8 files): integer unit = vth / 2**scale_exp
    scale_exp: int | None = None
    vth_mant: int | None = None  # = 2**scale_exp (compared as vth_mant << 6)
    bias_mant: np.ndarray | None = None  # int16 (width,), 13-bit
    bias_exp: int | None = None


@dataclass
class LoihiSynapse:
    """One static synapse process between two populations."""

    name: str
    source: str
    target: str
    kind: str  # "token_mix" (d, k) taps | "channel" (out, in) | "residual" (d,) gains
    delay: int
    weight: np.ndarray  # float32: the weights as used (mantissa * 2**exponent * vth if quantized)
    weight_mant: np.ndarray | None = None  # int16, same shape: 8-bit Loihi mantissas
    exponent: int | None = None  # weight = weight_mant * 2**exponent * vth (the torch int8 grid)
    weight_exp: int | None = None  # = exponent + scale_exp of the target population
    sign_mode: str | None = None
    dilation: int = 1  # token_mix: tap j of position l reads position l + dilation * (j - centre)


@dataclass
class LoihiModelFile(_FileMembers):
    """In-memory content of a profile-"loihi" model file."""

    precision: str
    config: dict[str, Any]
    host_input: dict[str, np.ndarray]  # word, position, token_type, gamma, beta, weight (d, e), bias (d,)
    populations: dict[str, LoihiPopulation]
    synapses: dict[str, LoihiSynapse]
    classifier_weight: np.ndarray  # (labels, d), or (labels, 2d) for the mean_max readout
    classifier_bias: np.ndarray
    input_scale_exp: int | None = None  # fixed point: host current -> a_in = round(I / vth * 2**p), 16-bit
    tokenizer_files: dict[str, bytes] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    profile: str = "loihi"
    path: str | None = None

    @property
    def num_layers(self) -> int:
        return int(self.config["num_layers"])

    @property
    def margin(self) -> int:
        return int(self.config["margin"])

    @property
    def output_population(self) -> str:
        return f"layer{self.num_layers - 1}.out"

    def input_current(self, ids: np.ndarray, types: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Host side: the per-token input current of ``embed`` (float64, ``ids.shape + (d,)``):
        ``W LN(word + position + type) + b``. ``positions`` default to ``0..n-1`` along the last axis
        (each sentence's tokens use BERT position ids 0, 1, ...)."""
        ids, types = np.asarray(ids), np.asarray(types)
        if positions is None:
            positions = np.broadcast_to(np.arange(ids.shape[-1]), ids.shape)
        h = self.host_input
        x = (h["word"][ids].astype(np.float64) + h["position"][positions] + h["token_type"][types])
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        x = (x - mu) / np.sqrt(var + float(self.config["layer_norm_eps"])) * h["gamma"] + h["beta"]
        return x @ h["weight"].T.astype(np.float64) + h["bias"]

    def input_integer(self, current: np.ndarray) -> np.ndarray:
        """Fixed point: the host current as the input population's 16-bit ``a_in`` (int64):
        ``round(I / vth * 2**input_scale_exp)`` saturated to +-A_IN_MAX. Saturation leaves the spikes
        unchanged while the threshold is well inside the range (a constant current above vth
        fires every step, one below 0 never)."""
        if self.input_scale_exp is None:
            raise ModelFileError(f"{self.path or 'model file'}: precision {self.precision} has no fixed-point input; "
                                 "export with --precision int8")
        scaled = np.rint(np.asarray(current, np.float64) / float(self.config["vth"]) * 2.0 ** self.input_scale_exp)
        return np.clip(scaled, -A_IN_MAX, A_IN_MAX).astype(np.int64)

    @property
    def pooling(self) -> str:
        """How the readout pools over tokens: a key of ``LOIHI_POOLINGS``."""
        return self.config.get("readout", LOIHI_POOLING_BEFORE_CHOICE)

    def readout(self, counts: np.ndarray, t_conv: int) -> np.ndarray:
        """Host side: logits from one sentence's (tokens, d) output counts (ASRs pooled over its tokens:
        the mean, the maximum, or both side by side)."""
        asr = np.asarray(counts, np.float64) / t_conv
        pooled = np.concatenate([getattr(asr, part)(0) for part in LOIHI_POOLING_PARTS[self.pooling]])
        return pooled @ self.classifier_weight.T.astype(np.float64) + self.classifier_bias


def loihi_range_problems(mf: LoihiModelFile) -> list[str]:
    """The Loihi 2 ranges of a fixed-point loihi file, one line per violation naming the
    population or synapse and the value (empty if it fits): 8-bit mantissas of the matrix's sign
    mode, ``weight_exp`` in [-8, 7], delays <= 63, ``vth`` 17-bit, bias 13-bit mantissa with
    ``bias_exp`` in [0, 7], and the worst-case dendritic sum (every presynaptic neuron spiking in
    one step, all incoming synapses) within the 16-bit ``a_in``. The 24-bit state then cannot wrap
    in ``u`` (``a_in << 6``); ``v`` saturates at +-(2**23 - 1), which the reference models."""
    problems: list[str] = []
    worst = {name: np.zeros(p.width) for name, p in mf.populations.items()}
    for s in mf.synapses.values():
        where = f"synapse {s.name}"
        m = np.asarray(s.weight_mant, np.int64)
        lo, hi = MANT_RANGE.get(s.sign_mode, (0, -1))
        if s.sign_mode not in SIGN_MODES:
            problems.append(f"{where}: sign_mode {s.sign_mode!r} not one of {SIGN_MODES}")
        elif m.size and (int(m.min()) < lo or int(m.max()) > hi):
            bad = int(m.flat[np.argmax(np.maximum(lo - m, m - hi))])
            problems.append(f"{where}: weight mantissa {bad} outside the 8-bit {s.sign_mode} range [{lo}, {hi}]")
        elif s.sign_mode == "mixed" and np.any(m % 2):
            problems.append(f"{where}: odd weight mantissa {int(m[m % 2 != 0][0])} in a mixed-sign matrix "
                            "(Lava keeps even values only)")
        elif m.size and sign_mode_of(m) != s.sign_mode:
            problems.append(f"{where}: sign_mode {s.sign_mode!r} but the mantissas are {sign_mode_of(m)}")
        if not WEIGHT_EXP_MIN <= s.weight_exp <= WEIGHT_EXP_MAX:
            problems.append(f"{where}: weight_exp {s.weight_exp} outside [{WEIGHT_EXP_MIN}, {WEIGHT_EXP_MAX}]")
        if not 0 <= s.delay <= DELAY_MAX:
            problems.append(f"{where}: delay {s.delay} outside [0, {DELAY_MAX}]")
        per_row = np.abs(m).sum(-1) if s.kind != "residual" else np.abs(m)
        worst[s.target] += per_row * 2.0 ** s.weight_exp
    worst[LOIHI_INPUT_POPULATION] += A_IN_MAX  # the host input is saturated to the 16-bit range
    for name, p in mf.populations.items():
        where = f"population {name}"
        if not (isinstance(p.vth_mant, int) and 1 <= p.vth_mant <= VTH_MANT_MAX):
            problems.append(f"{where}: vth mantissa {p.vth_mant} outside [1, {VTH_MANT_MAX}] (17 bits)")
        b = np.asarray(p.bias_mant, np.int64)
        if b.size and (int(b.min()) < BIAS_MANT_MIN or int(b.max()) > BIAS_MANT_MAX):
            bad = int(b.flat[np.argmax(np.abs(b))])
            problems.append(f"{where}: bias mantissa {bad} outside 13 bits [{BIAS_MANT_MIN}, {BIAS_MANT_MAX}]")
        if not (isinstance(p.bias_exp, int) and BIAS_EXP_MIN <= p.bias_exp <= BIAS_EXP_MAX):
            problems.append(f"{where}: bias_exp {p.bias_exp} outside [{BIAS_EXP_MIN}, {BIAS_EXP_MAX}]")
        w = float(worst[name].max(initial=0.0))
        if w > A_IN_MAX:
            problems.append(f"{where}: worst-case a_in {int(w)} (neuron {int(np.argmax(worst[name]))}) exceeds "
                            f"16 bits ({A_IN_MAX})")
    return problems


def _write_loihi(f: h5py.File, mf: LoihiModelFile) -> None:
    quant = mf.precision in QUANTIZED_MODES
    _write_common(f, mf)
    g = f.create_group("host_input")
    for k in ("word", "position", "token_type", "gamma", "beta", "weight", "bias"):
        g.create_dataset(k, data=np.asarray(mf.host_input[k], dtype=np.float32))
    _set_attrs(g, {"eps": float(mf.config["layer_norm_eps"]), "target": LOIHI_INPUT_POPULATION,
                   "form": "weight @ layernorm(word + position + token_type) + bias",
                   "scale_exp": None if mf.input_scale_exp is None else int(mf.input_scale_exp),
                   "saturation": int(A_IN_MAX) if quant else None})
    g = f.create_group("populations")
    for p in mf.populations.values():
        pg = g.create_group(p.name)
        _set_attrs(pg, {"width": int(p.width), "depth": int(p.depth), "layer": int(p.layer), "vth": float(p.vth),
                        "du": int(p.du), "dv": int(p.dv), "reset_interval": int(p.reset_interval),
                        "reset_offset": int(p.reset_offset), "neuron": "LIFReset"})
        pg.create_dataset("bias", data=np.asarray(p.bias, dtype=np.float32))
        if quant:
            _set_attrs(pg, {"scale_exp": int(p.scale_exp), "vth_mant": int(p.vth_mant), "bias_exp": int(p.bias_exp)})
            pg.create_dataset("bias_mant", data=np.asarray(p.bias_mant, dtype=np.int16))
    g = f.create_group("synapses")
    for s in mf.synapses.values():
        sg = g.create_group(s.name)
        _set_attrs(sg, {"source": s.source, "target": s.target, "kind": s.kind, "delay": int(s.delay),
                        "mode": mf.precision})
        sg.create_dataset("weight", data=np.asarray(s.weight, dtype=np.float32))
        if quant:
            sg.create_dataset("weight_mant", data=np.asarray(s.weight_mant, dtype=np.int16))
            _set_attrs(sg, {"exponent": int(s.exponent), "weight_exp": int(s.weight_exp), "sign_mode": s.sign_mode})
    g = f.create_group("readout")
    g.create_dataset("weight", data=np.asarray(mf.classifier_weight, dtype=np.float32))
    g.create_dataset("bias", data=np.asarray(mf.classifier_bias, dtype=np.float32))
    _set_attrs(g, {"source": mf.output_population, "pooling": LOIHI_POOLINGS[mf.pooling], "input": "asr",
                   "num_labels": int(mf.config["num_labels"])})


def _read_loihi(r: _Reader, version: int, precision: str) -> LoihiModelFile:
    """The loihi-profile sections, each validated as it is read; then the static range check."""
    if precision not in LOIHI_PRECISIONS:
        r.fail("/ attribute 'precision'", f"profile loihi holds {LOIHI_PRECISIONS}, got {precision!r}")
    quant = precision in QUANTIZED_MODES
    cfg = r.json_attr(r.group("/config"), "json")
    if not isinstance(cfg, dict):
        r.fail("/config attribute 'json'", "must be a JSON object")
    for key, kind in LOIHI_REQUIRED_CONFIG.items():
        v = cfg.get(key)
        ok = (isinstance(v, (int, float)) if kind is float else isinstance(v, kind)) and not isinstance(v, bool)
        if not ok:
            r.fail(f"/config field '{key}'", f"missing or not a {kind.__name__} (got {v!r})")
    for key in LOIHI_POSITIVE_CONFIG:
        if cfg[key] <= 0:
            r.fail(f"/config field '{key}'", f"must be positive, got {cfg[key]}")
    if cfg["mixing"] not in LOIHI_MIXINGS:
        r.fail("/config field 'mixing'", f"must be one of {LOIHI_MIXINGS}, got {cfg['mixing']!r}")
    readout = cfg.get("readout", LOIHI_POOLING_BEFORE_CHOICE)
    if readout not in LOIHI_POOLINGS:
        r.fail("/config field 'readout'", f"must be one of {tuple(LOIHI_POOLINGS)}, got {readout!r}")
    if version < 2 and readout != LOIHI_POOLING_BEFORE_CHOICE:
        r.fail("/config field 'readout'", f"{readout!r} needs schema version 2 (version {version} has no readout choice)")
    if not (cfg["vth"] > 0 and math.isfinite(cfg["vth"])):
        r.fail("/config field 'vth'", f"must be a positive finite number, got {cfg['vth']!r}")
    if cfg["weights"] != precision:
        r.fail("/config field 'weights'", f"{cfg['weights']!r} differs from the file precision {precision!r}")
    dilations = cfg.get("dilations")
    problem = loihi_dilation_problem(dilations, cfg["num_layers"])
    if problem:
        r.fail("/config field 'dilations'", problem)
    if dilations is not None:
        if version < 3 and any(v != 1 for v in dilations):
            r.fail("/config field 'dilations'", f"{dilations} needs schema version 3 (version {version} has no "
                                                "dilations)")
    want_margin = loihi_margin(cfg["num_layers"], cfg["kernel_size"], cfg["mixing"], dilations)
    if cfg["margin"] != want_margin:
        r.fail("/config field 'margin'", f"{cfg['margin']}, expected {want_margin} from num_layers, kernel_size, "
                                         "mixing, dilations")
    provenance = _read_provenance(r)
    tokenizer_files = _read_tokenizer(r)
    d, e = cfg["hidden_size"], cfg["embed_size"]
    g = r.group("/host_input")
    host = {"word": r.dataset("/host_input/word", np.float32, (cfg["vocab_size"], e), finite=True),
            "position": r.dataset("/host_input/position", np.float32, (cfg["max_position_embeddings"], e), finite=True),
            "token_type": r.dataset("/host_input/token_type", np.float32, (cfg["type_vocab_size"], e), finite=True),
            "gamma": r.dataset("/host_input/gamma", np.float32, (e,), finite=True),
            "beta": r.dataset("/host_input/beta", np.float32, (e,), finite=True),
            "weight": r.dataset("/host_input/weight", np.float32, (d, e), finite=True),
            "bias": r.dataset("/host_input/bias", np.float32, (d,), finite=True)}
    input_scale_exp = r.attr(g, "scale_exp", int, required=quant)
    T = cfg["t_conv"]
    pops_l, syns_l = loihi_layout(cfg)
    r.group("/populations")
    pops: dict[str, LoihiPopulation] = {}
    for want in pops_l:
        base = f"/populations/{want['name']}"
        pg = r.group(base)
        for key in ("width", "depth", "layer"):
            v = r.attr(pg, key, int)
            if v != want[key]:
                r.fail(f"{base} attribute '{key}'", f"{v}, expected {want[key]} from /config")
        vth = r.attr(pg, "vth", float)
        if vth != float(cfg["vth"]):
            r.fail(f"{base} attribute 'vth'", f"{vth} differs from /config vth {cfg['vth']}")
        du, dv = r.attr(pg, "du", int), r.attr(pg, "dv", int)
        if (du, dv) != (IF_DU_FIXED, IF_DV_FIXED):
            r.fail(f"{base} attribute 'du'", f"(du, dv) = ({du}, {dv}); this profile's neuron is ({IF_DU_FIXED}, "
                                             f"{IF_DV_FIXED}) (integrate-and-fire)")
        interval, offset = r.attr(pg, "reset_interval", int), r.attr(pg, "reset_offset", int)
        if interval != T or offset != (1 + want["depth"]) % T:
            r.fail(f"{base} attribute 'reset_offset'", f"interval {interval}, offset {offset}; expected {T}, "
                                                       f"{(1 + want['depth']) % T} (t_conv, (1 + depth) % t_conv)")
        pop = LoihiPopulation(name=want["name"], width=want["width"], depth=want["depth"], layer=want["layer"],
                              vth=vth, bias=r.dataset(f"{base}/bias", np.float32, (want["width"],), finite=True),
                              reset_interval=interval, reset_offset=offset, du=du, dv=dv)
        if quant:
            pop.scale_exp = r.attr(pg, "scale_exp", int)
            pop.vth_mant = r.attr(pg, "vth_mant", int)
            if pop.vth_mant != 2 ** pop.scale_exp:
                r.fail(f"{base} attribute 'vth_mant'", f"{pop.vth_mant} != 2**scale_exp = {2 ** pop.scale_exp}")
            pop.bias_exp = r.attr(pg, "bias_exp", int)
            pop.bias_mant = r.dataset(f"{base}/bias_mant", np.int16, (want["width"],))
        pops[want["name"]] = pop
    _reject_unexpected(r, "/populations", pops, cfg["num_layers"])
    if quant and input_scale_exp != pops[LOIHI_INPUT_POPULATION].scale_exp:
        r.fail("/host_input attribute 'scale_exp'", f"{input_scale_exp} differs from the {LOIHI_INPUT_POPULATION} "
                                                    f"population's scale_exp {pops[LOIHI_INPUT_POPULATION].scale_exp}")
    r.group("/synapses")
    syns: dict[str, LoihiSynapse] = {}
    for want in syns_l:
        base = f"/synapses/{want['name']}"
        sg = r.group(base)
        for key in ("source", "target", "kind"):
            v = r.attr(sg, key, str)
            if v != want[key]:
                r.fail(f"{base} attribute '{key}'", f"{v!r}, expected {want[key]!r}")
        delay = r.attr(sg, "delay", int)
        if delay != want["delay"]:
            r.fail(f"{base} attribute 'delay'", f"{delay}, expected {want['delay']} (depth(target) - depth(source) - 1)")
        mode = r.attr(sg, "mode", str)
        if mode != precision:
            r.fail(f"{base} attribute 'mode'", f"{mode!r} differs from precision {precision!r}")
        weight = r.dataset(f"{base}/weight", np.float32, want["shape"], finite=True)
        s = LoihiSynapse(name=want["name"], source=want["source"], target=want["target"], kind=want["kind"],
                         delay=delay, weight=weight, dilation=want.get("dilation", 1))
        if quant:
            s.weight_mant = r.dataset(f"{base}/weight_mant", np.int16, want["shape"])
            s.exponent = r.attr(sg, "exponent", int)
            s.weight_exp = r.attr(sg, "weight_exp", int)
            s.sign_mode = r.attr(sg, "sign_mode", str)
            target_exp = pops[want["target"]].scale_exp
            if s.weight_exp != s.exponent + target_exp:
                r.fail(f"{base} attribute 'weight_exp'", f"{s.weight_exp} != exponent + scale_exp of "
                                                         f"{want['target']} = {s.exponent + target_exp}")
            expect = s.weight_mant.astype(np.float32) * np.float32(2.0 ** s.exponent * float(cfg["vth"]))
            if not np.array_equal(expect, weight):
                r.fail(f"{base}/weight", "differs from weight_mant * 2**exponent * vth")
        syns[want["name"]] = s
    _reject_unexpected(r, "/synapses", syns, cfg["num_layers"])
    labels = cfg["num_labels"]
    pooling = r.attr(r.group("/readout"), "pooling", str)
    if pooling != LOIHI_POOLINGS[readout]:
        r.fail("/readout attribute 'pooling'", f"{pooling!r}, expected {LOIHI_POOLINGS[readout]!r} for "
                                               f"config readout {readout!r}")
    pooled = pooled_width(readout, d)
    mf = LoihiModelFile(precision=precision, config=cfg, host_input=host, populations=pops, synapses=syns,
                        classifier_weight=r.dataset("/readout/weight", np.float32, (labels, pooled), finite=True),
                        classifier_bias=r.dataset("/readout/bias", np.float32, (labels,), finite=True),
                        input_scale_exp=input_scale_exp, tokenizer_files=tokenizer_files, provenance=provenance,
                        schema_version=version)
    if quant:
        problems = loihi_range_problems(mf)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            r.fail("Loihi 2 range check", problems[0] + more)
    return mf


def model_file_profile(path: str | os.PathLike) -> str:
    """The profile a model file holds (its root ``profile`` attribute; "paper" when absent), without
    reading the rest; the full reader validates it."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            profile = f.attrs.get("profile", DEFAULT_PROFILE)
    except (OSError, FileNotFoundError):
        return DEFAULT_PROFILE  # read_model_file reports the problem with the file
    return profile.decode() if isinstance(profile, bytes) else str(profile)
