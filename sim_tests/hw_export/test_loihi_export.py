"""The loihi profile's model file: export (int8 grid = the torch model's quantizer), round trip,
the Loihi 2 range check refusing bad models and files, and one-line errors naming the field."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from hw_export.loihi_export import LoihiExportError, export_loihi, loihi_file_from_model, model_from_loihi_file
from hw_export.loihi_fixed_point import LoihiFixedPoint, float_reference
from lava_spikingbert.cli import main as cli_main
from lava_spikingbert.contract.model_file import (SCHEMA_VERSION, LoihiModelFile, ModelFileError, loihi_range_problems,
                                                  model_file_profile, read_model_file)
from lava_spikingbert.model.checkpoint import read_profile, save_model
from lava_spikingbert.model.loihi import LoihiConfig, LoihiSpikingMixer
from lava_spikingbert.model.quantizers import make_quantizer

TINY = dict(vocab_size=50, embed_size=16, hidden_size=12, intermediate_size=20, num_layers=2, kernel_size=3,
            max_length=24, max_position_embeddings=32, fit_size=None, dropout=0.0, t_conv=8)


def active_model(seed: int = 0, **overrides) -> LoihiSpikingMixer:
    """A tiny loihi student with non-zero biases, so every population fires."""
    torch.manual_seed(seed)
    model = LoihiSpikingMixer(LoihiConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for layer in model.layers:
            layer.mix_bias.normal_(0.2, 0.3)
            layer.fc1.bias.normal_(0.1, 0.3)
            layer.fc2.bias.normal_(0.1, 0.3)
        model.input_map.bias.normal_(0.3, 0.5)
    return model.eval()


def sentences(lengths=(5, 3, 7, 4), seed: int = 0, vocab: int = 50):
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, vocab, n) for n in lengths]
    return ids, [np.zeros_like(i) for i in ids]


def test_int8_file_holds_the_torch_quantizer_grid_and_round_trips(tmp_path):
    model = active_model()
    mf = export_loihi(model, "int8", tmp_path / "m.h5")
    assert isinstance(mf, LoihiModelFile) and mf.profile == "loihi" and model_file_profile(tmp_path / "m.h5") == "loihi"
    assert mf.margin == 2 * (3 - 1) // 2 and mf.config["margin"] == mf.margin
    q = make_quantizer("int8", 1.0)
    w = {"layer1.mix": model.layers[1].mix_weight[:, 0, :], "layer0.fc1": model.layers[0].fc1.weight,
         "layer1.fc2": model.layers[1].fc2.weight, "layer0.res": model.layers[0].res_weight}
    for name, tensor in w.items():
        iw = q.integer(tensor)
        s = mf.synapses[name]
        np.testing.assert_array_equal(s.weight_mant, iw.mantissa.numpy())
        assert s.exponent == iw.exponent and s.sign_mode == iw.sign_mode
        np.testing.assert_array_equal(s.weight, q.quantize(tensor).numpy())
        assert s.weight_exp == s.exponent + mf.populations[s.target].scale_exp
    assert loihi_range_problems(mf) == []
    # the float model rebuilt from the file is the torch int8 model
    ids = torch.tensor([[3, 9, 4, 7, 0, 0], [5, 6, 7, 8, 9, 10]])
    mask = (ids != 0).long()
    model.set_weights("int8")
    with torch.no_grad():
        a = model(ids, mask, mode="simulate").logits
        b = model_from_loihi_file(mf)(ids, mask, mode="simulate").logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # fp32 files hold the latent weights and have no fixed-point form
    mf32 = export_loihi(active_model(), "fp32", tmp_path / "f.h5")
    assert mf32.precision == "fp32" and mf32.input_scale_exp is None
    np.testing.assert_array_equal(mf32.synapses["layer0.fc1"].weight, model.layers[0].fc1.weight.detach().numpy())


@pytest.mark.parametrize("readout", ["mean", "max", "mean_max"])
def test_file_readout_is_the_models(tmp_path, readout):
    """The file records the readout's pooling, and its host readout (numpy, as the Lava run uses it)
    gives the torch model's logits for the same spike counts."""
    model = active_model(readout=readout)
    mf = export_loihi(model, "fp32", tmp_path / "m.h5")
    assert mf.pooling == readout and mf.classifier_weight.shape[1] == (2 if readout == "mean_max" else 1) * 12
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION and readout.replace("_", "_and_") in f["readout"].attrs["pooling"]
    ids, types = sentences()
    ref = float_reference(mf, ids, types)
    for sentence_ids, counts, logits in zip(ids, ref.counts, ref.logits):
        ids_t = torch.from_numpy(np.asarray(sentence_ids))[None]
        with torch.no_grad():
            want = model(ids_t, torch.ones_like(ids_t), mode="simulate").logits[0].numpy()
        np.testing.assert_allclose(mf.readout(counts[mf.output_population], mf.config["t_conv"]), want, atol=1e-5)
        np.testing.assert_allclose(logits, want, atol=1e-5)


