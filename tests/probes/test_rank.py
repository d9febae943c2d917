import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import isotorch as it
from isotorch.probes import RankProfile, effective_rank, numerical_rank, rank_profile, stable_rank
from isotorch.testing import assert_invariant, invariance_error


def low_rank(m, n, k, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(m, k, generator=g, dtype=torch.float64) @ torch.randn(k, n, generator=g, dtype=torch.float64)
    ).to(dtype)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_known_ranks(k, dtype):
    h = low_rank(40, 12, k, dtype=dtype)
    assert numerical_rank(h) == k
    assert numerical_rank(h, tol=1e-3) == k
    slack = 1e-3 if dtype == torch.float32 else 1e-9
    assert 1 <= effective_rank(h) <= k + slack
    assert 1 <= stable_rank(h) <= k + slack


def test_closed_forms():
    s = torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    h = torch.diag(s)
    p = s[:2] / s.sum()
    assert effective_rank(h) == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    assert stable_rank(h) == pytest.approx(10 / 9)
    assert numerical_rank(h) == 2
    assert effective_rank(torch.eye(5)) == pytest.approx(5)
    assert effective_rank(torch.zeros(3, 4)) == 0.0 and stable_rank(torch.zeros(3, 4)) == 0.0
    assert numerical_rank(torch.zeros(3, 4)) == 0


def test_ranks_are_invariant_under_rotations(dtype):
    h = low_rank(30, 8, 4, seed=1, dtype=dtype)

    def ranks(x):
        return torch.tensor([numerical_rank(x, tol=1e-3), effective_rank(x), stable_rank(x)], dtype=x.dtype)

    assert_invariant(ranks, h, "orthogonal")  # h → h·g (features) keeps the singular values
    # O(n) is maximal in the lattice; the non-compact positive scalings change the spectrum
    assert invariance_error(ranks, h, "positive_scaling") > 1e-3


@given(m=st.integers(1, 8), n=st.integers(1, 8), scale=st.sampled_from([1e-100, 1.0, 1e100]))
def test_rank_bounds_property(m, n, scale):
    h = torch.randn(m, n, dtype=torch.float64) * scale
    r = numerical_rank(h)
    assert 0 <= r <= min(m, n)
    assert effective_rank(h) <= min(m, n) + 1e-9
    assert stable_rank(h) <= r + 1e-9


@pytest.mark.parametrize(
    ("h", "kwargs", "match"),
    [
        (torch.randn(3), {}, "h"),
        (torch.ones(3, 3, dtype=torch.long), {}, "h"),
        (torch.full((2, 2), float("nan")), {}, "NaN"),
        (torch.randn(3, 3), {"tol": 1.5}, "tol"),
        (torch.randn(3, 3), {"tol": -1e-3}, "tol"),
    ],
)
def test_bad_input(h, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        numerical_rank(h, **kwargs)


def test_rank_profile_tunnel_like_network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3), nn.Tanh())
    with torch.no_grad():
        model[2].weight[8:] = 0  # layer 2 keeps an 8-dim image (plus bias)
    data = [torch.randn(256, 10) for _ in range(4)]
    prof = rank_profile(model, data, ["0", "3", "5"])
    assert isinstance(prof, RankProfile)
    assert prof.dims == (32, 32, 3)
    assert prof.numerical_rank == (10, 8, 3)
    assert prof.n_samples == (1024, 1024, 1024)
    assert prof.limited_by_samples == (False, False, False)
    assert prof.to_dict()["tol"] == 1e-3
    # rotating the data does not change ranks
    q = it.groups.get("orthogonal").sample(10, generator=torch.Generator().manual_seed(1))
    assert rank_profile(model, [x @ q.T for x in data], ["0"]).numerical_rank == (10,)


def test_rank_profile_equals_in_memory_ranks():
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU())
    x = torch.randn(500, 6)
    prof = rank_profile(model, list(x.split(100)), ["1"])
    h = model(x).detach().double()
    h = h - h.mean(0)
    assert prof.effective_rank[0] == pytest.approx(effective_rank(h), rel=1e-6)
    assert prof.stable_rank[0] == pytest.approx(stable_rank(h), rel=1e-6)
    assert prof.numerical_rank[0] == numerical_rank(h, tol=1e-3)


def test_rank_profile_flags_too_few_samples(tmp_path):
    model = nn.Sequential(nn.Linear(20, 20))
    prof = rank_profile(model, [torch.randn(5, 20)], ["0"])
    assert prof.limited_by_samples == (True,) and prof.numerical_rank == (4,)
    prof.plot().savefig(tmp_path / "rank.png")
    with pytest.raises(ValueError, match=">= 2"):
        rank_profile(model, [torch.randn(1, 20)], ["0"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_profile_resolves_tiny_tolerances_by_svd(dtype):
    # rank-8 data in 20 dimensions, far from the origin: covariance eigenvalues resolve singular values only down to
    # ~√(d·eps)·s₁ (the old profile read rank 20 at tol = 1e-9); below that floor the profile takes an SVD of rows
    x = low_rank(2000, 20, 8, seed=4) + 5.0
    model = nn.Sequential(nn.Identity())
    tol = 1e-9 if dtype == torch.float64 else 1e-5  # float32 rows carry noise at ~1e-7 of s₁
    fine = rank_profile(model, list(x.to(dtype).split(500)), ["0"], tol=tol)
    assert fine.numerical_rank == (8,) and fine.method == (("svd",) if dtype == torch.float64 else ("covariance",))
    coarse = rank_profile(model, list(x.to(dtype).split(500)), ["0"], tol=1e-3)
    assert coarse.numerical_rank == (8,) and coarse.method == ("covariance",)
    # the reference: numerical_rank of the centred matrix (torch.linalg.svdvals)
    assert numerical_rank(x - x.mean(0), tol=1e-9) == 8
    assert fine.to_dict()["method"] == list(fine.method) and fine.settings["svd_rows"] == 10_000
    with pytest.raises(ValueError, match="svd_rows"):
        rank_profile(model, [x], ["0"], tol=1e-9, svd_rows=1)


def test_rank_profile_refuses_non_finite_rows():
    x = torch.randn(50, 4, dtype=torch.float64)
    x[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        rank_profile(nn.Sequential(nn.Identity()), [x], ["0"])
