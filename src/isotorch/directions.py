"""Privileged direction sets: the standard basis, random orthonormal frames, polytopes and Thomson points.

A direction set V = {v_1, …, v_K} ⊂ S^{n−1} is what a direction-set primitive such as
f_V(x) = Σ_k σ(x·v_k) v_k privileges: f_V is equivariant to the symmetry group of V (of ±V for odd σ). The
sets here range from the most anisotropic to the most spread out:

==============  =====  ===========================================  ===========================
name            K      vectors                                      symmetry of the set
==============  =====  ===========================================  ===========================
standard        n      e_1, …, e_n                                  S_n
random          n      rows of a Haar-random orthogonal matrix      (a rotated S_n)
cross_polytope  2n     ±e_1, …, ±e_n                                B_n
simplex         n + 1  regular simplex, v_i·v_j = −1/n (i ≠ j)      S_{n+1}
thomson         any K  minimisers of the Coulomb energy             generic K: small or trivial
==============  =====  ===========================================  ===========================

Thomson points minimise the Riesz 1-energy (Coulomb energy)

    E(V) = Σ_{i<j} 1 / ‖v_i − v_j‖

on the unit sphere. The regular simplex (K = n + 1) and the cross-polytope (K = 2n) are universally optimal
(Cohn–Kumar 2007), so they are the exact answers for those K; for other K the solver returns a good local
minimum, deterministic given the generator.

Every function returns a (K, n) tensor with unit rows, float64 unless ``dtype=`` says otherwise.

Examples:
    >>> import torch, isotorch as it
    >>> v = it.directions.simplex(3)
    >>> v.shape
    torch.Size([4, 3])
    >>> torch.allclose(v @ v.T, torch.full((4, 4), -1 / 3, dtype=torch.float64).fill_diagonal_(1.0))
    True
    >>> it.directions.get("cross_polytope", 2).tolist()
    [[1.0, 0.0], [0.0, 1.0], [-1.0, -0.0], [-0.0, -1.0]]
"""

from __future__ import annotations

import torch

from isotorch import groups as _groups
from isotorch._util import check_dtype, check_finite, check_generator, check_int, check_name

__all__ = [
    "cross_polytope",
    "energy",
    "get",
    "names",
    "random_orthonormal",
    "simplex",
    "standard_basis",
    "thomson",
]

_NAMES: tuple[str, ...] = ("standard", "random", "cross_polytope", "simplex", "thomson")


def names() -> list[str]:
    """The direction-set names accepted by :func:`get`.

    Examples:
        >>> names()
        ['standard', 'random', 'cross_polytope', 'simplex', 'thomson']
    """
    return list(_NAMES)


