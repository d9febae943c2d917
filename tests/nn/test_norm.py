"""Tests for the isotropic normalisers: IsoRMSNorm / iso_rms_norm, ChiNorm / chi_norm, IsoBatchNorm / iso_batch_norm."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import isotorch as it
from isotorch import functional as IF
from isotorch.testing import assert_equivariant, equivariance_error, relative_error

NEGATIVE = 1e-3  # a violated symmetry must show at least this relative error


def _data(shape, dtype, seed=0, dim=-1):
    """Generic input: Gaussian vectors with radii spread over an order of magnitude, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    radii = torch.exp(torch.randn(shape, generator=g, dtype=torch.float64)).amax(dim=dim, keepdim=True)
    return (x * radii + 0.3).to(dtype)


def _rms_reference(x, eps):
    x = x.to(torch.float64)
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _batch_case(draw_seed, count, n, log_scale):
    g = torch.Generator().manual_seed(draw_seed)
    return torch.randn(count, n, generator=g, dtype=torch.float64) * 10.0**log_scale


# -------------------------------------------------------------------------------------------------------------- RMS


class TestIsoRMSNorm:
    def test_formula_and_scalar_gain(self):
        x = _data((5, 7), torch.float64)
        norm = it.nn.IsoRMSNorm(eps=1e-6, dtype=torch.float64)
        with torch.no_grad():
            norm.weight.fill_(1.7)
        torch.testing.assert_close(norm(x), 1.7 * _rms_reference(x, 1e-6))
        assert norm.weight.shape == () and norm.role == "norm" and norm.groups == ("orthogonal",)
        assert repr(norm) == "IsoRMSNorm(dim=-1, eps=1e-06, gain=True)"
        assert it.nn.IsoRMSNorm(gain=False).weight is None

    def test_default_eps_is_dtype_eps(self):
        x = torch.zeros(1, 4) + 1e-4
        expected = x / math.sqrt(1e-8 + torch.finfo(torch.float32).eps)
        torch.testing.assert_close(IF.iso_rms_norm(x), expected)

    @pytest.mark.parametrize("dim,shape", [(-1, (6, 8)), (1, (2, 5, 3, 3))])
    def test_orthogonal_equivariant(self, dtype, dim, shape):
        norm = it.nn.IsoRMSNorm(dim=dim, dtype=dtype)
        with torch.no_grad():
            norm.weight.fill_(0.8)
        x = _data(shape, dtype, dim=dim)
        assert_equivariant(norm, x, "orthogonal", dim=dim)
        assert equivariance_error(norm, x, "positive_scaling", dim=dim) > NEGATIVE

    def test_elementwise_controls_fail_orthogonal(self, dtype):
        x = _data((6, 8), dtype)
        layer_norm = torch.nn.LayerNorm(8, dtype=dtype)
        rms_norm = torch.nn.RMSNorm(8, dtype=dtype)
        with torch.no_grad():
            for module in (layer_norm, rms_norm):
                module.weight.uniform_(0.5, 1.5)
            layer_norm.bias.normal_()
        assert equivariance_error(layer_norm, x, "orthogonal") > NEGATIVE
        assert equivariance_error(rms_norm, x, "orthogonal") > NEGATIVE

    def test_gradcheck_including_zero_and_tiny_vectors(self):
        x = _data((4, 5), torch.float64)
        x[1] = 0.0
        x[2] *= 1e-9
        weight = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
        x.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, w: IF.iso_rms_norm(a, w, eps=1e-6), (x, weight))

    def test_zero_vector_maps_to_zero_with_finite_gradient(self):
        x = torch.zeros(3, 4, requires_grad=True)
        y = IF.iso_rms_norm(x)
        y.sum().backward()
        assert (y == 0).all() and torch.isfinite(x.grad).all()

    @pytest.mark.parametrize("scale", [1e30, 1e-30])
    def test_extreme_norms_float32(self, scale):
        x = _data((4, 6), torch.float64) * scale
        out = IF.iso_rms_norm(x.float(), eps=1e-6)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), _rms_reference(x, 1e-6), rtol=1e-5, atol=1e-6)

    def test_huge_norms_float64(self):
        x = _data((3, 5), torch.float64)
        torch.testing.assert_close(IF.iso_rms_norm(x * 1e200, eps=1e-12), IF.iso_rms_norm(x, eps=1e-12))

    def test_nan_row_is_confined(self):
        x = _data((4, 6), torch.float32)
        clean = IF.iso_rms_norm(x)
        x[2, 3] = float("nan")
        out = IF.iso_rms_norm(x)
        assert torch.isnan(out[2]).all()
        torch.testing.assert_close(out[[0, 1, 3]], clean[[0, 1, 3]])

    def test_feature_size_one_and_empty_batch(self):
        x = torch.tensor([[3.0], [-0.5], [0.0]])
        torch.testing.assert_close(IF.iso_rms_norm(x, eps=1e-12), torch.tensor([[1.0], [-1.0], [0.0]]))
        assert IF.iso_rms_norm(torch.zeros(0, 5)).shape == (0, 5)

    @pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
    def test_half_precision_accumulates_in_float32(self, half):
        x = _data((4, 64), torch.float32) * 100  # squares of ~300 overflow nothing in float32; sums are long
        out = IF.iso_rms_norm(x.to(half))
        assert out.dtype == half
        reference = _rms_reference(x.to(half), torch.finfo(half).eps)
        assert relative_error(out, reference) < (2e-3 if half == torch.float16 else 1e-2)
        big = torch.full((1, 8), 60000.0, dtype=torch.float16)  # x² overflows float16, not float32
        torch.testing.assert_close(IF.iso_rms_norm(big), torch.ones(1, 8, dtype=torch.float16))

    def test_bad_input(self):
        with pytest.raises(TypeError, match="floating-point"):
            IF.iso_rms_norm(torch.ones(2, 3, dtype=torch.int64))
        with pytest.raises(ValueError, match="weight must be a 0-d"):
            IF.iso_rms_norm(torch.ones(2, 3), torch.ones(3))
        with pytest.raises(ValueError, match="eps"):
            IF.iso_rms_norm(torch.ones(2, 3), eps=0.0)
        with pytest.raises(ValueError, match="dim=2 is out of range"):
            IF.iso_rms_norm(torch.ones(2, 3), dim=2)
        with pytest.raises(ValueError, match="no features"):
            IF.iso_rms_norm(torch.ones(2, 0))
        with pytest.raises(TypeError, match="dim must be an int"):
            it.nn.IsoRMSNorm(dim=1.0)

    @given(
        seed=st.integers(0, 2**16),
        count=st.integers(0, 4),
        n=st.integers(1, 6),
        log_scale=st.integers(-30, 30),
        special_row=st.sampled_from(["none", "zero", "nan"]),
    )
    def test_property_matches_float64_reference(self, seed, count, n, log_scale, special_row):
        x = _batch_case(seed, count, n, log_scale).float()
        if count and special_row == "zero":
            x[0] = 0.0
        if count and special_row == "nan":
            x[0, -1] = float("nan")
        out = IF.iso_rms_norm(x, eps=1e-6)
        assert out.shape == x.shape
        rows = slice(1, None) if special_row == "nan" else slice(None)
        assert torch.isfinite(out[rows]).all()
        torch.testing.assert_close(out[rows].double(), _rms_reference(x[rows], 1e-6), rtol=1e-5, atol=1e-6)
        if count and special_row == "nan":
            assert torch.isnan(out[0]).all()

    def test_compiles_without_graph_breaks(self):
        compiled = torch.compile(IF.iso_rms_norm, fullgraph=True, backend="eager")
        x = _data((3, 4), torch.float32)
        torch.testing.assert_close(compiled(x, dim=-1), IF.iso_rms_norm(x))


