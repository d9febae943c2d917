"""Scalar summaries of basis alignment and quantisation, for studies that compare many models.

**Alignment score** (how far the plane-averaged SRM curve m(θ) is from its reference level r):

    A = √( (1/K) Σ_k (m(θ_k) − r)² ) / r

with r = srm_baseline(n, ε) (``reference="isotropic"``: any departure from isotropic data counts) or r = mean_k m(θ_k)
(``reference="flat"``: only the angular modulation of the curve counts, not its level).
A = 0 for isotropic data; a curve with peaks reaching twice the baseline gives A of order 1. Finite samples give
A > 0 even for isotropic data: the result reports that noise floor, √((1/K) Σ_k Var m(θ_k))/r, estimated from the
per-sample spread. The 95% interval is a Poisson bootstrap over samples (weights w_s ~ Poisson(1)), computed from
per-sample curves in one pass.

**Quantisation score** (how concentrated activation angles are within each privileged plane): for samples with
in-plane norm ρ ≥ ε, histogram the angle φ = atan2(â·e₂, â·e₁) into B bins centred on multiples of 2π/B (so axes and
diagonals sit at bin centres), and take the entropy deficit

    Q_plane = 1 − H_MM / log B,    H_MM = −Σ_b π_b log π_b + (m − 1)/(2M)

(Miller–Madow bias correction; m occupied bins, M samples), averaged over planes. In a privileged plane the angle
of isotropic data is exactly uniform, so Q ≈ 0; samples on the axes give Q = 1 − log 4/log B (0.68 at B = 72);
a single cluster per plane gives Q ≈ 1. The interval is a bootstrap over planes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from isotorch.probes._planes import (
    block_sizes,
    chunk_elements_for,
    iter_planes,
    iter_row_blocks,
    parallel_rows,
    prepare,
    srm_baseline,
)
from isotorch.probes._srm import arc_indices, arc_width, fold_counts
from isotorch.probes._validation import as_generator, check_positive_int, check_probability

__all__ = ["ScoreResult", "alignment_score", "quantisation_score"]

REFERENCES = ("isotropic", "flat")


@dataclass(frozen=True)
class ScoreResult:
    """A scalar probe score with its bootstrap confidence interval.

    Attributes:
        name: ``"alignment"`` or ``"quantisation"``.
        value: the score.
        ci_low, ci_high: percentile bootstrap interval at ``confidence``.
        confidence: interval level (0.95 by default).
        n_bootstrap: bootstrap replicates.
        noise_floor: the value expected from sampling noise alone for isotropic data of this size (``None`` where
            the estimator is already bias-corrected).
        n_samples: rows used.
        n_planes: privileged planes used.
        formula: the formula, in words.
        settings: ε, basis kind, planes, reference, bins or angles.
    """

    name: str
    value: float
    ci_low: float
    ci_high: float
    confidence: float
    n_bootstrap: int
    noise_floor: float | None
    n_samples: int
    n_planes: int
    formula: str
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)

    def __repr__(self) -> str:
        floor = "" if self.noise_floor is None else f", noise_floor={self.noise_floor:.3g}"
        return (
            f"ScoreResult({self.name}={self.value:.4g}, {100 * self.confidence:g}% CI [{self.ci_low:.4g}, "
            f"{self.ci_high:.4g}]{floor}, n_samples={self.n_samples})"
        )


def _check_bootstrap(n_bootstrap: object, confidence: object) -> tuple[int, float]:
    return check_positive_int(n_bootstrap, "n_bootstrap", minimum=2), check_probability(confidence, "confidence")


def _interval(replicates: torch.Tensor, confidence: float) -> tuple[float, float]:
    finite = replicates[torch.isfinite(replicates)]
    if finite.numel() == 0:
        return float("nan"), float("nan")
    q = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(finite.to(torch.float64), q).tolist()
    return lo, hi


def alignment_score(
    acts: torch.Tensor,
    basis: torch.Tensor | str | None = None,
    *,
    epsilon: float | None = None,
    angles: int = 100,
    planes: str = "comb",
    max_planes: int | None = None,
    reference: str = "isotropic",
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    generator: torch.Generator | int | None = None,
    nan_policy: str = "raise",
) -> ScoreResult:
    """Basis-alignment score: relative RMS distance of the mean SRM curve from its reference level.

    A = √(mean_k (m(θ_k) − r)²)/r, with m the plane-averaged SRM curve and r the isotropic baseline
    (``reference="isotropic"``) or the curve's own mean (``reference="flat"``); see the module docstring. Reported
    with a Poisson-bootstrap interval over samples and the noise floor expected for isotropic data of this size.

    Args:
        acts: (N, n) activations, N ≥ 2.
        basis: as in :func:`srm`. Default: ``None`` (standard basis).
        epsilon: cone cosine; default as in :func:`srm`.
        angles: number of spotlight angles. Default: 100.
        planes: ``"comb"`` or ``"perm"``. Default: ``"comb"``.
        max_planes: random subset of planes. Default: ``None``.
        reference: ``"isotropic"`` or ``"flat"``. Default: ``"isotropic"``.
        n_bootstrap: bootstrap replicates. Default: 200.
        confidence: interval level. Default: 0.95.
        generator: generator or seed for the basis, plane subset and bootstrap. Default: ``None`` (global RNG).
        nan_policy: ``"raise"`` or ``"omit"``. Default: ``"raise"``.

    Examples:
        >>> import torch
        >>> from isotorch.probes import alignment_score
        >>> g = torch.Generator().manual_seed(0)
        >>> iso = alignment_score(torch.randn(4000, 8, generator=g), generator=0)
        >>> axes = alignment_score(torch.eye(8)[torch.randint(0, 8, (4000,), generator=g)], generator=0)
        >>> iso.value < 3 * iso.noise_floor, axes.value > 0.5
        (True, True)
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    angles = check_positive_int(angles, "angles")
    n_bootstrap, confidence = _check_bootstrap(n_bootstrap, confidence)
    gen = as_generator(generator)
    setup = prepare(acts, basis, epsilon, planes, max_planes, gen, nan_policy, min_rows=2)
    device = setup.acts.device
    eps, n_planes = setup.epsilon, setup.n_planes
    width = arc_width(angles)
    base_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    row_chunk, plane_chunk = block_sizes(n_planes, chunk_elements_for(device))

    def partial(r0: int, r1: int):
        boot = torch.zeros(n_bootstrap, angles, dtype=torch.float64, device=device)
        weight = torch.zeros(n_bootstrap, dtype=torch.float64, device=device)
        total = torch.zeros(angles, dtype=torch.float64, device=device)
        total2 = torch.zeros(angles, dtype=torch.float64, device=device)
        for start, coords in iter_row_blocks(setup.acts, setup.basis, setup.standard, (r0, r1), row_chunk):
            rows = coords.shape[1]
            diff = torch.zeros(rows * width, dtype=torch.long, device=device)
            base = torch.arange(rows, device=device, dtype=torch.float64).mul_(width).add_(2 * angles)[None, :]
            for _, _, p, q in iter_planes(coords, setup.i, setup.j, setup.frames, plane_chunk):
                lo, hi = arc_indices(p, q, eps, angles, base)
                ones = torch.ones(lo.numel(), dtype=torch.long, device=device)
                diff.scatter_add_(0, lo.view(-1), ones)
                diff.scatter_add_(0, hi.view(-1), -ones)
            per_sample = fold_counts(diff.view(rows, width), angles).to(torch.float64)  # planes covering θ_k
            total += per_sample.sum(0)
            total2 += (per_sample * per_sample).sum(0)
            block_gen = torch.Generator().manual_seed(base_seed + start)
            w = torch.poisson(torch.ones(n_bootstrap, rows, dtype=torch.float64), generator=block_gen).to(device)
            boot += w @ per_sample
            weight += w.sum(1)
        return boot, weight, total, total2

    parts = parallel_rows(partial, setup.n_samples, device)
    boot, weight, total, total2 = (sum(p[k] for p in parts) for k in range(4))
    n = setup.n_samples
    mean_curve = total / (n * n_planes)
    baseline = srm_baseline(setup.n_features, eps)

    def score(curve: torch.Tensor) -> torch.Tensor:
        level = curve.mean(dim=-1, keepdim=True) if reference == "flat" else torch.full_like(curve[..., :1], baseline)
        return ((curve - level) ** 2).mean(dim=-1).sqrt() / level.squeeze(-1)

    value = float(score(mean_curve))
    replicates = score(boot / (weight[:, None].clamp(min=1.0) * n_planes))
    lo, hi = _interval(replicates, confidence)
    level = float(mean_curve.mean()) if reference == "flat" else baseline
    variance = (total2 / n - (total / n) ** 2).clamp(min=0.0) / (n_planes**2 * n)
    floor = float(variance.mean().sqrt()) / level if level > 0 else float("nan")
    return ScoreResult(
        name="alignment",
        value=value,
        ci_low=lo,
        ci_high=hi,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        noise_floor=floor,
        n_samples=n,
        n_planes=n_planes,
        formula="sqrt(mean_k (m(θ_k) − r)²) / r, m = plane-averaged SRM curve, "
        + ("r = isotropic baseline" if reference == "isotropic" else "r = mean_k m(θ_k)"),
        settings={
            "epsilon": eps,
            "basis": setup.kind,
            "planes": planes,
            "max_planes": max_planes,
            "angles": angles,
            "reference": reference,
            "baseline": baseline,
            "excluded_nonfinite": setup.excluded_nonfinite,
            "excluded_zero": setup.excluded_zero,
        },
    )


