"""The collapse study: config validation, helpers, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from isotorch.params import syre
from isotorch.studies._config import ConfigError, make_config
from isotorch.studies._models import layer_features, unparametrised
from isotorch.studies.collapse import CollapseConfig, build_classifier


def test_config_validation():
    with pytest.raises(ConfigError, match="variants must be"):
        make_config(CollapseConfig, overrides=["variants=elementwise,relu"])
    with pytest.raises(ConfigError, match="model='cnn' needs an image dataset"):
        make_config(CollapseConfig, overrides=["model=cnn"])
    with pytest.raises(ConfigError, match="data_root"):
        make_config(CollapseConfig, overrides=["dataset=mnist"])
    with pytest.raises(ConfigError, match="epochs must be"):
        make_config(CollapseConfig, overrides=["epochs=0"])
    with pytest.raises(ConfigError, match="weight_decay"):
        make_config(CollapseConfig, overrides=["weight_decay=-1"])
    assert make_config(CollapseConfig, overrides=["variants=isotropic"]).variants == ("isotropic",)


def test_unparametrised_keeps_the_function_and_the_original():
    net = syre(
        nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)), 0.5, generator=torch.Generator().manual_seed(1)
    )
    x = torch.randn(9, 5)
    before = net(x)
    plain = unparametrised(net)
    assert torch.allclose(plain(x), before, atol=1e-6)
    assert not any("parametrizations" in k for k in plain.state_dict())
    assert torch.equal(net(x), before)  # the original still works (remove_parametrizations would break it)
    assert len(list(net.parameters())) == 4 and isinstance(net[0].weight, torch.Tensor)


def test_classifier_shapes_and_features():
    net, names = build_classifier((1, 8, 8), 4, model="cnn", width=6, depth=3)
    x = torch.randn(5, 1, 8, 8)
    assert net(x).shape == (5, 4)
    feats = layer_features(net, x, names)
    assert [tuple(feats[n].shape) for n in names] == [(5, 3), (5, 6), (5, 6)]  # conv features pooled over space


@pytest.mark.slow
def test_tiny_run(tiny_run):
    """The study's own results on the shared tiny run (test_studies.py checks its files, verdicts and resume)."""
    run = tiny_run("collapse")
    finals = run.data.finals
    for final in finals.values():
        for variant in ("elementwise", "elementwise+syre"):
            assert {f"{variant}/nc1_0", f"{variant}/nc1_1", f"{variant}/nc4", f"{variant}/rank_1"} <= set(final)
            assert 0 <= final[f"{variant}/nc4"] <= 1
    for seed in (0, 1):
        rows = {
            v: [r for r in run.data.select(seed=seed, run=v) if "nc1_1" in r]
            for v in ("elementwise", "elementwise+syre")
        }
        # syre does not change the initial function: identical NC1 at epoch 0 for both variants
        assert math.isclose(rows["elementwise"][0]["nc1_1"], rows["elementwise+syre"][0]["nc1_1"], rel_tol=1e-4)
        for variant_rows in rows.values():  # training collapses the last hidden layer's within-class variability
            assert variant_rows[-1]["nc1_1"] < 0.8 * variant_rows[0]["nc1_1"]
    titles = [f.title for f in run.findings]
    assert titles == ["neural collapse at the end of training", "training and rank through depth"]
    assert set(run.findings[0].rows) == {"elementwise", "elementwise+syre"}
    assert "NC1 layer 1" in run.findings[0].columns
    figures = json.loads((run.out / "figures.json").read_text())
    for name in ("nc1.png", "nc2_nc4.png", "rank_depth.png"):
        assert (run.out / name).stat().st_size > 5_000
        assert any(f["path"] == name for f in figures)
    html = (run.out / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 3
    verdicts = {v.claim.name: v for v in run.verdicts}
    nc1 = {s: [finals[s][f"{v}/nc1_1"] for v in ("elementwise+syre", "elementwise")] for s in (0, 1)}
    expected = sum(math.log10(a) - math.log10(b) for a, b in nc1.values()) / 2
    assert math.isclose(verdicts["syre-prevents-collapse"].estimate, expected, rel_tol=1e-9)
