"""torch.compile with dynamic shapes and torch.func.vmap of every isotropic primitive, in stacks (issue 13 item 6).

torch 2.13's Dynamo used to fail on any model with two isotropic activations under ``dynamic=True``
("lift_tracked_freevar_to_input should not be called on root SubgraphTracer"): float attributes become symbolic
inputs, and one first read inside the first activation's autograd.Function could not be lifted into the second.
One compiled model is reused across batch sizes (compiling is slow on two cores).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import isotorch as it
from isotorch import functional as IF
from isotorch import nn as inn

DYNAMO_CTX_WARNING = "ignore:<class 'torch.autograd.function.Function'> should not be instantiated:DeprecationWarning"
INDUCTOR_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
FORWARD_AD_WARNING = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


def _mlp() -> nn.Sequential:
    """Every vector primitive, each activation appearing after another one (the case that crashed)."""
    return nn.Sequential(
        nn.Linear(6, 8),
        inn.IsoTanh(),
        inn.ChiNorm(8),
        nn.Linear(8, 8),
        inn.IsotropicActivation("log1p", length=0.5),
        inn.IsoBatchNorm(8),
        nn.Linear(8, 8),
        inn.IsoReLU(0.5),
        nn.Linear(8, 8),
        inn.IsotropicActivation("softsign", learn_length=True),
        inn.BlockIsotropicActivation(2),
        inn.DirectionActivation(it.directions.thomson(10, 8, generator=torch.Generator().manual_seed(0))),
        inn.IsoRMSNorm(),
        nn.Linear(8, 16),
        inn.IsoGate(),
        nn.Linear(8, 16),
        inn.IsoGate(mode="inner"),
        inn.IsoDropout(0.3),  # checked in evaluation here (the identity); training below
        nn.Linear(8, 2),
    )


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        inn.IsoBatchNorm(8, dim=1),
        inn.IsoTanh(dim=1),
        inn.NormMaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        inn.ChiNorm(8, dim=1),
        inn.IsoTanh(dim=1),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 3),
    )


def _check_against_eager(build, shape, *, backend, fullgraph, batches, dtype=torch.float64):
    torch.manual_seed(0)
    model = build().to(dtype)
    reference = build().to(dtype)
    reference.load_state_dict(model.state_dict())
    for m in (model, reference):  # dropout in evaluation (its randomness is not shared by compiled and eager code)
        for module in m.modules():
            if isinstance(module, inn.IsoDropout):
                module.eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=True, backend=backend, fullgraph=fullgraph)
    generator = torch.Generator().manual_seed(1)
    for batch in batches:
        x = torch.randn(batch, *shape, generator=generator, dtype=dtype)
        y = compiled(x)
        y_ref = reference(x)
        y.square().sum().backward()
        y_ref.square().sum().backward()
        torch.testing.assert_close(y, y_ref)
        for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, msg=lambda m, name=name: f"grad of {name}: {m}")
        for b, c in zip(model.buffers(), reference.buffers(), strict=True):  # running statistics move alike
            torch.testing.assert_close(b, c)
        model.zero_grad()
        reference.zero_grad()


@pytest.mark.filterwarnings(DYNAMO_CTX_WARNING)
@pytest.mark.parametrize("build,shape", [(_mlp, (6,)), (_cnn, (3, 8, 8))], ids=["mlp", "cnn"])
def test_dynamic_fullgraph_stacks_match_eager(build, shape):
    _check_against_eager(build, shape, backend="eager", fullgraph=True, batches=(4, 7, 5))


@pytest.mark.slow
@pytest.mark.filterwarnings(DYNAMO_CTX_WARNING)
@pytest.mark.filterwarnings(INDUCTOR_WARNING)
@pytest.mark.filterwarnings(FORWARD_AD_WARNING)
def test_dynamic_inductor_cnn_without_fullgraph():
    """Inductor itself: the pooled map feeding a convolution once had a stride order it could not decide."""
    _check_against_eager(_cnn, (3, 8, 8), backend="inductor", fullgraph=False, batches=(4, 6))


@pytest.mark.filterwarnings(DYNAMO_CTX_WARNING)
@pytest.mark.parametrize("mode", ["vector", "gaussian", "projection"])
def test_dynamic_dropout_in_training(mode):
    """Dropout draws its own randomness, so compiled and eager outputs differ; check what must hold instead: the
    output has the input's shape at every batch size, and in vector mode each vector is dropped or scaled by 1/(1 − p).
    """
    drop = inn.IsoDropout(0.25, mode=mode).train()
    torch._dynamo.reset()
    compiled = torch.compile(drop, dynamic=True, backend="eager", fullgraph=True)
    for batch in (4, 7, 5):
        x = torch.randn(batch, 6, dtype=torch.float64, requires_grad=True)
        y = compiled(x)
        y.sum().backward()
        assert y.shape == x.shape and torch.isfinite(x.grad).all()
        if mode == "vector":
            kept = y.detach().norm(dim=-1) > 0
            torch.testing.assert_close(y.detach()[kept], x.detach()[kept] / 0.75)


def test_stacks_hold_several_isotropic_activations():
    """The compiled models hold two or more isotropic activations each: the case that crashed."""
    for build in (_mlp, _cnn):
        count = sum(isinstance(m, inn.IsotropicActivation) for m in build().modules())
        assert count >= 2


# ------------------------------------------------------------------------------------------------ torch.func.vmap


@pytest.mark.parametrize(
    "fn",
    [
        lambda t: IF.iso_batch_norm(t, training=True),
        lambda t: IF.iso_batch_norm(t, training=True, center=False),
        lambda t: IF.iso_batch_norm(t, training=True, dim=0),
        lambda t: IF.chi_norm(t, training=True),
        lambda t: IF.chi_norm(t, training=True, dim=0),
    ],
    ids=["batch", "batch_uncentred", "batch_dim0", "chi", "chi_dim0"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_norms_under_vmap_match_per_sample_loop(fn, dtype):
    x = torch.randn(3, 10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    expected = torch.stack([fn(t) for t in x])
    torch.testing.assert_close(torch.func.vmap(fn)(x), expected)
    # gradients through vmap equal the per-sample ones too
    w = torch.randn_like(x)
    grad = torch.func.grad(lambda t: (torch.func.vmap(fn)(t) * w).sum())(x)
    grad_loop = torch.stack([torch.func.grad(lambda t, v=v: (fn(t) * v).sum())(t) for t, v in zip(x, w, strict=True)])
    torch.testing.assert_close(grad, grad_loop)
    # torch's batch_norm, the behaviour to match, does the same
    bn = torch.func.vmap(lambda t: nn.functional.batch_norm(t, None, None, training=True))(x)
    torch.testing.assert_close(bn, torch.stack([nn.functional.batch_norm(t, None, None, training=True) for t in x]))


def test_vmapped_running_statistics():
    x = torch.randn(3, 10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    means, variances = torch.zeros(3, 4, dtype=torch.float64), torch.full((3,), 4.0, dtype=torch.float64)
    y = torch.func.vmap(lambda t, m, v: IF.iso_batch_norm(t, m, v, training=True))(x, means, variances)
    loop_means, loop_vars = torch.zeros(3, 4, dtype=torch.float64), torch.full((3,), 4.0, dtype=torch.float64)
    expected = torch.stack([IF.iso_batch_norm(x[i], loop_means[i], loop_vars[i], training=True) for i in range(3)])
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(means, loop_means)
    torch.testing.assert_close(variances, loop_vars)
    norms = torch.full((3,), 2.0, dtype=torch.float64)
    torch.func.vmap(lambda t, r: IF.chi_norm(t, r, training=True))(x, norms)
    loop_norms = torch.full((3,), 2.0, dtype=torch.float64)
    for i in range(3):
        IF.chi_norm(x[i], loop_norms[i], training=True)
    torch.testing.assert_close(norms, loop_norms)


def test_unbatched_running_statistics_under_vmap_are_refused():
    x = torch.randn(3, 10, 4)
    with pytest.raises(ValueError, match=r"running statistics .* not vmapped"):
        torch.func.vmap(lambda t: IF.iso_batch_norm(t, torch.zeros(4), torch.tensor(4.0), training=True))(x)
    with pytest.raises(ValueError, match=r"running statistics .* not vmapped"):
        torch.func.vmap(lambda t: IF.chi_norm(t, torch.tensor(2.0), training=True))(x)
