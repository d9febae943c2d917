"""Tests for isotorch.groups: membership of samples, Haar statistics, structure of the special groups, the subgroup
lattice (checked against sampled elements), covers, Lie algebras, finite-group generation, the action, and errors.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from isotorch import groups
from isotorch.groups import Group, act, covers, generate, get, is_subgroup, lattice, names

N = 8  # lattice(8) has block groups for k = 2 and 4


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Many tiny QR/matmul calls: intra-op threads only add wake-up latency (50x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _samples(group, n: int, count: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = _gen(seed)
    return torch.stack([get(group).sample(n, generator=gen, dtype=dtype) for _ in range(count)])


def _all_groups(n: int) -> list[Group]:
    return lattice(n)


# --- sampling and membership -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 8, 24])
def test_samples_are_contained_in_their_group(n, dtype):
    for group in _all_groups(n):
        for g in _samples(group, n, 5, dtype=dtype):
            assert g.dtype == dtype and g.shape == (n, n)
            assert group.contains(g), (group, n, dtype)
            if group.compact:
                assert get("orthogonal").contains(g)


def test_contains_rejects_non_members():
    eye = torch.eye(4, dtype=torch.float64)
    swap = eye[[1, 0, 2, 3]]
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    assert not get("orthogonal").contains(2 * eye)
    assert not get("trivial").contains(swap)
    assert not get("permutation").contains(flip)
    assert get("signed_permutation").contains(flip @ swap)
    assert not get("special_orthogonal").contains(flip)
    assert not get("mean_orthogonal").contains(flip)
    assert get("mean_orthogonal").contains(swap)
    assert not get("positive_scaling").contains(flip)
    assert get("positive_scaling").contains(torch.diag(torch.tensor([0.5, 2.0, 3.0, 1.0])))
    assert not get("positive_scaling").contains(swap)
    assert not get("block_orthogonal:3").contains(eye)  # 3 does not divide 4
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)
    assert get("block_orthogonal:2").contains(torch.block_diag(rot, rot.T))
    assert not get("block_orthogonal:2").contains(torch.block_diag(torch.tensor([[1.0]]), rot, torch.tensor([[1.0]])))
    assert not get("signed_permutation").contains(torch.block_diag(rot, rot))
    with pytest.raises(ValueError, match="square 2-D"):
        get("orthogonal").contains(torch.ones(2, 3))
    with pytest.raises(ValueError, match="square 2-D"):
        get("orthogonal").contains([[1.0]])


def test_sampling_is_deterministic_given_a_generator():
    for group in _all_groups(6):
        a = group.sample(6, generator=_gen(1))
        b = group.sample(6, generator=_gen(1))
        assert torch.equal(a, b), group


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3", None])
def test_sample_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        get("orthogonal").sample(bad)


def test_sample_rejects_integer_dtypes():
    with pytest.raises(TypeError, match="floating dtype"):
        get("permutation").sample(3, dtype=torch.int64)


@given(
    n=st.integers(1, 10),
    name=st.sampled_from(names()),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_any_size_sample_is_a_member(n, name, seed, dtype):
    params = {"block": max(k for k in range(1, n + 1) if n % k == 0 and k <= 3)} if name == "block_orthogonal" else {}
    group = get(name, **params)
    g = group.sample(n, generator=_gen(seed), dtype=dtype)
    assert torch.isfinite(g).all()
    assert group.contains(g)


# --- Haar statistics ---------------------------------------------------------------------------------------------

COUNT = 4000


def test_orthogonal_is_haar():
    n = 4
    g = _samples("orthogonal", n, COUNT, seed=11)
    se = 1 / math.sqrt(COUNT)
    # E[g] = 0 entrywise (fails without the QR sign fix, which makes diag(g) biased), E[g_ij²] = 1/n
    assert float(g.mean(0).abs().max()) < 5 * se / math.sqrt(n) * 1.5
    sq = g.pow(2).mean(0)
    sd_sq = math.sqrt(3 / (n * (n + 2)) - 1 / n**2)
    assert float((sq - 1 / n).abs().max()) < 5 * sd_sq * se
    # E[tr g] = 0 and E[(tr g)²] = 1 (the number of invariants of the defining representation)
    tr = g.diagonal(dim1=1, dim2=2).sum(-1)
    assert abs(float(tr.mean())) < 5 * se
    assert abs(float(tr.pow(2).mean()) - 1) < 5 * math.sqrt(2) * se
    # both components of O(n), equally often
    positive = float((torch.linalg.det(g) > 0).double().mean())
    assert abs(positive - 0.5) < 5 * 0.5 * se


def test_special_orthogonal_is_haar_on_the_rotations():
    n = 3
    g = _samples("special_orthogonal", n, COUNT, seed=12)
    torch.testing.assert_close(torch.linalg.det(g), torch.ones(COUNT, dtype=torch.float64))
    se = 1 / math.sqrt(COUNT)
    assert float(g.mean(0).abs().max()) < 5 * se
    assert abs(float(g.diagonal(dim1=1, dim2=2).sum(-1).mean())) < 5 * se
    assert float((g.pow(2).mean(0) - 1 / n).abs().max()) < 5 * 0.3 * se


def test_mean_orthogonal_is_haar_on_the_stabiliser_of_ones():
    n = 5
    g = _samples("mean_orthogonal", n, COUNT, seed=13)
    ones = torch.ones(n, dtype=torch.float64)
    torch.testing.assert_close(g @ ones, ones.expand(COUNT, n))
    torch.testing.assert_close(ones @ g, ones.expand(COUNT, n))
    # E[g] is the projection onto 𝟙: the O(n−1) part averages to zero
    mean = g.mean(0)
    assert float((mean - torch.full((n, n), 1 / n, dtype=torch.float64)).abs().max()) < 5 / math.sqrt(COUNT)
    positive = float((torch.linalg.det(g) > 0).double().mean())
    assert abs(positive - 0.5) < 0.05


def test_mean_orthogonal_small_sizes():
    assert torch.equal(get("mean_orthogonal").sample(1, generator=_gen()), torch.ones(1, 1))
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    seen = {tuple(get("mean_orthogonal").sample(2, generator=_gen(s)).round().flatten().tolist()) for s in range(20)}
    assert seen == {(1.0, 0.0, 0.0, 1.0), tuple(swap.flatten().tolist())}


def test_signed_permutation_and_permutation_are_uniform():
    n = 4
    sp = _samples("signed_permutation", n, COUNT, seed=14)
    assert float(sp.mean(0).abs().max()) < 5 / math.sqrt(COUNT)
    p = _samples("permutation", n, COUNT, seed=15)
    for m in (sp.abs(), p):  # each position holds the 1 of its row with probability 1/n
        sd = math.sqrt((1 / n) * (1 - 1 / n) / COUNT)
        assert float((m.mean(0) - 1 / n).abs().max()) < 5 * sd


def test_positive_scaling_law():
    g = _samples(get("positive_scaling", log_scale_std=0.3), 3, COUNT, seed=16)
    logs = torch.log(torch.diagonal(g, dim1=1, dim2=2))
    assert abs(float(logs.mean())) < 5 * 0.3 / math.sqrt(COUNT)
    assert float(logs.std()) == pytest.approx(0.3, rel=0.05)


def test_block_orthogonal_structure_and_uniform_block_permutation():
    k, n = 3, 9
    g = _samples("block_orthogonal:3", n, 1000, seed=17)
    blocks = g.reshape(-1, n // k, k, n // k, k).transpose(2, 3)  # (s, I, J, k, k)
    norms = blocks.pow(2).sum(dim=(-1, -2))
    nonzero = norms > 1e-12
    assert (nonzero.sum(-1) == 1).all() and (nonzero.sum(-2) == 1).all()  # one block per block row and column
    chosen = blocks[nonzero]  # the nonzero k×k blocks are orthogonal
    eye = torch.eye(k, dtype=torch.float64).expand_as(chosen)
    torch.testing.assert_close(chosen @ chosen.transpose(1, 2), eye)
    assert float((nonzero.double().mean(0) - 1 / 3).abs().max()) < 0.1  # blocks permuted uniformly
    assert float(chosen.mean(0).abs().max()) < 0.1  # Haar within blocks: mean zero


def test_block_orthogonal_needs_a_divisible_size():
    group = get("block_orthogonal", block=3)
    with pytest.raises(ValueError, match="divisible by 3, got 8"):
        group.sample(8)
    with pytest.raises(ValueError, match="divisible by 3"):
        group.lie_algebra(8)
    with pytest.raises(ValueError, match="divisible by 3"):
        group.check(8)
    assert group.check(9) == 9


# --- lattice -----------------------------------------------------------------------------------------------------


def _lattice_cases():
    for a in lattice(N):
        for b in lattice(N):
            yield pytest.param(a.key, b.key, id=f"{a.key}<={b.key}")


@pytest.fixture(scope="module")
def lattice_samples():
    return {g.key: _samples(g, N, 20, seed=21) for g in lattice(N)}


@pytest.mark.parametrize(("a", "b"), list(_lattice_cases()))
def test_is_subgroup_agrees_with_sampled_elements(a, b, lattice_samples):
    """is_subgroup(a, b) iff every sampled element of a is contained in b (20 Haar samples refute a ⊄ b)."""
    contained = all(get(b).contains(g) for g in lattice_samples[a])
    assert is_subgroup(a, b, N) == contained


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("trivial", "positive_scaling", True),
        ("permutation", "signed_permutation", True),
        ("permutation", "mean_orthogonal", True),
        ("signed_permutation", "orthogonal", True),
        ("mean_orthogonal", "orthogonal", True),
        ("special_orthogonal", "orthogonal", True),
        ("block_orthogonal:4", "orthogonal", True),
        ("block_orthogonal:1", "signed_permutation", True),
        ("signed_permutation", "block_orthogonal:1", True),
        ("orthogonal", "special_orthogonal", False),
        ("permutation", "special_orthogonal", False),  # odd permutations have det −1
        ("signed_permutation", "mean_orthogonal", False),
        ("mean_orthogonal", "special_orthogonal", False),
        ("positive_scaling", "orthogonal", False),
        ("orthogonal", "positive_scaling", False),
        ("block_orthogonal:4", "block_orthogonal:2", False),
        ("permutation", "block_orthogonal:2", False),
        ("orthogonal", "trivial", False),
        ("signed_permutation", "block_orthogonal:2", False),  # a permutation need not map 2-blocks to 2-blocks
        ("block_orthogonal:2", "block_orthogonal:4", False),
    ],
)
def test_is_subgroup_table(a, b, expected):
    assert is_subgroup(a, b) is expected


def test_is_subgroup_at_a_given_size():
    assert is_subgroup("block_orthogonal:4", "orthogonal", 4) and is_subgroup("orthogonal", "block_orthogonal:4", 4)
    assert not is_subgroup("orthogonal", "block_orthogonal:4", 8)
    for g in lattice(N):
        assert is_subgroup(g, g) and is_subgroup("trivial", g) and is_subgroup(g, "orthogonal") == g.compact


def test_lattice_contents_and_order():
    assert [g.key for g in lattice(N)] == [
        "trivial",
        "permutation",
        "signed_permutation",
        "positive_scaling",
        "mean_orthogonal",
        "block_orthogonal:2",
        "block_orthogonal:4",
        "special_orthogonal",
        "orthogonal",
    ]
    assert "block_orthogonal" not in {g.name for g in lattice(7)}
    assert [g.key for g in lattice(12, blocks=(3, 5)) if g.name == "block_orthogonal"] == ["block_orthogonal:3"]
    groups_ = lattice(N)
    for i, a in enumerate(groups_):  # smallest first: nothing later is a proper subgroup of something earlier
        for b in groups_[:i]:
            assert not (is_subgroup(a, b, N) and not is_subgroup(b, a, N)), (a, b)


def test_covers():
    keys = lambda group, n=N: sorted(g.key for g in covers(group, n))  # noqa: E731
    assert keys("orthogonal") == []
    assert keys("positive_scaling") == []
    assert keys("special_orthogonal") == ["orthogonal"]
    assert keys("mean_orthogonal") == ["orthogonal"]
    assert keys("permutation") == ["mean_orthogonal", "signed_permutation"]
    assert keys("block_orthogonal:4", 4) == []  # equals O(4) at n = 4
    assert "permutation" in keys("trivial") and "positive_scaling" in keys("trivial")
    for group in lattice(N):  # a cover is a proper supergroup with nothing in between
        for c in covers(group, N):
            assert is_subgroup(group, c, N) and not is_subgroup(c, group, N)
            between = [m for m in lattice(N) if m not in (group, c)]
            assert not any(is_subgroup(group, m, N) and is_subgroup(m, c, N) for m in between if m.key != c.key)


def test_covers_of_signed_permutation_is_orthogonal():
    assert [g.key for g in covers("signed_permutation", N)] == ["orthogonal"]
    assert [g.key for g in covers("block_orthogonal:2", N)] == ["orthogonal"]


# --- Lie algebras ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_lie_algebra_dimensions(n):
    so = n * (n - 1) // 2
    expected = {
        "trivial": 0,
        "permutation": 0,
        "signed_permutation": 0,
        "positive_scaling": n,
        "mean_orthogonal": (n - 1) * (n - 2) // 2,
        "special_orthogonal": so,
        "orthogonal": so,
    }
    if n % 2 == 0:
        expected["block_orthogonal:2"] = n // 2
    if n % 3 == 0:
        expected["block_orthogonal:3"] = n // 3 * 3
    for key, dim in expected.items():
        basis = get(key).lie_algebra(n)
        assert basis.shape == (dim, n, n) and basis.dtype == torch.float64, key
        if dim:
            assert torch.linalg.matrix_rank(basis.reshape(dim, -1)) == dim, key  # a basis: independent
    assert get("orthogonal").lie_algebra(3, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize(
    "key", ["orthogonal", "special_orthogonal", "mean_orthogonal", "block_orthogonal:2", "positive_scaling"]
)
def test_exponentials_of_the_lie_algebra_lie_in_the_group(key, dtype):
    n = 6
    group = get(key)
    basis = group.lie_algebra(n, dtype=dtype)
    gen = _gen(3)
    for t in (0.1, 1.0, 3.0):
        coeffs = torch.randn(basis.shape[0], generator=gen, dtype=dtype)
        a = torch.einsum("d,dij->ij", coeffs, basis)
        assert group.contains(torch.linalg.matrix_exp(t * a), atol=1e-5 if dtype == torch.float32 else 1e-9)
        if group.compact:
            torch.testing.assert_close(a, -a.T)  # so(n) elements are skew-symmetric
    if key == "mean_orthogonal":
        ones = torch.ones(n, dtype=torch.float64)
        torch.testing.assert_close(group.lie_algebra(n) @ ones, torch.zeros(basis.shape[0], n, dtype=torch.float64))
    # negative control: a generic element of so(n) leaves every proper subgroup
    if key != "orthogonal" and key != "special_orthogonal":
        so = get("orthogonal").lie_algebra(n)
        a = torch.einsum("d,dij->ij", torch.randn(so.shape[0], generator=gen, dtype=torch.float64), so)
        assert not group.contains(torch.linalg.matrix_exp(a))


def test_continuous_flag_matches_the_lie_algebra():
    for group in lattice(6):
        assert group.continuous == (group.lie_algebra(6).shape[0] > 0), group
    assert not get("block_orthogonal:1").continuous
    assert not get("positive_scaling").compact and get("block_orthogonal:2").compact


# --- generate ----------------------------------------------------------------------------------------------------


def _rotation(axis, angle: float) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    cross = torch.tensor([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]], dtype=torch.float64)
    return (
        torch.eye(3, dtype=torch.float64) * math.cos(angle)
        + math.sin(angle) * cross
        + (1 - math.cos(angle)) * torch.outer(a, a)
    )


def _is_closed(elements: torch.Tensor) -> bool:
    products = (elements[:, None] @ elements[None, :]).reshape(-1, *elements.shape[1:])
    dist = torch.cdist(products.flatten(1), elements.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    return bool(dist.min(dim=1).values.max() < 1e-8)


def test_generate_dihedral_group_of_the_square():
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    ref = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    d4 = generate(torch.stack([rot, ref]))
    assert d4.shape == (8, 2, 2) and d4.dtype == torch.float64
    assert torch.equal(d4[0], torch.eye(2, dtype=torch.float64))
    assert _is_closed(d4)
    assert all(get("signed_permutation").contains(g) for g in d4)
    assert generate(rot[None]).shape[0] == 4


def test_generate_icosahedral_groups():
    phi = (1 + math.sqrt(5)) / 2
    five = _rotation([0.0, 1.0, phi], 2 * math.pi / 5)  # about a vertex of the icosahedron
    face = [(0.0 + 0.0 + phi) / 3, (1.0 - 1.0 + 0.0) / 3, (phi + phi + 1.0) / 3]  # vertices (0,±1,φ), (φ,0,1)
    three = _rotation(face, 2 * math.pi / 3)
    rotations = generate(torch.stack([five, three]))
    assert rotations.shape[0] == 60
    assert all(get("special_orthogonal").contains(g) for g in rotations)
    full = generate(torch.stack([five, three, -torch.eye(3, dtype=torch.float64)]))
    assert full.shape[0] == 120
    assert _is_closed(full)


def test_generate_errors():
    irrational = _rotation([0.0, 0.0, 1.0], 1.0)  # rotation by one radian: infinite order
    with pytest.raises(ValueError, match="more than max_order=500"):
        generate(irrational[None], max_order=500)
    with pytest.raises(ValueError, match="orthogonal"):
        generate(torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match=r"\(m, n, n\)"):
        generate(torch.eye(3))
    with pytest.raises(ValueError, match=r"\(m, n, n\)"):
        generate(torch.ones(2, 2, 3))


# --- act ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_act_along_any_dim(dim, dtype):
    x = torch.randn(4, 4, 4, generator=_gen(1), dtype=dtype)
    g = get("orthogonal").sample(4, generator=_gen(2), dtype=torch.float64)
    out = act(g, x, dim)
    assert out.dtype == torch.float64  # computed in the promoted dtype
    expected = torch.movedim(torch.tensordot(x.double(), g.T, dims=([dim], [0])), -1, dim)
    torch.testing.assert_close(out, expected)
    assert act(g.to(dtype), x, dim).dtype == dtype
    # the action is a group action: act(g, act(h, x)) = act(g h, x)
    h = get("orthogonal").sample(4, generator=_gen(3), dtype=torch.float64)
    torch.testing.assert_close(act(g, act(h, x, dim), dim), act(g @ h, x, dim))


def test_act_errors():
    g = torch.eye(3)
    with pytest.raises(ValueError, match="square 2-D"):
        act(torch.ones(3, 2), torch.ones(3))
    with pytest.raises(ValueError, match="size 4 along dim=-1"):
        act(g, torch.ones(2, 4))
    with pytest.raises(ValueError, match="out of range"):
        act(g, torch.ones(3, 3), dim=2)
    with pytest.raises(ValueError, match="at least one dimension"):
        act(torch.eye(1), torch.tensor(1.0))


# --- get and errors ----------------------------------------------------------------------------------------------


def test_get_by_name_and_short_form():
    assert get("block_orthogonal:4") == get("block_orthogonal", block=4)
    assert get("block_orthogonal:4").key == "block_orthogonal:4" == str(get("block_orthogonal", block=4))
    assert get("orthogonal").key == "orthogonal"
    g = get("positive_scaling", log_scale_std=0.2)
    assert get(g) is g and g.log_scale_std == 0.2
    assert set(names()) == {g.name for g in lattice(N)}
    assert groups.__all__ and all(hasattr(groups, name) for name in groups.__all__)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("rotation",), {}, KeyError, "valid names: trivial, permutation, signed_permutation"),
        ((3,), {}, TypeError, "must be a str"),
        (("block_orthogonal",), {}, ValueError, "needs block=K"),
        (("block_orthogonal",), {"block": 0}, ValueError, "positive int"),
        (("block_orthogonal",), {"block": True}, ValueError, "positive int"),
        (("block_orthogonal:x",), {}, ValueError, "must be an integer"),
        (("block_orthogonal:2",), {"block": 2}, ValueError, "unexpected suffix"),
        (("orthogonal:3",), {}, ValueError, "unexpected suffix"),
        (("orthogonal",), {"block": 2}, ValueError, "applies only to block_orthogonal"),
        (("orthogonal",), {"size": 2}, ValueError, "unknown group parameters"),
        (("positive_scaling",), {"log_scale_std": -1.0}, ValueError, "log_scale_std"),
        ((get("orthogonal"),), {"block": 2}, ValueError, "cannot be given together"),
    ],
)
def test_get_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        get(*args, **kwargs)


def test_unknown_names_fail_everywhere():
    for call in (
        lambda: is_subgroup("rotation", "orthogonal"),
        lambda: covers("rotation", 4),
        lambda: groups.get("sphere").sample(3),
    ):
        with pytest.raises(KeyError, match="valid names"):
            call()
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        lattice(0)
