"""Privileged planes shared by SRM, PPP and the scalar scores: bases, plane frames, ε and the isotropic baseline.

A privileged set is K directions b_1..b_K in ℝⁿ (the rows of a (K, n) matrix). The plane (i, j) has the orthonormal
frame e₁ = b̂_i, e₂ = normalise(b_j − (b_j·e₁)e₁) (Gram–Schmidt, so non-orthogonal sets are allowed). A unit
activation â has in-plane coordinates p = â·e₁, q = â·e₂.

For isotropic directions in ℝⁿ the projection t = â·u on any unit vector u satisfies (1 + t)/2 ~ Beta(a, a) with
a = (n − 1)/2, so the probability that â lies in a spotlight cone of cosine ε is

    baseline(n, ε) = P(t ≥ ε) = I_{(1−ε)/2}(a, a)

with I the regularised incomplete beta function. :func:`srm_epsilon` solves baseline(n, ε) = p (PPP's default, p = 0.1;
for large n ε ≈ 1.28/√n, the normal quantile z₀.₉ over √n). SRM's own default adapts ε to the data's in-plane norms
(``_srm.resolution_epsilon``) so that its cone resolves axes from diagonals.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from isotorch import groups as _groups
from isotorch._util import (
    check_choice,
    check_epsilon,
    check_generator,
    check_int,
    check_matrix,
    check_probability,
    finite_rows,
)

__all__ = ["srm_baseline", "srm_epsilon"]

DEFAULT_BASELINE = 0.1
PLANE_MODES = ("comb", "perm")
# Elements per working array in the chunked CPU loops (see chunk_elements_for).
CHUNK_ELEMENTS = 1 << 15


def srm_baseline(n: int, epsilon: float) -> float:
    """The fraction of isotropic directions in ℝⁿ inside a spotlight cone of cosine ``epsilon``.

    baseline(n, ε) = P(â·u ≥ ε) = I_{(1−ε)/2}((n−1)/2, (n−1)/2) for â uniform on the sphere S^{n−1} and any unit u,
    because (1 + â·u)/2 ~ Beta((n−1)/2, (n−1)/2). This is the flat SRM curve of isotropic data.

    Args:
        n: the dimension (≥ 2).
        epsilon: the cone cosine ε in (−1, 1).

    Examples:
        >>> from isotorch.probes import srm_baseline
        >>> round(srm_baseline(8, 0.45), 3)
        0.112
        >>> srm_baseline(3, 0.0)
        0.5
    """
    from scipy.special import betainc

    check_int(n, "n", minimum=2)  # a spotlight needs a plane
    epsilon = check_epsilon(epsilon)
    a = (n - 1) / 2
    return float(betainc(a, a, (1.0 - epsilon) / 2.0))


def srm_epsilon(n: int, baseline: float = DEFAULT_BASELINE) -> float:
    """The cone cosine ε at which isotropic data in ℝⁿ fills the spotlight with probability ``baseline``.

    Solves baseline(n, ε) = p exactly: ε = 1 − 2·I⁻¹_p((n−1)/2, (n−1)/2); for large n, ε ≈ z_{1−p}/√n. The default
    p = 0.1 gives ε ≈ 1.28/√n, which keeps ε below √2/√n, the in-plane norm of hypercube-corner directions
    (saturated tanh); at p = 0.05 (ε ≈ 1.645/√n) those would be invisible, a false negative.

    Args:
        n: the dimension (≥ 2).
        baseline: the target isotropic fraction p in (0, 1). Default: 0.1.

    Examples:
        >>> from isotorch.probes import srm_baseline, srm_epsilon
        >>> eps = srm_epsilon(8)
        >>> round(eps, 3), round(srm_baseline(8, eps), 6)
        (0.472, 0.1)
    """
    from scipy.special import betaincinv

    check_int(n, "n", minimum=2)  # a spotlight needs a plane
    baseline = check_probability(baseline, "baseline")
    a = (n - 1) / 2
    return float(1.0 - 2.0 * betaincinv(a, a, baseline))


def resolve_epsilon(epsilon: float | None, n: int) -> float:
    return srm_epsilon(n) if epsilon is None else check_epsilon(epsilon)


def resolve_basis(
    basis: torch.Tensor | str | None, n: int, generator: torch.Generator | None, device
) -> tuple[torch.Tensor, str]:
    """Unit-norm privileged directions as a float64 (K, n) matrix, and the kind (standard, random or custom)."""
    if basis is None or (isinstance(basis, str) and basis == "standard"):
        return torch.eye(n, dtype=torch.float64, device=device), "standard"
    if isinstance(basis, str):
        if basis != "random":
            raise ValueError(f"basis must be None, 'standard', 'random' or a (K, n) tensor, got {basis!r}")
        gen = check_generator(generator)
        g = _groups.get("orthogonal").sample(n, generator=gen, dtype=torch.float64)
        return g.to(device), "random"
    if not isinstance(basis, torch.Tensor):
        raise TypeError(f"basis must be None, 'standard', 'random' or a (K, n) tensor, got {type(basis).__name__}")
    if not basis.is_floating_point():
        raise TypeError(f"basis must be a floating-point tensor, got dtype {basis.dtype}")
    if basis.ndim != 2 or basis.shape[1] != n or basis.shape[0] < 2:
        raise ValueError(
            f"basis must have shape (K, {n}) with K >= 2 (one direction per row, matching the {n} features), "
            f"got shape {tuple(basis.shape)}"
        )
    b = basis.detach().to(device=device, dtype=torch.float64)
    if not torch.isfinite(b).all():
        raise ValueError("basis must be finite (it holds NaN or inf)")
    norms = b.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError(f"basis rows must be non-zero, rows {torch.nonzero(norms.flatten() == 0).flatten().tolist()}")
    return b / norms, "custom"


def plane_pairs(
    k: int, planes: str, max_planes: int | None, generator: torch.Generator | None, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) of the planes: unordered i < j ("comb") or ordered i ≠ j ("perm"), optionally subsampled."""
    check_choice(planes, "planes", PLANE_MODES)
    if planes == "comb":
        ij = torch.triu_indices(k, k, offset=1, device=device)
    else:
        grid = torch.cartesian_prod(torch.arange(k, device=device), torch.arange(k, device=device)).T
        ij = grid[:, grid[0] != grid[1]]
    total = ij.shape[1]
    if max_planes is not None:
        check_int(max_planes, "max_planes")
        if max_planes < total:
            gen = check_generator(generator)
            keep = torch.randperm(total, generator=gen).to(device)[:max_planes].sort().values
            ij = ij[:, keep]
    return ij[0].contiguous(), ij[1].contiguous()


