import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from isotorch.probes import (
    channel_kurtosis,
    fake_quantise,
    max_rms_ratio,
    outliers,
    quantisation_error,
    weight_quantisation,
)


def _numpy_fake_quantise(x: np.ndarray, bits: int, axis, clip=1.0) -> np.ndarray:
    """Transcription of symmetric round-to-nearest quantisation (QuaRot/SpinQuant's RTN quantiser)."""
    q = 2 ** (bits - 1) - 1
    amax = np.abs(x).max() if axis is None else np.abs(x).max(axis=axis, keepdims=True)
    scale = clip * amax / q
    safe = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(x / safe), -q, q) * safe * (scale > 0)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dim", [-1, 0, None])
def test_fake_quantise_matches_numpy(bits, dim, generator):
    x = torch.randn(40, 12, generator=generator, dtype=torch.float64) * torch.rand(12, generator=generator) * 3
    x[5] = 0.0  # a zero token stays zero
    out = fake_quantise(x, bits, dim=dim, clip_ratio=0.9)
    ref = _numpy_fake_quantise(x.numpy(), bits, dim, 0.9)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-15)
    assert torch.equal(out[5], torch.zeros(12, dtype=torch.float64))
    assert torch.isfinite(out).all()
    err = quantisation_error(x, bits, dim=dim, clip_ratio=0.9)
    assert err == pytest.approx(((ref - x.numpy()) ** 2).sum() / (x.numpy() ** 2).sum(), rel=1e-12)


def test_fake_quantise_is_exact_on_the_grid_and_keeps_dtype(dtype):
    x = torch.tensor([[-7.0, -3.0, 0.0, 2.0, 7.0]], dtype=dtype) / 7 * 0.5
    out = fake_quantise(x, 4)
    assert out.dtype == dtype
    torch.testing.assert_close(out, x, rtol=0, atol=1e-7 if dtype == torch.float32 else 1e-15)
    assert quantisation_error(x, 4) < 1e-12


def test_error_falls_with_bits_like_uniform_noise(generator):
    """Uniform rounding noise: relative error ≈ (s²/12)/E[x²] with s = max|x|/q; int8 ≈ 2^8 times below int4."""
    x = torch.rand(4000, 16, generator=generator, dtype=torch.float64) * 2 - 1
    x[:, 0] = 1.0  # every token's max is exactly 1, so s = 1/q; column 0 sits on the grid (no error)
    for bits in (4, 6, 8):
        q = 2 ** (bits - 1) - 1
        expected = (15 / 16) * (1 / q**2 / 12) / float(x.pow(2).mean())
        assert quantisation_error(x, bits) == pytest.approx(expected, rel=0.05)


def test_straight_through_gradient():
    x = torch.tensor([[0.3, -1.0, 0.55]], requires_grad=True)
    fake_quantise(x, 4, straight_through=True).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    y = torch.tensor([[0.3, -1.0, 0.55]], requires_grad=True)
    fake_quantise(y, 4).sum().backward()
    assert y.grad is not None
    # without the estimator, round() passes no gradient; only the scale (through max|y|) gets some
    assert y.grad[0, 0] == 0 and y.grad[0, 2] == 0


