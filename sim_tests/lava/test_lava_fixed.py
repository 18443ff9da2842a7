"""Lava fixed_pt graph built from the HDF5 model file vs the integer torch reference
(``hw_export.fixed_point.FixedPointModel``); torch-free Lava path; ``spikingbert lava`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hw_export.export import export_model
from hw_export.fixed_point import FixedPointModel
from hw_export.quantize import quantize_model
from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.model_file import ModelFileError, read_model_file
from lava_spikingbert.lava.fixed import embedding_grid, fixed_params
from lava_spikingbert.lava.runner import run_batch
from lava_spikingbert.lava.schedule import params_for_tag
from lava_spikingbert.lava_eval import loihi2_available
from conftest import tiny_model

ROOT = Path(__file__).resolve().parents[2]
T = 16
L = 8


def batch(n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (n, L), generator=g)
    mask = torch.ones_like(ids)
    for b in range(1, n):
        ids[b, L - 2 * b:] = 0
        mask[b, L - 2 * b:] = 0
    return ids, mask


@pytest.fixture(scope="module", params=["int8", "ternary"])
def model_file(request, tmp_path_factory):
    prec = request.param
    path = tmp_path_factory.mktemp("fx") / f"tiny_{prec}.h5"
    export_model(quantize_model(tiny_model(), prec), prec, path)
    return read_model_file(path)


def lava_fixed(mf, ids, mask, **kw):
    params = fixed_params(mf)
    emb = embedding_grid(mf, ids.numpy(), None, params.layer_norm_eps, params.extra["fixed"]["lam"])
    return run_batch(params, emb, mask.numpy(), t_steps=T, record="all", timeout=120, **kw)


@pytest.mark.lava
def test_fixed_pt_counts_equal_reference(model_file):
    ids, mask = batch()
    ref = FixedPointModel(model_file).run(ids, mask, t_conv=T)
    res = lava_fixed(model_file, ids, mask)
    assert set(res.counts) == set(ref.counts)
    total = 0
    for name, c in ref.counts.items():
        np.testing.assert_array_equal(res.counts[name], c.numpy(), err_msg=name)
        total += int(c.sum())
    assert total > 1000  # the populations are active
    np.testing.assert_array_equal(res.logits.argmax(-1), ref.logits.numpy().argmax(-1))
    np.testing.assert_allclose(res.logits, ref.logits.numpy(), atol=1e-5)


@pytest.mark.lava
@pytest.mark.parametrize("neuron", ["lif_reset_zero", "if_signed_pair"])
def test_fixed_pt_other_neuron_counts_equal_reference(tmp_path, neuron):
    path = tmp_path / f"{neuron}.h5"
    export_model(quantize_model(tiny_model(neuron=neuron), "int8"), "int8", path)
    mf = read_model_file(path)
    ids, mask = batch()
    ref = FixedPointModel(mf).run(ids, mask, t_conv=T)
    res = lava_fixed(mf, ids, mask)
    for name, c in ref.counts.items():
        np.testing.assert_array_equal(res.counts[name], c.numpy(), err_msg=name)
    if neuron == "if_signed_pair":
        assert min(int(c.min()) for c in ref.counts.values()) < 0


@pytest.mark.lava
def test_paper_graph_is_built_from_the_processes_the_report_counts(model_file):
    """The report's paper column (0% of neurons and synapses in stock processes) rests on these
    classes: every population is an IFNeuron, every synapse a TokenLinear or part of the attention."""
    from lava.magma.compiler.compiler import Compiler

    from lava_spikingbert.contract.constants import LAVA_PROCESSES, is_stock_process
    from lava_spikingbert.lava.builder import build_network
    from lava_spikingbert.lava.runner import sim_run_config

    ids, mask = batch()
    params = fixed_params(model_file)
    emb = embedding_grid(model_file, ids.numpy(), None, params.layer_norm_eps, params.extra["fixed"]["lam"])
    net = build_network(params, emb, mask.numpy(), t_steps=T)
    executable = Compiler().compile(net.source, sim_run_config("fixed_pt"))
    leaves = {proc.name: f"{type(proc).__module__}.{type(proc).__name__}" for proc in executable.proc_builders}
    paper = LAVA_PROCESSES["paper"]
    assert {leaves[name] for name in model_file.populations} == {paper["population"]}
    built = list(leaves.values())
    into_attention = [c for c in model_file.connections.values() if c.target.endswith(".attention")]
    assert built.count(paper["connection"]) == len(model_file.connections) - len(into_attention)
    assert built.count(paper["attention_query"]) == len(into_attention) == model_file.num_layers
    assert not any(is_stock_process(cls) for cls in built)


@pytest.mark.lava
def test_fixed_pt_reset_leaks_nothing(model_file):
    """Sentence k's counts do not depend on the sentences run before it in the same graph."""
    ids, mask = batch(3, seed=2)
    together = lava_fixed(model_file, ids, mask)
    alone = lava_fixed(model_file, ids[2:], mask[2:])
    for name, c in alone.counts.items():
        np.testing.assert_array_equal(together.counts[name][2:], c, err_msg=name)


