"""Neural collapse (Papyan, Han & Donoho 2020): NC1–NC4 from features or from streamed class statistics.

Notation: N samples h_i with labels y_i ∈ {0..C−1}, class means μ_c, global mean μ_G = (1/C) Σ_c μ_c (the unweighted
mean of class means, as Papyan et al. and rhubarbwu/neural-collapse; ``centre="samples"`` takes the sample-weighted
mean (1/N) Σ_i h_i instead, which differs with imbalanced classes), M = [μ_c − μ_G] ∈ ℝ^{d×C},
classifier W ∈ ℝ^{C×d} with bias b,

    Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ,      Σ_B = (1/C) Σ_c (μ_c − μ_G)(μ_c − μ_G)ᵀ.

- NC1 = Tr(Σ_W Σ_B⁺)/C (variability collapse); also Tr Σ_W / Tr Σ_B and the class-distance-normalised variance
  CDNV = mean over c ≠ c′ of (σ_c² + σ_c′²)/(2‖μ_c − μ_c′‖²), σ_c² = tr S_c/n_c.
- NC2 (simplex ETF): ‖G/‖G‖_F − (I − 𝟙𝟙ᵀ/C)/√(C−1)‖_F with G = MᵀM; equinorm = std/mean of ‖μ_c − μ_G‖;
  equiangularity = std over c ≠ c′ of cos(μ_c − μ_G, μ_c′ − μ_G); max-angle = mean |cos + 1/(C−1)|.
- NC3 (self-duality) = ‖Wᵀ/‖W‖_F − M/‖M‖_F‖_F².
- NC4 = (1/N) Σ_i 1[argmax_c(w_cᵀh_i + b_c) ≠ argmin_c ‖h_i − μ_c‖].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from isotorch._util import check_choice, check_labels, check_matrix, finite_rows, json_safe
from isotorch.probes._accumulators import Classifier, ClassMoments, NearestCentreAgreement

__all__ = ["NeuralCollapseResult", "neural_collapse", "neural_collapse_from_stats"]

CENTRES = ("classes", "samples")


@dataclass(frozen=True)
class NeuralCollapseResult:
    """Neural-collapse metrics (all 0 at perfect collapse onto a simplex ETF).

    Attributes:
        nc1: Tr(Σ_W Σ_B⁺)/C.
        nc1_quotient: Tr Σ_W / Tr Σ_B.
        cdnv: mean class-distance-normalised variance over class pairs.
        nc2: ETF error of the class-mean Gram matrix MᵀM.
        nc2_equinorm: std/mean of the centred class-mean norms.
        nc2_equiangular: std of the pairwise cosines of centred class means.
        nc2_max_angle: mean |cos + 1/(C−1)| over class pairs.
        nc2_classifier: ETF error of WWᵀ (``None`` without a classifier).
        nc3: self-duality ‖Wᵀ/‖W‖_F − M/‖M‖_F‖_F² (``None`` without a classifier).
        nc4: classifier vs nearest-class-centre disagreement (``None`` without a classifier or second pass).
        ncc_error: nearest-class-centre error against the labels (``None`` when not computed).
        num_classes: C.
        n_samples: N.
        n_features: d.
        excluded_nonfinite: rows dropped for NaN/inf (``nan_policy="omit"``).
        centre: ``"classes"`` (μ_G = unweighted mean of class means) or ``"samples"`` (sample-weighted mean).
        reason: why some metrics are ``nan`` (a class with one sample, coinciding class means), else ``None``.
    """

    nc1: float
    nc1_quotient: float
    cdnv: float
    nc2: float
    nc2_equinorm: float
    nc2_equiangular: float
    nc2_max_angle: float
    nc2_classifier: float | None
    nc3: float | None
    nc4: float | None
    ncc_error: float | None
    num_classes: int
    n_samples: int
    n_features: int
    excluded_nonfinite: int = 0
    centre: str = "classes"
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON dictionary (NaN and ±inf become ``None``)."""
        return json_safe(asdict(self))

    def __repr__(self) -> str:
        def fmt(v):
            return "None" if v is None else f"{v:.4g}"

        return (
            f"NeuralCollapseResult(nc1={fmt(self.nc1)}, nc2={fmt(self.nc2)}, nc3={fmt(self.nc3)}, nc4={fmt(self.nc4)}, "
            f"C={self.num_classes}, N={self.n_samples}, d={self.n_features})"
        )


