"""Canonical forms: one representative per orbit, function unchanged."""

import pytest
import torch
from torch import nn

from isotorch.params import canonical_element, canonicalise, sample_element, symmetries, transform
from isotorch.testing import relative_error
from tests.params.params_models import iso_mlp, mlp


def _x(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def _close(a, b, tol=1e-8):
    return all(torch.allclose(v, b.state_dict()[k], atol=tol) for k, v in a.state_dict().items())


@pytest.mark.parametrize(
    ("make", "scaling"),
    [
        (lambda: mlp(nn.ReLU), "fan_in"),
        (lambda: mlp(nn.ReLU), "balanced"),
        (lambda: mlp(nn.Tanh), "fan_in"),
        (lambda: mlp(nn.GELU), "fan_in"),
        (lambda: iso_mlp(widths=(8, 6, 5, 3)), "fan_in"),
    ],
)
def test_canonical_form_is_orbit_invariant(make, scaling):
    model = make()
    x = _x(6, model[0].in_features)
    syms = symmetries(model, x)
    other = transform(model, sample_element(syms, torch.Generator().manual_seed(1)))
    assert not _close(model, other)  # negative control: the orbit points differ
    ca = canonicalise(model, x, scaling=scaling)
    cb = canonicalise(other, x, scaling=scaling)
    assert _close(ca, cb)
    assert relative_error(ca(x), model(x)) < 1e-9


def test_canonical_properties():
    x = _x(6, 5)
    relu = canonicalise(mlp(nn.ReLU), x)
    assert torch.allclose(
        torch.cat([relu[0].weight, relu[0].bias[:, None]], 1).norm(dim=1), torch.ones(16, dtype=torch.float64)
    )
    tanh = canonicalise(mlp(nn.Tanh), x)
    assert (tanh[0].bias >= 0).all() and (tanh[2].bias >= 0).all()
    balanced = canonicalise(mlp(nn.ReLU), x, scaling="balanced")
    prod = torch.cat([balanced[2].weight, balanced[2].bias[:, None]], 1).norm(dim=1)
    assert torch.allclose(prod, balanced[4].weight.norm(dim=0), rtol=1e-9)
    iso = canonicalise(iso_mlp(widths=(8, 6, 5, 3)), _x(6, 8))
    gram = iso[0].weight @ iso[0].weight.T + iso[0].bias[:, None] * iso[0].bias[None, :]
    assert gram.shape == (6, 6)
    with pytest.raises(ValueError, match="scaling"):
        canonical_element(mlp(nn.ReLU), x, scaling="unit")
