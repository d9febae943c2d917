"""transform: verification, elements, inverses, optimiser state."""

import pytest
import torch
from torch import nn

import isotorch as it
from isotorch.params import Element, SymmetryError, sample_element, symmetries, transform
from tests.params.params_models import iso_mlp, mlp


def _x(dtype, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(3), dtype=dtype)


def test_transform_does_not_modify_the_original(dtype):
    model = mlp(nn.ReLU, dtype=dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    syms = symmetries(model, _x(dtype, 4, 5))
    new = transform(model, sample_element(syms, torch.Generator().manual_seed(0)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.allclose(new[0].weight, model[0].weight)


def test_inverse_undoes_the_transform(dtype):
    model = iso_mlp(dtype=dtype)
    syms = symmetries(model, _x(dtype, 4, 5))
    g = sample_element(syms, torch.Generator().manual_seed(0))
    back = transform(transform(model, g), g.inverse())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for k, v in model.state_dict().items():
        assert torch.allclose(back.state_dict()[k], v, atol=tol)
    composed = g.inverse() @ g
    assert torch.allclose(composed.matrix("0"), torch.eye(16, dtype=torch.float64), atol=1e-12)


def test_permutation_index_vectors_follow_the_rebasin_convention():
    model = mlp(nn.ReLU)
    syms = symmetries(model, _x(torch.float64, 4, 5))
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    new = transform(model, Element(syms, {"0": perm}))
    assert torch.equal(new[0].weight, model[0].weight[perm])
    assert torch.equal(new[2].weight, model[2].weight[:, perm])
    same = transform(model, Element(syms, {"0": torch.eye(16, dtype=torch.float64)[perm]}))
    assert torch.equal(same[0].weight, new[0].weight)


def test_element_validation():
    syms = symmetries(mlp(nn.ReLU), _x(torch.float64, 4, 5))
    with pytest.raises(KeyError, match="no site named"):
        Element(syms, {"9": torch.eye(16)})
    with pytest.raises(ValueError, match=r"\(16, 16\)"):
        Element(syms, {"0": torch.eye(15)})
    with pytest.raises(ValueError, match="permutation of range"):
        Element(syms, {"0": torch.zeros(16, dtype=torch.long)})
    with pytest.raises(TypeError, match="Symmetries"):
        Element("syms", {})
    with pytest.raises(TypeError, match="Element"):
        transform(mlp(nn.ReLU), {"0": torch.eye(16)})


def test_negative_scaling_is_not_a_relu_symmetry(dtype):
    model = mlp(nn.ReLU, dtype=dtype)
    syms = symmetries(model, _x(dtype, 8, 5))
    d = torch.diag(torch.linspace(0.5, 2.0, 16, dtype=torch.float64))
    transform(model, Element(syms, {"0": d}))  # positive scaling: fine
    with pytest.raises(SymmetryError):
        transform(model, Element(syms, {"0": -d}))
    with pytest.raises(SymmetryError):
        transform(model, Element(syms, {"0": -d}), check_group=False)


def test_model_mismatch_is_named():
    syms = symmetries(mlp(nn.ReLU), _x(torch.float64, 4, 5))
    other = mlp(nn.ReLU, widths=(5, 16, 12, 3))
    with pytest.raises(ValueError, match=r"2\.weight"):
        transform(other, sample_element(syms))


def _step(model, opt, x):
    opt.zero_grad()
    model(x).pow(2).sum().backward()
    opt.step()


@pytest.mark.parametrize(
    ("opt_cls", "kwargs", "act", "group_ok"),
    [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, it.nn.IsoTanh, True),
        (torch.optim.Adam, {"lr": 0.01}, nn.ReLU, True),
        (torch.optim.Adam, {"lr": 0.01}, it.nn.IsoTanh, False),
    ],
)
def test_optimiser_state_follows_the_transform(opt_cls, kwargs, act, group_ok):
    torch.manual_seed(0)
    model = mlp(act)
    twin = mlp(act)
    twin.load_state_dict(model.state_dict())
    x = _x(torch.float64, 6, 5)
    opt = opt_cls(model.parameters(), **kwargs)
    twin_opt = opt_cls(twin.parameters(), **kwargs)
    _step(model, opt, x)
    _step(twin, twin_opt, x)
    syms = symmetries(model, x)
    if act is nn.ReLU:  # a permutation (Adam is permutation-equivariant)
        g = Element(syms, {"0": torch.randperm(16), "2": torch.randperm(16)})
    else:
        g = sample_element(syms, torch.Generator().manual_seed(1))
    if not group_ok:
        with pytest.raises(SymmetryError, match="second-moment"):
            transform(model, g, optimiser=opt)
        return
    new = transform(model, g, optimiser=opt)
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], new.parameters(), strict=True))
    _step(new, opt, x)  # the second step in the transformed coordinates
    _step(twin, twin_opt, x)  # the second step in the original coordinates
    expected = transform(twin, g)
    for (k, v), w in zip(expected.state_dict().items(), new.state_dict().values(), strict=True):
        assert torch.allclose(v, w, atol=1e-10), k
    # negative control: without transforming the state, the momentum points the wrong way
    stale = transform(twin, g)
    stale_opt = opt_cls(stale.parameters(), **kwargs)
    stale_opt.load_state_dict(twin_opt.state_dict())
    _step(stale, stale_opt, x)
    _step(twin, twin_opt, x)
    assert not torch.allclose(transform(twin, g, check=False)[0].weight, stale[0].weight, atol=1e-6)


