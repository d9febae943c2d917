"""Rotations for a residual stream whose group is O(d): Hadamard, randomised Hadamard, and learned (REFERENCE §8.3).

After :func:`~isotorch.params.fold_norms` any orthogonal Q acts on the stream without changing the function; the
choice of Q decides how quantisable the stream is (QuaRot, SpinQuant):

- :func:`hadamard`: H/√n with H a Hadamard matrix (entries ±1, HHᵀ = nI): Sylvester's H₂^{⊗k} times, where n is not
  a power of two, a Paley core (order p + 1 for a prime p ≡ 3 mod 4; order 2(p + 1) for a prime p ≡ 1 mod 4), e.g.
  n = 768 = 12·64 (GPT-2). Every entry has magnitude 1/√n, so a one-hot outlier channel is spread over all n.
- :func:`random_hadamard`: H·diag(s)/√n with random signs s (QuaRot's randomised Hadamard).
- Haar-random orthogonal: ``isotorch.groups.get("orthogonal").sample(n, generator=...)``.
- :func:`learn_rotation`: minimise the simulated quantisation error of a calibration batch h·Q (and optionally of
  weights W·Q that read the stream) over Q ∈ O(d), as SpinQuant: Q = Q₀·cay(A), cay(A) = (I − A/2)⁻¹(I + A/2) with A
  skew-symmetric (orthogonal for any A), rounding with a straight-through gradient, Adam on A, Q₀ ← Q and A ← 0
  every ``rebase`` steps; the best Q seen (exact error, no estimator) is returned, so the result never has a larger
  error than the initial rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from isotorch._util import check_finite, check_floating, check_generator, check_int, feature_dim, json_safe
from isotorch.params._errors import SymmetryError

__all__ = [
    "LearnedRotation",
    "check_orthogonal",
    "hadamard",
    "hadamard_transform",
    "learn_rotation",
    "random_hadamard",
]


def _is_prime(p: int) -> bool:
    if p < 2:
        return False
    return all(p % k for k in range(2, math.isqrt(p) + 1))


def _jacobsthal(p: int) -> torch.Tensor:
    """Q[a, b] = χ(a − b) with χ the quadratic character mod p (χ(0) = 0)."""
    squares = {(k * k) % p for k in range(1, p)}
    chi = torch.tensor([0] + [1 if k in squares else -1 for k in range(1, p)], dtype=torch.int64)
    idx = (torch.arange(p)[:, None] - torch.arange(p)[None, :]) % p
    return chi[idx]


def _paley(order: int) -> torch.Tensor | None:
    """An integer Hadamard matrix of ``order`` from a Paley construction, or None if none applies."""
    p = order - 1
    if _is_prime(p) and p % 4 == 3:  # Paley I: H = I + S, S = [[0, 1ᵀ], [−1, Q]] skew
        s = torch.zeros(order, order, dtype=torch.int64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(p)
        return torch.eye(order, dtype=torch.int64) + s
    if order % 2 == 0:
        p = order // 2 - 1
        if _is_prime(p) and p % 4 == 1:  # Paley II: S = [[0, 1ᵀ], [1, Q]] symmetric, blown up by 2×2 blocks
            s = torch.zeros(order // 2, order // 2, dtype=torch.int64)
            s[0, 1:], s[1:, 0], s[1:, 1:] = 1, 1, _jacobsthal(p)
            plus = torch.tensor([[1, 1], [1, -1]])
            zero = torch.tensor([[1, -1], [-1, -1]])
            return torch.kron(s, plus) + torch.kron(torch.eye(order // 2, dtype=torch.int64), zero)
    return None


@lru_cache(maxsize=32)
def _hadamard_core(n: int) -> torch.Tensor:
    """The Paley core C (or [1]) with H_n = H₂^{⊗k} ⊗ C, verified exactly; ValueError naming n if none."""
    k = n & -n  # largest power of two dividing n
    while k >= 1:
        base = n // k
        core = torch.ones(1, 1, dtype=torch.int64) if base == 1 else _paley(base)
        if core is not None:
            if not torch.equal(core @ core.T, base * torch.eye(base, dtype=torch.int64)):
                raise AssertionError(f"Paley core of order {base} is not Hadamard")  # pragma: no cover
            return core
        k //= 2
    raise ValueError(
        f"no Hadamard matrix of size n={n} from Sylvester/Paley constructions (need n = 2^k, or 2^k·(p+1) for a "
        "prime p ≡ 3 mod 4, or 2^k·2(p+1) for a prime p ≡ 1 mod 4); use a Haar rotation "
        "(isotorch.groups.get('orthogonal').sample(n)) instead"
    )


@lru_cache(maxsize=32)
def _hadamard_int(n: int) -> torch.Tensor:
    """An integer ±1 Hadamard matrix of order n: H₂ ⊗ … ⊗ H₂ ⊗ C (Sylvester times a Paley core)."""
    h = _hadamard_core(n)
    sylvester = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    while h.shape[0] < n:
        h = torch.kron(sylvester, h)
    return h


def hadamard(n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """The orthogonal matrix H/√n for a Hadamard matrix H of order n (entries ±1/√n).

    Args:
        n: size: a power of two, or 2^k times a Paley order (12, 20, 24, 28, 44, ...; e.g. 768 = 12·64).
        dtype: dtype of the result. Default: float64.
        device: device of the result. Default: CPU.

    Raises:
        ValueError: naming ``n`` when no construction here gives a Hadamard matrix of that size.

    Examples:
        >>> hadamard(2)
        tensor([[ 0.7071,  0.7071],
                [ 0.7071, -0.7071]], dtype=torch.float64)
        >>> q = hadamard(12)
        >>> bool(torch.allclose(q @ q.T, torch.eye(12, dtype=torch.float64), atol=1e-15))
        True
    """
    check_int(n, "n")
    return (_hadamard_int(n).to(dtype=torch.float64) / math.sqrt(n)).to(dtype=dtype, device=device)


def hadamard_transform(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x·H/√n along ``dim`` without forming the n×n matrix (a fast Walsh–Hadamard transform).

    Equal to ``torch.movedim(torch.movedim(x, dim, -1) @ hadamard(n), -1, dim)`` (up to round-off) for every n that
    :func:`hadamard` supports: H = H₂ ⊗ … ⊗ H₂ ⊗ C with C the Paley core (size 1 for a power of two) is applied as
    small matmuls, one per Kronecker factor (C, and Sylvester blocks of at most 64): O(n·(m + 64·⌈k/6⌉)) per vector
    instead of O(n²), on a contiguous (before, n, after) view (no transposes of x).

    Examples:
        >>> x = torch.randn(5, 12, dtype=torch.float64)
        >>> bool(torch.allclose(hadamard_transform(x), x @ hadamard(12), atol=1e-14))
        True
    """
    x = check_floating(x)
    dim = feature_dim(x, dim)
    n = x.shape[dim]
    return _hadamard_apply(x, dim) / math.sqrt(n)


