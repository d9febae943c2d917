"""Tests for IsoGate / iso_gate: the isotropic analogue of GLU, a scalar gate per vector."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import isotorch as it
from isotorch import functional as IF
from isotorch.testing import relative_error, tolerance

NEGATIVE = 1e-3
GATE_MODES = ("norm", "inner")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _joint_error(module, inp, group, *, dim=-1, trials=4, seed=0):
    """Max over random g of rel(module(cat(g·a, g·b)), g·module(cat(a, b))), g acting on each half along dim."""
    half = inp.shape[dim] // 2
    a, b = inp.chunk(2, dim)
    group = it.groups.get(group)
    worst = 0.0
    with torch.no_grad():
        out = module(inp)
        for _ in range(trials):
            g = group.sample(half, generator=_gen(seed + _), dtype=torch.float64)
            moved = torch.cat([it.groups.act(g, a, dim), it.groups.act(g, b, dim)], dim).to(inp.dtype)
            worst = max(worst, relative_error(module(moved), it.groups.act(g, out.double(), dim)))
    return worst


def _independent_error(mode, x, y, trials=4):
    """Max over random g, h ∈ O(n) of rel(iso_gate(g·x, h·y), g·iso_gate(x, y))."""
    worst = 0.0
    out = IF.iso_gate(x, y, mode=mode)
    group = it.groups.get("orthogonal")
    for seed in range(trials):
        g = group.sample(x.shape[-1], generator=_gen(2 * seed), dtype=torch.float64)
        h = group.sample(x.shape[-1], generator=_gen(2 * seed + 1), dtype=torch.float64)
        gx, hy = it.groups.act(g, x).to(x.dtype), it.groups.act(h, y).to(y.dtype)
        worst = max(worst, relative_error(IF.iso_gate(gx, hy, mode=mode), it.groups.act(g, out.double())))
    return worst


def _reference(x, y, mode, profile, offset=None):
    x, y = x.double(), y.double()
    n = x.shape[-1]
    if mode == "norm":
        t = y.norm(dim=-1, keepdim=True) - (math.sqrt(n) if offset is None else offset)
    else:
        t = (x * y).sum(-1, keepdim=True) / math.sqrt(n) - (0.0 if offset is None else offset)
    phi = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": torch.nn.functional.silu, "identity": lambda s: s}
    return x * phi[profile](t)


class TestIsoGate:
    def test_module_attributes_and_split(self):
        gate = it.nn.IsoGate(profile="tanh", offset=0.5)
        assert repr(gate) == "IsoGate(dim=-1, profile='tanh', mode='norm', offset=0.5)"
        assert gate.role == "gate" and gate.dim == -1 and gate.groups == ("orthogonal",)
        assert list(gate.parameters()) == []
        z = torch.randn(3, 10, dtype=torch.float64)
        torch.testing.assert_close(gate(z), _reference(z[:, :5], z[:, 5:], "norm", "tanh", 0.5))
        assert repr(it.nn.IsoGate(profile=torch.relu)) == "IsoGate(dim=-1, profile='relu', mode='norm', offset=None)"

    @pytest.mark.parametrize("mode", GATE_MODES)
    @pytest.mark.parametrize("profile", ["sigmoid", "tanh", "silu", "identity"])
    def test_formula(self, mode, profile):
        x, y = torch.randn(2, 6, 5, dtype=torch.float64).unbind(0)
        torch.testing.assert_close(IF.iso_gate(x, y, mode=mode, profile=profile), _reference(x, y, mode, profile))
        torch.testing.assert_close(
            IF.iso_gate(x, y, mode=mode, profile=profile, offset=-0.7), _reference(x, y, mode, profile, -0.7)
        )

    def test_callable_profile_and_learnable_offset(self):
        x, y = torch.randn(2, 4, 3, dtype=torch.float64).unbind(0)
        offset = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        out = IF.iso_gate(x, y, profile=torch.special.expit, offset=offset)
        torch.testing.assert_close(out, _reference(x, y, "norm", "sigmoid", 1.0))
        out.sum().backward()
        assert offset.grad is not None and float(offset.grad) != 0.0

    @pytest.mark.parametrize("mode", GATE_MODES)
    @pytest.mark.parametrize("dim,shape", [(-1, (6, 10)), (1, (2, 8, 3, 3))])
    def test_joint_rotation_equivariant(self, dtype, mode, dim, shape):
        gate = it.nn.IsoGate(dim=dim, mode=mode)
        z = torch.randn(shape, dtype=dtype) * 1.5
        assert _joint_error(gate, z, "orthogonal", dim=dim) < tolerance(dtype)
        assert _joint_error(gate, z, "positive_scaling", dim=dim) > NEGATIVE

    def test_glu_fails_joint_rotation(self, dtype):
        z = torch.randn(6, 10, dtype=dtype)
        glu = torch.nn.GLU(dim=-1)
        assert _joint_error(glu, z, "permutation") < tolerance(dtype)  # GLU's group: one permutation on both
        assert _joint_error(glu, z, "orthogonal") > NEGATIVE

    def test_norm_mode_allows_independent_rotations(self, dtype):
        x, y = (torch.randn(2, 6, 5, dtype=torch.float64) * 2).to(dtype).unbind(0)
        assert _independent_error("norm", x, y) < tolerance(dtype)
        assert _independent_error("inner", x, y) > NEGATIVE  # the inner product needs the same rotation

    def test_zero_gate_input_has_finite_gradient(self):
        x = torch.randn(3, 4, requires_grad=True)
        y = torch.zeros(3, 4, requires_grad=True)
        out = IF.iso_gate(x, y)
        out.sum().backward()
        torch.testing.assert_close(out, x.detach() * torch.sigmoid(torch.tensor(-2.0)))
        assert torch.isfinite(y.grad).all() and torch.isfinite(x.grad).all()

    def test_nan_row_is_confined(self):
        x, y = torch.randn(2, 4, 5).unbind(0)
        clean = IF.iso_gate(x, y, mode="inner")
        y[2, 1] = float("nan")
        for mode in GATE_MODES:
            out = IF.iso_gate(x, y, mode=mode)
            assert torch.isnan(out[2]).all()
            torch.testing.assert_close(out[[0, 1, 3]], IF.iso_gate(x, y.nan_to_num(), mode=mode)[[0, 1, 3]])
        assert torch.isfinite(clean).all()

    @pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
    def test_half_precision(self, half):
        x, y = torch.randn(2, 4, 64).unbind(0)
        for mode in GATE_MODES:
            out = IF.iso_gate(x.to(half), y.to(half), mode=mode)
            assert out.dtype == half
            reference = _reference(x.to(half), y.to(half), mode, "sigmoid")
            assert relative_error(out, reference) < (2e-3 if half == torch.float16 else 1e-2)

    @given(
        seed=st.integers(0, 2**16),
        count=st.integers(0, 4),
        n=st.integers(1, 6),
        mode=st.sampled_from(GATE_MODES),
        profile=st.sampled_from(["sigmoid", "tanh"]),
        log_scale=st.sampled_from([-30, 0, 30]),
        zero_row=st.booleans(),
    )
    def test_property_matches_float64_reference(self, seed, count, n, mode, profile, log_scale, zero_row):
        x, y = (torch.randn(2, count, n, generator=_gen(seed)) * 10.0**log_scale).unbind(0)
        if zero_row and count:
            x[0], y[0] = 1.0, 0.0
        out = IF.iso_gate(x, y, mode=mode, profile=profile)
        assert out.shape == x.shape and torch.isfinite(out).all()
        torch.testing.assert_close(
            out.double(), _reference(x, y, mode, profile), rtol=1e-5, atol=1e-6 * 10.0**log_scale
        )

    def test_bad_input(self):
        x = torch.randn(3, 4)
        with pytest.raises(ValueError, match="same shape and dtype"):
            IF.iso_gate(x, torch.randn(3, 5))
        with pytest.raises(ValueError, match="same shape and dtype"):
            IF.iso_gate(x, x.double())
        with pytest.raises(TypeError, match="y must be a floating-point"):
            IF.iso_gate(x, torch.ones(3, 4, dtype=torch.int64))
        with pytest.raises(ValueError, match="profile must be one of"):
            IF.iso_gate(x, x, profile="relu")
        with pytest.raises(ValueError, match="mode must be one of"):
            IF.iso_gate(x, x, mode="bilinear")
        with pytest.raises(ValueError, match="offset must be"):
            IF.iso_gate(x, x, offset="1")
        with pytest.raises(ValueError, match="must be even"):
            it.nn.IsoGate()(torch.randn(3, 5))
        with pytest.raises(ValueError, match="profile must be one of"):
            it.nn.IsoGate(profile="swish")
        with pytest.raises(ValueError, match="dim=2 is out of range"):
            it.nn.IsoGate(dim=2)(x)

    @pytest.mark.parametrize("mode", GATE_MODES)
    def test_compiles_without_graph_breaks(self, mode):
        compiled = torch.compile(IF.iso_gate, fullgraph=True, backend="eager")
        x, y = torch.randn(2, 3, 4).unbind(0)
        torch.testing.assert_close(compiled(x, y, mode=mode), IF.iso_gate(x, y, mode=mode))
