import json

import pytest
from typer.testing import CliRunner

from isotorch.cli import app
from isotorch.studies import DemoConfig, load_digits, run_demo


def test_load_digits_is_standardised_and_split():
    x_train, y_train, x_test, _ = load_digits(test_fraction=0.25)
    assert x_train.shape[1] == 64 and len(x_train) + len(x_test) == 1797
    assert abs(len(x_test) - 0.25 * 1797) < 1
    assert x_train.mean().abs() < 1e-5 and set(y_train.tolist()) == set(range(10))


def test_demo_trains_measures_and_writes_a_report(tmp_path):
    progress = []
    result = run_demo(tmp_path, DemoConfig(seeds=(0, 1), epochs=2), progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (8, 8)
    iso, elem = result.summary["isotropic"], result.summary["elementwise"]
    assert iso["test_accuracy_mean"] > 0.5 and elem["test_accuracy_mean"] > 0.5
    # the isotropic hidden layer carries O(n) as a parameter symmetry; the elementwise one does not
    assert iso["hidden_rotation_change_mean"] < 1e-5 < 1e-2 < elem["hidden_rotation_change_mean"]
    # elementwise tanh leaves a basis fingerprint in the representation; isotropic tanh much less
    assert elem["alignment_score_mean"] > 2 * iso["alignment_score_mean"]
    assert 1 <= iso["effective_rank_mean"] <= 64
    # aligning two seeds by their parameter symmetry lowers the barrier
    for summary in (iso, elem):
        assert summary["barrier_after"] < summary["barrier_before"]
    assert len(result.srm["isotropic"]["mean"]) == 100 and len(result.lmc["elementwise"]["alphas"]) == 11
    assert [r["isotropic"] for r in result.primitives] == ["IsoTanh", "ChiNorm", "IsoTanh"]
    first = result.primitives[0]
    assert first["isotropic group (measured)"] == "orthogonal"
    assert first["elementwise group (measured)"] == "signed_permutation"
    assert result.chains["isotropic"] and all("NOT" not in line for line in result.chains["isotropic"])
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and {"seed", "family", "test_accuracy", "quantisation_score"} <= set(lines[0])
    assert {"barrier_before", "barrier_after"} <= set(lines[-1])
    page = result.report.read_text()
    for figure in ("accuracy.png", "srm.png", "lmc.png"):
        assert (tmp_path / figure).stat().st_size > 10_000 and f'src="{figure}"' in page
    assert "isotropic" in page and "IsoTanh" in page
    assert result.to_dict()["config"]["epochs"] == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"seeds": ()}, "seeds"), ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"test_fraction": 1.0}, "test")],
)
def test_demo_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoConfig(**kwargs)


def test_demo_command(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--seeds", "0", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "isotropic" in result.output and (tmp_path / "report.html").exists()
    assert not (tmp_path / "lmc.png").exists(), "one seed: no pair of models to connect"
    bad = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--seeds", "a,b"])
    assert bad.exit_code != 0 and "--seeds" in bad.output
