"""Files from strangers are safe and runs cannot collide (issue 21): no pickle on any load path,
bounded names and sizes from model files and checkpoints, no remote code, one run per output
directory, bad data and bad values refused with one line before any work."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from lava_spikingbert.cli import main
from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.contract.model_file import ModelFile, ModelFileError, read_model_file
from lava_spikingbert.contract.run_lock import DirectoryLockedError, directory_lock, lock_path
from lava_spikingbert.model.config import ConfigError, SpikingBertConfig
from lava_spikingbert.model.encoder import SpikingBert
from training.readers import custom_task_spec, load_custom, load_glue, plain_text_corpus
from training.safe_state import TrainingStateError, load_state, save_state
from training.tasks import DataError
from training.teacher import finetune_teacher

from conftest import tiny_model
from training_fixtures import glue_dir, tiny_teacher_dir  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]


def _error_line(err: str) -> str:
    """The one error line of a command's stderr (transformers' own weight-loading bar aside)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------ 1. no pickle
class _Marker:
    """Unpickling this object creates a file: proof that a load path ran code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _malicious_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"step": 1, "payload": _Marker(marker)}))


def test_crafted_pickle_itself_runs_code(tmp_path):
    """The fixture works: unpickling it does create the marker (so the tests below can fail)."""
    state, marker = tmp_path / "s.pt", tmp_path / "ran"
    _malicious_pickle(state, marker)
    pickle.loads(state.read_bytes())
    assert marker.exists()


def test_teacher_never_unpickles_a_state_file(tmp_path, glue_dir, tiny_teacher_dir):  # noqa: F811
    out, marker = tmp_path / "teacher", tmp_path / "ran"
    _malicious_pickle(out / "training_state" / "state.pt", marker)
    kw = dict(glue_dir=glue_dir, teacher_path=tiny_teacher_dir, epochs=1, batch_size=8, max_length=16,
              progress=False)
    with pytest.raises(FileExistsError, match="training state"):  # exists: refused without reading it
        finetune_teacher("sst2", out, **kw)
    with pytest.raises(TrainingStateError, match="pickle"):
        finetune_teacher("sst2", out, resume=True, **kw)
    # a pickle under the new name is not a safetensors file
    os.replace(out / "training_state" / "state.pt", out / "training_state" / "state.safetensors")
    with pytest.raises(TrainingStateError, match="unreadable"):
        finetune_teacher("sst2", out, resume=True, **kw)
    assert not marker.exists()


def test_distill_resume_never_unpickles_a_state_file(tmp_path, glue_dir, tiny_teacher_dir, capsys):  # noqa: F811
    out, marker = tmp_path / "stage", tmp_path / "ran"
    args = ["distill", "--stage", "prediction", "--task", "sst2", "--glue-dir", str(glue_dir), "--teacher",
            str(tiny_teacher_dir), "--layers", "1", "--steps", "2", "--batch-size", "8", "--max-length", "16",
            "--out", str(out)]
    _malicious_pickle(out / "checkpoint" / "training_state.pt", marker)
    assert main(args) == 2  # an existing checkpoint without --resume / --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 1
    assert "pickle" in _error_line(capsys.readouterr().err)
    for garbage in (b"", b"not a safetensors file", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"):
        (out / "checkpoint" / "training_state.pt").unlink(missing_ok=True)
        (out / "checkpoint" / "training_state.safetensors").write_bytes(garbage)
        assert main(args + ["--resume"]) == 1
        assert "training_state.safetensors" in _error_line(capsys.readouterr().err)
    assert not marker.exists()
    # a real resumable checkpoint whose weights file is corrupt
    assert main(args + ["--overwrite", "--run-steps", "1"]) == 0
    assert load_state(out / "checkpoint" / "training_state.safetensors")["step"] == 1
    (out / "checkpoint" / "model.safetensors").write_bytes(b"\x00" * 16)
    assert main(args + ["--resume"]) == 1
    assert "model.safetensors" in _error_line(capsys.readouterr().err)


def test_state_round_trip_and_foreign_safetensors(tmp_path):
    import random

    import torch
    from safetensors.torch import save_file

    state = {"rng": (random.getstate(), np.random.get_state(), torch.get_rng_state()), "opt": {0: {"step": 3}},
             "x": float("inf"), "t": torch.arange(5, dtype=torch.int16), "s": "text", "n": None}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["rng"][0] == state["rng"][0] and back["rng"][1][1].dtype == np.uint32
    assert np.array_equal(back["rng"][1][1], state["rng"][1][1]) and torch.equal(back["rng"][2], state["rng"][2])
    assert back["opt"] == {0: {"step": 3}} and back["x"] == float("inf") and torch.equal(back["t"], state["t"])
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))  # safetensors, but not a state
    with pytest.raises(TrainingStateError, match="not a training state"):
        load_state(tmp_path / "model.safetensors")


def test_no_pickle_load_in_the_sources():
    """Every torch.load states weights_only=True; nothing imports pickle or loads numpy pickles."""
    bad = []
    for folder in ("lava_spikingbert", "training", "hw_export", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for call in re.findall(r"torch\.load\([^\n]*", text):
                if "weights_only=True" not in call:
                    bad.append(f"{path}: {call}")
            if re.search(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", text, re.M) \
                    or "allow_pickle=True" in text:
                bad.append(f"{path}: pickle")
    assert not bad, bad


# ------------------------------------------------------------------------------------ 2. model files, checkpoints
@pytest.fixture()
def model_h5(tmp_path):
    from hw_export.export import export_model

    path = tmp_path / "tiny.h5"
    export_model(tiny_model(), "fp32", path)
    return path


def test_tokenizer_names_cannot_leave_the_directory(tmp_path, model_h5):
    target = tmp_path / "outside" / "evil.txt"
    with h5py.File(model_h5, "r+") as f:
        f["tokenizer"].attrs["files"] = json.dumps([str(target)])
        f.create_dataset(f"tokenizer/{str(target).lstrip('/')}", data=np.frombuffer(b"owned", np.uint8))
    with pytest.raises(ModelFileError, match="not a plain file name"):
        read_model_file(model_h5)
    mf = read_model_file_skipping_tokenizer(model_h5)
    for name in (str(target), "../evil.txt", "a/b.txt", "..", ""):
        mf.tokenizer_files = {name: b"owned"}
        with pytest.raises(ModelFileError, match="plain name"):
            mf.write_tokenizer(tmp_path / "tok")
    assert not target.exists() and not (tmp_path / "evil.txt").exists()


def read_model_file_skipping_tokenizer(path: Path) -> ModelFile:
    clean = path.with_name("clean.h5")
    shutil.copy(path, clean)
    with h5py.File(clean, "r+") as f:
        del f["tokenizer"]
        f.create_group("tokenizer").attrs["files"] = "[]"
    return read_model_file(clean)


_BOUNDED_READ = textwrap.dedent("""
    import resource, sys
    limit = 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # 1 GiB of address space for this reader
    from lava_spikingbert.contract.model_file import ModelFileError, read_model_file
    try:
        read_model_file(sys.argv[1])
    except ModelFileError as exc:
        print("refused:", exc)