def classifier_parameters(classifier: Classifier, means_shape) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, b) in float64 from an ``nn.Linear``, a (C, d) weight tensor or a (weight, bias) pair, shape-checked."""
    c, d = means_shape
    bias: torch.Tensor | None = None
    if isinstance(classifier, torch.nn.Linear):
        weight, bias = classifier.weight, classifier.bias
    elif isinstance(classifier, torch.Tensor):
        weight = classifier
    elif isinstance(classifier, (tuple, list)) and len(classifier) == 2:
        weight, bias = classifier
    else:
        raise TypeError(
            "classifier must be an nn.Linear, a (C, d) weight tensor or a (weight, bias) pair, "
            f"got {type(classifier).__name__}"
        )
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or tuple(weight.shape) != (c, d):
        raise ValueError(
            f"classifier weight must have shape (num_classes, features) = ({c}, {d}), "
            f"got {tuple(getattr(weight, 'shape', ()))}"
        )
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (c,)):
        raise ValueError(f"classifier bias must have shape ({c},), got {tuple(getattr(bias, 'shape', ()))}")
    weight = weight.detach().to(torch.float64)
    return weight, None if bias is None else bias.detach().to(torch.float64)


def _etf_error(gram: torch.Tensor) -> float:
    c = gram.shape[0]
    target = (torch.eye(c, dtype=gram.dtype, device=gram.device) - 1.0 / c) / math.sqrt(c - 1)
    norm = torch.linalg.matrix_norm(gram)
    if norm == 0:
        return float("nan")
    return float(torch.linalg.matrix_norm(gram / norm - target))


def _pinv_trace(within: torch.Tensor, between: torch.Tensor) -> float:
    """Tr(Σ_W Σ_B⁺) with eigenvalues of Σ_B below d·eps·λ_max treated as zero."""
    evals, evecs = torch.linalg.eigh(between)
    top = float(evals.max())
    if top <= 0:
        return float("inf") if float(torch.trace(within)) > 0 else float("nan")
    keep = evals > top * between.shape[0] * torch.finfo(torch.float64).eps
    v = evecs[:, keep]
    projected = v.T @ within @ v
    return float((torch.diagonal(projected) / evals[keep]).sum())


def _collapse_from_moments(
    counts: torch.Tensor,
    means: torch.Tensor,
    within_scatter: torch.Tensor,
    class_traces: torch.Tensor,
    classifier,
    centre: str = "classes",
) -> dict[str, Any]:
    c, d = means.shape
    n_c = counts.to(torch.float64)
    n = float(n_c.sum())
    global_mean = means.mean(0) if centre == "classes" else (n_c[:, None] * means).sum(0) / n
    centred = means - global_mean  # rows μ_c − μ_G, i.e. Mᵀ
    within = within_scatter / n
    between = centred.T @ centred / c
    tr_between = float(torch.trace(between))
    nc1 = _pinv_trace(within, between) / c
    tr_within = float(torch.trace(within))
    if tr_between > 0:
        nc1_quotient = tr_within / tr_between
    else:
        nc1_quotient = float("inf") if tr_within > 0 else float("nan")

    variances = class_traces / n_c
    pair = ~torch.eye(c, dtype=torch.bool, device=means.device)
    dist2 = torch.cdist(means, means).pow(2)
    cdnv = float(((variances[:, None] + variances[None, :]) / (2.0 * dist2))[pair].mean())

    norms = centred.norm(dim=1)
    equinorm = float(norms.std(correction=0) / norms.mean()) if float(norms.mean()) > 0 else float("nan")
    unit = centred / norms.clamp(min=torch.finfo(torch.float64).tiny)[:, None]
    cos = (unit @ unit.T)[pair]
    equiangular = float(cos.std(correction=0))
    max_angle = float((cos + 1.0 / (c - 1)).abs().mean())
    nc2 = _etf_error(centred @ centred.T)
    reasons = []
    if int(counts.min()) < 2:
        small = torch.nonzero(counts < 2).flatten().tolist()[:10]
        reasons.append(f"class(es) {small} have a single sample: within-class variability (NC1, CDNV) is undefined")
        nc1 = nc1_quotient = cdnv = float("nan")
    if tr_between == 0:
        reasons.append("all class means coincide (constant or uninformative features): NC1 and NC2 are undefined")
        nc1 = nc1_quotient = cdnv = nc2 = equinorm = equiangular = max_angle = float("nan")

    nc2_classifier = nc3 = None
    if classifier is not None:
        weight, _ = classifier_parameters(classifier, (c, d))
        weight = weight.to(means.device)
        nc2_classifier = _etf_error(weight @ weight.T)
        w_norm, m_norm = torch.linalg.matrix_norm(weight), torch.linalg.matrix_norm(centred)
        nc3 = float(torch.linalg.matrix_norm(weight / w_norm - centred / m_norm) ** 2)
    return dict(
        nc1=nc1,
        nc1_quotient=nc1_quotient,
        cdnv=cdnv,
        nc2=nc2,
        nc2_equinorm=equinorm,
        nc2_equiangular=equiangular,
        nc2_max_angle=max_angle,
        nc2_classifier=nc2_classifier,
        nc3=nc3,
        num_classes=c,
        n_samples=int(n),
        n_features=d,
        centre=centre,
        reason="; ".join(reasons) or None,
    )


def neural_collapse(
    features: torch.Tensor,
    labels: torch.Tensor,
    classifier: Classifier = None,
    *,
    num_classes: int | None = None,
    nan_policy: str = "raise",
    centre: str = "classes",
) -> NeuralCollapseResult:
    """Neural-collapse metrics NC1–NC4 of features with class labels (formulas in the module docstring).

    NC1 = Tr(Σ_W Σ_B⁺)/C, NC2 = ‖G/‖G‖_F − (I − 𝟙𝟙ᵀ/C)/√(C−1)‖_F with G = MᵀM, NC3 = ‖Wᵀ/‖W‖_F − M/‖M‖_F‖_F²,
    NC4 = fraction of samples where the classifier and the nearest class centre disagree. All are invariant under
    a rotation of the feature space (with the classifier rotated alongside).

    Args:
        features: (N, d) features (e.g. penultimate-layer activations).
        labels: (N,) integer class labels in [0, num_classes).
        classifier: ``nn.Linear`` with C outputs, a (C, d) weight, a (weight, bias) pair, or ``None`` (then NC3,
            NC4 and the classifier ETF error are ``None``). Default: ``None``.
        num_classes: C. Default: ``None`` (labels.max() + 1). Every class needs at least one sample.
        nan_policy: ``"raise"`` on rows with NaN/inf, or ``"omit"`` to drop them (counted). Default: ``"raise"``.
        centre: the global mean μ_G of M and Σ_B: ``"classes"`` (unweighted mean of class means, Papyan et al.,
            rhubarbwu/neural-collapse) or ``"samples"`` (sample-weighted). Default: ``"classes"``.

    Shape:
        features: (N, d); labels: (N,).

    Examples:
        >>> import torch
        >>> from isotorch.probes import neural_collapse
        >>> etf = torch.eye(3) - 1 / 3                          # a simplex ETF: 3 class means in ℝ³
        >>> labels = torch.arange(30) % 3
        >>> r = neural_collapse(etf[labels], labels, classifier=etf)
        >>> round(r.nc1, 6), round(r.nc2, 6), round(r.nc3, 6), r.nc4
        (0.0, 0.0, 0.0, 0.0)
    """
    _check_centre(centre)
    features = check_matrix(features, "features")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels must be an integer tensor of shape ({features.shape[0]},) to match features, "
            f"got {tuple(getattr(labels, 'shape', ())) if isinstance(labels, torch.Tensor) else type(labels).__name__}"
        )
    ok = torch.isfinite(features).all(dim=1)
    features, n_bad = finite_rows(features.detach(), "features", nan_policy)
    if n_bad:
        labels = labels[ok.to(labels.device)]
    labels, num_classes = check_labels(labels.to(features.device), features.shape[0], num_classes)
    stats = ClassMoments(num_classes)
    stats.update(features, labels)
    nc4 = None
    if classifier is not None:
        nc4 = NearestCentreAgreement(stats._stats()[1], classifier)
        nc4.update(features, labels)
    return neural_collapse_from_stats(stats, classifier, nc4=nc4, excluded_nonfinite=n_bad, centre=centre)


def _check_centre(centre: object) -> str:
    return check_choice(centre, "centre", CENTRES)


def neural_collapse_from_stats(
    stats: ClassMoments,
    classifier: Classifier = None,
    *,
    nc4: NearestCentreAgreement | float | None = None,
    excluded_nonfinite: int = 0,
    centre: str = "classes",
) -> NeuralCollapseResult:
    """NC1–NC3 from streamed class statistics; NC4 from a second-pass :class:`NearestCentreAgreement`.

    NC1, NC2 and NC3 need only class counts, class means and the pooled within-class scatter, which
    :class:`ClassMoments` (and ``collect``) stream in one pass. NC4 compares each sample with the class means, so
    it needs a second pass: run ``collect`` again with ``probes=[lambda name: NearestCentreAgreement(means, head)]``
    (or update the accumulator yourself) and pass it as ``nc4``.

    Args:
        stats: a :class:`ClassMoments` with at least two classes, each with at least one sample.
        classifier: as in :func:`neural_collapse`. Default: ``None``.
        nc4: a :class:`NearestCentreAgreement` after its pass, a precomputed NC4 value, or ``None``. Default: ``None``.
        excluded_nonfinite: count of rows dropped upstream, recorded in the result. Default: 0.
        centre: ``"classes"`` or ``"samples"``, as in :func:`neural_collapse`. Default: ``"classes"``.

    Examples:
        >>> import torch
        >>> from isotorch.probes import ClassMoments, neural_collapse, neural_collapse_from_stats
        >>> x, y = torch.randn(600, 8, dtype=torch.float64), torch.arange(600) % 4
        >>> stats = ClassMoments()
        >>> for xb, yb in zip(x.split(100), y.split(100)):
        ...     stats.update(xb, yb)
        >>> abs(neural_collapse_from_stats(stats).nc1 - neural_collapse(x, y).nc1) < 1e-9
        True
    """
    _check_centre(centre)
    if not isinstance(stats, ClassMoments):
        raise TypeError(f"stats must be a ClassMoments accumulator, got {type(stats).__name__}")
    if stats.count == 0:
        raise ValueError("stats holds no samples")
    counts, means, within_scatter, class_traces = stats._stats()
    c = counts.shape[0]
    if c < 2:
        raise ValueError("stats hold a single class; neural collapse needs at least 2 classes")
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(f"stats: class(es) {empty[:10]} have no samples; every class needs at least one")
    values = _collapse_from_moments(counts, means, within_scatter, class_traces, classifier, centre)
    ncc_error = None
    if isinstance(nc4, NearestCentreAgreement):
        ncc_error = nc4.ncc_error
        nc4 = nc4.nc4
    elif nc4 is not None:
        nc4 = float(nc4)
    return NeuralCollapseResult(**values, nc4=nc4, ncc_error=ncc_error, excluded_nonfinite=excluded_nonfinite)