# -------------------------------------------------------------------------------------------------------------- Chi


class TestChiNorm:
    def test_gradients_in_training(self):
        x = (3 * _data((6, 5), torch.float64) + 1).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a: IF.chi_norm(a, training=True), (x,))
        assert torch.autograd.gradgradcheck(lambda a: IF.chi_norm(a, training=True), (x,))
        for scale in (1e-25, 1e25):  # float32 squares underflow / overflow: the scale-safe path, as in float64
            small = _data((6, 5), torch.float32) * scale
            reference = IF.chi_norm(small.double(), training=True, eps=1e-30).float()
            torch.testing.assert_close(IF.chi_norm(small, training=True, eps=1e-30), reference)

    def test_init_repr_and_eval_is_frozen(self):
        norm = it.nn.ChiNorm(9, dtype=torch.float64).eval()
        assert float(norm.running_norm) == 3.0 and norm.running_norm.shape == ()
        assert repr(norm) == "ChiNorm(9, dim=-1, momentum=0.01, eps=1e-05)"
        assert norm.role == "norm" and norm.groups == ("orthogonal",) and list(norm.parameters()) == []
        x = _data((4, 9), torch.float64)
        torch.testing.assert_close(norm(x), x / (3.0 + 1e-5))
        assert float(norm.running_norm) == 3.0

    def test_training_uses_batch_estimate_and_updates_running(self):
        norm = it.nn.ChiNorm(4, momentum=0.1, dtype=torch.float64)
        x = _data((6, 4), torch.float64)
        mean_norm = x.norm(dim=-1).mean()
        torch.testing.assert_close(norm(x), x / (mean_norm + 1e-5))
        torch.testing.assert_close(norm.running_norm, 0.9 * 2.0 + 0.1 * mean_norm)
        norm.reset_running_stats()
        assert float(norm.running_norm) == 2.0

    def test_keeps_relative_radii_no_shell_collapse(self):
        x = _data((8, 5), torch.float64)
        ratio = IF.chi_norm(x, training=True).norm(dim=-1) / x.norm(dim=-1)
        torch.testing.assert_close(ratio, ratio[:1].expand(8))
        radii = IF.chi_norm(x, training=True).norm(dim=-1)
        assert radii.std() > 0.1  # x/‖x‖ would put every sample on the unit shell

    def test_gradient_flows_through_batch_estimate(self):
        # the training forward is invariant to a common rescaling of the batch, so the full gradient is
        # orthogonal to the batch: <∇L, X> = 0 (up to ε); detaching the estimate would break this.
        x = _data((6, 5), torch.float64)
        weights = _data((6, 5), torch.float64, seed=1)

        def radial_part(fn):
            h = x.clone().requires_grad_(True)
            (fn(h) * weights).sum().backward()
            return float((h.grad * x).sum() / (h.grad.norm() * x.norm()))

        assert abs(radial_part(lambda h: IF.chi_norm(h, training=True, eps=1e-12))) < 1e-9
        assert abs(radial_part(lambda h: h / h.norm(dim=-1).mean().detach())) > 1e-2

    @pytest.mark.parametrize("dim,shape", [(-1, (6, 8)), (1, (2, 5, 3, 3))])
    def test_orthogonal_equivariant_train_and_eval(self, dtype, dim, shape):
        x = _data(shape, dtype, dim=dim)
        n = shape[dim]
        norm = it.nn.ChiNorm(n, dim=dim, dtype=dtype)
        norm.train()
        assert_equivariant(norm, x, "orthogonal", dim=dim)
        assert equivariance_error(norm, x, "positive_scaling", dim=dim) > NEGATIVE
        norm.eval()
        assert_equivariant(norm, x, "orthogonal", dim=dim)
        # in eval ChiNorm is x ↦ x/μ̂, a scalar linear map: it commutes with every matrix, so it has no
        # larger group to fail; the train-mode negative control above is the meaningful one.

    def test_batchnorm_control_fails_orthogonal(self, dtype):
        bn = torch.nn.BatchNorm1d(8, dtype=dtype).train()
        assert equivariance_error(bn, _data((16, 8), dtype), "orthogonal") > NEGATIVE

    def test_nan_training_poisons_batch_but_not_running_estimate(self):
        norm = it.nn.ChiNorm(4)
        x = _data((5, 4), torch.float32)
        x[1, 2] = float("nan")
        assert torch.isnan(norm(x)).all()
        assert float(norm.running_norm) == 2.0
        norm.eval()
        out = norm(x)  # eval is a scalar affine map: NaN stays in its entry
        assert torch.isnan(out[1, 2]) and torch.isfinite(out[[0, 2, 3, 4]]).all()

    def test_huge_norms_and_zero_batch(self):
        x = _data((5, 4), torch.float32)
        torch.testing.assert_close(IF.chi_norm(x * 1e30, training=True), IF.chi_norm(x, training=True, eps=1e-35))
        assert (IF.chi_norm(torch.zeros(3, 4), training=True) == 0).all()

    def test_empty_batch_and_feature_size_one(self):
        with pytest.raises(ValueError, match="at least one vector in training"):
            IF.chi_norm(torch.zeros(0, 4), training=True)
        norm = it.nn.ChiNorm(4).eval()
        assert norm(torch.zeros(0, 4)).shape == (0, 4)
        x = torch.tensor([[2.0], [-1.0]])
        torch.testing.assert_close(IF.chi_norm(x, training=True, eps=1e-12), x / 1.5)

    def test_half_precision(self):
        x = _data((8, 32), torch.float32)
        out = IF.chi_norm(x.half(), training=True)
        assert out.dtype == torch.float16
        assert relative_error(out, IF.chi_norm(x, training=True)) < 2e-3

    def test_bad_input(self):
        with pytest.raises(ValueError, match="num_features = 4"):
            it.nn.ChiNorm(4)(torch.ones(2, 5))
        with pytest.raises(ValueError, match="num_features must be an int >= 1"):
            it.nn.ChiNorm(0)
        with pytest.raises(ValueError, match="momentum must be in"):
            it.nn.ChiNorm(4, momentum=1.5)
        with pytest.raises(ValueError, match="running_norm is required"):
            IF.chi_norm(torch.ones(2, 3))
        with pytest.raises(ValueError, match="running_norm must be a 0-d"):
            IF.chi_norm(torch.ones(2, 3), torch.ones(3), training=True)
        with pytest.raises(TypeError, match="floating-point"):
            IF.chi_norm(torch.ones(2, 3, dtype=torch.int32), training=True)

    @given(
        seed=st.integers(0, 2**16),
        count=st.integers(1, 5),
        n=st.integers(1, 5),
        log_scale=st.integers(-30, 30),
        zero_row=st.booleans(),
    )
    def test_property_matches_float64_reference(self, seed, count, n, log_scale, zero_row):
        x = _batch_case(seed, count, n, log_scale).float()
        if zero_row:
            x[0] = 0.0
        eps = 1e-5 * 10.0**log_scale  # keep ε at the scale of the data so that the reference is informative
        out = IF.chi_norm(x, training=True, eps=eps)
        assert torch.isfinite(out).all()
        reference = x.double() / (x.double().norm(dim=-1).mean() + eps)
        torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-6)

    def test_compiles_without_graph_breaks(self):
        running = torch.tensor(2.0)
        compiled = torch.compile(IF.chi_norm, fullgraph=True, backend="eager")
        x = _data((3, 4), torch.float32)
        torch.testing.assert_close(compiled(x, running, training=True), IF.chi_norm(x, training=True))


