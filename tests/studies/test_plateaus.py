"""The plateaus study: the detector on synthetic curves, config validation, and a tiny end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest

from isotorch.studies._config import ConfigError, make_config
from isotorch.studies.plateaus import PlateausConfig, detect_plateaus


def _staircase(levels, centres, t):
    """log10 L steps from level to level, each step a logistic in log10 t centred at its centre."""
    log_loss = np.full(t.shape, np.log10(levels[-1]))
    for hi, lo, c in zip(levels, levels[1:], centres, strict=False):
        log_loss += (np.log10(hi) - np.log10(lo)) / (1 + np.exp(10 * (np.log10(t) - np.log10(c))))
    return 10**log_loss


def test_detector_finds_each_step_of_a_staircase():
    t = np.unique(np.geomspace(1, 1e6, 400).astype(int))
    loss = _staircase([1.0, 0.1, 0.01, 1e-4], [10, 300, 10_000], t)
    d = detect_plateaus(t, loss)
    steps = [j["step"] for j in d.jumps]
    assert len(steps) == 3
    for found, true in zip(steps, [10, 300, 10_000], strict=True):
        assert true / 1.5 < found < true * 1.5
    assert [p["final"] for p in d.plateaus] == [False, False, True]
    for plateau, before, after in zip(d.plateaus, steps, [*steps[1:], 1e9], strict=True):
        assert before < plateau["start"] < plateau["end"] < after  # plateaus sit between the jumps


def test_detector_negative_controls():
    t = np.unique(np.geomspace(1, 1e4, 200).astype(int))
    assert detect_plateaus(t, 1.0 / t**0.5).jumps == ()  # a power law with slope 0.5: no jump, no plateau
    assert detect_plateaus(t, 1.0 / t**0.5).plateaus == ()
    flat = detect_plateaus(t, np.ones(len(t)))
    assert flat.jumps == () and len(flat.plateaus) == 1 and flat.plateaus[0]["final"]
    with pytest.raises(ValueError, match="1-D of equal length"):
        detect_plateaus(t, np.ones(3))


def test_config_validation():
    with pytest.raises(ConfigError, match="scales must be positive"):
        make_config(PlateausConfig, overrides=["scales=0.1,-1"])
    with pytest.raises(ConfigError, match="optimiser must be"):
        make_config(PlateausConfig, overrides=["optimiser=sgd"])
    with pytest.raises(ConfigError, match="escape_pair must be two increasing scales"):
        make_config(PlateausConfig, overrides=["escape_pair=0.1,0.03"])
    with pytest.raises(ConfigError, match="generalisation_pair must be two increasing scales"):
        make_config(PlateausConfig, overrides=["scales=0.1,1", "escape_pair=0.1,1"])
    config = make_config(PlateausConfig, overrides=["scales=0.5,1", "escape_pair=0.5,1", "generalisation_pair=0.5,1"])
    assert config.scales == (0.5, 1.0)


@pytest.mark.slow
def test_tiny_run(tiny_run):
    """The study's own results on the shared tiny run (test_studies.py checks its files, verdicts and resume)."""
    run = tiny_run("plateaus")
    finals = run.data.finals
    assert set(finals) == {0, 1}
    for final in finals.values():
        assert final["scale=0.1/train_loss"] < 0.5 * run.data.select(seed=0, run="scale=0.1", step=0)[0]["train_loss"]
    table = run.findings[0]
    assert list(table.rows) == ["scale=0.1", "scale=1"]
    assert table.rows["scale=0.1"]["jumps"].n == 2
    jumps = run.data.select(event="jump")
    assert jumps and all(len(j["weight_ranks"]) == 3 for j in jumps)
    assert (run.out / "loss_curves.png").stat().st_size > 10_000
    escape = {v.claim.name: v for v in run.verdicts}["plateaus-lengthen-as-init-shrinks"]
    steps = {s: run.data.finals[s][f"scale={sc}/escape_step"] for s in (0, 1) for sc in ("0.1", "1")}
    assert all(0 < v <= 300 for v in steps.values())  # both scales escape within the tiny budget
    assert escape.n == 2 and escape.seeds == (0, 1)
