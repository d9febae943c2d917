"""Isotropic dropout: unbiased noise whose law is invariant under rotations of the feature vectors.

Bernoulli dropout multiplies each coordinate by its own mask, so its law is only invariant under signed
permutations (REFERENCE.md §2.4). The three modes here keep E[out] = x and make the law of the noise
rotation invariant, so out(gx) and g·out(x) have the same distribution for every orthogonal g.
"""

from __future__ import annotations

import math

import torch

from isotorch._functional.norm import _vector_norm
from isotorch._util import (
    check_bool,
    check_choice,
    check_floating,
    check_generator,
    check_int,
    check_real,
    compute_dtype,
    feature_dim,
)

__all__ = ["iso_dropout"]

MODES = ("vector", "projection", "gaussian")


def _check_p(p: object) -> float:
    return check_real(p, "p", 0, 1, low_open=False, high_open=True)  # p = 1 would drop everything


def _check_mode(mode: object) -> str:
    return check_choice(mode, "mode", MODES)


def _projection_rank(n: int, p: float) -> int:
    """The rank k of the random projection for ``mode="projection"``: round((1 − p)·n), half up, in [1, n].

    k is clipped to at least 1, so that a small feature axis with a large p still keeps one direction; the
    rescaling n/k keeps the output unbiased for every k.
    """
    p = _check_p(p)
    check_int(n, "n")
    return min(n, max(1, math.floor((1.0 - p) * n + 0.5)))


def _randn(shape, generator, dtype, device) -> torch.Tensor:
    """``torch.randn``; without a generator the keyword is left out, because its overload with ``generator`` does not
    take symbolic sizes (``torch.compile(dynamic=True)`` fails on it even for ``generator=None``)."""
    if generator is None:
        return torch.randn(shape, dtype=dtype, device=device)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def iso_dropout(
    x: torch.Tensor,
    p: float = 0.5,
    *,
    training: bool = True,
    mode: str = "vector",
    dim: int = -1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Isotropic dropout along ``dim``: identity in evaluation, unbiased and rotation invariant in law in training.

    Modes (n = size of ``dim``):

    - ``"vector"``: drop whole vectors, out = x·b/(1 − p) with b ~ Bernoulli(1 − p) per vector. The mask does
      not depend on the values, so for a fixed generator state it is *pathwise* equivariant: out(gx) = g·out(x)
      for every linear g (orthogonal or not).
    - ``"projection"``: out = (n/k)·P_k x with P_k the orthogonal projection onto a Haar-random k-dimensional
      subspace, drawn independently for every vector, k = round((1 − p)·n) (half up, at least 1), and
      E[P_k] = (k/n)I. The subspace is the span of a Gaussian n×min(k, n − k) matrix (via QR; the complement
      is used when k > n/2), so a forward costs O(vectors·n·min(k, n − k)²).
    - ``"gaussian"``: out = x + s‖x‖ξ with ξ ~ N(0, I/n) and s = √(p/(1 − p)), so that E‖out − x‖² =
      s²‖x‖², the same total variance as Bernoulli dropout with rate p.

    Args:
        x: floating-point input.
        p: drop rate in [0, 1) (default ``0.5``); ``p = 0`` is the identity.
        training: apply the noise (default ``True``, as ``torch.nn.functional.dropout``); ``False`` returns x.
        mode: ``"vector"``, ``"projection"`` or ``"gaussian"`` (default ``"vector"``).
        dim: feature axis (default ``-1``).
        generator: optional ``torch.Generator`` on x's device for the noise.

    Shape:
        - Input: any shape with a non-empty axis ``dim`` (an empty batch passes through).
        - Output: same shape and dtype as the input (float16/bfloat16 noise is applied in float32).

    NaN stays in its vector. With n = 1, ``"projection"`` is the identity (the only rank-1 projection of ℝ¹).

    Examples:
        >>> import torch, isotorch as it
        >>> x = torch.randn(6, 4)
        >>> y = it.functional.iso_dropout(x, 0.5, generator=torch.Generator().manual_seed(0))
        >>> kept = y.abs().sum(-1) > 0  # whole vectors kept (scaled by 2) or dropped
        >>> bool(torch.allclose(y[kept], 2 * x[kept]))
        True
        >>> it.functional.iso_dropout(x, 0.5, training=False) is x
        True
    """
    check_floating(x)
    d = feature_dim(x, dim)
    p = _check_p(p)
    mode = _check_mode(mode)
    check_bool(training, "training")
    generator = check_generator(generator)
    if not training or p == 0.0:
        return x
    n = x.shape[d]
    ct = compute_dtype(x.dtype)
    h = x.to(ct)
    if mode == "vector":
        shape = list(x.shape)
        shape[d] = 1
        keep = torch.empty(shape, dtype=ct, device=x.device).bernoulli_(1.0 - p, generator=generator)
        out = h * (keep / (1.0 - p))
    elif mode == "gaussian":
        xi = _randn(h.shape, generator, ct, x.device)
        out = h + _vector_norm(h, d) * xi * math.sqrt(p / ((1.0 - p) * n))
    else:
        k = _projection_rank(n, p)
        if k == n:
            return x
        r = min(k, n - k)
        v = h.movedim(d, -1)
        flat = v.reshape(-1, n)
        basis = _randn((flat.shape[0], n, r), generator, ct, x.device)
        q = torch.linalg.qr(basis).Q  # (vectors, n, r): an orthonormal basis of a Haar-random r-dim subspace
        proj = (q @ (q.transpose(-1, -2) @ flat.unsqueeze(-1))).squeeze(-1)
        kept = proj if k == r else flat - proj
        out = (kept * (n / k)).reshape(v.shape).movedim(-1, d)
    return out.to(x.dtype)
