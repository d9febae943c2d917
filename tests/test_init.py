"""Tests for isotorch.init: orthogonality and scale, invariance in law (two-sample KS tests), and the registry.

The distribution tests are deterministic: every draw uses its own seeded generator, so each p-value is a fixed
number. The thresholds leave wide margins on both sides (invariant laws give p > 1e-2 here, the cube-shaped
uniform laws p < 1e-9).
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from torch import nn

from isotorch import groups
from isotorch import init as it_init
from isotorch.init import (
    SCHEMES,
    InitialiserSpec,
    haar_orthogonal_,
    init_model_,
    isotropic_normal_,
)

DRAWS = 300
SHAPE = (6, 4)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Many tiny QR/matmul calls: intra-op threads only add wake-up latency (50x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _flat(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).double()


# --- haar_orthogonal_ --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 5), (3, 7), (7, 3), (4, 2, 3, 3), (20, 2, 3), (1, 6), (6, 1), (1, 1)])
@pytest.mark.parametrize("gain", [1.0, 0.5, 3.0])
def test_haar_orthogonal_is_orthogonal_with_gain(shape, gain, dtype):
    w = torch.empty(shape, dtype=dtype)
    out = haar_orthogonal_(w, gain, generator=_gen(0))
    assert out is w
    m = _flat(w)
    rows, cols = m.shape
    gram = m @ m.T if rows <= cols else m.T @ m
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(
        gram, gain**2 * torch.eye(min(rows, cols), dtype=torch.float64), atol=atol * gain**2, rtol=0
    )


def test_haar_orthogonal_low_precision_and_parameters():
    for dtype in (torch.float16, torch.bfloat16):
        w = haar_orthogonal_(torch.empty(8, 8, dtype=dtype), generator=_gen(0))
        torch.testing.assert_close(_flat(w) @ _flat(w).T, torch.eye(8, dtype=torch.float64), atol=3e-2, rtol=0)
    p = nn.Parameter(torch.empty(4, 4))  # in place on a leaf that requires grad: must work (no_grad)
    haar_orthogonal_(p, generator=_gen(0))
    assert p.requires_grad


def test_haar_orthogonal_is_deterministic_given_a_generator():
    a = haar_orthogonal_(torch.empty(5, 3), generator=_gen(7))
    b = haar_orthogonal_(torch.empty(5, 3), generator=_gen(7))
    c = haar_orthogonal_(torch.empty(5, 3), generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_haar_orthogonal_bad_input():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        haar_orthogonal_(torch.empty(4))
    with pytest.raises(TypeError, match="floating-point"):
        haar_orthogonal_(torch.empty(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        haar_orthogonal_([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="gain must be a finite float"):
        haar_orthogonal_(torch.empty(3, 3), gain=float("inf"))
    empty = torch.empty(0, 3)
    assert haar_orthogonal_(empty) is empty


@pytest.mark.parametrize("shape", [(5, 5), (6, 3), (3, 6)])
def test_haar_orthogonal_moments(shape):
    """E[W_ij²] = 1/max(rows, cols) for a uniform frame, and W_11 is symmetric about 0 (the QR sign fix)."""
    draws = torch.stack([_flat(haar_orthogonal_(torch.empty(shape), generator=_gen(s))) for s in range(2000)])
    second = draws.pow(2).mean(0)
    assert torch.allclose(second, torch.full_like(second, 1 / max(shape)), atol=0.03)
    positive = float((draws[:, 0, 0] > 0).double().mean())
    assert abs(positive - 0.5) < 0.05  # without the sign fix, LAPACK's QR makes W_11 almost always one sign


# --- isotropic_normal_ -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "fan"), [("fan_in", 150), ("fan_out", 600), ("fan_avg", 375)])
def test_isotropic_normal_scale(mode, fan, dtype):
    w = torch.empty(200, 50, 3, dtype=dtype)
    out = isotropic_normal_(w, 2.0, mode=mode, generator=_gen(0))
    assert out is w
    assert float(w.double().std()) == pytest.approx(2.0 / math.sqrt(fan), rel=0.02)
    assert abs(float(w.double().mean())) < 0.1 * 2.0 / math.sqrt(fan)  # standard error ≈ 0.006 σ


def test_isotropic_normal_bad_input():
    with pytest.raises(ValueError, match=r"mode must be one of \('fan_in', 'fan_out', 'fan_avg'\)"):
        isotropic_normal_(torch.empty(3, 3), mode="fan_sum")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        isotropic_normal_(torch.empty(3))
    with pytest.raises(TypeError, match="floating-point"):
        isotropic_normal_(torch.empty(3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="gain"):
        isotropic_normal_(torch.empty(3, 3), gain=float("nan"))


@given(shape=st.lists(st.integers(0, 5), min_size=2, max_size=4).map(tuple), scheme=st.sampled_from(SCHEMES))
def test_initialisers_fill_any_weight_shape(shape, scheme):
    """Empty tensors and size-1 axes: the initialisers keep the shape and produce finite values."""
    fill = {"orthogonal": haar_orthogonal_, "normal": isotropic_normal_}[scheme]
    w = torch.full(shape, float("nan"))
    fill(w, generator=_gen(0))
    assert w.shape == shape
    assert torch.isfinite(w).all()


# --- invariance in law -------------------------------------------------------------------------------------------


def _statistics(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> dict[str, float]:
    m = _flat(w)
    return {"projection": float(u @ m @ v), "max_abs": float(m.abs().max()), "first": float(m[0, 0])}


def _ks_pvalues(init, g: torch.Tensor, side: str, shape=SHAPE) -> dict[str, float]:
    """Two-sample KS p-values of statistics of W against those of g·W (independent seeded draws)."""
    u = torch.randn(shape[0], generator=_gen(10_000), dtype=torch.float64)
    v = torch.randn(math.prod(shape[1:]), generator=_gen(10_001), dtype=torch.float64)
    plain, moved = [], []
    for s in range(DRAWS):
        plain.append(_statistics(init(torch.empty(shape, dtype=torch.float64), generator=_gen(s)), u, v))
        w = _flat(init(torch.empty(shape, dtype=torch.float64), generator=_gen(DRAWS + s)))
        moved.append(_statistics(g @ w if side == "left" else w @ g.T, u, v))
    return {k: stats.ks_2samp([d[k] for d in plain], [d[k] for d in moved]).pvalue for k in plain[0]}


def _element(group: str, n: int, seed: int = 5) -> torch.Tensor:
    return groups.get(group).sample(n, generator=_gen(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(it_init.names()))
@pytest.mark.parametrize("side", ["left", "right"])
def test_law_is_invariant_under_the_declared_group(name, side):
    spec = it_init.get(name)
    n = SHAPE[0] if side == "left" else SHAPE[1]
    pvalues = _ks_pvalues(spec.init, _element(spec.group, n), side)
    assert min(pvalues.values()) > 1e-4, pvalues


@pytest.mark.parametrize("name", sorted(k for k in it_init.names() if it_init.get(k).group != "orthogonal"))
@pytest.mark.parametrize("side", ["left", "right"])
def test_uniform_laws_are_not_rotation_invariant(name, side):
    """Negative control: i.i.d. uniform entries fill a cube; a rotation g·W has entries beyond the cube's face."""
    n = SHAPE[0] if side == "left" else SHAPE[1]
    spec = it_init.get(name)
    assert _ks_pvalues(spec.init, _element("orthogonal", n), side)["max_abs"] < 1e-9
    for cover in groups.covers(spec.group, n):
        assert _ks_pvalues(spec.init, _element(cover.key, n), side)["max_abs"] < 1e-6, cover