def test_fixed_reference_follows_the_float_model_of_the_same_weights():
    """The integer reference differs from the float int8 model only by the bias and input rounding:
    its spike counts agree with the float model's on nearly every neuron (a sanity check of the
    fixed-point mapping, not an exactness claim)."""
    mf = loihi_file_from_model(active_model(), "int8")
    ids, types = sentences()
    fixed = LoihiFixedPoint(mf).run(ids, types)
    flt = float_reference(mf, ids, types)
    total = differ = 0
    for a, b in zip(fixed.counts, flt.counts):
        for name in a:
            total += a[name].size
            differ += int((a[name] != b[name]).sum())
            assert a[name].sum() > 0, f"{name} silent"
    assert differ / total < 0.02


def test_dilated_model_round_trips_and_its_fixed_reference_follows_it(tmp_path):
    """A model with per-layer dilations: the file records them (schema 3) with the margin they
    imply, the float model rebuilt from the file is the torch int8 model, and the integer reference
    (whose token mixing reads the file's dilations) follows it."""
    model = active_model(dilations=[2, 3])
    mf = export_loihi(model, "int8", tmp_path / "m.h5")
    assert mf.config["dilations"] == [2, 3] and mf.margin == (2 + 3) * (3 - 1) // 2
    assert [mf.synapses[f"layer{i}.mix"].dilation for i in range(2)] == [2, 3]
    assert mf.schema_version == 3
    ids = torch.tensor([[3, 9, 4, 7, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11, 12]])
    mask = (ids != 0).long()
    model.set_weights("int8")
    with torch.no_grad():
        a = model(ids, mask, mode="simulate").activity.spike_counts
        b = model_from_loihi_file(mf)(ids, mask, mode="simulate").activity.spike_counts
    for name in a:
        assert torch.equal(a[name], b[name]), name
    w = sentences()
    fixed = LoihiFixedPoint(mf).run(*w)
    flt = float_reference(mf, *w)
    total = differ = 0
    for x, y in zip(fixed.counts, flt.counts):
        for name in x:
            total += x[name].size
            differ += int((x[name] != y[name]).sum())
    assert differ / total < 0.02
    # control: the same weights read without dilations are a different network
    undilated = LoihiFixedPoint(mf)
    for s in undilated.mf.synapses.values():
        s.dilation = 1
    wd = undilated.run(*w)
    assert any(not np.array_equal(x[name], y[name]) for x, y in zip(fixed.counts, wd.counts) for name in x)


def test_export_refuses_out_of_range_models():
    model = active_model()
    with torch.no_grad():
        model.layers[0].fc1.weight.mul_(1e-7)  # weight_exp far below -8 at any threshold scale
    with pytest.raises(LoihiExportError, match=r"synapse layer0\.fc1: weight_exp -\d+ outside \[-8, 7\]"):
        loihi_file_from_model(model, "int8")
    model = active_model()
    with torch.no_grad():
        model.layers[1].fc2.bias[3] = 1e5  # beyond a 13-bit mantissa with bias_exp <= 7 at any scale
    with pytest.raises(LoihiExportError, match=r"population layer1\.out: bias 100000 does not fit"):
        loihi_file_from_model(model, "int8")


def test_range_check_names_population_and_value():
    mf = loihi_file_from_model(active_model(), "int8")
    mf.synapses["layer0.fc1"].weight_exp = 7  # every hidden neuron's worst-case sum now exceeds 16 bits
    mf.populations["layer1.mix"].bias_mant[2] = 5000
    mf.synapses["layer1.fc2"].weight_mant[0, 0] = 3  # odd mantissa in a mixed matrix
    problems = loihi_range_problems(mf)
    assert any(p.startswith("population layer0.hidden: worst-case a_in ") and "exceeds 16 bits (32767)" in p
               for p in problems), problems
    assert "population layer1.mix: bias mantissa 5000 outside 13 bits [-4096, 4095]" in problems
    assert any(p.startswith("synapse layer1.fc2: odd weight mantissa 3") for p in problems), problems


def _set_mantissa(f, name: str, value: int) -> None:
    """Change one mantissa and its float weight consistently (only the range check can object)."""
    g = f[f"synapses/{name}"]
    g["weight_mant"][0, 0] = value
    g["weight"][0, 0] = np.float32(value * 2.0 ** int(g.attrs["exponent"]))


