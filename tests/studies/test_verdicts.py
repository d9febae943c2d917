"""Verdicts on claims: the decision rule, t-intervals against scipy, pairing by seed, strict JSON, the runner hook,
the report's verdict table and the terminal table at 80 columns."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats

from isotorch.studies import _registry, run_study
from isotorch.studies._registry import Study, register
from isotorch.studies._verdicts import (
    Claim,
    Verdict,
    check_verdicts,
    decide,
    format_verdicts,
    inconclusive,
    paired_verdict,
    read_verdicts,
    verdict_from_correlations,
    verdict_from_interval,
    verdict_from_values,
    write_verdicts,
)

UP = Claim("up", "the effect is positive", "a paper, Fig. 1", "a − b, paired by seed")
DOWN = Claim("down", "the effect is negative", "a paper, Fig. 2", "slope of b against k", direction=-1)


@pytest.mark.parametrize(
    ("claim", "lo", "hi", "expected"),
    [
        (UP, 0.1, 0.3, "supported"),
        (UP, -0.3, -0.1, "contradicted"),
        (UP, -0.1, 0.3, "inconclusive"),
        (UP, 0.0, 0.3, "inconclusive"),  # touching 0 does not exclude it
        (DOWN, -0.3, -0.1, "supported"),
        (DOWN, 0.1, 0.3, "contradicted"),
        (DOWN, -0.1, 0.1, "inconclusive"),
        (UP, float("nan"), 0.3, "inconclusive"),
    ],
)
def test_decision_rule(claim, lo, hi, expected):
    assert decide(claim, lo, hi) == expected


def test_threshold_needs_the_interval_beyond_it():
    claim = Claim("big", "the effect exceeds 0.5", "p", "x", threshold=0.5)
    assert decide(claim, 0.6, 0.9) == "supported"
    assert decide(claim, 0.2, 0.9) == "inconclusive"  # excludes 0 but not the threshold
    assert decide(claim, -0.9, -0.2) == "contradicted"


def test_interval_over_seeds_matches_scipy():
    rng = np.random.default_rng(0)
    values = rng.normal(0.3, 0.2, size=5)
    v = verdict_from_values(UP, dict(enumerate(values)))
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert v.estimate == pytest.approx(values.mean())
    assert v.ci95 == pytest.approx((lo, hi))
    assert v.seeds == (0, 1, 2, 3, 4) and v.n == 5 and "t-interval over 5 seeds" in v.note


def test_paired_difference_matches_scipy_ttest_rel():
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 5, size=6)  # a large seed effect that pairing removes
    a = shared + 0.5 + rng.normal(0, 0.1, size=6)
    b = shared + rng.normal(0, 0.1, size=6)
    v = paired_verdict(UP, {s + 10: x for s, x in enumerate(a)}, {s + 10: x for s, x in enumerate(b)})
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert v.ci95 == pytest.approx((ci.low, ci.high))
    assert v.verdict == "supported" and v.seeds == tuple(range(10, 16)) and "paired by seed" in v.note
    # the unpaired comparison would not see it: the seed effect swamps the difference
    unpaired = stats.ttest_ind(a, b).confidence_interval(0.95)
    assert unpaired.low < 0 < unpaired.high


def test_pairs_only_common_seeds_and_drops_nan():
    v = paired_verdict(UP, {0: 1.0, 1: 2.0, 2: float("nan"), 3: 3.0}, {0: 0.0, 1: 0.5, 2: 0.0})
    assert v.seeds == (0, 1) and v.n == 2
    assert "1 seed(s) without a pair" in v.note and "no finite value" in v.note


def test_fewer_than_two_seeds_is_inconclusive_with_the_reason():
    v = verdict_from_values(UP, {7: 0.9})
    assert v.verdict == "inconclusive" and v.estimate == 0.9 and math.isnan(v.ci95[0])
    assert "only 1 seed(s)" in v.note and v.seeds == (7,)
    assert verdict_from_values(UP, {}).verdict == "inconclusive"
    assert verdict_from_values(UP, [0.1, 0.2, 0.3], min_seeds=4).verdict == "inconclusive"


def test_negative_control_noise_around_zero_is_inconclusive():
    rng = np.random.default_rng(2)
    verdicts = [verdict_from_values(UP, rng.normal(0, 1, size=5).tolist()).verdict for _ in range(200)]
    assert 0.01 <= verdicts.count("supported") / 200 <= 0.06  # one tail of a 95% interval: about 2.5%
    assert verdicts.count("inconclusive") / 200 > 0.9


def test_strict_json_round_trip(tmp_path):
    verdicts = [
        paired_verdict(UP, [1.0, 1.2, 1.1], [0.0, 0.1, 0.3]),
        inconclusive(DOWN, "the codes never saturate at this scale; 30 epochs of MNIST would decide"),
        verdict_from_interval(DOWN, -0.4, (-0.6, -0.2), seeds=[0, 1, 2], n=3, note="bootstrap over samples"),
    ]
    path = write_verdicts(tmp_path, verdicts)
    raw = json.loads(path.read_text())  # strict: no NaN tokens
    assert "NaN" not in path.read_text() and raw[1]["ci95"] == [None, None] and raw[1]["estimate"] is None
    assert {"claim", "text", "source", "statistic", "estimate", "ci95", "seeds", "verdict"} <= set(raw[0])
    back = read_verdicts(tmp_path)
    assert [v.verdict for v in back] == ["supported", "inconclusive", "supported"]
    assert back[0] == verdicts[0] and back[2] == verdicts[2]
    assert read_verdicts(tmp_path / "nowhere") is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": ""}, "name"),
        ({"direction": 0}, "direction"),
        ({"direction": True}, "direction"),
        ({"threshold": -1.0}, "threshold"),
        ({"source": " "}, "source"),
    ],
)
def test_claim_rejects_bad_fields(kwargs, match):
    fields = {"name": "c", "text": "t", "source": "s", "statistic": "x", **kwargs}
    with pytest.raises(ValueError, match=match):
        Claim(**fields)


def test_verdict_rejects_unknown_word_and_interval_without_note():
    with pytest.raises(ValueError, match="verdict"):
        Verdict(UP, 0.1, (0.0, 0.2), (0,), 1, "maybe")
    with pytest.raises(ValueError, match="note"):
        verdict_from_interval(UP, 0.1, (0.0, 0.2), seeds=[0], n=1, note="")


def test_check_verdicts_names_what_is_wrong():
    good = verdict_from_values(DOWN, [-1.0, -1.1]), verdict_from_values(UP, [1.0, 1.1])
    assert [v.claim.name for v in check_verdicts("s", (UP, DOWN), good)] == ["up", "down"]  # claims' order
    with pytest.raises(ValueError, match=r"no verdict on declared claim\(s\) \['down'\]"):
        check_verdicts("s", (UP, DOWN), good[1:])
    with pytest.raises(ValueError, match="undeclared"):
        check_verdicts("s", (UP,), good)
    with pytest.raises(ValueError, match="more than one"):
        check_verdicts("s", (UP,), [good[1], good[1]])


def test_terminal_table_reads_at_80_columns():
    verdicts = [
        paired_verdict(UP, [1.0, 1.2, 1.1], [0.0, 0.1, 0.3]),
        inconclusive(DOWN, "too few seeds"),
    ]
    text = format_verdicts(verdicts)
    assert max(len(line) for line in text.splitlines()) <= 80
    for word in ("supported", "inconclusive", "the effect is positive", "too few seeds", "[", "3"):
        assert word in text


# ------------------------------------------------------------------------------------------ runner and report
@dataclass(frozen=True)
class CoinConfig:
    effect: float = 1.0
    skip_claim: bool = False


@pytest.fixture(autouse=True, scope="module")
def _unregister():
    yield
    for name in ("coin-test", "no-verdicts-test"):
        _registry._REGISTRY.pop(name, None)


@register("coin-test")
class Coin(Study):
    """A study whose claim holds by construction: value = effect + small noise per seed."""

    Config = CoinConfig
    claims = (UP, DOWN)

    def run(self, ctx):
        noise = float(np.random.default_rng(ctx.seed).normal(0, 0.01))
        return {"a": ctx.config.effect + noise, "b": noise}

    def verdicts(self, data):
        a = {s: f["a"] for s, f in data.finals.items()}
        b = {s: f["b"] for s, f in data.finals.items()}
        out = [paired_verdict(UP, a, b)]
        if not data.config.skip_claim:
            out.append(inconclusive(DOWN, "this toy does not measure it"))
        return out


def test_runner_writes_verdicts_and_report_shows_them_first(tmp_path):
    result = run_study("coin-test", tmp_path / "run", seeds=(0, 1, 2), progress=False)
    assert [v.verdict for v in result.verdicts] == ["supported", "inconclusive"]
    stored = json.loads((tmp_path / "run" / "verdicts.json").read_text())
    assert stored[0]["claim"] == "up" and stored[0]["seeds"] == [0, 1, 2] and stored[0]["verdict"] == "supported"
    assert stored[0]["estimate"] == pytest.approx(1.0)
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.index("<h2>Verdicts</h2>") < page.index("<h2>Findings</h2>")
    assert "the effect is positive" in page and "this toy does not measure it" in page
    # regenerating the report of a run from before verdicts existed computes them and writes the file
    (tmp_path / "run" / "verdicts.json").unlink()
    from isotorch.studies._report import write_report

    write_report(tmp_path / "run")
    assert read_verdicts(tmp_path / "run")[0].verdict == "supported"


def test_a_claim_without_a_verdict_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no verdict on declared claim"):
        run_study("coin-test", tmp_path / "run", seeds=(0, 1), overrides={"skip_claim": True}, progress=False)


def test_registering_claims_without_verdicts_is_refused():
    with pytest.raises(TypeError, match="does not implement verdicts"):

        @register("no-verdicts-test")
        class NoVerdicts(Study):
            Config = CoinConfig
            claims = (UP,)

    with pytest.raises(TypeError, match="tuple of Claim"):

        @register("no-verdicts-test")
        class BadClaims(Study):
            Config = CoinConfig
            claims = ("up",)


def test_an_inconclusive_verdict_says_how_many_seeds_would_decide():
    v = verdict_from_values(UP, [0.1, 0.5, -0.1])
    assert v.verdict == "inconclusive"
    m = int(v.note.split("about ")[1].split(" seeds")[0])
    values = [0.1, 0.5, -0.1]
    mean, sd = np.mean(values), np.std(values, ddof=1)
    assert stats.t.ppf(0.975, m - 1) * sd / np.sqrt(m) < mean <= stats.t.ppf(0.975, m - 2) * sd / np.sqrt(m - 1)
    assert "about zero" in verdict_from_values(UP, [0.1, -0.1, 0.0]).note


# ------------------------------------------------------------------------------------------ bounded statistics
def _spearman_draws(rng, rho, m, seeds, reps):
    cov = np.array([[1.0, rho], [rho, 1.0]])
    xy = rng.multivariate_normal([0.0, 0.0], cov, size=(reps, seeds, m))
    rx, ry = (xy[..., i].argsort(-1).argsort(-1).astype(float) for i in (0, 1))
    return 1 - 6 * ((rx - ry) ** 2).sum(-1) / (m * (m * m - 1))


def test_spearman_draws_match_scipy():
    rs = _spearman_draws(np.random.default_rng(3), 0.5, 12, 1, 4)
    xy = np.random.default_rng(3).multivariate_normal([0.0, 0.0], [[1, 0.5], [0.5, 1]], size=(4, 1, 12))
    for r, pair in zip(rs[:, 0], xy[:, 0], strict=True):
        assert r == pytest.approx(stats.spearmanr(pair[:, 0], pair[:, 1]).statistic, abs=1e-12)


@pytest.mark.parametrize(("m", "rho"), [(5, 0.0), (5, 0.6), (5, 0.9), (10, 0.0), (10, 0.9)])
def test_fisher_z_interval_covers_and_stays_in_bounds(m, rho):
    """Coverage of nominal-95% Fisher-z intervals over 3 seeds of per-seed Spearman correlations (bivariate normal
    pairs, m points each) of the statistic's population mean E[r_s] = 6/(π(m+1))·(asin ρ + (m−2)·asin(ρ/2))
    (Kendall & Stuart): ≥ 90%, and no end outside [−1, 1] (the plain t-interval leaves it often near |ρ| = 1)."""
    rng = np.random.default_rng(12 + m)
    draws = _spearman_draws(rng, rho, m, 3, 300)
    target = 6 / (math.pi * (m + 1)) * (math.asin(rho) + (m - 2) * math.asin(rho / 2))
    covered = plain_out = 0
    for r in draws:
        v = verdict_from_correlations(UP, list(r), points=m)
        lo, hi = v.ci95
        assert -1 < lo <= v.estimate <= hi < 1
        covered += lo <= target <= hi
        mean, half = r.mean(), stats.t.ppf(0.975, 2) * r.std(ddof=1) / math.sqrt(3)  # the plain t-interval
        plain_out += mean + half > 1 or mean - half < -1
    assert covered / len(draws) >= 0.90
    if rho >= 0.9:
        assert plain_out > 0.3 * len(draws)  # the failure the transform fixes


def test_fisher_z_handles_perfect_correlations_and_bad_input():
    down = verdict_from_correlations(DOWN, {0: -1.0, 1: -1.0, 2: -0.9}, points=5)
    assert down.verdict == "supported" and -1 < down.ci95[0] < down.ci95[1] < 0
    assert "tenth of a Spearman step" in down.note and down.values == (-1.0, -1.0, -0.9)
    noise = verdict_from_correlations(UP, {0: 0.5, 1: -0.5, 2: 0.1}, points=5)
    assert noise.verdict == "inconclusive"
    assert verdict_from_correlations(UP, {0: 0.3, 1: math.nan}, points=5).verdict == "inconclusive"
    with pytest.raises(ValueError, match="values must be correlations"):
        verdict_from_correlations(UP, {0: 1.5, 1: 0.2}, points=5)
    with pytest.raises(ValueError, match="points must be an int >= 3"):
        verdict_from_correlations(UP, {0: 0.5, 1: 0.2}, points=2)


def test_terminal_table_escapes_markup_in_claims():
    claim = Claim("b", "the [bold]bracketed[/bold] claim [x] holds", "paper", "stat [red]a[/red] − b", direction=1)
    text = format_verdicts([paired_verdict(claim, [1.0, 1.2, 1.1], [0.0, 0.1, 0.3])], width=120)
    assert "[bold]bracketed[/bold] claim [x] holds" in text
    assert "stat [red]a[/red] − b" in text
