"""Per-family learning-rate sweep at equal budgets: pick each family's own best learning rate before comparing.

Two families trained at one shared learning rate compare optimisation speed at that rate as much as capacity: a
family whose best rate is higher looks worse at a low shared rate. :func:`lr_sweep` trains every family at every
learning rate for the same number of steps over several seeds (same data order and same seed per pair), records
the full training loss at each budget, and returns each family's best rate with the losses. If the gap between
families closes at their own best rates, it was optimisation speed; if it stays at every rate and the longest
budget, it is capacity (or an optimiser that does not suit the family). See docs/isotropic_training.md.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> builders = {"linear": lambda seed: nn.Linear(4, 2), "mlp": lambda seed: nn.Sequential(nn.Linear(4, 8),
    ...     nn.Tanh(), nn.Linear(8, 2))}
    >>> result = lr_sweep(builders, x, y, lrs=(1e-3, 1e-1), steps=(5, 10), seeds=(0, 1), batch_size=16)
    >>> sorted(result.best), result.best["mlp"] in (1e-3, 1e-1)
    (['linear', 'mlp'], True)
    >>> len(result.losses["mlp"][0.1][10])  # one final training loss per seed
    2
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from isotorch.studies._stats import mean_ci

__all__ = ["LRSweepResult", "lr_sweep"]


@dataclass(frozen=True)
class LRSweepResult:
    """Training losses of every (family, learning rate, budget, seed) and each family's best learning rate.

    Attributes:
        lrs: the learning rates tried, ascending.
        steps: the budgets (optimiser steps) at which the full training loss was measured, ascending.
        seeds: the seeds.
        losses: ``losses[family][lr][steps]`` is the list of full training losses, one per seed (``inf`` for a run
            that diverged before that budget).
        best: ``best[family]`` is the learning rate with the lowest mean loss at the largest budget.
    """

    lrs: tuple[float, ...]
    steps: tuple[int, ...]
    seeds: tuple[int, ...]
    losses: dict[str, dict[float, dict[int, list[float]]]]
    best: dict[str, float]

    def mean(self, family: str, lr: float, steps: int | None = None) -> float:
        """Mean training loss over seeds (``inf`` if any seed diverged) at ``steps`` (default: the largest budget)."""
        values = self.losses[family][lr][self.steps[-1] if steps is None else steps]
        return math.inf if not all(math.isfinite(v) for v in values) else sum(values) / len(values)

    def best_at(self, steps: int) -> dict[str, float]:
        """Each family's best learning rate at the budget ``steps``."""
        if steps not in self.steps:
            raise ValueError(f"steps must be one of the measured budgets {self.steps}, got {steps!r}")
        return {f: min(self.lrs, key=lambda lr, f=f: self.mean(f, lr, steps)) for f in self.losses}

    def table(self) -> str:
        """A Markdown table: one row per (family, lr), one column per budget, mean ± 95% CI over seeds; ``*``
        marks each family's best rate at that budget."""
        best = {s: self.best_at(s) for s in self.steps}
        head = "| family | lr | " + " | ".join(f"loss @ {s} steps" for s in self.steps) + " |"
        rows = [head, "|" + "---|" * (2 + len(self.steps))]
        for family, by_lr in self.losses.items():
            for lr in self.lrs:
                cells = []
                for s in self.steps:
                    values = by_lr[lr][s]
                    if not all(math.isfinite(v) for v in values):
                        cells.append("diverged")
                        continue
                    e = mean_ci(values)
                    ci = "" if math.isnan(e.ci95) else f" ± {e.ci95:.2g}"
                    cells.append(f"{e.mean:.3g}{ci}{' *' if best[s][family] == lr else ''}")
                rows.append(f"| {family} | {lr:g} | " + " | ".join(cells) + " |")
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``inf`` becomes ``None``; keys are strings)."""

        def clean(v: float):
            return v if math.isfinite(v) else None

        return {
            "lrs": list(self.lrs),
            "steps": list(self.steps),
            "seeds": list(self.seeds),
            "best": dict(self.best),
            "losses": {
                f: {repr(lr): {str(s): [clean(v) for v in vs] for s, vs in by_s.items()} for lr, by_s in by_lr.items()}
                for f, by_lr in self.losses.items()
            },
        }


def _adam(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


def _check_positive_ints(values, name: str) -> tuple[int, ...]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be a positive int or a non-empty sequence of them, got {values!r}")
    return tuple(sorted(set(values)))


@torch.no_grad()
def _full_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, batch: int = 4096) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(x), batch):
        total += float(loss_fn(model(x[i : i + batch]), y[i : i + batch])) * len(x[i : i + batch])
    model.train()
    return total / len(x)


def lr_sweep(
    builders: Mapping[str, Callable[[int], nn.Module]],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lrs: Sequence[float],
    steps: int | Sequence[int],
    seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 64,
    optimizer: Callable[[Any, float], torch.optim.Optimizer] = _adam,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
) -> LRSweepResult:
    """Train every family at every learning rate for the same budgets over several seeds.

    For each seed, every (family, lr) run starts from ``builders[family](seed)`` (built after
    ``torch.manual_seed(seed)``) and sees the same minibatches (reshuffled each epoch by a generator seeded with
    ``seed``). After each budget in ``steps`` the loss on the whole training set is measured in evaluation mode.
    A run whose minibatch loss becomes non-finite stops and scores ``inf`` from then on.

    Args:
        builders: ``{family: builder}``; ``builder(seed)`` returns a fresh model.
        x, y: the training inputs and targets.
        lrs: learning rates to try (positive).
        steps: one budget or several (optimiser steps); the best rate is chosen at the largest.
        seeds: seeds (distinct; default ``(0, 1, 2)``).
        batch_size: minibatch size (default 64).
        optimizer: ``optimizer(params, lr)`` builds the optimiser (default: ``torch.optim.Adam``). Use a family's
            own optimiser by passing e.g. ``lambda p, lr: it.families.get(name).make_optimizer(p, lr=lr)``.
        loss_fn: ``loss_fn(output, target)`` (default: cross-entropy).

    Returns:
        :class:`LRSweepResult`.

    Raises:
        ValueError: no families, no or non-positive learning rates, bad budgets, duplicate or no seeds,
            mismatched ``x``/``y``.
    """
    if not builders:
        raise ValueError("builders must name at least one family")
    lrs = tuple(sorted(float(lr) for lr in lrs))
    if not lrs or not all(math.isfinite(lr) and lr > 0 for lr in lrs):
        raise ValueError(f"lrs must be a non-empty sequence of positive finite floats, got {lrs!r}")
    budgets = _check_positive_ints(steps, "steps")
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty sequence of distinct ints, got {seeds!r}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) != len(y) or len(x) == 0:
        raise ValueError("x and y must be non-empty tensors with the same first size")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    losses: dict[str, dict[float, dict[int, list[float]]]] = {
        f: {lr: {s: [] for s in budgets} for lr in lrs} for f in builders
    }
    for seed in seeds:
        for family, build in builders.items():
            for lr in lrs:
                torch.manual_seed(seed)
                model = build(seed)
                opt = optimizer(model.parameters(), lr)
                order = torch.Generator().manual_seed(seed)
                batches: list[torch.Tensor] = []
                diverged = False
                done = 0
                for budget in budgets:
                    while done < budget and not diverged:
                        if not batches:
                            batches = list(torch.randperm(len(x), generator=order).split(batch_size))[::-1]
                        idx = batches.pop()
                        loss = loss_fn(model(x[idx]), y[idx])
                        if not torch.isfinite(loss):
                            diverged = True
                            break
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        done += 1
                    value = math.inf if diverged else _full_loss(model, x, y, loss_fn)
                    losses[family][lr][budget].append(value if math.isfinite(value) else math.inf)
    result = LRSweepResult(lrs, budgets, seeds, losses, {})
    best = result.best_at(budgets[-1])
    return LRSweepResult(lrs, budgets, seeds, losses, best)
