import json
import math

import numpy as np
import pytest
import torch
from scipy.linalg import hadamard as scipy_hadamard

from isotorch import groups
from isotorch.params import (
    SymmetryError,
    check_orthogonal,
    hadamard,
    hadamard_transform,
    learn_rotation,
    random_hadamard,
)
from isotorch.probes import max_rms_ratio, quantisation_error


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 256])
def test_sylvester_matches_scipy(n):
    """Reference: scipy.linalg.hadamard (Sylvester's construction, powers of two)."""
    np.testing.assert_array_equal(hadamard(n).numpy() * math.sqrt(n), scipy_hadamard(n).astype(float))


@pytest.mark.parametrize("n", [12, 20, 24, 28, 36, 44, 48, 60, 76, 96, 768])
def test_paley_sizes_are_hadamard(n):
    h = (hadamard(n) * math.sqrt(n)).round()
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(h @ h.T, n * torch.eye(n, dtype=torch.float64), rtol=0, atol=0)


@pytest.mark.parametrize("n", [3, 6, 10, 172])
def test_unsupported_size_names_n(n):
    with pytest.raises(ValueError, match=f"size n={n}"):
        hadamard(n)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        hadamard(0)


@pytest.mark.parametrize("n", [16, 12, 768])
def test_rotations_are_orthogonal_to_round_off(n, dtype):
    eps = torch.finfo(dtype).eps
    gen = torch.Generator().manual_seed(0)
    for q in (
        hadamard(n, dtype=dtype),
        random_hadamard(n, generator=gen, dtype=dtype),
        groups.get("orthogonal").sample(n, generator=gen, dtype=dtype),
    ):
        assert q.dtype == dtype
        err = float((q.double().T @ q.double() - torch.eye(n, dtype=torch.float64)).abs().max())
        assert err < 10 * math.sqrt(n) * eps
        check_orthogonal(q, n, "stream")


@pytest.mark.parametrize("n", [1, 2, 12, 20, 64, 128, 768, 2048])
@pytest.mark.parametrize("dim", [-1, 1])
def test_fast_hadamard_transform_matches_the_matrix(n, dim, dtype):
    x = torch.randn(3, n, 2, dtype=dtype) if dim == 1 else torch.randn(3, 2, n, dtype=dtype)
    ref = torch.movedim(torch.movedim(x.double(), dim, -1) @ hadamard(n), -1, dim)
    out = hadamard_transform(x, dim=dim)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=(1e-12 if dtype == torch.float64 else 1e-4))
    # orthogonal: the norm along dim is kept
    torch.testing.assert_close(out.double().norm(dim=dim), x.double().norm(dim=dim), rtol=1e-5, atol=1e-6)


def test_fast_hadamard_transform_bad_input():
    with pytest.raises(ValueError, match="size n=6"):
        hadamard_transform(torch.randn(2, 6))
    with pytest.raises(ValueError, match="dim"):
        hadamard_transform(torch.randn(2, 8), dim=2)
    with pytest.raises(TypeError, match="x must be"):
        hadamard_transform(torch.ones(2, 8, dtype=torch.long))


