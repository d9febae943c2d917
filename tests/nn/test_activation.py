"""Tests for isotorch._functional.activation and isotorch.nn.activation."""

from __future__ import annotations

import functools
import math

import mpmath
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from isotorch import groups
from isotorch._functional.activation import _iso_formula, _relu_profile
from isotorch.functional import (
    PROFILES,
    Profile,
    block_iso_activation,
    direction_activation,
    iso_activation,
    iso_relu,
    iso_tanh,
)
from isotorch.nn import (
    BlockIsotropicActivation,
    DirectionActivation,
    IsoReLU,
    IsoTanh,
    IsotropicActivation,
)
from isotorch.testing import assert_equivariant, equivariance_error, tolerance

SMOOTH = ("tanh", "log1p", "softsign")
# PyTorch-internal deprecation warnings (not isotorch's): forward AD loads jit-scripted decompositions on first use,
# and dynamo instantiates autograd.Function for the ctx of a custom Function.
FORWARD_AD_WARNING = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
DYNAMO_CTX_WARNING = "ignore:<class 'torch.autograd.function.Function'> should not be instantiated:DeprecationWarning"
INDUCTOR_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
# σ(r) and σ'(0) in float64 for a reference computed without any of the library's branches
REFERENCE = {
    "tanh": (torch.tanh, 1.0),
    "log1p": (torch.log1p, 1.0),
    "softsign": (lambda r: r / (1 + r), 1.0),
    "relu": (lambda r: torch.clamp(r - 1.0, min=0.0), 0.0),
}


def reference(x: torch.Tensor, profile: str, dim: int = -1, length: float = 0.0) -> torch.Tensor:
    """σ(ρ)/ρ · x in float64 by the textbook formula (only valid away from ρ = 0)."""
    x64 = x.to(torch.float64)
    rho = (x64.pow(2).sum(dim, keepdim=True) + length).sqrt()
    return REFERENCE[profile][0](rho) / rho * x64


def random_radii(shape, radii, dtype, generator, dim=-1):
    """Random directions with the given norms along dim (one norm per vector, cycling through radii)."""
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    x = x / x.norm(dim=dim, keepdim=True)
    n_vec = x.numel() // x.shape[dim]
    r = torch.tensor([radii[i % len(radii)] for i in range(n_vec)], dtype=torch.float64)
    moved = x.movedim(dim, -1)
    r = r.reshape((*moved.shape[:-1], 1))
    return (moved * r).movedim(-1, dim).to(dtype)


# ------------------------------------------------------------------------------------------------ values


@pytest.mark.parametrize("profile", [*SMOOTH, "relu"])
def test_iso_activation_matches_reference(profile, dtype, generator):
    x = random_radii((12, 7), [1e-3, 0.05, 0.3, 0.9, 1.5, 3.0, 12.0, 80.0], dtype, generator)
    got = iso_activation(x, profile)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got.to(torch.float64), reference(x, profile), rtol=10 * tolerance(dtype), atol=1e-12)


@pytest.mark.parametrize("profile", SMOOTH)
def test_norm_and_direction(profile, dtype, generator):
    x = torch.randn(20, 6, generator=generator, dtype=dtype) * 3
    y = iso_activation(x, profile)
    r = x.to(torch.float64).norm(dim=-1)
    torch.testing.assert_close(y.to(torch.float64).norm(dim=-1), REFERENCE[profile][0](r), rtol=1e-5, atol=0)
    cos = torch.nn.functional.cosine_similarity(x.to(torch.float64), y.to(torch.float64), dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-6)


def test_iso_tanh_is_iso_activation_tanh(generator):
    x = torch.randn(4, 9, generator=generator)
    assert torch.equal(iso_tanh(x), iso_activation(x, "tanh"))
    assert torch.equal(iso_tanh(x, 0), iso_activation(x, "tanh", dim=0))


def test_saturated_tanh_fills_unit_ball(generator):
    x = torch.randn(6, 5, generator=generator, dtype=torch.float64) * 100
    norms = iso_tanh(x).norm(dim=-1)
    assert torch.all(norms <= 1 + 1e-12) and torch.allclose(norms, torch.ones_like(norms))


@pytest.mark.filterwarnings(FORWARD_AD_WARNING)
@pytest.mark.parametrize("profile", [*SMOOTH, "relu"])
def test_zero_vector_value_and_jacobian(profile, dtype):
    x = torch.zeros(1, 5, dtype=dtype)
    assert torch.equal(iso_activation(x, profile), x)
    expected = REFERENCE[profile][1] * torch.eye(5, dtype=dtype)
    xr = x.clone().requires_grad_()
    y = iso_activation(xr, profile)
    rows = [torch.autograd.grad(y[0, i], xr, retain_graph=True)[0][0] for i in range(5)]
    for jac in (
        torch.stack(rows),
        torch.func.jacrev(lambda t: iso_activation(t, profile))(x).reshape(5, 5),
        torch.func.jacfwd(lambda t: iso_activation(t, profile))(x).reshape(5, 5),
    ):
        assert torch.equal(jac, expected)


