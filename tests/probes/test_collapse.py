import math

import pytest
import torch
from torch import nn

import isotorch as it
from isotorch.probes import (
    ClassMoments,
    NearestCentreAgreement,
    NeuralCollapseResult,
    neural_collapse,
    neural_collapse_from_stats,
)
from isotorch.testing import assert_invariant, invariance_error


def simplex_etf(num_classes, dim, seed=0):
    """Rows: C class means forming a simplex ETF in ℝ^dim (dim ≥ C)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, num_classes, generator=g, dtype=torch.float64))
    centred = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    return math.sqrt(num_classes / (num_classes - 1)) * centred @ u.T


def test_exact_etf_has_zero_nc1_to_nc4():
    means = simplex_etf(5, 8)
    labels = torch.arange(200) % 5
    r = neural_collapse(means[labels], labels, classifier=means)
    assert isinstance(r, NeuralCollapseResult)
    for v in (r.nc1, r.nc1_quotient, r.nc2, r.nc2_equinorm, r.nc2_equiangular, r.nc2_max_angle, r.nc2_classifier):
        assert abs(v) < 1e-10
    assert r.nc3 == pytest.approx(0, abs=1e-12)
    assert r.nc4 == 0.0 and r.ncc_error == 0.0


def test_near_etf_is_small_and_random_features_are_not():
    means = simplex_etf(4, 16)
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (2000,), generator=g)
    near = neural_collapse(means[labels] + 0.01 * torch.randn(2000, 16, generator=g, dtype=torch.float64), labels)
    assert near.nc1 < 1e-2 and near.nc2 < 0.05
    random = neural_collapse(torch.randn(2000, 16, generator=g, dtype=torch.float64), labels)
    assert random.nc1 > 1.0 and random.nc2 > 0.2
    head = torch.randn(4, 16, generator=g, dtype=torch.float64)
    random = neural_collapse(torch.randn(2000, 16, generator=g, dtype=torch.float64), labels, classifier=head)
    assert random.nc4 > 0.3 and random.ncc_error > 0.5  # near chance (0.75)


def test_nc1_matches_the_formula():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    y = torch.arange(300) % 3
    x = x + 2 * torch.eye(5, dtype=torch.float64)[y]
    mu = torch.stack([x[y == c].mean(0) for c in range(3)])
    mu_g = x.mean(0)
    sw = sum((x[y == c] - mu[c]).T @ (x[y == c] - mu[c]) for c in range(3)) / 300
    sb = (mu - mu_g).T @ (mu - mu_g) / 3
    expected = float(torch.trace(sw @ torch.linalg.pinv(sb, hermitian=True))) / 3
    assert neural_collapse(x, y).nc1 == pytest.approx(expected, rel=1e-9)


def test_streaming_statistics_equal_in_memory():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1000, 6, generator=g, dtype=torch.float64) + 3
    y = torch.randint(0, 4, (1000,), generator=g)
    stats = ClassMoments()
    for xb, yb in zip(x.split(97), y.split(97), strict=True):
        stats.update(xb, yb)
    head = nn.Linear(6, 4).double()
    second = NearestCentreAgreement(stats.means, head)
    for xb, yb in zip(x.split(128), y.split(128), strict=True):
        second.update(xb, yb)
    streamed = neural_collapse_from_stats(stats, head, nc4=second)
    direct = neural_collapse(x, y, classifier=head)
    for key, value in direct.to_dict().items():
        if isinstance(value, str) or value is None:
            assert streamed.to_dict()[key] == value, key
        else:
            assert streamed.to_dict()[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_collapse_is_rotation_invariant(dtype):
    means = simplex_etf(4, 6, seed=4)
    g = torch.Generator().manual_seed(5)
    labels = torch.arange(400) % 4
    x = (means[labels] + 0.3 * torch.randn(400, 6, generator=g, dtype=torch.float64)).to(dtype)

    def metrics(feats):
        r = neural_collapse(feats, labels)
        values = [r.nc1, r.nc1_quotient, r.cdnv, r.nc2, r.nc2_equinorm, r.nc2_equiangular, r.nc2_max_angle]
        return torch.tensor(values, dtype=feats.dtype)

    assert_invariant(metrics, x, "orthogonal")
    # O(n) is maximal in the lattice: the non-compact control (positive scalings) must change the ETF geometry
    assert invariance_error(metrics, x, "positive_scaling") > 1e-3


def test_nc3_rotates_with_the_classifier():
    means = simplex_etf(3, 5, seed=6)
    labels = torch.arange(90) % 3
    x = means[labels] + 0.1 * torch.randn(90, 5, dtype=torch.float64)
    head = means + 0.2 * torch.randn(3, 5, dtype=torch.float64)
    q = it.groups.get("orthogonal").sample(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = neural_collapse(x, labels, classifier=head)
    b = neural_collapse(x @ q.T, labels, classifier=head @ q.T)
    assert b.nc3 == pytest.approx(a.nc3, rel=1e-9) and b.nc4 == a.nc4
    assert neural_collapse(x @ q.T, labels, classifier=head).nc3 > a.nc3 + 0.1


def test_classifier_forms():
    means = simplex_etf(3, 4)
    labels = torch.arange(30) % 3
    lin = nn.Linear(4, 3).double()
    for clf in (lin, lin.weight, (lin.weight, lin.bias)):
        assert neural_collapse(means[labels], labels, classifier=clf).nc3 is not None
    with pytest.raises(ValueError, match="classifier weight"):
        neural_collapse(means[labels], labels, classifier=torch.randn(4, 3))
    with pytest.raises(TypeError, match="classifier"):
        neural_collapse(means[labels], labels, classifier="head")


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        (torch.zeros(30, dtype=torch.long), {}, "single class"),
        (torch.arange(30) % 3, {"num_classes": 2}, r"\[0, 2\)"),
        (torch.arange(30) % 3 - 1, {}, r"\[0, "),
        (torch.arange(30) % 3, {"num_classes": 5}, "no samples"),
        ((torch.arange(30) % 3).float(), {}, "integer"),
        (torch.arange(29) % 3, {}, "shape"),
    ],
)
def test_bad_labels(labels, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        neural_collapse(torch.randn(30, 4), labels, **kwargs)


def test_nan_rows_and_bad_stats():
    x = torch.randn(60, 4)
    y = torch.arange(60) % 3
    x[5, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        neural_collapse(x, y)
    r = neural_collapse(x, y, nan_policy="omit")
    assert r.excluded_nonfinite == 1 and r.n_samples == 59
    with pytest.raises(ValueError, match="no samples"):
        neural_collapse_from_stats(ClassMoments())
    single = ClassMoments()
    single.update(torch.randn(5, 2), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="single class"):
        neural_collapse_from_stats(single)
    with pytest.raises(TypeError, match="ClassMoments"):
        neural_collapse_from_stats(x)


def test_fewer_samples_than_dimensions_is_allowed():
    means = simplex_etf(3, 50)
    labels = torch.arange(9) % 3
    r = neural_collapse(means[labels] + 1e-3 * torch.randn(9, 50, dtype=torch.float64), labels)
    assert r.n_samples == 9 and r.n_features == 50 and r.nc1 < 1e-3


# --- imbalanced classes: centre on the unweighted mean of class means (Papyan et al., rhubarbwu) ----------------------


def collapse_reference(features, labels, weight):
    """numpy transcription of rhubarbwu/neural-collapse's NC1 (Tr Σ_W Σ_B⁺ / C), NC2 (simplex-ETF error of the centred
    class-mean Gram matrix) and NC3 (self-duality), with μ_G = the unweighted mean of the class means."""
    import numpy as np

    h, y, w = features.numpy(), labels.numpy(), weight.numpy()
    classes = np.unique(y)
    c = len(classes)
    mu = np.stack([h[y == k].mean(0) for k in classes])
    mu_g = mu.mean(0)
    m = mu - mu_g
    sw = sum((h[y == k] - mu[i]).T @ (h[y == k] - mu[i]) for i, k in enumerate(classes)) / len(h)
    sb = m.T @ m / c
    nc1 = np.trace(sw @ np.linalg.pinv(sb, hermitian=True)) / c
    g = m @ m.T
    target = (np.eye(c) - 1 / c) / np.sqrt(c - 1)
    nc2 = np.linalg.norm(g / np.linalg.norm(g) - target)
    nc3 = np.linalg.norm(w / np.linalg.norm(w) - m / np.linalg.norm(m)) ** 2
    return nc1, nc2, nc3


def test_imbalanced_exact_etf_has_zero_nc2_and_nc3():
    means = simplex_etf(10, 12)
    sizes = torch.arange(100, 1001, 100)  # 100, 200, ..., 1000 samples per class
    labels = torch.repeat_interleave(torch.arange(10), sizes)
    r = neural_collapse(means[labels], labels, classifier=means)
    assert r.centre == "classes"
    assert r.nc2 == pytest.approx(0, abs=1e-10) and r.nc3 == pytest.approx(0, abs=1e-12) and r.nc1 < 1e-20
    # the sample-weighted centre is a different quantity: it breaks the ETF (the values the issue reported)
    weighted = neural_collapse(means[labels], labels, classifier=means, centre="samples")
    assert weighted.nc2 == pytest.approx(0.256, abs=1e-3) and weighted.nc3 == pytest.approx(0.0296, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_imbalanced_metrics_match_a_numpy_transcription(dtype):
    g = torch.Generator().manual_seed(3)
    sizes = torch.tensor([20, 50, 120, 400])
    labels = torch.repeat_interleave(torch.arange(4), sizes)
    x = (
        torch.randn(len(labels), 6, generator=g, dtype=torch.float64)
        + 3 * torch.randn(4, 6, generator=g, dtype=torch.float64)[labels]
    )
    head = torch.randn(4, 6, generator=g, dtype=torch.float64)
    r = neural_collapse(x.to(dtype), labels, classifier=head.to(dtype))
    nc1, nc2, nc3 = collapse_reference(x.to(dtype).double(), labels, head.to(dtype).double())
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert r.nc1 == pytest.approx(nc1, rel=tol) and r.nc2 == pytest.approx(nc2, rel=tol)
    assert r.nc3 == pytest.approx(nc3, rel=tol)
    stats = ClassMoments()
    stats.update(x, labels)
    ref64 = collapse_reference(x, labels, head)
    assert neural_collapse_from_stats(stats, head).nc2 == pytest.approx(ref64[1], rel=1e-9)
    assert neural_collapse_from_stats(stats, head, centre="samples").nc2 != pytest.approx(ref64[1], rel=1e-3)
    with pytest.raises(ValueError, match="centre"):
        neural_collapse(x, labels, centre="median")


def test_degenerate_inputs_give_nan_with_a_reason():
    import json

    labels = torch.arange(40) % 4
    const = neural_collapse(torch.ones(40, 5, dtype=torch.float64), labels)
    assert math.isnan(const.nc1) and math.isnan(const.nc2) and "coincide" in const.reason
    assert json.loads(json.dumps(const.to_dict(), allow_nan=False))["nc1"] is None  # strict JSON
    single = neural_collapse(torch.randn(4, 5, dtype=torch.float64), torch.arange(4))  # one sample per class
    assert math.isnan(single.nc1) and math.isnan(single.cdnv) and "single sample" in single.reason
    assert math.isfinite(single.nc2)
    with pytest.raises(ValueError, match="single class"):
        neural_collapse(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))
