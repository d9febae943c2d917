"""Scalar summaries of basis alignment and quantisation, with a null, an interval over samples and a Haar control.

Both scores work on **centred** activations y = a − ā expressed in the privileged set (y_k = b̂_k·y), plane by plane:
on the plane (i, j) with Gram–Schmidt frame (e₁, e₂) (see ``_planes``), p = y·e₁, q = y·e₂, z = p + iq = r e^{iφ}.

**Alignment** (ε-free, signed; REFERENCE §9): the four-fold moment of every plane, pooled over planes,

    A = Σ_planes E[r⁴ cos 4φ] / Σ_planes E[r⁴] = Σ_planes E[p⁴ − 6p²q² + q⁴] / Σ_planes E[(p² + q²)²]  ∈ [−1, 1].

A = +1 for mass on the basis axes (one-hot codes), −1 for mass on the plane diagonals (hypercube corners: saturated
elementwise tanh), 0 for any rotation-invariant law; the mean never enters. Its sign reads like the SRM curve (peaks at
kπ/2: +, at π/4 + kπ/2: −). A = A₂ + A₄ splits into

- the **second-moment** part A₂: the same ratio for a Gaussian with the data's covariance C (in-plane entries a, b, c),
  Σ 3[(a − b)² − 4c²] / Σ E[r⁴]: positive for a covariance whose axes are the basis (axis-aligned variances), and
- the **higher-order** part A₄ = A − A₂ (fourth cumulants: lobes, quantised codes), 0 for every Gaussian.

For every distribution the Haar average of A over random bases is 0 (the four-fold component of an isotropised
fourth-moment tensor vanishes), and so are those of A₂ and A₄.

**Quantisation**: how concentrated the in-plane angles are, beyond a Gaussian with the same mean and covariance. With
the r²-weighted angular harmonics c_k = E[r² e^{ikφ}] / E[r²] (r² weights remove the points near the origin of a plane,
whose angle is noise, so no ε is needed),

    Q = mean_planes (1/L) Σ_{k=1..L} (|c_k|² − |c_k^G|²),

|c_k|² estimated without bias by the U-statistic (|Σ w e^{ikφ}|² − Σ w²)/((Σ w)² − Σ w²), w = r², and c_k^G the
harmonics of the Gaussian with the plane's covariance (eigenvalues λ₁ ≥ λ₂): zero for odd k and, for k = 2m,
|c_k^G| = ρ^m (1 + m·√(λ₁λ₂)/((λ₁ + λ₂)/2)), ρ = (√λ₁ − √λ₂)/(√λ₁ + √λ₂) (closed form, derived from the Fourier series
of (A + B cos 2φ)⁻²). Q = 0 for any Gaussian whatever its covariance (a line of points through the mean included: it
is a degenerate Gaussian) and ⌊L/m⌋/L for m ≥ 3 equal, equally spaced clusters around the mean in every plane (1/4
for one-hot codes, 5/16 for three clusters at 120°, at L = 16).

**Intervals**: bootstrap over samples (``_bootstrap``): studentised (bootstrap-t with delta-method standard errors of
the ratios) for alignment, BCa for quantisation; alignment uses per-sample terms with the first-order
effect of estimating the mean added (influence functions), so skewed data are covered too. **Null**: the same
statistic in ``n_null`` Haar-random rotations of the privileged set; ``excess`` = value − null mean and ``p_value``
is the Monte-Carlo p-value (two-sided |A| for alignment, one-sided for quantisation).

**Guards**: fewer than ``MIN_SAMPLES`` usable rows, data without variance in the planes, or planes whose r² weight
sits on fewer than ``MIN_SAMPLES`` effective samples give ``nan`` with a ``reason``, never a confident number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from isotorch import groups as _groups
from isotorch._util import check_generator, check_int, check_matrix, check_probability, finite_rows, json_safe
from isotorch.probes._bootstrap import ResampleStream, bca_bounds, jackknife_means
from isotorch.probes._planes import plane_frames, plane_pairs, resolve_basis

__all__ = ["ScoreResult", "alignment_score", "quantisation_score"]

MIN_SAMPLES = 10
# elements of one (rows × plane-chunk features) working array
_PLANE_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class ScoreResult:
    """A scalar probe score with its bootstrap interval over samples and its Haar-random-basis null.

    Attributes:
        name: ``"alignment"`` or ``"quantisation"``.
        value: the score (``nan`` when it cannot be computed; then ``reason`` says why).
        ci_low, ci_high: bootstrap interval over samples at ``confidence`` (studentised for alignment, BCa for
            quantisation).
        confidence: interval level (0.95 by default).
        n_bootstrap: bootstrap replicates.
        null_mean, null_sd: mean and standard deviation of the score in ``n_null`` Haar-random rotations of the
            privileged set (the null for "this basis is privileged").
        p_value: Monte-Carlo p-value (1 + #{null as extreme})/(1 + n_null); ``None`` without a null.
        excess: value − null_mean.
        n_null: random bases drawn.
        components: named parts of the score, each ``{"value", "ci_low", "ci_high", "null_mean", "null_sd"}``
            (alignment: ``second_moment`` and ``higher_order``, which add up to ``value``).
        n_samples: rows used.
        n_planes: privileged planes used.
        formula: the formula, in words.
        reason: why ``value`` is ``nan`` (``None`` otherwise).
        settings: basis kind, planes, harmonics, excluded rows.
    """

    name: str
    value: float
    ci_low: float
    ci_high: float
    confidence: float
    n_bootstrap: int
    null_mean: float | None
    null_sd: float | None
    p_value: float | None
    excess: float | None
    n_null: int
    components: dict[str, dict[str, float | None]]
    n_samples: int
    n_planes: int
    formula: str
    reason: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON dictionary (NaN and ±inf become ``None``)."""
        return json_safe(
            {
                "name": self.name,
                "value": self.value,
                "ci_low": self.ci_low,
                "ci_high": self.ci_high,
                "confidence": self.confidence,
                "n_bootstrap": self.n_bootstrap,
                "null_mean": self.null_mean,
                "null_sd": self.null_sd,
                "p_value": self.p_value,
                "excess": self.excess,
                "n_null": self.n_null,
                "components": self.components,
                "n_samples": self.n_samples,
                "n_planes": self.n_planes,
                "formula": self.formula,
                "reason": self.reason,
                "settings": self.settings,
            }
        )

    def __repr__(self) -> str:
        if self.reason is not None:
            return f"ScoreResult({self.name}=nan, reason={self.reason!r})"
        null = "" if self.p_value is None else f", null {self.null_mean:.3g}±{self.null_sd:.3g}, p={self.p_value:.3g}"
        return (
            f"ScoreResult({self.name}={self.value:.4g}, {100 * self.confidence:g}% CI [{self.ci_low:.4g}, "
            f"{self.ci_high:.4g}]{null}, n_samples={self.n_samples})"
        )


# --- shared preparation ---------------------------------------------------------------------------------------------


@dataclass
class _Setup:
    y: torch.Tensor  # (N, K) centred coordinates on the privileged directions, float64
    basis: torch.Tensor  # (K, n) unit rows
    centred: torch.Tensor  # (N, n) centred activations, float64
    kind: str
    i: torch.Tensor
    j: torch.Tensor
    frames: tuple[torch.Tensor, torch.Tensor] | None
    all_pairs: bool
    excluded_nonfinite: int

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def n_planes(self) -> int:
        return self.i.shape[0]


def _prepare(acts, basis, planes, max_planes, gen, nan_policy) -> _Setup:
    acts = check_matrix(acts, "acts", min_cols=2)
    device = acts.device
    basis_hat, kind = resolve_basis(basis, acts.shape[1], gen, device)
    i, j = plane_pairs(basis_hat.shape[0], planes, max_planes, gen, device)
    frames = plane_frames(basis_hat, i, j)
    kept, n_bad = finite_rows(acts.detach(), "acts", nan_policy)
    x = kept.to(torch.float64)
    centred = x - x.mean(0, keepdim=True) if x.shape[0] else x
    y = centred if kind == "standard" else centred @ basis_hat.T
    k = basis_hat.shape[0]
    full = k * (k - 1) // 2 if planes == "comb" else k * (k - 1)
    return _Setup(y, basis_hat, centred, kind, i, j, frames, i.shape[0] == full, n_bad)


def _plane_chunks(setup: _Setup, y: torch.Tensor, per_plane: int):
    """Yield (p, q) (N, P_chunk) in-plane coordinates of the centred rows, a block of planes at a time."""
    chunk = max(1, _PLANE_ELEMENTS // max(y.shape[0] * per_plane, 1))
    for p0 in range(0, setup.n_planes, chunk):
        i, j = setup.i[p0 : p0 + chunk], setup.j[p0 : p0 + chunk]
        p, q = y[:, i], y[:, j]
        if setup.frames is not None:
            c, s = setup.frames[0][p0 : p0 + chunk], setup.frames[1][p0 : p0 + chunk]
            q = (q - c * p) / s
        yield p, q


def _null_bases(setup: _Setup, n_null: int, gen) -> list[torch.Tensor]:
    """Coordinates of the centred rows in ``n_null`` Haar-random rotations of the privileged set."""
    n = setup.centred.shape[1]
    group = _groups.get("orthogonal")
    out = []
    for _ in range(n_null):
        g = group.sample(n, generator=gen, dtype=torch.float64).to(setup.centred.device)
        out.append(setup.centred @ (setup.basis @ g.T).T)
    return out


def _null_summary(value: float, null: torch.Tensor, two_sided: bool) -> tuple[float, float, float]:
    if null.numel() == 0 or not math.isfinite(value):
        return float("nan"), float("nan"), float("nan")
    extreme = (null.abs() >= abs(value)) if two_sided else (null >= value)
    p = (1.0 + float(extreme.sum())) / (1.0 + null.numel())
    return float(null.mean()), float(null.std()) if null.numel() > 1 else 0.0, p


def _nan_result(name, reason, setup_n, n_planes, n_bootstrap, confidence, n_null, formula, settings, parts=()):
    nan = float("nan")
    comps = {p: {"value": nan, "ci_low": nan, "ci_high": nan, "null_mean": None, "null_sd": None} for p in parts}
    return ScoreResult(
        name=name,
        value=nan,
        ci_low=nan,
        ci_high=nan,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        null_mean=None,
        null_sd=None,
        p_value=None,
        excess=None,
        n_null=n_null,
        components=comps,
        n_samples=setup_n,
        n_planes=n_planes,
        formula=formula,
        reason=reason,
        settings=settings,
    )


def _check_common(n_bootstrap, n_null, confidence) -> tuple[int, int, float]:
    n_bootstrap = check_int(n_bootstrap, "n_bootstrap", minimum=2)
    n_null = check_int(n_null, "n_null", minimum=0)
    return n_bootstrap, n_null, check_probability(confidence, "confidence")


# --- alignment ------------------------------------------------------------------------------------------------------


def _alignment_terms(setup: _Setup, y: torch.Tensor, influence: bool) -> torch.Tensor:
    """(N, 3) per-sample terms [t, s, d]: four-fold moment, its Gaussian (second-moment) part, E r⁴; pooled over planes.

    Their column means give Σ_planes E[p⁴ − 6p²q² + q⁴], Σ_planes 3[(a − b)² − 4c²] and Σ_planes E[r⁴]. With
    ``influence`` the first-order effects of the estimated mean (t, d) and covariance (s) are folded in, so that a
    bootstrap of the means has the variance of the statistic.
    """
    n, k = y.shape
    if setup.frames is None and setup.all_pairs:  # orthonormal set, every pair: closed forms, O(N·K)
        y2 = y * y
        u, sq = (y2 * y2).sum(1), y2.sum(1)
        t = (k + 2) * u - 3 * sq * sq
        d = (k - 2) * u + sq * sq
        cov = y.T @ y / n
        diag = torch.diagonal(cov)
        s_total = 3 * ((k + 2) * (diag * diag).sum() - diag.sum() ** 2 - 2 * (cov * cov).sum())
        s = torch.full_like(t, float(s_total))
        if influence:
            y3 = y2 * y
            t = t - y @ (4 * (k + 2) * y3 - 12 * sq[:, None] * y).mean(0)
            d = d - y @ (4 * (k - 2) * y3 + 4 * sq[:, None] * y).mean(0)
            g = 3 * (2 * (k + 2) * torch.diag(diag) - 2 * diag.sum() * torch.eye(k, dtype=y.dtype) - 4 * cov)
            s = ((y @ g) * y).sum(1) - s_total
        return torch.stack([t, s, d], dim=1)
    t = torch.zeros(n, dtype=torch.float64, device=y.device)
    s, d = torch.zeros_like(t), torch.zeros_like(t)
    for p, q in _plane_chunks(setup, y, 8):
        p2, q2, pq = p * p, q * q, p * q
        r2 = p2 + q2
        t += (p2 * p2 - 6 * p2 * q2 + q2 * q2).sum(1)
        d += (r2 * r2).sum(1)
        a, b, c = p2.mean(0), q2.mean(0), pq.mean(0)
        s_plane = 3 * ((a - b) ** 2 - 4 * c * c)
        if influence:
            t -= p @ (4 * p2 * p - 12 * p * q2).mean(0) + q @ (4 * q2 * q - 12 * p2 * q).mean(0)
            d -= p @ (4 * p * r2).mean(0) + q @ (4 * q * r2).mean(0)
            s += (3 * (2 * (a - b) * (p2 - q2) - 8 * c * pq)).sum(1) - s_plane.sum()
        else:
            s += s_plane.sum()
    return torch.stack([t, s, d], dim=1)


def _alignment_stat(means: torch.Tensor, _n: int) -> torch.Tensor:
    t, s, d = means[:, 0], means[:, 1], means[:, 2]
    d = torch.where(d > 0, d, float("nan"))
    return torch.stack([t / d, s / d, (t - s) / d], dim=1)


def _ratio_moments(terms: torch.Tensor) -> torch.Tensor:
    """(N, 9) per-sample t, s, d and their products t², s², ts, td, sd, d², whose means give the ratios and their
    delta-method standard errors."""
    t, s, d = terms[:, 0], terms[:, 1], terms[:, 2]
    return torch.stack([t, s, d, t * t, s * s, t * s, t * d, s * d, d * d], dim=1)


def _ratios_and_errors(means: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, 3) ratios t/d, s/d, (t − s)/d and their delta-method standard errors √(Var(a − R d)/n)/E d."""
    t, s, d, tt, ss, ts, td, sd, dd = means.unbind(1)
    h, hh, hd = t - s, tt - 2 * ts + ss, td - sd
    d_safe = torch.where(d > 0, d, float("nan"))
    values, errors = [], []
    for a, aa, ad in ((t, tt, td), (s, ss, sd), (h, hh, hd)):
        r = a / d_safe
        var = (aa - 2 * r * ad + r * r * dd) - (a - r * d) ** 2
        values.append(r)
        errors.append(torch.sqrt(var.clamp(min=0.0) / n) / d_safe)
    return torch.stack(values, dim=1), torch.stack(errors, dim=1)


def _studentised_bounds(terms: torch.Tensor, stream: ResampleStream, confidence: float):
    """Bootstrap-t interval of each ratio: R̂ − q*_{1−α/2}·SE, R̂ − q*_{α/2}·SE, with q* the quantiles of the
    studentised replicates (R* − R̂)/SE*. Fourth-moment ratios have heavy-tailed per-sample terms; studentising
    keeps the coverage near nominal at a few hundred rows, where the BCa interval under-covered (≈ 0.9)."""
    n = terms.shape[0]
    feats = _ratio_moments(terms)
    value, error = _ratios_and_errors(feats.mean(0, keepdim=True), n)
    rep_value, rep_error = _ratios_and_errors(stream.means(feats), n)
    studentised = (rep_value - value) / torch.where(rep_error > 0, rep_error, float("nan"))
    alpha = (1.0 - confidence) / 2.0
    low = torch.full((3,), float("nan"), dtype=torch.float64)
    high = low.clone()
    for c in range(3):
        z = studentised[:, c]
        z = z[torch.isfinite(z)]
        if not bool(torch.isfinite(value[0, c])) or z.numel() < 2:
            continue
        if float(error[0, c]) == 0.0:
            low[c] = high[c] = value[0, c]
            continue
        q = torch.quantile(z, torch.tensor([alpha, 1.0 - alpha], dtype=z.dtype, device=z.device))
        low[c] = value[0, c] - q[1] * error[0, c]
        high[c] = value[0, c] - q[0] * error[0, c]
    return low, high


ALIGNMENT_FORMULA = (
    "Σ_planes E[p⁴ − 6p²q² + q⁴] / Σ_planes E[(p² + q²)²] on centred data (+1 axes, −1 diagonals, 0 isotropic); "
    "second_moment = Gaussian with the same covariance, higher_order = the rest"
)


def alignment_score(
    acts: torch.Tensor,
    basis: torch.Tensor | str | None = None,
    *,
    planes: str = "comb",
    max_planes: int | None = None,
    n_bootstrap: int = 1000,
    n_null: int = 99,
    confidence: float = 0.95,
    generator: torch.Generator | None = None,
    nan_policy: str = "raise",
) -> ScoreResult:
    """Signed, ε-free basis alignment: the pooled four-fold moment E[r⁴ cos 4φ]/E[r⁴] of the basis planes.

    A = Σ_planes E[p⁴ − 6p²q² + q⁴] / Σ_planes E[(p² + q²)²] on centred data (module docstring): +1 for mass on the
    basis axes, −1 for mass on the diagonals (saturated elementwise tanh), 0 for any rotation-invariant law, and
    independent of the mean. ``components`` splits it into ``second_moment`` (a Gaussian with the data's covariance:
    axis-aligned variances) and ``higher_order`` (lobes, quantised codes; 0 for every Gaussian). The interval is a
    studentised bootstrap over samples; ``null_mean``, ``null_sd`` and ``p_value`` come from the same statistic in
    ``n_null`` Haar-random rotations of the privileged set.

    Args:
        acts: (N, n) activations, N ≥ 10 usable rows (fewer give ``nan`` with a ``reason``).
        basis: ``None``/``"standard"``, ``"random"`` (one Haar-random frame) or a (K, n) tensor of directions.
            Default: ``None``.
        planes: ``"comb"`` (i < j) or ``"perm"`` (i ≠ j; the same value). Default: ``"comb"``.
        max_planes: random subset of planes. Default: ``None`` (all).
        n_bootstrap: bootstrap replicates. Default: 1000.
        n_null: Haar-random bases of the null (0: none). Default: 99.
        confidence: interval level. Default: 0.95.
        generator: ``torch.Generator`` for the basis, plane subset, bootstrap and null, or ``None`` (torch's global
            RNG). Default: ``None``.
        nan_policy: ``"raise"`` or ``"omit"`` (rows with NaN/inf dropped and counted). Default: ``"raise"``.

    Examples:
        >>> import torch
        >>> from isotorch.probes import alignment_score
        >>> g = torch.Generator().manual_seed(0)
        >>> iso = alignment_score(torch.randn(4000, 8, generator=g), generator=torch.Generator().manual_seed(0))
        >>> signs = torch.randn(4000, 1, generator=g).sign()
        >>> planted = torch.eye(8)[torch.randint(0, 8, (4000,), generator=g)] * signs
        >>> axes = alignment_score(planted, generator=torch.Generator().manual_seed(0))
        >>> abs(iso.value) < 0.05, round(axes.value, 2), axes.p_value < 0.05
        (True, 1.0, True)
    """
    n_bootstrap, n_null, confidence = _check_common(n_bootstrap, n_null, confidence)
    gen = check_generator(generator)
    setup = _prepare(acts, basis, planes, max_planes, gen, nan_policy)
    settings = {
        "basis": setup.kind,
        "planes": planes,
        "max_planes": max_planes,
        "excluded_nonfinite": setup.excluded_nonfinite,
    }
    parts = ("second_moment", "higher_order")
    nan_args = (setup.n, setup.n_planes, n_bootstrap, confidence, n_null, ALIGNMENT_FORMULA, settings, parts)
    if setup.n < MIN_SAMPLES:
        reason = f"only {setup.n} usable row(s); the alignment score needs at least {MIN_SAMPLES}"
        return _nan_result("alignment", reason, *nan_args)
    terms = _alignment_terms(setup, setup.y, influence=True)
    estimate = _alignment_stat(terms.mean(0, keepdim=True), setup.n)[0]
    if not bool(torch.isfinite(estimate).all()):
        reason = "the centred activations have no variance in the privileged planes (constant features)"
        return _nan_result("alignment", reason, *nan_args)
    stream = ResampleStream(setup.n, n_bootstrap, gen, terms.device)
    low, high = _studentised_bounds(terms, stream, confidence)

    nulls = (
        torch.stack(
            [
                _alignment_stat(_alignment_terms(setup, y, influence=False).mean(0, keepdim=True), setup.n)[0]
                for y in _null_bases(setup, n_null, gen)
            ]
        ).cpu()
        if n_null
        else torch.zeros(0, 3, dtype=torch.float64)
    )
    value = float(estimate[0])
    null_mean, null_sd, p = _null_summary(value, nulls[:, 0], two_sided=True)
    components = {}
    for c, part in enumerate(parts, start=1):
        m, sd, _ = _null_summary(float(estimate[c]), nulls[:, c], two_sided=True)
        components[part] = {
            "value": float(estimate[c]),
            "ci_low": float(low[c]),
            "ci_high": float(high[c]),
            "null_mean": m if n_null else None,
            "null_sd": sd if n_null else None,
        }
    return ScoreResult(
        name="alignment",
        value=value,
        ci_low=float(low[0]),
        ci_high=float(high[0]),
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        null_mean=null_mean if n_null else None,
        null_sd=null_sd if n_null else None,
        p_value=p if n_null else None,
        excess=value - null_mean if n_null else None,
        n_null=n_null,
        components=components,
        n_samples=setup.n,
        n_planes=setup.n_planes,
        formula=ALIGNMENT_FORMULA,
        settings=settings,
    )


# --- quantisation ---------------------------------------------------------------------------------------------------


def _quant_features(p: torch.Tensor, q: torch.Tensor, harmonics: int) -> torch.Tensor:
    """(N, P, 2 + 2L) per-sample features of each plane: w = r², w², Re and Im of w e^{ikφ} (k = 1..L).

    The in-plane covariance follows from k = 2 (w e^{2iφ} = z²): E p² = (E w + E Re z²)/2, E q² = (E w − E Re z²)/2,
    E pq = E Im z²/2.
    """
    w = p * p + q * q
    r = torch.sqrt(w)
    safe = torch.where(r > 0, r, 1.0)
    c1, s1 = torch.where(r > 0, p / safe, 0.0), q / safe  # cos φ, sin φ (0 at the origin, where w = 0 anyway)
    out = torch.empty(*w.shape, 2 + 2 * harmonics, dtype=w.dtype, device=w.device)
    out[..., 0], out[..., 1] = w, w * w
    c, s = c1, s1
    for k in range(harmonics):  # cos/sin of (k + 1)φ by the angle-addition recurrence
        out[..., 2 + k] = w * c
        out[..., 2 + harmonics + k] = w * s
        c, s = c * c1 - s * s1, s * c1 + c * s1
    return out


def _gaussian_harmonics(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, harmonics: int) -> torch.Tensor:
    """|c_k^G|² (…, L) of the r²-weighted angle of a centred Gaussian with in-plane covariance [[a, c], [c, b]]."""
    mean = (a + b) / 2
    gap = torch.sqrt(((a - b) / 2) ** 2 + c * c)
    l1, l2 = mean + gap, (mean - gap).clamp(min=0.0)
    s1, s2 = torch.sqrt(l1), torch.sqrt(l2)
    rho = (s1 - s2) / (s1 + s2)
    geo = s1 * s2 / mean
    k = torch.arange(1, harmonics + 1, dtype=a.dtype, device=a.device)
    m = k / 2
    even = (k % 2) == 0
    value = rho[..., None] ** m * (1 + m * geo[..., None])
    return torch.where(even, value * value, 0.0)


def _quant_plane_stat(means: torch.Tensor, n: int, harmonics: int, *, unbiased: bool = True) -> torch.Tensor:
    """(R, P) per-plane Q from (R, P, 2 + 2L) feature means of samples of size n (U- or plug-in V-statistic)."""
    w, w2 = means[..., 0], means[..., 1]
    re, im = means[..., 2 : 2 + harmonics], means[..., 2 + harmonics :]
    power = re * re + im * im
    diag = w2 / n if unbiased else torch.zeros_like(w2)
    num = power - diag[..., None]
    den = (w * w - diag)[..., None]
    est = num / torch.where(den > 0, den, float("nan"))
    a, b, c = (w + re[..., 1]) / 2, (w - re[..., 1]) / 2, im[..., 1] / 2
    return (est - _gaussian_harmonics(a, b, c, harmonics)).mean(-1)


QUANT_FORMULA = (
    "mean over planes and k = 1..L of |E[r² e^{ikφ}]/E[r²]|² (unbiased) minus the same for a Gaussian with the "
    "data's in-plane covariance, on centred data"
)


def quantisation_score(
    acts: torch.Tensor,
    basis: torch.Tensor | str | None = None,
    *,
    harmonics: int = 16,
    planes: str = "comb",
    max_planes: int | None = None,
    n_bootstrap: int = 1000,
    n_null: int = 19,
    confidence: float = 0.95,
    generator: torch.Generator | None = None,
    nan_policy: str = "raise",
) -> ScoreResult:
    """Quantisation: angular concentration in the basis planes beyond a Gaussian with the same mean and covariance.

    Q = mean over planes of (1/L) Σ_{k≤L} (|c_k|² − |c_k^G|²) with c_k = E[r² e^{ikφ}]/E[r²] on centred data and
    c_k^G its closed form for the Gaussian with the plane's covariance (module docstring). Q = 0 for any Gaussian
    (mean offset and anisotropy included), ⌊L/m⌋/L for m ≥ 3 equal, equally spaced clusters per plane (0.25 for
    one-hot codes at L = 16). Discrete codes in a rotated frame still score in the standard
    basis (their projections are discrete); ``excess`` and ``p_value`` against ``n_null`` Haar-random rotations of
    the privileged set say whether the quantisation is tied to this basis. The interval is a BCa bootstrap over
    samples. Planes whose r² weight rests on fewer than 10 effective samples ((Σw)²/Σw²) are skipped
    (``settings["thin_planes"]``); if none is left, or the data have fewer than 10 rows or no variance, the value
    is ``nan`` with a ``reason``.

    Args:
        acts: (N, n) activations.
        basis: as in :func:`alignment_score`. Default: ``None`` (standard basis).
        harmonics: L, the angular resolution (2π/L). Default: 16.
        planes: ``"comb"`` or ``"perm"``. Default: ``"comb"``.
        max_planes: random subset of planes. Default: ``None``.
        n_bootstrap: bootstrap replicates. Default: 1000.
        n_null: Haar-random bases of the null (0: none; p-values then start at 1/20). Default: 19 (each costs
            one pass over the planes).
        confidence: interval level. Default: 0.95.
        generator: ``torch.Generator`` or ``None`` (torch's global RNG).
        nan_policy: ``"raise"`` or ``"omit"``. Default: ``"raise"``.

    Examples:
        >>> import torch
        >>> from isotorch.probes import quantisation_score
        >>> g = torch.Generator().manual_seed(0)
        >>> gauss = torch.randn(5000, 6, generator=g) * torch.tensor([3.0, 1, 1, 1, 1, 1]) + 2
        >>> abs(quantisation_score(gauss, n_null=0, generator=torch.Generator().manual_seed(0)).value) < 0.01
        True
        >>> signs = torch.randn(5000, 1, generator=g).sign()
        >>> axes = torch.eye(6)[torch.randint(0, 6, (5000,), generator=g)] * signs
        >>> score = quantisation_score(axes, n_null=0, generator=torch.Generator().manual_seed(0))
        >>> round(score.value, 2)   # four clusters per plane: 4/16
        0.25
    """
    harmonics = check_int(harmonics, "harmonics", minimum=2)
    n_bootstrap, n_null, confidence = _check_common(n_bootstrap, n_null, confidence)
    gen = check_generator(generator)
    setup = _prepare(acts, basis, planes, max_planes, gen, nan_policy)
    settings: dict[str, Any] = {
        "basis": setup.kind,
        "planes": planes,
        "max_planes": max_planes,
        "harmonics": harmonics,
        "excluded_nonfinite": setup.excluded_nonfinite,
    }
    nan_args = (setup.n, setup.n_planes, n_bootstrap, confidence, n_null, QUANT_FORMULA, settings)
    if setup.n < MIN_SAMPLES:
        reason = f"only {setup.n} usable row(s); the quantisation score needs at least {MIN_SAMPLES}"
        return _nan_result("quantisation", reason, *nan_args)
    width = 2 + 2 * harmonics

    def plane_values(y: torch.Tensor, jackknife: bool):
        """Per-plane estimates, effective sizes, V − U shifts (P,) and the summed jackknife over usable planes (N,)."""
        est, ess, shifts = [], [], []
        jack = torch.zeros(setup.n, dtype=torch.float64, device=y.device) if jackknife else None
        for p, q in _plane_chunks(setup, y, width):
            f = _quant_features(p, q, harmonics)  # (N, Pc, W)
            total = f.mean(0)
            u_hat = _quant_plane_stat(total[None], setup.n, harmonics)[0]
            size = total[:, 0] ** 2 / torch.where(total[:, 1] > 0, total[:, 1], float("nan")) * setup.n
            est.append(u_hat)
            ess.append(size)
            if jack is not None:  # jackknife
                # a resample's U-statistic is centred on the plug-in (V) value of the data, not on its U value:
                # the bootstrap replicates are shifted by that known bias so that they centre on the estimate
                shifts.append(_quant_plane_stat(total[None], setup.n, harmonics, unbiased=False)[0] - u_hat)
                ok = torch.isfinite(size) & (size >= MIN_SAMPLES) & torch.isfinite(u_hat)
                if bool(ok.any()):
                    flat = f[:, ok].reshape(setup.n, -1)
                    loo = jackknife_means(flat).view(setup.n, int(ok.sum()), width)
                    jack += _quant_plane_stat(loo, setup.n - 1, harmonics).sum(1)
        return torch.cat(est), torch.cat(ess), (torch.cat(shifts) if jackknife else None), jack

    est, ess, shift, jack = plane_values(setup.y, True)
    keep = torch.isfinite(ess) & (ess >= MIN_SAMPLES) & torch.isfinite(est)
    settings["thin_planes"] = int((~keep).sum())
    if not bool(keep.any()):
        reason = (
            "no privileged plane has its r² weight on at least "
            f"{MIN_SAMPLES} effective samples (constant features, or too few rows)"
        )
        return _nan_result("quantisation", reason, *nan_args)
    used = int(keep.sum())
    value = float(est[keep].mean())
    # bootstrap: one block of resample counts at a time, every block of planes under the same counts
    stream = ResampleStream(setup.n, n_bootstrap, gen, setup.y.device)
    reps = []
    for _, counts in stream.blocks():
        total = torch.zeros(counts.shape[0], dtype=torch.float64, device=counts.device)
        start = 0
        for p, q in _plane_chunks(setup, setup.y, width):
            stop = start + p.shape[1]
            ok = keep[start:stop]
            if bool(ok.any()):
                flat = _quant_features(p[:, ok], q[:, ok], harmonics).reshape(setup.n, -1)
                means = (counts @ flat / setup.n).view(counts.shape[0], int(ok.sum()), width)
                total += (_quant_plane_stat(means, setup.n, harmonics) - shift[start:stop][ok]).sum(1)
            start = stop
        reps.append(total / used)
    low, high = bca_bounds(
        torch.tensor([value]), torch.cat(reps)[:, None].cpu(), (jack / used)[:, None].cpu(), confidence
    )
    nulls = []
    for y in _null_bases(setup, n_null, gen) if n_null else []:
        e, s, _, _ = plane_values(y, False)
        ok = torch.isfinite(s) & (s >= MIN_SAMPLES) & torch.isfinite(e)
        nulls.append(float(e[ok].mean()) if bool(ok.any()) else float("nan"))
    null = torch.tensor(nulls, dtype=torch.float64)
    null = null[torch.isfinite(null)]
    null_mean, null_sd, p = _null_summary(value, null, two_sided=False)
    return ScoreResult(
        name="quantisation",
        value=value,
        ci_low=float(low[0]),
        ci_high=float(high[0]),
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        null_mean=null_mean if n_null else None,
        null_sd=null_sd if n_null else None,
        p_value=p if n_null else None,
        excess=value - null_mean if n_null else None,
        n_null=n_null,
        components={},
        n_samples=setup.n,
        n_planes=int(keep.sum()),
        formula=QUANT_FORMULA,
        settings=settings,
    )
