import math

import pytest
import torch

import isotorch as it
from isotorch.probes import ScoreResult, alignment_score, quantisation_score


def gaussian(n_rows, dim, seed=0, dtype=torch.float64):
    return torch.randn(n_rows, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def signed_axes(n_rows, dim, seed=0, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.eye(dim, dtype=torch.float64)[torch.randint(0, dim, (n_rows,), generator=g)]
    x = x * torch.randn(n_rows, 1, generator=g, dtype=torch.float64).sign()
    return x + noise * torch.randn(n_rows, dim, generator=g, dtype=torch.float64)


def rotation(n, seed=0):
    return it.groups.get("orthogonal").sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- alignment ----------------------------------------------------------------------------------------------------


def test_alignment_isotropic_is_at_its_noise_floor():
    r = alignment_score(gaussian(6000, 8), generator=0)
    assert isinstance(r, ScoreResult) and r.name == "alignment"
    assert r.noise_floor < 0.03
    assert r.value < 3 * r.noise_floor
    assert r.ci_low <= r.value <= r.ci_high


def test_alignment_axis_data_is_clearly_positive_and_rotation_removes_most_of_it():
    x = signed_axes(6000, 8, noise=0.05)
    aligned = alignment_score(x, generator=0)
    rotated = alignment_score(x @ rotation(8).T, generator=0)
    assert aligned.value > 0.25 and aligned.ci_low > 10 * aligned.noise_floor
    assert rotated.value < 0.5 * aligned.value  # 16 rotated clusters still leave some in-plane structure
    assert alignment_score(x, "random", generator=1).value < 0.5 * aligned.value


def test_alignment_flat_reference_measures_angular_structure_only():
    from isotorch.probes import srm

    x = signed_axes(3000, 6, noise=0.3)
    curve = srm(x).mean
    flat = alignment_score(x, reference="flat", generator=0)
    expected = float((curve - curve.mean()).pow(2).mean().sqrt() / curve.mean())
    assert flat.value == pytest.approx(expected, rel=1e-12)
    iso = alignment_score(gaussian(6000, 6), reference="flat", generator=0)
    assert iso.value < 3 * iso.noise_floor


def test_alignment_bootstrap_matches_formula_and_is_seeded():
    from isotorch.probes import srm

    x = signed_axes(500, 5, noise=0.3)
    r = alignment_score(x, generator=4, n_bootstrap=50)
    curve = srm(x)
    expected = math.sqrt(float(((curve.mean - curve.baseline) ** 2).mean())) / curve.baseline
    assert r.value == pytest.approx(expected, rel=1e-12)
    again = alignment_score(x, generator=4, n_bootstrap=50)
    assert (again.ci_low, again.ci_high) == (r.ci_low, r.ci_high)
    assert r.to_dict()["settings"]["reference"] == "isotropic"


# --- quantisation -------------------------------------------------------------------------------------------------


def test_quantisation_isotropic_is_near_zero_and_axes_known():
    iso = quantisation_score(gaussian(8000, 6), generator=0)
    assert abs(iso.value) < 0.01
    axes = quantisation_score(signed_axes(8000, 6), generator=0)
    assert axes.value == pytest.approx(1 - math.log(4) / math.log(72), abs=1e-3)  # four occupied bins per plane
    assert axes.ci_low == pytest.approx(axes.value, abs=1e-3)


def test_quantisation_detects_clusters_in_a_rotated_frame_only_with_that_frame():
    codebook = gaussian(5, 6, seed=3)
    g = torch.Generator().manual_seed(4)
    x = codebook[torch.randint(0, 5, (6000,), generator=g)] + 0.01 * torch.randn(
        6000, 6, generator=g, dtype=torch.float64
    )
    assert quantisation_score(x, generator=0).value > 0.4  # discrete clusters: concentrated angles
    continuous = quantisation_score(gaussian(6000, 6, seed=5) * torch.tensor([3.0, 2, 1, 1, 1, 1]), generator=0)
    assert continuous.value < 0.1  # anisotropic but continuous


def test_quantisation_survives_rotation_but_alignment_does_not():
    # rotated axis data is still discrete (quantised), just no longer aligned with the basis
    x = signed_axes(6000, 6, noise=0.02)
    rotated = x @ rotation(6).T
    assert quantisation_score(rotated, generator=0).value > 0.3
    assert (
        alignment_score(rotated, epsilon=0.9, generator=0).value
        < 0.2 * alignment_score(x, epsilon=0.9, generator=0).value
    )


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (alignment_score, dict(reference="gauss"), "reference"),
        (alignment_score, dict(n_bootstrap=1), "n_bootstrap"),
        (alignment_score, dict(confidence=1.0), "confidence"),
        (alignment_score, dict(epsilon=2.0), "epsilon"),
        (quantisation_score, dict(bins=1), "bins"),
        (quantisation_score, dict(basis=torch.randn(3, 7)), "basis"),
        (quantisation_score, dict(epsilon=0.999999), "epsilon"),
    ],
)
def test_bad_arguments(fn, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fn(gaussian(50, 4), **kwargs)


def test_alignment_needs_two_rows_and_handles_nan():
    with pytest.raises(ValueError, match="at least 2"):
        alignment_score(gaussian(1, 4))
    x = gaussian(100, 4)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        alignment_score(x)
    assert alignment_score(x, nan_policy="omit", n_bootstrap=10).settings["excluded_nonfinite"] == 1
