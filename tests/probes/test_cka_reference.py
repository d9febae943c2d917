"""Reference test: our CKA against the peer library torch-cka (PyPI ``torch-cka==0.21``, the ``bench`` extra).

What torch-cka computes (``torch_cka/cka.py``, ``CKA.compare``): the minibatch CKA of Nguyen et al. (2021). For each
batch b of a DataLoader it takes every hooked layer's output flattened to (B, d), the linear Gram matrices
K_b = X_bX_bᵀ and L_b = Y_bY_bᵀ (features not centred), and the unbiased HSIC of Song et al. (2012), Nguyen et al.
Eq. (3), on them; the matrix entry is

    CKA_mb = Σ_b HSIC_1(K_b, L_b) / √(Σ_b HSIC_1(K_b, K_b) · Σ_b HSIC_1(L_b, L_b)).

Ours (``compare_layers(..., debiased=True)``) is the debiased CKA of all kept inputs taken as one sample:
HSIC_1(K, L)/√(HSIC_1(K, K)·HSIC_1(L, L)) over the N rows of the reservoir, on column-centred features (HSIC_1 is
unchanged by centring). With one batch holding all N inputs and ``samples >= N`` the two are the same number, which is
tested to float64 round-off. With several batches they are different estimators of the same population CKA: torch-cka
is tested against a numpy transcription of the formula above, our per-batch value against its per-batch ratio, and the
minibatch value is shown to differ from our whole-sample value by more than round-off.

torch-cka computes in torch's default dtype (``torch.ones`` and ``torch.zeros`` inside ``compare``), so these tests run
it with float64 models under ``torch.set_default_dtype(torch.float64)``.
"""

import contextlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from isotorch.probes import compare_layers, linear_cka

torch_cka = pytest.importorskip(
    "torch_cka", reason="torch-cka is not installed: it is a benchmark peer (pip install -e '.[bench]' or make bench)"
)

# float64 throughout. The debiased HSIC subtracts sums of ‖x_i‖²‖y_i‖² from ‖YᵀX‖_F² and the two libraries order the
# sums differently (feature-space YᵀX here, N×N Gram products there): measured differences are ≤ 4e-14 (≈ 200 ulps
# of 1); 1e-12 bounds them with margin and is still 10⁹ times below the estimator differences tested below.
ROUND_OFF = 1e-12


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 5)).double()


def cnn(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.Flatten(), nn.Linear(6 * 36, 5)
    ).double()


MODELS = {
    "mlp": (mlp, lambda n: torch.randn(n, 12, generator=torch.Generator().manual_seed(7), dtype=torch.float64)),
    "cnn": (cnn, lambda n: torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)),
}
LAYERS = {"mlp": ["0", "1", "2", "3", "4"], "cnn": ["0", "1", "2", "4"]}  # forward order: torch-cka's row order


def peer_matrix(model_a, model_b, loader, layers_a, layers_b):
    """torch-cka's CKA matrix (its forward hooks stay on the models: pass fresh ones)."""
    with default_dtype(torch.float64), torch.no_grad():
        cka = torch_cka.CKA(
            model_a, model_b, model1_name="A", model2_name="B", model1_layers=layers_a, model2_layers=layers_b
        )
        cka.compare(loader, loader)
        result = cka.export()
    assert result["model1_layers"] == layers_a and result["model2_layers"] == layers_b
    return result["CKA"].double()


def hsic_unbiased(k, l):
    """Nguyen et al. (2021) Eq. (3), the unbiased HSIC of Song et al. (2012), in numpy."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    total = np.trace(k @ l) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k.sum(0) @ l.sum(1))
    return total / (n * (n - 3))


def minibatch_cka(batches_a, batches_b):
    """CKA_mb = Σ_b HSIC_1(K_b, L_b) / √(Σ_b HSIC_1(K_b, K_b) Σ_b HSIC_1(L_b, L_b)), K_b, L_b linear, uncentred."""
    xy = xx = yy = 0.0
    for x, y in zip(batches_a, batches_b, strict=True):
        k, l = x @ x.T, y @ y.T
        xy, xx, yy = xy + hsic_unbiased(k, l), xx + hsic_unbiased(k, k), yy + hsic_unbiased(l, l)
    return xy / np.sqrt(xx * yy)


def outputs(model, x, layers):
    """Each named layer's output for inputs x, flattened to (N, d), as numpy arrays."""
    captured = {}
    handles = [
        model.get_submodule(name).register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
        for name in layers
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: captured[name].flatten(1).numpy() for name in layers}