def _hadamard_factors(n: int, transpose: bool) -> list[torch.Tensor]:
    """The integer Kronecker factors of H_n (or of H_nᵀ), outermost first: Sylvester blocks of at most 64, then C."""
    core = _hadamard_core(n)  # raises naming n when unsupported
    sizes, rest = [], n // core.shape[0]
    while rest > 1:  # H_{2^k} = H_{2^a} ⊗ H_{2^b}: Sylvester factors of at most 64, each one small matmul
        sizes.append(min(rest, 64))
        rest //= sizes[-1]
    return [_hadamard_int(size) for size in sizes] + [core.T if transpose else core]  # Sylvester blocks: symmetric


def _hadamard_apply(x: torch.Tensor, dim: int, *, transpose: bool = False, inner: int = 1) -> torch.Tensor:
    """x·H (x·Hᵀ with ``transpose``) along ``dim`` with the integer ±1 Hadamard matrix H of order n, unscaled.

    ``dim`` may hold n·inner entries: then H acts on blocks of ``inner`` consecutive entries (entry i·inner + k is
    feature i). x·(A ⊗ B) on x viewed as (…, a, b) is A applied on the a-axis and B on the b-axis, so each Kronecker
    factor is one batched matmul of a contiguous (before, f, after) view.
    """
    dim = dim % x.ndim
    total = x.shape[dim]
    n = total // inner
    pre = math.prod(x.shape[:dim])
    post = math.prod(x.shape[dim + 1 :]) * inner
    y = x.contiguous()
    before = 1
    for mat in _hadamard_factors(n, transpose):
        f = mat.shape[0]
        after = n // (before * f) * post
        mat = mat.to(dtype=x.dtype, device=x.device)
        if after == 1:  # the factor acts on the last axis: y·M
            y = y.reshape(-1, f) @ mat
        else:  # (M ᵀ y)[j] = Σ_i M[i, j] y[i] on the middle axis of (pre·before, f, after)
            y = torch.matmul(mat.T, y.reshape(pre * before, f, after))
        before *= f
    return y.reshape(x.shape)


