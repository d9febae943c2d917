"""Tests for isotorch.testing: the assertions pass and fail as they should, with readable messages."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from isotorch import groups
from isotorch.testing import (
    assert_equivariant,
    assert_invariant,
    equivariance_error,
    invariance_error,
    relative_error,
    tolerance,
)


def radial_tanh(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """tanh(‖x‖)·x/‖x‖ along ``dim``: O(n)-equivariant (a self-contained stand-in for an isotropic activation)."""
    r = x.norm(dim=dim, keepdim=True)
    return torch.tanh(r) * x / r


def _x(dtype, shape=(5, 8), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# --- equivariance ------------------------------------------------------------------------------------------------


def test_equivariant_function_passes(dtype):
    x = _x(dtype)
    assert_equivariant(radial_tanh, x, "orthogonal")
    assert equivariance_error(radial_tanh, x, "orthogonal") <= tolerance(dtype)
    for scale in (1e-3, 1e3):  # several radii
        assert_equivariant(radial_tanh, scale * x, "orthogonal")


def test_non_equivariant_function_fails_with_a_readable_message(dtype):
    x = _x(dtype)
    assert equivariance_error(torch.tanh, x, "orthogonal") > 1e-3
    tol = f"{tolerance(dtype):.1e}"
    message = (
        rf"tanh is not equivariant under orthogonal along dim=-1: relative error .* > tolerance {tol} \({dtype}, 4"
    )
    with pytest.raises(AssertionError, match=message):
        assert_equivariant(torch.tanh, x, "orthogonal")


def test_elementwise_odd_function_holds_exactly_its_group(dtype):
    """tanh is B_n-equivariant; every cover of B_n (the next larger groups) must fail."""
    x = _x(dtype)
    assert_equivariant(torch.tanh, x, "signed_permutation")
    assert_equivariant(torch.tanh, x, "permutation")
    for cover in groups.covers("signed_permutation", x.shape[-1]):
        assert equivariance_error(torch.tanh, x, cover) > 1e-3, cover
    assert_equivariant(torch.relu, x, "positive_scaling")
    assert equivariance_error(torch.relu, x, "signed_permutation") > 1e-3


def test_modules_are_named_by_their_class():
    with pytest.raises(AssertionError, match=r"^Tanh is not equivariant under orthogonal"):
        assert_equivariant(nn.Tanh(), _x(torch.float64), "orthogonal")


def test_group_objects_and_keys_are_accepted():
    x = _x(torch.float64)
    block = lambda t: radial_tanh(t.unflatten(-1, (4, 2))).flatten(-2)  # noqa: E731 - isotropic per block of 2
    assert_equivariant(block, x, "block_orthogonal:2")
    assert_equivariant(block, x, groups.get("block_orthogonal", block=2))
    with pytest.raises(AssertionError, match="under block_orthogonal:4"):
        assert_equivariant(block, x, "block_orthogonal:4")


# --- invariance --------------------------------------------------------------------------------------------------


def test_invariance(dtype):
    x = _x(dtype)
    norm = lambda t: t.norm(dim=-1)  # noqa: E731
    total = lambda t: t.sum(dim=-1)  # noqa: E731
    assert_invariant(norm, x, "orthogonal")
    assert_invariant(total, x, "permutation")
    assert invariance_error(total, x, "signed_permutation") > 1e-3
    assert invariance_error(norm, x, "positive_scaling") > 1e-3
    with pytest.raises(AssertionError, match="is not invariant under signed_permutation"):
        assert_invariant(total, x, "signed_permutation")
    # an equivariant, non-invariant map is not invariant
    assert invariance_error(radial_tanh, x, "orthogonal") > 1e-3


# --- tolerance by dtype ------------------------------------------------------------------------------------------


def test_tolerance_values():
    assert tolerance(torch.float64) == 1e-9
    assert tolerance(torch.float32) == 1e-4
    assert tolerance(torch.float16) == 2e-2
    assert tolerance(torch.bfloat16) == 5e-2
    with pytest.raises(TypeError, match="floating dtype"):
        tolerance(torch.int64)


def test_tolerance_follows_the_output_dtype():
    """A 1e-6 violation is rounding noise in float32 but a real failure in float64."""

    def almost(t):
        return t + 1e-6 * torch.tanh(t)

    assert_equivariant(almost, _x(torch.float32), "orthogonal")
    with pytest.raises(AssertionError, match=r"torch.float64"):
        assert_equivariant(almost, _x(torch.float64), "orthogonal")
    assert_equivariant(almost, _x(torch.float64), "orthogonal", tol=1e-5)  # explicit tolerance wins
    half = _x(torch.float16)
    assert_equivariant(lambda t: 2 * t, half, "permutation")


# --- dim handling ------------------------------------------------------------------------------------------------


def test_dim_selects_the_feature_axis(dtype):
    x = _x(dtype, shape=(2, 6, 3, 3))
    channel = lambda t: radial_tanh(t, dim=1)  # noqa: E731 - isotropic over the channels
    assert_equivariant(channel, x, "orthogonal", dim=1)
    assert_equivariant(channel, x, "orthogonal", dim=-3)
    with pytest.raises(AssertionError, match="along dim=-1"):
        assert_equivariant(channel, x, "orthogonal", dim=-1)
    assert_invariant(lambda t: t.norm(dim=1), x, "orthogonal", dim=1)
    assert invariance_error(lambda t: t.norm(dim=1), x, "orthogonal", dim=2) > 1e-3


def test_shape_changing_functions():
    x = _x(torch.float64)
    with pytest.raises(ValueError, match="keep the size of dim=-1"):
        equivariance_error(lambda t: t[..., :4], x, "permutation")
    assert invariance_error(lambda t: t.sum(-1), x, "permutation") <= 1e-12  # invariance may change the shape


@given(batch=st.integers(0, 3), n=st.integers(1, 6), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_edge_shapes(batch, n, dtype):
    """Empty batch and a feature axis of size 1 are fine; the error is then 0 or tiny."""
    x = torch.randn(batch, n, dtype=dtype)
    assert_equivariant(radial_tanh, x + 1.0, "orthogonal")
    assert equivariance_error(radial_tanh, x + 1.0, "orthogonal") >= 0.0


# --- errors and determinism --------------------------------------------------------------------------------------


def test_bad_arguments():
    x = _x(torch.float64)
    with pytest.raises(TypeError, match="floating-point"):
        assert_equivariant(torch.neg, torch.ones(3, 4, dtype=torch.int64), "orthogonal")
    with pytest.raises(TypeError, match="floating-point"):
        equivariance_error(torch.neg, [[1.0, 2.0]], "orthogonal")
    with pytest.raises(TypeError, match="fn must return a tensor"):
        assert_equivariant(lambda t: t.sum().item(), x, "orthogonal")
    with pytest.raises(KeyError, match="valid names"):
        assert_equivariant(torch.neg, x, "rotation")
    with pytest.raises(ValueError, match="divisible by 3"):
        assert_equivariant(torch.neg, x, "block_orthogonal:3")


def test_dim_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="dim"):
        equivariance_error(torch.neg, _x(torch.float64), "orthogonal", dim=5)


def test_zero_trials_cannot_pass_vacuously():
    with pytest.raises(ValueError, match="trials"):
        assert_equivariant(torch.tanh, _x(torch.float64), "orthogonal", trials=0)


def test_generator_seeds_make_errors_reproducible():
    x = _x(torch.float64)
    a = equivariance_error(torch.tanh, x, "orthogonal", generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global RNG does not matter
    b = equivariance_error(torch.tanh, x, "orthogonal", generator=torch.Generator().manual_seed(7))
    assert a == b
    # generator=None is torch's global RNG: reproducible under torch.manual_seed, a fresh draw otherwise
    torch.manual_seed(5)
    c = equivariance_error(torch.tanh, x, "orthogonal")
    torch.manual_seed(5)
    assert equivariance_error(torch.tanh, x, "orthogonal") == c
    assert equivariance_error(torch.tanh, x, "orthogonal") != c
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator or None"):
        equivariance_error(torch.tanh, x, "orthogonal", generator=7)
    assert equivariance_error(torch.tanh, x, "orthogonal", generator=torch.Generator().manual_seed(8)) != a
    # the error is a maximum over trials: more trials never report less (same generator stream)
    assert equivariance_error(torch.tanh, x, "orthogonal", trials=8, generator=torch.Generator().manual_seed(7)) >= a


# --- relative_error ----------------------------------------------------------------------------------------------


def test_relative_error():
    a = torch.randn(4, 3, dtype=torch.float64)
    assert relative_error(a, a) == 0.0
    assert relative_error(a, -a) == pytest.approx(1.0)
    assert relative_error(a, torch.zeros_like(a)) == pytest.approx(1.0)
    assert relative_error(a, 2 * a) == pytest.approx(1 / 3)
    assert relative_error(a, a + 1) == pytest.approx(relative_error(a + 1, a))
    assert relative_error(torch.zeros(0), torch.zeros(0)) == 0.0
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative_error(torch.zeros(3), torch.full((3,), 1e-9)) == pytest.approx(1e-9 / 1e-7)  # floor 1e-7
    assert isinstance(relative_error(a.float(), a), float)


def test_vacuous_functions_are_flagged():
    """A zero or constant function would pass every group: the check refuses instead of crediting it."""
    from isotorch.testing import VacuousCheckError

    x = _x(torch.float64)
    with pytest.raises(VacuousCheckError, match="zeros"):
        assert_equivariant(torch.zeros_like, x, "orthogonal")
    with pytest.raises(VacuousCheckError, match="constant"):
        assert_invariant(lambda t: torch.ones(t.shape[0], dtype=t.dtype), x, "orthogonal")
    assert_invariant(lambda t: t.norm(dim=-1), x, "orthogonal")  # invariant, but not constant: passes


def test_relative_error_is_scale_free_at_huge_magnitudes():
    a = torch.tensor([1e200, -2e200], dtype=torch.float64)
    assert relative_error(a, a * (1 + 1e-6)) == pytest.approx(relative_error(a / 1e200, a / 1e200 * (1 + 1e-6)))
