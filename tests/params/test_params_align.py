"""align: weight matching, orthogonal Procrustes, activation matching, bad input; interpolate and barrier."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import isotorch as it
from isotorch.params import Element, _solvers, align, barrier, interpolate, sample_element, symmetries, transform
from tests.params.params_models import CNN, ResMLP, Transformer, iso_mlp, mlp, tokens


def _x(dtype, *shape, seed=3):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _max_diff(a, b):
    return max(float((v - b.state_dict()[k]).abs().max()) for k, v in a.state_dict().items() if v.is_floating_point())


def _permuted(model, x, seed=0):
    syms = symmetries(model, x)
    gen = torch.Generator().manual_seed(seed)
    return transform(model, Element(syms, {s.name: torch.randperm(s.size, generator=gen) for s in syms.free}))


def test_permuted_mlp_is_recovered_exactly_with_zero_barrier(dtype):
    a = mlp(nn.ReLU, widths=(5, 24, 24, 24, 3), dtype=dtype)
    x = _x(dtype, 8, 5)
    b = _permuted(a, x)
    assert _max_diff(a, b) > 0.1
    result = align(a, b, x=x)
    assert _max_diff(a, result.model) == 0.0
    assert result.distance_after == 0.0 and result.objective_after > result.objective_before
    data = (_x(dtype, 64, 5, seed=4), torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(0)))
    res = barrier(a, result.model, F.cross_entropy, data, steps=5)
    assert abs(res.barrier) < 1e-6 and abs(res.barrier_linear) < 1e-6
    assert barrier(a, b, F.cross_entropy, data, steps=5).barrier > 1e-4  # negative control: unaligned


def test_rotated_isotropic_mlp_needs_procrustes():
    a = iso_mlp(widths=(5, 16, 16, 3))
    x = _x(torch.float64, 8, 5)
    b = transform(a, sample_element(symmetries(a, x), torch.Generator().manual_seed(2)))
    result = align(a, b, x=x)
    assert result.groups == {"0": "orthogonal", "2": "orthogonal"}
    assert _max_diff(a, result.model) < 1e-5
    perm_only = align(a, b, x=x, group="permutation")
    assert _max_diff(a, perm_only.model) > 0.1  # negative control: permutations cannot undo a rotation
    assert perm_only.distance_after > 100 * result.distance_after + 1e-3


def test_rotated_isotropic_mlp_float32():
    a = iso_mlp(widths=(5, 12, 12, 3), dtype=torch.float32)
    x = _x(torch.float32, 8, 5)
    b = transform(a, sample_element(symmetries(a, x), torch.Generator().manual_seed(0)))
    assert _max_diff(a, align(a, b, x=x).model) < 1e-4


def test_sign_flipped_tanh_mlp_is_recovered(dtype):
    a = mlp(nn.Tanh, dtype=dtype)
    x = _x(dtype, 8, 5)
    b = transform(a, sample_element(symmetries(a, x), torch.Generator().manual_seed(1)))
    result = align(a, b, x=x)
    assert result.groups["0"] == "signed_permutation"
    assert _max_diff(a, result.model) < 1e-6


def test_block_orthogonal_site_is_recovered():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 12), it.nn.BlockIsotropicActivation(3), nn.Linear(12, 3)).double()
    x = _x(torch.float64, 8, 5)
    syms = symmetries(a, x)
    assert syms["0"].group == "block_orthogonal:3"
    b = transform(a, sample_element(syms, torch.Generator().manual_seed(5)))
    assert _max_diff(a, align(a, b, x=x).model) < 1e-8


def test_permuted_cnn_and_residual_net_are_recovered():
    torch.manual_seed(0)
    cnn = CNN().double()
    x = _x(torch.float64, 2, 3, 8, 8)
    assert _max_diff(cnn, align(cnn, _permuted(cnn, x), x=x).model) < 1e-12
    res = ResMLP().double()
    x = _x(torch.float64, 6, 4)
    assert _max_diff(res, align(res, _permuted(res, x), x=x).model) < 1e-12


def test_transformer_heads_and_stream_are_recovered():
    torch.manual_seed(0)
    model = Transformer(affine=True).double()
    syms = symmetries(model, tokens())
    gen = torch.Generator().manual_seed(0)
    perms = {s.name: torch.randperm(s.size, generator=gen) for s in syms.free if s.kind != "query_key"}
    perms = {k: v for k, v in perms.items() if syms[k].kind != "value_output"}
    b = transform(model, Element(syms, perms))
    result = align(model, b, x=tokens(), group="permutation")
    assert _max_diff(model, result.model) < 1e-12


def test_activation_matching(dtype):
    a = mlp(nn.GELU, dtype=dtype)  # GELU has no dead units, whose features could not be told apart
    x = _x(dtype, 8, 5)
    b = _permuted(a, x, seed=3)
    data = _x(dtype, 200, 5, seed=9)
    assert _max_diff(a, align(a, b, "activations", data=data).model) == 0.0
    # a rotation is identifiable from features only where they span the site: narrowing widths
    ia = iso_mlp(widths=(16, 12, 8, 3), dtype=dtype)
    data = _x(dtype, 200, 16, seed=9)
    ib = transform(ia, sample_element(symmetries(ia, data[:8]), torch.Generator().manual_seed(1)))
    tol = 1e-3 if dtype == torch.float32 else 1e-8
    assert _max_diff(ia, align(ia, ib, "activations", data=[data[:100], data[100:]]).model) < tol


def test_independent_networks_objective_improves():
    a, b = mlp(nn.ReLU, seed=0), mlp(nn.ReLU, seed=1)
    result = align(a, b, x=_x(torch.float64, 4, 5), generator=torch.Generator().manual_seed(3))
    assert result.objective_after > result.objective_before
    assert result.distance_after < result.distance_before
    assert 1 <= result.iterations <= 100
    assert set(result.to_dict()) >= {"objective_after", "groups", "element"}


def test_solvers_are_exact_maximisers():
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(6, 6, dtype=torch.float64, generator=gen)
    best = _solvers.value(_solvers.solve(c, "orthogonal"), c)
    assert abs(best - float(torch.linalg.svdvals(c).sum())) < 1e-10
    for key in ("permutation", "signed_permutation", "mean_orthogonal", "block_orthogonal:2", "special_orthogonal"):
        g = _solvers.solve(c, key)
        value = _solvers.value(g, c)
        for _ in range(20):
            other = it.groups.get(key).sample(6, generator=gen, dtype=torch.float64)
            assert _solvers.value(other, c) <= value + 1e-10
        if g.ndim == 2:
            assert it.groups.get(key).contains(g)


def test_bad_input_is_named():
    a = mlp(nn.ReLU)
    x = _x(torch.float64, 4, 5)
    with pytest.raises(ValueError, match=r"2.weight has shape"):
        align(a, mlp(nn.ReLU, widths=(5, 16, 12, 3)), x=x)
    with pytest.raises(ValueError, match="module 1 is ReLU in model_a but Tanh"):
        align(a, mlp(nn.Tanh), x=x)
    with pytest.raises(ValueError, match="dtype"):
        align(a, mlp(nn.ReLU, dtype=torch.float32), x=x)
    with pytest.raises(ValueError, match="example input"):
        align(a, mlp(nn.ReLU))
    with pytest.raises(ValueError, match="do not fit the model"):
        align(a, mlp(nn.ReLU), x=torch.randn(4, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="method"):
        align(a, mlp(nn.ReLU), "magic", x=x)
    with pytest.raises(ValueError, match="data="):
        align(a, mlp(nn.ReLU), "activations", x=x)
    with pytest.raises(ValueError, match="not a symmetry of any site"):
        align(a, mlp(nn.ReLU), x=x, group="orthogonal")
    with pytest.raises(ValueError, match="not a symmetry of site '0'"):
        align(a, mlp(nn.ReLU), x=x, group={"0": "signed_permutation"})
    with pytest.raises(ValueError, match="state-dict keys only in model_b"):
        align(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), x=torch.randn(1, 2))


def test_interpolate_endpoints_and_errors(dtype):
    a, b = mlp(nn.ReLU, dtype=dtype, seed=0), mlp(nn.ReLU, dtype=dtype, seed=1)
    assert _max_diff(interpolate(a, b, 0.0), a) == 0.0
    assert _max_diff(interpolate(a, b, 1.0), b) < 1e-6
    mid = interpolate(a, b, 0.5)
    assert torch.allclose(mid[0].weight, (a[0].weight + b[0].weight) / 2)
    with pytest.raises(ValueError, match="alpha"):
        interpolate(a, b, float("nan"))
    with pytest.raises(ValueError, match="differ in architecture"):
        interpolate(a, mlp(nn.ReLU, widths=(5, 8, 16, 3), dtype=dtype), 0.5)


def test_barrier_conventions():
    a, b = mlp(nn.ReLU, seed=0), mlp(nn.ReLU, seed=1)
    data = [(_x(torch.float64, 32, 5, seed=s), torch.randint(0, 3, (32,))) for s in range(2)]
    res = barrier(a, b, F.cross_entropy, data, steps=6)
    assert len(res.losses) == 6 and res.alphas[0] == 0.0 and res.alphas[-1] == 1.0
    la, lb = res.losses[0], res.losses[-1]
    assert res.barrier == pytest.approx(max(res.losses) - (la + lb) / 2)
    lin = max(loss - ((1 - t) * la + t * lb) for t, loss in zip(res.alphas, res.losses, strict=True))
    assert res.barrier_linear == pytest.approx(lin)
    mid = interpolate(a, b, 0.5).eval()
    with torch.no_grad():
        loss_mid = sum(float(F.cross_entropy(mid(x), y)) for x, y in data) / 2
    assert res.midpoint == pytest.approx(loss_mid - (la + lb) / 2)
    assert res.accuracies is not None and res.accuracy_barrier <= 0.0
    assert not res.recalibrated_bn
    with pytest.raises(ValueError, match="do not fit"):
        barrier(a, b, F.cross_entropy, (torch.randn(4, 6, dtype=torch.float64), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="steps"):
        barrier(a, b, F.cross_entropy, data, steps=1)
    with pytest.raises(ValueError, match="differ"):
        barrier(a, mlp(nn.Tanh), F.cross_entropy, data)


def test_barrier_recomputes_batchnorm_statistics():
    torch.manual_seed(0)
    a, b = CNN().double(), CNN().double()
    data = (_x(torch.float64, 16, 3, 8, 8), torch.randint(0, 3, (16,)))
    res = barrier(a, b, F.cross_entropy, data, steps=3)
    assert res.recalibrated_bn
    stale = barrier(a, b, F.cross_entropy, data, steps=3, recalibrate_bn=False)
    assert not stale.recalibrated_bn and res.losses != stale.losses
    same = barrier(a, a, F.cross_entropy, data, steps=3)
    assert abs(same.barrier) < 1e-9
