"""Gradients at the spiking equilibrium.

Training never differentiates through time. The forward value of every population is the ASR the
spiking network actually reached; its gradient is that of the steady-state map
``a = g(F(a_in))`` (``g`` the neuron's rate function) evaluated at that equilibrium
(SpikingBERT, Bal & Sengupta 2024, Sec. "implicit differentiation"). Without feedback the map is a
feed-forward composition, so the implicit-function-theorem adjoint reduces to the chain rule; with
the optional last-to-first feedback the adjoint ``y = J^T y + g`` is solved iteratively here.
"""

from __future__ import annotations

import torch


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return None, grad


def straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Exactly ``value`` in the forward pass; the gradient goes to ``surrogate``.

    (``surrogate + (value - surrogate).detach()`` would round; this does not.)
    """
    if value.shape != surrogate.shape:
        raise ValueError(f"straight_through: shapes differ {tuple(value.shape)} vs {tuple(surrogate.shape)}")
    if not surrogate.requires_grad:
        return value.detach()
    return _StraightThrough.apply(value.detach(), surrogate)


def attach_implicit_adjoint(z_out: torch.Tensor, z_in: torch.Tensor, *, solver: str = "broyden",
                            max_iter: int = 50, tol: float = 1e-8) -> dict:
    """Make the gradient reaching ``z_out = f(z_in)`` (``z_in`` the fixed point) the IFT adjoint.

    The hook replaces the incoming gradient ``g`` by the solution of ``y = J^T y + g`` with
    ``J = d f / d z`` at the fixed point, i.e. ``y = (I - J^T)^{-1} g``, solved with torchdeq's
    solvers ("broyden", "anderson", "fixed_point_iter") on vector-Jacobian products, as in deep
    equilibrium models. Returns a dict that receives the solver's statistics after backward.
    """
    from torchdeq.solver import get_solver

    stats: dict = {"solver": solver, "steps": None, "rel_residual": None}
    if not z_out.requires_grad:
        return stats
    solve = get_solver(solver)
    handle = None

    def hook(grad: torch.Tensor) -> torch.Tensor:
        handle.remove()  # the VJPs below must not re-enter this hook

        def adjoint_map(y: torch.Tensor) -> torch.Tensor:
            vjp = torch.autograd.grad(z_out, z_in, y, retain_graph=True, allow_unused=True)[0]
            return grad if vjp is None else vjp + grad

        y, _, info = solve(adjoint_map, grad, max_iter=max_iter, tol=tol, stop_mode="rel")
        stats["steps"] = int(torch.as_tensor(info["nstep"]).max())
        stats["rel_residual"] = float(torch.as_tensor(info["rel_lowest"]).max())
        return y

    handle = z_out.register_hook(hook)
    return stats