def test_random_hadamard_is_seeded_and_signed():
    a = random_hadamard(8, generator=torch.Generator().manual_seed(1))
    b = random_hadamard(8, generator=torch.Generator().manual_seed(1))
    c = random_hadamard(8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    signs = (a / hadamard(8))[0]  # column signs
    assert set(signs.round().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("n", [64, 768])
def test_hadamard_spreads_a_single_outlier_channel(n):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(500, n, generator=gen, dtype=torch.float64)
    h[:, 7] = 100.0 * torch.sign(h[:, 7])  # one huge channel: each token is nearly one-hot
    before = float(max_rms_ratio(h).mean())
    rotated = h @ hadamard(n)
    after = float(max_rms_ratio(rotated).mean())
    assert before > 0.9 * math.sqrt(n)
    assert after < 1.2 * math.sqrt(2 * math.log(n)) and after < before / 4
    assert quantisation_error(rotated, 4) < quantisation_error(h, 4) / 2
    # negative control: a permutation (the group an affine norm allows) moves the outlier but does not spread it
    perm = groups.get("permutation").sample(n, generator=gen, dtype=torch.float64)
    assert float(max_rms_ratio(h @ perm).mean()) == pytest.approx(before)


def test_learned_rotation_stays_orthogonal_and_does_not_increase_error():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(256, 32, generator=gen, dtype=torch.float64)
    h[:, 3] *= 30.0
    h[:, 17] *= 10.0
    res = learn_rotation(h, init="identity", steps=40, lr=1e-2, rebase=10)
    q = res.matrix
    assert float((q.T @ q - torch.eye(32, dtype=torch.float64)).abs().max()) < 1e-12
    assert res.initial_error == pytest.approx(res.identity_error)
    assert res.error == pytest.approx(quantisation_error(h @ q, 4), rel=1e-12)
    assert res.error <= res.identity_error
    assert res.error < 0.5 * res.identity_error  # it actually learned
    assert len(res.history) == 40
    from_hadamard = learn_rotation(h, steps=20, generator=torch.Generator().manual_seed(1))
    assert from_hadamard.error <= from_hadamard.initial_error < from_hadamard.identity_error
    d = res.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert "LearnedRotation" in repr(res)


def test_learned_rotation_with_reader_weights():
    """The objective adds the weights' per-row error: W·Q is what a reader becomes when the stream is rotated."""
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(128, 16, generator=gen, dtype=torch.float64)
    w = torch.randn(24, 16, generator=gen, dtype=torch.float64)
    w[:, 0] *= 20.0
    res = learn_rotation(h, weights=(w,), init="identity", steps=30)
    expected = quantisation_error(h @ res.matrix, 4) + quantisation_error(w @ res.matrix, 4)
    assert res.error == pytest.approx(expected, rel=1e-12)
    assert res.error < res.identity_error
    haar = learn_rotation(h, init="haar", steps=0, generator=gen)
    assert haar.history == () and haar.error == haar.initial_error


@pytest.mark.parametrize(
    ("q", "match"),
    [
        (torch.eye(3), r"shape \(4, 4\)"),
        (2 * torch.eye(4), "not orthogonal"),
        (torch.eye(4, dtype=torch.long), "floating-point"),
        (torch.full((4, 4), float("nan")), "NaN"),
    ],
)
def test_check_orthogonal_names_the_site(q, match):
    with pytest.raises(SymmetryError, match=f"h.0.stream: .*{match}"):
        check_orthogonal(q, 4, "h.0.stream")


def test_learn_rotation_bad_input():
    h = torch.randn(10, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="h must be"):
        learn_rotation(torch.randn(10))
    with pytest.raises(ValueError, match="bits"):
        learn_rotation(h, bits=1)
    with pytest.raises(ValueError, match="init"):
        learn_rotation(h, init="nope")
    with pytest.raises(SymmetryError, match="init"):
        learn_rotation(h, init=2 * torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        learn_rotation(h, weights=(torch.randn(3, 5),))
    with pytest.raises(ValueError, match="steps"):
        learn_rotation(h, steps=-1)


def _planted(n_rows, gen):
    """Tokens with two planted outlier channels (×40 and ×15) and heavy-tailed rows, d = 32."""
    h = torch.randn(n_rows, 32, generator=gen, dtype=torch.float64)
    h = h * (1 + torch.rand(n_rows, 1, generator=gen, dtype=torch.float64) * 3)
    h[:, 5] *= 40.0
    h[:, 21] *= 15.0
    return h


def test_learned_rotation_beats_haar_and_hadamard_on_planted_outliers_and_stays_orthogonal():
    """SpinQuant's claim on data with planted outlier channels: learned ≤ Hadamard ≤ none and learned ≤ Haar, on the
    calibration batch and on held-out rows of the same law; Q orthogonal to 1e-10 in float64 after every rebase."""
    gen = torch.Generator().manual_seed(11)
    calib, held_out = _planted(1024, gen), _planted(1024, gen)
    haar = groups.get("orthogonal").sample(32, generator=gen, dtype=torch.float64)
    res = learn_rotation(calib, bits=4, init="hadamard", steps=60, rebase=7, generator=gen)
    q = res.matrix
    assert q.dtype == torch.float64
    assert float((q.T @ q - torch.eye(32, dtype=torch.float64)).abs().max()) < 1e-10
    assert float((q @ q.T - torch.eye(32, dtype=torch.float64)).abs().max()) < 1e-10
    for h in (calib, held_out):
        none, learned = quantisation_error(h, 4), quantisation_error(h @ q, 4)
        hadamard_err = quantisation_error(h @ hadamard(32), 4)
        haar_err = quantisation_error(h @ haar, 4)
        assert learned <= haar_err and learned <= hadamard_err < none
    assert res.error <= res.initial_error  # the best Q seen is returned: never worse than its start
    # the reported error is the exact objective at the returned Q (no straight-through estimate)
    assert res.error == pytest.approx(quantisation_error(calib @ q, 4), rel=1e-12)
