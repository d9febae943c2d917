import math

import pytest
import torch
from torch import nn

import isotorch as it
from isotorch.probes import NeuronDistances, neuron_distances


def layer(n=6, d_in=4, d_out=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    return torch.randn(n, d_in, **f64), torch.randn(n, **f64), torch.randn(d_out, n, **f64)


def test_duplicate_neurons_are_found_and_counted():
    w1, b1, w2 = layer()
    w1[4], b1[4], w2[:, 4] = w1[1], b1[1], w2[:, 1]
    w1[5], b1[5], w2[:, 5] = w1[1] + 1e-6, b1[1], w2[:, 1]
    r = neuron_distances(w1, b1, w2)
    assert isinstance(r, NeuronDistances)
    assert r.min_distance == 0.0 and r.closest_pair == (1, 4)
    assert r.n_distinct == 4
    assert r.shared_fraction == pytest.approx(3 / 6)
    assert r.clusters[1] == r.clusters[4] == r.clusters[5]


def test_pair_distance_formula():
    w1, b1, w2 = layer(n=2)
    theta = torch.cat([w1, b1[:, None], w2.T], dim=1)
    r = neuron_distances(w1, b1, w2)
    assert r.min_distance == pytest.approx(float((theta[0] - theta[1]).norm()) / math.sqrt(2))
    assert r.n_distinct == 2 and r.shared_fraction == 0.0


def test_dead_units():
    w1, b1, w2 = layer()
    w2[:, 2] = 0  # no outgoing weight
    w1[3], b1[3] = 0, 0  # no incoming weight
    r = neuron_distances(w1, b1, w2)
    assert r.dead == (2, 3)


def test_rotation_symmetric_state_and_its_distance():
    # a layer whose stacked [W1 | b1 | W2ᵀ] has rank 3 < 6: three directions n with nᵀW1 = 0, nᵀb1 = 0, W2 n = 0
    g = torch.Generator().manual_seed(1)
    basis = torch.randn(6, 3, generator=g, dtype=torch.float64)
    stacked = basis @ torch.randn(3, 4 + 1 + 3, generator=g, dtype=torch.float64)
    w1, b1, w2 = stacked[:, :4], stacked[:, 4], stacked[:, 5:].T
    r = neuron_distances(w1, b1, w2)
    assert r.n_near_zero == 3 and r.rotation_distance < 1e-12
    # the smallest singular value is the distance to the fixed set of the best reflection I − 2nnᵀ
    w1, b1, w2 = layer(seed=2)
    r = neuron_distances(w1, b1, w2)
    stacked = torch.cat([w1, b1[:, None], w2.T], 1)
    n = torch.linalg.svd(stacked).U[:, -1]
    dist = math.sqrt(float((n @ w1).pow(2).sum() + (n @ b1) ** 2 + (w2 @ n).pow(2).sum()))
    assert r.rotation_distance == pytest.approx(dist, rel=1e-9)
    assert r.n_near_zero == 0


def test_permutation_of_units_changes_nothing_but_labels(dtype):
    w1, b1, w2 = (t.to(dtype) for t in layer(n=8, seed=3))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    a = neuron_distances(w1, b1, w2)
    b = neuron_distances(w1[perm], b1[perm], w2[:, perm])
    assert b.min_distance == pytest.approx(a.min_distance, rel=1e-6)
    assert b.n_distinct == a.n_distinct
    assert b.singular_values == pytest.approx(a.singular_values, rel=1e-5)
    # an O(n) change of basis keeps the singular values (rotation distance) but not the neuron distances
    q = it.groups.get("orthogonal").sample(8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c = neuron_distances((q @ w1.double()), q @ b1.double(), w2.double() @ q.T)
    assert c.singular_values == pytest.approx(a.singular_values, rel=1e-5)
    assert abs(c.min_distance - a.min_distance) > 1e-3


def test_inputs_forms_and_inactive_units():
    lin1, lin2 = nn.Linear(4, 5), nn.Linear(5, 2)
    acts = torch.relu(torch.randn(50, 5))
    acts[:, 3] = 0
    r = neuron_distances(lin1, lin1.bias, lin2, acts=acts)
    assert r.inactive == (3,)
    single = neuron_distances(torch.randn(1, 3), None, torch.randn(2, 1))
    assert single.min_distance == math.inf and single.closest_pair is None and single.n_distinct == 1
    assert set(r.to_dict()) >= {"min_distance", "n_distinct", "dead", "singular_values"}


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((torch.randn(4, 3), None, torch.randn(2, 5)), {}, "w_out"),
        ((torch.randn(4), None, torch.randn(2, 4)), {}, "w_in"),
        ((torch.randn(4, 3), torch.randn(3), torch.randn(2, 4)), {}, "b_in"),
        ((torch.randn(4, 3), None, torch.randn(2, 4)), {"rtol": 2.0}, "rtol"),
        ((torch.full((4, 3), float("nan")), None, torch.randn(2, 4)), {}, "NaN"),
        ((torch.randn(4, 3), None, torch.randn(2, 4)), {"acts": torch.randn(5, 3)}, "acts"),
    ],
)
def test_bad_input(args, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        neuron_distances(*args, **kwargs)