def plane_frames(basis: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Gram–Schmidt coefficients (c, s) with e₂ = (b̂_j − c·b̂_i)/s, or ``None`` when every plane is orthonormal."""
    c = (basis[i] * basis[j]).sum(dim=1)
    if bool((c.abs() < 1e-12).all()):
        return None
    s = torch.sqrt(torch.clamp(1.0 - c * c, min=0.0))
    bad = s < 1e-8
    if bad.any():
        k = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"basis rows {int(i[k])} and {int(j[k])} are parallel, so they do not span a plane; remove one of them"
        )
    return c, s


def unit_rows(acts: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Keep rows with a non-zero norm (a zero activation has no direction); return them and the excluded count."""
    ok = (
        torch.cat([torch.linalg.vector_norm(block, dim=1, dtype=torch.float64) > 0 for block in acts.split(1 << 16)])
        if acts.shape[0]
        else torch.zeros(0, dtype=torch.bool, device=acts.device)
    )
    n_zero = int(acts.shape[0] - ok.sum())
    return (acts[ok] if n_zero else acts), n_zero


def chunk_elements_for(device: torch.device) -> int:
    """Working-array size: 2**15 values on CPU (below torch's intra-op grain, so each op runs on one thread and the
    probes parallelise over rows with their own threads), 2**22 on accelerators."""
    return CHUNK_ELEMENTS if device.type == "cpu" else 1 << 22


def iter_row_blocks(
    acts: torch.Tensor, basis: torch.Tensor, standard: bool, rows: tuple[int, int], row_chunk: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (row_start, coords): unit rows projected on the basis, transposed to (K, S) float64, a block at a time."""
    for r0 in range(rows[0], rows[1], row_chunk):
        a = acts[r0 : min(r0 + row_chunk, rows[1])].to(torch.float64)
        a = a / torch.linalg.vector_norm(a, dim=1, keepdim=True)
        yield r0, (a if standard else a @ basis.T).T.contiguous()


def iter_planes(
    coords: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    frames: tuple[torch.Tensor, torch.Tensor] | None,
    plane_chunk: int,
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Yield (plane_start, plane_stop, p, q): in-plane coordinates p = â·e₁, q = â·e₂ of a block, (P_chunk, S)."""
    n_planes = i.shape[0]
    for p0 in range(0, n_planes, plane_chunk):
        p1 = min(p0 + plane_chunk, n_planes)
        p = coords.index_select(0, i[p0:p1])
        q = coords.index_select(0, j[p0:p1])
        if frames is not None:
            c, s = frames
            q = (q - c[p0:p1, None] * p) / s[p0:p1, None]
        yield p0, p1, p, q


def block_sizes(n_planes: int, chunk_elements: int) -> tuple[int, int]:
    """(row_chunk, plane_chunk) so that a (plane_chunk, row_chunk) working array has about ``chunk_elements``."""
    plane_chunk = max(1, min(n_planes, 64))
    rows = max(1, chunk_elements // plane_chunk)
    # a power of two that divides parallel_rows' alignment (4096), so that row blocks start at the same rows
    # however the rows are split across threads (per-block random streams are seeded by the block start)
    return min(1 << (rows.bit_length() - 1), 4096), plane_chunk


def iter_plane_coordinates(
    acts: torch.Tensor,
    basis: torch.Tensor,
    standard: bool,
    i: torch.Tensor,
    j: torch.Tensor,
    frames: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    rows: tuple[int, int] | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Iterator[tuple[int, int, int, torch.Tensor, torch.Tensor]]:
    """Yield (row_start, plane_start, plane_stop, p, q): in-plane coordinates of unit rows, (P_chunk, S) float64.

    Rows ``rows = (start, stop)`` (default all) are normalised in float64 a block at a time and projected onto the
    basis once per block (kept transposed, one contiguous row per basis direction); planes are taken in chunks so
    that each working array has about ``chunk_elements`` values. Memory stays O(chunk), never N × P.
    """
    rows = (0, acts.shape[0]) if rows is None else rows
    row_chunk, plane_chunk = block_sizes(i.shape[0], chunk_elements)
    for r0, coords in iter_row_blocks(acts, basis, standard, rows, row_chunk):
        for p0, p1, p, q in iter_planes(coords, i, j, frames, plane_chunk):
            yield r0, p0, p1, p, q


def parallel_rows(fn, n_rows: int, device: torch.device, *, align: int = 4096) -> list:
    """Split rows 0..n_rows into one contiguous range per worker and return ``[fn(start, stop), ...]`` in order.

    On CPU the ranges run on ``torch.get_num_threads()`` Python threads (torch releases the GIL inside its ops);
    callers keep their working arrays below torch's intra-op grain size, so the ops themselves stay
    single-threaded. This parallelises well on a shared machine, where OpenMP's spinning threads do not. Range
    boundaries are multiples of ``align`` so that per-block random streams do not depend on the thread count.
    """
    workers = torch.get_num_threads() if device.type == "cpu" else 1
    blocks = -(-n_rows // align)
    workers = max(1, min(workers, blocks))
    per = -(-blocks // workers) * align
    bounds = [(r, min(r + per, n_rows)) for r in range(0, n_rows, per)] or [(0, 0)]
    if len(bounds) == 1:
        return [fn(*bounds[0])]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(bounds)) as pool:
        return list(pool.map(lambda ab: fn(*ab), bounds))


def angle_grid(angles: int, device=None) -> torch.Tensor:
    """θ_k = 2πk/A for k = 0..A−1 in float64."""
    return torch.arange(angles, dtype=torch.float64, device=device) * (2.0 * math.pi / angles)


@dataclass(frozen=True)
class PlaneSetup:
    """Validated inputs shared by SRM, PPP and the scores: usable rows, unit basis, planes and their frames."""

    acts: torch.Tensor
    n_features: int
    epsilon: float
    basis: torch.Tensor
    kind: str
    i: torch.Tensor
    j: torch.Tensor
    frames: tuple[torch.Tensor, torch.Tensor] | None
    excluded_nonfinite: int
    excluded_zero: int

    @property
    def n_samples(self) -> int:
        return self.acts.shape[0]

    @property
    def n_planes(self) -> int:
        return self.i.shape[0]

    @property
    def standard(self) -> bool:
        return self.kind == "standard"

    @property
    def planes(self) -> torch.Tensor:
        return torch.stack([self.i, self.j], dim=1)


def prepare(
    acts: object,
    basis: torch.Tensor | str | None,
    epsilon: float | None,
    planes: str,
    max_planes: int | None,
    generator: torch.Generator | None,
    nan_policy: str,
    *,
    min_rows: int = 1,
) -> PlaneSetup:
    """Check the inputs of a plane probe and drop unusable rows (non-finite under ``"omit"``, zero)."""
    acts = check_matrix(acts, "acts", min_cols=2)
    n = acts.shape[1]
    epsilon = resolve_epsilon(epsilon, n)
    device = acts.device
    gen = check_generator(generator)
    basis_hat, kind = resolve_basis(basis, n, gen, device)
    i, j = plane_pairs(basis_hat.shape[0], planes, max_planes, gen, device)
    frames = plane_frames(basis_hat, i, j)
    kept, n_bad = finite_rows(acts.detach(), "acts", nan_policy)
    kept, n_zero = unit_rows(kept)
    if kept.shape[0] < min_rows:
        raise ValueError(
            f"acts has {kept.shape[0]} usable row(s) ({n_bad} non-finite, {n_zero} zero dropped); "
            f"need at least {min_rows}"
        )
    return PlaneSetup(kept, n, epsilon, basis_hat, kind, i, j, frames, n_bad, n_zero)