def test_corrupt_and_wrong_version_files_fail_clearly(tmp_path, model_file):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ModelFileError):
        params_for_tag(read_model_file(bad), "fixed_pt")
    good = Path(model_file.path)
    wrong = tmp_path / "wrong.h5"
    wrong.write_bytes(good.read_bytes())
    with h5py.File(wrong, "r+") as f:
        for key in ("schema_version", "format_version", "version"):
            if key in f.attrs:
                f.attrs[key] = 999
    with pytest.raises(ModelFileError):
        params_for_tag(read_model_file(wrong), "fixed_pt")
    assert issubclass(ModelFileError, SpikingBertError)  # the CLI prints the project's errors as one line


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    """A tiny int8 model file with the real (local) bert-base-uncased tokenizer stored in it."""
    from transformers import AutoTokenizer

    from training.teacher import default_teacher_path

    d = tmp_path_factory.mktemp("cli")
    tok = AutoTokenizer.from_pretrained(default_teacher_path(), local_files_only=True)
    model = quantize_model(tiny_model(vocab_size=tok.vocab_size, max_length=16, max_position_embeddings=16), "int8")
    model.save_pretrained(d / "student")
    tok.save_pretrained(d / "student")
    export_model(d / "student", "int8", d / "tiny.h5")
    glue = d / "glue" / "SST-2"
    glue.mkdir(parents=True)
    rows = ["sentence\tlabel", "a charming and moving film\t1", "dull , flat and tedious\t0",
            "the cast is brilliant\t1", "boring story\t0"]
    (glue / "dev.tsv").write_text("\n".join(rows) + "\n")
    return d


