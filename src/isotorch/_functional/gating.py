"""Isotropic gating: the O(n)-equivariant analogue of GLU, a scalar gate per vector.

GLU multiplies coordinate by coordinate, x ⊙ σ(y), which commutes only with permutations applied to both
halves. A gate that is a function of rotation invariants, the norm ‖y‖ or the inner product x·y, multiplies
the whole vector x by one scalar and commutes with every orthogonal g (REFERENCE.md §2.4).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from isotorch._functional.norm import _max_abs, _vector_norm
from isotorch._util import check_choice, check_floating, compute_dtype, feature_dim

__all__ = ["iso_gate"]

PROFILES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "identity": lambda t: t,
}
GATE_MODES = ("norm", "inner")


def _check_profile(profile: object) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(profile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)} or a callable, got {profile!r}")
    return PROFILES[profile]


def _check_gate_mode(mode: object) -> str:
    return check_choice(mode, "mode", GATE_MODES)


def _check_offset(offset: object) -> float | torch.Tensor | None:
    if offset is None or (isinstance(offset, torch.Tensor) and offset.ndim == 0 and offset.is_floating_point()):
        return offset
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
        raise ValueError(f"offset must be None, a finite float or a 0-d floating tensor, got {offset!r}")
    return float(offset)


def iso_gate(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dim: int = -1,
    profile: str | Callable[[torch.Tensor], torch.Tensor] = "sigmoid",
    mode: str = "norm",
    offset: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Isotropic gate: x·φ(t) with one scalar t per vector along ``dim``.

    - ``mode="norm"``: t = ‖y‖ − b, with b = √n by default (n = size of ``dim``). For y ~ N(0, I) the norm
      concentrates at √n with a spread of about 1/√2 at any width, so ‖y‖ − √n is an O(1) pre-activation
      centred at 0: about half the gates are open at a standard-normal input, and the gate closes (towards
      φ(−√n)) as y → 0. A sigmoid of the bare norm would never go below φ(0) = 1/2. Equivariant under
      *independent* rotations: iso_gate(gx, hy) = g·iso_gate(x, y) for all orthogonal g, h.
    - ``mode="inner"``: t = x·y/√n − b, with b = 0 by default (φ(0) = 1/2 at y = 0, as GLU's σ(0)). The
      inner product is invariant only under the *same* rotation of x and y: iso_gate(gx, gy) = g·iso_gate(x, y).

    Args:
        x: floating-point values to gate.
        y: floating-point gate input of the same shape and dtype as x.
        dim: feature axis (default ``-1``).
        profile: φ, one of ``"sigmoid"``, ``"tanh"``, ``"silu"``, ``"identity"`` or a callable on tensors
            (default ``"sigmoid"``).
        mode: ``"norm"`` or ``"inner"`` (default ``"norm"``).
        offset: b, a float or a 0-d tensor (e.g. a learnable parameter) (default ``None``: √n for ``"norm"``,
            0 for ``"inner"``).

    Shape:
        - Input: x and y of the same shape with a non-empty axis ``dim``.
        - Output: same shape and dtype as x (float16/bfloat16 are computed in float32).

    Norms and inner products are overflow-safe; NaN stays in its vector; the norm's gradient at y = 0 is 0.

    Examples:
        >>> import torch, isotorch as it
        >>> x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
        >>> out = it.functional.iso_gate(x, y)
        >>> gate = torch.sigmoid(y.norm(dim=-1, keepdim=True) - 2.0)
        >>> bool(torch.allclose(out, x * gate))
        True
    """
    check_floating(x, "x")
    check_floating(y, "y")
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(
            f"x and y must have the same shape and dtype, got {tuple(x.shape)} {x.dtype} and {tuple(y.shape)} {y.dtype}"
        )
    d = feature_dim(x, dim)
    phi = _check_profile(profile)
    mode = _check_gate_mode(mode)
    offset = _check_offset(offset)
    n = x.shape[d]
    ct = compute_dtype(x.dtype)
    hx, hy = x.to(ct), y.to(ct)
    if mode == "norm":
        t = _vector_norm(hy, d) - (math.sqrt(n) if offset is None else offset)
    else:
        mx, my = _max_abs(hx, d), _max_abs(hy, d)  # x·y = mx·my·(x/mx)·(y/my): the sum cannot overflow
        t = ((hx / mx) * (hy / my)).sum(d, keepdim=True) * (mx / math.sqrt(n)) * my
        if offset is not None:
            t = t - offset
    return (hx * phi(t)).to(x.dtype)
