"""Tests for isotorch.audit._function: known answers for torch's primitives, negative controls, degenerate, random
and failing functions, modules (eval mode, feature-aligned parameters), Lie derivatives, and bad input."""

import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from isotorch import groups
from isotorch.audit import AuditResult, audit, audit_module, default_tolerance

N = 8


def _x(*shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _random_affine(module, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_((1.0 if name == "weight" else 0.0) + 0.5 * torch.randn(p.shape, generator=gen))
    return module


# name → (fn or module builder taking dtype, input shape, dim, expected maximal equivariance groups)
KNOWN = {
    "tanh": (lambda d: torch.tanh, (5, N), -1, {"signed_permutation"}),
    "relu": (lambda d: F.relu, (5, N), -1, {"permutation", "positive_scaling"}),
    "leaky_relu": (lambda d: F.leaky_relu, (5, N), -1, {"permutation", "positive_scaling"}),
    "gelu": (lambda d: F.gelu, (5, N), -1, {"permutation"}),
    "silu": (lambda d: F.silu, (5, N), -1, {"permutation"}),
    "sigmoid": (lambda d: torch.sigmoid, (5, N), -1, {"permutation"}),
    "softplus": (lambda d: F.softplus, (5, N), -1, {"permutation"}),
    "elu": (lambda d: F.elu, (5, N), -1, {"permutation"}),
    "softmax": (lambda d: functools.partial(F.softmax, dim=-1), (5, N), -1, {"permutation"}),
    "log_softmax": (lambda d: functools.partial(F.log_softmax, dim=-1), (5, N), -1, {"permutation"}),
    "layer_norm": (lambda d: nn.LayerNorm(N, elementwise_affine=False, dtype=d), (5, N), -1, {"mean_orthogonal"}),
    "layer_norm_affine": (lambda d: _random_affine(nn.LayerNorm(N, dtype=d)), (5, N), -1, {"permutation"}),
    "rms_norm": (lambda d: nn.RMSNorm(N, elementwise_affine=False, dtype=d), (5, N), -1, {"orthogonal"}),
    "rms_norm_gain": (lambda d: _random_affine(nn.RMSNorm(N, dtype=d)), (5, N), -1, {"permutation"}),
    "batch_norm_train": (
        lambda d: lambda t: F.batch_norm(t, None, None, training=True),
        (6, N),
        -1,
        {"signed_permutation"},
    ),
    "normalize": (lambda d: F.normalize, (5, N), -1, {"orthogonal"}),
    "max_pool2d": (
        lambda d: functools.partial(F.max_pool2d, kernel_size=2),
        (2, N, 4, 4),
        1,
        {"permutation", "positive_scaling"},
    ),
    "avg_pool2d": (
        lambda d: functools.partial(F.avg_pool2d, kernel_size=2),
        (2, N, 4, 4),
        1,
        {"orthogonal", "positive_scaling"},
    ),
    "group_norm": (lambda d: nn.GroupNorm(2, N, affine=False, dtype=d), (2, N, 3, 3), 1, {"trivial"}),
    "dropout_eval": (lambda d: nn.Dropout(0.5), (5, N), -1, {"orthogonal", "positive_scaling"}),
}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_answers_with_negative_controls(name, dtype):
    build, shape, dim, expected = KNOWN[name]
    result = audit(build(dtype), _x(*shape, dtype=dtype), dim=dim, trials=4)
    assert result.ok, result.reason
    assert result.maximal == expected, result
    assert not result.disagreements, result.disagreements
    tol = default_tolerance(dtype)
    for key in expected:
        assert result.errors[key]["equivariance"] <= tol
        # negative control: every next larger group must be clearly violated
        for cover in groups.covers(key, N):
            assert result.errors[cover.key]["equivariance"] > 10 * tol, (key, cover.key, result.errors[cover.key])


def test_tanh_errors_are_max_over_trials_and_inputs():
    result = audit(torch.tanh, _x(5, N), trials=3)
    assert result.inputs == ("given", "gaussian", "scaled_up", "scaled_down", "sparse", "outliers")
    assert result.errors["trivial"] == {"equivariance": 0.0, "invariance": 0.0}
    assert result.errors["orthogonal"]["equivariance"] > 0.05
    assert result.equivariant == {"trivial", "permutation", "signed_permutation"}
    assert result.invariant == {"trivial"}
    assert result.respects == "equivariance"


def test_special_inputs_fool_the_given_input_but_not_the_audit():
    # on inputs in the linear regime (tiny values) GELU·2 looks like the identity, i.e. isotropic
    tiny = _x(5, N) * 1e-6
    given_only = audit(lambda t: 2 * F.gelu(t), tiny, inputs=["given"], tol=1e-3)
    assert "orthogonal" in given_only.equivariant
    full = audit(lambda t: 2 * F.gelu(t), tiny, tol=1e-3)
    assert full.maximal == {"permutation"}


def test_invariance_only_when_the_feature_axis_is_not_kept():
    result = audit(lambda t: t.norm(dim=-1), _x(5, N))
    assert result.respects == "invariance"
    assert result.maximal == {"orthogonal"}
    assert result.equivariant == frozenset()
    assert math.isnan(result.errors["orthogonal"]["equivariance"])
    assert any("only invariance" in n for n in result.notes)
    summed = audit(lambda t: t.abs().sum(dim=-1), _x(5, N))
    assert summed.maximal == {"signed_permutation"}
    assert summed.errors["orthogonal"]["invariance"] > 1e-2


def test_equivariance_and_invariance_are_reported_separately():
    # per-channel instance normalisation: equivariant to B_n, invariant to positive scaling (up to eps)
    result = audit(lambda t: F.instance_norm(t, eps=0.0), _x(2, N, 4, 4), dim=1, trials=4)
    assert "signed_permutation" in result.equivariant
    assert "positive_scaling" in result.invariant
    assert "positive_scaling" not in result.equivariant


@pytest.mark.parametrize(
    ("fn", "reason"),
    [
        (torch.zeros_like, "zero"),
        (lambda t: torch.zeros_like(t) + 3.0, "does not depend"),
        (lambda t: torch.ones(4), "does not depend"),
        (lambda t: t * 0.0, "zero"),
    ],
)
def test_degenerate_functions_are_flagged_not_credited(fn, reason):
    result = audit(fn, _x(5, N))
    assert result.status == "degenerate"
    assert result.degenerate
    assert reason in result.reason
    assert result.equivariant == result.invariant == result.maximal == frozenset()


def test_a_degenerate_given_input_is_noted_but_synthetic_inputs_decide():
    result = audit(torch.tanh, torch.zeros(5, N))
    assert result.ok
    assert result.maximal == {"signed_permutation"}
    assert any("constant along dim" in n for n in result.notes)


def test_random_functions_are_flagged_and_do_not_advance_the_global_rng():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    # with a generator given, the audit's own draws come from it and the function's draws are forked
    gen = torch.Generator().manual_seed(0)
    result = audit(lambda t: F.dropout(t, 0.5, training=True), _x(5, N), generator=gen)
    assert result.status == "random"
    assert result.random
    assert "differ" in result.reason
    assert torch.equal(torch.random.get_rng_state(), before)
    noise = audit(lambda t: t + 1e-2 * torch.randn_like(t), _x(5, N))
    assert noise.status == "random"


def test_common_random_numbers():
    # with one fixed mask, Bernoulli dropout commutes with positive scaling but not with permutations
    fixed = audit(lambda t: F.dropout(t, 0.5, training=True), _x(5, N), common_random_numbers=True)
    assert fixed.ok
    assert fixed.maximal == {"positive_scaling"}
    assert fixed.errors["permutation"]["equivariance"] > 1e-2
    # negative control: without common random numbers the two calls differ, so no symmetry is credited
    free = audit(lambda t: F.dropout(t, 0.5, training=True), _x(5, N))
    assert free.status == "random" and free.maximal == frozenset()


def test_common_random_numbers_replay_the_callers_state_and_restore_it():
    def dropout(t):
        return F.dropout(t, 0.5, training=True)

    def run(seed):
        torch.manual_seed(seed)
        before = torch.random.get_rng_state()
        gen = torch.Generator().manual_seed(0)
        result = audit(dropout, _x(5, N), generator=gen, common_random_numbers=True, groups=["permutation"])
        assert torch.equal(torch.random.get_rng_state(), before), "the caller's global RNG state must be restored"
        return result.errors["permutation"]["equivariance"]

    # the mask comes from the caller's global RNG state: the same state gives the same audit, another state another
    assert run(3) == run(3)
    assert run(3) != run(4)
    # the module path (train mode) replays the state too
    module = audit_module(nn.Dropout(0.5), _x(5, N), train=True, common_random_numbers=True)
    assert module.ok and module.maximal == {"positive_scaling"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: replaying the GPU's RNG state")
def test_common_random_numbers_on_the_gpu_replay_its_rng_and_restore_it():
    x = _x(5, N).cuda()
    before = torch.cuda.get_rng_state()
    fixed = audit_module(nn.Dropout(0.5), x, train=True, common_random_numbers=True)
    assert fixed.ok and fixed.maximal == {"positive_scaling"}
    assert torch.equal(torch.cuda.get_rng_state(), before)
    assert audit_module(nn.Dropout(0.5), x, train=True).status == "random"  # negative control


@pytest.mark.parametrize(
    ("fn", "status", "text"),
    [
        (lambda t: 1 / 0, "failed", "ZeroDivisionError"),
        (lambda t: 3.0, "failed", "not a tensor"),
        (lambda t: (t, t), "failed", "tuple"),
        (lambda t: t.argmax(-1), "failed", "not floating point"),
        (lambda t: t / 0.0, "failed", "NaN or inf"),
        (lambda t: t[..., :3], "ok", "only invariance"),
    ],
)
def test_misbehaving_functions_get_a_result_not_an_exception(fn, status, text):
    result = audit(fn, _x(5, N))
    assert result.status == status
    assert text in (result.reason or "") + " ".join(result.notes)
    json.dumps(result.to_dict(), allow_nan=False)


def test_functions_that_raise_on_some_inputs_skip_them():
    def picky(t):
        if (t.abs() > 5).any():
            raise ValueError("too large")
        return torch.tanh(t)

    result = audit(picky, _x(5, N))
    assert result.ok
    assert "scaled_up" not in result.inputs
    assert any("scaled_up" in n and "too large" in n for n in result.notes)


def test_module_is_audited_in_eval_mode_and_its_modes_are_restored():
    model = nn.Sequential(nn.Dropout(0.5), nn.Tanh()).train()
    model[1].eval()
    result = audit(model, _x(5, N))
    assert result.ok and result.maximal == {"signed_permutation"}
    assert model.training and model[0].training and not model[1].training


def test_train_mode_dropout_is_random():
    result = audit_module(nn.Dropout(0.5), _x(5, N), train=True)
    assert result.status == "random"


def test_feature_aligned_parameters_are_permuted_only_in_permute_mode():
    ln = _random_affine(nn.LayerNorm(N, dtype=torch.float64))
    assert audit_module(ln, _x(5, N)).maximal == {"permutation"}
    fixed = audit_module(ln, _x(5, N), parameters="fixed")
    assert fixed.maximal == {"trivial"}
    assert fixed.errors["permutation"]["equivariance"] > 1e-2
    # a freshly initialised affine (γ = 1, β = 0) is the plain LayerNorm
    assert audit_module(nn.LayerNorm(N, dtype=torch.float64), _x(5, N)).maximal == {"mean_orthogonal"}


def test_parameters_of_the_module_are_not_changed():
    ln = _random_affine(nn.LayerNorm(N))
    before = {k: v.clone() for k, v in ln.state_dict().items()}
    audit(ln, _x(5, N, dtype=torch.float32))
    for k, v in ln.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_lie_derivative_agrees_with_finite_elements():
    result = audit(F.normalize, _x(5, N))
    assert set(result.lie) == {g.key for g in groups.lattice(N) if g.continuous}
    assert result.lie["orthogonal"]["equivariance"] < 1e-9
    assert result.lie["positive_scaling"]["equivariance"] > 1e-2
    tanh = audit(torch.tanh, _x(5, N))
    assert tanh.lie["orthogonal"]["equivariance"] > 1e-2
    relu = audit(F.relu, _x(5, N))
    assert relu.lie["positive_scaling"]["equivariance"] < 1e-12
    assert not result.disagreements and not tanh.disagreements and not relu.disagreements


def test_lie_derivative_sees_only_the_identity_component():
    # a rotation by 90° in the plane commutes with SO(2) but not with reflections: finite O(2) fails, the Lie
    # derivative (which only sees so(2)) vanishes, and the audit reports the disagreement
    j = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    result = audit(lambda t: torch.tanh(t.norm(dim=-1, keepdim=True)) * (t @ j.T), _x(5, 2))
    assert "special_orthogonal" in result.equivariant
    assert "orthogonal" not in result.equivariant
    assert result.lie["orthogonal"]["equivariance"] < 1e-9
    assert any(d.startswith("orthogonal equivariance") and "disconnected" in d for d in result.disagreements)


def test_lie_derivative_unavailable_is_a_note():
    bn = nn.BatchNorm1d(N, dtype=torch.float64)
    result = audit_module(bn, _x(6, N), train=True)
    assert result.ok
    assert result.maximal == {"signed_permutation"}


def test_custom_groups_tolerance_and_generator():
    result = audit(
        torch.tanh,
        _x(5, N),
        groups=["orthogonal", "signed_permutation"],
        trials=2,
        generator=torch.Generator().manual_seed(7),
    )
    assert set(result.errors) == {"orthogonal", "signed_permutation"}
    assert result.maximal == {"signed_permutation"}
    loose = audit(torch.tanh, _x(5, N), groups="orthogonal", tol=10.0)
    assert loose.maximal == {"orthogonal"}
    again = audit(torch.tanh, _x(5, N), groups=["orthogonal"], trials=2, generator=torch.Generator().manual_seed(7))
    assert (
        again.errors
        == audit(
            torch.tanh, _x(5, N), groups=["orthogonal"], trials=2, generator=torch.Generator().manual_seed(7)
        ).errors
    )


def test_exhaustive_false_stops_at_the_first_failure():
    calls = []

    def counted(t):
        calls.append(1)
        return torch.tanh(t)

    audit(counted, _x(5, N), lie=False)
    full = len(calls)
    calls.clear()
    fast = audit(counted, _x(5, N), lie=False, exhaustive=False)
    assert len(calls) < full / 2
    assert fast.maximal == {"signed_permutation"}


def test_result_to_dict_and_repr():
    result = audit(torch.tanh, _x(5, N))
    d = result.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["maximal"] == ["signed_permutation"]
    assert d["equivariant"] == ["trivial", "permutation", "signed_permutation"]
    assert "signed_permutation" in repr(result) and "status='ok'" in repr(result)
    assert isinstance(result, AuditResult)
    with pytest.raises(AttributeError):
        result.status = "x"


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"x": torch.ones(5, N, dtype=torch.int64)}, TypeError, "floating-point"),
        ({"x": [1.0, 2.0]}, TypeError, "floating-point"),
        ({"x": torch.ones(())}, ValueError, "at least one dimension"),
        ({"x": torch.ones(0, N)}, ValueError, "non-empty"),
        ({"x": torch.full((2, N), math.nan)}, ValueError, "NaN"),
        ({"dim": 2}, ValueError, "dim"),
        ({"trials": 0}, ValueError, "trials"),
        ({"groups": ["nope"]}, KeyError, "unknown group"),
        ({"groups": ["block_orthogonal:3"]}, ValueError, "divisible"),
        ({"groups": []}, ValueError, "at least one"),
        ({"inputs": ["weird"]}, ValueError, "inputs"),
        ({"generator": "seed"}, TypeError, "generator"),
        ({"common_random_numbers": 1}, TypeError, "common_random_numbers must be a bool"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, error, text):
    args = {"x": _x(5, N)}
    args.update(kwargs)
    x = args.pop("x")
    with pytest.raises(error, match=text):
        audit(torch.tanh, x, **args)


def test_bad_fn_and_module_arguments():
    with pytest.raises(TypeError, match="callable"):
        audit(3, _x(5, N))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        audit_module(torch.tanh, _x(5, N))
    with pytest.raises(ValueError, match="parameters"):
        audit_module(nn.Tanh(), _x(5, N), parameters="rotate")


@settings(max_examples=12, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    n=st.integers(3, 6),
    position=st.integers(0, 2),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_property_tanh_is_signed_permutation_on_any_axis(shape, n, position, dtype):
    position = min(position, len(shape))
    full = [*shape[:position], n, *shape[position:]]
    x = torch.randn(full, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    result = audit(torch.tanh, x, dim=position, trials=2, lie=False, inputs=["given", "gaussian"])
    assert result.maximal == {"signed_permutation"}


@settings(max_examples=8, deadline=None)
@given(scale=st.sampled_from([1e-6, 1.0, 1e6]), rows=st.integers(1, 3))
def test_property_rms_norm_on_extreme_norms_and_size_one_axis(scale, rows):
    rms = nn.RMSNorm(N, elementwise_affine=False, eps=None, dtype=torch.float64)
    assert audit(rms, _x(rows, N) * scale, trials=2, lie=False).maximal == {"orthogonal"}
    # a feature axis of size 1: every group is ±1 or 1, the audit still runs
    one = audit(torch.tanh, _x(rows, 1) * scale, trials=2)
    assert one.ok


def test_train_mode_audit_leaves_running_statistics_unchanged():
    bn = nn.BatchNorm1d(N, dtype=torch.float64)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    audit_module(bn, _x(6, N), train=True)
    assert bn.training
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
