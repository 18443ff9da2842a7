"""The contract itself: the model file's profile attribute, atomic writes, the shared names."""

from __future__ import annotations

import h5py
import pytest

from lava_spikingbert.contract.atomic import atomic_file
from lava_spikingbert.contract.constants import LAYER_POPULATIONS, output_population, population_names
from lava_spikingbert.contract.depths import population_depths
from lava_spikingbert.contract.model_file import DEFAULT_PROFILE, ModelFileError, read_model_file


@pytest.fixture
def model_file(files):
    return files[1]["fp32"]


def test_profile_is_written_defaulted_and_validated(model_file, tmp_path):
    assert read_model_file(model_file).profile == DEFAULT_PROFILE == "paper"
    with h5py.File(model_file, "r") as f:
        assert f.attrs["profile"] == "paper"
    older = tmp_path / "older.h5"
    older.write_bytes(model_file.read_bytes())
    with h5py.File(older, "r+") as f:
        del f.attrs["profile"]  # written before the attribute existed
    assert read_model_file(older).profile == "paper"
    other = tmp_path / "other.h5"
    other.write_bytes(model_file.read_bytes())
    with h5py.File(other, "r+") as f:
        f.attrs["profile"] = "stock"
    with pytest.raises(ModelFileError, match="profile.*must be one of"):
        read_model_file(other)


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_population_names_and_depths_agree():
    for n in (1, 3):
        names = population_names(n)
        assert len(names) == 1 + n * len(LAYER_POPULATIONS) and names[-1] == output_population(n)
        assert list(population_depths(n)) == names
