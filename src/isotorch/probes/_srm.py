"""Spotlight Resonance Method (SRM): how often activations point along each direction of each privileged plane.

For a privileged plane with orthonormal frame (e₁, e₂) the spotlight at angle θ is s(θ) = cos θ·e₁ − sin θ·e₂, and

    SRM(θ) = (1/N) Σ_s 1[â_s·s(θ) ≥ ε]                                  (signed: 1[â·s ≥ ε] − 1[â·s ≤ −ε])

over unit activations â_s = a_s/‖a_s‖. With p = â·e₁, q = â·e₂, ρ = √(p² + q²) and φ = atan2(q, p),
â·s(θ) = p cos θ − q sin θ = ρ cos(θ + φ), so a sample is inside the spotlight exactly on the arc of angles

    θ ∈ [−φ − α, −φ + α]  with α = arccos(ε/ρ)     (empty if ρ < ε, the whole circle if ρ ≤ −ε).

Counting the grid angles θ_k = 2πk/A covered by each arc with a difference array (one +1 at the first covered
index, one −1 after the last, a cumulative sum per plane) costs O(N·P) instead of the O(N·P·A) of evaluating every
sample at every angle, and gives the same counts (up to a sample lying within rounding of an arc's end).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from isotorch._util import check_choice, check_int, json_safe
from isotorch.probes._planes import (
    CHUNK_ELEMENTS,
    angle_grid,
    chunk_elements_for,
    iter_plane_coordinates,
    parallel_rows,
    prepare,
    srm_baseline,
)

__all__ = ["SRMResult", "srm"]

METHODS = ("arcs", "dense")
# Default cone: half-angle π/8 at the typical in-plane norm, half the 45° between an axis and a diagonal.
RESOLUTION = math.cos(math.pi / 8)
# Rows used to estimate the typical in-plane norm.
RESOLUTION_ROWS = 4096


def resolution_epsilon(setup) -> float:
    """Default ε = cos(π/8)·ρ*, with ρ* = √(Σ ρ⁴ / Σ ρ²) the ρ²-weighted RMS in-plane norm of the unit rows.

    A sample with in-plane norm ρ lights an arc of half-angle arccos(ε/ρ), so samples of norm ρ* light arcs of
    half-angle π/8: axes (θ = kπ/2) and diagonals (θ = π/4 + kπ/2) are resolved. ρ* = 1 for one-hot codes (their
    in-plane points sit on the unit circle), √(2/n) for hypercube corners (saturated tanh), ≈ 2/√n for Gaussian data.
    The ρ² weights make ρ* the norm of the samples that carry a plane's angular signal, not of the many samples
    almost orthogonal to it. Estimated from at most 4096 evenly spaced rows.
    """
    n_rows = setup.n_samples
    rows = torch.linspace(0, n_rows - 1, min(n_rows, RESOLUTION_ROWS), device=setup.acts.device).round().long()
    sub = setup.acts.index_select(0, rows)
    m2 = m4 = 0.0
    for _, _, _, p, q in iter_plane_coordinates(sub, setup.basis, setup.standard, setup.i, setup.j, setup.frames):
        r2 = p * p + q * q
        m2 += float(r2.sum())
        m4 += float((r2 * r2).sum())
    if m2 <= 0:
        return 0.0
    return min(RESOLUTION * math.sqrt(m4 / m2), 1.0 - 1e-9)


@dataclass(frozen=True)
class SRMResult:
    """Spotlight resonance curves of one set of activations.

    Attributes:
        angles: (A,) spotlight angles θ_k = 2πk/A in radians.
        curves: (P, A) SRM curve of each plane (fraction of samples inside the spotlight).
        planes: (P, 2) basis indices (i, j) of each plane (e₁ from row i, e₂ from row j).
        mean: (A,) mean curve over planes.
        std: (A,) standard deviation over planes (population, so a single plane gives 0).
        epsilon: the cone cosine ε.
        baseline: the flat curve of isotropic data, :func:`srm_baseline` (0 for the signed SRM).
        band: half-width of the pointwise 95% band of one plane's curve for isotropic data of the same size,
            1.96·√(b(1−b)/N) (signed: 1.96·√(2b/N)).
        n_samples: rows used (N).
        n_features: dimension n.
        excluded_nonfinite: rows dropped for NaN/inf (``nan_policy="omit"``).
        excluded_zero: rows dropped because they are zero (no direction).
        settings: basis kind, plane mode, number of planes, signed, method.
    """

    angles: torch.Tensor
    curves: torch.Tensor
    planes: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    epsilon: float
    baseline: float
    band: float
    n_samples: int
    n_features: int
    excluded_nonfinite: int = 0
    excluded_zero: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        peak = int(torch.argmax(self.mean))
        return (
            f"SRMResult(planes={self.curves.shape[0]}, angles={self.angles.shape[0]}, epsilon={self.epsilon:.4g}, "
            f"baseline={self.baseline:.4g}, mean∈[{float(self.mean.min()):.4g}, {float(self.mean.max()):.4g}], "
            f"peak at θ={float(self.angles[peak]):.4g}, n_samples={self.n_samples})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (lists of floats)."""
        return json_safe(
            {
                "angles": self.angles.tolist(),
                "curves": self.curves.tolist(),
                "planes": self.planes.tolist(),
                "mean": self.mean.tolist(),
                "std": self.std.tolist(),
                "epsilon": self.epsilon,
                "baseline": self.baseline,
                "band": self.band,
                "n_samples": self.n_samples,
                "n_features": self.n_features,
                "excluded_nonfinite": self.excluded_nonfinite,
                "excluded_zero": self.excluded_zero,
                "settings": dict(self.settings),
            }
        )

    def plot(self, ax=None, *, max_curves: int = 200, title: str | None = None):
        """Plot the per-plane curves (thin), mean ± std, and the isotropic baseline with its 95% band.

        Uses matplotlib's object API (no pyplot, no window): returns the ``Figure`` (the one holding ``ax`` when
        given). Save it with ``fig.savefig(path)``.
        """
        from isotorch.probes._plotting import new_axes, set_angle_ticks

        fig, ax = new_axes(ax)
        theta = self.angles.cpu().numpy()
        curves = self.curves.cpu().numpy()
        for row in curves[:max_curves]:
            ax.plot(theta, row, color="0.6", lw=0.5, alpha=0.3)
        mean = self.mean.cpu().numpy()
        std = self.std.cpu().numpy()
        ax.fill_between(theta, mean - std, mean + std, color="C0", alpha=0.25, lw=0, label="mean ± std")
        ax.plot(theta, mean, color="C0", lw=2, label="mean over planes")
        ax.axhline(self.baseline, color="C3", ls="--", lw=1, label="isotropic baseline")
        ax.axhspan(self.baseline - self.band, self.baseline + self.band, color="C3", alpha=0.1, lw=0)
        set_angle_ticks(ax)
        ax.set_ylabel("signed SRM" if self.settings.get("signed") else "fraction inside spotlight")
        ax.set_title(title or f"SRM ({self.curves.shape[0]} planes, ε = {self.epsilon:.3g})")
        ax.legend(loc="upper right", fontsize="small")
        return fig