def _corrupt(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f["populations/layer0.hidden"].attrs.__setitem__("bias_exp", 9),
     r"Loihi 2 range check: population layer0\.hidden: bias_exp 9 outside \[0, 7\]"),
    (lambda f: _set_mantissa(f, "layer1.fc1", 300), r"synapse layer1\.fc1: weight mantissa 300 outside the 8-bit mixed range"),
    (lambda f: f["config"].attrs.__setitem__("json", json.dumps({**json.loads(f["config"].attrs["json"]), "margin": 1})),
     r"/config field 'margin': 1, expected 2"),
    (lambda f: f.attrs.__setitem__("profile", "mystery"), r"/ attribute 'profile': must be one of"),
    (lambda f: f["config"].attrs.__setitem__("json", json.dumps({**json.loads(f["config"].attrs["json"]),
                                                                  "dilations": [1, 0]})),
     r"/config field 'dilations': must be null or 2 positive integers"),
    (lambda f: f["config"].attrs.__setitem__("json", json.dumps({**json.loads(f["config"].attrs["json"]),
                                                                  "dilations": [1, 2]})),
     r"/config field 'margin': 2, expected 3 from num_layers, kernel_size, mixing, dilations"),
    (lambda f: (f["config"].attrs.__setitem__("json", json.dumps({**json.loads(f["config"].attrs["json"]),
                                                                   "dilations": [1, 2], "margin": 3})),
                f.attrs.__setitem__("schema_version", 2)),
     r"/config field 'dilations': \[1, 2\] needs schema version 3"),
    (lambda f: f["synapses/layer0.res"].attrs.__setitem__("delay", 0), r"/synapses/layer0\.res attribute 'delay'"),
    (lambda f: f["populations/layer0.out"].attrs.__setitem__("reset_offset", 0),
     r"/populations/layer0\.out attribute 'reset_offset'"),
    (lambda f: f["synapses/layer0.fc2"].attrs.__setitem__("weight_exp", 3), r"/synapses/layer0\.fc2 attribute 'weight_exp'"),
    (lambda f: f.__delitem__("host_input/weight"), r"/host_input/weight: required dataset is missing"),
    (lambda f: f.__delitem__("populations/layer1.hidden"), r"/populations/layer1\.hidden: required group is missing"),
])
def test_bad_files_give_one_line_errors(tmp_path, edit, message):
    path = tmp_path / "m.h5"
    export_loihi(active_model(), "int8", path)
    _corrupt(path, edit)
    with pytest.raises(ModelFileError, match=message) as info:
        read_model_file(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_cli_export_dispatches_on_the_checkpoint_profile(tmp_path, capsys):
    ckpt = save_model(active_model(), tmp_path / "ckpt")
    assert read_profile(ckpt) == "loihi"
    assert cli_main(["export", "--model", str(ckpt), "--precision", "int8", "--out", str(tmp_path / "m.h5")]) == 0
    assert "profile loihi" in capsys.readouterr().out
    assert read_model_file(tmp_path / "m.h5").profile == "loihi"
    assert cli_main(["export", "--model", str(ckpt), "--precision", "ternary", "--out", str(tmp_path / "t.h5")]) == 1
    assert "loihi profile exports" in capsys.readouterr().err


def test_report_puts_the_two_profiles_side_by_side(tmp_path, capsys):
    """``report --compare``: the loihi file's work sits in stock processes, the paper file's in none."""
    from conftest import tiny_model
    from hw_export.export import export_model
    from hw_export.quantize import quantize_model
    from lava_spikingbert.contract.model_file import write_model_file

    loihi = write_model_file(tmp_path / "loihi.h5", loihi_file_from_model(active_model(), "int8"))
    paper = tmp_path / "paper.h5"
    export_model(quantize_model(tiny_model(), "int8"), "int8", paper)
    out = tmp_path / "side.json"
    assert cli_main(["report", "--model", str(loihi), "--compare", str(paper), "--inputs", "random",
                     "--n-sentences", "3", "--t-list", "4", "--seq-len", "12", "--fixed-point-sentences", "0",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")[1:] for line in text.splitlines()
            if line.startswith("| ")}
    assert rows["profile, precision"] == ["loihi, int8", "paper, int8"]
    assert rows["neurons in stock processes (neurocore model)"] == ["100.0%", "0.0%"]
    assert rows["synapses in stock processes"] == ["100.0%", "0.0%"]
    assert rows["T=4: synaptic accumulates in stock processes"] == ["100.0%", "0.0%"]
    report = json.loads(out.read_text())
    assert report["profile"] == "loihi" and report["compared_with"]["profile"] == "paper"
    assert report["compared_with"]["hardware"]["seq_len"] == report["hardware"]["seq_len"] == 12
    paper_ops = report["compared_with"]["operations"]["4"]
    assert paper_ops["synaptic_acc_per_sentence"] > 0 and sum(paper_ops["chip_host_values_per_sentence"].values()) > 0
    assert cli_main(["report", "--model", str(loihi), "--compare", str(tmp_path / "nope.h5"), "--no-measure"]) == 1
    assert "--compare: model file not found" in capsys.readouterr().err
