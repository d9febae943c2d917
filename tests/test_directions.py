"""Tests for isotorch.directions: known answers (simplex, cross-polytope, polygons, icosahedron), symmetry of the
sets, determinism, and input validation."""

import math
import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from isotorch import directions, groups
from isotorch.directions import (
    cross_polytope,
    energy,
    get,
    names,
    random_orthonormal,
    simplex,
    standard_basis,
    thomson,
)


def _cosines(v: torch.Tensor) -> torch.Tensor:
    """The off-diagonal cosines v_i·v_j (i ≠ j) of a set of unit vectors, as a flat tensor."""
    gram = v.double() @ v.double().T
    return gram[~torch.eye(len(v), dtype=torch.bool)]


def _set_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over rows of a of the distance to the nearest row of b (0 iff a ⊆ b as sets of rows)."""
    return float(
        torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values.max()
    )


def _unit_rows(v: torch.Tensor, atol: float = 1e-6) -> bool:
    return bool(torch.allclose(v.double().norm(dim=1), torch.ones(len(v), dtype=torch.float64), atol=atol))


# --- the fixed sets ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_fixed_sets_shapes_and_known_cosines(n, dtype):
    e = standard_basis(n, dtype=dtype)
    assert e.dtype == dtype and torch.equal(e, torch.eye(n, dtype=dtype))
    c = cross_polytope(n, dtype=dtype)
    assert c.shape == (2 * n, n) and _unit_rows(c)
    assert set(_cosines(c).tolist()) <= {0.0, -1.0}
    s = simplex(n, dtype=dtype)
    assert s.shape == (n + 1, n) and _unit_rows(s)
    atol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(
        _cosines(s), torch.full((n * (n + 1),), -1.0 / n, dtype=torch.float64), atol=atol, rtol=0
    )
    torch.testing.assert_close(s.double().sum(0), torch.zeros(n, dtype=torch.float64), atol=10 * atol, rtol=0)


def test_random_orthonormal(dtype):
    v = random_orthonormal(5, generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert v.dtype == dtype
    atol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(v.double() @ v.double().T, torch.eye(5, dtype=torch.float64), atol=atol, rtol=0)
    w = random_orthonormal(5, generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert torch.equal(v, w)
    assert not torch.equal(v, random_orthonormal(5, generator=torch.Generator().manual_seed(1), dtype=dtype))


@pytest.mark.parametrize(
    ("name", "group"), [("standard", "permutation"), ("cross_polytope", "signed_permutation")], ids=["S_n", "B_n"]
)
def test_sets_are_preserved_by_their_group(name, group, dtype):
    """g·V = V as a set for random g in the set's group; a cover of that group moves the set (negative control)."""
    n = 6
    v = get(name, n, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        g = groups.get(group).sample(n, generator=gen, dtype=dtype)
        assert _set_distance(groups.act(g, v, dim=1), v) <= 1e-6
    for cover in groups.covers(group, n):
        g = cover.sample(n, generator=gen, dtype=dtype)
        assert _set_distance(groups.act(g, v, dim=1), v) > 1e-3, cover


def test_simplex_symmetry_permutes_its_vertices():
    """The regular simplex has symmetry S_{n+1}: its Gram matrix is invariant under relabelling the vertices."""
    s = simplex(4)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s[perm] @ s[perm].T, s @ s.T)


# --- Thomson points ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
def test_thomson_reaches_the_regular_simplex(n):
    v = thomson(n + 1, n)
    assert _unit_rows(v, atol=1e-12)
    torch.testing.assert_close(
        _cosines(v), torch.full((n * (n + 1),), -1.0 / n, dtype=torch.float64), atol=1e-4, rtol=0
    )
    assert float(energy(v)) == pytest.approx(float(energy(simplex(n))), rel=1e-10)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_thomson_reaches_the_cross_polytope(n):
    v = thomson(2 * n, n)
    cos = _cosines(v)
    assert float(torch.minimum(cos.abs(), (cos + 1).abs()).max()) < 1e-4  # every cosine is 0 or −1
    assert int((cos < -0.5).sum()) == 2 * n  # each vector has exactly one antipode


@pytest.mark.parametrize("k", [3, 5, 7])
def test_thomson_on_the_circle_is_a_regular_polygon(k):
    v = thomson(k, 2)
    angles = torch.sort(torch.atan2(v[:, 1], v[:, 0])).values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi]))
    torch.testing.assert_close(gaps, torch.full((k,), 2 * math.pi / k, dtype=torch.float64), atol=1e-4, rtol=0)


def test_thomson_known_energies():
    """Known minima of the Thomson problem on S²: 12 points (icosahedron) 49.165253058, 5 points 6.474691495."""
    assert float(energy(thomson(12, 3))) == pytest.approx(49.165253058, abs=1e-8)
    assert float(energy(thomson(5, 3))) == pytest.approx(6.474691495, abs=1e-8)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_thomson_two_points_are_antipodal(n):
    v = thomson(2, n)
    assert v.shape == (2, n)
    assert float(v[0] @ v[1]) == pytest.approx(-1.0, abs=1e-8)


