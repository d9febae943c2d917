"""Tests for IsoDropout / iso_dropout: identity in eval, unbiased and rotation invariant in law in training."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import isotorch as it
from isotorch import functional as IF
from isotorch._functional.dropout import _projection_rank
from isotorch.testing import assert_equivariant, equivariance_error

MODES = ("vector", "projection", "gaussian")
SAMPLES = 20_000  # rows per statistical test; the sampling noise of the moment gaps below is about 0.01
SAME_LAW = 0.04  # largest moment gap accepted as "same distribution"
DIFFERENT_LAW = 0.08  # smallest moment gap accepted as "different distribution" (negative controls)
X = (1.5, -0.3, 0.8, 2.0, -1.1)  # a generic vector with uneven coordinates


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _iso(mode, p=0.3):
    return lambda batch, gen: IF.iso_dropout(batch, p, mode=mode, generator=gen)


def _torch_dropout(batch, gen):
    keep = torch.empty_like(batch).bernoulli_(0.7, generator=gen)
    return batch * keep / 0.7


def _second_moment(a):
    a = a.to(torch.float64)
    return a.T @ a / a.shape[0]


def _law_gap(drop, g, dtype):
    """Moment gaps between the laws of g·out(x) and out(g·x), from independent seeded samples."""
    x = torch.tensor(X, dtype=dtype).expand(SAMPLES, len(X)).contiguous()
    a = it.groups.act(g, drop(x, _gen(1)))
    b = drop(it.groups.act(g, x).to(dtype), _gen(2)).double()
    second = float((_second_moment(a) - _second_moment(b)).norm() / _second_moment(a).norm())
    first = float((a.mean(0) - b.mean(0)).norm() / math.hypot(*X))
    return max(first, second)


def _max_gap(drop, group, dtype, trials=3):
    group = it.groups.get(group, log_scale_std=1.0) if group == "positive_scaling" else it.groups.get(group)
    return max(
        _law_gap(drop, group.sample(len(X), generator=_gen(seed), dtype=torch.float64), dtype) for seed in range(trials)
    )


def _max_z(samples, target):
    """Largest |z|-score of the sample mean of each coordinate against ``target``."""
    samples = samples.to(torch.float64)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    return float(((samples.mean(0) - target.to(torch.float64)) / se).abs().max())


class TestIsoDropout:
    def test_module_attributes_and_eval_identity(self):
        drop = it.nn.IsoDropout(0.2, mode="projection", dim=1)
        assert repr(drop) == "IsoDropout(p=0.2, mode='projection', dim=1)"
        assert drop.role == "dropout" and drop.dim == 1 and drop.groups == ("orthogonal",)
        x = torch.randn(3, 6, 2)
        assert drop.eval()(x) is x
        y = drop.train()(x)
        assert y.shape == x.shape and not torch.equal(y, x)
        for mode in MODES:
            assert IF.iso_dropout(x, 0.5, training=False, mode=mode) is x
            assert IF.iso_dropout(x, 0.0, mode=mode) is x

    @pytest.mark.parametrize("mode", MODES)
    def test_unbiased(self, mode, dtype):
        x = torch.tensor(X, dtype=dtype)
        out = IF.iso_dropout(x.expand(SAMPLES, 5), 0.3, mode=mode, generator=_gen(0))
        assert _max_z(out, x) < 4.5
        assert _max_z(0.95 * out, x) > 4.5  # the test detects a 5% bias

    @pytest.mark.parametrize("mode", MODES)
    def test_rotation_invariant_in_law(self, mode, dtype):
        assert _max_gap(_iso(mode), "orthogonal", dtype) < SAME_LAW

    @pytest.mark.parametrize("mode", ["projection", "gaussian"])
    def test_positive_scaling_changes_the_law(self, mode, dtype):
        assert _max_gap(_iso(mode), "positive_scaling", dtype) > DIFFERENT_LAW

    def test_torch_dropout_is_not_rotation_invariant_in_law(self, dtype):
        assert _max_gap(_torch_dropout, "trivial", dtype) < SAME_LAW  # the sample noise is small ...
        assert _max_gap(_torch_dropout, "orthogonal", dtype) > DIFFERENT_LAW  # ... the violation is not

    def test_vector_mode_is_pathwise_equivariant(self, dtype):
        x = torch.randn(6, 5, 3, dtype=dtype)

        def drop(t):
            return IF.iso_dropout(t, 0.5, mode="vector", dim=1, generator=_gen(7))

        assert_equivariant(drop, x, "orthogonal", dim=1)
        # the mask never looks at the values, so vector dropout commutes with every linear map; its negative
        # controls are the noise-based modes and torch's dropout, which are not pathwise equivariant:
        assert_equivariant(drop, x, "positive_scaling", dim=1)
        gaussian = lambda t: IF.iso_dropout(t, 0.5, mode="gaussian", dim=1, generator=_gen(7))  # noqa: E731
        assert equivariance_error(gaussian, x, "orthogonal", dim=1) > 1e-3
        bernoulli = lambda t: _torch_dropout(t.movedim(1, -1), _gen(7)).movedim(-1, 1)  # noqa: E731
        assert equivariance_error(bernoulli, x, "orthogonal", dim=1) > 1e-3

    def test_vector_mode_drops_whole_vectors(self):
        x = torch.randn(400, 6) + 3
        y = IF.iso_dropout(x, 0.25, generator=_gen(0))
        dropped = (y == 0).all(-1)
        torch.testing.assert_close(y[~dropped], x[~dropped] / 0.75)
        assert abs(float(dropped.float().mean()) - 0.25) < 0.07

    def test_gaussian_mode_has_bernoulli_variance(self):
        x = torch.tensor(X, dtype=torch.float64)
        out = IF.iso_dropout(x.expand(SAMPLES, 5), 0.3, mode="gaussian", generator=_gen(0))
        total = float((out - x).pow(2).sum(-1).mean())
        expected = 0.3 / 0.7 * float(x.pow(2).sum())  # Bernoulli dropout: Σ p/(1−p)·x_i²
        assert abs(total / expected - 1) < 0.05

    def test_projection_mode_projects_onto_k_dimensions(self, dtype):
        n, p = 7, 0.4
        k = _projection_rank(n, p)
        assert (k, _projection_rank(10, 0.25), _projection_rank(2, 0.9), _projection_rank(4, 0.5)) == (4, 8, 1, 2)
        x = torch.randn(50, n, dtype=dtype)
        proj = IF.iso_dropout(x, p, mode="projection", generator=_gen(0)) * (k / n)
        # an orthogonal projection P satisfies ‖Px‖² = <Px, x> and leaves x − Px orthogonal to Px
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(proj.pow(2).sum(-1), (proj * x).sum(-1), rtol=tol, atol=tol)
        assert bool((proj.norm(dim=-1) < x.norm(dim=-1)).all())
        for q in (0.1, 0.6):  # k > n/2 uses the complement; k < n/2 the direct projection
            kq = _projection_rank(n, q)
            proj = IF.iso_dropout(x, q, mode="projection", generator=_gen(1)) * (kq / n)
            torch.testing.assert_close(proj.pow(2).sum(-1), (proj * x).sum(-1), rtol=tol, atol=tol)
        maps = torch.randn(4, n, 3, dtype=dtype)  # feature axis in the middle
        proj = IF.iso_dropout(maps, p, mode="projection", dim=1, generator=_gen(2)) * (k / n)
        torch.testing.assert_close(proj.pow(2).sum(1), (proj * maps).sum(1), rtol=tol, atol=tol)

    def test_projection_mode_rank_from_moments(self):
        # E[(n/k)² PxxᵀP] has trace (n/k)·‖x‖², which pins down k
        n, p = 6, 0.5
        x = torch.randn(n, dtype=torch.float64)
        out = IF.iso_dropout(x.expand(SAMPLES, n), p, mode="projection", generator=_gen(3))
        ratio = float(out.pow(2).sum(-1).mean() / x.pow(2).sum())
        assert abs(ratio - n / _projection_rank(n, p)) < 0.05

    def test_feature_size_one(self):
        x = torch.randn(20, 1)
        assert torch.equal(IF.iso_dropout(x, 0.7, mode="projection"), x)  # the only rank-1 projection of ℝ¹ is I
        y = IF.iso_dropout(x, 0.5, mode="vector", generator=_gen(0))
        assert set(torch.unique(torch.round(y / x, decimals=4)).tolist()) <= {0.0, 2.0}

    @pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
    def test_half_precision(self, half):
        x = torch.randn(8, 16).to(half)
        for mode in MODES:
            y = IF.iso_dropout(x, 0.2, mode=mode, generator=_gen(0))
            assert y.dtype == half and torch.isfinite(y).all()

    @given(
        seed=st.integers(0, 2**16),
        count=st.integers(0, 4),
        n=st.integers(1, 6),
        mode=st.sampled_from(MODES),
        p=st.floats(0.0, 0.9),
        log_scale=st.sampled_from([-30, 0, 30]),
        special_row=st.sampled_from(["none", "zero", "nan"]),
    )
    def test_property_edge_cases(self, seed, count, n, mode, p, log_scale, special_row):
        x = torch.randn(count, n, generator=_gen(seed)) * 10.0**log_scale
        if count and special_row == "zero":
            x[0] = 0.0
        if count and special_row == "nan":
            x[0, 0] = float("nan")
        y = IF.iso_dropout(x, p, mode=mode, generator=_gen(seed + 1))
        assert y.shape == x.shape and y.dtype == x.dtype
        rows = slice(1, None) if special_row != "none" else slice(None)
        assert torch.isfinite(y[rows]).all()
        if count and special_row == "zero":
            assert (y[0] == 0).all()
        if count and special_row == "nan":
            assert torch.isnan(y[0, 0])  # NaN stays in its vector (vector mode leaves the other entries finite)

    def test_bad_input(self):
        x = torch.randn(2, 3)
        for p in (1.0, -0.1, 1.5):
            with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
                IF.iso_dropout(x, p)
        with pytest.raises(TypeError, match="p must be a float"):
            IF.iso_dropout(x, "0.5")
        with pytest.raises(ValueError, match="mode must be one of"):
            IF.iso_dropout(x, 0.5, mode="bernoulli")
        with pytest.raises(ValueError, match="mode must be one of"):
            it.nn.IsoDropout(0.5, mode="channel")
        with pytest.raises(ValueError, match="p must be in"):
            it.nn.IsoDropout(1.0)
        with pytest.raises(TypeError, match="floating-point"):
            IF.iso_dropout(torch.ones(2, 3, dtype=torch.long), 0.5)
        with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
            IF.iso_dropout(x, 0.5, generator=0)
        with pytest.raises(ValueError, match="dim=3 is out of range"):
            IF.iso_dropout(x, 0.5, dim=3)

    @pytest.mark.parametrize("mode", MODES)
    def test_compiles_without_graph_breaks(self, mode):
        compiled = torch.compile(IF.iso_dropout, fullgraph=True, backend="eager")
        y = compiled(torch.randn(4, 6), 0.3, mode=mode)
        assert y.shape == (4, 6) and torch.isfinite(y).all()