@pytest.mark.parametrize("optimiser", [torch.optim.Adamax, torch.optim.ASGD, torch.optim.Adadelta])
def test_optimiser_states_exact_only_under_permutations_refuse_scalings(optimiser):
    """Adamax's max |g|, ASGD's parameter average and Adadelta's squared updates move like permutations, but not
    like gradients (or their squares) under positive scalings: a scaling raises instead of corrupting them."""

    def stepped():
        model = mlp(nn.ReLU, widths=(3, 4, 2))
        opt = optimiser(model.parameters())
        model(x).sum().backward()
        opt.step()
        return model, opt

    x = torch.randn(8, 3, dtype=torch.float64)
    model, opt = stepped()
    syms = symmetries(model, x)
    site = "0"  # the hidden ReLU site, named after its producer
    transform(model, Element(syms, {site: torch.tensor([1, 0, 3, 2])}), optimiser=opt)
    model, opt = stepped()
    scaling = torch.diag(torch.tensor([2.0, 3.0, 0.5, 4.0], dtype=torch.float64))
    with pytest.raises(SymmetryError, match="permutations"):
        transform(model, Element(syms, {site: scaling}), optimiser=opt)


@pytest.mark.parametrize(("inner", "axis", "sliced"), [(1, 0, False), (3, 1, False), (1, 1, True), (2, 0, True)])
def test_monomial_elements_act_like_dense_matrices(inner, axis, sliced, monkeypatch):
    from isotorch.params import _transform
    from isotorch.params._sites import Action

    gen = torch.Generator().manual_seed(0)
    t = torch.randn(12, 18, generator=gen, dtype=torch.float64)
    n = 3 if sliced else t.shape[axis] // inner
    action = Action("w", axis, "out", inner, axis, 2, 2 + n * inner) if sliced else Action("w", axis, "out", inner)
    g = torch.diag(torch.randn(n, generator=gen, dtype=torch.float64))[torch.randperm(n, generator=gen)]
    fast = _transform.act(t, g, action)
    monkeypatch.setattr(_transform, "_monomial", lambda g: None)
    torch.testing.assert_close(fast, _transform.act(t, g, action), rtol=0, atol=0)


def test_monomial_inverse_transpose_is_exact():
    from isotorch.params._transform import _inverse_transpose

    gen = torch.Generator().manual_seed(0)
    g = torch.diag(torch.randn(7, generator=gen, dtype=torch.float64))[torch.randperm(7, generator=gen)]
    torch.testing.assert_close(_inverse_transpose(g), torch.linalg.inv(g).mT, rtol=1e-15, atol=0)


