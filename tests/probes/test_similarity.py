import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from isotorch.probes import LayerSimilarity, compare_layers, kernel_alignment, linear_cka
from isotorch.testing import assert_invariant, invariance_error


def gaussian(n_rows, dim, seed=0, dtype=torch.float64):
    return torch.randn(n_rows, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def unbiased_hsic(k, l):
    """Song et al. (2012) unbiased HSIC, straight from the formula on N×N Gram matrices."""
    n = k.shape[0]
    k, l = k.clone(), l.clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    one = torch.ones(n, dtype=k.dtype)
    term = (
        torch.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ k @ l @ one
    )
    return term / (n * (n - 3))


def test_cka_equals_kernel_cka_and_debiased_equals_gram_formula():
    x, y = gaussian(40, 7), gaussian(40, 3, seed=1) + gaussian(40, 7) @ gaussian(7, 3, seed=2)
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert linear_cka(x, y) == pytest.approx(kernel_alignment(x @ x.T, y @ y.T, centered=True), rel=1e-12)
    k, l = xc @ xc.T, yc @ yc.T
    expected = unbiased_hsic(k, l) / torch.sqrt(unbiased_hsic(k, k) * unbiased_hsic(l, l))
    assert linear_cka(x, y, debiased=True) == pytest.approx(float(expected), rel=1e-10)


def test_sample_space_and_feature_space_routes_agree():
    x, y = gaussian(10, 50), gaussian(10, 60, seed=1)  # n² < p·q: sample-space products
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = (yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    assert linear_cka(x, y) == pytest.approx(float(expected), rel=1e-12)


def test_known_values():
    x = gaussian(300, 20)
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0)
    independent = gaussian(300, 20, seed=5)
    assert linear_cka(x, independent) > 0.05  # the plain estimator is biased upwards
    assert abs(linear_cka(x, independent, debiased=True)) < 0.02
    assert kernel_alignment(x @ x.T, 2 * x @ x.T) == pytest.approx(1.0)


def test_cka_is_invariant_to_rotations_and_isotropic_scale(dtype):
    x = gaussian(100, 6, dtype=dtype)
    y = gaussian(100, 4, seed=3, dtype=dtype) + x[:, :4]

    def cka(a):
        return torch.tensor([linear_cka(a, y), linear_cka(a, y, debiased=True)], dtype=a.dtype)

    assert_invariant(cka, x, "orthogonal")
    assert invariance_error(cka, x, "positive_scaling") > 1e-3  # anisotropic scaling changes CKA
    assert linear_cka(3.5 * x, y) == pytest.approx(linear_cka(x, y), rel=1e-5)


@given(n=st.integers(4, 12), p=st.integers(1, 5), q=st.integers(1, 5), seed=st.integers(0, 1000))
def test_cka_range_property(n, p, q, seed):
    value = linear_cka(gaussian(n, p, seed=seed), gaussian(n, q, seed=seed + 1))
    assert -1e-12 <= value <= 1 + 1e-12


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((torch.randn(10, 3), torch.randn(9, 3)), {}, "same inputs"),
        ((torch.randn(3, 3), torch.randn(3, 3)), {"debiased": True}, "at least 4"),
        ((torch.randn(10), torch.randn(10, 3)), {}, "x"),
        ((torch.full((10, 3), float("nan")), torch.randn(10, 3)), {}, "NaN"),
    ],
)
def test_bad_input(args, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        linear_cka(*args, **kwargs)
    with pytest.raises(ValueError, match="square"):
        kernel_alignment(torch.randn(3, 4), torch.randn(3, 4))


def test_compare_layers_between_models(tmp_path):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 4))
    b = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 4))
    data = [(torch.randn(64, 5), torch.randint(0, 4, (64,))) for _ in range(5)]
    same = compare_layers(a, a, data, ["0", "1", "2"], samples=100)
    assert isinstance(same, LayerSimilarity)
    assert torch.allclose(torch.diagonal(same.matrix), torch.ones(3, dtype=torch.float64))
    assert same.n_samples == 100
    other = compare_layers(a, b, data, ["0", "2"], ["0"], samples=1000)
    assert other.matrix.shape == (2, 1) and other.n_samples == 320
    x = torch.cat([d[0] for d in data])
    expected = linear_cka(a[0](x).detach(), b[0](x).detach())
    assert float(other.matrix[0, 0]) == pytest.approx(expected, rel=1e-5)
    other.plot().savefig(tmp_path / "cka.png")
    with pytest.raises(ValueError, match="features"):
        compare_layers(a, b, data, ["0"], features="channels")
    with pytest.raises(ValueError, match="layers"):
        compare_layers(a, b, data, ["9"])


@pytest.mark.parametrize("debiased", [False, True])
def test_compare_layers_entries_are_linear_cka_of_the_layer_outputs_exactly(debiased):
    # compare_layers centres and self-pairs each layer once; every entry must still be linear_cka of the two layers
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    b = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = gaussian(120, 5)
    layers_a, layers_b = ["0", "1", "2"], ["0", "2"]
    sim = compare_layers(a, b, [x], layers_a, layers_b, debiased=debiased, samples=120)  # one batch: same rounding
    with torch.no_grad():
        outs_a = {"0": a[0](x), "1": a[:2](x), "2": a(x)}
        outs_b = {"0": b[0](x), "2": b(x)}
    expected = [[linear_cka(outs_a[i], outs_b[j], debiased=debiased) for j in ("0", "2")] for i in ("0", "1", "2")]
    assert sim.matrix.tolist() == expected
    subsample = compare_layers(a, b, [x], layers_a, layers_b, debiased=debiased, samples=60)
    assert (subsample.matrix - sim.matrix).abs().max() > 1e-3


def test_compare_layers_refuses_non_finite_activations_naming_the_layer():
    a = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
    b = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
    with torch.no_grad():
        b[0].bias[0] = float("nan")
    with pytest.raises(ValueError, match="layer '0' of model_b gave NaN or inf"):
        compare_layers(a, b, [torch.randn(16, 5)], ["0"])
    assert compare_layers(a, a, [torch.randn(16, 5)], ["0"]).matrix.isfinite().all()
