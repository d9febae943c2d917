"""Tests for isotorch.optim: IsoAdam's equivariance per second-moment mode, its Adam formula, and the registry."""

import copy
import functools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from isotorch import groups
from isotorch import optim as it_optim
from isotorch.optim import SECOND_MOMENTS, IsoAdam, OptimiserSpec
from isotorch.testing import relative_error, tolerance

STEPS = 5


def _run(factory, w0: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """Run ``factory([w])`` for len(grads) steps on w = w0 with the given gradient stream; return w."""
    w = nn.Parameter(w0.clone())
    opt = factory([w])
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach()


def _stream(shape, dtype, seed=0, steps=STEPS):
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    grads = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(steps)]
    return w0.to(dtype), [g.to(dtype) for g in grads]


def _equivariance_error(factory, shape, transform, dtype, seed=0) -> float:
    """rel(T(θ_k − θ_0), θ'_k − θ'_0): the run on T(θ_0) with gradients T(∇) against the transformed run.

    ``transform`` maps a float64 tensor to a float64 tensor (linear); the transformed run happens in ``dtype``.
    Displacements are compared (not positions) so that the initial point does not dilute the error.
    """
    w0, grads = _stream(shape, dtype, seed)
    w_k = _run(factory, w0, grads)
    tw0 = transform(w0.double()).to(dtype)
    tw_k = _run(factory, tw0, [transform(g.double()).to(dtype) for g in grads])
    return relative_error(transform((w_k - w0).double()), (tw_k - tw0).double())


def _action(group: str, shape, dims, seed=1):
    """A linear map acting by independent random elements of ``group`` along each axis in ``dims``."""
    gen = torch.Generator().manual_seed(seed)
    mats = {d: groups.get(group).sample(shape[d], generator=gen, dtype=torch.float64) for d in dims}

    def transform(x):
        for d, g in mats.items():
            x = groups.act(g, x, d)
        return x

    return transform


def _iso_adam(mode, **kw):
    return functools.partial(IsoAdam, lr=0.05, weight_decay=1e-2, second_moment=mode, **kw)


# --- equivariance of IsoAdam, per mode ---------------------------------------------------------------------------

SHAPE = (6, 5)


@pytest.mark.parametrize(
    ("mode", "group", "dims"),
    [
        ("tensor", "orthogonal", (0, 1)),
        ("tensor", "orthogonal", (0,)),
        ("tensor", "orthogonal", (1,)),
        ("row", "orthogonal", (1,)),
        ("row", "signed_permutation", (0,)),
        ("column", "orthogonal", (0,)),
        ("column", "signed_permutation", (1,)),
    ],
)
def test_iso_adam_is_equivariant(mode, group, dims, dtype):
    for decoupled in (True, False):
        err = _equivariance_error(_iso_adam(mode, decoupled=decoupled), SHAPE, _action(group, SHAPE, dims), dtype)
        assert err <= tolerance(dtype), (mode, group, dims, decoupled, err)


@pytest.mark.parametrize(("mode", "dims"), [("row", (0,)), ("column", (1,)), ("row", (0, 1)), ("column", (0, 1))])
def test_iso_adam_row_and_column_fail_on_the_other_side(mode, dims, dtype):
    """Negative control: a per-row second moment is not shared along the output axis, and vice versa."""
    err = _equivariance_error(_iso_adam(mode), SHAPE, _action("orthogonal", SHAPE, dims), dtype)
    assert err > 1e-3


@pytest.mark.parametrize(("mode", "dim"), [("row", 1), ("column", 0), ("tensor", 0), ("tensor", 1)])
def test_iso_adam_is_equivariant_on_conv_weights(mode, dim, dtype):
    """Conv weights (out, in, kh, kw): "row" is equivariant to rotating the input channels, "column" the output."""
    shape = (4, 3, 2, 2)
    err = _equivariance_error(_iso_adam(mode), shape, _action("orthogonal", shape, (dim,)), dtype)
    assert err <= tolerance(dtype)
    if mode != "tensor":
        other = 1 - dim
        assert _equivariance_error(_iso_adam(mode), shape, _action("orthogonal", shape, (other,)), dtype) > 1e-3


