import json

import pytest
from typer.testing import CliRunner

from isotorch.cli import app
from isotorch.studies.demo import DemoConfig, load_digits, run_demo


def test_load_digits_is_standardised_and_split():
    x_train, y_train, x_test, y_test = load_digits(test_fraction=0.25)
    assert x_train.shape[1] == 64 and len(x_train) + len(x_test) == 1797
    assert abs(len(x_test) - 0.25 * 1797) < 1
    assert x_train.mean().abs() < 1e-5 and set(y_train.tolist()) == set(range(10))


def test_demo_trains_measures_and_writes_a_report(tmp_path):
    progress = []
    result = run_demo(tmp_path, DemoConfig(seeds=(0, 1), epochs=2), progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (8, 8)
    iso, elem = result.summary["isotropic"], result.summary["elementwise"]
    assert iso["accuracy_mean"] > 0.5 and elem["accuracy_mean"] > 0.5
    # the isotropic hidden layer carries O(n) as a parameter symmetry; the elementwise one does not
    assert iso["rotation_mean"] < 1e-5 < 1e-2 < elem["rotation_mean"]
    assert [r["isotropic"] for r in result.primitives] == ["IsoTanh", "ChiNorm", "IsoTanh"]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {"seed", "family", "test_accuracy"} <= set(lines[0])
    page = result.report.read_text()
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000 and 'src="accuracy.png"' in page
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
    bad = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--seeds", "a,b"])
    assert bad.exit_code != 0 and "--seeds" in bad.output
