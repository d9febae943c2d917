"""The demo is a registered study: matched pair, the engine's rotation check, probes, LMC, verdicts, resume, CLI."""

import json

import pytest
import torch
from typer.testing import CliRunner

from isotorch import families
from isotorch.cli import app
from isotorch.studies import DemoConfig, load_digits, names
from isotorch.studies.demo import Demo, base_model, hidden_rotation_change


def test_load_digits_is_standardised_and_split():
    x_train, y_train, x_test, _ = load_digits(test_fraction=0.25)
    assert x_train.shape[1] == 64 and len(x_train) + len(x_test) == 1797
    assert abs(len(x_test) - 0.25 * 1797) < 1
    assert x_train.mean().abs() < 1e-5 and set(y_train.tolist()) == set(range(10))


def test_demo_is_a_registered_study():
    assert "demo" in names()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_check_uses_the_engine_and_separates_the_families(dtype):
    base = base_model(12).to(dtype)
    iso = families.convert(base, "isotropic")
    x = torch.randn(32, 64, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert hidden_rotation_change(iso, x, generator=torch.Generator().manual_seed(0)) < tol
    # negative control: the elementwise model is changed by the same rotation
    assert hidden_rotation_change(base, x, generator=torch.Generator().manual_seed(0)) > 1e-2


def test_rotation_check_matches_a_hand_rotation():
    """Reference not from the engine: W₁→QW₁, b₁→Qb₁, W₂→W₂Qᵀ by hand on a model with no norm between them."""
    from torch import nn

    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(20, 5, dtype=torch.float64)
    from isotorch import groups

    q = groups.get("orthogonal").sample(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    by_hand = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        by_hand[0].weight.copy_(q @ model[0].weight)
        by_hand[0].bias.copy_(q @ model[0].bias)
        by_hand[2].weight.copy_(model[2].weight @ q.T)
        by_hand[2].bias.copy_(model[2].bias)
        expected = float((by_hand(x) - model(x)).norm() / model(x).norm())
    got = hidden_rotation_change(model, x, generator=torch.Generator().manual_seed(3))
    assert got == pytest.approx(expected, rel=1e-9)


def test_demo_trains_measures_and_reaches_verdicts(tiny_run):
    run = tiny_run("demo")
    finals = run.data.finals
    for seed in (0, 1):
        f = finals[seed]
        assert f["isotropic/rotation_change"] < 1e-5 < 1e-2 < f["elementwise/rotation_change"]
        assert f["elementwise/test_accuracy"] > 0.5
        assert f["elementwise/barrier_after"] < f["elementwise/barrier_before"]
        assert f["elementwise/lr"] in (3e-3, 1e-2) and f["isotropic/lr"] in (3e-3, 1e-2)  # each family's own sweep
    assert "learning rate (swept)" in run.findings[0].columns
    verdicts = {v.claim.name: v for v in run.verdicts}
    assert set(verdicts) == {"rotation-symmetry", "elementwise-more-aligned", "lmc-elementwise", "lmc-isotropic"}
    assert verdicts["rotation-symmetry"].verdict == "supported" and verdicts["rotation-symmetry"].seeds == (0, 1)
    stored = json.loads((run.out / "verdicts.json").read_text())
    assert [v["claim"] for v in stored] == [c.name for c in Demo.claims]
    assert all(len(v["ci95"]) == 2 and v["seeds"] == [0, 1] for v in stored)
    page = (run.out / "report.html").read_text()
    assert page.index("Verdicts") < page.index("Findings")
    for figure in ("accuracy.png", "srm.png", "lmc.png"):
        assert (run.out / figure).stat().st_size > 10_000
        assert figure in page
    assert "seed0-isotropic" in page and "audit failed" not in page


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lrs": (-1.0,)}, "lrs"),
        ({"lrs": ()}, "lrs"),
        ({"lrs": (1e-3, 1e-3)}, "lrs"),
        ({"test_fraction": 1.0}, "test"),
    ],
)
def test_demo_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoConfig(**kwargs)


def test_demo_command_prints_verdicts_and_refuses_bad_seeds(tmp_path):
    result = CliRunner().invoke(
        app, ["demo", "--out", str(tmp_path / "one"), "--seeds", "0", "--epochs", "1", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "verdicts" in result.output and "inconclusive" in result.output  # one seed: no interval
    assert (tmp_path / "one" / "report.html").exists() and (tmp_path / "one" / "verdicts.json").exists()
    duplicate = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "two"), "--seeds", "0,1,0"])
    assert duplicate.exit_code == 2 and "--seeds must be distinct" in duplicate.output
    assert len(duplicate.output.strip().splitlines()) == 1 and not (tmp_path / "two").exists()
    bad = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "three"), "--seeds", "a,b"])
    assert bad.exit_code == 2 and "--seeds" in bad.output
    again = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "one"), "--seeds", "0", "--epochs", "1"])
    assert again.exit_code == 2 and "--resume" in again.output
