"""Argument checks shared by the functional primitives (private)."""

from __future__ import annotations

import torch


def _check_floating(x: object, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _feature_dim(x: torch.Tensor, dim: object, name: str = "dim") -> int:
    """Normalise ``dim`` to a non-negative index of a non-empty feature axis of ``x``."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name} must be an int (the feature axis), got {type(dim).__name__}")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension (the feature axis), got a 0-d tensor")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{name}={dim} is out of range for x with {x.ndim} dimensions (shape {tuple(x.shape)})")
    d = dim % x.ndim
    if x.shape[d] == 0:
        raise ValueError(f"x has no features along {name}={dim} (shape {tuple(x.shape)}); expected size >= 1")
    return d


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision (and smaller) dtypes, the dtype itself otherwise."""
    return dtype if dtype.itemsize >= 4 else torch.float32


def _check_real(value: object, name: str, low: float, high: float, *, low_open: bool, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value