def _hadamard_like(n, kind, dtype, gen):
    from isotorch.params import hadamard, random_hadamard

    if kind == "plain":
        return hadamard(n, dtype=dtype)
    if kind == "signed":  # rows and columns with random signs, transposed, scaled: still α·D_r·Hᵀ·D_c
        r = torch.randint(0, 2, (n,), generator=gen).to(dtype) * 2 - 1
        return (3.0 * r[:, None] * random_hadamard(n, generator=gen, dtype=dtype).T).to(dtype)
    return random_hadamard(n, generator=gen, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("n", "kind", "inner", "axis", "sliced"),
    [
        (16, "plain", 1, 0, False),
        (12, "random", 1, 1, False),  # Paley core (not symmetric)
        (12, "signed", 2, 0, False),
        (20, "signed", 1, 1, True),
        (24, "random", 3, 0, True),
    ],
)
def test_hadamard_elements_use_the_fast_transform_and_match_the_dense_product(n, kind, inner, axis, sliced, dtype):
    """A (signed, scaled, transposed) Hadamard element is applied by the fast transform, equal to the dense
    product to round-off; a matrix one entry away from it is not taken for one (negative control)."""
    from isotorch.params import _transform
    from isotorch.params._sites import Action

    gen = torch.Generator().manual_seed(n)
    g = _hadamard_like(n, kind, dtype, gen)
    assert _transform._plan_of(g).kind == "hadamard"
    shape = [7, 5]
    shape[axis] = n * inner + (5 if sliced else 0)
    t = torch.randn(*shape, generator=gen, dtype=dtype)
    action = Action("w", axis, "out", inner, axis, 2, 2 + n * inner) if sliced else Action("w", axis, "out", inner)
    fast = _transform.act(t, g, action)
    dense = _transform.act(t, g, action, _transform._Plan("dense"))
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(fast, dense, rtol=0, atol=50 * eps * float(dense.abs().max()))
    # the dense path computes the same as an explicit einsum (reference written without act)
    seg = t.narrow(axis, 2, n * inner) if sliced else t
    moved = seg.movedim(axis, 0).reshape(n, inner, -1)
    ref = torch.einsum("ij,jkr->ikr", g, moved).reshape(seg.movedim(axis, 0).shape).movedim(0, axis)
    got = fast.narrow(axis, 2, n * inner) if sliced else fast
    torch.testing.assert_close(got, ref, rtol=0, atol=50 * eps * float(ref.abs().max()))
    if sliced:
        assert torch.equal(fast.narrow(axis, 0, 2), t.narrow(axis, 0, 2))
    near = g.clone()
    near[1, 2] *= 1 + 1e-3
    assert _transform._plan_of(near).kind == "dense"
    assert _transform._plan_of(g * torch.tensor([1.0, 2.0] * (n // 2), dtype=dtype)).kind == "dense"


def test_hadamard_inverse_transpose_and_no_dense_matmul_in_transform(monkeypatch):
    """g⁻ᵀ of α·D·H·D' is g/(α²n) (no inverse); transform of a folded stream by hadamard(n) never calls einsum."""
    from isotorch.params import _transform, fold_norms, hadamard

    g = 2.0 * hadamard(12)
    torch.testing.assert_close(_transform._inverse_transpose(g), torch.linalg.inv(g).mT, rtol=0, atol=1e-15)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.norm, self.norm_f, self.up, self.down, self.head = (
                nn.Linear(5, 16),
                nn.LayerNorm(16),
                nn.LayerNorm(16),
                nn.Linear(16, 32),
                nn.Linear(32, 16),
                nn.Linear(16, 3),
            )

        def forward(self, x):
            h = self.emb(x)
            h = h + self.down(torch.relu(self.up(self.norm(h))))
            return self.head(self.norm_f(h))

    torch.manual_seed(0)
    model = Block().double()
    x = torch.randn(6, 5, dtype=torch.float64)
    folded = fold_norms(model, x)
    syms = symmetries(folded, x)
    calls = []
    real = torch.einsum
    monkeypatch.setattr(torch, "einsum", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    rotated = transform(folded, Element(syms, {"emb": hadamard(16)}))  # verified inside transform
    assert calls == []
    torch.testing.assert_close(rotated(x), model(x), rtol=0, atol=1e-12)
