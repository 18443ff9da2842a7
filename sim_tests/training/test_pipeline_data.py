"""The pipeline on other data: every GLUE task spec end to end, the user's own files (``--task
custom``), the budget sized from the training set and checkpoint selection on a holdout split.

All at tiny size: a random 2-layer teacher, a few dozen sentences, a handful of steps."""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import replace
from pathlib import Path

import pytest

from lava_spikingbert.cli import main
from training.pipeline import BUDGETS, Budget, run_pipeline
from training.pipeline_data import (HOLDOUT_MAX, PREDICTION_TIME_ALLOWANCE, RATE_ANN_FULL_LENGTH_FACTOR,
                                    STAGE_FLOOR_STEPS, TEACHER_FLOOR_STEPS, CustomFiles, carve_holdout, holdout_size,
                                    mean_words, sized_budget)
from training.readers import Example, load_glue
from training.tasks import TASKS, DataError, get_task

from training_fixtures import FILL, NEG, POS, tiny_teacher_dir  # noqa: F401  (fixtures)

TINY = Budget(teacher_epochs=1, general_steps=1, intermediate_steps=1, prediction_steps=2, batch_size=8,
              train_t_conv=2, eval_every=1)
SMALL_MODEL = dict(num_layers=2, t_conv=4, max_length=16, progress=False)


def _text(rng: random.Random, cue: str) -> str:
    words = [rng.choice(FILL) for _ in range(rng.randint(2, 6))]
    words.insert(rng.randint(0, len(words)), cue)
    return " ".join(words)


def _cue(label_index: int) -> str:
    return (POS + NEG)[label_index % len(POS + NEG)]


# ------------------------------------------------------------------------- GLUE layouts, every spec
def _glue_rows(spec, split: str, n: int, seed: int) -> list[str]:
    """``n`` rows of ``split`` in the spec's own layout (header or CoLA's headerless columns)."""
    rng = random.Random(seed)
    layout = spec.layouts[split]
    rows = []
    for i in range(n):
        k = i % (spec.num_labels if spec.labels else 5)
        label = spec.labels[k] if spec.labels else f"{k + rng.random():.3f}"
        fields = {layout.text_a: _text(rng, _cue(k))}
        if layout.text_b is not None:
            fields[layout.text_b] = _text(rng, _cue(k + 1))
        fields[layout.label] = label
        if layout.header:
            rows.append("\t".join([str(i)] + [fields[c] for c in fields]))
        else:
            cells = ["src"] * layout.n_columns
            for col, value in fields.items():
                cells[col] = value
            rows.append("\t".join(cells))
    if layout.header:
        rows.insert(0, "\t".join(["index", *fields]))
    return rows


@pytest.fixture(scope="module")
def every_glue_dir(tmp_path_factory):
    """A GLUE directory holding every task's train and dev files (MNLI: both dev sets, of other sizes)."""
    root = tmp_path_factory.mktemp("glue_all")
    for seed, spec in enumerate(TASKS.values()):
        d = root / spec.glue_name
        d.mkdir(exist_ok=True)
        (d / spec.files["train"]).write_text("\n".join(_glue_rows(spec, "train", 24, seed)) + "\n")
        n_dev = 10 if spec.name == "mnli-mm" else 12
        (d / spec.files["dev"]).write_text("\n".join(_glue_rows(spec, "dev", n_dev, 100 + seed)) + "\n")
    return root


@pytest.mark.parametrize("task", list(TASKS))
def test_every_glue_task_runs_through_the_pipeline(task, tmp_path, every_glue_dir, tiny_teacher_dir):
    spec = get_task(task)
    dev_n = len(load_glue(spec, "dev", every_glue_dir))
    assert dev_n == (10 if task == "mnli-mm" else 12)  # MNLI's two dev sets are two files
    out = tmp_path / task
    result = run_pipeline(task, out, glue_dir=every_glue_dir, teacher_path=tiny_teacher_dir, budget=TINY,
                          eval_t=(4,), **SMALL_MODEL)
    (row,) = json.loads((out / "eval_vs_T.json").read_text())
    assert row["task"] == spec.name and row["n"] == dev_n and row["selected_on"] == "dev"
    assert set(row["metrics"]) >= set(spec.metrics) | {spec.main_metric}
    if not spec.is_regression:
        assert 0 <= row["metrics"]["accuracy"] <= 1
    teacher = json.loads((out / "teacher" / "teacher_metrics.json").read_text())
    assert teacher["dev_n"] == dev_n and teacher["train_n"] == 24
    assert result["student_dir"] == out / "student" and (out / "student" / "config.json").is_file()


