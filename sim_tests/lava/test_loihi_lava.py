"""The loihi profile on Lava: the graph holds only stock processes between the host input and the
readout; fixed_pt spike counts equal the torch bit-accurate reference exactly (sentences packed
into one row with the margin convention); floating_pt equals the torch float model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hw_export"))

from hw_export.loihi_export import loihi_file_from_model  # noqa: E402
from hw_export.loihi_fixed_point import LoihiFixedPoint, float_reference  # noqa: E402
from lava_spikingbert.lava.lava_import import import_lava_runtime  # noqa: E402
from lava_spikingbert.contract.constants import LAVA_PROCESSES  # noqa: E402
from lava_spikingbert.lava.loihi_graph import (build_network, leaf_processes, plan_rows, run_rows,  # noqa: E402
                                               stock_problems)
from lava_spikingbert.lava.packing import pack_with_margins  # noqa: E402
from test_loihi_export import active_model, sentences  # noqa: E402

import_lava_runtime()


@pytest.fixture(scope="module")
def int8_file():
    model = active_model()
    with torch.no_grad():  # tiny residual gains: their weight_exp is negative (the flooring shift is exercised)
        model.layers[1].res_weight.mul_(0.002)
    mf = loihi_file_from_model(model, "int8")
    assert min(s.weight_exp for s in mf.synapses.values()) < 0
    return mf


@pytest.fixture(scope="module")
def dilated_int8_file():
    return loihi_file_from_model(active_model(dilations=[2, 3]), "int8")


@pytest.mark.parametrize("tag", ["fixed_pt", "floating_pt"])
def test_only_stock_processes_between_input_and_readout(int8_file, tag):
    mf = int8_file
    ids, types = sentences()
    rows = plan_rows(mf, ids, types, tag, row_tokens=24)
    net = build_network(mf, rows, tag, record=list(mf.populations))
    try:
        leaves = leaf_processes(net)
    finally:
        net.cleanup()
    assert stock_problems(leaves) == []
    inner = [r for r in leaves if not r["boundary"]]
    kinds = sorted({r["process"] for r in inner})
    assert kinds == ["lava.proc.lif.process.LIFReset", "lava.proc.sparse.process.DelaySparse",
                     "lava.proc.sparse.process.Sparse"]
    assert set(kinds) == set(LAVA_PROCESSES["loihi"].values())  # what the report counts as stock
    assert len(inner) == len(mf.populations) + len(mf.synapses)
    models = {r["model"].rsplit(".", 1)[1] for r in inner}
    assert models == ({"PyLifResetModelBitAcc", "PySparseModelBitAcc", "PyDelaySparseModelBitAcc"} if tag == "fixed_pt"
                      else {"PyLifResetModelFloat", "PySparseModelFloat", "PyDelaySparseModelFloat"})


def test_stock_check_flags_a_custom_process_inside_the_graph(int8_file, tmp_path):
    """Negative control: a host process feeding a hidden population (not declared boundary) fails."""
    from lava_spikingbert.lava.procs.loihi_boundary import HostCurrent

    mf = int8_file
    ids, types = sentences()
    rows = plan_rows(mf, ids, types, "fixed_pt", row_tokens=24)
    net = build_network(mf, rows, "fixed_pt")
    n = rows.inputs.shape[1] * mf.populations["layer0.hidden"].width
    np.save(tmp_path / "extra.npy", np.zeros((1, n), np.int32))
    extra = HostCurrent(path=str(tmp_path / "extra.npy"), shape=(n,), period=8, length=8, name="host_block")
    extra.s_out.connect(net.neurons["layer0.hidden"].a_in)
    try:
        problems = stock_problems(leaf_processes(net))
    finally:
        net.cleanup()
    assert len(problems) == 1 and problems[0].startswith("host_block: lava_spikingbert.lava.procs.loihi_boundary."
                                                          "HostCurrent")


@pytest.mark.parametrize("which", ["int8_file", "dilated_int8_file"])
def test_fixed_pt_counts_equal_the_bit_accurate_reference(which, request):
    mf = request.getfixturevalue(which)
    ids, types = sentences()
    rows = plan_rows(mf, ids, types, "fixed_pt", row_tokens=2 * mf.margin + sum(len(i) + mf.margin for i in ids))
    assert rows.n_rows == 1  # every sentence in one row, margin-separated
    res = run_rows(mf, rows, "fixed_pt", record_all=True, timeout=300)
    ref = LoihiFixedPoint(mf).run(ids, types)
    for s in range(len(ids)):
        for name in mf.populations:
            assert res.counts[s][name].sum() > 0, f"{name} silent in sentence {s}"
            np.testing.assert_array_equal(res.counts[s][name], ref.counts[s][name], err_msg=f"sentence {s} {name}")
    np.testing.assert_array_equal(res.logits, ref.logits)


def test_margin_is_needed(int8_file):
    """Negative control of the packing convention: with one position less between sentences, a
    token's counts change (the reference, each sentence alone with full margins, disagrees)."""
    mf = int8_file
    ids, types = sentences()
    ref = LoihiFixedPoint(mf).run(ids, types)
    R = mf.margin
    L = 2 * R + sum(len(i) for i in ids) + (R - 1) * (len(ids) - 1)
    a_in = np.zeros((1, L, int(mf.config["hidden_size"])), np.int64)
    starts, pos = [], R
    for i, t in zip(ids, types):
        a_in[0, pos:pos + len(i)] = mf.input_integer(mf.input_current(i, t))
        starts.append(pos)
        pos += len(i) + R - 1
    counts = LoihiFixedPoint(mf).simulate(torch.from_numpy(a_in), int(mf.config["t_conv"]))
    differs = any(not np.array_equal(counts[name][0, s:s + len(i)].numpy(), ref.counts[k][name])
                  for k, (s, i) in enumerate(zip(starts, ids)) for name in mf.populations)
    assert differs
    row, start, n_rows = pack_with_margins(np.array([len(i) for i in ids]), L + R, R)
    assert np.all(np.diff(np.sort(start[row == 0])) >= R)