def standard_basis(
    n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """The standard basis e_1, …, e_n of ℝⁿ as the rows of an (n, n) identity matrix.

    Args:
        n: dimension (int ≥ 1).
        dtype: floating dtype of the result (default float64).
        device: device of the result.

    Shape:
        Output: (n, n).

    Examples:
        >>> standard_basis(2).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    n = check_int(n, "n", minimum=1)
    return torch.eye(n, dtype=check_dtype(dtype), device=device)


def random_orthonormal(
    n: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A Haar-random orthonormal basis of ℝⁿ: the rows of a Haar-distributed orthogonal matrix.

    Args:
        n: dimension (int ≥ 1).
        generator: random generator (default: the global one).
        dtype: floating dtype of the result (default float64; sampled in float64).
        device: device of the result.

    Shape:
        Output: (n, n), orthonormal rows.

    Examples:
        >>> v = random_orthonormal(3, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(v @ v.T, torch.eye(3, dtype=torch.float64))
        True
    """
    generator = check_generator(generator)
    n = check_int(n, "n", minimum=1)
    dtype = check_dtype(dtype)
    g = _groups.get("orthogonal").sample(n, generator=generator, dtype=torch.float64)
    return g.to(dtype=dtype, device=device)


def cross_polytope(
    n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """The 2n vertices ±e_i of the cross-polytope (orthoplex): e_1, …, e_n, −e_1, …, −e_n.

    Args:
        n: dimension (int ≥ 1).
        dtype: floating dtype of the result (default float64).
        device: device of the result.

    Shape:
        Output: (2n, n).

    Examples:
        >>> cross_polytope(1).tolist()
        [[1.0], [-1.0]]
    """
    n = check_int(n, "n", minimum=1)
    eye = torch.eye(n, dtype=check_dtype(dtype), device=device)
    return torch.cat([eye, -eye])


def simplex(n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """The n + 1 vertices of a regular simplex inscribed in S^{n−1}: unit vectors with v_i·v_j = −1/n for i ≠ j.

    Built from the centred standard basis of ℝ^{n+1}, e_i − 𝟙/(n+1), written in an orthonormal basis of 𝟙^⊥
    and normalised.

    Args:
        n: dimension (int ≥ 1).
        dtype: floating dtype of the result (default float64).
        device: device of the result.

    Shape:
        Output: (n + 1, n).

    Examples:
        >>> v = simplex(2)
        >>> round(float(v[0] @ v[1]), 6)
        -0.5
    """
    n = check_int(n, "n", minimum=1)
    dtype = check_dtype(dtype)
    m = n + 1
    a = torch.eye(m, dtype=torch.float64)
    a[:, 0] = 1.0
    q, _ = torch.linalg.qr(a)
    basis = q[:, 1:]  # (n+1, n): orthonormal basis of the complement of 𝟙
    centred = torch.eye(m, dtype=torch.float64) - 1.0 / m
    v = centred @ basis
    v = v / v.norm(dim=1, keepdim=True)
    return v.to(dtype=dtype, device=device)


def energy(v: torch.Tensor) -> torch.Tensor:
    """The Coulomb (Riesz 1-) energy E(V) = Σ_{i<j} 1/‖v_i − v_j‖ of a set of vectors, as a 0-d tensor.

    Coincident vectors give ``inf``. The rows need not be unit vectors.

    Args:
        v: (K, n) floating tensor, K ≥ 1.

    Shape:
        Input: (K, n). Output: () in the dtype of ``v``.

    Examples:
        >>> float(energy(cross_polytope(1)))
        0.5
    """
    if not isinstance(v, torch.Tensor) or v.ndim != 2 or v.shape[0] < 1:
        raise ValueError(f"v must be a (K, n) tensor with K >= 1, got {getattr(v, 'shape', type(v))}")
    if not v.is_floating_point():
        raise TypeError(f"v must be a floating-point tensor, got {v.dtype}")
    diff = v[:, None, :] - v[None, :, :]
    dist = diff.norm(dim=-1)
    i, j = torch.triu_indices(v.shape[0], v.shape[0], offset=1, device=v.device)
    return (1.0 / dist[i, j]).sum()


_MOMENTUM = 0.9


def _batched_energy_and_force(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy (R,) and tangential force −∇E projected on the sphere (R, K, n) of unit configurations x."""
    k = x.shape[1]
    gram = x @ x.transpose(1, 2)
    sq = (2.0 - 2.0 * gram).clamp_min(1e-300)
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    inv = sq.rsqrt() * (1.0 - eye)  # 1/‖v_i − v_j‖ with zero diagonal
    energy = inv.sum(dim=(1, 2)) / 2
    w = inv**3
    force = x * w.sum(dim=2, keepdim=True) - w @ x  # Σ_j (v_i − v_j)/‖v_i − v_j‖³
    force = force - (force * x).sum(dim=2, keepdim=True) * x
    return energy, force


def thomson(
    k: int,
    n: int,
    *,
    generator: torch.Generator | None = None,
    steps: int = 1000,
    restarts: int = 4,
    tol: float = 1e-7,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """K unit vectors in ℝⁿ that minimise the Coulomb energy Σ_{i<j} 1/‖v_i − v_j‖ (generalised Thomson problem).

    Projected gradient descent with heavy-ball momentum on the sphere. With the tangential force
    F_i = P_{v_i} Σ_j (v_i − v_j)/‖v_i − v_j‖³ (P_v = I − v vᵀ, so F = −grad E on the sphere), a step is

        u ← β u + η F,    v_i ← (v_i + u_i)/‖v_i + u_i‖,    β = 0.9,

    accepted only if it does not raise the energy (then u is projected onto the new tangent spaces and η grows by
    5%); a rejected step resets u = 0 and halves η, so the energy never increases. All ``restarts`` random starts
    (Gaussian directions drawn from ``generator``) run together, vectorised, until
    max_i ‖F_i‖ ≤ ``tol``·E/K for every start (E/K is the scale of ‖∇_i E‖) or ``steps`` steps; the
    lowest-energy configuration is returned.

    For K = n + 1 this reaches the regular simplex and for K = 2n the cross-polytope (up to rotation); both are
    universal optima. For K = 2 the answer is an antipodal pair. For large generic K the landscape has many
    nearby local minima, and the result is the best one that the restarts find.

    Args:
        k: number of points K (int ≥ 2; for n = 1 only K = 2 is possible).
        n: dimension (int ≥ 1).
        generator: ``torch.Generator`` for the random starts, or ``None`` (torch's global RNG); the result is
            deterministic given the generator's state and the other arguments.
        steps: maximum number of steps (default 1000: at most about half a second for K = 128, n = 64).
        restarts: number of random starts (default 4).
        tol: relative tangential-force tolerance for early stopping (default 1e-7).
        dtype: floating dtype of the result (default float64; the solver always runs in float64 on the CPU).
        device: device of the result.

    Shape:
        Output: (K, n), unit rows.

    Examples:
        >>> v = thomson(4, 3, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(v @ v.T, torch.full((4, 4), -1 / 3, dtype=torch.float64).fill_diagonal_(1.0), atol=1e-6)
        True
    """
    k = check_int(k, "k", minimum=2)
    n = check_int(n, "n", minimum=1)
    generator = check_generator(generator)
    steps = check_int(steps, "steps", minimum=0)
    restarts = check_int(restarts, "restarts", minimum=1)
    tol = check_finite(tol, "tol", minimum=0)
    dtype = check_dtype(dtype)
    if n == 1:
        if k > 2:
            raise ValueError(f"only k=2 points fit on the 0-sphere S^0 = {{-1, 1}} (n=1) without coinciding, got k={k}")
        return torch.tensor([[1.0], [-1.0]], dtype=dtype, device=device)

    x = torch.randn(restarts, k, n, generator=generator, dtype=torch.float64)
    x = x / x.norm(dim=2, keepdim=True)
    e, force = _batched_energy_and_force(x)
    # the first step moves the fastest point by a tenth of the typical spacing between points
    spacing = 2.0 * k ** (-1.0 / (n - 1))
    eta = 0.1 * spacing / force.norm(dim=2).amax(dim=1).clamp_min(1e-300)
    velocity = torch.zeros_like(x)
    for _ in range(steps):
        if bool((force.norm(dim=2).amax(dim=1) <= tol * e / k).all()):
            break
        step = _MOMENTUM * velocity + eta[:, None, None] * force
        proposal = x + step
        proposal = proposal / proposal.norm(dim=2, keepdim=True)
        e_new, force_new = _batched_energy_and_force(proposal)
        accept = (e_new <= e)[:, None, None]
        x = torch.where(accept, proposal, x)
        e = torch.where(accept[:, 0, 0], e_new, e)
        force = torch.where(accept, force_new, force)
        step = step - (step * x).sum(dim=2, keepdim=True) * x  # carry the momentum to the new tangent spaces
        velocity = torch.where(accept, step, torch.zeros_like(step))
        eta = torch.where(accept[:, 0, 0], eta * 1.05, eta * 0.5)
    best = int(torch.argmin(e))
    return x[best].to(dtype=dtype, device=device)


def get(
    name: str,
    n: int,
    k: int | None = None,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A direction set by name: one of :func:`names`, as a (K, n) tensor of unit rows.

    Args:
        name: ``"standard"`` (K = n), ``"random"`` (K ≤ n orthonormal rows, default n, Haar-random from ``generator``),
            ``"cross_polytope"`` (K = 2n), ``"simplex"`` (K = n + 1) or ``"thomson"`` (any K ≥ 2, required).
        n: dimension (int ≥ 1).
        k: number of vectors; ``None`` means the set's natural size. A fixed-size set raises on any other K.
        generator: ``torch.Generator`` for ``"random"`` and ``"thomson"``, or ``None`` (torch's global RNG).
        dtype: floating dtype of the result (default float64).
        device: device of the result.

    Raises:
        KeyError: unknown name (the message lists the valid names).
        ValueError: a K the set cannot have, or bad n.

    Examples:
        >>> get("simplex", 3).shape
        torch.Size([4, 3])
        >>> get("thomson", 3, 6).shape
        torch.Size([6, 3])
    """
    check_name(name, _NAMES, "direction set")
    n = check_int(n, "n", minimum=1)
    if k is not None:
        k = check_int(k, "k", minimum=1)
    if name == "thomson":
        if k is None:
            raise ValueError("the 'thomson' direction set needs the number of vectors k")
        return thomson(k, n, generator=generator, dtype=dtype, device=device)
    if name == "random":
        k = n if k is None else k
        if k > n:
            raise ValueError(f"'random' gives at most n={n} orthonormal vectors, got k={k}")
        v = random_orthonormal(n, generator=check_generator(generator), dtype=dtype, device=device)
        return v[:k]
    size = {"standard": n, "cross_polytope": 2 * n, "simplex": n + 1}[name]
    if k is not None and k != size:
        raise ValueError(f"the {name!r} direction set in n={n} dimensions has k={size} vectors, got k={k}")
    build = {"standard": standard_basis, "cross_polytope": cross_polytope, "simplex": simplex}[name]
    return build(n, dtype=dtype, device=device)