def test_glue_regression_with_holdout_and_the_settings_of_earlier_runs(tmp_path, every_glue_dir, tiny_teacher_dir):
    """A GLUE task with --select-on holdout (regression: a random, unstratified holdout); a run
    directory whose settings predate the data and selection records is continued, not refused."""
    out = tmp_path / "stsb"
    run_pipeline("stsb", out, glue_dir=every_glue_dir, teacher_path=tiny_teacher_dir, budget=TINY, eval_t=(4,),
                 select_on="holdout", holdout_fraction=0.25, **SMALL_MODEL)
    settings = json.loads((out / "pipeline_settings.json").read_text())
    assert settings["selection"]["sentences"] == 6 and settings["selection"]["stratified"] is False
    teacher = json.loads((out / "teacher" / "teacher_metrics.json").read_text())
    assert teacher["train_n"] == 18 and teacher["dev_n"] == 6
    (row,) = json.loads((out / "eval_vs_T.json").read_text())
    assert row["n"] == 12 and row["selected_on"] == "holdout"
    out = tmp_path / "sst2"
    first = run_pipeline("sst2", out, glue_dir=every_glue_dir, teacher_path=tiny_teacher_dir, budget=TINY,
                         eval_t=(4,), **SMALL_MODEL)
    settings = json.loads((out / "pipeline_settings.json").read_text())
    assert settings["data"] is None and settings["selection"] == {"on": "dev"}
    for key in ("data", "selection", "budget_rule", "data_paths"):  # as an earlier version wrote them
        del settings[key]
    (out / "pipeline_settings.json").write_text(json.dumps(settings))
    again = run_pipeline("sst2", out, glue_dir=every_glue_dir, teacher_path=tiny_teacher_dir, budget=TINY,
                         eval_t=(4,), **SMALL_MODEL)
    assert again["rows"][0]["metrics"] == first["rows"][0]["metrics"]


# ------------------------------------------------------------------------- the user's own files
def _write_table(path: Path, header: list[str], rows: list[list[str]], delimiter: str = "\t") -> Path:
    path.write_text("\n".join(delimiter.join(r) for r in [header, *rows]) + "\n")
    return path


def _classification_files(d: Path, n_train: int = 40, n_dev: int = 12, delimiter: str = "\t", ext: str = "tsv"):
    rng = random.Random(0)
    names = ("negative", "neutral", "positive")
    rows = lambda n: [[str(i), _text(rng, _cue(i % 3)), names[i % 3]] for i in range(n)]  # noqa: E731
    header = ["id", "review", "sentiment"]
    return (_write_table(d / f"train.{ext}", header, rows(n_train), delimiter),
            _write_table(d / f"test.{ext}", header, rows(n_dev), delimiter))