def test_iso_relu_zero_inside_ball_and_shrinks_outside(dtype, generator):
    x = random_radii((8, 4), [0.2, 0.9, 1.5, 4.0], dtype, generator)
    y = iso_relu(x, radius=1.0)
    norms = x.to(torch.float64).norm(dim=-1)
    torch.testing.assert_close(y.to(torch.float64).norm(dim=-1), torch.clamp(norms - 1, min=0), rtol=1e-5, atol=1e-6)
    y2 = iso_relu(x, radius=2.0)
    torch.testing.assert_close(y2.to(torch.float64).norm(dim=-1), torch.clamp(norms - 2, min=0), rtol=1e-5, atol=1e-6)
    assert torch.equal(iso_relu(x), iso_activation(x, "relu"))


@pytest.mark.parametrize("radius", [0, 0.0, -1.0, math.inf, math.nan])
def test_iso_relu_rejects_nonpositive_radius(radius):
    with pytest.raises(ValueError, match="radius"):
        iso_relu(torch.randn(2, 3), radius=radius)
    with pytest.raises(ValueError, match="radius"):
        IsoReLU(radius=radius)


@pytest.mark.parametrize("radius", [True, "1", None])
def test_iso_relu_rejects_non_numbers(radius):
    with pytest.raises(TypeError, match="radius"):
        iso_relu(torch.randn(2, 3), radius=radius)


# -------------------------------------------------------------------------------------------- profiles


MP_SIGMA = {"tanh": mpmath.tanh, "log1p": mpmath.log1p, "softsign": lambda r: r / (1 + r)}


def _mp_ratio_and_slope(name: str, r: float) -> tuple[float, float]:
    """g(r) = σ(r)/r and g'(r) at 60 significant digits (mpmath)."""
    with mpmath.workdps(60):
        rr = mpmath.mpf(r)
        g = MP_SIGMA[name](rr) / rr
        dg = mpmath.diff(lambda t: MP_SIGMA[name](t) / t, rr)
        return float(g), float(dg)


@pytest.mark.parametrize("name", SMOOTH)
@pytest.mark.parametrize("dtype_", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_taylor_and_direct_branches_are_accurate(name, dtype_):
    """g and g' on both sides of the cutoff, against 60-digit references: relative error of a few eps."""
    prof = PROFILES[name]
    c = prof.cutoff(dtype_)
    radii = [0.0, c * 1e-3, c * 0.5, c * 0.999, c * (1 - 1e-6), c * (1 + 1e-6), c * 1.001, c * 2, 0.5, 3.0, 25.0]
    r = torch.tensor(radii, dtype=dtype_)
    g, dg = prof.ratio_and_slope(r)
    eps = torch.finfo(dtype_).eps
    for i, radius in enumerate(r.tolist()):
        g_ref, dg_ref = (1.0, prof.taylor[1]) if radius == 0 else _mp_ratio_and_slope(name, radius)
        assert abs(float(g[i]) - g_ref) <= 4 * eps * abs(g_ref), (radius, float(g[i]), g_ref)
        # g' = (σ' − g)/r: the direct branch loses ~eps/r² relative to g' = O(r) just above the cutoff
        bound = 8 * eps * abs(dg_ref) + 4 * eps / max(radius, c)
        assert abs(float(dg[i]) - dg_ref) <= bound, (radius, float(dg[i]), dg_ref)


def test_profile_table_and_taylor_coefficients():
    assert set(PROFILES) >= {"tanh", "log1p", "softsign", "relu"}
    assert PROFILES["tanh"].taylor[:5] == (1.0, 0.0, -1 / 3, 0.0, 2 / 15)
    assert PROFILES["log1p"].taylor[:3] == (1.0, -0.5, 1 / 3)
    assert PROFILES["softsign"].taylor[:3] == (1.0, -1.0, 1.0)
    for prof in PROFILES.values():
        assert prof.cutoff(torch.float16) == prof.cutoff(torch.bfloat16) == prof.cutoff(torch.float32)
        assert 0 < prof.cutoff(torch.float64) <= prof.cutoff(torch.float32)
    assert _relu_profile(2.5) is _relu_profile(2.5)
    assert _relu_profile(2.5).cutoff(torch.float64) == 2.5


def test_unknown_profile_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown profile 'sigmoid'.*tanh, log1p, softsign, relu"):
        iso_activation(torch.randn(2, 3), "sigmoid")
    with pytest.raises(ValueError, match="tanh"):
        IsotropicActivation("nope")
    with pytest.raises(TypeError, match="profile"):
        iso_activation(torch.randn(2, 3), 3)


def test_profile_validation():
    with pytest.raises(ValueError, match="taylor"):
        Profile("bad", torch.tanh, torch.tanh, ())
    with pytest.raises(ValueError, match="taylor"):
        Profile("bad", torch.tanh, torch.tanh, (1.0, math.nan))
    with pytest.raises(ValueError, match="validity"):
        Profile("bad", torch.tanh, torch.tanh, (1.0,), validity=0.0)
    with pytest.raises(TypeError, match="callables"):
        Profile("bad", 1.0, torch.tanh, (1.0,))


def test_custom_profile_and_callable(generator):
    """A user Profile runs the custom backward; a bare callable runs the autograd formula path."""
    arctan = Profile("arctan", torch.atan, lambda r: 1 / (1 + r * r), (1.0, 0.0, -1 / 3, 0.0, 1 / 5, 0.0, -1 / 7))
    x = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: iso_activation(t, arctan), (x,))
    assert torch.autograd.gradcheck(lambda t: iso_activation(t, torch.atan), (x,))
    torch.testing.assert_close(iso_activation(x, arctan), iso_activation(x, torch.atan))
    z = torch.zeros(1, 4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: iso_activation(t, torch.atan), z).reshape(4, 4)
    torch.testing.assert_close(jac, torch.eye(4, dtype=torch.float64))


