import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from isotorch.probes import ClassMoments, Moments, NearestCentreAgreement, Reservoir


def split_points(n, cuts):
    points = sorted({0, n, *(c % (n + 1) for c in cuts)})
    return [(a, b) for a, b in itertools.pairwise(points)]


@given(
    n=st.integers(2, 60),
    d=st.integers(1, 5),
    cuts=st.lists(st.integers(0, 100), max_size=6),
    shift=st.sampled_from([0.0, 1e6]),
)
def test_moments_streaming_equals_in_memory(n, d, cuts, shift):
    x = torch.randn(n, d, dtype=torch.float64) + shift
    m = Moments()
    for a, b in split_points(n, cuts):
        m.update(x[a:b])
    assert m.count == n
    assert torch.allclose(m.mean, x.mean(0), rtol=1e-12, atol=1e-9)
    assert torch.allclose(m.covariance(), torch.cov(x.T).reshape(d, d), rtol=1e-8, atol=1e-8)
    assert torch.allclose(m.covariance(correction=0), torch.cov(x.T, correction=0).reshape(d, d), rtol=1e-8, atol=1e-8)


def test_moments_float32_input_is_summed_in_float64():
    x = torch.randn(5000, 3) * 10 + 1000
    m = Moments()
    for chunk in x.split(7):
        m.update(chunk)
    ref = torch.cov(x.double().T)
    assert m.mean.dtype == torch.float64
    assert torch.allclose(m.covariance(), ref, rtol=1e-9)


def test_moments_merge_and_from_classes():
    x = torch.randn(300, 4, dtype=torch.float64)
    y = torch.arange(300) % 3
    a, b = Moments(), Moments()
    a.update(x[:120])
    b.update(x[120:])
    assert torch.allclose(a.merge(b).covariance(), torch.cov(x.T))
    c = ClassMoments()
    c.update(x, y)
    total = Moments.from_classes(c)
    assert total.count == 300 and torch.allclose(total.covariance(), torch.cov(x.T))


def test_class_moments_match_in_memory_and_grow():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (500,), generator=g)
    y[:50] = torch.randint(0, 2, (50,), generator=g)  # the first batch only shows classes 0 and 1
    c = ClassMoments(class_scatter=True)
    for xb, yb in zip(x.split(50), y.split(50), strict=True):
        c.update(xb, yb)
    assert c.counts.tolist() == torch.bincount(y, minlength=5).tolist()
    within = torch.zeros(3, 3, dtype=torch.float64)
    for k in range(5):
        rows = x[y == k]
        assert torch.allclose(c.means[k], rows.mean(0))
        scatter = (rows - rows.mean(0)).T @ (rows - rows.mean(0))
        assert torch.allclose(c.class_scatter[k], scatter)
        assert c.class_traces[k] == pytest.approx(float(torch.trace(scatter)))
        within += scatter
    assert torch.allclose(c.within_scatter, within)
    assert torch.allclose(c.within_covariance(), within / 500)
    assert torch.allclose(c.mean, x.mean(0))


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.randn(4, 2), torch.tensor([0, 1, 2, -1]), "class indices"),
        (torch.randn(4, 2), torch.tensor([0.0, 1, 2, 1]), "integer"),
        (torch.randn(4, 2), torch.tensor([0, 1, 2]), "one label per row"),
        (torch.randn(4), torch.tensor([0, 1, 2, 1]), "rows, features"),
    ],
)
def test_class_moments_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        ClassMoments().update(x, y)
    with pytest.raises(ValueError, match="num_classes=2"):
        ClassMoments(num_classes=2).update(torch.randn(3, 2), torch.tensor([0, 1, 2]))


def test_feature_size_must_not_change():
    m = Moments()
    m.update(torch.randn(3, 4))
    with pytest.raises(ValueError, match="4 features"):
        m.update(torch.randn(3, 5))
    with pytest.raises(ValueError, match="more than 1"):
        Moments().covariance()


def test_reservoir_is_uniform_seeded_and_keeps_labels():
    x = torch.arange(10_000, dtype=torch.float64)[:, None]
    y = torch.arange(10_000) % 7
    hits = torch.zeros(10)
    for seed in range(40):
        r = Reservoir(500, generator=torch.Generator().manual_seed(seed))
        for xb, yb in zip(x.split(333), y.split(333), strict=True):
            r.update(xb, yb)
        assert len(r) == 500 and r.seen == 10_000
        assert torch.equal(r.values[:, 0].long(), r.indices)
        assert torch.equal(r.labels, r.indices % 7)
        hits += torch.bincount(r.indices // 1000, minlength=10)
    expected = 40 * 500 / 10
    assert float((hits - expected).abs().max()) < 5 * expected**0.5  # each tenth of the stream equally likely
    a, b = (
        Reservoir(50, generator=torch.Generator().manual_seed(3)),
        Reservoir(50, generator=torch.Generator().manual_seed(3)),
    )
    for chunk in x.split(64):
        a.update(chunk)
        b.update(chunk * 2)
    assert torch.equal(a.indices, b.indices)


def test_reservoir_smaller_stream_keeps_everything_in_order():
    r = Reservoir(100, generator=torch.Generator().manual_seed(0))
    r.update(torch.randn(30, 2))
    r.update(torch.randn(0, 2))
    r.update(torch.randn(20, 2))
    assert len(r) == 50 and r.indices.tolist() == list(range(50))
    with pytest.raises(ValueError, match="capacity"):
        Reservoir(0)
    with pytest.raises(ValueError, match="labels"):
        r.update(torch.randn(2, 2), torch.tensor([0, 1]))


def test_nearest_centre_agreement():
    means = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    acc = NearestCentreAgreement(means, classifier=torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
    x = torch.tensor([[0.9, 0.5], [0.8, -0.5], [-1.0, 0.2]])
    acc.update(x, torch.tensor([0, 0, 0]))
    # nearest centre: 0, 0, 1; classifier: 0, 1, 0 → two disagreements; centre vs labels: one error
    assert acc.nc4 == pytest.approx(2 / 3) and acc.ncc_error == pytest.approx(1 / 3)
    assert NearestCentreAgreement(means).nc4 is None


def test_float32_products_are_close_to_float64():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3000, 8, generator=g) * 5 + 100
    y = torch.randint(0, 3, (3000,), generator=g)
    exact, fast = ClassMoments(), ClassMoments(matmul_dtype=torch.float32)
    m_exact, m_fast = Moments(), Moments(matmul_dtype=torch.float32)
    for xb, yb in zip(x.split(700), y.split(700), strict=True):
        exact.update(xb, yb)
        fast.update(xb, yb)
        m_exact.update(xb)
        m_fast.update(xb)
    scale = float(exact.within_scatter.abs().max())
    assert torch.allclose(fast.within_scatter, exact.within_scatter, rtol=0, atol=1e-5 * scale)
    assert torch.allclose(m_fast.scatter, m_exact.scatter, rtol=0, atol=1e-5 * float(m_exact.scatter.abs().max()))
    assert not torch.equal(m_fast.scatter, m_exact.scatter)  # the option is really used
    with pytest.raises(ValueError, match="matmul_dtype"):
        Moments(matmul_dtype=torch.float16)
    with pytest.raises(ValueError, match="num_classes"):
        ClassMoments(num_classes=0)
