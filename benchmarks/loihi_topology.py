"""Train loihi-profile candidates (``lava_spikingbert.model.loihi``) on SST-2 under a budget and
measure them: dev accuracy of the rate ANN and of the spiking network at T=8/16/32, parameters,
neurons per token, wall time. Prints a table and writes JSON.

Recipe per candidate (the SpikingBERT method with a rate-ANN warm-up):

1. ``rate`` stage: the rate ANN (steady-state map, exact gradients), loss = ``rep_weight`` x
   hidden-state MSE against the fine-tuned teacher's layers (through per-tap projections, teacher
   run online) + soft cross-entropy on the teacher's logits (cached once per teacher);
2. ``spike`` stage: the spiking network at ``train_t`` steps, values = simulated ASRs, gradients
   from the steady-state map at that equilibrium (``mode="equilibrium"``), soft cross-entropy on the
   teacher's logits. The dev accuracy at ``train_t`` is measured every ``eval_every`` steps and the
   best weights are kept (as the main pipeline's prediction stage does).

Example::

    OMP_NUM_THREADS=2 python benchmarks/loihi_topology.py --candidates d256_f1024_l2_k5 d192_f768_l4_k5 \\
        --rate-steps 1500 --spike-steps 150 --json docs/results/loihi_topology.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from lava_spikingbert.model.loihi import LoihiConfig, LoihiSpikingMixer
from training.batching import encode
from training.batching import length_bucketed_batches, mask_inner_tokens
from training.distill import default_layer_map, hidden_loss, soft_cross_entropy
from training.readers import load_glue
from training.tasks import get_task
from training.teacher import load_teacher, teacher_outputs


# name -> LoihiConfig overrides
CANDIDATES = {
    "d384_f1536_l4_k5": dict(hidden_size=384, intermediate_size=1536, num_layers=4, kernel_size=5),
    "d256_f1024_l4_k5": dict(hidden_size=256, intermediate_size=1024, num_layers=4, kernel_size=5),
    "d192_f768_l4_k5": dict(hidden_size=192, intermediate_size=768, num_layers=4, kernel_size=5),
    "d256_f512_l4_k5": dict(hidden_size=256, intermediate_size=512, num_layers=4, kernel_size=5),
    "d256_f1024_l2_k5": dict(hidden_size=256, intermediate_size=1024, num_layers=2, kernel_size=5),
    "d256_f1024_l3_k5": dict(hidden_size=256, intermediate_size=1024, num_layers=3, kernel_size=5),
    "d256_f1024_l4_k3": dict(hidden_size=256, intermediate_size=1024, num_layers=4, kernel_size=3),
    "d256_f1024_l4_k9": dict(hidden_size=256, intermediate_size=1024, num_layers=4, kernel_size=9),
    "d256_f1024_l4_k5_causal": dict(hidden_size=256, intermediate_size=1024, num_layers=4, kernel_size=5,
                                    mixing="causal"),
    "d256_f1024_l4_k5_stair": dict(hidden_size=256, intermediate_size=1024, num_layers=4, kernel_size=5,
                                   rate_forward="staircase"),
}


@dataclass
class Budget:
    rate_steps: int = 1500
    spike_steps: int = 150
    batch_size: int = 32
    rate_lr: float = 1e-3
    spike_lr: float = 1e-4
    embed_lr_factor: float = 0.1  # the teacher-initialised host embeddings move slower
    rep_weight: float = 1.0  # hidden-state KD weight in the rate stage (0: logits only, no teacher run)
    train_t: int = 16
    eval_every: int = 50
    eval_t: tuple = (8, 16, 32)
    calib_mean: float = 0.25
    calib_std: float = 1.0
    seed: int = 42
    weights: str = "fp32"
    augment_mask: float = 0.0  # rate stage: each inner token replaced by [MASK] with this probability


# --------------------------------------------------------------------------- data
def load_data(teacher_dir: str, cache_path: str, max_length: int = 64):
    spec = get_task("sst2")
    teacher, tok = load_teacher(teacher_dir, num_labels=2)
    teacher.config.mask_id = tok.mask_token_id  # the masking augmentation's token
    train = encode(load_glue(spec, "train"), tok, max_length)
    dev = encode(load_glue(spec, "dev"), tok, max_length)
    if Path(cache_path).is_file():
        cache = torch.load(cache_path, weights_only=True)
    else:  # the teacher's logits, once: every candidate's prediction KD reads them
        cache = {split: teacher_logits(teacher, enc) for split, enc in (("train", train), ("dev", dev))}
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(cache, cache_path)
    return spec, teacher, train, dev, cache


@torch.no_grad()
def teacher_logits(teacher, enc) -> torch.Tensor:

    out = torch.zeros(len(enc), 2)
    for b in length_bucketed_batches(enc, 256, shuffle=False):
        out[b["index"]] = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                  token_type_ids=b["token_type_ids"]).logits.float()
    return out


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: LoihiSpikingMixer, dev, *, mode: str, t_conv: int | None = None, batch_size: int = 64) -> dict:

    was = model.training
    model.eval()
    preds = torch.zeros(len(dev), dtype=torch.long)
    start = time.perf_counter()
    for b in length_bucketed_batches(dev, batch_size, shuffle=False):
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], mode=mode, t_conv=t_conv)
        preds[b["index"]] = out.logits.argmax(-1)
    model.train(was)
    acc = float((preds == torch.tensor(dev.labels)).float().mean())
    return {"accuracy": acc, "wall_s": time.perf_counter() - start}


# --------------------------------------------------------------------------- training
def make_optimizer(model: LoihiSpikingMixer, lr: float, embed_factor: float) -> torch.optim.Optimizer:
    embed, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if name.split(".")[0] in ("word_embeddings", "position_embeddings", "token_type_embeddings", "embed_norm"):
            embed.append(p)
        elif p.ndim >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0},
              {"params": embed, "weight_decay": 0.0, "lr": lr * embed_factor}]
    return torch.optim.AdamW(groups, lr=lr)


def schedule(optimizer, total: int, warmup: float = 0.1):
    w = max(1, int(warmup * total))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (w + 1) if s < w else max(0.0, (total - s) / max(1, total - w)))


def batches_forever(train, batch_size: int, seed: int):

    epoch = 0
    while True:
        for b in length_bucketed_batches(train, batch_size, shuffle=True, seed=seed, epoch=epoch):
            yield b
        epoch += 1


def train_stage(model, stage: str, steps: int, budget: Budget, train, dev, cache, teacher, log,
                initial: float | None = None) -> dict:
    """One stage ("rate" or "spike"); returns its history and wall time. For "spike" the best
    weights by dev accuracy at ``train_t`` are kept, counting the starting weights (``initial``:
    their accuracy) as step 0."""

    lr = budget.rate_lr if stage == "rate" else budget.spike_lr
    opt = make_optimizer(model, lr, budget.embed_lr_factor)
    sched = schedule(opt, steps)
    layer_map = default_layer_map(model.config.num_layers, teacher.config.num_hidden_layers)
    rep_w = budget.rep_weight if stage == "rate" else 0.0
    mode = "rate" if stage == "rate" else "equilibrium"
    data = batches_forever(train, budget.batch_size, budget.seed + (0 if stage == "rate" else 1))
    augmented = stage == "rate" and budget.augment_mask > 0
    generator = torch.Generator().manual_seed(budget.seed)
    history, best, best_state = [], None, None
    if stage == "spike" and initial is not None:
        history.append({"step": 0, "accuracy": initial})
        best, best_state = initial, copy.deepcopy(model.state_dict())
    model.train()
    start = time.perf_counter()
    running = None
    for step in range(1, steps + 1):
        b = next(data)
        if augmented:
            b = mask_inner_tokens(b, budget.augment_mask, teacher.config.mask_id, generator)
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], mode=mode, t_conv=budget.train_t)
        # one teacher pass gives the hidden states and, for a masked batch, the logits it is labelled with
        t_out = teacher_outputs(teacher, b) if rep_w > 0 or augmented else None
        target = t_out.logits.float() if augmented else cache["train"][b["index"]]
        loss = soft_cross_entropy(out.logits, target, 1.0)
        if rep_w > 0:
            loss = loss + rep_w * hidden_loss(out.projected, t_out.hidden_states, layer_map, out.token_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            log(f"  {stage} step {step}/{steps} loss {running:.4f} ({time.perf_counter() - start:.0f}s)")
        if stage == "spike" and (step % budget.eval_every == 0 or step == steps):
            r = evaluate(model, dev, mode="simulate", t_conv=budget.train_t)
            history.append({"step": step, "accuracy": r["accuracy"]})
            log(f"  spike step {step}: dev T={budget.train_t} {100 * r['accuracy']:.2f}%")
            if best is None or r["accuracy"] > best:
                best, best_state = r["accuracy"], copy.deepcopy(model.state_dict())
    wall = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"stage": stage, "steps": steps, "wall_s": wall, "s_per_step": wall / max(1, steps), "history": history,
            "best": best}


def run_candidate(name: str, overrides: dict, budget: Budget, data, log, save_dir: Path | None,
                  init_from: str | None = None) -> dict:
    """Train and measure one candidate; ``init_from`` continues from a saved candidate instead
    of a fresh model (its config is kept; ``overrides`` then only change the dynamics settings)."""
    spec, teacher, train, dev, cache = data
    torch.manual_seed(budget.seed)
    if init_from:
        config = LoihiConfig.load(Path(init_from) / "config.json")
        for k, v in overrides.items():
            if k in ("rate_forward", "dropout", "t_conv"):
                setattr(config, k, v)
        config.weights = budget.weights
        config.validate()
        model = LoihiSpikingMixer(config)
        model.load_state_dict(torch.load(Path(init_from) / "model.pt", weights_only=True))
        config.extra["init_from"] = str(init_from)
    else:
        config = LoihiConfig(embed_size=teacher.config.hidden_size, fit_size=teacher.config.hidden_size,
                             vocab_size=teacher.config.vocab_size, max_length=64, weights=budget.weights,
                             **overrides)
        model = LoihiSpikingMixer(config)
        model.init_from_teacher(teacher)
        calib = next(iter(length_bucketed_batches(train, 256, shuffle=True, seed=budget.seed)))
        model.calibrate_(calib["input_ids"], calib["attention_mask"], calib["token_type_ids"],
                         mean=budget.calib_mean, std=budget.calib_std)
    log(f"{name}: {config.neurons_per_token} neurons/token, params {model.parameter_counts()}")
    t0 = time.perf_counter()
    stages = []
    if budget.rate_steps:
        stages.append(train_stage(model, "rate", budget.rate_steps, budget, train, dev, cache, teacher, log))
    rate_after_warmup = evaluate(model, dev, mode="rate")["accuracy"]
    spike_after_warmup = evaluate(model, dev, mode="simulate", t_conv=budget.train_t)["accuracy"]
    log(f"  after rate stage: rate ANN {100 * rate_after_warmup:.2f}%, spiking T={budget.train_t} "
        f"{100 * spike_after_warmup:.2f}%")
    if budget.spike_steps:
        stages.append(train_stage(model, "spike", budget.spike_steps, budget, train, dev, cache, teacher, log,
                                  initial=spike_after_warmup))
    train_wall = time.perf_counter() - t0
    result = {"name": name, "config": config.to_dict(), "budget": asdict(budget),
              "params": model.parameter_counts(), "neurons_per_token": config.neurons_per_token,
              "stages": stages, "train_wall_s": train_wall,
              "after_rate_stage": {"rate_ann": rate_after_warmup, f"spiking_T{budget.train_t}": spike_after_warmup},
              "rate_ann": evaluate(model, dev, mode="rate")["accuracy"], "spiking": {}}
    for T in budget.eval_t:
        r = evaluate(model, dev, mode="simulate", t_conv=T)
        result["spiking"][str(T)] = r["accuracy"]
        result.setdefault("eval_wall_s", {})[str(T)] = r["wall_s"]
    if budget.weights == "fp32":  # the same weights rounded to int8 Loihi weights (no QAT)
        model.set_weights("int8")
        result["int8_ptq_spiking_T16"] = evaluate(model, dev, mode="simulate", t_conv=16)["accuracy"]
        model.set_weights("fp32")
    log(f"  {name}: rate {100 * result['rate_ann']:.2f}% spiking " +
        " ".join(f"T={t}:{100 * a:.2f}%" for t, a in result["spiking"].items()) +
        (f" int8(PTQ) T=16 {100 * result['int8_ptq_spiking_T16']:.2f}%" if "int8_ptq_spiking_T16" in result else "") +
        f" train {train_wall:.0f}s")
    if save_dir is not None:
        d = save_dir / name
        d.mkdir(parents=True, exist_ok=True)
        config.save(d / "config.json")
        torch.save(model.state_dict(), d / "model.pt")
    return result


def print_table(results: list[dict]) -> None:
    head = (f"{'candidate':<28} {'params(chip)':>12} {'n/tok':>6} {'steps':>9} {'warm-up r/T16':>14} {'rateANN':>8} "
            f"{'T=8':>7} {'T=16':>7} {'T=32':>7} {'int8':>7} {'train s':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        s = r["spiking"]
        w = r["after_rate_stage"]
        wt = next(v for k, v in w.items() if k.startswith("spiking"))
        steps = "+".join(str(st["steps"]) for st in r["stages"])
        print(f"{r['name']:<28} {r['params']['chip']:>12,} {r['neurons_per_token']:>6} {steps:>9} "
              f"{100 * w['rate_ann']:>6.2f}/{100 * wt:>6.2f}% {100 * r['rate_ann']:>7.2f}% "
              f"{100 * s.get('8', float('nan')):>6.2f}% {100 * s.get('16', float('nan')):>6.2f}% "
              f"{100 * s.get('32', float('nan')):>6.2f}% {100 * r.get('int8_ptq_spiking_T16', float('nan')):>6.2f}% "
              f"{r['train_wall_s']:>8.0f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", nargs="+", default=["d256_f1024_l2_k5"], help=f"from {sorted(CANDIDATES)}")
    p.add_argument("--set", nargs="*", default=[], help="config overrides for every candidate, key=value (JSON values)")
    p.add_argument("--tag", default="", help="suffix for the candidate names in the results")
    for f in Budget.__dataclass_fields__.values():
        if f.name == "eval_t":
            p.add_argument("--eval-t", type=int, nargs="+", default=list(f.default))
        else:
            p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    p.add_argument("--json", default="docs/results/loihi_topology.json", help="results file (appended by candidate)")
    p.add_argument("--teacher", default="runs/sst2/teacher", help="fine-tuned SST-2 teacher (the main job writes runs/sst2/teacher)")
    p.add_argument("--teacher-cache", default="runs/loihi_topology/teacher_logits.pt", help="the teacher's logits, computed once")
    p.add_argument("--save-dir", default="runs/loihi_topology/models")
    p.add_argument("--init-from", default=None, help="continue from a saved candidate directory (one candidate)")
    p.add_argument("--report", nargs="*", default=None, metavar="JSON",
                   help="only print the table of earlier results files, train nothing")
    args = p.parse_args(argv)
    if args.report is not None:
        print_table([r for f in args.report for r in json.loads(Path(f).read_text())])
        return
    budget = Budget(**{k: (tuple(v) if k == "eval_t" else v) for k, v in vars(args).items()
                       if k in Budget.__dataclass_fields__})
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    data = load_data(args.teacher, args.teacher_cache)
    out = Path(args.json)
    results = json.loads(out.read_text()) if out.is_file() else []
    mine = []
    for name in args.candidates:
        overrides = {**CANDIDATES[name], **extra}
        full_name = name + args.tag
        r = run_candidate(full_name, overrides, budget, data, log, Path(args.save_dir) if args.save_dir else None,
                          init_from=args.init_from)
        r["command"] = " ".join(sys.argv)
        mine.append(r)
        results = [x for x in results if x["name"] != full_name] + [r]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(mine)


if __name__ == "__main__":
    main()
