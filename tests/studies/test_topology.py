"""The topology study: the adaptation rule, surgery exactness vs magnitude pruning, config, tiny run and resume."""

from __future__ import annotations

import json

import pytest
import torch

from isotorch.params import grow, prune
from isotorch.studies import StudyContext, StudyInterrupted, run_study
from isotorch.studies._config import ConfigError, make_config
from isotorch.studies.topology import TopologyConfig, adaptation, build_mlp, prune_by_norm
from isotorch.testing import relative_error, tolerance


def test_adaptation_rule():
    kw = {"threshold": 0.1, "scaffold": 2, "min_width": 3, "max_width": 6}
    assert adaptation([2.0, 1.0, 0.5, 0.05], **kw) == 1  # one scaffold unit: grow one
    assert adaptation([2.0, 1.0, 0.1, 0.0], **kw) == 0  # exactly two (≤ threshold counts)
    assert adaptation([2.0, 0.0, 0.0, 0.0, 0.0], **kw) == -2
    assert adaptation([2.0, 1.0, 0.5, 0.4, 0.3], **kw) == 1  # would grow 2, capped at max_width
    assert adaptation([0.0, 0.0, 0.0], **kw) == 0  # would prune 1, floored at min_width


def test_isotropic_surgery_preserves_the_function_magnitude_pruning_does_not(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=dtype)
    iso = build_mlp(5, (8,), 3, isotropic=True, generator=g).to(dtype)
    with torch.no_grad():
        iso[0].weight[-2:] = 0.0  # two unused units (singular value 0, zero bias): pruning them is exact
        iso[0].bias[-2:] = 0.0
        wide = grow(iso, "0", 2, x=x, generator=g)
        assert relative_error(wide(x), iso(x)) < tolerance(dtype)
        result = prune(iso, "0", 2, x=x)
        assert result.change <= result.bound + tolerance(dtype)
        assert result.removed == (0.0, 0.0) and relative_error(result.model(x), iso(x)) < tolerance(dtype)
        tanh = build_mlp(5, (8,), 3, isotropic=False, generator=torch.Generator().manual_seed(0)).to(dtype)
        small, norms = prune_by_norm(tanh, 0, 2)  # negative control: removes live units, changes the function
        assert small[0].out_features == 6 and norms == sorted(norms)
        assert relative_error(small(x), tanh(x)) > 1e-3


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("arms=elementwise,adaptive", "'adaptive' must precede it"),
        ("arms=bogus", "arms must be"),
        ("dataset=cifar", "dataset must be"),
        ("hidden=2", r"hidden widths \(2,\) must lie"),
        ("surgery_every=0", "surgery_every must be"),
        ("scaffold=5", "min_width must exceed scaffold"),
        ("threshold=-1", "threshold must be"),
    ],
)
def test_bad_config_names_the_key(item, match):
    with pytest.raises(ConfigError, match=match):
        make_config(TopologyConfig, overrides=[item])


@pytest.mark.slow
def test_tiny_run(tiny_run):
    """The study's own results on the shared tiny run (test_studies.py checks its files, verdicts and resume)."""
    run = tiny_run("topology")
    finals = run.data.finals[0]
    assert set(run.findings[0].rows) == {"adaptive", "fixed", "elementwise"}
    assert "max |Δlogit| at a grow" in run.findings[0].columns
    assert finals["fixed/widths"] == [6] and finals["fixed/grows"] == 0
    assert finals["adaptive/widths"] == finals["elementwise/widths"]  # the control follows the adaptive widths
    surgeries = run.data.select(event="surgery")
    assert surgeries and all(s["width_after"] - s["width_before"] == s["k"] for s in surgeries if s["action"] == "grow")
    assert max(s["max_logit_change"] for s in surgeries if s["action"] == "grow") < 1e-5  # grow is exact
    assert finals["adaptive/test_acc"] > 0.5
    report = (run.out / "report.html").read_text()
    for f in json.loads((run.out / "figures.json").read_text()):
        assert (run.out / f["path"]).stat().st_size > 5_000 and f["caption"][:40] in report
    grow_v = {v.claim.name: v for v in run.verdicts}["grow-is-exact"]
    assert grow_v.verdict == "supported"  # every grow changed the logits by far less than 1e-4
    sweeps = run.data.select(event="lr_sweep", seed=0)
    assert [s["run"] for s in sweeps] == ["adaptive", "elementwise"]  # one sweep per family; fixed reuses iso's
    assert finals["fixed/lr"] == finals["adaptive/lr"] in (3e-3, 1e-2)
    assert "RESET at every segment boundary" in run.findings[0].caption


@pytest.mark.slow
def test_pruning_is_within_its_bound_and_the_control_loses_accuracy(tmp_path):
    # threshold 100: every unit counts as scaffold, so the adaptive arm prunes live units (approximate surgery)
    run = run_study(
        "topology",
        tmp_path / "p",
        seeds=(0,),
        preset="tiny",
        overrides=["threshold=100", "hidden=8"],
        progress=False,
        report=False,
    )
    prunes = run.data.select(event="surgery", action="prune")
    adaptive = [p for p in prunes if p["arm"] == "adaptive"]
    control = [p for p in prunes if p["arm"] == "elementwise"]
    assert adaptive and len(adaptive) == len(control)
    assert all(p["change"] <= p["bound"] + 1e-5 and p["removed"] and p["width_after"] >= 3 for p in adaptive)
    assert max(p["max_logit_change"] for p in control) > 1e-3  # magnitude pruning of tanh units is not exact


@pytest.mark.slow
def test_resume_after_surgery_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    overrides = ["arms=adaptive,fixed", "steps=60", "surgery_every=20", "log_every=10"]
    ref = tmp_path / "ref"
    run_study("topology", ref, seeds=(0,), preset="tiny", overrides=overrides, progress=False, report=False)
    original = StudyContext.train

    def train(self, key, *args, **kwargs):  # Ctrl-C during the third segment, after two surgeries changed shapes
        if key == "adaptive/seg2":
            self._interrupted.set()
        return original(self, key, *args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(StudyContext, "train", train)
    with pytest.raises(StudyInterrupted, match="adaptive/seg2"):
        run_study("topology", out, seeds=(0,), preset="tiny", overrides=overrides, progress=False, report=False)
    monkeypatch.setattr(StudyContext, "train", original)
    run_study("topology", out, progress=False, resume=True, report=False)
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    assert json.loads((out / "results.json").read_text()) == json.loads((ref / "results.json").read_text())