def test_iso_adam_bias_rotates_with_the_output_axis(dtype):
    err = _equivariance_error(_iso_adam("column"), (7,), _action("orthogonal", (7,), (0,)), dtype)
    assert err <= tolerance(dtype)
    # a bias in "row" mode is per coordinate (it has no input axis), exactly Adam: not rotation-equivariant
    assert _equivariance_error(_iso_adam("row"), (7,), _action("orthogonal", (7,), (0,)), dtype) > 1e-3


def test_torch_adam_is_signed_permutation_but_not_orthogonal_equivariant(dtype):
    adam = functools.partial(torch.optim.Adam, lr=0.05)
    assert _equivariance_error(adam, SHAPE, _action("signed_permutation", SHAPE, (0, 1)), dtype) <= tolerance(dtype)
    assert _equivariance_error(adam, SHAPE, _action("orthogonal", SHAPE, (0,)), dtype) > 1e-3


def test_torch_sgd_momentum_is_orthogonal_equivariant(dtype):
    sgd = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)
    assert _equivariance_error(sgd, SHAPE, _action("orthogonal", SHAPE, (0, 1)), dtype) <= tolerance(dtype)


def test_iso_adam_equivariant_with_a_closure_on_a_quadratic_loss(dtype):
    """loss(W) = ½‖W − T‖² has gradient W − T, which rotates with (W, T): the closure API sees the same symmetry."""
    gen = torch.Generator().manual_seed(3)
    target = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    w0 = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    q = groups.get("orthogonal").sample(SHAPE[0], generator=gen, dtype=torch.float64)

    def run(w_init, t):
        w = nn.Parameter(w_init.to(dtype, copy=True))
        t = t.to(dtype)
        opt = IsoAdam([w], lr=0.05)
        losses = []
        for _ in range(STEPS):

            def closure():
                opt.zero_grad()
                loss = 0.5 * (w - t).pow(2).sum()
                loss.backward()
                return loss

            losses.append(opt.step(closure).item())
        return w.detach(), losses

    w_k, losses = run(w0, target)
    qw_k, q_losses = run(q @ w0, q @ target)
    assert relative_error(q @ (w_k.double() - w0), qw_k.double() - q @ w0) <= tolerance(dtype)
    assert losses == pytest.approx(q_losses, rel=10 * tolerance(dtype))
    assert losses[-1] < losses[0]


# --- the Adam formula --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoupled", [True, False])
def test_iso_adam_without_shared_axes_is_adam(decoupled):
    """On a (n, 1) weight, "row" shares over a size-1 axis: IsoAdam must equal torch's Adam (L2) / AdamW exactly."""
    w0, grads = _stream((6, 1), torch.float64, steps=8)
    reference = torch.optim.AdamW if decoupled else torch.optim.Adam
    kw = {"lr": 0.05, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}
    ours = _run(functools.partial(IsoAdam, second_moment="row", decoupled=decoupled, **kw), w0, grads)
    theirs = _run(functools.partial(reference, **kw), w0, grads)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_iso_adam_tensor_mode_formula():
    """Two steps by hand: v is the EMA of mean(g²) over the tensor, with Adam's bias correction."""
    lr, (b1, b2), eps = 0.1, (0.9, 0.99), 1e-8
    w0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    g1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    g2 = torch.tensor([[-1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    w = _run(functools.partial(IsoAdam, lr=lr, betas=(b1, b2), eps=eps), w0, [g1, g2])
    m = (1 - b1) * b1 * g1 + (1 - b1) * g2
    v = (1 - b2) * b2 * g1.pow(2).mean() + (1 - b2) * g2.pow(2).mean()
    step1 = g1 / (g1.pow(2).mean().sqrt() + eps)
    step2 = (m / (1 - b1**2)) / ((v / (1 - b2**2)).sqrt() + eps)
    torch.testing.assert_close(w, w0 - lr * step1 - lr * step2, rtol=1e-12, atol=1e-12)


def test_iso_adam_state_shapes_per_mode():
    w = nn.Parameter(torch.randn(4, 3, 2))
    b = nn.Parameter(torch.randn(4))
    expected = {"tensor": ((1, 1, 1), (1,)), "row": ((4, 1, 1), (4,)), "column": ((1, 3, 2), (1,))}
    for mode in SECOND_MOMENTS:
        opt = IsoAdam([w, b], second_moment=mode)
        w.grad, b.grad = torch.ones_like(w), torch.ones_like(b)
        opt.step()
        assert tuple(opt.state[w]["exp_avg_sq"].shape) == expected[mode][0]
        assert tuple(opt.state[b]["exp_avg_sq"].shape) == expected[mode][1]
        assert opt.state[w]["step"] == 1


def test_iso_adam_decoupled_weight_decay_with_zero_gradient():
    w = nn.Parameter(torch.full((3, 3), 2.0, dtype=torch.float64))
    opt = IsoAdam([w], lr=0.1, weight_decay=0.5)
    w.grad = torch.zeros_like(w)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3, 3), 2.0 * (1 - 0.05), dtype=torch.float64))
    # coupled (L2): the decay enters the normalised gradient instead, so the step is ≈ lr
    w2 = nn.Parameter(torch.full((3, 3), 2.0, dtype=torch.float64))
    opt2 = IsoAdam([w2], lr=0.1, weight_decay=0.5, decoupled=False)
    w2.grad = torch.zeros_like(w2)
    opt2.step()
    torch.testing.assert_close(w2.detach(), torch.full((3, 3), 1.9, dtype=torch.float64))