def test_callable_must_return_tensor():
    with pytest.raises(TypeError, match="return a tensor"):
        iso_activation(torch.randn(2, 3), lambda r: 1.0)


# ------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("profile", [*SMOOTH, "relu"])
def test_gradcheck_random_points(profile, generator):
    x = random_radii((6, 5), [0.4, 0.7, 1.6, 2.5, 5.0, 30.0], torch.float64, generator).requires_grad_()
    fn = functools.partial(iso_activation, profile=profile)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("profile", SMOOTH)
@pytest.mark.parametrize("where", [0.999, 1.001, 0.3, 1e-4, 3.0])
def test_gradcheck_around_cutoff(profile, where, generator):
    c = PROFILES[profile].cutoff(torch.float64)
    x = random_radii((3, 4), [c * where], torch.float64, generator).requires_grad_()
    fn = functools.partial(iso_activation, profile=profile)
    # finite differences must stay on one side of the origin (log1p and softsign are only C¹ there)
    eps = min(1e-6, c * where / 100)
    assert torch.autograd.gradcheck(fn, (x,), eps=eps)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=eps)


@pytest.mark.parametrize("profile", ["tanh", "softsign"])
def test_gradcheck_at_zero(profile):
    x = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    fn = functools.partial(iso_activation, profile=profile)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("profile", [*SMOOTH, "relu"])
def test_custom_backward_matches_independent_jacobian(profile, dtype, generator):
    """J(x) = σ'(r) x̂x̂ᵀ + g(r)(I − x̂x̂ᵀ), in float64 from the textbook formula, vs the custom backward."""
    x = random_radii((7, 4), [0.01, 0.1, 0.25, 0.6, 1.7, 5.0, 40.0], dtype, generator)
    sigma = REFERENCE[profile][0]
    x64 = x.to(torch.float64)
    r = x64.norm(dim=-1, keepdim=True)
    u = x64 / r
    s = r.clone().requires_grad_()
    (ds,) = torch.autograd.grad(sigma(s).sum(), s)
    g = sigma(r) / r
    eye = torch.eye(4, dtype=torch.float64)
    outer = u.unsqueeze(-1) * u.unsqueeze(-2)
    expected = ds.unsqueeze(-1) * outer + g.unsqueeze(-1) * (eye - outer)
    got = torch.func.vmap(torch.func.jacrev(lambda t: iso_activation(t, profile)))(x)
    torch.testing.assert_close(got.to(torch.float64), expected, rtol=0, atol=50 * tolerance(dtype))


def test_intrinsic_length_values_and_gradients(dtype, generator):
    x = torch.randn(5, 6, generator=generator, dtype=dtype)
    for o in (1e-6, 0.3, 4.0):
        torch.testing.assert_close(
            iso_activation(x, "tanh", length=o).to(torch.float64), reference(x, "tanh", length=o), rtol=1e-5, atol=1e-7
        )
    z = torch.zeros(1, 3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: iso_activation(t, "tanh", length=0.25), z).reshape(3, 3)
    torch.testing.assert_close(jac, math.tanh(0.5) / 0.5 * torch.eye(3, dtype=torch.float64))
    x64 = x.to(torch.float64).requires_grad_()
    o = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    fn = functools.partial(iso_activation, profile="log1p")
    assert torch.autograd.gradcheck(lambda a, b: fn(a, length=b), (x64, o))
    assert torch.autograd.gradgradcheck(lambda a, b: fn(a, length=b), (x64, o))
    assert torch.equal(iso_activation(x, length=0.0), iso_activation(x))


@pytest.mark.parametrize("length", [-1.0, math.inf, math.nan, torch.ones(2), torch.tensor(1)])
def test_bad_length_raises(length):
    with pytest.raises((ValueError, TypeError), match="length"):
        iso_activation(torch.randn(2, 3), length=length)