""")


def _read_bounded(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BOUNDED_READ, str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_declared_sizes_are_bounded_before_reading(model_h5):
    """A gzip dataset of fill values declares 8 GB in a few bytes; a config declares 50 million
    layers. Read under a 1 GiB address-space limit, both are refused, not allocated or looped over."""
    with h5py.File(model_h5, "r+") as f:
        f["tokenizer"].attrs["files"] = json.dumps(["vocab.txt"])
        f.create_dataset("tokenizer/vocab.txt", shape=(8_000_000_000,), dtype=np.uint8, chunks=(1 << 20,),
                         compression="gzip")
    assert model_h5.stat().st_size < 5_000_000
    r = _read_bounded(model_h5)
    assert r.returncode == 0 and "refused:" in r.stdout and "/tokenizer/vocab.txt" in r.stdout, r.stderr[-2000:]
    with h5py.File(model_h5, "r+") as f:
        del f["tokenizer/vocab.txt"]
        f["tokenizer"].attrs["files"] = "[]"
        cfg = json.loads(f["config"].attrs["json"])
        f["config"].attrs["json"] = json.dumps({**cfg, "num_hidden_layers": 50_000_000})
    r = _read_bounded(model_h5)
    assert r.returncode == 0 and "num_hidden_layers" in r.stdout and "limit" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("field,value,match", [("hidden_size", 4_000_000, "hidden_size"),
                                               ("vocab_size", 2_000_000_000, "vocab_size"),
                                               ("format_version", 99, "format_version")])
def test_checkpoint_config_is_bounded_before_allocation(tmp_path, field, value, match):
    d = tmp_path / "ckpt"
    tiny_model().save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg[field] = value
    if field == "hidden_size":
        cfg["num_attention_heads"] = 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=match):
        SpikingBert.from_pretrained(d)
    with pytest.raises(ConfigError):
        SpikingBertConfig.load(d)


def test_checkpoint_tokenizer_custom_code_is_never_run(tmp_path, monkeypatch):
    """A tokenizer_config.json whose auto_map points at code in the checkpoint: no code run even by
    a user who would answer "y" to transformers' prompt (asked only when trust_remote_code is not
    given)."""
    monkeypatch.setattr("builtins.input", lambda *args, **kwargs: "y")
    from lava_spikingbert.cli import CliError, _load_tokenizer
    from training.teacher import default_teacher_path

    d, marker = tmp_path / "ckpt", tmp_path / "ran"
    tiny_model().save_pretrained(d)  # a spikingbert config.json: transformers has no class of its own for it
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(default_teacher_path() / name, d / name)
    (d / "evil_tok.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                   "from transformers import BertTokenizerFast as EvilTokenizer\n")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "evil_tok.EvilTokenizer"]})
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    try:
        _load_tokenizer(str(d))
    except CliError:
        pass
    assert not marker.exists()


def test_teacher_config_is_bounded_before_allocation(tmp_path, tiny_teacher_dir):  # noqa: F811
    from training.teacher import load_teacher

    d = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": 4_000_000, "num_attention_heads": 1}))
    with pytest.raises(SpikingBertError, match="hidden_size"):
        load_teacher(d)


# ------------------------------------------------------------------------------------ 3. one run per directory
_HOLD = textwrap.dedent("""
    import sys
    from lava_spikingbert.contract.run_lock import directory_lock
    with directory_lock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()