def test_iso_adam_maximize_is_descent_on_the_negated_gradient():
    w0, grads = _stream((4, 4), torch.float64)
    up = _run(functools.partial(IsoAdam, lr=0.05, maximize=True), w0, grads)
    down = _run(functools.partial(IsoAdam, lr=0.05), w0, [-g for g in grads])
    torch.testing.assert_close(up, down, rtol=0, atol=0)


def test_iso_adam_trains_a_small_regression():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=gen)
    y = torch.sin(x @ torch.randn(4, 1, generator=gen))
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = IsoAdam(
        [
            {"params": [model[0].weight, model[0].bias], "second_moment": "column"},
            {"params": [model[2].weight], "second_moment": "row"},
            {"params": [model[2].bias]},
        ],
        lr=1e-2,
    )
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


# --- the Optimizer protocol --------------------------------------------------------------------------------------


def test_iso_adam_state_dict_round_trip():
    w0, grads = _stream((5, 3), torch.float64, steps=6)
    w = nn.Parameter(w0.clone())
    opt = IsoAdam([w], lr=0.05, second_moment="column", weight_decay=0.1)
    for g in grads[:3]:
        w.grad = g.clone()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    assert saved["param_groups"][0]["second_moment"] == "column"
    w_copy = nn.Parameter(w.detach().clone())
    restored = IsoAdam([w_copy], lr=1.0)  # hyperparameters come back from the state dict
    restored.load_state_dict(saved)
    assert restored.param_groups[0]["lr"] == 0.05
    for g in grads[3:]:
        w.grad, w_copy.grad = g.clone(), g.clone()
        opt.step()
        restored.step()
    torch.testing.assert_close(w_copy.detach(), w.detach(), rtol=0, atol=0)
    assert restored.state[w_copy]["step"] == 6


def test_iso_adam_skips_parameters_without_gradient():
    a, b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2, 2))
    opt = IsoAdam([a, b], lr=0.1)
    a.grad = torch.ones(2, 2)
    opt.step()
    assert len(opt.state[b]) == 0
    assert torch.equal(b.detach(), torch.ones(2, 2))
    assert not torch.equal(a.detach(), torch.ones(2, 2))


