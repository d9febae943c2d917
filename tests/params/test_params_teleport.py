"""Teleportation keeps the batch loss and raises the gradient norm along non-compact groups only."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import isotorch as it
from isotorch.params import teleport
from tests.params.params_models import iso_mlp, mlp


def _batch(dtype, n_in=5, n_out=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(32, n_in, generator=gen, dtype=dtype), torch.randn(32, n_out, generator=gen, dtype=dtype)


def test_relu_teleport_keeps_loss_and_raises_grad_norm(dtype):
    model = mlp(nn.ReLU, dtype=dtype)
    batch = _batch(dtype)
    result = teleport(model, F.mse_loss, batch, steps=5, lr=0.1)
    assert result.sites == {"0": "positive_scaling", "2": "positive_scaling"}
    assert result.gain > 1.05
    assert abs(result.loss_after - result.loss_before) <= it.testing.tolerance(dtype) * result.loss_before
    with torch.no_grad():
        assert abs(float(F.mse_loss(result.model(batch[0]), batch[1])) - result.loss_before) < 1e-4
    assert result.invariant_sites == ()
    assert list(result.history) == sorted(result.history)


def test_linear_pair_teleport_uses_general_linear(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 3)).to(dtype)
    result = teleport(model, F.mse_loss, _batch(dtype), steps=3, lr=0.05)
    assert result.sites == {"0": "general_linear"} and result.gain > 1.0


def test_orthogonal_sites_cannot_change_the_grad_norm():
    model = iso_mlp()
    result = teleport(model, F.mse_loss, _batch(torch.float64), steps=3, lr=0.1)
    assert set(result.invariant_sites) == {"0", "2"} and "cannot change" in result.note
    assert result.gain == pytest.approx(1.0, abs=1e-9)


def test_teleport_bad_input():
    model = mlp(nn.ReLU)
    with pytest.raises(ValueError, match="objective"):
        teleport(model, F.mse_loss, _batch(torch.float64), objective="sharpness")
    with pytest.raises(ValueError, match="targets"):
        teleport(model, F.mse_loss, [torch.randn(4, 5, dtype=torch.float64)])
    with pytest.raises(ValueError, match="do not fit"):
        teleport(model, F.mse_loss, _batch(torch.float64, n_in=7))
    tanh = mlp(nn.Tanh)
    with pytest.raises(ValueError, match="no continuous group"):
        teleport(tanh, F.mse_loss, _batch(torch.float64), sites=["0"])
    assert teleport(tanh, F.mse_loss, _batch(torch.float64)).sites == {}
