"""Input checks shared by the probes: clear errors that name the argument and what was expected."""

from __future__ import annotations

import math

import torch

from isotorch._util import check_int

NAN_POLICIES = ("raise", "omit")


def check_matrix(x: object, name: str, *, min_rows: int = 1, min_cols: int = 1) -> torch.Tensor:
    """Return ``x`` if it is a floating-point (N, d) tensor with at least ``min_rows`` rows and ``min_cols`` columns."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, d), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, d) (2 dimensions), got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} row(s) (samples), got shape {tuple(x.shape)}")
    if x.shape[1] < min_cols:
        raise ValueError(f"{name} must have at least {min_cols} column(s) (features), got shape {tuple(x.shape)}")
    return x


def finite_rows(x: torch.Tensor, name: str, nan_policy: str) -> tuple[torch.Tensor, int]:
    """Drop rows of ``x`` holding NaN or ±inf under ``nan_policy="omit"``; raise under ``"raise"``.

    Returns the kept rows and the number of excluded rows.
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    ok = (
        torch.cat([torch.isfinite(block).all(dim=1) for block in x.split(1 << 16)])
        if x.shape[0]
        else x.new_ones(0, dtype=torch.bool)
    )
    n_bad = int(x.shape[0] - ok.sum())
    if n_bad == 0:
        return x, 0
    if nan_policy == "raise":
        raise ValueError(
            f"{name} has {n_bad} row(s) with NaN or inf values; clean them or pass nan_policy='omit' "
            "to exclude them (the count is reported in the result)"
        )
    return x[ok], n_bad


def check_epsilon(epsilon: object, name: str = "epsilon") -> float:
    """Return ``epsilon`` as a float if it lies in the open interval (−1, 1)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"{name} must be a float in (-1, 1), got {epsilon!r}")
    epsilon = float(epsilon)
    if not (-1.0 < epsilon < 1.0) or math.isnan(epsilon):
        raise ValueError(
            f"{name} must lie in the open interval (-1, 1) (it is the cosine of the cone angle), got {epsilon}"
        )
    return epsilon


def check_labels(labels: object, n: int, num_classes: int | None, name: str = "labels") -> tuple[torch.Tensor, int]:
    """Check integer class labels of shape (n,) in [0, num_classes); return them (int64) and the class count.

    ``num_classes=None`` takes ``labels.max() + 1``. At least two classes are required, and every class in
    ``range(num_classes)`` must have at least one sample (a class mean is otherwise undefined).
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor of shape (N,), got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the features, got shape {tuple(labels.shape)}")
    labels = labels.long()
    if n == 0:
        raise ValueError(f"{name} is empty: need at least one sample per class")
    lo, hi = int(labels.min()), int(labels.max())
    if num_classes is None:
        num_classes = hi + 1
    else:
        num_classes = check_int(num_classes, "num_classes")
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) (num_classes={num_classes}), got values in [{lo}, {hi}]"
        )
    if num_classes < 2:
        raise ValueError(f"{name} hold a single class; neural collapse needs at least 2 classes")
    counts = torch.bincount(labels, minlength=num_classes)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        shown = empty[:10]
        raise ValueError(
            f"{name}: class(es) {shown}{' ...' if len(empty) > 10 else ''} have no samples; every class in "
            f"range(num_classes={num_classes}) needs at least one (relabel, or pass the right num_classes)"
        )
    return labels, num_classes