def transcription(model_a, model_b, x, layers_a, layers_b, batch):
    chunks = x.split(batch)
    feats_a = [outputs(model_a, c, layers_a) for c in chunks]
    feats_b = [outputs(model_b, c, layers_b) for c in chunks]
    return torch.tensor(
        [[minibatch_cka([f[i] for f in feats_a], [f[j] for f in feats_b]) for j in layers_b] for i in layers_a]
    )


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_one_batch_torch_cka_equals_our_debiased_compare_layers(kind):
    build, inputs = MODELS[kind]
    layers, n = LAYERS[kind], 96
    x = inputs(n)
    loader = DataLoader(TensorDataset(x), batch_size=n)  # one batch: minibatch CKA is the whole-sample estimator
    theirs = peer_matrix(build(0), build(1), loader, layers, layers)
    ours = compare_layers(build(0), build(1), [x], layers, debiased=True, samples=n)
    assert ours.n_samples == n
    assert (ours.matrix - theirs).abs().max() <= ROUND_OFF
    written_out = transcription(build(0), build(1), x, layers, layers, batch=n)
    assert (ours.matrix - written_out).abs().max() <= ROUND_OFF
    # which estimator it is: our plain (biased) CKA on the same rows is a different number
    plain = compare_layers(build(0), build(1), [x], layers, samples=n)
    assert (plain.matrix - theirs).abs().max() > 1e-3


def test_minibatch_torch_cka_equals_the_transcribed_formula_not_our_whole_sample_value():
    build, inputs = MODELS["mlp"]
    layers, n, batch = LAYERS["mlp"], 240, 48
    x = inputs(n)
    theirs = peer_matrix(build(0), build(1), DataLoader(TensorDataset(x), batch_size=batch), layers, layers)
    assert (theirs - transcription(build(0), build(1), x, layers, layers, batch=batch)).abs().max() <= ROUND_OFF
    # per batch, HSIC_1(K_b, L_b)/√(HSIC_1(K_b, K_b)·HSIC_1(L_b, L_b)) is our linear_cka(debiased=True) of that batch
    a, b = build(0), build(1)
    for chunk in x.split(batch):
        fa, fb = outputs(a, chunk, layers), outputs(b, chunk, layers)
        for i in layers:
            for j in layers:
                ours = linear_cka(torch.from_numpy(fa[i]), torch.from_numpy(fb[j]), debiased=True)
                assert abs(ours - minibatch_cka([fa[i]], [fb[j]])) <= ROUND_OFF
    # over several batches the ratio of summed HSICs is another estimator than the whole-sample debiased CKA
    whole = compare_layers(build(0), build(1), [x], layers, debiased=True, samples=n)
    assert (whole.matrix - theirs).abs().max() > 1e-3  # measured: 0.018


def test_negative_control_a_different_model_gives_a_different_matrix():
    build, inputs = MODELS["mlp"]
    layers, n = LAYERS["mlp"], 96
    x = inputs(n)
    theirs = peer_matrix(build(0), build(1), DataLoader(TensorDataset(x), batch_size=n), layers, layers)
    other = compare_layers(build(0), build(2), [x], layers, debiased=True, samples=n)
    assert (other.matrix - theirs).abs().max() > 0.05
    # and the layer order matters: transposed layer lists give a different (transposed) matrix
    swapped = compare_layers(build(1), build(0), [x], layers, debiased=True, samples=n)
    assert torch.allclose(swapped.matrix.T, theirs, rtol=0, atol=ROUND_OFF)
    assert (swapped.matrix - theirs).abs().max() > 0.05
