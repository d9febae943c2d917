"""mean_ci against scipy's t-interval, and no phantom spread for identical values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from isotorch.studies._stats import Findings, mean_ci


def test_mean_ci_matches_scipy_t_interval():
    values = np.random.default_rng(0).normal(size=7)
    lo, hi = stats.t.interval(0.95, 6, loc=values.mean(), scale=stats.sem(values))
    e = mean_ci(values)
    assert e.mean == pytest.approx(values.mean(), abs=1e-12)
    assert e.ci95 == pytest.approx((hi - lo) / 2, rel=1e-9)


def test_identical_values_have_exactly_no_spread():
    # 0.003 three times: the float mean is not exactly 0.003's sum/3, and the naive formula gave ± 1.3e-18
    e = mean_ci([0.003, 0.003, 0.003])
    assert e.ci95 == 0.0 and e.mean == 0.003
    assert str(e) == "0.003 ± 0"
    table = Findings.from_values("t", {"row": {"lr": [0.003, 0.003, 0.003]}})
    assert "e-18" not in str(table.to_dict())