def random_hadamard(
    n: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """QuaRot's randomised Hadamard rotation H·diag(s)/√n with iid random signs s (``generator=None``: global RNG).

    Examples:
        >>> q = random_hadamard(8, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(q.T @ q, torch.eye(8, dtype=torch.float64), atol=1e-15))
        True
    """
    generator = check_generator(generator)
    h = hadamard(n, dtype=torch.float64)
    signs = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
    return (h * signs).to(dtype=dtype, device=device)


def check_orthogonal(q: object, n: int, name: str, *, tol: float | None = None) -> torch.Tensor:
    """Return ``q`` if it is an (n, n) floating-point orthogonal matrix; otherwise raise ``SymmetryError`` naming it.

    Orthogonality is checked as max|QᵀQ − I| ≤ tol (default: 100·n·eps of q's dtype, at least 1e-12).
    """
    if not isinstance(q, torch.Tensor) or not q.is_floating_point():
        raise SymmetryError(f"{name}: the rotation must be a floating-point torch.Tensor, got {type(q).__name__}")
    if tuple(q.shape) != (n, n):
        raise SymmetryError(
            f"{name}: the rotation must have shape ({n}, {n}) (the stream's size), got {tuple(q.shape)}"
        )
    if not torch.isfinite(q).all():
        raise SymmetryError(f"{name}: the rotation holds NaN or inf values")
    tol = max(100 * n * torch.finfo(q.dtype).eps, 1e-12) if tol is None else tol
    q64 = q.detach().double()
    dev = float((q64.T @ q64 - torch.eye(n, dtype=torch.float64, device=q.device)).abs().max())
    if dev > tol:
        raise SymmetryError(f"{name}: the rotation is not orthogonal (max |QᵀQ − I| = {dev:.2e} > {tol:.1e})")
    return q


def _cayley(a: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(eye - a / 2, eye + a / 2)


@dataclass(frozen=True)
class LearnedRotation:
    """A rotation learned by :func:`learn_rotation`.

    Attributes:
        matrix: the orthogonal (d, d) Q (float64); apply as h·Q (rows of h are tokens).
        initial_error, error: the objective (relative squared quantisation error) with the initial Q and with Q.
        identity_error: the objective with Q = I (no rotation), for comparison.
        history: the exact objective at each step.
        settings: bits, steps, learning rate, initialisation.
    """

    matrix: torch.Tensor
    initial_error: float
    error: float
    identity_error: float
    history: tuple[float, ...]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (without the matrix)."""
        return json_safe(
            {
                "dim": self.matrix.shape[0],
                "initial_error": self.initial_error,
                "error": self.error,
                "identity_error": self.identity_error,
                "history": list(self.history),
                "settings": dict(self.settings),
            }
        )

    def __repr__(self) -> str:
        return (
            f"LearnedRotation(d={self.matrix.shape[0]}, error {self.initial_error:.3e} → {self.error:.3e}, "
            f"identity {self.identity_error:.3e})"
        )


def _objective(h, weights, q, bits, clip_ratio, straight_through):
    from isotorch.probes._outliers import fake_quantise

    hq = h @ q
    err = (hq - fake_quantise(hq, bits, dim=-1, clip_ratio=clip_ratio, straight_through=straight_through)).pow(2)
    loss = err.sum() / hq.pow(2).sum()
    for w in weights:
        wq = w @ q
        werr = (wq - fake_quantise(wq, bits, dim=-1, clip_ratio=clip_ratio, straight_through=straight_through)).pow(2)
        loss = loss + werr.sum() / wq.pow(2).sum()
    return loss


def learn_rotation(
    h: torch.Tensor,
    *,
    bits: int = 4,
    weights: tuple[torch.Tensor, ...] = (),
    init: str | torch.Tensor = "hadamard",
    steps: int = 100,
    lr: float = 3e-2,
    rebase: int = 10,
    clip_ratio: float = 1.0,
    generator: torch.Generator | None = None,
) -> LearnedRotation:
    """Learn an orthogonal Q that minimises the per-token fake-quantisation error of ``h·Q`` (SpinQuant-style).

    Objective: ‖hQ − Q_b(hQ)‖²/‖hQ‖² + Σ_W ‖WQ − Q_b(WQ)‖²/‖WQ‖², with per-row scales (per token; per output
    channel of a reader W (out, d) of the stream, which becomes W·Q when the stream is rotated by Q).

    Args:
        h: (N, d) calibration activations (the residual stream, one token per row).
        bits: simulated bit width. Default: 4.
        weights: reader matrices (out, d) to include in the objective. Default: none.
        init: ``"identity"``, ``"hadamard"`` (random signs; needs a size :func:`hadamard` supports), ``"haar"``, or
            an orthogonal (d, d) tensor. Default: ``"hadamard"``.
        steps: optimiser steps. Default: 100.
        lr: Adam learning rate on the skew parameter. Default: 3e-2.
        rebase: fold the Cayley factor into Q₀ every this many steps. Default: 10.
        clip_ratio: as in :func:`~isotorch.probes.fake_quantise`. Default: 1.0.
        generator: for the random signs or the Haar draw (``None``: global RNG).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> h = torch.randn(256, 16, generator=g, dtype=torch.float64)
        >>> h[:, 0] *= 30
        >>> res = learn_rotation(h, init="identity", steps=30)
        >>> res.error < 0.5 * res.identity_error
        True
    """
    generator = check_generator(generator)
    if not isinstance(h, torch.Tensor) or not h.is_floating_point() or h.ndim != 2 or h.shape[0] < 1:
        raise ValueError(f"h must be a floating-point (N, d) tensor of calibration activations, got {h!r:.80}")
    d = h.shape[1]
    from isotorch.probes._outliers import _check_bits

    bits = _check_bits(bits)
    check_int(steps, "steps", minimum=0)
    check_int(rebase, "rebase")
    check_finite(lr, "lr", minimum=0, strict=True)
    h64 = h.detach().double()
    ws = []
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or w.ndim != 2 or w.shape[1] != d:
            raise ValueError(f"weights[{i}] must be a (out, {d}) matrix reading the stream, got {w!r:.80}")
        ws.append(w.detach().double().to(h.device))
    if isinstance(init, torch.Tensor):
        q0 = check_orthogonal(init, d, "init").detach().double().to(h.device)
    elif init == "identity":
        q0 = torch.eye(d, dtype=torch.float64, device=h.device)
    elif init == "hadamard":
        q0 = random_hadamard(d, generator=generator, device=h.device)
    elif init == "haar":
        from isotorch.groups import get

        q0 = get("orthogonal").sample(d, generator=generator, dtype=torch.float64).to(h.device)
    else:
        raise ValueError(f"init must be 'identity', 'hadamard', 'haar' or an orthogonal tensor, got {init!r}")

    def exact(q):
        with torch.no_grad():
            return float(_objective(h64, ws, q, bits, clip_ratio, False))

    identity_error = exact(torch.eye(d, dtype=torch.float64, device=h.device))
    initial = exact(q0)
    best_q, best = q0, initial
    history = []
    param = torch.zeros(d, d, dtype=torch.float64, device=h.device, requires_grad=True)
    opt = torch.optim.Adam([param], lr=lr)
    for step in range(steps):
        a = param.triu(1) - param.triu(1).T
        q = q0 @ _cayley(a)
        loss = _objective(h64, ws, q, bits, clip_ratio, True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            a = param.triu(1) - param.triu(1).T
            q = q0 @ _cayley(a)
            err = exact(q)
            history.append(err)
            if err < best:
                best_q, best = q.clone(), err
            if (step + 1) % rebase == 0:
                qq, rr = torch.linalg.qr(q)  # re-orthonormalise the base (round-off only): Q₀ ← Q, A ← 0
                q0 = qq * torch.sign(torch.diagonal(rr))
                param.zero_()
                opt = torch.optim.Adam([param], lr=lr)
    if best_q is not q0:
        best = exact(best_q)
    settings = {
        "bits": bits,
        "steps": steps,
        "lr": lr,
        "rebase": rebase,
        "clip_ratio": clip_ratio,
        "init": init if isinstance(init, str) else "matrix",
        "n_weights": len(ws),
    }
    return LearnedRotation(best_q.detach(), initial, best, identity_error, tuple(history), settings)
