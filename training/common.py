"""Small pieces every training loop here shares: seeding, RNG snapshots, optimizer, schedule, DDP."""

from __future__ import annotations

import datetime
import math
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from lava_spikingbert.contract.errors import SpikingBertError
from lava_spikingbert.model.inference import intra_op_threads


class SettingsError(SpikingBertError):
    """A resume or reuse with settings other than the recorded ones."""


def refuse_other_settings(diff: dict[str, tuple], what: str) -> None:
    """Raise ``SettingsError`` "<what> (saved -> now): name: saved -> now; ..." if ``diff`` (name ->
    (saved, now)) is not empty: one message for every refused resume or reuse."""
    if diff:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise SettingsError(f"{what} (saved -> now): {listed}")


def improves(value: float, best: float | None) -> bool:
    """Whether a dev metric ``value`` beats ``best`` (higher is better). NaN (e.g. a correlation of
    constant predictions) never beats a number, and any number beats a NaN best."""
    if math.isnan(value):
        return best is None
    return best is None or math.isnan(best) or value > best


def worse(a: float, b: float) -> float:
    """The worse of two dev metrics (higher is better); NaN if either is NaN."""
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, *,
                   head_lr: float | None = None, head_prefix: str = "classifier.",
                   embed_lr: float | None = None, embed_prefixes: tuple[str, ...] = ("embeddings.",)
                   ) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, LayerNorm parameters and other 1-d tensors (as BERT).

    ``head_lr``: a separate learning rate for the parameters under ``head_prefix`` (the task
    head). A head trained from scratch on top of a distilled body needs a far larger step than
    the body's fine-tuning rate to move its logits within a short schedule.

    ``embed_lr``: a separate learning rate, without weight decay, for the parameters under
    ``embed_prefixes`` (the teacher-initialised embeddings, which should move slower than a
    network trained from scratch)."""
    decay, no_decay, head, embed = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if head_lr is not None and name.startswith(head_prefix):
            head.append(p)
            continue
        if embed_lr is not None and name.startswith(embed_prefixes):
            embed.append(p)
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name or name.endswith(".bias")
         else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if head:
        groups.append({"params": head, "weight_decay": 0.0, "lr": head_lr})
    if embed:
        groups.append({"params": embed, "weight_decay": 0.0, "lr": embed_lr})
    try:  # the fused kernel is faster than the per-tensor loop on CPU
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    decay: bool = True) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then linear decay to 0 at ``total_steps`` (or constant if not ``decay``)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if not decay:
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class DistEnv:
    """Process-group facts; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # processes of this job on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def main_only_threads(self):
        """Context for work only the main rank does while the others wait at a barrier (teacher
        fine-tuning): the main rank borrows the waiting local ranks' cores as intra-op threads."""
        return intra_op_threads(torch.get_num_threads() * self.local_world_size)

    def shard(self, items: list) -> list:
        """This rank's share of ``items`` (strided: rank, rank + world_size, ...)."""
        return items[self.rank::self.world_size]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over the ranks (identity for one process)."""
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def average_gradients(self, model: torch.nn.Module) -> None:
        """All-reduce (mean) every parameter's gradient: data-parallel training on CPU (gloo).

        Done by hand rather than with DistributedDataParallel because a training step here is a
        no-grad simulation plus a steady-state pass that only touches some parameters per stage.
        """
        if self.world_size == 1:
            return
        # unused parameters (grad None) are the same on every rank; the others travel as one
        # flat buffer: one all-reduce per step instead of one per tensor (latency-bound on gloo)
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def check_in_sync(self, model: torch.nn.Module) -> None:
        """Raise if the replicas' weights diverged (they must stay identical under averaged grads)."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
            lo, hi = flat.clone(), flat.clone()
            torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
            gap = float((hi - lo).abs().max())
        if gap > 0:
            raise RuntimeError(f"data-parallel replicas diverged (max weight difference {gap:.3g})")

    def mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t) / self.world_size


# the other ranks wait at a barrier while the main rank fine-tunes the teacher (hours with
# --budget full): far longer than torch's 30-minute default before a collective gives up
BARRIER_TIMEOUT = datetime.timedelta(hours=24)


def init_distributed() -> DistEnv:
    """Join the process group when started by torchrun (env WORLD_SIZE > 1), gloo backend on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    return DistEnv(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                   local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
