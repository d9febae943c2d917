"""Symmetry teleportation: move along a continuous symmetry orbit to raise the gradient norm at the same loss.

After Zhao et al. (REFERENCE §5.7), with exact, data-free group actions instead of the data-dependent GL of the
original: for each site with a continuous group, g = exp(ξ) with ξ in the Lie algebra —

* positive scaling (ReLU sites): ξ = diag(t), g = diag(eᵗ);
* general linear (linear–linear pairs, the per-head W_Q·W_Kᵀ and W_V·W_O): ξ ∈ gl(n);
* orthogonal (isotropic sites, RMSNorm streams): ξ = A − Aᵀ ∈ so(n); block-orthogonal: so(k) per block.

Each step evaluates the objective at θ(ξ) = g(ξ)·θ from ξ = 0, takes one gradient-ascent step in ξ (halving it
until the objective rises), applies g, and checks that the batch loss did not change beyond the dtype tolerance.

Note (REFERENCE §5.7, derived): an orthogonal action is orthogonal on the parameters, so ∇L(gθ) = g∇L(θ) and
‖∇L‖ is constant on the orbit: teleporting along orthogonal sites cannot change the gradient norm of a plain
loss (only non-compact groups, scaling and GL, can). Such sites are listed in ``TeleportResult.invariant_sites``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from isotorch import groups as _groups
from isotorch import testing as _testing
from isotorch._util import check_choice, check_int, json_safe
from isotorch.params._compat import batches, run_checked
from isotorch.params._errors import SymmetryError
from isotorch.params._sites import Site, Symmetries, symmetries
from isotorch.params._transform import apply_element, check_model, load_changes

__all__ = ["TeleportResult", "teleport"]

OBJECTIVES = ("grad_norm",)


@dataclass(frozen=True)
class TeleportResult:
    """The result of :func:`teleport`.

    Attributes:
        model: the teleported copy of the model (same function up to rounding).
        loss_before, loss_after: the batch loss before and after (equal within tolerance, checked).
        objective_before, objective_after: ‖∇_θ L‖² on the batch before and after.
        gain: objective_after / objective_before.
        history: the objective after each step.
        sites: site → the Lie algebra moved along (``"positive_scaling"``, ``"general_linear"``, ``"orthogonal"``,
            ``"block_orthogonal:k"``).
        invariant_sites: the sites whose group acts orthogonally, along which ‖∇L‖ cannot change.
        note: a sentence on what could and could not change.
    """

    model: nn.Module = field(repr=False)
    loss_before: float
    loss_after: float
    objective_before: float
    objective_after: float
    gain: float
    history: tuple[float, ...]
    sites: dict[str, str]
    invariant_sites: tuple[str, ...]
    note: str

    def to_dict(self) -> dict:
        """A JSON-ready dict (without the model)."""
        return json_safe(
            {
                "loss_before": self.loss_before,
                "loss_after": self.loss_after,
                "objective_before": self.objective_before,
                "objective_after": self.objective_after,
                "gain": self.gain,
                "history": list(self.history),
                "sites": dict(self.sites),
                "invariant_sites": list(self.invariant_sites),
                "note": self.note,
            }
        )


def _algebra(site: Site) -> str | None:
    if not site.free:
        return None
    if site.general_linear:
        return "general_linear"
    if "orthogonal" in site.maximal or "special_orthogonal" in site.maximal:
        return "orthogonal"
    if "positive_scaling" in site.groups:
        return "positive_scaling"
    blocks = [k for k in site.maximal if _groups.get(k).name == "block_orthogonal" and _groups.get(k)._block_size() > 1]
    if blocks:
        return blocks[0]
    return None


def _exp(kind: str, xi: torch.Tensor, n: int) -> torch.Tensor:
    if kind == "positive_scaling":
        return torch.diag(torch.exp(xi))
    if kind == "general_linear":
        return torch.linalg.matrix_exp(xi)
    if kind == "orthogonal":
        return torch.linalg.matrix_exp(xi - xi.mT)
    k = _groups.get(kind)._block_size()
    blocks = xi.reshape(n // k, k, k)
    return torch.block_diag(*torch.linalg.matrix_exp(blocks - blocks.mT))


def _zeros(kind: str, n: int, dtype) -> torch.Tensor:
    if kind == "positive_scaling":
        return torch.zeros(n, dtype=dtype, requires_grad=True)
    if kind.startswith("block_orthogonal"):
        k = _groups.get(kind)._block_size()
        return torch.zeros(n // k * k * k, dtype=dtype, requires_grad=True)
    return torch.zeros(n, n, dtype=dtype, requires_grad=True)


def teleport(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int = 10,
    lr: float = 1e-2,
    objective: str = "grad_norm",
    sites: list[str] | None = None,
    syms: Symmetries | None = None,
    tol: float | None = None,
) -> TeleportResult:
    """Teleport ``model`` along its continuous site symmetries to increase ‖∇L‖² on ``batch`` at the same loss.

    Args:
        model: the network (not modified; evaluated in eval mode).
        loss_fn: ``loss_fn(outputs, targets)`` → the mean loss of the batch.
        batch: an ``(inputs, targets)`` pair.
        steps: gradient-ascent steps in the Lie algebra (default 10).
        lr: the length of each ascent step in the Lie algebra (the gradient is normalised; the step is halved, up
            to 20 times, until the objective rises). Default 1e-2.
        objective: ``"grad_norm"`` (Σ over parameters of ‖∂L/∂θ‖²).
        sites: the site names to move along (default: every free site with a continuous group).
        syms: precomputed :func:`symmetries` of the model on ``batch``'s inputs.
        tol: the relative tolerance of the loss check (default :func:`isotorch.testing.tolerance` of the dtype).

    Returns:
        :class:`TeleportResult` with the new model, the loss before/after and the gain in the objective.

    Raises:
        SymmetryError: the batch loss changed beyond the tolerance (never expected: the actions are exact).
        ValueError: an unknown objective, a batch without targets, a site without a continuous group.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from isotorch.params import teleport
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).double()
        >>> batch = (torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64))
        >>> result = teleport(model, nn.functional.mse_loss, batch, steps=5)
        >>> result.gain > 1.0, abs(result.loss_after - result.loss_before) < 1e-9
        (True, True)
    """
    check_choice(objective, "objective", OBJECTIVES)
    check_int(steps, "steps", minimum=0)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite float, got {lr!r}")
    parts = next(batches(batch, name="batch"))
    if len(parts) < 2:
        raise ValueError("batch must be an (inputs, targets) pair")
    inputs, targets = parts[0], parts[1]
    with torch.no_grad():
        run_checked(model, inputs, "batch")
    if syms is None:
        syms = symmetries(model, inputs)
    check_model(model, syms)
    chosen: dict[str, str] = {}
    for site in syms:
        if sites is not None and site.name not in sites:
            continue
        kind = _algebra(site)
        if kind is None:
            if sites is not None:
                raise ValueError(f"site {site.name!r} has no continuous group to teleport along ({site.group})")
            continue
        chosen[site.name] = kind
    invariant = tuple(n for n, k in chosen.items() if k == "orthogonal" or k.startswith("block_orthogonal"))

    new = copy.deepcopy(model)
    flags = [(m, m.training) for m in new.modules()]
    new.eval()
    param_names = [n for n, _ in new.named_parameters()]
    state = {k: v.detach() for k, v in new.state_dict().items()}
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)

    def evaluate(xi: dict[str, torch.Tensor] | None, create_graph: bool):
        current = dict(state)
        if xi:
            mats = {n: _exp(chosen[n], v, syms[n].size) for n, v in xi.items()}
            current.update(apply_element(current, syms, mats))
        params = {
            n: current[n] if current[n].requires_grad else current[n].detach().requires_grad_(True) for n in param_names
        }
        current.update(params)
        out = functional_call(new, current, (inputs,))
        loss = loss_fn(out, targets)
        grads = torch.autograd.grad(
            loss, [params[n] for n in param_names], create_graph=create_graph, allow_unused=True
        )
        obj = sum((g.pow(2).sum() for g in grads if g is not None), torch.zeros((), dtype=loss.dtype))
        return loss, obj

    try:
        loss0, obj0 = evaluate(None, create_graph=False)
        loss_before, objective_before = float(loss0.detach()), float(obj0.detach())
        history = []
        obj_now = objective_before
        for _ in range(steps if chosen else 0):
            xi = {n: _zeros(k, syms[n].size, dtype) for n, k in chosen.items()}
            _, obj = evaluate(xi, create_graph=True)
            grads = torch.autograd.grad(obj, list(xi.values()), allow_unused=True)
            direction = {
                n: (g if g is not None else torch.zeros_like(v)).detach()
                for (n, v), g in zip(xi.items(), grads, strict=True)
            }
            norm = math.sqrt(sum(float(d.pow(2).sum()) for d in direction.values()))
            if not norm > 0 or not math.isfinite(norm):
                break
            direction = {n: d / norm for n, d in direction.items()}
            step = lr
            accepted = False
            for _ in range(20):
                trial = {n: step * d for n, d in direction.items()}
                mats = {n: _exp(chosen[n], v.to(torch.float64), syms[n].size) for n, v in trial.items()}
                candidate = dict(state)
                candidate.update(apply_element(state, syms, mats))
                saved = state
                state = candidate
                _, obj_new = evaluate(None, create_graph=False)
                obj_new = float(obj_new.detach())
                if obj_new > obj_now and math.isfinite(obj_new):
                    obj_now = obj_new
                    accepted = True
                    break
                state = saved
                step /= 2
            history.append(obj_now)
            if not accepted:
                break
        loss1, obj1 = evaluate(None, create_graph=False)
        loss_after, objective_after = float(loss1.detach()), float(obj1.detach())
    finally:
        for m, flag in flags:
            m.training = flag
    limit = tol if tol is not None else _testing.tolerance(dtype)
    if abs(loss_after - loss_before) > limit * max(abs(loss_before), 1e-12):
        raise SymmetryError(
            f"teleportation changed the batch loss from {loss_before:.6g} to {loss_after:.6g} "
            f"(relative tolerance {limit:.1e})"
        )
    load_changes(new, {k: v.detach() for k, v in state.items()})
    note = (
        "no site with a continuous group"
        if not chosen
        else (
            "orthogonal sites "
            + ", ".join(invariant)
            + " cannot change ‖∇L‖ (an orthogonal action rotates the gradient)"
            if invariant
            else "moved along non-compact groups (positive scaling, general linear)"
        )
    )
    return TeleportResult(
        model=new,
        loss_before=loss_before,
        loss_after=loss_after,
        objective_before=objective_before,
        objective_after=objective_after,
        gain=objective_after / objective_before if objective_before > 0 else float("nan"),
        history=tuple(history),
        sites=chosen,
        invariant_sites=invariant,
        note=note,
    )
