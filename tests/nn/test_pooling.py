"""Tests for NormMaxPool2d / norm_max_pool2d: keep the channel vector of largest norm in each window."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import isotorch as it
from isotorch import functional as IF
from isotorch.testing import assert_equivariant, equivariance_error

NEGATIVE = 1e-3


def _reference(x, kernel, stride, padding, dilation=1, ceil_mode=False):
    """Loop implementation: per window, the first site (row-major) of strictly largest norm, in float64."""
    out_h, out_w = F.max_pool2d(x[:, :1].double(), kernel, stride, padding, dilation, ceil_mode).shape[-2:]
    norms = x.double().norm(dim=1)
    out = torch.empty(x.shape[0], x.shape[1], out_h, out_w, dtype=x.dtype)
    for b in range(x.shape[0]):
        for i in range(out_h):
            for j in range(out_w):
                best, site = -1.0, None
                for a in range(kernel):
                    for c in range(kernel):
                        r, s = i * stride - padding + a * dilation, j * stride - padding + c * dilation
                        if 0 <= r < x.shape[2] and 0 <= s < x.shape[3] and norms[b, r, s] > best:
                            best, site = float(norms[b, r, s]), (r, s)
                out[b, :, i, j] = x[b, :, site[0], site[1]]
    return out


class TestNormMaxPool2d:
    def test_module_attributes(self):
        pool = it.nn.NormMaxPool2d(3, stride=2, padding=1)
        assert repr(pool) == "NormMaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)"
        assert pool.role == "pool" and pool.dim == 1 and pool.groups == ("orthogonal",)
        assert pool(torch.randn(2, 4, 7, 7)).shape == torch.nn.MaxPool2d(3, 2, 1)(torch.randn(2, 4, 7, 7)).shape

    @pytest.mark.parametrize(
        "kernel,stride,padding,dilation,ceil_mode",
        [(2, 2, 0, 1, False), (3, 1, 1, 1, False), (3, 2, 1, 1, True), (2, 1, 0, 2, False)],
    )
    def test_matches_loop_reference(self, kernel, stride, padding, dilation, ceil_mode):
        x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
        out = IF.norm_max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
        torch.testing.assert_close(out, _reference(x, kernel, stride, padding, dilation, ceil_mode))

    def test_orthogonal_equivariant_on_channels(self, dtype):
        x = torch.randn(2, 6, 8, 8, dtype=dtype)
        pool = it.nn.NormMaxPool2d(2)
        assert_equivariant(pool, x, "orthogonal", dim=1)
        assert equivariance_error(pool, x, "positive_scaling", dim=1) > NEGATIVE

    def test_per_channel_max_pool_fails_orthogonal(self, dtype):
        x = torch.randn(2, 6, 8, 8, dtype=dtype)
        assert equivariance_error(torch.nn.MaxPool2d(2), x, "orthogonal", dim=1) > NEGATIVE

    def test_gradient_flows_to_selected_vectors(self):
        x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
        IF.norm_max_pool2d(x, 2).sum().backward()
        norms = x.detach().norm(dim=1)[0]
        selected = torch.zeros(4, 4, dtype=torch.bool)
        for i in range(2):
            for j in range(2):
                window = norms[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
                a, c = divmod(int(window.argmax()), 2)
                selected[2 * i + a, 2 * j + c] = True
        torch.testing.assert_close(x.grad[0], selected.double().expand(3, 4, 4))

    def test_overlapping_windows_sum_gradients(self):
        x = torch.zeros(1, 2, 1, 3, requires_grad=True)
        with torch.no_grad():
            x[0, :, 0, 1] = torch.tensor([3.0, 4.0])  # the centre site wins both windows
        IF.norm_max_pool2d(x, (1, 2), stride=1).sum().backward()
        assert x.grad[0, :, 0, 1].tolist() == [2.0, 2.0] and float(x.grad.abs().sum()) == 4.0

    def test_ties_go_to_first_site_in_row_major_order(self):
        x = torch.zeros(1, 2, 2, 2)
        x[0, :, 0, 1] = torch.tensor([0.0, 1.0])
        x[0, :, 1, 0] = torch.tensor([1.0, 0.0])
        x[0, :, 1, 1] = torch.tensor([-0.6, 0.8])
        assert IF.norm_max_pool2d(x, 2).flatten().tolist() == [0.0, 1.0]

    def test_nan_spreads_only_to_windows_containing_it(self):
        x = torch.randn(1, 3, 4, 4)
        x[0, 1, 0, 0] = float("nan")
        out = IF.norm_max_pool2d(x, 2)
        assert torch.isnan(out[0, :, 0, 0]).any() and torch.isfinite(out[0, :, 1:]).all()
        assert torch.isfinite(out[0, :, 0, 1]).all()

    def test_single_channel_is_max_abs_pooling_and_empty_batch(self):
        x = torch.tensor([[[[1.0, -3.0], [2.0, 0.5]]]])
        assert IF.norm_max_pool2d(x, 2).item() == -3.0
        assert IF.norm_max_pool2d(torch.zeros(0, 3, 4, 4), 2).shape == (0, 3, 2, 2)

    def test_huge_norms_are_compared_without_overflow(self):
        x = torch.zeros(1, 2, 1, 2)
        x[0, :, 0, 0] = torch.tensor([2.5e38, 0.0])  # norm 2.5e38
        x[0, :, 0, 1] = torch.tensor([2e38, 2e38])  # norm 2.8e38; naive squares overflow both to inf (a tie)
        assert torch.equal(IF.norm_max_pool2d(x, (1, 2)).flatten(), x[0, :, 0, 1])

    @pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
    def test_half_precision(self, half):
        x = torch.randn(2, 4, 6, 6)
        out = IF.norm_max_pool2d(x.to(half), 2)
        assert out.dtype == half
        torch.testing.assert_close(out, _reference(x.to(half).float(), 2, 2, 0).to(half))

    @given(
        seed=st.integers(0, 2**16),
        channels=st.integers(1, 4),
        size=st.integers(2, 6),
        kernel=st.integers(1, 3),
        stride=st.integers(1, 3),
        log_scale=st.sampled_from([-30, 0, 30]),
        zero_site=st.booleans(),
    )
    def test_property_matches_reference(self, seed, channels, size, kernel, stride, log_scale, zero_site):
        kernel = min(kernel, size)
        x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 10.0**log_scale
        if zero_site:
            x[:, :, 0, 0] = 0.0
        padding = kernel // 2
        out = IF.norm_max_pool2d(x, kernel, stride, padding)
        torch.testing.assert_close(out, _reference(x, kernel, stride, padding), rtol=0, atol=0)

    def test_bad_input(self):
        with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\)"):
            IF.norm_max_pool2d(torch.randn(3, 4, 4), 2)
        with pytest.raises(TypeError, match="floating-point"):
            IF.norm_max_pool2d(torch.ones(1, 3, 4, 4, dtype=torch.int64), 2)
        with pytest.raises(ValueError, match="no channels"):
            IF.norm_max_pool2d(torch.ones(1, 0, 4, 4), 2)
        with pytest.raises(TypeError, match="ceil_mode must be a bool"):
            IF.norm_max_pool2d(torch.ones(1, 2, 4, 4), 2, ceil_mode=1)
        with pytest.raises(RuntimeError, match="pad should be"):  # max_pool2d's own message names the argument
            IF.norm_max_pool2d(torch.ones(1, 2, 4, 4), 2, padding=2)

    def test_compiles_without_graph_breaks(self):
        compiled = torch.compile(IF.norm_max_pool2d, fullgraph=True, backend="eager")
        x = torch.randn(2, 3, 6, 6)
        torch.testing.assert_close(compiled(x, 2), IF.norm_max_pool2d(x, 2))
