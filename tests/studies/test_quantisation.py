"""The quantisation study: snapshot schedule, the bottleneck's symmetry, config validation, a tiny end-to-end run."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from isotorch import groups
from isotorch.studies import run_study
from isotorch.studies._config import ConfigError, make_config
from isotorch.studies.quantisation import (
    Quantisation,
    QuantisationConfig,
    _saturation,
    build_autoencoder,
    snapshot_epochs,
)
from isotorch.testing import relative_error, tolerance


def test_snapshot_schedule_is_the_papers():
    assert snapshot_epochs(100) == [0, 1, 2, 3, 4, 6, 8, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100]
    assert snapshot_epochs(1) == [0, 1]
    assert snapshot_epochs(7) == [0, 1, 2, 3, 4, 6, 7]


def _rotate_code(model, rotation):
    """R at the bottleneck: W_enc ← R W_enc, b_enc ← R b_enc, W_dec ← W_dec Rᵀ (a symmetry iff φ commutes with R)."""
    twin = copy.deepcopy(model)
    enc, dec = twin[2], twin[4]
    with torch.no_grad():
        enc.weight.copy_(rotation @ enc.weight)
        enc.bias.copy_(rotation @ enc.bias)
        dec.weight.copy_(dec.weight @ rotation.T)
    return twin


@pytest.mark.parametrize("variant", ["isotropic", "block:2", "elementwise"])
def test_bottleneck_symmetry_is_exact_for_its_group_only(variant, dtype):
    g = torch.Generator().manual_seed(0)
    model = build_autoencoder(6, (5,), 4, variant, generator=g).to(dtype)
    x = torch.randn(32, 6, generator=g, dtype=dtype)
    own = {"isotropic": "orthogonal", "block:2": "block_orthogonal:2", "elementwise": "signed_permutation"}[variant]
    rotation = groups.get(own).sample(4, generator=g, dtype=dtype)
    with torch.no_grad():
        assert relative_error(_rotate_code(model, rotation)(x), model(x)) < tolerance(dtype)
        for bigger in groups.covers(own, 4):  # negative control: the next larger group changes the function
            other = bigger.sample(4, generator=g, dtype=dtype)
            assert relative_error(_rotate_code(model, other)(x), model(x)) > 1e-3


def test_equal_generators_give_equal_weights_across_variants():
    a = build_autoencoder(8, (6,), 4, "elementwise", generator=torch.Generator().manual_seed(3))
    b = build_autoencoder(8, (6,), 4, "direction:8", generator=torch.Generator().manual_seed(3))
    for name, p in a.named_parameters():
        assert torch.equal(p, dict(b.named_parameters())[name])


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("variants=elementwise,bogus", "variants: 'bogus'"),
        ("variants=block:3", "variants: 'block:3' needs a block size"),
        ("dataset=cifar", "dataset must be"),
        ("bottleneck=1", "bottleneck must be"),
        ("epochs=0", "epochs must be"),
        ("epsilon=1.5", "epsilon must be"),
    ],
)
def test_bad_config_names_the_key(item, match):
    with pytest.raises(ConfigError, match=match):
        make_config(QuantisationConfig, overrides=[item])


def test_mnist_without_files_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"mnist.*not found"):
        run_study(
            "quantisation",
            tmp_path / "m",
            preset="tiny",
            overrides=["dataset=mnist", f"data_root={tmp_path}"],
            progress=False,
            report=False,
        )


@pytest.mark.slow
def test_tiny_run(tiny_run):
    """The study's own results on the shared tiny run (test_studies.py checks its files, verdicts and resume)."""
    run = tiny_run("quantisation")
    table = run.findings[0]
    assert list(table.rows) == ["elementwise", "isotropic", "isotropic Gaussian (reference)"]
    assert {"final test MSE", "saturated fraction (tanh > 0.9)", "quantisation Q", "alignment A (signed)"} <= set(
        table.columns
    )
    for seed in (0, 1):
        finals = run.data.finals[seed]
        for variant in ("elementwise", "isotropic"):
            key = f"variant={variant}"
            first = run.data.select(seed=seed, run=key, step=0)[0]
            assert finals[f"{key}/test_mse"] < first["test_mse"]  # training reduced the reconstruction error
            assert 0 <= finals[f"{key}/saturation"] <= 1
            assert first["quant_lo"] <= first["quant"] <= first["quant_hi"]
            assert len(first["srm_random_mean"]) == 100
            final = run.data.select(seed=seed, run=key, event="final")[0]
            assert final["align_null"] is not None and 0 < final["align_p"] <= 1
            # each variant trains at the rate its own sweep chose (lowest held-out reconstruction MSE)
            sweep = {
                float(r["run"].split("lr=")[1]): r["val_loss"]
                for r in run.data.select(seed=seed)
                if str(r.get("run", "")).startswith(f"sweep/{variant}/") and "val_loss" in r
            }
            assert set(sweep) == {3e-3, 3e-2} and finals[f"{key}/lr"] == min(sweep, key=sweep.get)
        assert abs(finals["gaussian/quant"]) < 0.05 and abs(finals["gaussian/align"]) < 0.1  # the null reads ~0
    verdicts = {v.claim.name: v for v in run.verdicts}
    assert list(verdicts) == [c.name for c in Quantisation.claims]
    assert all(v.seeds == (0, 1) for v in verdicts.values())
    assert "saturated fraction" in verdicts["elementwise-more-quantised"].note
    assert "own learning rate" in verdicts["quantisation-costs-reconstruction"].note
    report = (run.out / "report.html").read_text()
    assert report.index("Verdicts") < report.index("Findings")
    figures = json.loads((run.out / "figures.json").read_text())
    assert [f["path"] for f in figures] == [
        "srm_final.png",
        "ppp_final.png",
        "scores_vs_time.png",
        "recon_vs_quant.png",
    ]
    for f in figures:
        assert (run.out / f["path"]).stat().st_size > 5_000
        assert f["caption"][:40] in report


def test_saturation_reads_the_activations_own_radius():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    for variant in ("elementwise", "isotropic", "block:2", "direction:8"):
        model = build_autoencoder(6, (5,), 4, variant, generator=g)
        assert _saturation(model, variant, x) <= 0.5, variant  # default init: small arguments
        with torch.no_grad():
            model[2].weight.mul_(100.0)  # the encoder's last Linear: huge arguments saturate every variant
        assert _saturation(model, variant, x) > 0.9, variant
