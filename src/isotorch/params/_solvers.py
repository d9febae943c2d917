"""Maximise ⟨g, C⟩ = tr(gᵀC) over a site's group: linear assignment and orthogonal Procrustes (REFERENCE §5.3–5.5).

Each solver takes a cost matrix C (n × n) such that the aligned objective is ⟨g, C⟩ when network B's features are
mapped by g, and returns the maximiser: a permutation index vector (g = I[perm]) or a matrix.

* permutation S_n: ``linear_sum_assignment(C, maximize=True)``;
* signed permutation B_n: assignment on |C|, then the sign of each chosen entry;
* orthogonal O(n): R = UVᵀ for C = UΣVᵀ (Procrustes); SO(n): Kabsch's determinant fix;
* mean-orthogonal O(n)_𝟙: Procrustes in the complement of 𝟙;
* block-orthogonal O(k)≀S_{n/k}: assignment of blocks by the nuclear norm of each k×k block of C, then
  Procrustes per assigned pair;
* rotary planes (RoPE query–key maps, compact part): one 2-D rotation per plane (i, i + n/2), angle
  atan2(C[i+h, i] − C[i, i+h], C[i, i] + C[i+h, i+h]). All of these are exact maximisers.

:func:`general_linear` is the one solver that does not maximise ⟨g, C⟩: for invertible per-head maps it solves a
least-squares problem (a Sylvester equation), see there.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from isotorch import groups as _groups

MATCHABLE = (
    "orthogonal",
    "special_orthogonal",
    "block_orthogonal",
    "mean_orthogonal",
    "signed_permutation",
    "permutation",
)
STRUCTURED = ("rotary_planes",)  # site structures (Site.structure) with a compact part to match over


def assignment(cost: torch.Tensor) -> torch.Tensor:
    """The permutation index vector perm maximising Σ_i C[i, perm[i]]."""
    c = cost.detach().to(torch.float64).cpu().numpy()
    if not np.isfinite(c).all():
        raise ValueError("the matching cost matrix is not finite (NaN or inf in the parameters or activations)")
    _, cols = linear_sum_assignment(c, maximize=True)
    return torch.from_numpy(cols).to(torch.long)


def procrustes(cost: torch.Tensor, special: bool = False) -> torch.Tensor:
    """argmax over R ∈ O(n) (or SO(n) if ``special``) of tr(RᵀC): R = U·diag(1, …, 1, d)·Vᵀ."""
    c = cost.detach().to(torch.float64)
    u, _, vh = torch.linalg.svd(c)
    if special and torch.linalg.det(u @ vh) < 0:
        u = u.clone()
        u[:, -1] = -u[:, -1]
    return u @ vh


def mean_orthogonal(cost: torch.Tensor) -> torch.Tensor:
    """argmax over R ∈ O(n) with R𝟙 = 𝟙 of tr(RᵀC)."""
    n = cost.shape[0]
    b = _groups._mean_basis(n, cost.device)
    inner = b.T @ cost.detach().to(torch.float64) @ b
    r = torch.eye(n, dtype=torch.float64, device=cost.device)
    if n > 1:
        r[1:, 1:] = procrustes(inner[1:, 1:])
    return b @ r @ b.T


def block_orthogonal(cost: torch.Tensor, k: int) -> torch.Tensor:
    """argmax over O(k)≀S_{n/k} of tr(gᵀC): blocks assigned by nuclear norm, rotated by Procrustes."""
    c = cost.detach().to(torch.float64)
    n = c.shape[0]
    m = n // k
    blocks = c.reshape(m, k, m, k).permute(0, 2, 1, 3)  # (m, m, k, k)
    nuclear = torch.linalg.svdvals(blocks).sum(-1)
    perm = assignment(nuclear)
    g = torch.zeros(n, n, dtype=torch.float64, device=c.device)
    for i, j in enumerate(perm.tolist()):
        g[i * k : (i + 1) * k, j * k : (j + 1) * k] = procrustes(blocks[i, j])
    return g


def rotary_planes(cost: torch.Tensor) -> torch.Tensor:
    """argmax of tr(gᵀC) over g = one rotation per plane (i, i + n/2) (n even): the RoPE query–key maps of unit
    scale."""
    c = cost.detach().to(torch.float64)
    h = c.shape[0] // 2
    idx = torch.arange(h, device=c.device)
    cos_part = c[idx, idx] + c[idx + h, idx + h]
    sin_part = c[idx + h, idx] - c[idx, idx + h]
    angle = torch.atan2(sin_part, cos_part)
    g = torch.zeros_like(c)
    g[idx, idx] = g[idx + h, idx + h] = torch.cos(angle)
    g[idx + h, idx] = torch.sin(angle)
    g[idx, idx + h] = -torch.sin(angle)
    return g


def rotary_value(cost: torch.Tensor) -> torch.Tensor:
    """max over :func:`rotary_planes` of tr(gᵀC): Σ_planes |(C[i,i] + C[i+h,i+h], C[i+h,i] − C[i,i+h])|."""
    h = cost.shape[-1] // 2
    idx = torch.arange(h, device=cost.device)
    cos_part = cost[..., idx, idx] + cost[..., idx + h, idx + h]
    sin_part = cost[..., idx + h, idx] - cost[..., idx, idx + h]
    return torch.hypot(cos_part, sin_part).sum(-1)


def general_linear(cost: torch.Tensor, s_in_a: torch.Tensor, s_out_b: torch.Tensor) -> torch.Tensor:
    """The invertible g minimising ‖g·X_B − X_A‖² + ‖gᵀ·Y_A − Y_B‖² (the least-squares fit of a per-head map).

    X are the slices g acts on directly ("out": query or value rows), Y those it acts on by g⁻ᵀ ("dual"/"in": key
    rows, output-projection columns), features first. Asking B's keys to equal gᵀ times A's keys instead of A's
    keys to equal g⁻ᵀ times B's keys keeps the problem linear; both are exact when B is a transformed copy of A.
    Setting the gradient to zero gives the Sylvester equation S_in,A·g + g·S_out,B = C with C = X_A·X_Bᵀ +
    Y_A·Y_Bᵀ (the weight-matching cost), S_in,A = Y_A·Y_Aᵀ, S_out,B = X_B·X_Bᵀ. Raises ``ValueError`` if the
    solution is singular (the heads carry too little to fix an invertible map).
    """
    from scipy.linalg import solve_sylvester

    a, b, q = (t.detach().to(torch.float64).cpu().numpy() for t in (s_in_a, s_out_b, cost))
    g = torch.from_numpy(solve_sylvester(a, b, q)).to(cost.device)
    if not torch.isfinite(g).all() or torch.linalg.matrix_rank(g) < g.shape[0]:
        raise ValueError("the least-squares per-head map is singular; align this site over 'orthogonal' instead")
    return g


def solve(cost: torch.Tensor, key: str) -> torch.Tensor:
    """The maximiser of ⟨g, C⟩ over the group ``key`` (one of :data:`MATCHABLE` or :data:`STRUCTURED`)."""
    if key == "rotary_planes":
        return rotary_planes(cost)
    group = _groups.get(key)
    if group.name == "permutation":
        return assignment(cost)
    if group.name == "signed_permutation":
        perm = assignment(cost.abs())
        signs = torch.sign(cost.detach().to(torch.float64)[torch.arange(len(perm)), perm])
        signs[signs == 0] = 1.0
        return signs[:, None] * torch.eye(len(perm), dtype=torch.float64)[perm]
    if group.name == "orthogonal":
        return procrustes(cost)
    if group.name == "special_orthogonal":
        return procrustes(cost, special=True)
    if group.name == "mean_orthogonal":
        return mean_orthogonal(cost)
    if group.name == "block_orthogonal":
        return block_orthogonal(cost, group._block_size())
    raise ValueError(f"cannot match over the group {key!r}; matchable groups: {', '.join(MATCHABLE)}")


def value(g: torch.Tensor, cost: torch.Tensor) -> float:
    """⟨g, C⟩ for a matrix or a permutation index vector, in float64."""
    c = cost.detach().to(torch.float64)
    if g.ndim == 1:
        return float(c[torch.arange(len(g), device=c.device), g.to(c.device)].sum())
    return float((g.to(device=c.device, dtype=torch.float64) * c).sum())


def best_compact(site_groups: frozenset[str], maximal: frozenset[str], general_linear: bool) -> str | None:
    """The largest matchable compact group at a site (orthogonal for GL sites); ``None`` if there is none."""
    if general_linear:
        return "orthogonal"
    order = {name: i for i, name in enumerate(MATCHABLE)}
    candidates = [k for k in site_groups if _groups.get(k).name in order]
    if not candidates:
        return None

    def rank(key: str):
        g = _groups.get(key)
        return (order[g.name], -(g.block or 0))

    return min(candidates, key=rank)