def test_saves_input_and_one_scalar_per_vector():
    x = torch.randn(6, 10, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = iso_tanh(x)
    assert sum(t.numel() for t in saved) == x.numel() + 6
    assert any(t is x for t in saved)
    y.sum().backward()


# ------------------------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("profile", ["tanh", "softsign", "log1p"])
def test_huge_norms_do_not_overflow(profile):
    x = torch.full((3, 16), 1e30)
    x[1] = -1e30
    x[2] = 1.0
    x.requires_grad_()
    y = iso_activation(x, profile)
    assert torch.isfinite(y).all()
    norms = y.detach().to(torch.float64).norm(dim=-1)
    expected = REFERENCE[profile][0](torch.tensor([4e30, 4e30, 4.0], dtype=torch.float64))
    torch.testing.assert_close(norms, expected, rtol=1e-5, atol=0)
    assert torch.equal(torch.sign(y[1]), -torch.ones(16))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    x64 = torch.full((2, 4), 1e200, dtype=torch.float64)
    torch.testing.assert_close(iso_tanh(x64).norm(dim=-1), torch.ones(2, dtype=torch.float64))


def test_huge_norms_conv_map_dim1():
    x = torch.randn(2, 8, 3, 3)
    x[0, :, 1, 1] = 1e30
    y = iso_tanh(x, dim=1)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[0, :, 1, 1].norm(), torch.tensor(1.0))
    torch.testing.assert_close(y[1], iso_tanh(x[1:2], dim=1)[0])


def test_nan_stays_in_its_row():
    x = torch.randn(4, 5)
    x[1, 3] = math.nan
    x.requires_grad_()
    y = iso_tanh(x)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2, 3]]).all()
    y.sum().backward()
    assert torch.isnan(x.grad[1]).all() and torch.isfinite(x.grad[[0, 2, 3]]).all()


def test_dim_of_size_one_is_elementwise_odd_extension(dtype, generator):
    x = torch.randn(7, 1, generator=generator, dtype=dtype) * 2
    torch.testing.assert_close(iso_tanh(x), torch.tanh(x), rtol=2 * tolerance(dtype), atol=0)
    torch.testing.assert_close(iso_activation(x, "log1p"), torch.sign(x) * torch.log1p(x.abs()))


def test_empty_batch_and_empty_features():
    x = torch.randn(0, 8, requires_grad=True)
    y = iso_tanh(x)
    assert y.shape == (0, 8)
    y.sum().backward()
    assert x.grad.shape == (0, 8)
    assert iso_tanh(torch.randn(3, 0)).shape == (3, 0)
    assert block_iso_activation(torch.randn(0, 4), 2).shape == (0, 4)
    assert direction_activation(torch.randn(0, 3), torch.eye(3)).shape == (0, 3)


@pytest.mark.parametrize("profile", [*SMOOTH, "relu"])
def test_conv_map_dim1_matches_channels_last_layout(profile, dtype, generator):
    x = torch.randn(2, 6, 5, 5, generator=generator, dtype=dtype) * 1.5
    y = iso_activation(x, profile, dim=1)
    y_last = iso_activation(x.movedim(1, -1), profile).movedim(-1, 1)
    torch.testing.assert_close(y, y_last, rtol=4 * tolerance(dtype), atol=1e-7)
    # gradients through the strided (buffer-reusing) eager path agree with the autograd formula path
    xr = x.clone().requires_grad_()
    grad = torch.randn(x.shape, generator=generator, dtype=dtype)
    (g1,) = torch.autograd.grad(iso_activation(xr, profile, dim=1), xr, grad)
    prof = PROFILES[profile]
    (g2,) = torch.autograd.grad(_iso_formula(xr, prof, 1, None), xr, grad)
    torch.testing.assert_close(g1, g2, rtol=10 * tolerance(dtype), atol=10 * tolerance(dtype))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(half, generator):
    x32 = torch.randn(6, 32, generator=generator)
    x = x32.to(half).requires_grad_()
    y = iso_tanh(x)
    assert y.dtype == half
    torch.testing.assert_close(y.float(), iso_tanh(x.detach().float()), rtol=tolerance(half), atol=tolerance(half))
    y.float().sum().backward()
    assert x.grad.dtype == half and torch.isfinite(x.grad).all()
    big = torch.full((2, 64), 3e4 if half == torch.float16 else 1e37, dtype=half)  # ‖x‖ > the dtype's max (f16)
    out = iso_tanh(big)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float().norm(dim=-1), torch.ones(2), rtol=1e-2, atol=0)
    assert block_iso_activation(x.detach(), 4).dtype == half


def test_input_validation():
    with pytest.raises(TypeError, match="x must be a floating-point"):
        iso_tanh(torch.arange(6).reshape(2, 3))
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        iso_tanh([1.0, 2.0])
    with pytest.raises(ValueError, match="dim=2 is out of range"):
        iso_tanh(torch.randn(2, 3), dim=2)
    with pytest.raises(ValueError, match="dim=-3"):
        iso_activation(torch.randn(2, 3), dim=-3)
    with pytest.raises(TypeError, match="dim must be an int"):
        iso_tanh(torch.randn(2, 3), dim=1.0)
    with pytest.raises(ValueError, match="at least one dimension"):
        iso_tanh(torch.tensor(1.0))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        direction_activation(torch.ones(2, 3, dtype=torch.int64), torch.eye(3))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        block_iso_activation(torch.ones(2, 4, dtype=torch.int32), 2)
    with pytest.raises(TypeError, match="dim"):
        IsoTanh(dim="1")