def quantisation_score(
    acts: torch.Tensor,
    basis: torch.Tensor | str | None = None,
    *,
    epsilon: float | None = None,
    bins: int = 72,
    planes: str = "comb",
    max_planes: int | None = None,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    generator: torch.Generator | int | None = None,
    nan_policy: str = "raise",
) -> ScoreResult:
    """Quantisation score: mean over privileged planes of the angular entropy deficit 1 − H_MM/log B.

    Angles φ = atan2(â·e₂, â·e₁) of samples with in-plane norm ρ ≥ ε are binned into B bins centred on multiples
    of 2π/B; H_MM is the Miller–Madow-corrected entropy (module docstring). Isotropic data gives ≈ 0, data on the
    axes 1 − log 4/log B, a single direction per plane ≈ 1. Planes without any sample near them are skipped (their
    count is in ``settings["empty_planes"]``). The interval is a bootstrap over planes.

    Args:
        acts: (N, n) activations.
        basis: as in :func:`srm`. Default: ``None`` (standard basis).
        epsilon: minimum in-plane norm ρ of a counted sample; default as in :func:`srm`.
        bins: angular bins B. Default: 72 (5°).
        planes: ``"comb"`` or ``"perm"``. Default: ``"comb"``.
        max_planes: random subset of planes. Default: ``None``.
        n_bootstrap: bootstrap replicates. Default: 200.
        confidence: interval level. Default: 0.95.
        generator: generator or seed for the basis, plane subset and bootstrap. Default: ``None``.
        nan_policy: ``"raise"`` or ``"omit"``. Default: ``"raise"``.

    Examples:
        >>> import torch
        >>> from isotorch.probes import quantisation_score
        >>> g = torch.Generator().manual_seed(0)
        >>> abs(quantisation_score(torch.randn(5000, 6, generator=g), generator=0).value) < 0.01
        True
        >>> axes = torch.eye(6)[torch.randint(0, 6, (5000,), generator=g)]
        >>> round(quantisation_score(axes, generator=0).value, 2)   # 1 − log 2 / log 72: two bins per plane
        0.84
    """
    bins = check_positive_int(bins, "bins", minimum=2)
    n_bootstrap, confidence = _check_bootstrap(n_bootstrap, confidence)
    gen = as_generator(generator)
    setup = prepare(acts, basis, epsilon, planes, max_planes, gen, nan_policy)
    device = setup.acts.device
    eps2 = setup.epsilon**2 if setup.epsilon > 0 else 0.0
    n_planes = setup.n_planes
    row_chunk, plane_chunk = block_sizes(n_planes, chunk_elements_for(device))
    scale = bins / (2.0 * math.pi)

    def partial(r0: int, r1: int) -> torch.Tensor:
        hist = torch.zeros(n_planes * bins, dtype=torch.long, device=device)
        for _, coords in iter_row_blocks(setup.acts, setup.basis, setup.standard, (r0, r1), row_chunk):
            for p0, p1, p, q in iter_planes(coords, setup.i, setup.j, setup.frames, plane_chunk):
                r2 = p * p + q * q
                keep = (r2 >= eps2) & (r2 > 0)
                index = torch.remainder(torch.floor(torch.atan2(q, p).mul_(scale).add_(0.5)), float(bins)).long()
                index += torch.arange(p0, p1, device=device)[:, None] * bins
                hist.scatter_add_(0, index.view(-1), keep.view(-1).long())
        return hist

    hist = sum(parallel_rows(partial, setup.n_samples, device)).view(n_planes, bins).to(torch.float64)
    counts = hist.sum(1)
    used = counts > 0
    if not bool(used.any()):
        raise ValueError(f"no sample has an in-plane norm >= epsilon={setup.epsilon:.4g} in any plane; lower epsilon")
    h, m_total = hist[used], counts[used]
    prob = h / m_total[:, None]
    entropy = -(prob * torch.log(torch.where(prob > 0, prob, 1.0))).sum(1)
    occupied = (h > 0).sum(1).to(torch.float64)
    entropy = entropy + (occupied - 1.0) / (2.0 * m_total)
    deficit = 1.0 - entropy / math.log(bins)
    value = float(deficit.mean())
    picks = torch.randint(0, deficit.numel(), (n_bootstrap, deficit.numel()), generator=gen).to(device)
    lo, hi = _interval(deficit[picks].mean(dim=1), confidence)
    return ScoreResult(
        name="quantisation",
        value=value,
        ci_low=lo,
        ci_high=hi,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        noise_floor=None,
        n_samples=setup.n_samples,
        n_planes=int(used.sum()),
        formula="mean over planes of 1 − H_MM(angle histogram)/log B, samples with in-plane norm ≥ ε",
        settings={
            "epsilon": setup.epsilon,
            "basis": setup.kind,
            "planes": planes,
            "max_planes": max_planes,
            "bins": bins,
            "empty_planes": int((~used).sum()),
            "excluded_nonfinite": setup.excluded_nonfinite,
            "excluded_zero": setup.excluded_zero,
        },
    )
