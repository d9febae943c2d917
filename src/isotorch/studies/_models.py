"""Helpers shared by the studies' models (private)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["SupervisedStep", "layer_features", "mlp", "scale_hint", "select_lr", "uniform_init", "unparametrised"]


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
        step = SupervisedStep(
            ctx, model, opt, xt, yt, batch_size=batch_size, key=key, loss_fn=loss_fn, skip_nonfinite=True
        )

        def evaluate(count, model=model, step=step):
            loss = float(loss_fn(model(xv), yv))
            return {"val_loss": loss if (math.isfinite(loss) and not step.diverged) else None}

        result = ctx.train(
            f"{key}/lr={lr:g}", step, steps, state={"model": model, "opt": opt}, evaluate=evaluate, log_steps=[steps]
        )
        value = result.last.get("val_loss")
        scores[float(lr)] = float(value) if value is not None else math.inf
    best = min(scores, key=lambda lr: (scores[lr], lr))
    return best, scores


def mlp(
    dims: Sequence[int],
    activation: Callable[[int], nn.Module] | None = None,
    *,
    linear: Callable[[int, int], nn.Module] = nn.Linear,
    norm: Callable[[int], nn.Module] | None = None,
    init: Callable[[nn.Module], object] | None = None,
    activate_last: bool = False,
) -> nn.Sequential:
    """Linear → [norm] → φ → … → Linear through the sizes ``dims`` (the studies' MLPs, built in one order).

    Layer by layer: ``linear(fan_in, fan_out)``, then ``init(layer)`` under ``no_grad`` (so RNG draws interleave
    with the constructors' as in a hand-written loop), then, after every layer but the last (and after the last
    too with ``activate_last``), ``norm(width)`` if given and ``activation(width)``.

    Args:
        dims: the input size, the hidden widths, the output size (at least two entries).
        activation: the module after each hidden layer, from its width (default: ``nn.Tanh``).
        linear: the layer constructor (default ``nn.Linear``; e.g. an asymmetric layer).
        norm: an optional normaliser, from the width, placed before the activation.
        init: re-initialises each new layer in place (default: the constructor's init, torch's global RNG).
        activate_last: also put norm and activation after the last layer (an encoder ending in a bottleneck).

    Examples:
        >>> net = mlp([4, 3, 3, 2], norm=lambda w: nn.LayerNorm(w, elementwise_affine=False))
        >>> [type(m).__name__ for m in net]
        ['Linear', 'LayerNorm', 'Tanh', 'Linear', 'LayerNorm', 'Tanh', 'Linear']
        >>> net = mlp([4, 2], init=uniform_init(torch.Generator().manual_seed(0)), activate_last=True)
        >>> [type(m).__name__ for m in net], bool(net[0].weight.abs().max() <= 0.5)
        (['Linear', 'Tanh'], True)
    """
    if len(dims) < 2:
        raise ValueError(f"dims must hold an input and an output size, got {list(dims)!r}")
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(dims)):
        layer = linear(fan_in, fan_out)
        if init is not None:
            with torch.no_grad():
                init(layer)
        layers.append(layer)
        if i < len(dims) - 2 or activate_last:
            if norm is not None:
                layers.append(norm(fan_out))
            layers.append(nn.Tanh() if activation is None else activation(fan_out))
    return nn.Sequential(*layers)


def uniform_init(generator: torch.Generator | None) -> Callable[[nn.Module], None]:
    """An ``init`` for :func:`mlp`: weight, then bias, U(±1/√fan_in) (torch's ``nn.Linear`` bounds) from ``generator``.

    Equal generators then give equal weights whatever the activations (a matched pair of families).
    """

    def init(layer: nn.Module) -> None:
        assert isinstance(layer, nn.Linear) and layer.bias is not None  # the studies' layers have a bias
        bound = 1 / math.sqrt(layer.in_features)
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)

    return init


class SupervisedStep:
    """One optimiser update on the ``t``-th minibatch: the ``step`` of :meth:`StudyContext.train`, as a callable.

    ``step(t)`` takes minibatch ``t`` of ``ctx.batch_indices(offset + t, len(x), batch_size, key=key)`` (the whole
    data when ``batch_size`` is None), computes ``loss_fn(model(x[idx]), y[idx])`` (``y = x`` for an autoencoder
    when ``y`` is None; ``model(input_map(x[idx]))`` with an ``input_map``, e.g. a fixed change of basis of the
    inputs, applied to each minibatch), zeroes the gradients, back-propagates, steps ``opt`` and returns the loss. With
    ``train_mode`` the model is put in training mode first (when an evaluation switches it to ``eval``). With
    ``skip_nonfinite`` a non-finite loss sets :attr:`diverged` and every later step returns 0 without updating (a
    learning-rate sweep's diverged candidate), instead of the runner stopping the study.

    Examples:
        >>> from types import SimpleNamespace
        >>> net = nn.Linear(2, 1)
        >>> x, y = torch.randn(8, 2), torch.randn(8, 1)
        >>> step = SupervisedStep(SimpleNamespace(), net, torch.optim.SGD(net.parameters(), lr=0.1), x, y,
        ...                       loss_fn=nn.functional.mse_loss)
        >>> first = float(step(0)); last = [float(step(t)) for t in range(1, 20)][-1]
        >>> last < first
        True
    """

    def __init__(
        self,
        ctx,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
        key: str = "",
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
        offset: int = 0,
        train_mode: bool = False,
        skip_nonfinite: bool = False,
        input_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.ctx, self.model, self.opt, self.x, self.y = ctx, model, opt, x, x if y is None else y
        self.batch_size, self.key, self.loss_fn, self.offset = batch_size, key, loss_fn, offset
        self.train_mode, self.skip_nonfinite, self.input_map = train_mode, skip_nonfinite, input_map
        self.diverged = False

    def __call__(self, t: int) -> torch.Tensor | float:
        if self.diverged:
            return 0.0
        if self.train_mode:
            self.model.train()
        if self.batch_size is None:
            x, y = self.x, self.y
        else:
            idx = self.ctx.batch_indices(self.offset + t, len(self.x), self.batch_size, key=self.key)
            x, y = self.x[idx], self.y[idx]
        loss = self.loss_fn(self.model(x if self.input_map is None else self.input_map(x)), y)
        if self.skip_nonfinite and not torch.isfinite(loss):
            self.diverged = True
            return 0.0
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.detach()


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
