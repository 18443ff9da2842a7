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
SCHEMA_VERSION = 1
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
@dataclass
class ModelFile:
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
    def quantized(self) -> bool:
        return self.precision in QUANTIZED_MODES

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
        _write(f, mf)
    mf.path = str(path)
    return path


def _write(f: h5py.File, mf: ModelFile) -> None:
    quant = mf.precision in QUANTIZED_MODES
    f.attrs["format"] = FORMAT
    f.attrs["schema_version"] = np.int64(SCHEMA_VERSION)
    f.attrs["precision"] = mf.precision
    f.attrs["profile"] = mf.profile
    g = f.create_group("config")
    g.attrs["json"] = json.dumps(mf.config, sort_keys=True)
    for k, v in mf.config.items():
        if isinstance(v, (bool, int, float, str)):
            g.attrs[k] = v
    g = f.create_group("provenance")
    g.attrs["json"] = json.dumps(mf.provenance, sort_keys=True, default=str)
    g = f.create_group("tokenizer")
    g.attrs["files"] = json.dumps(sorted(mf.tokenizer_files))
    for name, data in sorted(mf.tokenizer_files.items()):
        g.create_dataset(name, data=np.frombuffer(data, dtype=np.uint8))
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


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """Read and validate a model file; raises :class:`ModelFileError` naming the problem."""
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


def _read(r: _Reader) -> ModelFile:
    """The whole file, section by section; each step validates what it reads."""
    version, precision, profile = _read_header(r)
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
    if version != SCHEMA_VERSION:
        newer = "newer" if version > SCHEMA_VERSION else "older"
        r.fail("/ attribute 'schema_version'",
               f"schema version {version} ({newer} than this reader); this reader supports version {SCHEMA_VERSION}")
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
