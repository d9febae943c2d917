"""Tests for isotorch.audit._sampling: the fast action of monomial elements, Lie-algebra generators, inputs."""

import math

import pytest
import torch

from isotorch import groups
from isotorch.audit._sampling import (
    DENSE_LIMIT,
    DISTRIBUTIONS,
    Element,
    Sampler,
    draw_input,
    random_generator,
    sample,
)


@pytest.mark.parametrize("name", ["permutation", "signed_permutation", "positive_scaling", "orthogonal"])
def test_element_action_matches_the_dense_action(name, dtype):
    gen = torch.Generator().manual_seed(0)
    g = groups.get(name).sample(6, generator=gen, dtype=torch.float64)
    element = Element.of(g)
    assert (element.perm is not None) == (name != "orthogonal")
    x = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64).to(dtype)
    expected = groups.act(g, x.to(torch.float64), 1)
    assert torch.allclose(element.act(x, 1), expected, atol=1e-12, rtol=0)
    inverse = element.inverse()
    assert torch.allclose(inverse.matrix @ g, torch.eye(6, dtype=torch.float64), atol=1e-10)
    assert element.is_permutation == (name == "permutation")


@pytest.mark.parametrize(
    "key", ["orthogonal", "special_orthogonal", "mean_orthogonal", "block_orthogonal:2", "positive_scaling"]
)
def test_random_generators_lie_in_the_algebra(key):
    group = groups.get(key)
    n = 6
    a = random_generator(group, n, torch.Generator().manual_seed(0)).matrix
    assert math.isclose(float(torch.linalg.matrix_norm(a)), math.sqrt(n), rel_tol=1e-12)
    basis = group.lie_algebra(n).reshape(-1, n * n)
    coefficients = torch.linalg.lstsq(basis.T, a.reshape(-1, 1)).solution
    assert torch.allclose(basis.T @ coefficients, a.reshape(-1, 1), atol=1e-10)
    # a generator of a non-algebra direction is not in the span (negative control)
    outside = torch.randn(n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    residual = basis.T @ torch.linalg.lstsq(basis.T, outside.reshape(-1, 1)).solution - outside.reshape(-1, 1)
    assert float(residual.norm()) > 1e-3


def test_discrete_groups_have_no_generator():
    gen = torch.Generator().manual_seed(0)
    assert random_generator(groups.get("permutation"), 5, gen) is None
    assert random_generator(groups.get("orthogonal"), 1, gen) is None


def test_sampler_reuses_elements():
    sampler = Sampler(torch.Generator().manual_seed(0))
    first = sampler.elements(groups.get("orthogonal"), 4, 2)
    again = sampler.elements(groups.get("orthogonal"), 4, 3)
    assert again[0] is first[0] and again[1] is first[1] and len(again) == 3


def test_draw_input_distributions():
    like = torch.empty(200, 8, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    draws = {kind: draw_input(kind, like, gen) for kind in DISTRIBUTIONS}
    assert all(d.shape == like.shape and d.dtype == like.dtype for d in draws.values())
    assert draws["scaled_up"].std() > 5 > draws["gaussian"].std() > 0.5 > draws["scaled_down"].std()
    assert (draws["sparse"] == 0).float().mean() > 0.5
    assert draws["outliers"].abs().max() > 10
    with pytest.raises(ValueError, match="distribution"):
        draw_input("cauchy", like, gen)


LARGE = DENSE_LIMIT + 8


@pytest.mark.parametrize(
    "name",
    [
        "trivial",
        "permutation",
        "signed_permutation",
        "positive_scaling",
        "orthogonal",
        "special_orthogonal",
        "mean_orthogonal",
    ],
)
def test_structured_elements_above_the_dense_limit_are_exact_group_elements(name):
    group = groups.get(name)
    gen = torch.Generator().manual_seed(0)
    element = sample(group, LARGE, gen)
    assert element.dense is None  # no O(n³) sampling
    matrix = element.matrix
    assert group.contains(matrix, atol=1e-9)
    # negative control: a structured orthogonal element is not a signed permutation
    if name in ("orthogonal", "special_orthogonal", "mean_orthogonal"):
        assert not groups.get("signed_permutation").contains(matrix, atol=1e-9)
    x = torch.randn(3, LARGE, generator=gen, dtype=torch.float64)
    assert torch.allclose(element.act(x, -1), x @ matrix.T, atol=1e-10)
    assert torch.allclose(element.inverse().act(element.act(x, -1), -1), x, atol=1e-10)
    assert torch.allclose(element.contragredient().matrix, torch.linalg.inv(matrix).T, atol=1e-8)


@pytest.mark.parametrize("name", ["orthogonal", "mean_orthogonal", "block_orthogonal:4"])
def test_structured_generators_above_the_dense_limit(name):
    a = random_generator(groups.get(name), LARGE, torch.Generator().manual_seed(0)).matrix
    assert torch.allclose(a, -a.T, atol=1e-12)
    ones = torch.ones(LARGE, dtype=torch.float64)
    if name == "mean_orthogonal":
        assert float((a @ ones).abs().max()) < 1e-9
    else:
        assert float((a @ ones).abs().max()) > 1e-3
    if name.startswith("block"):
        mask = torch.block_diag(*[torch.ones(4, 4)] * (LARGE // 4)).bool()
        assert float(a[~mask].abs().max()) == 0.0