# ---------------------------------------------------------------------------------------- torch.func


@pytest.mark.filterwarnings(FORWARD_AD_WARNING)
def test_vmap_grad_jvp_and_hessian(generator):
    x = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(iso_tanh)(x), iso_tanh(x))
    torch.testing.assert_close(
        torch.func.vmap(functools.partial(iso_tanh, dim=0), in_dims=1, out_dims=1)(x), iso_tanh(x, 0)
    )
    prof = PROFILES["log1p"]

    def formula(t):
        return _iso_formula(t, prof, -1, None)

    def custom(t):
        return iso_activation(t, "log1p")

    tangent = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    _, jvp_custom = torch.func.jvp(custom, (x,), (tangent,))
    _, jvp_formula = torch.func.jvp(formula, (x,), (tangent,))
    torch.testing.assert_close(jvp_custom, jvp_formula)
    torch.testing.assert_close(
        torch.func.vmap(torch.func.jacrev(custom))(x), torch.func.vmap(torch.func.jacfwd(formula))(x)
    )
    v = x[0]
    torch.testing.assert_close(
        torch.func.hessian(lambda t: custom(t).sum())(v), torch.func.hessian(lambda t: formula(t).sum())(v)
    )
    grads = torch.func.vmap(torch.func.grad(lambda t: custom(t).pow(2).sum()))(x)
    assert torch.isfinite(grads).all()
    # a learnable length is differentiable under forward mode too
    o = torch.tensor(0.2, dtype=torch.float64)
    _, t1 = torch.func.jvp(
        lambda a, b: iso_activation(a, length=b), (x, o), (tangent, torch.tensor(1.0, dtype=torch.float64))
    )
    _, t2 = torch.func.jvp(
        lambda a, b: _iso_formula(a, PROFILES["tanh"], -1, b), (x, o), (tangent, torch.tensor(1.0, dtype=torch.float64))
    )
    torch.testing.assert_close(t1, t2)


def test_vmap_of_block_and_direction_activations(generator):
    x = torch.randn(4, 2, 6, generator=generator)
    torch.testing.assert_close(torch.func.vmap(lambda t: block_iso_activation(t, 3))(x), block_iso_activation(x, 3))
    v = torch.randn(9, 6, generator=generator)
    torch.testing.assert_close(torch.func.vmap(lambda t: direction_activation(t, v))(x), direction_activation(x, v))


# --------------------------------------------------------------------------------------- torch.compile


def _compile_target(x, o):
    return (
        iso_tanh(x).sum()
        + iso_activation(x, "log1p", length=o).sum()
        + iso_relu(x, 0.75).sum()
        + block_iso_activation(x, 2, "softsign").sum()
        + iso_tanh(x.reshape(2, 4, 4), dim=1).sum()
    )


@pytest.mark.filterwarnings(DYNAMO_CTX_WARNING)
def test_no_graph_breaks():
    x = torch.randn(4, 8, requires_grad=True)
    o = torch.tensor(0.1, requires_grad=True)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(_compile_target)(x, o)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.filterwarnings(DYNAMO_CTX_WARNING)
def test_compile_fullgraph_forward_backward_aot_eager():
    x = torch.randn(4, 8, requires_grad=True)
    o = torch.tensor(0.1, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(_compile_target, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, o), (x, o))
    expected = torch.autograd.grad(_compile_target(x, o), (x, o))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
@pytest.mark.filterwarnings(DYNAMO_CTX_WARNING)
@pytest.mark.filterwarnings(INDUCTOR_WARNING)
@pytest.mark.filterwarnings(FORWARD_AD_WARNING)
def test_compile_fullgraph_inductor():
    x = torch.randn(2, 6, 3, 3, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(functools.partial(iso_tanh, dim=1), fullgraph=True)
    grad = torch.randn_like(x)
    (g1,) = torch.autograd.grad(compiled(x), x, grad)
    (g2,) = torch.autograd.grad(iso_tanh(x, dim=1), x, grad)
    torch.testing.assert_close(compiled(x), iso_tanh(x, dim=1))
    torch.testing.assert_close(g1, g2)


# ---------------------------------------------------------------------------------- direction sets


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "silu", "sigmoid", "sin", "softsign"])
def test_standard_basis_equals_elementwise_exactly(activation, dtype, generator):
    x = torch.randn(5, 7, generator=generator, dtype=dtype)
    sigma = {
        "tanh": torch.tanh,
        "relu": torch.relu,
        "gelu": torch.nn.functional.gelu,
        "silu": torch.nn.functional.silu,
        "sigmoid": torch.sigmoid,
        "sin": torch.sin,
        "softsign": torch.nn.functional.softsign,
    }[activation]
    assert torch.equal(direction_activation(x, torch.eye(7, dtype=dtype), activation), sigma(x))
    xc = torch.randn(2, 7, 3, 3, generator=generator, dtype=dtype)
    channels_last = xc.movedim(1, -1).contiguous()  # the layout σ runs on (vectorised kernels may differ in the ulp)
    assert torch.equal(direction_activation(xc, torch.eye(7), activation, dim=1), sigma(channels_last).movedim(-1, 1))


