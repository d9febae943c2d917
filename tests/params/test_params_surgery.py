"""SVD diagonalisation, growing and pruning of isotropic sites."""

import pytest
import torch
from torch import nn

import isotorch as it
from isotorch.params import SymmetryError, grow, prune, svd_diagonalise
from isotorch.testing import relative_error
from tests.params.params_models import iso_mlp, mlp


def _x(dtype, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(4), dtype=dtype)


def test_svd_diagonalise_left_and_full(dtype):
    model = iso_mlp(widths=(6, 6, 6, 3), dtype=dtype)
    x = _x(dtype, 5, 6)
    left = svd_diagonalise(model, "2", x=x)
    w = left[2].weight.double()
    assert torch.allclose(w @ w.T, torch.diag(torch.diagonal(w @ w.T)), atol=1e-4 if dtype == torch.float32 else 1e-10)
    full = svd_diagonalise(model, "2", x=x, full=True)
    w = full[2].weight.double()
    assert torch.allclose(w, torch.diag(torch.diagonal(w)), atol=1e-4 if dtype == torch.float32 else 1e-10)
    sv = torch.linalg.svdvals(model[2].weight.double())
    assert torch.allclose(torch.diagonal(w).abs(), sv, atol=1e-4)
    with torch.no_grad():
        assert relative_error(full(x), model(x)) < it.testing.tolerance(dtype)
    with pytest.raises(ValueError, match="model input"):
        svd_diagonalise(model, "0", x=x, full=True)


def test_surgery_refuses_elementwise_sites():
    model = mlp(nn.ReLU)
    x = _x(torch.float64, 4, 5)
    with pytest.raises(SymmetryError, match="isotropic"):
        svd_diagonalise(model, "0", x=x)
    with pytest.raises(SymmetryError, match="isotropic"):
        prune(model, "0", 2, x=x)


def test_grow_is_exact(dtype):
    model = iso_mlp(dtype=dtype)
    x = _x(dtype, 5, 5)
    new = grow(model, "2", 4, x=x, generator=torch.Generator().manual_seed(0))
    assert new[2].out_features == 20 and new[4].in_features == 20
    assert new[4].weight[:, 16:].abs().sum() > 0  # new columns are not zero (they need a gradient)
    with torch.no_grad():
        assert relative_error(new(x), model(x)) < it.testing.tolerance(dtype)
    relu_new = grow(mlp(nn.ReLU, dtype=dtype), "0", 2, x=x)  # ReLU(0) = 0: exact too
    assert relu_new[0].out_features == 18
    with pytest.raises(SymmetryError, match="changed the function"):
        grow(mlp(nn.Sigmoid, dtype=dtype), "0", 2, x=x)  # negative control: sigmoid(0) = ½
    with pytest.raises(ValueError, match="k must"):
        grow(model, "0", 0, x=x)


def test_prune_null_directions_is_exact_when_biases_vanish():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6, bias=False), it.nn.IsoTanh(), nn.Linear(6, 2)).double()
    x = _x(torch.float64, 7, 3)
    result = prune(model, "0", 3, x=x)
    assert result.removed == (0.0, 0.0, 0.0) and result.removed_bias == 0.0
    assert result.output_error < 1e-12 and result.model[0].out_features == 3


def test_pruned_length_survives_a_state_dict_round_trip():
    """prune writes the intrinsic length into the activation; it is saved and loaded with the weights."""
    model = iso_mlp(widths=(5, 8, 3))
    x = _x(torch.float64, 9, 5)
    pruned = prune(model, "0", 4, x=x).model
    assert "1.fixed_length" in pruned.state_dict()
    fresh = nn.Sequential(nn.Linear(5, 4), it.nn.IsoTanh(), nn.Linear(4, 3)).double()
    fresh.load_state_dict(pruned.state_dict())
    assert fresh[1].length == pytest.approx(pruned[1].length)
    torch.testing.assert_close(fresh(x), pruned(x))


def test_prune_within_the_bound(dtype):
    model = iso_mlp(widths=(5, 8, 3), dtype=dtype)
    x = _x(dtype, 9, 5)
    result = prune(model, "0", 4, x=x)
    assert len(result.removed) == 4 and result.length_update > 0
    assert result.change <= result.bound + 1e-6
    assert result.model[1].length == pytest.approx(result.length_update)
    big = prune(model, "0", 5, x=x)  # removes a non-zero singular value: approximate, still bounded
    assert big.removed[0] > 0 and big.change <= big.bound + 1e-6 and big.output_error > 0
    with pytest.raises(ValueError, match="criterion"):
        prune(model, "0", 1, "magnitude", x=x)
    with pytest.raises(ValueError, match="k must"):
        prune(model, "0", 8, x=x)