def test_iso_adam_add_param_group_and_zero_grad():
    a = nn.Parameter(torch.ones(2, 2))
    opt = IsoAdam([a])
    opt.add_param_group({"params": [nn.Parameter(torch.ones(3))], "second_moment": "row"})
    assert opt.param_groups[1]["second_moment"] == "row"
    assert opt.param_groups[1]["lr"] == 1e-3
    with pytest.raises(ValueError, match=r"second_moment must be one of \('tensor', 'row', 'column'\)"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(3))], "second_moment": "diagonal"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, "lr must be"),
        ({"lr": float("nan")}, "lr must be"),
        ({"betas": (1.0, 0.9)}, "betas must be"),
        ({"betas": (0.9,)}, "betas must be"),
        ({"eps": -1e-8}, "eps must be"),
        ({"weight_decay": -0.1}, "weight_decay must be"),
        ({"second_moment": "diagonal"}, r"second_moment must be one of \('tensor', 'row', 'column'\), got 'diagonal'"),
    ],
)
def test_iso_adam_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IsoAdam([nn.Parameter(torch.ones(2))], **kwargs)


def test_iso_adam_bad_group_arguments():
    with pytest.raises(ValueError, match="second_moment must be one of"):
        IsoAdam([{"params": [nn.Parameter(torch.ones(2))], "second_moment": "rows"}])


def test_iso_adam_rejects_sparse_and_complex():
    w = nn.Parameter(torch.ones(3, 3))
    opt = IsoAdam([w])
    w.grad = torch.eye(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    z = nn.Parameter(torch.ones(3, dtype=torch.complex64))
    opt = IsoAdam([z])
    z.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        opt.step()


@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
    mode=st.sampled_from(SECOND_MOMENTS),
    scale=st.sampled_from([0.0, 1e-20, 1.0, 1e20]),
)
def test_iso_adam_any_shape_gives_finite_bounded_steps(shape, mode, scale):
    """Edge cases: 0-d, empty and size-1 axes, zero, tiny and huge gradients; each step moves an entry ≤ lr·√N."""
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    w = nn.Parameter(w0.clone())
    opt = IsoAdam([w], lr=0.1, second_moment=mode)
    w.grad = scale * torch.randn(shape, generator=gen, dtype=torch.float64)
    opt.step()
    moved = (w.detach() - w0).abs()
    assert torch.isfinite(w.detach()).all()
    if w0.numel():
        assert float(moved.max()) <= 0.1 * max(w0.numel(), 1) ** 0.5 + 1e-12
        if scale == 0.0:
            assert float(moved.max()) == 0.0


# --- the registry ------------------------------------------------------------------------------------------------


def test_registry_covers_the_standard_optimisers():
    assert {"sgd", "sgd_momentum", "adam", "adamw", "rmsprop", "adagrad", "iso_adam"} <= set(it_optim.names())
    for name, spec in ((n, it_optim.get(n)) for n in it_optim.names()):
        assert isinstance(spec, OptimiserSpec)
        factory, declared = spec  # unpacks as (factory, declared groups)
        assert isinstance(factory([nn.Parameter(torch.ones(2))]), torch.optim.Optimizer), name
        for group in declared:
            groups.get(group)  # canonical names only


@pytest.mark.parametrize("name", sorted(it_optim.names()))
@pytest.mark.parametrize("dims", [(0,), (1,), (0, 1)], ids=["rows", "columns", "both"])
def test_registry_claims_hold(name, dims, dtype):
    spec = it_optim.get(name)
    for group in spec.groups:
        err = _equivariance_error(spec.factory, SHAPE, _action(group, SHAPE, dims), dtype)
        assert err <= tolerance(dtype), (name, group, err)


@pytest.mark.parametrize("name", sorted(it_optim.names()))
def test_registry_claims_are_maximal(name, dtype):
    """Negative control: the optimiser fails every cover of its largest declared group."""
    spec = it_optim.get(name)
    top = [g for g in spec.groups if not any(h != g and groups.is_subgroup(g, h, SHAPE[0]) for h in spec.groups)]
    assert len(top) == 1, top
    for cover in groups.covers(top[0], SHAPE[0]):
        err = _equivariance_error(spec.factory, SHAPE, _action(cover, SHAPE, (0,)), dtype)
        assert err > 1e-3, (name, cover, err)
    if "orthogonal" not in spec.groups:
        assert _equivariance_error(spec.factory, SHAPE, _action("orthogonal", SHAPE, (0,)), dtype) > 1e-3