def test_overcomplete_directions_formula(generator):
    v = torch.randn(17, 5, generator=generator, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    x = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    expected = sum(torch.tanh(x @ v[k])[:, None] * v[k] for k in range(17))
    torch.testing.assert_close(direction_activation(x, v), expected)
    cross = torch.cat([torch.eye(5), -torch.eye(5)]).to(torch.float64)
    torch.testing.assert_close(direction_activation(x, cross, "relu"), x)  # only the odd part survives: identity


def test_direction_set_validation():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="directions"):
        direction_activation(x, torch.eye(3))
    with pytest.raises(ValueError, match="directions"):
        direction_activation(x, torch.ones(4))
    with pytest.raises(ValueError, match="directions"):
        direction_activation(x, torch.ones(2, 2, 4))
    with pytest.raises(ValueError, match="directions"):
        direction_activation(x, torch.ones(0, 4))
    with pytest.raises(TypeError, match="directions"):
        direction_activation(x, torch.eye(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="directions"):
        DirectionActivation([[1.0]])
    with pytest.raises(ValueError, match="directions"):
        DirectionActivation(torch.ones(3))
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*tanh"):
        direction_activation(x, torch.eye(4), "swish")
    with pytest.raises(ValueError, match="directions"):
        DirectionActivation(torch.eye(3))(x)


@pytest.mark.parametrize(
    ("directions", "activation", "expected"),
    [
        (torch.eye(4), "tanh", ("signed_permutation",)),
        (-torch.eye(4), "tanh", ("signed_permutation",)),
        (torch.eye(4)[[2, 0, 3, 1]], "relu", ("permutation",)),
        (-torch.eye(4), "relu", ("permutation",)),
        (torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0])), "relu", ("trivial",)),
        (torch.cat([torch.eye(4), -torch.eye(4)]), "relu", ("signed_permutation",)),
        (torch.cat([torch.eye(4), torch.eye(4)]), "gelu", ("permutation",)),
        (torch.eye(4)[[0, 0, 1, 2, 3]], "tanh", ("trivial",)),
        (2 * torch.eye(4), "tanh", ("trivial",)),
        (torch.eye(4), torch.tanh, ("signed_permutation",)),
        (torch.eye(4), torch.relu, ("permutation",)),
    ],
)
def test_direction_groups(directions, activation, expected):
    assert DirectionActivation(directions, activation).groups == expected


def test_thomson_like_set_is_trivial_and_breaks_permutations(generator):
    v = torch.randn(9, 4, generator=generator)
    act = DirectionActivation(v / v.norm(dim=-1, keepdim=True))
    assert act.groups == ("trivial",)
    x = torch.randn(6, 4, generator=generator)
    assert equivariance_error(act, x, "permutation", generator=torch.Generator().manual_seed(1)) > 1e-3


# ------------------------------------------------------------------------------------ block-isotropic


def test_block_extremes(dtype, generator):
    x = torch.randn(3, 8, generator=generator, dtype=dtype) * 2
    torch.testing.assert_close(block_iso_activation(x, 1), torch.tanh(x), rtol=2 * tolerance(dtype), atol=0)
    torch.testing.assert_close(block_iso_activation(x, 1, "log1p"), torch.sign(x) * torch.log1p(x.abs()))
    assert torch.equal(block_iso_activation(x, 8), iso_tanh(x))
    blocks = x.reshape(3, 4, 2)
    torch.testing.assert_close(block_iso_activation(x, 2), iso_tanh(blocks).reshape(3, 8))
    xc = torch.randn(2, 6, 4, 4, generator=generator, dtype=dtype)
    expected = iso_tanh(xc.reshape(2, 2, 3, 4, 4), dim=2).reshape(2, 6, 4, 4)
    torch.testing.assert_close(block_iso_activation(xc, 3, dim=1), expected)
    torch.testing.assert_close(block_iso_activation(xc, 3, dim=-3), expected)


@pytest.mark.parametrize("block", [3, 0, -2, True, 2.0])
def test_block_validation(block):
    with pytest.raises(ValueError, match="block"):
        block_iso_activation(torch.randn(2, 8), block)


def test_block_module_validation():
    with pytest.raises(ValueError, match="block"):
        BlockIsotropicActivation(0)
    with pytest.raises(ValueError, match="block=3 must divide"):
        BlockIsotropicActivation(3)(torch.randn(2, 8))


def test_block_gradcheck(generator):
    x = torch.randn(3, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: block_iso_activation(t, 3, "log1p"), (x,))


# ------------------------------------------------------------------------------------------ symmetry