def test_floating_pt_equals_the_torch_float_model(int8_file):
    mf = int8_file
    ids, types = sentences(seed=3)
    rows = plan_rows(mf, ids, types, "floating_pt", row_tokens=24)
    res = run_rows(mf, rows, "floating_pt", record_all=True, timeout=300)
    ref = float_reference(mf, ids, types)
    np.testing.assert_array_equal(res.logits.argmax(-1), ref.logits.argmax(-1))
    for s in range(len(ids)):
        for name in mf.populations:
            np.testing.assert_array_equal(res.counts[s][name], ref.counts[s][name], err_msg=f"sentence {s} {name}")


def test_no_lava_process_survives():
    import psutil
    kids = [p for p in psutil.Process(os.getpid()).children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())]
    assert kids == []


def test_report_counts_the_synapses_the_graph_stores(int8_file, tmp_path, capsys):
    from hw_export.loihi_report import loihi_hardware
    from lava_spikingbert.cli import main as cli_main
    from lava_spikingbert.contract.model_file import write_model_file
    from lava_spikingbert.lava.loihi_graph import synapse_matrix

    mf = int8_file
    hw = loihi_hardware(mf, 20)
    for entry in hw["synapses"]:
        syn = mf.synapses[entry["name"]]
        assert entry["synapses"] == synapse_matrix(syn, 20, True, mf.config["mixing"]).nnz, entry["name"]
    assert hw["totals"]["neurons"] == 20 * sum(p.width for p in mf.populations.values())
    assert hw["totals"]["share_neurons_in_stock_processes"] == 1.0 and hw["range_problems"] == []
    path = write_model_file(tmp_path / "m.h5", mf)
    assert cli_main(["report", "--model", str(path), "--no-measure", "--seq-len", "20"]) == 0
    assert "profile loihi" in capsys.readouterr().out


@pytest.fixture(scope="module")
def loihi_cli_dir(tmp_path_factory):
    """A tiny loihi checkpoint with the real (local) tokenizer, exported by the CLI, and a 4-sentence SST-2 dev."""
    from transformers import AutoTokenizer

    from lava_spikingbert.cli import main as cli_main
    from lava_spikingbert.model.checkpoint import save_model
    from training.teacher import default_teacher_path

    d = tmp_path_factory.mktemp("loihi_cli")
    tok = AutoTokenizer.from_pretrained(default_teacher_path(), local_files_only=True)
    save_model(active_model(vocab_size=tok.vocab_size), d / "student")
    tok.save_pretrained(d / "student")
    assert cli_main(["export", "--model", str(d / "student"), "--precision", "int8", "--out", str(d / "m.h5")]) == 0
    glue = d / "glue" / "SST-2"
    glue.mkdir(parents=True)
    rows = ["sentence\tlabel", "a charming and moving film\t1", "dull , flat and tedious\t0",
            "the cast is brilliant\t1", "boring story\t0"]
    (glue / "dev.tsv").write_text("\n".join(rows) + "\n")
    return d


@pytest.mark.parametrize("tag", ["fixed_pt", "floating_pt"])
def test_cli_lava_on_a_loihi_file(loihi_cli_dir, tag, tmp_path):
    import json

    from lava_spikingbert.cli import main as cli_main

    d = loihi_cli_dir
    js = tmp_path / "out.json"
    assert cli_main(["lava", "--model", str(d / "m.h5"), "--task", "sst2", "--split", "dev", "--limit", "4",
                     "--tag", tag, "--glue-dir", str(d / "glue"), "--window", "48", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["profile"] == "loihi" and res["n"] == 4 and res["tag"] == tag
    assert res["spike_count_match"] == 1.0 and res["prediction_agreement"] == 1.0
    assert res["rows"] == 1  # four short sentences share one margin-separated row
    assert all(v["lava_spikes"] > 0 and v["sentences_differing"] == 0 for v in res["per_population"].values())


def test_cli_lava_loihi_runs_with_torch_unimportable(loihi_cli_dir):
    import subprocess

    d = loihi_cli_dir
    code = ("import sys\n"
            "sys.modules['torch'] = None\n"
            "sys.modules['transformers'] = None\n"
            "from lava_spikingbert.cli import main\n"
            f"rc = main(['lava', '--model', {str(d / 'm.h5')!r}, '--task', 'sst2', '--glue-dir', {str(d / 'glue')!r},"
            " '--limit', '2', '--no-parity'])\n"
            "assert rc == 0, rc\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') and sys.modules[m]]\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
