"""Private helpers shared by every isotorch module: generators, argument checks and strict JSON.

One place for the rules that hold everywhere (DESIGN): ``generator=None`` means torch's global RNG, bad input gets
a one-line error naming the argument, and results serialise to strict JSON (no bare NaN or infinity).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypeVar, cast, overload

import torch

T = TypeVar("T")

__all__ = [
    "NAN_POLICIES",
    "as_generator",
    "check_axis",
    "check_bool",
    "check_choice",
    "check_dtype",
    "check_epsilon",
    "check_finite",
    "check_floating",
    "check_generator",
    "check_int",
    "check_labels",
    "check_matrix",
    "check_name",
    "check_probability",
    "check_real",
    "compute_dtype",
    "draw_seed",
    "dumps",
    "feature_dim",
    "finite_rows",
    "fresh_seed",
    "json_float",
    "json_safe",
]


def check_generator(generator: object, name: str = "generator") -> torch.Generator | None:
    """Return ``generator`` if it is a ``torch.Generator`` or ``None`` (torch's global RNG); raise otherwise."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    raise TypeError(
        f"{name} must be a torch.Generator or None (the global RNG), got {type(generator).__name__}; "
        "for a fixed seed pass torch.Generator().manual_seed(seed)"
    )


def as_generator(generator: object, name: str = "generator") -> torch.Generator:
    """A CPU-usable ``torch.Generator``: the one given, or for ``None`` a fresh one seeded from torch's global RNG.

    Code that needs a generator object (to spawn streams, or to reuse one stream in several places) calls this; a
    ``None`` then still follows ``torch.manual_seed`` and advances the global RNG by one draw.
    """
    generator = check_generator(generator, name)
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(draw_seed(None))


def draw_seed(generator: object, name: str = "generator") -> int:
    """One int seed in [0, 2⁶²) drawn from ``generator`` (``None``: torch's global RNG) to seed equal streams."""
    generator = check_generator(generator, name)
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64, generator=generator))


def fresh_seed(generator: torch.Generator) -> int | None:
    """The seed ``generator`` was seeded with while it is still in that freshly seeded state (so that
    ``torch.Generator().manual_seed(seed)`` reproduces it), else ``None``: the seed a result can record."""
    seed = generator.initial_seed()
    fresh = torch.Generator(device=generator.device).manual_seed(seed)
    return seed if torch.equal(fresh.get_state(), generator.get_state()) else None


# --- argument checks -------------------------------------------------------------------------------------------


def check_int(value: object, name: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) in [``minimum``, ``maximum``]; raise ``ValueError`` otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    return value


def check_axis(value: object, name: str = "dim", what: str = "the feature axis") -> int:
    """Return ``value`` if it is an int (not a bool): an axis index, checked against a tensor's ndim later."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int ({what}), got {type(value).__name__}")
    return value


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a bool (``True``/``False``, not 0/1 or a tensor); raise ``TypeError`` otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_dtype(dtype: object, name: str = "dtype") -> torch.dtype:
    """Return ``dtype`` if it is a floating ``torch.dtype``; raise ``TypeError`` otherwise."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating dtype, got {dtype}")
    return dtype


def check_floating(x: object, name: str = "x") -> torch.Tensor:
    """Return ``x`` if it is a floating-point tensor; raise ``TypeError`` otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def feature_dim(x: torch.Tensor, dim: object, name: str = "dim") -> int:
    """Normalise ``dim`` to a non-negative index of a non-empty feature axis of ``x``."""
    dim = check_axis(dim, name)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension (the feature axis), got a 0-d tensor")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{name}={dim} is out of range for x with {x.ndim} dimensions (shape {tuple(x.shape)})")
    d = dim % x.ndim
    if x.shape[d] == 0:
        raise ValueError(f"x has no features along {name}={dim} (shape {tuple(x.shape)}); expected size >= 1")
    return d


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision (and smaller) dtypes, the dtype itself otherwise."""
    return dtype if dtype.itemsize >= 4 else torch.float32


def check_real(value: object, name: str, low: float, high: float, *, low_open: bool, high_open: bool) -> float:
    """Return ``value`` as a float if it lies in the interval from ``low`` to ``high`` (each end open or closed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


def check_choice(value: object, name: str, choices: Sequence[T]) -> T:
    """Return ``value`` if it is one of ``choices``; raise otherwise (the message lists them)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return cast(T, value)


def check_name(name: object, valid: Collection[str], what: str) -> str:
    """Return ``name`` if it is one of a registry's ``valid`` names; a ``KeyError`` listing them otherwise."""
    if not isinstance(name, str) or name not in valid:
        raise KeyError(f"unknown {what} {name!r}; valid names: {', '.join(valid)}")
    return name


def check_finite(value: object, name: str, *, minimum: float | None = None, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number (not a bool or tensor) ≥ ``minimum`` (> with
    ``strict``); raise ``ValueError`` otherwise.

    Examples:
        >>> check_finite(2, "lr", minimum=0, strict=True)
        2.0
        >>> check_finite(float("inf"), "lr", minimum=0, strict=True)
        Traceback (most recent call last):
        ...
        ValueError: lr must be a finite float > 0, got inf
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (minimum is not None and (value <= minimum if strict else value < minimum))
    ):
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{name} must be a finite float{bound}, got {value!r}")
    return float(value)


def check_probability(value: object, name: str) -> float:
    """Return ``value`` if it is a float in the open interval (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < float(value) < 1.0):
        raise ValueError(f"{name} must be a float in the open interval (0, 1), got {value!r}")
    return float(value)


# --- activation matrices and labels (probes) -----------------------------------------------------------------

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
    check_choice(nan_policy, "nan_policy", NAN_POLICIES)
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


# --- strict JSON ------------------------------------------------------------------------------------------------


def json_float(value: object) -> float | None:
    """``float(value)``, or ``None`` for ``None``, NaN and ±inf (strict JSON has no such numbers)."""
    if value is None:
        return None
    value = float(value)  # type: ignore[arg-type]
    return value if math.isfinite(value) else None


@overload
def json_safe(value: Mapping[str, Any]) -> dict[str, Any]: ...


@overload
def json_safe(value: object) -> Any: ...


def json_safe(value: object) -> Any:
    """``value`` as plain strict-JSON data, recursively: NaN and ±inf become ``None``; tuples, lists, sets and
    tensors/arrays become lists (sets sorted); mappings become dicts; numpy and 0-d tensor scalars become Python
    numbers. Anything else (str, int, bool, None) is returned as it is.

    Examples:
        >>> json_safe({"a": float("nan"), "b": (1.0, float("inf")), "c": frozenset({"y", "x"})})
        {'a': None, 'b': [1.0, None], 'c': ['x', 'y']}
    """
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [json_safe(v) for v in sorted(value, key=str)]
    if isinstance(value, torch.Tensor):
        return json_safe(value.detach().cpu().tolist())
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return json_safe(tolist())
    return value


def dumps(value: object, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` ``(value)`` with ``allow_nan=False``: always strict JSON."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)