""")


def test_second_run_into_a_directory_is_refused_and_a_dead_holder_is_taken_over(tmp_path, glue_dir,  # noqa: F811
                                                                              tiny_teacher_dir):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryLockedError, match=f"PID {holder.pid}"):
            with directory_lock(out):
                pass
        with pytest.raises(DirectoryLockedError, match=f"PID {holder.pid}"):  # before any training
            finetune_teacher("sst2", out, glue_dir=glue_dir, teacher_path=tiny_teacher_dir, epochs=1,
                             batch_size=8, max_length=16, progress=False)
        assert not (out / "training_state").exists()
    finally:
        holder.kill()  # a crash: the lock file stays, with the dead PID in it
        holder.wait()
    assert lock_path(out).read_text().strip() == str(holder.pid)
    with directory_lock(out):
        with directory_lock(out):  # nested in one process (pipeline -> stage): counted, not re-taken
            assert lock_path(out).read_text().strip() == str(os.getpid())


def test_only_rank_zero_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with directory_lock(tmp_path / "x"):
        assert not lock_path(tmp_path / "x").exists()


def test_two_cli_runs_into_one_out_dir(tmp_path, glue_dir, tiny_teacher_dir):  # noqa: F811
    """Two `spikingbert distill` runs at once into one --out: the second refuses with one line naming
    the first one's PID; once the first is killed (-9), a new run takes its lock over and completes."""
    import time

    out = tmp_path / "stage"
    args = [sys.executable, "-m", "lava_spikingbert.cli", "distill", "--stage", "prediction", "--task", "sst2",
            "--glue-dir", str(glue_dir), "--teacher", str(tiny_teacher_dir), "--layers", "1", "--batch-size", "8",
            "--max-length", "16", "--train-t-conv", "4", "--checkpoint-every", "1000000", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(args + ["--steps", "1000000"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None and not (
                lock_path(out).exists() and lock_path(out).read_text().strip() == str(first.pid)):
            time.sleep(0.1)
        assert first.poll() is None and lock_path(out).exists(), "the first run did not start training"
        second = subprocess.run(args + ["--steps", "2", "--overwrite"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 1 and f"PID {first.pid}" in _error_line(second.stderr)
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.kill()
        first.wait()
    assert lock_path(out).read_text().strip() == str(first.pid)  # a dead holder's lock file
    third = subprocess.run(args + ["--steps", "2", "--overwrite"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert (out / "stage_done.json").is_file() and not lock_path(out).exists()


# ------------------------------------------------------------------------------------ 5. data
def test_bad_data_files_are_refused_with_file_and_line(tmp_path):
    (tmp_path / "SST-2").mkdir()
    dev = tmp_path / "SST-2" / "dev.tsv"
    dev.write_text("sentence\tlabel\n")
    with pytest.raises(DataError, match=re.escape(str(dev)) + ".*no examples"):
        load_glue("sst2", "dev", tmp_path)
    dev.write_bytes(b"sentence\tlabel\ngood film\t1\nbad\x00film\t0\n")
    with pytest.raises(DataError, match=re.escape(f"{dev}:3") + ".*NUL"):
        load_glue("sst2", "dev", tmp_path)
    dev.write_bytes(b"sentence\tlabel\ngood film\t1\nbad \xff\xfe film\t0\n")
    with pytest.raises(DataError, match=re.escape(f"{dev}:3") + ".*UTF-8"):
        load_glue("sst2", "dev", tmp_path)
    custom = tmp_path / "c.tsv"
    custom.write_bytes(b"sentence\tlabel\n\xe9t\xe9\tx\n")  # latin-1
    with pytest.raises(DataError, match=re.escape(f"{custom}:2")):
        load_custom(custom, ["sentence"], "label")
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"fine\n\x00\n")
    with pytest.raises(DataError, match=re.escape(f"{corpus}:2")):
        plain_text_corpus(corpus)
    for labels in (["0", "0", "1"], ["0", "", "1"]):
        with pytest.raises(DataError, match="once"):
            custom_task_spec(labels=labels)


def test_eval_on_an_empty_set_is_an_error_not_nan(tmp_path, capsys):
    d = tmp_path / "ckpt"
    from training.teacher import default_teacher_path
    from transformers import AutoTokenizer

    model = tiny_model(vocab_size=30522, max_length=16)
    model.save_pretrained(d)
    AutoTokenizer.from_pretrained(default_teacher_path(), local_files_only=True).save_pretrained(d)
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    (tmp_path / "glue" / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n")
    assert main(["eval", "--model", str(d), "--task", "sst2", "--glue-dir", str(tmp_path / "glue")]) != 0
    captured = capsys.readouterr()
    assert "nan" not in captured.out + captured.err and "no examples" in captured.err
    (tmp_path / "glue" / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
    assert main(["eval", "--model", str(d), "--task", "sst2", "--glue-dir", str(tmp_path / "glue"),
                 "--limit", "0"]) != 0
    assert "no examples" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ 6. one-line errors before work
ARG_CASES = [  # (argv, the flag the one error line names)
    (["teacher", "--out", "x", "--epochs", "0"], "--epochs"),
    (["teacher", "--out", "x", "--epochs", "-1"], "--epochs"),
    (["distill", "--stage", "general", "--out", "x", "--steps", "2", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["distill", "--stage", "general", "--out", "x", "--steps", "2", "--checkpoint-every", "-1"],
     "--checkpoint-every"),
    (["distill", "--stage", "general", "--out", "x", "--steps", "2", "--run-steps", "0"], "--run-steps"),
    (["distill", "--stage", "general", "--out", "x", "--steps", "2", "--eval-every", "-1"], "--eval-every"),
    (["eval", "--model", "x", "--threads", "0"], "--threads"),
    (["report", "--model", "x", "--n-sentences", "0"], "--n-sentences"),
    (["report", "--model", "x", "--seq-len", "0"], "--seq-len"),
    (["lava", "--model", "x", "--window", "0"], "--window"),
    (["export", "--model", "x", "--out", "y", "--head-t-conv", "0"], "--head-t-conv"),
    (["pipeline", "--layers", "0"], "--layers"),
]


@pytest.mark.parametrize("argv,flag", ARG_CASES, ids=[" ".join(a[-2:]) + f" ({a[0]})" for a, _ in ARG_CASES])
def test_bad_values_are_refused_by_the_parser(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"argument {flag}:" in err.splitlines()[-1], err


def _one_line(rc: int, capsys, *needles: str) -> None:
    line = _error_line(capsys.readouterr().err)
    assert rc not in (0, None) and all(n in line for n in needles), line


def test_bad_paths_and_files_are_one_line_errors_before_work(tmp_path, glue_dir, tiny_teacher_dir,  # noqa: F811
                                                           model_h5, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    a_dir = tmp_path / "dir"
    a_dir.mkdir()
    # checked before the model is even looked at (a missing model would be the error otherwise)
    _one_line(main(["eval", "--model", str(tmp_path / "missing"), "--json", str(a_dir)]), capsys, "--json")
    _one_line(main(["export", "--model", str(tmp_path / "missing"), "--out", str(a_dir)]), capsys, "--out")
    _one_line(main(["report", "--model", str(model_h5), "--json", str(a_dir), "--no-measure"]), capsys, "--json")
    distill = ["distill", "--stage", "prediction", "--task", "sst2", "--glue-dir", str(glue_dir), "--steps", "2",
               "--layers", "1", "--batch-size", "8"]
    _one_line(main(distill + ["--teacher", str(tiny_teacher_dir), "--out", str(a_file)]), capsys, "is a file")
    # max_length beyond the teacher's 64 positions, before training
    _one_line(main(distill + ["--teacher", str(tiny_teacher_dir), "--out", str(tmp_path / "s"), "--max-length",
                              "100"]), capsys, "position")
    assert not (tmp_path / "s").exists()
    # a teacher with corrupt weights
    bad_teacher = tmp_path / "bad_teacher"
    shutil.copytree(tiny_teacher_dir, bad_teacher)
    (bad_teacher / "model.safetensors").write_bytes(b"\x00" * 64)
    _one_line(main(distill + ["--teacher", str(bad_teacher), "--out", str(tmp_path / "s2")]), capsys,
              str(bad_teacher))
    # a checkpoint of a newer format
    ckpt = tmp_path / "ckpt"
    tiny_model().save_pretrained(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    _one_line(main(["eval", "--model", str(ckpt), "--task", "sst2", "--glue-dir", str(glue_dir)]), capsys,
              "format_version")


def test_teacher_epochs_are_checked_before_training(tmp_path, glue_dir, tiny_teacher_dir):  # noqa: F811
    for epochs in (0, -1):
        with pytest.raises(SpikingBertError, match="epochs"):
            finetune_teacher("sst2", tmp_path / "t", glue_dir=glue_dir, teacher_path=tiny_teacher_dir,
                             epochs=epochs, progress=False)
    assert not (tmp_path / "t").exists()


def test_invalid_tokenizer_json_in_a_model_file_is_one_error(model_h5):
    from hw_export.report import file_tokenizer as report_tokenizer
    from lava_spikingbert.lava.schedule import file_tokenizer

    mf = read_model_file(model_h5)
    mf.tokenizer_files = {"tokenizer.json": b"{not json", "tokenizer_config.json": b"{}"}
    with pytest.raises(ModelFileError, match="tokenizer.json"):
        file_tokenizer(mf, 16)
    with pytest.raises(ModelFileError, match="tokenizer"):
        report_tokenizer(mf)