@pytest.mark.parametrize(
    ("fn", "shape", "dim"),
    [
        (iso_tanh, (6, 8), -1),
        (functools.partial(iso_tanh, dim=1), (2, 6, 5, 5), 1),
        (functools.partial(iso_activation, profile="log1p", dim=1), (2, 6, 5, 5), 1),
        (functools.partial(iso_activation, profile="softsign", length=0.5), (6, 8), -1),
        (iso_relu, (6, 8), -1),
    ],
)
def test_isotropic_is_orthogonal_equivariant(fn, shape, dim, dtype, generator):
    x = torch.randn(shape, generator=generator, dtype=dtype) * 1.5
    assert_equivariant(fn, x, "orthogonal", dim=dim, generator=generator)
    assert groups.covers("orthogonal", x.shape[dim]) == []  # top of the lattice: no larger compact group
    assert equivariance_error(fn, x, "positive_scaling", dim=dim, generator=generator) > 1e-3


@pytest.mark.parametrize("block", [2, 4])
def test_block_is_block_orthogonal_and_not_more(block, dtype, generator):
    x = torch.randn(6, 8, generator=generator, dtype=dtype) * 1.5
    act = BlockIsotropicActivation(block)
    for key in act.groups:
        assert_equivariant(act, x, key, generator=generator)
    covers = groups.covers(act.groups[0], 8)
    assert covers, "block_orthogonal:k must have a larger group to fail"
    for larger in covers:
        assert equivariance_error(act, x, larger, generator=generator) > 1e-3, larger
    assert equivariance_error(act, x, "orthogonal", generator=generator) > 1e-3
    xc = torch.randn(2, 8, 3, 3, generator=generator, dtype=dtype)
    conv_act = BlockIsotropicActivation(block, dim=1)
    assert_equivariant(conv_act, xc, f"block_orthogonal:{block}", dim=1, generator=generator)
    assert equivariance_error(conv_act, xc, "orthogonal", dim=1, generator=generator) > 1e-3


@pytest.mark.parametrize(
    ("module", "declared"),
    [
        (BlockIsotropicActivation(1), "signed_permutation"),
        (DirectionActivation(torch.eye(8), "tanh"), "signed_permutation"),
        (DirectionActivation(torch.eye(8), "relu"), "permutation"),
        (DirectionActivation(torch.eye(8), "gelu"), "permutation"),
    ],
)
def test_elementwise_groups_and_negative_controls(module, declared, dtype, generator):
    x = torch.randn(6, 8, generator=generator, dtype=dtype) * 1.5
    assert declared in module.groups
    assert_equivariant(module, x, declared, generator=generator)
    larger = groups.covers(declared, 8)
    assert larger
    for group in [*larger, "mean_orthogonal", "block_orthogonal:2", "orthogonal"]:
        if groups.is_subgroup(group, declared, 8):
            continue
        assert equivariance_error(module, x, group, generator=generator) > 1e-3, group


@pytest.mark.parametrize(
    "module",
    [
        IsoTanh(),
        IsoReLU(radius=0.5),
        IsotropicActivation("log1p", learn_length=True),
        BlockIsotropicActivation(2),
        BlockIsotropicActivation(1),
        DirectionActivation(torch.eye(8), "tanh"),
        DirectionActivation(-torch.eye(8), "silu"),
        DirectionActivation(torch.randn(12, 8)),
    ],
    ids=lambda m: type(m).__name__,
)
def test_every_module_declares_groups_it_respects(module, dtype, generator):
    module = module.to(dtype).eval()
    assert module.role == "activation"
    x = torch.randn(5, 8, generator=generator, dtype=dtype) * 1.5
    with torch.no_grad():
        for key in module.groups:
            assert_equivariant(module, x, key, generator=generator)


# ---------------------------------------------------------------------------------------------- modules


def test_module_reprs_and_attributes():
    assert repr(IsoTanh()) == "IsoTanh(dim=-1)"
    assert repr(IsoReLU(2.0, dim=1)) == "IsoReLU(radius=2, dim=1)"
    assert (
        repr(IsotropicActivation("softsign", length=0.5))
        == "IsotropicActivation(profile='softsign', dim=-1, length=0.5)"
    )
    assert "profile=atan" in repr(IsotropicActivation(torch.atan))
    assert repr(BlockIsotropicActivation(2, "log1p", 1)) == "BlockIsotropicActivation(block=2, profile='log1p', dim=1)"
    assert (
        repr(DirectionActivation(torch.eye(3), torch.sin))
        == "DirectionActivation(directions=3×3, activation=sin, dim=-1)"
    )
    assert IsoTanh().groups == ("orthogonal",)
    assert BlockIsotropicActivation(3).groups == ("block_orthogonal:3",)
    assert BlockIsotropicActivation(1).groups == ("block_orthogonal:1", "signed_permutation")
    for cls in (IsotropicActivation, IsoTanh, IsoReLU, BlockIsotropicActivation, DirectionActivation):
        assert cls.role == "activation"


