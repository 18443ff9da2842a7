#!/usr/bin/env python3
"""Rebuild two public sentence-classification sets, MR and SUBJ, as ``spikingbert pipeline --task
custom`` files, in a directory outside the repository (the data is never committed).

* **MR** (Pang & Lee, ACL 2005, "sentence polarity dataset v1.0"): 10,662 movie-review snippets,
  5,331 positive and 5,331 negative. Labels ``negative`` / ``positive``.
* **SUBJ** (Pang & Lee, ACL 2004, "subjectivity dataset v1.0"): 10,000 sentences, 5,000 subjective
  (review snippets) and 5,000 objective (plot summaries). Labels ``subjective`` / ``objective``.

Source: the copies in ``harvardnlp/sent-conv-torch`` (MIT-licensed code; the data files are the
Cornell releases, which their authors distribute for research, https://www.cs.cornell.edu/people/pabo/movie-review-data/),
pinned to commit ``SOURCE_COMMIT`` and checked against the files' git blob ids. Files there:
``data/rt-polarity.all`` and ``data/subj.all``, one ``<label> <tokenized sentence>`` per line
(cp1252 text; MR 0 = negative, SUBJ 0 = subjective).

Split: neither set has an official one; the spiking-network papers that report on them (Lv et al.,
ICLR 2023, and SpikeBERT, which follows it) hold out a random 10% as the test set. Here: 10% per
set, stratified by class and drawn with seed ``SPLIT_SEED`` (``training.pipeline_data.carve_holdout``,
the split ``--select-on holdout`` also uses), the rest is the training file; each file is then
shuffled with the same seed (the sources list one class after the other, so that any first N lines,
e.g. a ``--budget tiny`` run's, hold both classes). The split is not the papers' own (theirs was
not published).

    .venv/bin/python scripts/get_extra_datasets.py --out /work/data/extra                 # clone from GitHub
    .venv/bin/python scripts/get_extra_datasets.py --out DIR --source path/to/clone-or-git-dir

writes ``DIR/{mr,subj}/{train,test}.tsv`` (header ``sentence<TAB>label``) and ``DIR/{mr,subj}/SOURCE.json``
(repository, commit, file, blob id, licence note, split rule, counts, SHA-256 of the outputs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lava_spikingbert.contract.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from training.pipeline_data import carve_holdout  # noqa: E402
from training.readers import Example, custom_task_spec  # noqa: E402

SOURCE_REPO = "https://github.com/harvardnlp/sent-conv-torch"
SOURCE_COMMIT = "d61ded09c99c0199d8c5bca946cd65864de2b296"
SPLIT_SEED = 0
TEST_FRACTION = 0.1
SETS = {
    # name: (file in the repository, its git blob id, label strings by the file's label digit, citation)
    "mr": ("data/rt-polarity.all", "657ea05029d3cbb84e4a5f144a19f41ef2aab5ab", ("negative", "positive"),
           "Pang & Lee 2005, sentence polarity dataset v1.0"),
    "subj": ("data/subj.all", "4bd78f88cb0f2197c81fbfe227ebae0c5e6b3728", ("subjective", "objective"),
             "Pang & Lee 2004, subjectivity dataset v1.0"),
}


def _git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True).stdout


def _git_dir(source: Path) -> Path:
    return source / ".git" if (source / ".git").exists() else source


def read_source(git_dir: Path, name: str) -> list[Example]:
    """The set's examples, labels as indices into its label strings, after checking the blob id."""
    path, blob, labels, _ = SETS[name]
    found = _git(git_dir, "rev-parse", f"{SOURCE_COMMIT}:{path}").decode().strip()
    if found != blob:
        raise SystemExit(f"{path} at {SOURCE_COMMIT}: blob {found}, expected {blob}")
    examples = []
    for lineno, raw in enumerate(_git(git_dir, "show", f"{SOURCE_COMMIT}:{path}").split(b"\n"), 1):
        line = raw.decode("cp1252").strip()
        if not line:
            continue
        digit, _, text = line.partition(" ")
        if digit not in ("0", "1") or not text.strip() or "\t" in text:
            raise SystemExit(f"{path}:{lineno}: expected '<0|1> <sentence>' without tabs, got {line[:60]!r}")
        examples.append(Example(f"{name}-{lineno}", " ".join(text.split()), None, int(digit)))
    return examples


def write_tsv(path: Path, examples: list[Example], labels: tuple[str, ...]) -> dict:
    text = "sentence\tlabel\n" + "".join(f"{ex.text_a}\t{labels[ex.label]}\n" for ex in examples)
    atomic_write_text(path, text)
    return {"file": path.name, "sentences": len(examples),
            "classes": dict(sorted(Counter(labels[ex.label] for ex in examples).items())),
            "sha256": hashlib.sha256(text.encode()).hexdigest()}


def build(git_dir: Path, out: Path) -> None:
    for name, (path, blob, labels, citation) in SETS.items():
        examples = read_source(git_dir, name)
        spec = custom_task_spec(name, labels=labels)
        train, test = carve_holdout(examples, spec, seed=SPLIT_SEED, fraction=TEST_FRACTION,
                                    max_sentences=len(examples))
        order = random.Random(SPLIT_SEED)
        order.shuffle(train)
        order.shuffle(test)
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        files = [write_tsv(d / "train.tsv", train, labels), write_tsv(d / "test.tsv", test, labels)]
        atomic_write_json(d / "SOURCE.json", {
            "dataset": citation, "repository": SOURCE_REPO, "commit": SOURCE_COMMIT, "path": path, "blob": blob,
            "licence": "code MIT (the repository's LICENSE); data: the Cornell release, distributed by its authors "
                       "for research (https://www.cs.cornell.edu/people/pabo/movie-review-data/)",
            "split": f"stratified random {TEST_FRACTION:.0%} test, seed {SPLIT_SEED} "
                     "(training.pipeline_data.carve_holdout); the rest is train; each file shuffled with the same seed",
            "labels": list(labels), "files": files})
        print(f"{name}: {len(train)} train / {len(test)} test sentences -> {d}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory (outside the repository)")
    p.add_argument("--source", default=None,
                   help=f"a clone (or bare git directory) of {SOURCE_REPO} holding commit {SOURCE_COMMIT} "
                        "(default: clone it into a temporary directory)")
    args = p.parse_args(argv)
    out = Path(args.out).expanduser().resolve()
    if out == ROOT or ROOT in out.parents:
        raise SystemExit(f"--out {out} is inside the repository; the data must not be committed")
    if args.source:
        build(_git_dir(Path(args.source).expanduser()), out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["git", "clone", "--quiet", "--filter=blob:none", "--no-checkout", SOURCE_REPO, tmp],
                       check=True)
        build(_git_dir(Path(tmp)), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
