import json
import math

import numpy as np
import pytest
import torch

import isotorch as it
from isotorch.probes import ScoreResult, alignment_score, quantisation_score
from isotorch.probes._bootstrap import ResampleStream, bca_bounds, jackknife_means


def gaussian(n_rows, dim, seed=0, dtype=torch.float64):
    return torch.randn(n_rows, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def signed_axes(n_rows, dim, seed=0, noise=0.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.eye(dim, dtype=torch.float64)[torch.randint(0, dim, (n_rows,), generator=g)]
    x = x * torch.randn(n_rows, 1, generator=g, dtype=torch.float64).sign()
    return (x + noise * torch.randn(n_rows, dim, generator=g, dtype=torch.float64)).to(dtype)


def rotation(n, seed=0):
    return it.groups.get("orthogonal").sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def half_width(r):
    """The interval's half-width: about 1.96 standard errors of the estimate at this sample size."""
    return (r.ci_high - r.ci_low) / 2


def alignment_reference(x, basis):
    """numpy transcription of the definition: Σ_planes E[p⁴ − 6p²q² + q⁴] / Σ_planes E[(p² + q²)²], centred data,
    Gram–Schmidt frame on every pair i < j of basis rows."""
    x = np.asarray(x, dtype=np.float64)
    b = np.asarray(basis, dtype=np.float64)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    y = x - x.mean(0)
    num = den = 0.0
    for i in range(len(b)):
        for j in range(i + 1, len(b)):
            e2 = b[j] - (b[j] @ b[i]) * b[i]
            e2 /= np.linalg.norm(e2)
            p, q = y @ b[i], y @ e2
            num += np.mean(p**4 - 6 * p**2 * q**2 + q**4)
            den += np.mean((p**2 + q**2) ** 2)
    return num / den


# --- alignment: null ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_alignment_is_zero_for_isotropic_offset_and_rotated_anisotropic_gaussians(dtype):
    n = 4000
    scale = torch.tensor([3.0, 2.0, 1.5, 1, 1, 1, 0.5, 0.5], dtype=torch.float64)
    cases = {
        "isotropic": gaussian(n, 8, seed=1),
        "offset": gaussian(n, 8, seed=2) + 10.0,
        "anisotropic, random axes": (gaussian(n, 8, seed=3) * scale) @ rotation(8, seed=4).T + 3.0,
    }
    for name, x in cases.items():
        r = alignment_score(x.to(dtype), generator=torch.Generator().manual_seed(0), n_bootstrap=300, n_null=40)
        # every Gaussian: the higher-order part is 0 within ~3 standard errors at this n
        high = r.components["higher_order"]
        assert abs(high["value"]) < 1.5 * (high["ci_high"] - high["ci_low"]), name
        # and the total is what a random basis gives: no privilege of this basis
        assert abs(r.value - r.null_mean) < 4 * r.null_sd, name
        assert r.p_value > 0.05, name
    iso = alignment_score(
        cases["isotropic"].to(dtype), generator=torch.Generator().manual_seed(0), n_bootstrap=300, n_null=0
    )
    assert abs(iso.value) < 1.5 * half_width(iso) and iso.ci_low < 0 < iso.ci_high


def test_alignment_does_not_see_the_mean():
    x = signed_axes(3000, 6, noise=0.2)
    shifted = x + torch.tensor([5.0, -2, 0, 1, 0, 0], dtype=torch.float64)
    a, b = (
        alignment_score(x, n_null=0, generator=torch.Generator().manual_seed(0)),
        alignment_score(shifted, n_null=0, generator=torch.Generator().manual_seed(0)),
    )
    assert b.value == pytest.approx(a.value, abs=1e-9)


# --- alignment: positive controls and references ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_alignment_signs_read_like_the_srm_curve(dtype):
    axes = alignment_score(signed_axes(3000, 8, dtype=dtype), generator=torch.Generator().manual_seed(0), n_null=20)
    corners = alignment_score(
        gaussian(3000, 8, seed=1, dtype=dtype).sign(), generator=torch.Generator().manual_seed(0), n_null=20
    )
    tanh = alignment_score(
        torch.tanh(3 * gaussian(3000, 8, seed=2, dtype=dtype)), generator=torch.Generator().manual_seed(0), n_null=20
    )
    assert axes.value == pytest.approx(1.0, abs=2e-3)  # mass on the axes: cos 4φ = 1
    assert corners.value == pytest.approx(-1.0, abs=2e-3)  # mass on the diagonals: cos 4φ = −1
    assert -1 < tanh.value < -0.5 and tanh.ci_high < 0
    for r in (axes, corners, tanh):
        assert r.p_value == pytest.approx(1 / 21)  # more extreme than every random basis
        assert abs(r.components["second_moment"]["value"]) < 0.01  # all structure is higher-order


def test_second_moment_privilege_is_reported_apart_from_higher_order():
    scale = torch.tensor([3.0, 2.0, 1.5, 1, 1, 1, 0.5, 0.5], dtype=torch.float64)
    x = gaussian(6000, 8, seed=5) * scale  # a Gaussian whose covariance axes are the basis
    r = alignment_score(x, generator=torch.Generator().manual_seed(0), n_bootstrap=300, n_null=40)
    second, high = r.components["second_moment"], r.components["higher_order"]
    assert second["ci_low"] > 0.2 and r.p_value <= 1 / 41 + 1e-12
    assert abs(high["value"]) < 1.5 * (high["ci_high"] - high["ci_low"])
    assert second["value"] + high["value"] == pytest.approx(r.value, abs=1e-12)
    # its closed form: Σ_planes 3[(a − b)²] / Σ_planes E r⁴ with a, b the axis variances (Gaussian: E r⁴ closed too)
    v = (scale**2).tolist()
    num = sum(3 * (v[i] - v[j]) ** 2 for i in range(8) for j in range(i + 1, 8))
    den = sum(3 * v[i] ** 2 + 3 * v[j] ** 2 + 2 * v[i] * v[j] for i in range(8) for j in range(i + 1, 8))
    assert second["value"] == pytest.approx(num / den, abs=0.03)


def test_alignment_matches_a_numpy_transcription_on_every_path():
    x = signed_axes(700, 5, noise=0.4, seed=3) + 0.3 * gaussian(700, 5, seed=4).relu()
    eye = torch.eye(5, dtype=torch.float64)
    fast = alignment_score(
        x, n_null=0, generator=torch.Generator().manual_seed(0)
    )  # orthonormal basis, every plane: closed form per sample
    assert fast.value == pytest.approx(alignment_reference(x, eye), rel=1e-10)
    perm = alignment_score(x, planes="perm", n_null=0, generator=torch.Generator().manual_seed(0))
    assert perm.value == pytest.approx(fast.value, rel=1e-10)
    skew = torch.tensor([[1.0, 0, 0, 0, 0], [0.6, 0.8, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0.3, 0, 1, 0.2]])
    custom = alignment_score(
        x, skew.double(), n_null=0, generator=torch.Generator().manual_seed(0)
    )  # non-orthogonal set: plane by plane
    assert custom.value == pytest.approx(alignment_reference(x, skew), rel=1e-10)
    q = rotation(5, seed=9)
    assert alignment_score(x @ q.T, q.T, n_null=0, generator=torch.Generator().manual_seed(0)).value == pytest.approx(
        fast.value, rel=1e-9
    )


def test_alignment_haar_null_has_mean_zero_and_rotated_structure_is_not_privileged():
    x = signed_axes(3000, 6, noise=0.05) @ rotation(6, seed=2).T  # quantised codes in a random frame
    r = alignment_score(x, generator=torch.Generator().manual_seed(0), n_null=60)
    assert abs(r.value - r.null_mean) < 3 * r.null_sd and r.p_value > 0.05
    assert abs(r.null_mean) < 3 * r.null_sd / math.sqrt(60) + 0.02


# --- quantisation ---------------------------------------------------------------------------------------------------


def gaussian_harmonics_quadrature(a, b, c, k, grid=20000):
    """numpy transcription: E[r² e^{ikφ}]/E[r²] of a centred 2-d Gaussian, by quadrature of r²·density in polar form
    (∫ r³ exp(−r² uᵀΣ⁻¹u/2) dr ∝ (uᵀΣ⁻¹u)⁻²)."""
    phi = np.linspace(0, 2 * np.pi, grid, endpoint=False)
    inv = np.linalg.inv(np.array([[a, c], [c, b]]))
    u = np.stack([np.cos(phi), np.sin(phi)])
    weight = np.einsum("ig,ij,jg->g", u, inv, u) ** -2.0
    return abs(np.sum(weight * np.exp(1j * k * phi)) / np.sum(weight))


def test_gaussian_harmonics_closed_form_matches_quadrature():
    from isotorch.probes._scores import _gaussian_harmonics

    for a, b, c in [(1.0, 1.0, 0.0), (4.0, 1.0, 0.0), (2.0, 1.0, 0.7), (1.0, 9.0, -2.0)]:
        closed = _gaussian_harmonics(*(torch.tensor(v, dtype=torch.float64) for v in (a, b, c)), 12)
        quad = [gaussian_harmonics_quadrature(a, b, c, k) ** 2 for k in range(1, 13)]
        assert closed.tolist() == pytest.approx(quad, abs=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantisation_is_zero_for_every_gaussian(dtype):
    scale = torch.tensor([4.0, 2.0, 1, 1, 1, 0.3], dtype=torch.float64)
    cases = {
        "isotropic": gaussian(4000, 6, seed=1),
        "offset": gaussian(4000, 6, seed=2) + 7.0,
        "anisotropic": gaussian(4000, 6, seed=3) * scale,
        "anisotropic, random axes": (gaussian(4000, 6, seed=4) * scale) @ rotation(6, seed=5).T - 2.0,
    }
    for name, x in cases.items():
        r = quantisation_score(x.to(dtype), generator=torch.Generator().manual_seed(0), n_bootstrap=300, n_null=0)
        assert abs(r.value) < 2e-3, name  # the U-statistic's sd is O(1/N) = O(2.5e-4) per harmonic at N = 4000
        assert r.ci_low <= 2e-4 and r.ci_high >= -2e-4, name


def test_small_gaussian_samples_are_never_scored_quantised():
    # the old entropy score read a few Gaussian points in 72 bins as strongly quantised; the U-statistic has no such
    # bias, and planes whose weight rests on < 10 effective samples are refused (nan with a reason)
    tiny = quantisation_score(
        gaussian(12, 4, seed=0), n_null=0, n_bootstrap=50, generator=torch.Generator().manual_seed(0)
    )
    assert math.isnan(tiny.value) and "effective samples" in tiny.reason
    values = [
        quantisation_score(
            gaussian(40, 4, seed=s), n_null=0, n_bootstrap=50, generator=torch.Generator().manual_seed(0)
        ).value
        for s in range(30)
    ]
    assert all(math.isfinite(v) for v in values)
    # sd of one value ≈ 0.02 at N = 40: the mean of 30 is within 3 of its standard errors of 0
    assert abs(float(np.mean(values))) < 0.015 and max(values) < 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantisation_positive_controls(dtype):
    axes = quantisation_score(signed_axes(4000, 6, dtype=dtype), generator=torch.Generator().manual_seed(0), n_null=10)
    assert axes.value == pytest.approx(4 / 16, abs=2e-3)  # four clusters per plane: ⌊16/4⌋/16
    assert axes.p_value == pytest.approx(1 / 11) and axes.excess > 0.05
    corners = quantisation_score(
        gaussian(4000, 6, seed=1, dtype=dtype).sign(), generator=torch.Generator().manual_seed(0), n_null=0
    )
    assert corners.value == pytest.approx(4 / 16, abs=2e-3)
    angle = 2 * math.pi * torch.arange(3000, dtype=torch.float64) / 3
    three = torch.stack([angle.cos(), angle.sin()], dim=1).to(dtype)  # three clusters at 120° in one plane
    assert quantisation_score(three, n_null=0, generator=torch.Generator().manual_seed(0)).value == pytest.approx(
        5 / 16, abs=2e-3
    )


def test_quantised_codes_in_a_rotated_frame_score_but_not_in_excess_of_random_bases():
    x = signed_axes(3000, 5, noise=0.02) @ rotation(5, seed=3).T
    r = quantisation_score(x, generator=torch.Generator().manual_seed(0), n_null=15)
    assert r.value > 0.02  # projections of discrete codes are discrete
    assert r.p_value > 0.05 and abs(r.excess) < 4 * r.null_sd


# --- intervals ------------------------------------------------------------------------------------------------------


def test_bca_matches_scipy_for_a_ratio_of_means():
    from scipy import stats

    g = torch.Generator().manual_seed(0)
    a = torch.rand(60, generator=g, dtype=torch.float64) ** 3
    d = 1 + torch.rand(60, generator=g, dtype=torch.float64)
    feats = torch.stack([a, d], dim=1)

    def ratio(means, _n):
        return (means[:, 0] / means[:, 1])[:, None]

    stream = ResampleStream(60, 20000, g, "cpu")
    est = ratio(feats.mean(0, keepdim=True), 60)[0]
    low, high = bca_bounds(est, ratio(stream.means(feats), 60), ratio(jackknife_means(feats), 59), 0.95)
    ref = stats.bootstrap(
        (a.numpy(), d.numpy()),
        lambda x, y, axis=-1: x.mean(axis) / y.mean(axis),
        paired=True,
        vectorized=True,
        n_resamples=20000,
        method="BCa",
        random_state=np.random.default_rng(0),
    ).confidence_interval
    width = ref.high - ref.low
    assert float(low[0]) == pytest.approx(ref.low, abs=0.04 * width)
    assert float(high[0]) == pytest.approx(ref.high, abs=0.04 * width)


def draw(kind, n, dim, gen):
    if kind == "isotropic":
        return torch.randn(n, dim, generator=gen, dtype=torch.float64)
    if kind == "tanh":
        return torch.tanh(2.0 * torch.randn(n, dim, generator=gen, dtype=torch.float64))
    x = torch.eye(dim, dtype=torch.float64)[torch.randint(0, dim, (n,), generator=gen)]
    x = x * torch.randn(n, 1, generator=gen, dtype=torch.float64).sign()
    return x + 0.3 * torch.randn(n, dim, generator=gen, dtype=torch.float64)


def coverage(score, kind, repeats, n=100, dim=4):
    g = torch.Generator().manual_seed(123)
    # isotropic data: both scores are exactly 0 in the population; otherwise a 50,000-row estimate (its error is
    # ~1/20 of one interval's half-width)
    population = 0.0 if kind == "isotropic" else score(draw(kind, 50_000, dim, g), n_bootstrap=2, n_null=0).value
    hits = 0
    for r in range(repeats):
        res = score(draw(kind, n, dim, g), n_bootstrap=400, n_null=0, generator=torch.Generator().manual_seed(r))
        hits += res.ci_low <= population <= res.ci_high
    return hits / repeats


@pytest.mark.parametrize("kind", ["aligned", "isotropic", "tanh"])
def test_alignment_intervals_cover(kind):
    # REFERENCE §9: ≥ 90% of nominal-95% intervals cover the population value (n = 200 rows per interval;
    # studentised bootstrap: 400 isotropic repeats gave 0.94)
    assert coverage(alignment_score, kind, 100, n=200) >= 0.9


@pytest.mark.parametrize("kind", ["aligned", "isotropic", "tanh"])
def test_quantisation_intervals_cover(kind):
    assert coverage(quantisation_score, kind, 100) >= 0.9


# --- bad input and results ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [alignment_score, quantisation_score])
def test_too_few_rows_and_constant_features_give_nan_with_a_reason(fn):
    few = fn(gaussian(5, 4), n_null=3)
    assert math.isnan(few.value) and "at least 10" in few.reason and few.p_value is None
    const = fn(torch.ones(200, 4, dtype=torch.float64) * 3.0, n_null=3)
    assert math.isnan(const.value) and "constant" in const.reason
    text = json.dumps(const.to_dict(), allow_nan=False)  # strict JSON: NaN -> null
    assert '"value": null' in text and repr(const).startswith(f"ScoreResult({const.name}=nan")


@pytest.mark.parametrize("fn", [alignment_score, quantisation_score])
def test_nan_rows_raise_or_are_counted(fn):
    x = gaussian(300, 4)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fn(x)
    r = fn(x, nan_policy="omit", n_null=2, n_bootstrap=20, generator=torch.Generator().manual_seed(0))
    assert r.settings["excluded_nonfinite"] == 1 and r.n_samples == 299 and math.isfinite(r.value)


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (alignment_score, dict(n_bootstrap=1), "n_bootstrap"),
        (alignment_score, dict(n_null=-1), "n_null"),
        (alignment_score, dict(confidence=1.0), "confidence"),
        (alignment_score, dict(planes="all"), "planes"),
        (quantisation_score, dict(harmonics=1), "harmonics"),
        (quantisation_score, dict(basis=torch.randn(3, 7)), "basis"),
        (quantisation_score, dict(nan_policy="drop"), "nan_policy"),
    ],
)
def test_bad_arguments(fn, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fn(gaussian(50, 4), **kwargs)


def test_bad_activations():
    with pytest.raises(ValueError, match="at least 2 column"):
        alignment_score(gaussian(50, 1))
    with pytest.raises(TypeError, match="floating"):
        quantisation_score(torch.ones(50, 4, dtype=torch.long))


def test_result_is_seeded_and_json_ready():
    x = signed_axes(500, 5, noise=0.3)
    a = alignment_score(x, generator=torch.Generator().manual_seed(4), n_bootstrap=100, n_null=5)
    b = alignment_score(x, generator=torch.Generator().manual_seed(4), n_bootstrap=100, n_null=5)
    assert (a.ci_low, a.ci_high, a.p_value) == (b.ci_low, b.ci_high, b.p_value)
    assert isinstance(a, ScoreResult) and a.name == "alignment"
    d = json.loads(json.dumps(a.to_dict(), allow_nan=False))
    assert set(d["components"]) == {"second_moment", "higher_order"} and d["excess"] == pytest.approx(a.excess)