def arc_width(angles: int) -> int:
    """Length of the difference-array rows: arcs start at index k + 2A ∈ [A − 1, 2.5A + 1] and end ≤ 3.5A + 1."""
    return 4 * angles + 2


def arc_indices(
    p: torch.Tensor, q: torch.Tensor, epsilon: float, angles: int, base: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Difference-array positions (start, stop) of each sample's arc of covered grid angles, as int64.

    The arc is θ ∈ [−φ − α, −φ + α] with φ = atan2(q, p), α = arccos(ε/ρ); in units of the grid step Δ = 2π/A it
    covers indices ceil((−φ − α)/Δ) .. floor((−φ + α)/Δ) (empty when ρ < ε, all A when ρ ≤ −ε). Positions are
    shifted by ``base`` (2A plus the row offset of each plane or sample), so they are never negative and fold back
    mod A.
    """
    scale = angles / (2.0 * math.pi)
    r2 = torch.addcmul(p * p, q, q)
    if epsilon == 0.0:
        alpha = torch.full_like(r2, math.pi / 2)
    else:
        alpha = torch.acos(torch.rsqrt(r2).mul_(epsilon).clamp_(-1.0, 1.0))
    phi = torch.atan2(q, p)
    lo = torch.ceil((phi + alpha).mul_(-scale))
    hi = torch.floor((alpha - phi).mul_(scale))
    count = hi.sub_(lo).add_(1.0)
    eps2 = epsilon * epsilon
    if epsilon > 0:  # ρ < ε: α = 0 and the arc is the single angle −φ, covering at most one grid index: remove it
        count.sub_((r2 < eps2).to(count.dtype))
    else:  # ρ ≤ −ε: the whole circle (α = π covers A − 1, A or A + 1 indices after rounding)
        count.add_((r2 <= eps2).to(count.dtype), alpha=float(angles))
    count.clamp_(0.0, float(angles))
    start = lo.add_(base)
    stop = count.add_(start)
    return start.long(), stop.long()


def fold_counts(diff: torch.Tensor, angles: int) -> torch.Tensor:
    """Cumulative sum of difference rows (length 4A + 2) folded mod A: counts per grid angle, shape (..., A)."""
    cum = torch.cumsum(diff, dim=-1)[..., : 4 * angles]
    return cum.reshape(*cum.shape[:-1], 4, angles).sum(dim=-2)


def _arc_plane_counts(coords, n_planes: int, angles: int, epsilon: float, signed: bool, device) -> torch.Tensor:
    """Per-plane difference arrays from closed-form arcs, folded into (P, A) counts."""
    width = arc_width(angles)
    diff = torch.zeros(n_planes, width, dtype=torch.long, device=device)
    ones = None
    for _, p0, p1, p, q in coords:
        base = torch.arange(p1 - p0, device=device, dtype=torch.float64).mul_(width).add_(2 * angles)[:, None]
        local = diff[p0:p1].view(-1)
        if ones is None or ones.numel() < p.numel():
            ones = torch.ones(p.numel(), dtype=torch.long, device=device)
        unit = ones[: p.numel()]
        for sign in (1, -1) if signed else (1,):  # the negative cone â·s ≤ −ε is the positive cone of −â
            start, stop = (
                arc_indices(p, q, epsilon, angles, base) if sign > 0 else arc_indices(-p, -q, epsilon, angles, base)
            )
            local.scatter_add_(0, start.view(-1), unit if sign > 0 else -unit)
            local.scatter_add_(0, stop.view(-1), -unit if sign > 0 else unit)
    return fold_counts(diff, angles)


def _dense_plane_counts(coords, n_planes: int, angles: int, epsilon: float, signed: bool, device) -> torch.Tensor:
    """Straightforward evaluation of â·s(θ) = p cos θ − q sin θ at every sample, plane and angle (reference)."""
    theta = angle_grid(angles, device)
    cos, sin = torch.cos(theta), torch.sin(theta)
    counts = torch.zeros(n_planes, angles, dtype=torch.long, device=device)
    for _, p0, p1, p, q in coords:
        rows = max(1, CHUNK_ELEMENTS // ((p1 - p0) * angles))
        for r0 in range(0, p.shape[1], rows):
            dot = p[:, r0 : r0 + rows, None] * cos - q[:, r0 : r0 + rows, None] * sin
            counts[p0:p1] += (dot >= epsilon).sum(dim=1)
            if signed:
                counts[p0:p1] -= (dot <= -epsilon).sum(dim=1)
    return counts


def srm(
    acts: torch.Tensor,
    basis: torch.Tensor | str | None = None,
    *,
    epsilon: float | None = None,
    angles: int = 100,
    planes: str = "comb",
    max_planes: int | None = None,
    signed: bool = False,
    generator: torch.Generator | None = None,
    nan_policy: str = "raise",
    method: str = "arcs",
) -> SRMResult:
    """Spotlight Resonance Method: the fraction of activations inside a rotating spotlight in each privileged plane.

    SRM_ij(θ) = (1/N) Σ_s 1[â_s·s(θ) ≥ ε] with s(θ) = cos θ·e₁ − sin θ·e₂ on the plane of basis rows (i, j)
    (Gram–Schmidt frame). Peaks at kπ/2 mean activations align with the basis; peaks at π/4 + kπ/2 mean they sit on
    the diagonals ("anti-aligned", saturated tanh); a flat curve at :func:`srm_baseline` means isotropy.

    A sample with in-plane norm ρ lights the spotlight over an arc of half-angle arccos(ε/ρ): a cone wider than the
    structure merges neighbouring axes (one-hot data would then peak at π/4, where two axes share the cone), a cone
    narrower than ρ misses the samples. The default ε = cos(π/8)·ρ* adapts to the data (ρ* = the ρ²-weighted RMS
    in-plane norm, :func:`resolution_epsilon`): one-hot codes (ρ* = 1, ε ≈ 0.92) peak at θ = 0, hypercube corners
    (saturated tanh, ρ* = √(2/n)) peak at π/4, Gaussian data are flat at :func:`srm_baseline`. The ε used is
    ``result.epsilon``; to compare several models on one scale pass the same ``epsilon`` to each (for example
    :func:`srm_epsilon`, at which isotropic data fills the spotlight 10% of the time).

    Args:
        acts: (N, n) activations, any float dtype and device; rows are normalised (zero rows are dropped and counted).
        basis: ``None`` or ``"standard"`` (the standard basis), ``"random"`` (a Haar-random orthonormal frame, the
            rotated control) or a (K, n) tensor of directions (need not be orthogonal). Default: ``None``.
        epsilon: cone cosine ε in (−1, 1). Default: ``None`` (cos(π/8)·ρ* of the data, above).
        angles: number A of equally spaced angles in [0, 2π). Default: 100.
        planes: ``"comb"`` (unordered pairs i < j, K(K−1)/2 planes) or ``"perm"`` (ordered pairs, K(K−1)).
            Default: ``"comb"``.
        max_planes: keep a random subset of at most this many planes. Default: ``None`` (all).
        signed: count the negative cone with −1 as well (â·s ≤ −ε). Default: ``False``.
        generator: ``torch.Generator`` for ``basis="random"`` and plane subsampling, or ``None`` (torch's global
            RNG). Default: ``None``.
        nan_policy: ``"raise"`` on rows with NaN/inf, or ``"omit"`` to drop them (counted). Default: ``"raise"``.
        method: ``"arcs"`` (closed-form arcs, O(N·P)) or ``"dense"`` (every sample at every angle, O(N·P·A), the
            reference implementation). Default: ``"arcs"``.

    Shape:
        acts: (N, n) with n ≥ 2; result curves (P, A).

    Examples:
        >>> import torch
        >>> from isotorch.probes import srm
        >>> g = torch.Generator().manual_seed(0)
        >>> signs = torch.randn(800, 1, generator=g).sign()
        >>> axes = torch.eye(4)[torch.randint(0, 4, (800,), generator=g)] * signs   # activations on ±basis axes
        >>> r = srm(axes, epsilon=0.9, angles=8)                                   # θ_k = kπ/4
        >>> r.curves.shape, bool((r.mean[::2] > 0.1).all()), bool((r.mean[1::2] == 0).all())
        (torch.Size([6, 8]), True, True)
    """
    angles = check_int(angles, "angles")
    check_choice(method, "method", METHODS)
    setup = prepare(acts, basis, 0.0 if epsilon is None else epsilon, planes, max_planes, generator, nan_policy)
    rule = "given"
    if epsilon is None:
        setup = dataclasses.replace(setup, epsilon=resolution_epsilon(setup))
        rule = "cos(π/8)·ρ*"
    n, epsilon, n_samples, device = setup.n_features, setup.epsilon, setup.n_samples, setup.acts.device
    count_fn = _arc_plane_counts if method == "arcs" else _dense_plane_counts
    chunk = chunk_elements_for(device)

    def count_rows(r0: int, r1: int) -> torch.Tensor:
        coords = iter_plane_coordinates(
            setup.acts, setup.basis, setup.standard, setup.i, setup.j, setup.frames, rows=(r0, r1), chunk_elements=chunk
        )
        return count_fn(coords, setup.n_planes, angles, epsilon, bool(signed), device)

    counts = sum(parallel_rows(count_rows, n_samples, device))
    curves = counts.to(torch.float64) / n_samples
    b = srm_baseline(n, epsilon)
    band = 1.96 * math.sqrt(2.0 * b / n_samples) if signed else 1.96 * math.sqrt(b * (1.0 - b) / n_samples)
    return SRMResult(
        angles=angle_grid(angles, device),
        curves=curves,
        planes=setup.planes,
        mean=curves.mean(dim=0),
        std=curves.std(dim=0, correction=0),
        epsilon=epsilon,
        baseline=0.0 if signed else b,
        band=band,
        n_samples=n_samples,
        n_features=n,
        excluded_nonfinite=setup.excluded_nonfinite,
        excluded_zero=setup.excluded_zero,
        settings={
            "basis": setup.kind,
            "planes": planes,
            "n_planes": setup.n_planes,
            "max_planes": max_planes,
            "signed": bool(signed),
            "method": method,
            "angles": angles,
            "epsilon_rule": rule,
        },
    )