def test_the_ks_statistic_detects_a_missing_sign_fix():
    """Negative control for the test itself: QR without the sign fix is not Haar, and the KS check sees it."""

    def unfixed_qr_(tensor, generator=None):
        a = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
        return tensor.copy_(torch.linalg.qr(a)[0])

    pvalues = _ks_pvalues(unfixed_qr_, _element("orthogonal", SHAPE[0]), "left")
    assert pvalues["first"] < 1e-9


# --- init_model_ -------------------------------------------------------------------------------------------------


def _model():
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.LayerNorm(4), nn.ConvTranspose1d(2, 3, 2))


def test_init_model_orthogonal():
    model = _model()
    with torch.no_grad():
        model[3].weight.fill_(2.0)
    assert init_model_(model, "orthogonal", generator=_gen(0)) is model
    lin, conv, tconv = _flat(model[0].weight), _flat(model[2].weight), _flat(model[4].weight)
    torch.testing.assert_close(lin.T @ lin, torch.eye(5, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(conv @ conv.T, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(tconv @ tconv.T, torch.eye(2, dtype=torch.float64), atol=1e-5, rtol=0)
    for i in (0, 2, 4):
        assert torch.count_nonzero(model[i].bias) == 0
    assert torch.equal(model[3].weight.detach(), torch.full((4,), 2.0))  # other modules are left alone


def test_init_model_normal_keeps_biases_when_asked():
    model = _model()
    bias = model[0].bias.detach().clone()
    init_model_(model, "normal", gain=2.0, zero_bias=False, generator=_gen(0))
    assert torch.equal(model[0].bias.detach(), bias)
    big = init_model_(nn.Linear(400, 300), "normal", generator=_gen(0))
    assert float(big.weight.detach().std()) == pytest.approx(1 / math.sqrt(400), rel=0.02)


def test_init_model_is_deterministic_and_validates():
    a = init_model_(_model(), generator=_gen(3))
    b = init_model_(_model(), generator=_gen(3))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match=r"scheme must be one of \('orthogonal', 'normal'"):
        init_model_(_model(), "xavier")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        init_model_(torch.empty(3, 3))
    with pytest.raises(ValueError, match="lazy"):
        init_model_(nn.Sequential(nn.LazyLinear(3)))


# --- the registry ------------------------------------------------------------------------------------------------


def test_registry_contents():
    expected = {
        "orthogonal": "orthogonal",
        "normal": "orthogonal",
        "kaiming_normal": "orthogonal",
        "xavier_normal": "orthogonal",
        "kaiming_uniform": "signed_permutation",
        "xavier_uniform": "signed_permutation",
        "uniform": "signed_permutation",
    }
    assert {k: it_init.get(k).group for k in it_init.names()} == expected
    for spec in map(it_init.get, it_init.names()):
        assert isinstance(spec, InitialiserSpec)
        init, group = spec  # unpacks as (callable, declared group)
        groups.get(group)
        a = init(torch.empty(4, 3), generator=_gen(1))
        assert torch.equal(a, init(torch.empty(4, 3), generator=_gen(1)))
