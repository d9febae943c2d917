import math

import matplotlib
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import isotorch as it
from isotorch.probes import SRMResult, srm, srm_baseline, srm_epsilon
from isotorch.testing import assert_invariant, invariance_error


def gaussian(n_rows, dim, seed=0, dtype=torch.float64):
    return torch.randn(n_rows, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def signed_axes(n_rows, dim, seed=0, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.eye(dim, dtype=torch.float64)[torch.randint(0, dim, (n_rows,), generator=g)]
    x = x * torch.randn(n_rows, 1, generator=g, dtype=torch.float64).sign()
    return x + noise * torch.randn(n_rows, dim, generator=g, dtype=torch.float64)


# --- the closed-form arcs count exactly what the per-angle evaluation counts ---------------------------------


@pytest.mark.parametrize("epsilon", [None, 0.3, -0.4, 0.85, 0.0])
@pytest.mark.parametrize("planes", ["comb", "perm"])
@pytest.mark.parametrize("signed", [False, True])
def test_arcs_equal_dense_evaluation(epsilon, planes, signed):
    x = gaussian(700, 6)
    fast = srm(x, epsilon=epsilon, planes=planes, signed=signed)
    slow = srm(x, epsilon=epsilon, planes=planes, signed=signed, method="dense")
    assert torch.equal(fast.curves, slow.curves)


@pytest.mark.parametrize("angles", [1, 2, 7, 100, 360])
def test_arcs_equal_dense_for_any_angle_count(angles):
    x = gaussian(300, 5, seed=3)
    basis = gaussian(4, 5, seed=4)  # non-orthogonal: Gram–Schmidt per plane
    fast = srm(x, basis, angles=angles, epsilon=0.2)
    assert torch.equal(fast.curves, srm(x, basis, angles=angles, epsilon=0.2, method="dense").curves)


def test_arcs_equal_dense_on_structured_data():
    for x in (signed_axes(400, 6, noise=0.01), torch.randn(400, 6, dtype=torch.float64).sign()):
        assert torch.equal(srm(x).curves, srm(x, method="dense").curves)


@given(
    n_rows=st.integers(1, 40),
    dim=st.integers(2, 6),
    epsilon=st.floats(-0.95, 0.95),
    angles=st.integers(1, 40),
    seed=st.integers(0, 10_000),
)
def test_arcs_equal_dense_property(n_rows, dim, epsilon, angles, seed):
    x = gaussian(n_rows, dim, seed=seed)
    fast = srm(x, epsilon=epsilon, angles=angles, signed=True)
    assert torch.equal(fast.curves, srm(x, epsilon=epsilon, angles=angles, signed=True, method="dense").curves)


def test_chunking_and_threads_do_not_change_counts():
    x = gaussian(3000, 12, seed=5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = srm(x).curves
        torch.set_num_threads(2)
        two = srm(x).curves
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


# --- known answers ------------------------------------------------------------------------------------------------


def test_baseline_matches_monte_carlo_and_closed_forms():
    assert srm_baseline(3, 0.0) == pytest.approx(0.5)
    assert srm_baseline(3, 0.6) == pytest.approx(0.2)  # n = 3: â·u is uniform on [−1, 1]
    assert srm_baseline(2, 0.5) == pytest.approx(math.acos(0.5) / math.pi)  # n = 2: cos of a uniform angle
    x = gaussian(200_000, 8, seed=1)
    t = x[:, 0] / x.norm(dim=1)
    assert float((t >= 0.45).double().mean()) == pytest.approx(srm_baseline(8, 0.45), abs=3e-3)
    assert srm_baseline(8, 0.45) == pytest.approx(0.112, abs=1e-3)  # REFERENCE 4.1 checked value


def test_default_epsilon_gives_ten_percent_and_keeps_corners_visible():
    for n in (2, 3, 8, 64, 1000):
        eps = srm_epsilon(n)
        assert srm_baseline(n, eps) == pytest.approx(0.1, abs=1e-9)
        assert eps < math.sqrt(2 / n)  # hypercube corners project with in-plane norm √(2/n)
    assert srm_epsilon(10_000) * 100 == pytest.approx(1.2816, abs=0.01)


def test_gaussian_data_is_flat_within_band():
    r = srm(gaussian(20_000, 8, seed=2), epsilon=srm_epsilon(8))
    assert r.baseline == pytest.approx(0.1)
    assert bool(((r.mean - r.baseline).abs() <= r.band).all())
    sigma = r.band / 1.96
    assert float((r.curves - r.baseline).abs().max()) < 5 * sigma
    default = srm(gaussian(20_000, 8, seed=2))  # the data-adaptive default is flat too, at its own baseline
    assert default.settings["epsilon_rule"] == "cos(π/8)·ρ*" and 0.4 < default.epsilon < 0.8
    assert float((default.curves - default.baseline).abs().max()) < 5 * default.band / 1.96


@pytest.mark.parametrize("dim", [4, 8, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_epsilon_reads_one_hot_axes_at_zero_and_corners_at_quarter_pi(dim, dtype):
    g = torch.Generator().manual_seed(dim)
    one_hot = torch.eye(dim, dtype=dtype)[torch.randint(0, dim, (4000,), generator=g)]
    axes = srm(one_hot, angles=8)  # θ_k = kπ/4
    assert int(axes.mean.argmax()) % 2 == 0 and float(axes.mean[1::2].max()) == 0.0
    assert axes.epsilon == pytest.approx(math.cos(math.pi / 8))  # ρ* = 1: in-plane points on the unit circle
    corners = srm(torch.randn(4000, dim, generator=g, dtype=dtype).sign(), angles=8)
    assert float(corners.mean[1::2].min()) > 0.2 > float(corners.mean[0::2].max())
    assert corners.epsilon == pytest.approx(math.cos(math.pi / 8) * math.sqrt(2 / dim), rel=1e-5)
    tanh = srm(torch.tanh(3 * torch.randn(4000, dim, generator=g, dtype=dtype)), angles=8)
    assert float(tanh.mean[1::2].min()) > 3 * float(tanh.mean[0::2].max())


def test_axis_data_peaks_at_multiples_of_half_pi():
    # ε = 0.9: a cone of half-angle 26°, narrower than the 45° between an axis and a diagonal
    r = srm(signed_axes(4000, 8, noise=0.02), epsilon=0.9, angles=100)
    top = float(r.mean.max())
    assert float(r.mean[[0, 25, 50, 75]].min()) > 0.9 * top > 0.05
    peak = int(r.mean.argmax())
    assert min(abs(peak - k) for k in (0, 25, 50, 75, 100)) <= 7  # within the 26° plateau around an axis
    assert float(r.mean[[12, 13, 37, 38, 62, 63, 87, 88]].max()) == 0.0


def test_wide_cone_sees_two_axes_at_once():
    # A cone wider than 45° (ε = srm_epsilon(8) ≈ 0.47, half-angle 62°) holds two axes at π/4: one-hot data then
    # fills the spotlight most on the diagonals; the default ε is chosen from the data to avoid exactly this.
    r = srm(signed_axes(4000, 8), epsilon=srm_epsilon(8), angles=8)
    assert float(r.mean[1::2].min()) > float(r.mean[0::2].max())
    assert int(srm(signed_axes(4000, 8), angles=8).mean.argmax()) % 2 == 0


def test_diagonal_data_peaks_at_quarter_pi_offsets():
    corners = torch.randn(4000, 8, dtype=torch.float64).sign()  # saturated tanh
    r = srm(corners, angles=8)  # θ_k = kπ/4
    assert float(r.mean[1::2].min()) > 2 * float(r.mean[0::2].max())
    assert float(r.mean[1::2].min()) > r.baseline


def test_rotation_loses_the_peaks():
    x = signed_axes(4000, 8, noise=0.02)
    q = it.groups.get("orthogonal").sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    aligned, rotated = srm(x, epsilon=0.9), srm(x @ q.T, epsilon=0.9)
    assert float(aligned.mean.max() - aligned.mean.min()) > 0.05
    assert float(rotated.mean.max() - rotated.mean.min()) < 0.5 * float(aligned.mean.max() - aligned.mean.min())


def test_random_basis_equals_rotated_data():
    x = gaussian(500, 6, seed=7)
    r = srm(x, "random", generator=torch.Generator().manual_seed(3))
    q = it.groups.get("orthogonal").sample(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert r.settings["basis"] == "random"
    assert torch.allclose(r.curves, srm(x @ q.T).curves, atol=2.5 / 500)


# --- symmetry -----------------------------------------------------------------------------------------------------


def test_mean_curve_is_permutation_invariant_with_perm_planes(dtype):
    x = torch.randn(400, 6, dtype=dtype).relu() + 0.05  # positive, not sign-symmetric

    def mean_curve(a):
        return srm(a, planes="perm", epsilon=0.3, angles=24).mean

    assert_invariant(mean_curve, x, "permutation")
    for bigger in it.groups.covers("permutation", 6):  # sign flips reflect the curves: must fail
        assert invariance_error(mean_curve, x, bigger) > 1e-3


def test_joint_rotation_of_data_and_basis_is_invariant(dtype):
    x = gaussian(300, 5, seed=9, dtype=dtype)
    basis = gaussian(4, 5, seed=10, dtype=torch.float64)
    q = it.groups.get("orthogonal").sample(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = srm(x, basis, epsilon=0.3).curves
    joint = srm((x.double() @ q.T).to(dtype), basis @ q.T, epsilon=0.3).curves
    assert torch.allclose(ref, joint, atol=2.5 / 300)
    data_only = srm((x.double() @ q.T).to(dtype), basis, epsilon=0.3).curves
    assert float((ref - data_only).abs().max()) > 0.05


# --- result object ------------------------------------------------------------------------------------------------


def test_result_fields_to_dict_and_plot(tmp_path):
    r = srm(gaussian(200, 4), max_planes=3, generator=torch.Generator().manual_seed(0))
    assert isinstance(r, SRMResult)
    assert r.curves.shape == (3, 100) and r.planes.shape == (3, 2)
    assert r.angles[1] == pytest.approx(2 * math.pi / 100)
    d = r.to_dict()
    assert d["settings"]["n_planes"] == 3 and len(d["mean"]) == 100
    backend = matplotlib.get_backend()
    fig = r.plot()
    fig.savefig(tmp_path / "srm.png")
    assert (tmp_path / "srm.png").stat().st_size > 0
    assert matplotlib.get_backend() == backend
    assert "SRMResult" in repr(r)


def test_plane_counts_and_subsampling():
    x = gaussian(50, 5)
    assert srm(x).curves.shape[0] == 10
    assert srm(x, planes="perm").curves.shape[0] == 20
    sub = srm(x, max_planes=4, generator=torch.Generator().manual_seed(1))
    assert sub.curves.shape[0] == 4
    assert torch.equal(sub.planes, srm(x, max_planes=4, generator=torch.Generator().manual_seed(1)).planes)


def test_scale_invariance_and_huge_norms():
    x = gaussian(200, 5)
    assert torch.equal(srm(x).curves, srm(x * 1e150).curves)
    assert torch.equal(srm(x.float()).curves, srm(x.float().double()).curves)


# --- bad input ----------------------------------------------------------------------------------------------------


def test_nan_rows_raise_or_are_counted():
    x = gaussian(100, 4)
    x[3, 1] = float("nan")
    x[7, 0] = float("inf")
    with pytest.raises(ValueError, match="acts has 2 row"):
        srm(x)
    r = srm(x, nan_policy="omit")
    assert r.excluded_nonfinite == 2 and r.n_samples == 98


def test_zero_rows_are_dropped_and_counted():
    x = gaussian(100, 4)
    x[:10] = 0
    r = srm(x)
    assert r.excluded_zero == 10 and r.n_samples == 90
    with pytest.raises(ValueError, match="usable"):
        srm(torch.zeros(5, 4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(epsilon=1.0), "epsilon"),
        (dict(epsilon=-1.5), "epsilon"),
        (dict(epsilon=float("nan")), "epsilon"),
        (dict(angles=0), "angles"),
        (dict(planes="pairs"), "planes"),
        (dict(max_planes=0), "max_planes"),
        (dict(basis=torch.randn(3, 5)), "basis"),
        (dict(basis=torch.randn(1, 4)), "basis"),
        (dict(basis="haar"), "basis"),
        (dict(basis=torch.tensor([[1.0, 0, 0, 0], [2.0, 0, 0, 0]])), "parallel"),
        (dict(method="loop"), "method"),
        (dict(nan_policy="ignore"), "nan_policy"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        srm(gaussian(20, 4), **kwargs)


@pytest.mark.parametrize(
    ("acts", "match"),
    [
        (torch.randn(10), "acts"),
        (torch.randn(10, 1), "acts"),
        (torch.randn(0, 4), "acts"),
        (torch.ones(10, 4, dtype=torch.long), "acts"),
        ([[1.0, 2.0]], "acts"),
    ],
)
def test_bad_activations(acts, match):
    with pytest.raises((ValueError, TypeError), match=match):
        srm(acts)


def test_fewer_samples_than_dimensions_is_allowed_and_recorded():
    r = srm(gaussian(3, 10))
    assert r.n_samples == 3 and r.n_features == 10
