"""Removing symmetry: syre, W-asymmetric layers, FiGLU — sites broken, exact recovery impossible."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import isotorch as it
from isotorch.params import (
    AsymConv2d,
    AsymLinear,
    Element,
    FiGLU,
    SymmetryError,
    align,
    sample_element,
    symmetries,
    syre,
    transform,
)
from isotorch.testing import relative_error
from tests.params.params_models import mlp


def _x(dtype, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=dtype)


def _plain(model):
    """A copy with the effective weights as ordinary parameters (what weight matching would see)."""
    plain = nn.Sequential(
        *[nn.Linear(m.in_features, m.out_features) if isinstance(m, AsymLinear) else m for m in model]
    )
    plain = plain.to(next(model.parameters()).dtype)
    with torch.no_grad():
        for new, old in zip(plain, model, strict=True):
            if isinstance(old, AsymLinear):
                new.weight.copy_(old.effective_weight())
                new.bias.copy_(old.bias)
    return plain


@pytest.mark.parametrize("kind", ["offset", "diagonal"])
def test_syre_keeps_the_function_and_breaks_the_sites(kind, dtype):
    model = mlp(nn.ReLU, dtype=dtype)
    x = _x(dtype, 6, 5)
    new = syre(model, 0.5, kind, generator=torch.Generator().manual_seed(0))
    assert relative_error(new(x), model(x)) < it.testing.tolerance(dtype) * 10
    syms = symmetries(new, x)
    assert all(s.status == "broken" and "reparametrised" in s.reason for s in syms)
    assert sample_element(syms).matrices == {}
    with pytest.raises(SymmetryError, match="broken"):
        sample_element(syms, sites=["0"])
    # the loss with weight decay towards the offset is not permutation-invariant
    theta = new[0].parametrizations.weight.original
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        penalty = theta.pow(2).sum()
        w_perm = new[0].weight[perm]
        theta_perm = new[0].parametrizations.weight[0].right_inverse(w_perm)
    assert abs(float(theta_perm.pow(2).sum() - penalty)) > 1e-3


def test_syre_makes_exact_recovery_impossible():
    model = mlp(nn.ReLU)
    x = _x(torch.float64, 6, 5)
    a = syre(model, 0.5, generator=torch.Generator().manual_seed(0))
    b = syre(model, 0.5, generator=torch.Generator().manual_seed(0))  # the same offsets
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # a permuted run in the trainable coordinates θ
        b[0].parametrizations.weight.original.copy_(a[0].parametrizations.weight.original[perm])
        b[0].bias.copy_(a[0].bias[perm])
        b[2].parametrizations.weight.original.copy_(a[2].parametrizations.weight.original[:, perm])
    ea, eb = _effective(a), _effective(b)
    result = align(ea, eb, x=x)
    assert result.distance_after > 0.1  # no permutation maps B's effective weights to A's
    control = align(model, transform(model, Element(symmetries(model, x), {"0": perm})), x=x)
    assert control.distance_after == 0.0


def _effective(model):
    out = mlp(nn.ReLU)
    with torch.no_grad():
        for i in (0, 2, 4):
            out[i].weight.copy_(model[i].weight)
            out[i].bias.copy_(model[i].bias)
    return out


def test_asym_linear_masks_gradients_and_breaks_sites(dtype):
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(AsymLinear(5, 8, n_fix=2, generator=gen), nn.GELU(), AsymLinear(8, 3, n_fix=3, generator=gen))
    model = model.to(dtype)
    x = _x(dtype, 6, 5)
    model(x).pow(2).sum().backward()
    layer = model[0]
    assert (layer.weight.grad[layer.mask == 0] == 0).all() and layer.weight.grad.abs().sum() > 0
    assert layer.n_free == 8 * 3
    syms = symmetries(model, x)
    assert syms["0"].status == "broken" and "W-asymmetric" in syms["0"].reason
    # exact recovery is impossible: permuting the free weights is not a symmetry of the effective weights
    twin = nn.Sequential(
        AsymLinear(5, 8, n_fix=2, generator=torch.Generator().manual_seed(0)),
        nn.GELU(),
        AsymLinear(8, 3, n_fix=3, generator=torch.Generator().manual_seed(0)),
    ).to(dtype)
    twin.load_state_dict(model.state_dict())
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        twin[0].weight.copy_(model[0].weight[perm] * model[0].mask)
        twin[0].bias.copy_(model[0].bias[perm])
        twin[2].weight.copy_(model[2].weight[:, perm] * model[2].mask)
    assert relative_error(twin(x), model(x)) > 1e-3
    result = align(_plain(model), _plain(twin), x=x)
    assert result.distance_after > 0.1
    # with n_fix = 0 the layer is an ordinary linear layer and the site is free
    free = nn.Sequential(AsymLinear(5, 8, n_fix=0), nn.GELU(), nn.Linear(8, 3)).to(dtype)
    assert symmetries(free, x)["0"].free


def test_asym_conv2d():
    gen = torch.Generator().manual_seed(0)
    conv = AsymConv2d(3, 4, 3, padding=1, n_fix=5, generator=gen)
    x = torch.randn(2, 3, 6, 6)
    ref = F.conv2d(x, conv.effective_weight(), conv.bias, padding=1)
    assert torch.allclose(conv(x), ref)
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(4, 2, 1))
    assert symmetries(model, x)["0"].status == "broken"
    with pytest.raises(ValueError, match="n_fix"):
        AsymConv2d(3, 4, 3, n_fix=28)
    with pytest.raises(ValueError, match="n_fix"):
        AsymLinear(3, 4, n_fix=4)


def test_figlu_is_sigma_asymmetric(dtype):
    act = FiGLU(6, generator=torch.Generator().manual_seed(0)).to(dtype)
    x = _x(dtype, 10, 6)
    assert torch.allclose(act(x), torch.sigmoid(x @ act.weight.T) * x)
    err = it.testing.equivariance_error(act, x, "permutation")
    assert err > 1e-3  # not even permutation-equivariant
    try:
        from isotorch.audit import audit
    except ImportError:  # pragma: no cover - the audit package is a sibling
        pytest.skip("isotorch.audit is not available")
    assert "permutation" not in audit(act, x).equivariant
    model = nn.Sequential(nn.Linear(5, 6), act, nn.Linear(6, 2)).to(dtype)
    site = symmetries(model, _x(dtype, 4, 5))["0"]
    assert site.status == "broken" and "trivial" in site.reason
    with pytest.raises(ValueError, match="features"):
        FiGLU(0)


def test_syre_bad_input():
    with pytest.raises(ValueError, match="kind"):
        syre(mlp(), 0.1, "mirror")
    with pytest.raises(ValueError, match="sigma0"):
        syre(mlp(), -1.0)
    with pytest.raises(ValueError, match="sigma0"):
        syre(mlp(), 0.0)
    with pytest.raises(ValueError, match="no weights"):
        syre(nn.ReLU(), 0.1)
