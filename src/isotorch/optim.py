"""Optimisers by symmetry: a rotation-equivariant Adam and a registry of optimisers with the groups they respect.

An optimiser is *G-equivariant* when running it on rotated parameters g·θ with rotated gradients g·∇ gives the
rotated trajectory g·θ_t. SGD, momentum and Nesterov are linear in the gradient and hence O(n)-equivariant.
Adam, RMSprop and Adagrad keep a second moment per coordinate, so they are only B_n-equivariant (signed
permutations): a rotation mixes coordinates and changes the per-coordinate normalisation.

:class:`IsoAdam` restores O(n) equivariance by sharing the second moment along the axes that rotate: over the whole
tensor (one scalar, both sides rotate), per output row (the input axis rotates) or per input column (the output
axis rotates).

Examples:
    >>> import torch, isotorch as it
    >>> w = torch.nn.Parameter(torch.ones(3, 2))
    >>> opt = it.optim.IsoAdam([w], lr=0.1)
    >>> w.grad = torch.ones(3, 2)
    >>> opt.step()
    >>> [round(v, 4) for v in w.detach()[0].tolist()]
    [0.9, 0.9]
    >>> it.optim.get("adam").groups
    ('permutation', 'signed_permutation')
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import NamedTuple, overload

import torch

from isotorch._util import check_choice, check_finite, check_name

__all__ = ["SECOND_MOMENTS", "IsoAdam", "OptimiserSpec", "get", "names"]

SECOND_MOMENTS: tuple[str, ...] = ("tensor", "row", "column")


def _reduce_dims(mode: str, ndim: int) -> tuple[int, ...]:
    """The axes that the second moment is shared over, for a tensor with ``ndim`` axes (axis 0 = output)."""
    if mode == "tensor":
        return tuple(range(ndim))
    if mode == "row":
        return tuple(range(1, ndim))
    return (0,) if ndim >= 1 else ()


def _check_hyperparameters(lr, betas, eps, weight_decay, second_moment) -> None:
    check_finite(lr, "lr", minimum=0)
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
        raise ValueError(f"betas must be a pair (beta1, beta2) with 0 <= beta < 1, got {betas!r}")
    check_finite(eps, "eps", minimum=0)
    check_finite(weight_decay, "weight_decay", minimum=0)
    check_choice(second_moment, "second_moment", SECOND_MOMENTS)


class IsoAdam(torch.optim.Optimizer):
    """Adam with a second moment shared along rotated axes, making its update O(n)-equivariant.

    For each parameter θ with gradient g_t (negated if ``maximize``), step t = 1, 2, …:

        g_t ← g_t + λ θ_{t−1}                              (only if ``decoupled=False``: L2 penalty)
        m_t = β₁ m_{t−1} + (1 − β₁) g_t
        s_t = mean of g_t² over the shared axes A           (keeps the reduced axes with size 1)
        v_t = β₂ v_{t−1} + (1 − β₂) s_t
        θ_t = θ_{t−1}(1 − η λ) − η (m_t / (1 − β₁ᵗ)) / (√(v_t / (1 − β₂ᵗ)) + ε)
                                                            (the decay term only if ``decoupled=True``)

    Axis 0 of a weight is its output axis and the other axes its input (fan-in) axes, as in ``nn.Linear`` and
    ``nn.Conv*d``. The shared axes A and the symmetry of the update are

    =============  =========================  =========================================================
    second_moment  A                          update is equivariant to
    =============  =========================  =========================================================
    ``"tensor"``   all axes (one scalar)      θ ↦ Q θ Rᵀ: rotations of both sides, Q ∈ O(out), R ∈ O(in)
    ``"row"``      the input axes (one per    θ ↦ θ Rᵀ (the input axis rotates; for conv weights R acts on
                   output row)                the input channels), and signed permutations of the rows
    ``"column"``   axis 0 (one per input      θ ↦ Q θ (the output axis rotates), and signed permutations
                   entry)                     of the columns
    =============  =========================  =========================================================

    because a rotation of the axes in A preserves the mean square over A. A 1-D tensor (a bias) is a single
    column: ``"tensor"`` and ``"column"`` share one scalar over it (it rotates with the output axis), ``"row"``
    keeps one entry per coordinate (exactly Adam). With a different ``second_moment`` per parameter group,
    a network can rotate its hidden layers: ``"column"`` for W_l and b_l (rows rotate), ``"row"`` for W_{l+1}.
    The L2 penalty and the decoupled decay are O(n)-invariant, so they keep every row of the table.

    Args:
        params: parameters or parameter groups (dicts may override any of the keywords below).
        lr: learning rate η (default 1e-3).
        betas: (β₁, β₂) of the moment averages (default (0.9, 0.999)).
        eps: ε added to the root of the second moment (default 1e-8).
        weight_decay: λ (default 0).
        second_moment: ``"tensor"`` (default), ``"row"`` or ``"column"``.
        decoupled: decoupled weight decay as in AdamW (default ``True``); ``False`` adds λθ to the gradient.
        maximize: ascend instead of descend (default ``False``).

    Examples:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = IsoAdam(model.parameters(), lr=1e-2, second_moment="row")
        >>> loss = model(torch.randn(8, 4)).pow(2).mean()
        >>> loss.backward()
        >>> opt.step()
        >>> sorted(opt.state[model.weight])
        ['exp_avg', 'exp_avg_sq', 'step']
        >>> opt.state[model.weight]["exp_avg_sq"].shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        second_moment: str = "tensor",
        decoupled: bool = True,
        maximize: bool = False,
    ) -> None:
        _check_hyperparameters(lr, betas, eps, weight_decay, second_moment)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "second_moment": second_moment,
            "decoupled": bool(decoupled),
            "maximize": bool(maximize),
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_hyperparameters(
                group["lr"], group["betas"], group["eps"], group["weight_decay"], group["second_moment"]
            )

    def add_param_group(self, param_group: dict) -> None:
        """Add a parameter group (its keywords are checked like the constructor's)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"], group["second_moment"])

    # the overloads of torch.optim.Optimizer.step (whose stubs type the closure's loss as a float)
    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("IsoAdam does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("IsoAdam does not support complex parameters")
                if p.numel() == 0:
                    continue
                if group["maximize"]:
                    grad = -grad
                if weight_decay != 0 and not group["decoupled"]:
                    grad = grad + weight_decay * p
                dims = _reduce_dims(group["second_moment"], p.ndim)
                square = grad.square().mean(dim=dims, keepdim=True) if dims else grad.square()
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(square)
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).add_(square, alpha=1 - beta2)
                if weight_decay != 0 and group["decoupled"]:
                    p.mul_(1 - lr * weight_decay)
                bias1 = 1 - beta1**t
                bias2 = 1 - beta2**t
                denom = (exp_avg_sq / bias2).sqrt_().add_(eps)
                p.addcdiv_(exp_avg, denom, value=-lr / bias1)
        return loss


class OptimiserSpec(NamedTuple):
    """A registered optimiser: ``factory(params, **overrides)`` and the groups its update is equivariant to.

    The claim: for g in each group, acting on any one axis of a parameter tensor (or on several axes at once),
    running the optimiser on g·θ with gradients g·∇ gives g applied to the original run. The factories fix the
    hyperparameters used to check the claim (weight decay included where the optimiser has it by default).
    """

    factory: Callable[..., torch.optim.Optimizer]
    groups: tuple[str, ...]


_ROTATION = ("permutation", "signed_permutation", "mean_orthogonal", "special_orthogonal", "orthogonal")
_COORDINATE = ("permutation", "signed_permutation")

_OPTIMISERS: dict[str, OptimiserSpec] = {
    "sgd": OptimiserSpec(functools.partial(torch.optim.SGD, lr=0.1), _ROTATION),
    "sgd_momentum": OptimiserSpec(
        functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-2), _ROTATION
    ),
    "sgd_nesterov": OptimiserSpec(functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True), _ROTATION),
    "adam": OptimiserSpec(functools.partial(torch.optim.Adam, lr=1e-2), _COORDINATE),
    "adamw": OptimiserSpec(functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=1e-2), _COORDINATE),
    "rmsprop": OptimiserSpec(functools.partial(torch.optim.RMSprop, lr=1e-2, momentum=0.5), _COORDINATE),
    "adagrad": OptimiserSpec(functools.partial(torch.optim.Adagrad, lr=1e-1), _COORDINATE),
    "iso_adam": OptimiserSpec(functools.partial(IsoAdam, lr=1e-2, weight_decay=1e-2), _ROTATION),
}
"""Optimisers by name → :class:`OptimiserSpec` (factory, declared groups), after REFERENCE 3.1.

SGD (plain, momentum, Nesterov) and :class:`IsoAdam` (``second_moment="tensor"``) are linear or share their
normalisation over the whole tensor, so they respect every compact canonical group; Adam, AdamW, RMSprop and
Adagrad normalise per coordinate and respect only the coordinate groups S_n and B_n.
"""


def names() -> list[str]:
    """The registered optimiser names (see :func:`get`).

    Examples:
        >>> import isotorch as it
        >>> "iso_adam" in it.optim.names()
        True
    """
    return list(_OPTIMISERS)


def get(name: str) -> OptimiserSpec:
    """The registered optimiser ``name``: an :class:`OptimiserSpec` (factory, declared groups).

    Raises:
        KeyError: unknown name (the message lists the valid names).
    """
    return _OPTIMISERS[check_name(name, _OPTIMISERS, "optimiser")]