def test_custom_pipeline_command_with_string_labels(tmp_path, tiny_teacher_dir, capsys):
    """The command a user with two TSV files runs: the classes are the training file's strings,
    the settings name the files by content, and a resume on other data is refused."""
    train, test = _classification_files(tmp_path)
    out = tmp_path / "run"
    cmd = ["pipeline", "--task", "custom", "--train-file", str(train),
           "--data-file", str(test), "--text-columns", "review", "--label-column", "sentiment",
           "--teacher", str(tiny_teacher_dir), "--budget", "tiny", "--layers", "2", "--t-conv", "4",
           "--max-length", "16", "--eval-t", "4", "--out", str(out)]
    assert main(cmd) == 0
    settings = json.loads((out / "pipeline_settings.json").read_text())
    data = settings["data"]
    assert data["labels"] == ["negative", "neutral", "positive"] and data["text_columns"] == ["review"]
    assert data["train_file"]["bytes"] == train.stat().st_size and len(data["train_file"]["sha256"]) == 64
    assert settings["data_paths"]["data_file"] == str(test.resolve())
    (row,) = json.loads((out / "eval_vs_T.json").read_text())
    assert row["task"] == "custom" and row["n"] == 12 and set(row["metrics"]) == {"accuracy"}
    # the student knows its classes: `eval` on the same file needs no --labels
    assert main(["eval", "--model", str(out / "student"), "--task", "custom", "--data-file", str(test),
                 "--text-columns", "review", "--label-column", "sentiment", "--t-conv", "4",
                 "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 12
    # one changed training sentence: the same command refuses to continue, in one line
    lines = train.read_text().splitlines()
    lines[1] = lines[1].replace("the", "a", 1) if "the" in lines[1] else lines[1] + " film"
    train.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(cmd) == 1
    err = capsys.readouterr().err
    assert "other settings" in err and "data:" in err and len(err.strip().splitlines()) == 1, err


def test_custom_pipeline_command_errors_name_file_and_line(tmp_path, tiny_teacher_dir, capsys):
    train, test = _classification_files(tmp_path)
    test.write_text(test.read_text() + "99\tsome text\tangry\n")  # a class the training file lacks
    base = ["pipeline", "--task", "custom", "--text-columns",
            "review", "--label-column", "sentiment", "--teacher", str(tiny_teacher_dir), "--budget", "tiny",
            "--out", str(tmp_path / "run")]
    assert main(base + ["--train-file", str(train), "--data-file", str(test)]) == 1
    err = capsys.readouterr().err
    assert f"{test}:14: unknown label 'angry'" in err and len(err.strip().splitlines()) == 1, err
    train.write_text(train.read_text() + "77\tonly two columns\n")
    assert main(base + ["--train-file", str(train), "--data-file", str(test)]) == 1
    err = capsys.readouterr().err
    assert f"{train}:42: malformed row" in err and len(err.strip().splitlines()) == 1, err
    assert main(base + ["--train-file", str(train)]) == 2
    assert "--data-file" in capsys.readouterr().err
    assert main(base + ["--train-file", str(train), "--data-file", str(test), "--holdout-fraction", "0.2"]) == 2
    assert "--select-on holdout" in capsys.readouterr().err


def test_custom_regression_pair_task_in_csv(tmp_path, tiny_teacher_dir):
    """A sentence-pair regression task in CSV files (quoted fields with commas)."""
    rng = random.Random(1)

    def rows(n):
        return [[f'"{_text(rng, _cue(i))}, indeed"', _text(rng, _cue(i + 2)), f"{(i % 5) * 1.25:.2f}"]
                for i in range(n)]

    header = ["premise", "hypothesis", "similarity"]
    train = _write_table(tmp_path / "train.csv", header, rows(32), ",")
    dev = _write_table(tmp_path / "dev.csv", header, rows(10), ",")
    custom = CustomFiles(str(train), str(dev), text_columns=("premise", "hypothesis"), label_column="similarity",
                         task_type="regression")
    out = tmp_path / "run"
    # a budget that joins stage 2's sentences in pairs: off for sentence pairs
    run_pipeline("custom", out, teacher_path=tiny_teacher_dir, budget=replace(TINY, intermediate_join=0.5),
                 eval_t=(4,), custom=custom, **SMALL_MODEL)
    (row,) = json.loads((out / "eval_vs_T.json").read_text())
    assert row["n"] == 10 and set(row["metrics"]) == {"pearson", "spearman", "corr"}
    stage2 = json.loads((out / "stages" / "2-intermediate" / "stage_done.json").read_text())["settings"]
    assert stage2["augment_join"] == 0.0
    settings = json.loads((out / "pipeline_settings.json").read_text())
    assert settings["data"]["task_type"] == "regression" and settings["data"]["labels"] is None
    teacher = json.loads((out / "teacher" / "teacher_metrics.json").read_text())
    assert teacher["train_n"] == 32 and teacher["hparams"]["train_data_sha256"]


# ------------------------------------------------------------------------- selection on a holdout split
def test_holdout_is_seeded_stratified_and_disjoint():
    spec = CustomFiles("t", "d", labels=("a", "b", "c")).spec()
    examples = [Example(f"g{i}", f"text {i}", None, 0 if i < 60 else (1 if i < 90 else 2)) for i in range(100)]
    rest, holdout = carve_holdout(examples, spec, seed=3)
    assert len(holdout) == holdout_size(100) == 10 and len(rest) == 90
    assert {e.guid for e in rest}.isdisjoint(e.guid for e in holdout)
    assert sorted(e.label for e in holdout) == [0] * 6 + [1] * 3 + [2]  # the training set's class shares
    assert [e.guid for e in rest] == sorted((e.guid for e in rest), key=lambda g: int(g[1:]))  # file order kept
    again, other = carve_holdout(examples, spec, seed=3), carve_holdout(examples, spec, seed=4)
    assert again[1] == holdout and other[1] != holdout
    assert holdout_size(10**6) == HOLDOUT_MAX
    regression = replace(spec, labels=None)
    rest, holdout = carve_holdout([replace(e, label=float(i)) for i, e in enumerate(examples)], regression, seed=0,
                                  fraction=0.25)
    assert len(holdout) == 25 and len(rest) == 75
    with pytest.raises(DataError, match="cannot carve"):
        carve_holdout(examples[:1], spec, seed=0)


def test_select_on_holdout_keeps_the_reported_split_out_of_selection(tmp_path, tiny_teacher_dir):
    train, test = _classification_files(tmp_path, n_train=60, n_dev=15)
    custom = CustomFiles(str(train), str(test), text_columns=("review",), label_column="sentiment")
    out = tmp_path / "run"
    budget = replace(TINY, prediction_steps=3)  # two evaluations in stage 3: a selection takes place
    result = run_pipeline("custom", out, teacher_path=tiny_teacher_dir, budget=budget, eval_t=(4,), custom=custom,
                          select_on="holdout", holdout_fraction=0.2, **SMALL_MODEL)
    settings = json.loads((out / "pipeline_settings.json").read_text())
    assert settings["selection"] == {"on": "holdout", "fraction": 0.2, "max_sentences": HOLDOUT_MAX, "seed": 42,
                                     "sentences": 12, "stratified": True}
    teacher = json.loads((out / "teacher" / "teacher_metrics.json").read_text())
    assert teacher["train_n"] == 48 and teacher["dev_n"] == 12  # trained without the holdout, chosen on it
    stage3 = json.loads((out / "stages" / "3-prediction" / "stage_done.json").read_text())
    assert [h["n"] for h in stage3["history"]] and all(h["n"] == 12 for h in stage3["history"])
    (row,) = json.loads((out / "eval_vs_T.json").read_text())
    assert row["selected_on"] == "holdout" and row["n"] == 15  # reported on the test file
    summary = json.loads((out / "pipeline_summary.json").read_text())
    assert summary["teacher"]["selected_on"] == "holdout" and summary["teacher"]["holdout"] == teacher["dev"]
    assert set(summary["teacher"]["dev"]) >= {"accuracy"} and result["teacher"]["dev"] == summary["teacher"]["dev"]
    # the same out directory with dev selection is another run
    with pytest.raises(ValueError, match="other settings .*selection"):
        run_pipeline("custom", out, teacher_path=tiny_teacher_dir, budget=budget, eval_t=(4,), custom=custom,
                     **SMALL_MODEL)


# ------------------------------------------------------------------------- the budget sized from the data
SST2_TRAIN_SENTENCES = 67_349
SST2_TRAIN_MEAN_WORDS = 9.41  # GLUE SST-2 train.tsv: words per sentence, rounded up


def test_sst2_gets_exactly_the_tuned_default_budget():
    """The default budget's SST-2 result (docs/RESULTS.md) stays valid: SST-2's training set is
    given the budget that result was measured with."""
    measured_with = Budget(teacher_epochs=1, general_steps=300, intermediate_steps=1300, prediction_steps=600,
                           train_t_conv=16, eval_every=200)
    budget, rule = sized_budget(BUDGETS["default"], SST2_TRAIN_SENTENCES, SST2_TRAIN_MEAN_WORDS)
    assert budget == measured_with == BUDGETS["default"]
    assert rule["teacher_epochs"] == 1 and rule["length_factor"] == 1.0
    glue = os.environ.get("GLUE_DIR", str(Path(__file__).resolve().parents[3] / "shared" / "data" / "glue"))
    if (Path(glue) / "SST-2" / "train.tsv").is_file():  # the real file, where it is present
        train = load_glue("sst2", "train", glue)
        assert len(train) == SST2_TRAIN_SENTENCES and mean_words(train) <= SST2_TRAIN_MEAN_WORDS
        assert sized_budget(BUDGETS["default"], len(train), mean_words(train))[0] == measured_with


def test_budget_floor_and_cap():
    base = BUDGETS["default"]
    small, rule = sized_budget(base, 5000, 10.0)  # more passes, never fewer steps than the floors
    assert small.teacher_epochs > 1 and math.ceil(small.teacher_epochs * 5000 / base.batch_size) >= TEACHER_FLOOR_STEPS
    assert small.prediction_steps >= STAGE_FLOOR_STEPS["prediction"]
    assert rule["training_sentences"] == 5000 and rule["teacher_sentences"] == round(small.teacher_epochs * 5000)
    tiny, _ = sized_budget(base, 50, 10.0)
    assert tiny.teacher_epochs == 10 and (tiny.general_steps, tiny.intermediate_steps, tiny.prediction_steps) == \
        tuple(STAGE_FLOOR_STEPS.values())
    big, _ = sized_budget(base, 400_000, 10.0)  # a big set: a part of an epoch, the tuned stage lengths
    assert big.teacher_epochs < 1 and big.teacher_epochs * 400_000 <= 80_000
    assert (big.general_steps, big.intermediate_steps, big.prediction_steps) == (300, 1300, 600)
    long, rule = sized_budget(base, 400_000, 25.0)  # sentences 2.5x longer: fewer of them in the same time
    assert rule["length_factor"] == 2.5 and long.teacher_epochs < big.teacher_epochs
    assert (long.general_steps, long.intermediate_steps) == (120, 520)  # 300 / 2.5, 1300 / 2.5
    # the prediction stage may take PREDICTION_TIME_ALLOWANCE times its tuned time: 600 * 1.5 / 2.5 steps
    assert PREDICTION_TIME_ALLOWANCE == 1.5 and rule["prediction_time_allowance"] == 1.5
    assert long.prediction_steps == 360 and long.eval_every == 120
    somewhat, _ = sized_budget(base, 400_000, 15.0)  # 1.5x longer: the prediction stage keeps its tuned length
    assert (somewhat.intermediate_steps, somewhat.prediction_steps) == (866, 600)
    # the stages trained as the rate ANN keep their tuned lengths up to RATE_ANN_FULL_LENGTH_FACTOR, the others do not
    rate_stages = ("general", "intermediate")
    warm, rule = sized_budget(base, 400_000, 10.0 * RATE_ANN_FULL_LENGTH_FACTOR, rate_ann_stages=rate_stages)
    assert (warm.general_steps, warm.intermediate_steps, warm.prediction_steps) == (300, 1300, 360)
    assert rule["rate_ann_stages"] == list(rate_stages) and warm.teacher_epochs == long.teacher_epochs
    longer, _ = sized_budget(base, 400_000, 20.0 * RATE_ANN_FULL_LENGTH_FACTOR, rate_ann_stages=rate_stages)
    assert (longer.general_steps, longer.intermediate_steps) == (150, 650)  # halved beyond the factor
    assert longer.prediction_steps == STAGE_FLOOR_STEPS["prediction"]  # 600 * 1.5 / 5 is under the floor
    assert sized_budget(base, SST2_TRAIN_SENTENCES, SST2_TRAIN_MEAN_WORDS, rate_stages)[0] == base
    with pytest.raises(ValueError, match="rate_ann_stages.*'teacher'"):
        sized_budget(base, 5000, 10.0, rate_ann_stages=("teacher",))
    for n in (100, 5000, 67_349, 10**6):
        for words in (5.0, 10.0, 30.0):
            b, _ = sized_budget(base, n, words)
            assert 0 < b.teacher_epochs <= 10 and all(s >= 100 for s in (b.general_steps, b.intermediate_steps))


def test_custom_pipeline_exports_reports_and_runs_on_lava(tmp_path, tiny_teacher_dir, capsys):
    """One command from two TSV files to a Loihi-ready model file, its report and a Lava check."""
    train, test = _classification_files(tmp_path, n_train=24, n_dev=6)
    out = tmp_path / "run"
    args = ["pipeline", "--task", "custom", "--train-file", str(train), "--data-file", str(test), "--text-columns",
            "review", "--label-column", "sentiment", "--teacher", str(tiny_teacher_dir), "--budget", "tiny",
            "--layers", "2", "--t-conv", "4", "--max-length", "16", "--eval-t", "4", "--out", str(out)]
    assert main(args + ["--lava", "2"]) == 2 and "--lava needs --export" in capsys.readouterr().err
    assert main(args + ["--export", "int8", "--lava", "2"]) == 0
    assert (out / "student_int8.h5").is_file() and (out / "report_int8.png").is_file()
    report = json.loads((out / "report_int8.json").read_text())
    assert report["accuracy_vs_t"]["values"]  # read from the pipeline's eval_vs_T.json
    lava = json.loads((out / "lava_int8.json").read_text())
    assert lava["task"] == "custom" and lava["n"] == 2 and lava["tag"] == "fixed_pt"
    assert lava["prediction_agreement"] == 1.0 and lava["spike_count_match"] == 1.0
