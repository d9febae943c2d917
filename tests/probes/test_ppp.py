import math

import pytest
import torch

from isotorch.probes import PPPResult, ppp


def gaussian(n_rows, dim, seed=0):
    return torch.randn(n_rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_isotropic_data_gives_a_flat_ratio():
    r = ppp(gaussian(20_000, 6), resolution=40, bandwidth=0.08, generator=torch.Generator().manual_seed(0))
    assert isinstance(r, PPPResult)
    inner = r.image[8:32, 8:32]  # away from the rim, where the reference is dense
    finite = inner[torch.isfinite(inner)]
    assert finite.numel() > 300
    assert float((finite - 1).abs().median()) < 0.1
    assert r.kept_fraction == pytest.approx(r.reference_kept_fraction, abs=0.01)


def test_density_integrates_to_the_kept_fraction():
    r = ppp(gaussian(2000, 5), resolution=50, bandwidth=0.0, generator=torch.Generator().manual_seed(0))
    area = (2 / 50) ** 2
    assert float(r.density.sum()) * area == pytest.approx(r.kept_fraction, rel=1e-9)


def test_axis_clusters_light_up_and_diagonals_are_empty():
    g = torch.Generator().manual_seed(1)
    x = torch.eye(6, dtype=torch.float64)[torch.randint(0, 6, (4000,), generator=g)]
    x = x * torch.randn(4000, 1, generator=g, dtype=torch.float64).sign() + 0.05 * torch.randn(4000, 6, generator=g)
    r = ppp(x, resolution=64, generator=torch.Generator().manual_seed(0))
    axis = r.density[32, 60:64].sum() + r.density[32, 0:4].sum() + r.density[60:64, 32].sum() + r.density[0:4, 32].sum()
    diagonal = r.density[43:47, 43:47].sum()
    assert float(axis) > 100 * float(diagonal)


def test_volume_normaliser_removes_the_diagonal_excess():
    # without normalising, projected isotropic data is denser near the centre than on the rim; the ratio is not
    r = ppp(gaussian(20_000, 4), resolution=32, bandwidth=0.1, generator=torch.Generator().manual_seed(0), epsilon=0.0)
    assert float(r.reference[16, 16]) > 0
    ring = [r.image[16, 16 + k] for k in (3, 6, 9)]
    assert all(abs(float(v) - 1) < 0.15 for v in ring)


def test_result_to_dict_and_plot(tmp_path):
    r = ppp(gaussian(300, 4), resolution=16, generator=torch.Generator().manual_seed(0))
    d = r.to_dict()
    assert len(d["image"]) == 16 and all(v is None or not math.isnan(v) for row in d["image"] for v in row)
    r.plot().savefig(tmp_path / "ppp.png")
    assert (tmp_path / "ppp.png").stat().st_size > 0
    assert "PPPResult" in repr(r)


def test_reference_is_seeded():
    x = gaussian(300, 4)
    a, b = (
        ppp(x, resolution=16, generator=torch.Generator().manual_seed(5)),
        ppp(x, resolution=16, generator=torch.Generator().manual_seed(5)),
    )
    assert torch.equal(a.reference, b.reference)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(resolution=1), "resolution"),
        (dict(bandwidth=-0.1), "bandwidth"),
        (dict(epsilon=1.0), "epsilon"),
        (dict(basis=torch.randn(2, 3)), "basis"),
        (dict(planes="all"), "planes"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ppp(gaussian(30, 4), **kwargs)


def test_nan_rows():
    x = gaussian(50, 4)
    x[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ppp(x)
    assert ppp(x, nan_policy="omit", resolution=8).excluded_nonfinite == 1
