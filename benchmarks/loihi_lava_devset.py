"""The loihi profile on Lava, whole SST-2 dev set: fixed_pt (and floating_pt on a subset) against the
torch references, with wall time, memory and machine load. Prints a table, writes JSON.

Input: a loihi model file, or a loihi checkpoint directory (exported to int8 first), or an
exploration run's ``model.pt`` (a torch state dict) + ``config.json`` (converted into a checkpoint
directory under ``--work`` first, with the tokenizer files of ``--tokenizer-dir``).

    nice -n 10 env OMP_NUM_THREADS=1 GLUE_DIR=/work/shared/data/glue .venv/bin/python \\
        benchmarks/loihi_lava_devset.py --state-dict-dir /work/runs/explore/models/d256_f1024_l2_k5_r1500 \\
        --tokenizer-dir /work/runs/sst2/teacher --work /tmp/loihi_devset \\
        --float-limit 128 --json docs/results/loihi_lava_devset.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lava_spikingbert.contract.atomic import atomic_write_text  # noqa: E402

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class MemoryWatch:
    """Peak proportional set size (PSS: shared pages split between their users) of this process
    and all its descendants, sampled every 2 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(2.0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def convert_state_dict(src: Path, tokenizer_dir: Path | None, out: Path) -> Path:
    """An exploration run's state dict + config.json -> a loihi checkpoint directory."""
    import torch

    from lava_spikingbert.model.checkpoint import save_model
    from lava_spikingbert.model.loihi import LoihiConfig, LoihiSpikingMixer

    model = LoihiSpikingMixer(LoihiConfig.load(src))
    state = torch.load(src / "model.pt", weights_only=True, map_location="cpu")
    model.load_state_dict(state, strict=True)
    save_model(model, out)
    for name in TOKENIZER_FILES:
        if tokenizer_dir is not None and (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


def machine() -> dict:
    return {"host": platform.node(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
            "mem_total_gb": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "mem_available_gb": round(psutil.virtual_memory().available / 2 ** 30, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-file", help="a loihi model file (.h5)")
    src.add_argument("--checkpoint", help="a loihi checkpoint directory (exported to int8 under --work)")
    src.add_argument("--state-dict-dir", help="a directory with model.pt (state dict) + config.json")
    ap.add_argument("--tokenizer-dir", default=None, help="tokenizer files for --state-dict-dir")
    ap.add_argument("--work", default="/tmp/loihi_devset", help="scratch directory (checkpoint, model file)")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--limit", type=int, default=None, help="sentences for fixed_pt (default: all)")
    ap.add_argument("--float-limit", type=int, default=0, help="sentences for floating_pt (0: skip)")
    ap.add_argument("--float-max-tokens", type=int, default=None,
                    help="floating_pt: only sentences of at most this many tokens (rows of max_tokens + 2 margins: "
                         "a smaller graph; float64 weights take twice the memory of fixed_pt's int32)")
    ap.add_argument("--row-tokens", type=int, default=None)
    ap.add_argument("--float-model", action="store_true",
                    help="also run the torch float model of the int8 weights on the fixed_pt sentences")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from hw_export.loihi_export import export_loihi
    from lava_spikingbert.loihi_eval import evaluate_loihi

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    notes = []
    model_file = args.model_file
    ckpt = args.checkpoint
    if args.state_dict_dir:
        ckpt = str(convert_state_dict(Path(args.state_dict_dir), Path(args.tokenizer_dir) if args.tokenizer_dir else None,
                                      work / "checkpoint"))
        notes.append(f"checkpoint converted from the state dict in {args.state_dict_dir}")
    if ckpt:
        model_file = str(work / "model_int8.h5")
        t0 = time.perf_counter()
        export_loihi(ckpt, "int8", model_file)
        notes.append(f"exported int8 in {time.perf_counter() - t0:.1f} s")
    results = {"command": " ".join([sys.executable, *sys.argv]),
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "machine_before": machine(), "model_file": model_file, "notes": notes, "runs": {}}
    plan = [("fixed_pt", args.limit, None)] + \
        ([("floating_pt", args.float_limit, args.float_max_tokens)] if args.float_limit else [])
    for tag, limit, max_tokens in plan:
        print(f"== {tag} on {limit or 'all'} sentences", flush=True)
        with MemoryWatch() as mem:
            r = evaluate_loihi(model_file, args.task, args.split, limit=limit, tag=tag, parity=True,
                               row_tokens=args.row_tokens, progress=True, max_tokens=max_tokens)
        r["peak_pss_gb"] = round(mem.peak / 2 ** 30, 2)
        r["load_avg_after"] = os.getloadavg()
        results["runs"][tag] = r
    if args.float_model and "fixed_pt" in results["runs"]:
        # what the integer mapping (bias and input rounding) costs: the torch float model of the same
        # int8 weights on every sentence, against Lava fixed_pt's predictions
        from lava_spikingbert.contract.model_file import read_model_file
        from lava_spikingbert.lava.schedule import file_tokenizer, tokenize
        from lava_spikingbert.loihi_eval import reference_run
        from training.readers import load_glue
        from training.tasks import get_task

        mf = read_model_file(model_file)
        examples = load_glue(get_task(args.task), args.split, None, limit=args.limit)
        ids, types = tokenize(file_tokenizer(mf, int(mf.config["max_length"])), examples)
        t0 = time.perf_counter()
        _, logits = reference_run(mf, "floating_pt", ids, types, int(mf.config["t_conv"]))
        float_pred = logits.argmax(-1)
        lava_pred = np.asarray(results["runs"]["fixed_pt"]["predictions"])
        labels = np.asarray([ex.label for ex in examples])
        results["torch_float_model_of_the_int8_weights"] = {
            "sentences": len(ids), "accuracy": float((float_pred == labels).mean()),
            "prediction_agreement_with_lava_fixed_pt": float((float_pred == lava_pred).mean()),
            "seconds": time.perf_counter() - t0}
    results["machine_after"] = machine()
    head = f"{'tag':12} {'n':>5} {'rows':>5} {'steps':>6} {'lava min':>9} {'ms/step':>8} {'acc':>7} " \
           f"{'pred =':>7} {'counts =':>9} {'ref acc':>8} {'peak GB':>8}"
    print(head)
    for tag, r in results["runs"].items():
        print(f"{tag:12} {r['n']:5d} {r['rows']:5d} {r['steps']:6d} {r['lava_s'] / 60:9.2f} "
              f"{r['timings']['ms_per_step']:8.1f} {100 * r['metrics'].get('accuracy', float('nan')):7.2f} "
              f"{100 * r['prediction_agreement']:7.2f} {100 * r['spike_count_match']:9.2f} "
              f"{100 * r['reference_metrics'].get('accuracy', float('nan')):8.2f} {r['peak_pss_gb']:8.2f}")
    if "torch_float_model_of_the_int8_weights" in results:
        f = results["torch_float_model_of_the_int8_weights"]
        print(f"torch float model of the int8 weights: accuracy {100 * f['accuracy']:.2f}%, predictions equal to "
              f"Lava fixed_pt {100 * f['prediction_agreement_with_lava_fixed_pt']:.2f}%")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.json), json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