def test_max_rms_ratio_known_cases():
    d = 64
    one_hot = torch.zeros(3, d)
    one_hot[:, 7] = 5.0
    torch.testing.assert_close(max_rms_ratio(one_hot), torch.full((3,), math.sqrt(d), dtype=torch.float64))
    signs = torch.where(torch.rand(10, d) > 0.5, 1.0, -1.0)
    torch.testing.assert_close(max_rms_ratio(signs), torch.ones(10, dtype=torch.float64))
    g = torch.randn(2000, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert float(max_rms_ratio(g).mean()) == pytest.approx(math.sqrt(2 * math.log(512)), rel=0.15)
    x = torch.randn(30, 5, dtype=torch.float64)
    ref = np.abs(x.numpy()).max(0) / np.sqrt((x.numpy() ** 2).mean(0))
    np.testing.assert_allclose(max_rms_ratio(x, dim=0).numpy(), ref, rtol=1e-14)


def test_kurtosis_matches_scipy_and_known_values():
    gen = torch.Generator().manual_seed(0)
    h = torch.cat(
        [
            torch.randn(20000, 2, generator=gen, dtype=torch.float64),
            torch.rand(20000, 1, generator=gen, dtype=torch.float64),
            torch.distributions.Laplace(0.0, 1.0).sample((20000, 1)).double(),
        ],
        dim=1,
    )
    k = channel_kurtosis(h)
    np.testing.assert_allclose(k.numpy(), stats.kurtosis(h.numpy(), axis=0, fisher=False, bias=True), rtol=1e-12)
    assert k[0] == pytest.approx(3.0, abs=0.15) and k[1] == pytest.approx(3.0, abs=0.15)
    assert k[2] == pytest.approx(1.8, abs=0.05)
    assert k[3] == pytest.approx(6.0, abs=0.8)


def test_outliers_find_one_huge_channel():
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(1000, 48, generator=gen, dtype=torch.float64)
    plain = outliers(h)
    h[:, 11] *= 40.0
    res = outliers(h)
    assert plain.outlier_channels == () and res.outlier_channels == (11,)
    # nearly one-hot tokens: max/rms approaches its ceiling √d (Gaussian rows sit near √(2 ln d))
    assert res.token_max_rms_mean > 0.85 * math.sqrt(48) > 2 * plain.token_max_rms_mean
    assert res.token_error[8] > 5 * plain.token_error[8]  # one channel sets every token's scale
    assert res.token_error[4] > res.token_error[8]
    assert res.channel_error[8] < 2 * plain.channel_error[8]  # per-channel scales absorb it
    assert res.channel_kurtosis[11] == pytest.approx(3.0, abs=0.5)  # a scaled Gaussian is still Gaussian
    d = res.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["outlier_channels"] == [11] and set(d["token_error"]) == {"8", "4"}
    assert "outlier channel" in repr(res)


def test_rare_spikes_raise_kurtosis():
    h = torch.randn(2000, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    h[::200, 3] = 60.0
    res = outliers(h)
    assert res.max_kurtosis == res.channel_kurtosis[3] and res.max_kurtosis > 50


def test_constant_channel_gives_null_kurtosis_in_json():
    h = torch.randn(50, 4, dtype=torch.float64)
    h[:, 2] = 0.0
    d = outliers(h).to_dict()
    assert d["channel_kurtosis"][2] is None and d["channel_max_rms"][2] is None
    json.dumps(d, allow_nan=False)


def test_weight_quantisation_reads_linear_conv1d_embedding_and_counts_tied_once():
    transformers = pytest.importorskip("transformers")
    from isotorch.studies._lm import gpt2

    model = gpt2(16, n_layer=1, n_embd=8, n_head=2, n_positions=8, dtype=torch.float64)
    res = weight_quantisation(model, bits=(4,))
    assert "lm_head.weight" not in res.names  # tied to wte
    assert res.names[0] == "transformer.wte.weight"
    w = model.transformer.h[0].attn.c_attn.weight  # Conv1D (in, out): one scale per output column
    k = res.names.index("transformer.h.0.attn.c_attn.weight")
    ref = _numpy_fake_quantise(w.detach().numpy(), 4, 0)
    assert res.errors[4][k] == pytest.approx(((ref - w.detach().numpy()) ** 2).sum() / (w.detach().numpy() ** 2).sum())
    assert isinstance(model, transformers.GPT2LMHeadModel)
    json.dumps(res.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: fake_quantise(torch.ones(2, 2), 1), "bits"),
        (lambda: fake_quantise(torch.ones(2, 2), 8, dim=2), "dim"),
        (lambda: fake_quantise(torch.ones(2, 2), 8, clip_ratio=0.0), "clip_ratio"),
        (lambda: fake_quantise(torch.ones(2, 2, dtype=torch.long), 8), "x must be"),
        (lambda: quantisation_error(torch.tensor([[float("nan")]]), 8), "NaN"),
        (lambda: channel_kurtosis(torch.ones(1, 3)), "at least 2"),
        (lambda: outliers(torch.ones(4, 3), threshold=0), "threshold"),
        (lambda: outliers(torch.ones(4, 3), bits=()), "bits"),
        (lambda: outliers(torch.ones(4)), "shape"),
        (lambda: max_rms_ratio(torch.empty(0, 3)), "empty"),
        (lambda: weight_quantisation(torch.nn.ReLU()), "no Linear"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