@pytest.mark.parametrize(("k", "n"), [(7, 3), (17, 16), (32, 16)])
def test_thomson_lowers_the_energy_of_random_points(k, n):
    start = torch.randn(k, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = start / start.norm(dim=1, keepdim=True)
    v = thomson(k, n)
    assert _unit_rows(v, atol=1e-12)
    assert float(energy(v)) < float(energy(start))
    # more steps never end higher: the solver is monotone and stops at a local minimum
    assert float(energy(thomson(k, n, steps=10))) >= float(energy(v)) - 1e-9


def test_thomson_is_deterministic_given_the_generator(dtype):
    a = thomson(9, 4, generator=torch.Generator().manual_seed(3), dtype=dtype)
    b = thomson(9, 4, generator=torch.Generator().manual_seed(3), dtype=dtype)
    assert a.dtype == dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, thomson(9, 4, generator=torch.Generator().manual_seed(4), dtype=dtype))


@pytest.mark.slow
def test_thomson_is_fast_at_the_largest_advertised_size():
    """CPU time on one thread (wall time on a shared machine measures the neighbours, not the solver)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        v = thomson(128, 64)
        elapsed = time.process_time() - start
    finally:
        torch.set_num_threads(threads)
    assert v.shape == (128, 64) and _unit_rows(v, atol=1e-12)
    assert elapsed < 3.0  # about 0.3 s


# --- energy ------------------------------------------------------------------------------------------------------


def test_energy_known_values_and_errors():
    n = 4
    pairs = (n + 1) * n / 2
    assert float(energy(simplex(n))) == pytest.approx(pairs / math.sqrt(2 + 2 / n), rel=1e-12)
    assert float(energy(cross_polytope(2))) == pytest.approx(4 / math.sqrt(2) + 2 / 2, rel=1e-12)
    assert float(energy(torch.ones(1, 3, dtype=torch.float64))) == 0.0
    assert math.isinf(float(energy(torch.ones(2, 3, dtype=torch.float64))))
    assert energy(simplex(3, dtype=torch.float32)).dtype == torch.float32
    with pytest.raises(ValueError, match="v must be a"):
        energy(torch.ones(3))
    with pytest.raises(ValueError, match="v must be a"):
        energy(torch.ones(0, 3))
    with pytest.raises(TypeError, match="floating-point"):
        energy(torch.ones(3, 3, dtype=torch.int64))


# --- get and validation ------------------------------------------------------------------------------------------


def test_get_dispatches_to_the_builders():
    assert torch.equal(get("standard", 3), standard_basis(3))
    assert torch.equal(get("cross_polytope", 3, 6), cross_polytope(3))
    assert torch.equal(get("simplex", 3, 4), simplex(3))
    assert torch.equal(
        get("thomson", 3, 7, generator=torch.Generator().manual_seed(2)),
        thomson(7, 3, generator=torch.Generator().manual_seed(2)),
    )
    rand = get("random", 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(rand, random_orthonormal(5, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(get("random", 5, 2, generator=torch.Generator().manual_seed(1)), rand[:2])
    assert get("simplex", 3, dtype=torch.float32).dtype == torch.float32
    assert names() == ["standard", "random", "cross_polytope", "simplex", "thomson"]
    assert directions.__all__ and all(hasattr(directions, name) for name in directions.__all__)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: get("fibonacci", 3), KeyError, "valid names: standard, random, cross_polytope, simplex, thomson"),
        (lambda: get(3, 3), KeyError, "valid names"),
        (lambda: get("simplex", 3, 5), ValueError, "has k=4 vectors, got k=5"),
        (lambda: get("cross_polytope", 3, 3), ValueError, "has k=6 vectors"),
        (lambda: get("random", 3, 4), ValueError, "at most n=3"),
        (lambda: get("thomson", 3), ValueError, "needs the number of vectors k"),
        (lambda: thomson(1, 3), ValueError, "k must be an int >= 2"),
        (lambda: thomson(3, 0), ValueError, "n must be an int >= 1"),
        (lambda: thomson(3.0, 2), ValueError, "k must be an int"),
        (lambda: thomson(True, 2), ValueError, "k must be an int"),
        (lambda: thomson(4, 2.5), ValueError, "n must be an int"),
        (lambda: thomson(3, 1), ValueError, "only k=2 points fit"),
        (lambda: thomson(4, 3, generator=3), TypeError, "generator must be a torch.Generator"),
        (lambda: thomson(4, 3, restarts=0), ValueError, "restarts must be"),
        (lambda: thomson(4, 3, tol=float("nan")), ValueError, "tol must be"),
        (lambda: standard_basis(0), ValueError, "n must be an int >= 1"),
        (lambda: simplex(-2), ValueError, "n must be an int >= 1"),
        (lambda: cross_polytope("3"), ValueError, "n must be an int"),
        (lambda: simplex(3, dtype=torch.int64), TypeError, "floating dtype"),
    ],
)
def test_bad_input_raises_clearly(call, error, match):
    with pytest.raises(error, match=match):
        call()


@given(
    name=st.sampled_from(names()),
    n=st.integers(1, 6),
    extra=st.integers(0, 4),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_every_set_has_unit_rows_of_the_right_shape(name, n, extra, dtype):
    k = None
    if name == "thomson":
        k = 2 if n == 1 else 2 + extra
    v = get(name, n, k, dtype=dtype)
    expected = {"standard": n, "random": n, "cross_polytope": 2 * n, "simplex": n + 1, "thomson": k}[name]
    assert v.shape == (expected, n) and v.dtype == dtype
    assert _unit_rows(v, atol=1e-5)
    assert torch.isfinite(energy(v.double()))