@pytest.mark.lava
@pytest.mark.parametrize("tag,pack", [("fixed_pt", False), ("floating_pt", False), ("fixed_pt", True)])
def test_cli_lava_writes_json(cli_model, tag, pack, tmp_path):
    """``spikingbert lava`` end to end; fixed_pt must match the torch fixed-point reference exactly,
    also with several sentences packed side by side per window (block-diagonal attention)."""
    js = tmp_path / "out.json"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    extra = ["--window", "16"] if pack else ["--no-pack"]  # packing is the default
    r = subprocess.run([sys.executable, "-m", "lava_spikingbert.cli", "lava", "--model", str(cli_model / "tiny.h5"),
                        "--task", "sst2", "--split", "dev", "--limit", "4", "--tag", tag, "--t-conv", "8",
                        "--glue-dir", str(cli_model / "glue"), "--json", str(js), *extra],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(js.read_text())
    for key in ("metrics", "prediction_agreement", "spike_count_match", "sentences_per_s", "n", "tag", "task",
                "split", "t_conv", "backend", "precision", "wall_s", "per_population_asr_diff",
                "reference_sentences_per_s"):
        assert key in out, key
    assert out["reference_sentences_per_s"] > 0
    assert out["n"] == 4 and out["tag"] == tag and out["backend"] == "lava-sim" and "accuracy" in out["metrics"]
    assert len(out["per_population_asr_diff"]) == 1 + 2 * 6  # embed + 6 populations per layer
    assert out["packed"] is pack
    if pack:  # 4 short sentences (<= 8 tokens each) fit 2 windows of 16 tokens
        assert out["windows"] < out["n"]
    if tag == "fixed_pt":
        assert out["spike_count_match"] == 1.0 and out["prediction_agreement"] == 1.0
    else:  # float32 in Lava and in torch: rounding may move a spike, not the predictions of 4 sentences
        assert out["prediction_agreement"] >= 0.75, out
        assert max(out["per_population_asr_diff"].values()) < 0.02, out["per_population_asr_diff"]


def test_cli_lava_errors_are_one_line(tmp_path, cli_model):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    r = subprocess.run([sys.executable, "-m", "lava_spikingbert.cli", "lava", "--model", str(bad), "--task", "sst2",
                        "--glue-dir", str(cli_model / "glue")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.lava
@pytest.mark.skipif(loihi2_available(),
                    reason="lava-loihi is installed: --backend loihi2 would select Loihi2HwCfg")
def test_cli_lava_loihi2_without_lava_loihi_says_so_and_simulates(tmp_path, cli_model):
    """Without lava-loihi, --backend loihi2 prints one clear line (no traceback), runs the simulator
    and labels the result as simulator numbers."""
    js = tmp_path / "out.json"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run([sys.executable, "-m", "lava_spikingbert.cli", "lava", "--model", str(cli_model / "tiny.h5"),
                        "--backend", "loihi2", "--task", "sst2", "--limit", "2", "--t-conv", "4", "--no-parity",
                        "--glue-dir", str(cli_model / "glue"), "--json", str(js)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    notes = [line for line in r.stderr.splitlines() if "lava-loihi is not installed" in line]
    assert len(notes) == 1, r.stderr
    out = json.loads(js.read_text())
    assert out["backend"] == "lava-sim" and out["requested_backend"] == "loihi2"
    assert "Loihi2SimCfg" in out["backend_note"] and out["n"] == 2

@pytest.mark.lava
def test_evaluate_with_parallel_workers_matches_one_process(cli_model):
    """Two worker processes (each with its own Lava runtimes) give the same predictions and exact
    parity as one process, and leave no process behind."""
    import psutil

    from lava_spikingbert.lava_eval import evaluate

    before = {c.pid for c in psutil.Process().children(recursive=True)}
    kw = dict(task="sst2", split="dev", limit=4, tag="fixed_pt", t_conv=4, glue_dir=str(cli_model / "glue"),
              pack=False, batch_size=1)
    one = evaluate(cli_model / "tiny.h5", workers=1, **kw)
    two = evaluate(cli_model / "tiny.h5", workers=2, **kw)
    assert two["workers"] == 2 and two["lava_runs"] == 4
    assert two["spike_count_match"] == 1.0 and two["prediction_agreement"] == 1.0
    assert two["metrics"] == one["metrics"]
    assert two["per_population_asr_diff"] == one["per_population_asr_diff"]
    from lava_spikingbert.lava.runner import _is_resource_tracker  # shared helper, exits with this process

    left = [c for c in psutil.Process().children(recursive=True) if c.pid not in before and c.is_running()
            and c.status() != psutil.STATUS_ZOMBIE and not _is_resource_tracker(c)]
    assert not left, [c.cmdline() for c in left]


@pytest.mark.lava
def test_mask_negative_from_the_file_is_honoured(tmp_path, model_file):
    """The attention-mask value is the model file's: changed in the file, the Lava graph and the
    fixed-point reference both use the new value and still give identical counts."""
    changed = tmp_path / "mask.h5"
    changed.write_bytes(Path(model_file.path).read_bytes())
    with h5py.File(changed, "r+") as f:
        for i in range(model_file.num_layers):
            f[f"blocks/layer{i}.attention"].attrs["mask_negative"] = -3.0  # small: padded keys still count
    mf = read_model_file(changed)
    assert mf.mask_negative == -3.0 and params_for_tag(mf, "fixed_pt").mask_negative == -3.0
    ids, mask = batch()
    ref = FixedPointModel(mf).run(ids, mask, t_conv=T)
    res = lava_fixed(mf, ids, mask)
    for name, c in ref.counts.items():
        np.testing.assert_array_equal(res.counts[name], c.numpy(), err_msg=name)
    before = FixedPointModel(model_file).run(ids, mask, t_conv=T)
    assert any(not torch.equal(before.counts[n], ref.counts[n]) for n in ref.counts)  # the value matters


@pytest.mark.lava
def test_lava_command_runs_with_torch_unimportable(cli_model):
    """``spikingbert lava --no-parity`` end to end in a process where importing torch (or
    transformers) fails: the Lava run path needs neither."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
        "sys.modules['transformers'] = None\n"
        "from lava_spikingbert.cli import main\n"
        f"rc = main(['lava', '--model', {str(cli_model / 'tiny.h5')!r}, '--task', 'sst2', '--glue-dir',"
        f" {str(cli_model / 'glue')!r}, '--limit', '2', '--t-conv', '4', '--no-parity'])\n"
        "assert rc == 0, rc\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') and sys.modules[m]]\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
