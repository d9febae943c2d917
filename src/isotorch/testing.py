"""Equivariance and invariance assertions for pytest suites (isotorch's own and its users').

The check follows e3nn's ``assert_equivariant`` and EMLP's error measure: draw random elements g of the group,
apply them in float64, and compare f(g·x) with g·f(x) (equivariance) or with f(x) (invariance) using the
relative error

    rel(a, b) = rms(a − b) / max(rms(a) + rms(b), 1e-7)

maximised over trials, against a tolerance that depends on the dtype of the output.

Examples:
    >>> import torch, isotorch as it
    >>> x = torch.randn(5, 8, dtype=torch.float64)
    >>> it.testing.assert_equivariant(it.functional.iso_tanh, x, "orthogonal")
    >>> it.testing.equivariance_error(torch.tanh, x, "orthogonal") > 1e-3
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from isotorch import groups as _groups
from isotorch._util import as_generator, check_int
from isotorch.groups import Group

__all__ = [
    "VacuousCheckError",
    "assert_equivariant",
    "assert_invariant",
    "equivariance_error",
    "invariance_error",
    "relative_error",
    "tolerance",
]

_TOLERANCE = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 2e-2,
    torch.bfloat16: 5e-2,
}


def tolerance(dtype: torch.dtype) -> float:
    """The relative-error tolerance used for outputs of ``dtype`` (1e-9 float64, 1e-4 float32, 2e-2 float16,
    5e-2 bfloat16)."""
    if dtype not in _TOLERANCE:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return _TOLERANCE[dtype]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """rms(a − b) / max(rms(a) + rms(b), 1e-7), computed in float64; 0 for empty tensors."""
    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    if a.numel() == 0:
        return 0.0
    scale = torch.maximum(a.abs().max(), b.abs().max())
    if torch.isfinite(scale) and scale > 1e100:  # the ratio is scale-free: rescale so the squares do not overflow
        a, b = a / scale, b / scale

    def rms(t):
        return t.pow(2).mean().sqrt()

    return float(rms(a - b) / torch.clamp(rms(a) + rms(b), min=1e-7))


class VacuousCheckError(AssertionError):
    """The function's output does not depend on its input (zero or constant): no symmetry check can fail."""


def _check_not_vacuous(fn, x, y) -> None:
    if x.numel() == 0:
        return
    # an independent input: its own seed, so that it is never a multiple of an x drawn from a seeded generator
    other = torch.randn(x.shape, generator=torch.Generator().manual_seed(0x5EED), dtype=torch.float64).to(x.device)
    other = (other * x.detach().double().pow(2).mean().sqrt().clamp(min=1e-3)).to(x.dtype)
    y_other = fn(other)
    if y.detach().abs().max() == 0 and y_other.detach().abs().max() == 0:
        raise VacuousCheckError("vacuous check: fn returns zeros, so every group would pass")
    if y_other.shape == y.shape and relative_error(y_other, y) == 0:
        raise VacuousCheckError("vacuous check: fn gives the same output on an independent input (constant function)")


def _errors(fn, x, group, dim, trials, generator, equivariant: bool) -> tuple[float, torch.dtype]:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    check_int(trials, "trials")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim={dim} is out of range for x with {x.ndim} dimensions")
    g_obj = _groups.get(group)
    n = x.shape[dim]
    gen = as_generator(generator)
    with torch.no_grad():
        y = fn(x)
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"fn must return a tensor, got {type(y).__name__}")
        if equivariant and (y.ndim != x.ndim or y.shape[dim] != n):
            raise ValueError(
                f"an equivariance check needs fn to keep the size of dim={dim}: {tuple(x.shape)} → {tuple(y.shape)}"
            )
        _check_not_vacuous(fn, x, y)
        worst = 0.0
        for _ in range(trials):
            g = g_obj.sample(n, generator=gen, dtype=torch.float64, device=x.device)
            gx = _groups.act(g, x, dim).to(x.dtype)
            lhs = fn(gx)
            rhs = _groups.act(g, y.to(torch.float64), dim) if equivariant else y
            worst = max(worst, relative_error(lhs, rhs))
    return worst, y.dtype


def equivariance_error(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    group: str | Group,
    *,
    dim: int = -1,
    trials: int = 4,
    generator: torch.Generator | None = None,
) -> float:
    """Max over ``trials`` random g of rel(f(g·x), g·f(x)), the group acting along ``dim``."""
    return _errors(fn, x, group, dim, trials, generator, equivariant=True)[0]


def invariance_error(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    group: str | Group,
    *,
    dim: int = -1,
    trials: int = 4,
    generator: torch.Generator | None = None,
) -> float:
    """Max over ``trials`` random g of rel(f(g·x), f(x)), the group acting along ``dim``."""
    return _errors(fn, x, group, dim, trials, generator, equivariant=False)[0]


def _assert(kind, fn, x, group, dim, trials, generator, tol):
    __tracebackhide__ = True
    err, out_dtype = _errors(fn, x, group, dim, trials, generator, equivariant=kind == "equivariant")
    tol = tolerance(out_dtype) if tol is None else tol
    if not err <= tol:
        name = getattr(fn, "__name__", type(fn).__name__)
        raise AssertionError(
            f"{name} is not {kind} under {_groups.get(group)} along dim={dim}: relative error {err:.3e} > "
            f"tolerance {tol:.1e} ({out_dtype}, {trials} random elements)"
        )


def assert_equivariant(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    group: str | Group,
    *,
    dim: int = -1,
    trials: int = 4,
    generator: torch.Generator | None = None,
    tol: float | None = None,
) -> None:
    """Assert f(g·x) = g·f(x) for random g in ``group`` acting along ``dim``, within a dtype tolerance.

    Args:
        fn: the function or module (put modules in ``eval()`` mode first).
        x: a generic input (avoid degenerate inputs such as zeros or one-hot rows).
        group: a group name (see :mod:`isotorch.groups`) or :class:`~isotorch.groups.Group`.
        dim: the feature axis the group acts on.
        trials: number of random group elements.
        generator: ``torch.Generator`` or ``None`` (torch's global RNG) for the group samples.
        tol: relative-error tolerance; default :func:`tolerance` of the output dtype.

    Examples:
        >>> import torch
        >>> from isotorch.testing import assert_equivariant
        >>> x = torch.randn(4, 8, dtype=torch.float64)
        >>> assert_equivariant(torch.tanh, x, "signed_permutation")  # passes: returns None
        >>> assert_equivariant(torch.tanh, x, "orthogonal")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        AssertionError: ...
    """
    __tracebackhide__ = True
    _assert("equivariant", fn, x, group, dim, trials, generator, tol)


def assert_invariant(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    group: str | Group,
    *,
    dim: int = -1,
    trials: int = 4,
    generator: torch.Generator | None = None,
    tol: float | None = None,
) -> None:
    """Assert f(g·x) = f(x) for random g in ``group`` acting along ``dim``, within a dtype tolerance."""
    __tracebackhide__ = True
    _assert("invariant", fn, x, group, dim, trials, generator, tol)
