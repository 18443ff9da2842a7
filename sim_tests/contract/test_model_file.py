"""The model file: round trips of every precision, the integer view, reader errors, the layout."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from hw_export.export import model_from_file
from hw_export.quantize import integer_view, quantize_model
from lava_spikingbert.contract.model_file import SCHEMA_VERSION, ModelFileError, read_model_file
from lava_spikingbert.lava.params import params_from_file
from lava_spikingbert.parity import params_from_model
from conftest import QUANT, ROOT, tiny_batch, tiny_model


def _params_equal(a, b) -> None:
    for field in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "vth", "neuron",
                  "t_conv", "layer_norm_eps", "num_labels", "problem_type", "max_length"):
        assert getattr(a, field) == getattr(b, field), field
    for la, lb in zip(a.layers, b.layers):
        for name in ("query", "key", "value", "attn_out", "intermediate", "output"):
            assert np.array_equal(getattr(la, name).weight, getattr(lb, name).weight), name
            assert np.array_equal(getattr(la, name).bias, getattr(lb, name).bias), name
        for name in ("attn_norm", "output_norm"):
            assert np.array_equal(getattr(la, name).gamma, getattr(lb, name).gamma)
            assert np.array_equal(getattr(la, name).beta, getattr(lb, name).beta)
    assert np.array_equal(a.classifier.weight, b.classifier.weight)
    assert np.array_equal(a.classifier.bias, b.classifier.bias)
    for k in ("word", "position", "token_type"):
        assert np.array_equal(getattr(a.embeddings, k), getattr(b.embeddings, k))
    assert np.array_equal(a.embeddings.norm.gamma, b.embeddings.norm.gamma)


# ------------------------------------------------------------------------------- round trip
def test_fp32_round_trip_gives_the_models_lava_params(files):
    d, f = files
    mf = read_model_file(f["fp32"])
    assert mf.schema_version == SCHEMA_VERSION and mf.precision == "fp32"
    _params_equal(params_from_file(mf), params_from_model(tiny_model()))
    assert set(mf.populations) == {"embed"} | {f"layer{i}.{p}" for i in range(2) for p in
                                               ("key", "value", "context", "attn_out", "intermediate", "output")}
    assert [p.schedule_index for p in mf.populations.values()] == list(range(13))
    assert mf.populations["layer1.output"].depth == 10 and mf.populations["layer0.context"].depth == 2
    with pytest.raises(ModelFileError, match="no integer view"):
        mf.integer_view()


@pytest.mark.parametrize("prec", QUANT)
def test_quantized_round_trip_integer_view(files, prec):
    d, f = files
    mf = read_model_file(f[prec])
    qmodel = quantize_model(tiny_model(), prec)
    view = integer_view(qmodel)
    assert mf.integer_view().equals(view), mf.integer_view().differences(view)
    _params_equal(params_from_file(mf), params_from_model(qmodel))
    for c in mf.connections.values():
        assert c.weight_mant.dtype == np.int16 and c.sign_mode in ("mixed", "excitatory", "inhibitory")
        if c.sign_mode == "mixed":
            assert np.all(c.weight_mant % 2 == 0) and c.weight_mant.min() >= -256 and c.weight_mant.max() <= 254
        if prec != "int8":
            assert np.unique(np.abs(c.weight_mant[c.weight_mant != 0])).size == 1
        assert c.weight_exp == c.exponent + mf.quantization["scale_exp"]
        if c.target_kind == "neuron":
            assert c.bias_mant is not None and 0 <= c.bias_exp <= 7
            lsb = mf.current_unit / 64 * 2 ** c.bias_exp
            assert np.all(np.abs(c.bias_mant * lsb - c.bias) <= lsb / 2 + 1e-9)
    # the torch model rebuilt from the file simulates exactly the same weights
    ids, mask = tiny_batch()
    assert torch.equal(model_from_file(mf).predict_logits(ids, mask), qmodel.predict_logits(ids, mask))


def test_schema_module_needs_no_torch(files):
    d, f = files
    code = ("import sys; from lava_spikingbert.contract.model_file import read_model_file; "
            f"m = read_model_file({str(f['int8'])!r}); m.integer_view(); "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


# ------------------------------------------------------------------------------- reader errors
def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_truncated_file(files, tmp_path):
    d, f = files
    data = f["int8"].read_bytes()
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        read_model_file(bad)


def test_foreign_and_non_hdf5_files(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h:
        h.create_dataset("layer/0/weight", data=np.zeros((2, 2)))
    with pytest.raises(ModelFileError, match="foreign HDF5 file"):
        read_model_file(foreign)
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="cannot open as HDF5"):
        read_model_file(text)
    with pytest.raises(ModelFileError, match="no such file"):
        read_model_file(tmp_path / "missing.h5")


def test_wrong_schema_version(files, tmp_path):
    d, f = files
    bad = _copy(f["int8"], tmp_path / "v99.h5")
    with h5py.File(bad, "r+") as h:
        h.attrs["schema_version"] = 99
    with pytest.raises(ModelFileError, match="schema version 99 .*supports versions 1, 2"):
        read_model_file(bad)
    old = _copy(f["int8"], tmp_path / "v1.h5")  # version 2 only added the loihi readout choice
    with h5py.File(old, "r+") as h:
        h.attrs["schema_version"] = 1
    assert read_model_file(old).schema_version == 1


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.__delitem__("connections/layer0.key/weight_mant"), "/connections/layer0.key/weight_mant: required"),
    (lambda h: h.__delitem__("blocks/layer1.attn_norm/gamma"), "/blocks/layer1.attn_norm/gamma: required"),
    (lambda h: h.__delitem__("populations/layer1.value"), "/populations/layer1.value: required group"),
    (lambda h: (h.__delitem__("classifier/weight"), h.create_dataset("classifier/weight", data=np.zeros((2, 31),
                                                                                                       np.float32))),
     r"/classifier/weight: shape \(2, 31\), expected \(2, 32\)"),
    (lambda h: (h.__delitem__("embeddings/word"), h.create_dataset("embeddings/word", data=np.zeros((64, 32)))),
     "/embeddings/word: dtype float64, expected float32"),
    (lambda h: h["connections/layer0.query/weight_mant"].__setitem__((0, 0), 3), "odd values in a mixed-sign"),
    (lambda h: h["connections/layer0.value/bias_mant"].__setitem__(0, 5000), "outside the 13-bit range"),
    (lambda h: h["connections/layer0.key"].attrs.__setitem__("weight_exp", 40), "weight_exp' : 40 != exponent"
     .replace("' :", "':")),
])
def test_reader_names_the_dataset(files, tmp_path, edit, message):
    d, f = files
    bad = _copy(f["int8"], tmp_path / "bad.h5")
    with h5py.File(bad, "r+") as h:
        edit(h)
    with pytest.raises(ModelFileError, match=message):
        read_model_file(bad)


# ------------------------------------------------------------------------------- fixed point
def test_graph_layout_uses_the_shared_names_and_depths():
    from lava_spikingbert.contract import constants, model_file
    from lava_spikingbert.contract.depths import population_depths
    from lava_spikingbert.model import quantizers

    assert constants.MANT_RANGE == {"mixed": (quantizers.MIXED_MIN, quantizers.MIXED_MAX),
                                 "excitatory": (quantizers.EXC_MIN, quantizers.EXC_MAX),
                                 "inhibitory": (quantizers.INH_MIN, quantizers.INH_MAX)}
    pops, _, _ = model_file.graph_layout({"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 3})
    assert [p["name"] for p in pops] == constants.population_names(3)
    assert {p["name"]: p["lava_depth"] for p in pops} == population_depths(3, 0)