def test_modules_match_functional(generator):
    x = torch.randn(3, 6, 4, 4, generator=generator)
    assert torch.equal(IsoTanh(dim=1)(x), iso_tanh(x, dim=1))
    assert torch.equal(IsoReLU(0.5, dim=1)(x), iso_relu(x, 0.5, dim=1))
    assert torch.equal(IsotropicActivation("log1p", 1, length=0.2)(x), iso_activation(x, "log1p", dim=1, length=0.2))
    assert torch.equal(BlockIsotropicActivation(3, dim=1)(x), block_iso_activation(x, 3, dim=1))
    v = torch.randn(10, 6, generator=generator)
    assert torch.equal(DirectionActivation(v, "gelu", dim=1)(x), direction_activation(x, v, "gelu", dim=1))


def test_learnable_length_parameter(generator):
    act = IsotropicActivation("tanh", learn_length=True)
    assert [name for name, _ in act.named_parameters()] == ["log_length"]
    torch.testing.assert_close(act.length, torch.tensor(1e-6))
    act2 = IsotropicActivation("tanh", length=0.5, learn_length=True, dtype=torch.float64)
    assert act2.log_length.dtype == torch.float64
    torch.testing.assert_close(act2.length, torch.tensor(0.5, dtype=torch.float64))
    x = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    act2(x).pow(2).sum().backward()
    assert act2.log_length.grad is not None and torch.isfinite(act2.log_length.grad)
    with torch.no_grad():
        act2.log_length.add_(3.0)
    assert act2.length.item() > 0
    act2.reset_parameters()
    torch.testing.assert_close(act2.length, torch.tensor(0.5, dtype=torch.float64))
    assert IsotropicActivation(length=0.3).length == 0.3 and IsotropicActivation().length is None
    with pytest.raises(ValueError, match="length"):
        IsotropicActivation(length=0.0)
    with pytest.raises(ValueError, match="length"):
        IsotropicActivation(length=-1.0, learn_length=True)


def test_direction_buffer_follows_module(generator):
    v = torch.randn(5, 3, generator=generator)
    act = DirectionActivation(v)
    assert "directions" in act.state_dict() and not list(act.parameters())
    v.zero_()  # the module keeps its own copy
    assert act.directions.abs().sum() > 0
    act = act.to(torch.float64)
    assert act.directions.dtype == torch.float64
    assert act(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64


# ------------------------------------------------------------------------------------- property tests


@st.composite
def shaped_inputs(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    dim = draw(st.integers(-ndim, ndim - 1))
    log_scale = draw(st.floats(-30, 30))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 10.0**log_scale
    zero_row = draw(st.booleans())
    if zero_row and x.numel() > 0:
        x.movedim(dim, -1).reshape(-1, x.shape[dim])[0] = 0.0
    return x, dim


@given(shaped_inputs(), st.sampled_from([*SMOOTH, "relu"]))
def test_property_shapes_finiteness_and_radial_law(inp, profile):
    x, dim = inp
    y = iso_activation(x, profile, dim=dim)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    if x.numel() == 0:
        return
    r = x.to(torch.float64).norm(dim=dim, keepdim=True)
    out = y.to(torch.float64).norm(dim=dim, keepdim=True)
    expected = REFERENCE[profile][0](r)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-30)
    # the direction is kept wherever the output is not 0
    keep = (out > 0).expand_as(x)
    x_hat = x.to(torch.float64) / r.clamp(min=1e-300)
    y_hat = y.to(torch.float64) / out.clamp(min=1e-300)
    torch.testing.assert_close(y_hat[keep], x_hat[keep], rtol=0, atol=1e-4)


@given(shaped_inputs())
def test_property_gradients_finite(inp):
    x, dim = inp
    x = x.clone().requires_grad_()
    y = iso_tanh(x, dim=dim)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.isfinite(grad).all() and grad.shape == x.shape


@given(
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 9),
    st.sampled_from(["tanh", "relu", "sin"]),
    st.integers(0, 2**16),
)
def test_property_direction_activation(batch, n, k, activation, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    v = torch.randn(k, n, generator=gen, dtype=torch.float64)
    sigma = {"tanh": torch.tanh, "relu": torch.relu, "sin": torch.sin}[activation]
    torch.testing.assert_close(direction_activation(x, v, activation), sigma(x @ v.T) @ v)
    assert direction_activation(x.T.contiguous(), v, activation, dim=0).shape == (n, batch)


@given(st.sampled_from([(12, 1), (12, 2), (12, 3), (12, 4), (12, 6), (12, 12), (5, 5)]), st.integers(0, 2**16))
def test_property_block_norms(sizes, seed):
    n, k = sizes
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    y = block_iso_activation(x, k)
    torch.testing.assert_close(y.reshape(3, n // k, k).norm(dim=-1), torch.tanh(x.reshape(3, n // k, k).norm(dim=-1)))


@pytest.mark.parametrize(
    "module",
    [
        IsoTanh(dim=1),
        IsoReLU(0.5),
        IsotropicActivation("log1p", learn_length=True),
        BlockIsotropicActivation(2),
        DirectionActivation(torch.eye(4), "relu"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_modules_survive_deepcopy_and_torch_save(module, generator):
    import copy
    import io

    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(3, 4, generator=generator)
    with torch.no_grad():
        assert torch.equal(loaded(x), module(x))
        assert torch.equal(copy.deepcopy(module)(x), module(x))