# -------------------------------------------------------------------------------------------------------- Batch


class TestIsoBatchNorm:
    @pytest.mark.parametrize("shape_dim", [((6, 5), -1), ((3, 4, 2, 2), 1)], ids=["vectors", "maps"])
    def test_gradients_of_both_training_paths(self, shape_dim):
        """The fast path and the scale-safe path (taken when the squares overflow) give exact gradients."""
        shape, dim = shape_dim
        x = (3 * _data(shape, torch.float64) + 1).requires_grad_(True)
        weight = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)

        def f(a, w):
            return IF.iso_batch_norm(a, weight=w, training=True, dim=dim)

        assert torch.autograd.gradcheck(f, (x, weight))
        assert torch.autograd.gradgradcheck(f, (x, weight))
        huge = _data(shape, torch.float32) * 1e30  # float32 squares overflow: the scale-safe path
        small = _data(shape, torch.float32)
        torch.testing.assert_close(
            IF.iso_batch_norm(huge, training=True, dim=dim), IF.iso_batch_norm(huge * 1e-30, training=True, dim=dim)
        )
        assert torch.isfinite(IF.iso_batch_norm(small, training=True, dim=dim)).all()

    def test_formula_and_running_statistics(self):
        x = _data((6, 4), torch.float64)
        bn = it.nn.IsoBatchNorm(4, dtype=torch.float64)
        assert repr(bn) == "IsoBatchNorm(4, dim=-1, momentum=0.1, eps=1e-05, affine=True, center=True)"
        assert bn.role == "norm" and bn.groups == ("orthogonal",) and bn.weight.shape == ()
        assert float(bn.running_var) == 4.0  # E‖h‖² of N(0, I_4)
        mu = x.mean(0)
        var = (x - mu).pow(2).sum(-1).mean()  # the total variance E‖x − μ‖²: mean squared norm 1 after
        y = bn(x)
        torch.testing.assert_close(y, (x - mu) / torch.sqrt(var + 1e-5))
        assert abs(float(y.detach().pow(2).sum(-1).mean()) - 1) < 1e-5
        torch.testing.assert_close(bn.running_mean, 0.1 * mu)
        torch.testing.assert_close(bn.running_var, 0.9 * 4 + 0.1 * var * 6 / 5)
        bn.eval()
        torch.testing.assert_close(bn(x), (x - bn.running_mean) / torch.sqrt(bn.running_var + 1e-5))

    def test_feature_map_statistics_over_batch_and_space(self):
        x = _data((3, 4, 5, 5), torch.float64, dim=1)
        y = it.nn.IsoBatchNorm(4, dim=1, dtype=torch.float64)(x)
        mu = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mu).pow(2).sum(1).mean()  # mean over the 3·5·5 positions of ‖x − μ‖²
        torch.testing.assert_close(y, (x - mu) / torch.sqrt(var + 1e-5))

    @pytest.mark.parametrize("dim,shape", [(-1, (10, 8)), (1, (3, 6, 4, 4))])
    def test_orthogonal_equivariant_in_training(self, dtype, dim, shape):
        x = _data(shape, dtype, dim=dim)
        bn = it.nn.IsoBatchNorm(shape[dim], dim=dim, dtype=dtype).train()
        with torch.no_grad():
            bn.weight.fill_(1.4)
        assert_equivariant(bn, x, "orthogonal", dim=dim)
        assert equivariance_error(bn, x, "positive_scaling", dim=dim) > NEGATIVE

    def test_eval_mode_equivariance(self, dtype):
        x = _data((10, 8), dtype)
        fresh = it.nn.IsoBatchNorm(8, dtype=dtype).eval()
        assert_equivariant(fresh, x, "orthogonal")  # running mean 0: equivariant in x alone
        trained = it.nn.IsoBatchNorm(8, dtype=dtype)
        trained(x + 2.0)
        trained.eval()
        # a running mean μ̂ ≠ 0 is a fixed vector: equivariance needs μ̂ → gμ̂ (a parameter symmetry)
        assert equivariance_error(trained, x, "orthogonal") > NEGATIVE
        g = it.groups.get("orthogonal").sample(8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        rotated = it.nn.IsoBatchNorm(8, dtype=dtype).eval()
        rotated.load_state_dict(trained.state_dict())
        with torch.no_grad():
            rotated.running_mean.copy_(it.groups.act(g, trained.running_mean.double()))
            lhs = rotated(it.groups.act(g, x).to(dtype))
            rhs = it.groups.act(g, trained(x).double())
        assert relative_error(lhs, rhs) < it.testing.tolerance(dtype)
        uncentred = it.nn.IsoBatchNorm(8, center=False, dtype=dtype)
        uncentred(x + 2.0)
        uncentred.eval()
        assert uncentred.running_mean is None and float(uncentred.running_var) != 8.0
        assert_equivariant(uncentred, x, "orthogonal")

    def test_batchnorm_controls_fail_orthogonal(self, dtype):
        bn1 = torch.nn.BatchNorm1d(8, dtype=dtype).train()
        assert equivariance_error(bn1, _data((16, 8), dtype), "orthogonal") > NEGATIVE
        bn2 = torch.nn.BatchNorm2d(6, dtype=dtype).train()
        assert equivariance_error(bn2, _data((3, 6, 4, 4), dtype, dim=1), "orthogonal", dim=1) > NEGATIVE

    def test_too_small_batch_in_training(self):
        bn = it.nn.IsoBatchNorm(4)
        for shape in [(0, 4), (1, 4)]:
            with pytest.raises(ValueError, match="more than one vector in training"):
                bn(torch.zeros(shape))
        bn.eval()
        assert bn(torch.zeros(0, 4)).shape == (0, 4) and bn(torch.ones(1, 4)).shape == (1, 4)

    def test_zero_batch_feature_size_one_and_no_affine(self):
        assert (it.nn.IsoBatchNorm(3)(torch.zeros(4, 3)) == 0).all()
        x = torch.tensor([[1.0], [3.0]])
        torch.testing.assert_close(IF.iso_batch_norm(x, training=True, eps=1e-12), torch.tensor([[-1.0], [1.0]]))
        assert it.nn.IsoBatchNorm(3, affine=False).weight is None

    def test_nan_training_poisons_batch_but_not_running_statistics(self):
        bn = it.nn.IsoBatchNorm(4)
        x = _data((5, 4), torch.float32)
        x[1, 2] = float("nan")
        assert torch.isnan(bn(x)).all()
        assert (bn.running_mean == 0).all() and float(bn.running_var) == 4.0
        bn.eval()
        out = bn(x)  # eval is a scalar affine map: NaN stays in its entry
        assert torch.isnan(out[1, 2]) and torch.isfinite(out[[0, 2, 3, 4]]).all()

    def test_half_precision(self):
        x = _data((16, 32), torch.float32)
        out = IF.iso_batch_norm(x.bfloat16(), training=True)
        assert out.dtype == torch.bfloat16
        assert relative_error(out, IF.iso_batch_norm(x.bfloat16().float(), training=True)) < 1e-2

    @given(
        seed=st.integers(0, 2**16),
        count=st.integers(2, 6),
        n=st.integers(1, 5),
        log_scale=st.integers(-30, 30),
        zero_batch=st.booleans(),
    )
    def test_property_matches_float64_reference(self, seed, count, n, log_scale, zero_batch):
        x = _batch_case(seed, count, n, log_scale)
        if zero_batch:
            x = x * 0
        out = IF.iso_batch_norm(x.float(), training=True, eps=1e-6)
        assert torch.isfinite(out).all()
        c = x.float().double() - x.float().double().mean(0)
        reference = c / torch.sqrt(c.pow(2).sum(-1).mean() + 1e-6)
        torch.testing.assert_close(out.double(), reference, rtol=1e-4, atol=1e-5)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="num_features = 4"):
            it.nn.IsoBatchNorm(4)(torch.ones(3, 5))
        with pytest.raises(ValueError, match=r"running_mean must have shape \(3,\)"):
            IF.iso_batch_norm(torch.ones(2, 3), torch.zeros(4), torch.tensor(1.0))
        with pytest.raises(ValueError, match="running_mean must be None when center=False"):
            IF.iso_batch_norm(torch.ones(2, 3), torch.zeros(3), torch.tensor(1.0), center=False)
        with pytest.raises(ValueError, match=r"running_var .* required"):
            IF.iso_batch_norm(torch.ones(2, 3))
        with pytest.raises(ValueError, match="weight must be a 0-d"):
            IF.iso_batch_norm(torch.ones(2, 3), weight=torch.ones(3), training=True)
        with pytest.raises(ValueError, match="eps must be in"):
            it.nn.IsoBatchNorm(4, eps=-1.0)
        with pytest.raises(TypeError, match="affine must be a bool"):
            it.nn.IsoBatchNorm(4, affine=1)
        with pytest.raises(TypeError, match="floating-point"):
            IF.iso_batch_norm(torch.ones(2, 3, dtype=torch.bool), training=True)

    def test_compiles_without_graph_breaks(self):
        mean, var = torch.zeros(4), torch.ones(())
        compiled = torch.compile(IF.iso_batch_norm, fullgraph=True, backend="eager")
        x = _data((5, 4), torch.float32)
        torch.testing.assert_close(compiled(x, mean, var, training=True), IF.iso_batch_norm(x, training=True))
        assert float(var) != 1.0
