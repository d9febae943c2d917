"""The symmetry-order study: block sizes, the trend statistic against scipy, config checks, a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from isotorch.studies._config import ConfigError, make_config
from isotorch.studies.symmetry_order import SymmetryOrder, SymmetryOrderConfig, divisors, trend


def test_sweep_runs_from_elementwise_to_isotropic():
    assert SymmetryOrderConfig().sizes == (1, 2, 4, 8, 16)
    assert SymmetryOrderConfig(bottleneck=12, block_sizes=(6, 1, 3)).sizes == (1, 3, 6)
    assert SymmetryOrderConfig(thomson=()).thomson == ()  # the Thomson sweep can be switched off
    assert divisors(6) == (1, 2, 3, 6)


def test_trend_matches_scipy_and_skips_nan():
    rng = np.random.default_rng(0)
    k = [1, 2, 4, 8, 16]
    v = rng.normal(size=5).tolist()
    t = trend(k, v)
    assert t["spearman"] == pytest.approx(stats.spearmanr(k, v).statistic)
    assert t["slope"] == pytest.approx(np.polyfit(np.log2(k), v, 1)[0])
    assert trend(k, [1.0, float("nan"), 0.5, 0.2, 0.1])["spearman"] == pytest.approx(-1.0)
    assert np.isnan(trend(k, [1.0, float("nan"), None, float("nan"), 0.1])["spearman"])
    assert np.isnan(trend([1, 2, 4], [0.3, 0.3, 0.3])["spearman"])  # constant: no rank order


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("block_sizes=1,3,16", "block_sizes must divide"),
        ("block_sizes=1,2", "at least 3"),
        ("bottleneck=3", "fewer than 3 divisors"),
        ("dataset=cifar", "dataset must be"),
        ("epochs=0", "epochs must be"),
        ("thomson=17,32", "at least 3"),
        ("thomson=16,32,64", "K > bottleneck=16"),
        ("thomson=17,17,32", "at least 3 distinct"),
    ],
)
def test_bad_config_names_the_key(item, match):
    with pytest.raises(ConfigError, match=match):
        make_config(SymmetryOrderConfig, overrides=[item])


@pytest.mark.slow
def test_tiny_run(tiny_run):
    """The study's own results on the shared tiny run (test_studies.py checks its files, verdicts and resume)."""
    run = tiny_run("symmetry_order")
    for seed in (0, 1):
        finals = run.data.finals[seed]
        for k in (1, 2, 4):
            assert finals[f"k={k}/test_mse"] > 0 and 0 <= finals[f"k={k}/saturation"] <= 1
            assert finals[f"k={k}/privilege"] == pytest.approx(
                abs(finals[f"k={k}/align"] - finals[f"k={k}/align_null"])
            )
        assert -1 <= finals["privilege/spearman"] <= 1
        for k in (5, 6, 8):  # Thomson direction sets, scored in their own directions
            assert finals[f"K={k}/test_mse"] > 0 and 0 <= finals[f"K={k}/saturation"] <= 1
            assert finals[f"K={k}/privilege"] == pytest.approx(
                abs(finals[f"K={k}/align"] - finals[f"K={k}/align_null"])
            )
        assert -1 <= finals["thomson_privilege/spearman"] <= 1
    assert [v.claim.name for v in run.verdicts] == [c.name for c in SymmetryOrder.claims]
    assert all(v.seeds == (0, 1) for v in run.verdicts)
    stored = json.loads((run.out / "verdicts.json").read_text())
    assert stored[0]["direction"] == -1 and stored[2]["claim"] == "direction-alignment-falls-with-K"
    assert "Fisher z" in stored[2]["note"] or stored[2]["verdict"] == "inconclusive"
    report = (run.out / "report.html").read_text()
    assert report.index("Verdicts") < report.index("Findings") and "order_sweep.png" in report
    assert (run.out / "order_sweep.png").stat().st_size > 5_000
