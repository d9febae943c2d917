"""Helpers shared by the studies' models (private)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["layer_features", "scale_hint", "select_lr", "unparametrised"]


def layer_features(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Outputs of the named submodules on ``x`` (conv outputs averaged over space), under ``no_grad``."""
    found: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: found.__setitem__(name, o.detach()))
        for name in names
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {k: (v.flatten(2).mean(2) if v.ndim > 2 else v) for k, v in found.items()}


def unparametrised(model: nn.Module) -> nn.Module:
    """A copy without parametrisations (e.g. syre's W = θ + θ₀ baked into a plain weight), for saving and probing.

    ``torch.nn.utils.parametrize.remove_parametrizations`` on a deep copy would delete the property from the
    parametrised class that the copy shares with the original (breaking the original), so the copy's modules are
    given back their original class and plain parameters instead.

    Examples:
        >>> from isotorch.params import syre
        >>> net = syre(nn.Linear(3, 2), 0.1, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(unparametrised(net)(x), net(x)), type(unparametrised(net)).__name__, type(net).__name__
        (True, 'Linear', 'ParametrizedLinear')
    """
    import copy

    from torch.nn.utils import parametrize

    new = copy.deepcopy(model)
    for module in new.modules():
        if parametrize.is_parametrized(module):
            registered = module.parametrizations
            assert isinstance(registered, nn.ModuleDict)  # torch.nn.utils.parametrize's container
            values = {name: getattr(module, name).detach().clone() for name in registered}
            module.__class__ = parametrize.type_before_parametrizations(module)
            del module._modules["parametrizations"]
            for name, value in values.items():
                module.register_parameter(name, nn.Parameter(value))
    return new


def select_lr(
    ctx,
    key: str,
    build: Callable[[], nn.Module],
    lrs: Sequence[float],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    weight_decay: float = 0.0,
    val_fraction: float = 0.2,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, dict[float, float]]:
    """The learning rate, among ``lrs``, with the lowest validation loss after ``steps`` AdamW updates.

    A per-family sweep at an equal budget, so that families are compared each at its own best learning rate. The
    validation set is a seeded ``val_fraction`` of (x, y) (the same for every learning rate; never the test set);
    the model is trained on the rest. Every learning rate starts from ``build()`` (which must return the same
    initial weights each time) and is its own ``ctx.train`` loop ``f"{key}/lr={lr:g}"`` (checkpointed, resumed),
    logging ``val_loss`` at the end. A learning rate whose loss becomes non-finite stops updating and scores +inf
    (a diverged run loses the sweep instead of stopping the study). The loss is ``loss_fn(model(x), y)``, by
    default the cross-entropy (pass ``nn.functional.mse_loss`` and ``y = x`` for an autoencoder).

    Returns:
        The best learning rate and ``{lr: validation loss}``.
    """
    if not lrs:
        raise ValueError("lrs must name at least one learning rate")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(7_919 * ctx.seed + len(x)))
    n_val = max(1, round(val_fraction * len(x)))
    val, train = order[:n_val].to(x.device), order[n_val:].to(x.device)
    xt, yt, xv, yv = x[train], y[train], x[val], y[val]
    loss_fn = nn.functional.cross_entropy if loss_fn is None else loss_fn
    scores: dict[float, float] = {}
    for lr in lrs:
        model = build()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        diverged = [False]

        def step(t, model=model, opt=opt, diverged=diverged):
            if diverged[0]:
                return 0.0
            idx = ctx.batch_indices(t, len(xt), batch_size, key=key)
            loss = loss_fn(model(xt[idx]), yt[idx])
            if not torch.isfinite(loss):
                diverged[0] = True
                return 0.0
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.detach()

        def evaluate(count, model=model, diverged=diverged):
            loss = float(loss_fn(model(xv), yv))
            return {"val_loss": loss if (math.isfinite(loss) and not diverged[0]) else None}

        result = ctx.train(
            f"{key}/lr={lr:g}", step, steps, state={"model": model, "opt": opt}, evaluate=evaluate, log_steps=[steps]
        )
        value = result.last.get("val_loss")
        scores[float(lr)] = float(value) if value is not None else math.inf
    best = min(scores, key=lambda lr: (scores[lr], lr))
    return best, scores


def scale_hint(verdict, hint: str):
    """The verdict with ``hint`` (what scale would decide) added to its note when it is inconclusive.

    Examples:
        >>> from isotorch.studies._verdicts import Claim, verdict_from_values
        >>> v = verdict_from_values(Claim("c", "x > 0", "paper", "x"), {0: 0.1, 1: -0.1})
        >>> scale_hint(v, "more seeds would decide").note.endswith("more seeds would decide")
        True
    """
    import dataclasses

    if verdict.verdict != "inconclusive":
        return verdict
    return dataclasses.replace(verdict, note=f"{verdict.note}; {hint}" if verdict.note else hint)
