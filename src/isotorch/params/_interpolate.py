"""Linear interpolation between two networks and the loss barrier along the path (REFERENCE §5.6).

θ(λ) = (1 − λ)·θ_A + λ·θ_B at ``steps`` evenly spaced λ ∈ [0, 1]. The barrier is reported under both conventions:

    max:                 B_max = max_λ L(θ(λ)) − ½(L_A + L_B)                 (Git Re-Basin)
    linear-interpolation B_lin = max_λ [L(θ(λ)) − ((1 − λ)L_A + λL_B)]        (Frankle, Entezari)

and the midpoint value L(θ(½)) − ½(L_A + L_B). With BatchNorm, the running statistics of every point on the path
are recomputed on the data with :func:`torch.optim.swa_utils.update_bn`; otherwise barriers are grossly
overestimated.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from isotorch.params import barrier
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    >>> data = (torch.randn(16, 3), torch.randint(0, 2, (16,)))
    >>> result = barrier(a, a, nn.functional.cross_entropy, data, steps=5)
    >>> abs(result.barrier) < 1e-6
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from isotorch._util import check_finite, check_int, json_safe
from isotorch.params._compat import batches, check_same_architecture, run_checked
from isotorch.params._trace import evaluation

__all__ = ["BarrierResult", "barrier", "interpolate"]


def interpolate(model_a: nn.Module, model_b: nn.Module, alpha: float) -> nn.Module:
    """The model with parameters (1 − α)·θ_A + α·θ_B (a new model; buffers are interpolated too).

    Args:
        model_a: the model at ``alpha = 0``.
        model_b: the model at ``alpha = 1``: same architecture, state-dict shapes and dtypes as ``model_a``.
        alpha: the interpolation weight (0 gives A, 1 gives B; values outside [0, 1] extrapolate).

    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are taken from ``model_a``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from isotorch.params import interpolate
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> mid = interpolate(a, b, 0.5)
        >>> torch.allclose(mid.weight, (a.weight + b.weight) / 2)
        True
    """
    check_same_architecture(model_a, model_b)
    check_finite(alpha, "alpha")
    new = copy.deepcopy(model_a)
    sb = model_b.state_dict()
    state = new.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, t in state.items():
            if t.is_floating_point() or t.is_complex():
                t.copy_(torch.lerp(t.detach(), sb[name].to(t.device), float(alpha)))
    return new


@dataclass(frozen=True)
class BarrierResult:
    """The loss (and accuracy) along the linear path between two networks.

    Attributes:
        alphas: the interpolation weights λ.
        losses: the mean loss over the data at each λ.
        accuracies: the classification accuracy at each λ (``None`` if the outputs are not class scores).
        barrier: max_λ L(λ) − ½(L_A + L_B) (the "max" convention).
        barrier_linear: max_λ [L(λ) − ((1 − λ)L_A + λL_B)] (the "linear-interpolation" convention).
        midpoint: L(½) − ½(L_A + L_B).
        accuracy_barrier: (min_λ acc − max(acc_A, acc_B)) / max(acc_A, acc_B) × 100, or ``None``.
        recalibrated_bn: whether BatchNorm statistics were recomputed at every λ.
    """

    alphas: tuple[float, ...]
    losses: tuple[float, ...]
    accuracies: tuple[float, ...] | None
    barrier: float
    barrier_linear: float
    midpoint: float
    accuracy_barrier: float | None
    recalibrated_bn: bool

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return json_safe(
            {
                "alphas": list(self.alphas),
                "losses": list(self.losses),
                "accuracies": None if self.accuracies is None else list(self.accuracies),
                "barrier": self.barrier,
                "barrier_linear": self.barrier_linear,
                "midpoint": self.midpoint,
                "accuracy_barrier": self.accuracy_barrier,
                "recalibrated_bn": self.recalibrated_bn,
            }
        )


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def _evaluate(model: nn.Module, loss_fn: Callable, data: list[tuple]) -> tuple[float, float | None]:
    total, count, correct, classify = 0.0, 0, 0, True
    with evaluation(model):
        for batch in data:
            if len(batch) < 2:
                raise ValueError("barrier needs data batches of (inputs, targets)")
            inputs, targets = batch[0], batch[1]
            out = run_checked(model, inputs)
            if not isinstance(out, torch.Tensor) and isinstance(getattr(out, "logits", None), torch.Tensor):
                out = out.logits  # a Hugging Face model output: the loss reads its logits
            try:
                loss = loss_fn(out, targets)
            except (RuntimeError, ValueError, IndexError, TypeError) as err:
                raise ValueError(
                    f"loss_fn failed on outputs of shape {tuple(out.shape)} and targets of shape "
                    f"{tuple(targets.shape)}: {err}"
                ) from err
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError("loss_fn must return a scalar tensor (the mean loss of the batch)")
            k = inputs.shape[0]
            total += float(loss) * k
            count += k
            if (
                classify
                and out.ndim == 2
                and out.shape[1] > 1
                and not targets.is_floating_point()
                and targets.ndim == 1
            ):
                correct += int((out.argmax(1) == targets).sum())
            else:
                classify = False
    if count == 0:
        raise ValueError("data has no samples")
    return total / count, (correct / count if classify else None)


def barrier(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps: int = 25,
    recalibrate_bn: bool | None = None,
) -> BarrierResult:
    """The loss barrier on the linear path from ``model_a`` to ``model_b`` (align B first for a fair barrier).

    Args:
        model_a: the first end point.
        model_b: the second end point, of the same architecture as ``model_a``.
        loss_fn: ``loss_fn(outputs, targets)`` → the mean loss of a batch (e.g. ``F.cross_entropy``).
        data: an ``(inputs, targets)`` pair or an iterable of such batches.
        steps: the number of evenly spaced λ in [0, 1] (default 25, at least 2).
        recalibrate_bn: recompute BatchNorm running statistics on ``data`` at every λ (default: ``True`` when the
            model has BatchNorm layers that track running statistics).

    Returns:
        :class:`BarrierResult` with the loss and accuracy curves and the barrier under both conventions.

    Raises:
        ValueError: models of different architectures, data of the wrong shape, ``steps`` < 2.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from isotorch.params import barrier
        >>> _ = torch.manual_seed(0)
        >>> a = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 2))
        >>> b = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 2))
        >>> with torch.no_grad():  # B: A's hidden neurons in reverse order, the same function
        ...     _ = b[0].weight.copy_(a[0].weight.flip(0)), b[0].bias.copy_(a[0].bias.flip(0))
        ...     _ = b[2].weight.copy_(a[2].weight.flip(1)), b[2].bias.copy_(a[2].bias)
        ...     x = torch.randn(64, 3)
        ...     data = [(x, a(x).argmax(1))]
        >>> abs(barrier(a, a, nn.functional.cross_entropy, data, steps=5).barrier) < 1e-6  # a constant path
        True
        >>> barrier(a, b, nn.functional.cross_entropy, data, steps=5).barrier > 0.01  # same function, other weights
        True
    """
    check_same_architecture(model_a, model_b)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    check_int(steps, "steps", minimum=2)
    batch_list = list(batches(data))
    if recalibrate_bn is None:
        recalibrate_bn = _has_batchnorm(model_a)
    alphas = [i / (steps - 1) for i in range(steps)]
    if 0.5 not in alphas:
        alphas_eval = sorted([*alphas, 0.5])
    else:
        alphas_eval = alphas
    losses: dict[float, float] = {}
    accs: dict[float, float | None] = {}
    for alpha in alphas_eval:
        model = interpolate(model_a, model_b, alpha)
        if recalibrate_bn and _has_batchnorm(model):
            update_bn([b[0] for b in batch_list], model)
        losses[alpha], accs[alpha] = _evaluate(model, loss_fn, batch_list)
    la, lb = losses[0.0], losses[1.0]
    curve = [losses[a] for a in alphas]
    b_max = max(curve) - 0.5 * (la + lb)
    b_lin = max(losses[a] - ((1 - a) * la + a * lb) for a in alphas)
    mid = losses[0.5] - 0.5 * (la + lb)
    acc_known = [acc for a in alphas if (acc := accs[a]) is not None]
    acc_curve = tuple(acc_known) if len(acc_known) == len(alphas) else None  # None unless every λ classifies
    acc_barrier = None
    if acc_curve is not None:
        best = max(acc_curve[0], acc_curve[-1])  # the end points λ = 0 and λ = 1
        acc_barrier = (min(acc_curve) - best) / best * 100 if best > 0 else 0.0
    return BarrierResult(
        alphas=tuple(alphas),
        losses=tuple(curve),
        accuracies=acc_curve,
        barrier=b_max,
        barrier_linear=b_lin,
        midpoint=mid,
        accuracy_barrier=acc_barrier,
        recalibrated_bn=bool(recalibrate_bn and _has_batchnorm(model_a)),
    )
