"""The README's results table is generated from docs/results/*.json (scripts/results_table.py):
it must match, and the check must catch a table edited by hand."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "results_table.py"
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results"


def _load():
    spec = importlib.util.spec_from_file_location("results_table", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_readme_table_matches_the_result_files():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(README), "--results", str(RESULTS)],
                          capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr


def test_every_registered_source_is_a_result_file():
    rt = _load()
    for row in rt.ROWS:
        for v in row.values:
            assert (RESULTS / v.file).is_file(), f"{row.claim}: {v.file} is not in docs/results"


@pytest.fixture
def readme_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "README.md"
    shutil.copyfile(README, copy)
    return copy


def test_check_fails_on_an_edited_table_and_write_repairs_it(readme_copy: Path):
    rt = _load()
    text = readme_copy.read_text()
    head, block, tail = rt.split_readme(text)
    assert "83.26%" in block
    readme_copy.write_text(head + block.replace("83.26%", "85.00%", 1) + tail)

    proc = subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme_copy),
                           "--results", str(RESULTS)], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 1
    msg = proc.stderr.strip()
    assert len(msg.splitlines()) == 1 and "85.00%" in msg and "83.26%" in msg, msg

    assert rt.write(readme_copy, RESULTS) is True
    assert readme_copy.read_text() == text
    assert rt.check(readme_copy, RESULTS)[0]
    assert rt.write(readme_copy, RESULTS) is False  # already up to date


def test_check_fails_when_a_result_changes(tmp_path: Path, readme_copy: Path):
    rt = _load()
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    path = results / "memory.json"
    data = json.loads(path.read_text())
    data["implicit_peak_ratio_last_first"] = 1.29
    path.write_text(json.dumps(data))
    ok, msg = rt.check(readme_copy, results)
    assert not ok and "x1.29" in msg, msg


def test_lookup_paths_and_errors():
    rt = _load()
    data = {"a": {"rows": [{"t": 8, "x": 1}, {"t": 16, "x": 2}]}, "l": [10, 20]}
    assert rt.lookup(data, "a.rows[t=16].x") == 2
    assert rt.lookup(data, "l[1]") == 20
    with pytest.raises(KeyError, match="t=32"):
        rt.lookup(data, "a.rows[t=32].x", where="f.json")
    with pytest.raises(KeyError, match="f.json"):
        rt.lookup(data, "a.missing", where="f.json")


def test_readme_must_hold_one_block(tmp_path: Path):
    rt = _load()
    bad = tmp_path / "README.md"
    bad.write_text("no table here\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(bad), "--results", str(RESULTS)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "exactly one" in proc.stderr
    with pytest.raises(ValueError):
        rt.split_readme(bad.read_text())
