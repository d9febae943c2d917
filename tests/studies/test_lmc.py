"""The lmc study: config validation, model construction, alignment known answers, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from isotorch.params import align, barrier, sample_element, symmetries, transform
from isotorch.studies import run_study
from isotorch.studies._config import ConfigError, make_config
from isotorch.studies.lmc import LmcConfig, build_mlp, plain_copy


def test_config_validation():
    with pytest.raises(ConfigError, match="variants must be"):
        make_config(LmcConfig, overrides=["variants=elementwise,relu"])
    with pytest.raises(ConfigError, match="path_steps"):
        make_config(LmcConfig, overrides=["path_steps=2"])
    with pytest.raises(ConfigError, match="lrs must be distinct"):
        make_config(LmcConfig, overrides=["lrs=0.001,0.001"])
    with pytest.raises(ConfigError, match="n_fix_fraction"):
        make_config(LmcConfig, overrides=["n_fix_fraction=1.5"])
    with pytest.raises(ConfigError, match="kappa"):
        make_config(LmcConfig, overrides=["kappa=0"])
    with pytest.raises(ConfigError, match="data_root"):
        make_config(LmcConfig, overrides=["dataset=cifar10"])
    assert make_config(LmcConfig, overrides=["variants=syre"]).variants == ("syre",)


@pytest.mark.parametrize("variant", ["w_asym", "sigma_asym", "syre"])
def test_architecture_is_shared_and_init_is_not(variant):
    a, _ = build_mlp(variant, 6, 3, width=5, depth=2, arch_seed=0, init_seed=1, n_fix_fraction=0.3)
    b, _ = build_mlp(variant, 6, 3, width=5, depth=2, arch_seed=0, init_seed=2, n_fix_fraction=0.3)
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
    assert buffers_a and all(torch.equal(buffers_a[k], buffers_b[k]) for k in buffers_a)  # masks, F, θ₀ shared
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("variant", ["elementwise", "w_asym", "syre"])
def test_plain_copy_is_the_same_function_with_permutation_sites(variant):
    net, _ = build_mlp(variant, 6, 3, width=5, depth=2, arch_seed=0, init_seed=1, n_fix_fraction=0.3)
    x = torch.randn(7, 6)
    plain = plain_copy(net)
    assert torch.allclose(plain(x), net(x), atol=1e-6)
    assert all(site.free for site in symmetries(plain, x))  # asym/syre broke the sites; the plain copy has them back
    assert torch.allclose(net(x), plain(x), atol=1e-6)  # and the original still runs


def test_asymmetric_layers_are_scaled_to_their_input_width():
    torch.manual_seed(0)
    for fan_in in (64, 1024):
        net, _ = build_mlp("w_asym", fan_in, 10, width=256, depth=1, arch_seed=0, init_seed=1)
        layer = net[0]
        assert layer.n_fix == round(fan_in / 8)
        fixed = layer.fixed
        # the fixed entries have the scale of a default initial weight: unit-variance inputs give O(1) fixed parts
        x = torch.randn(512, fan_in)
        assert 0.2 < float((x @ fixed.T).std()) < 0.6  # ≈ √(n_fix/fan_in) = 0.35, for every width
    net, _ = build_mlp("sigma_asym", 8, 3, width=400, depth=1, arch_seed=0, init_seed=1)
    gate_input = torch.randn(256, 400) @ net[1].weight.T
    assert 0.8 < float(gate_input.std()) < 1.2  # F ~ N(0, 1/width): the gate's input is O(1), not O(√width)
    unscaled, _ = build_mlp("sigma_asym", 8, 3, width=400, depth=1, arch_seed=0, init_seed=1, figlu_scale=20.0)
    assert float((torch.randn(256, 400) @ unscaled[1].weight.T).std()) > 15  # negative control


def test_select_lr_picks_the_lowest_validation_loss(tmp_path):
    from isotorch.studies._models import select_lr
    from isotorch.studies._registry import Study, register

    @dataclasses.dataclass(frozen=True)
    class SweepConfig:
        steps: int = 30

    chosen = {}

    @register("sweep-test")
    class Sweep(Study):
        Config = SweepConfig

        def run(self, ctx):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(200, 5, generator=g)
            y = (x[:, 0] > 0).long()

            def build():
                torch.manual_seed(1)
                return nn.Linear(5, 2)

            best, scores = select_lr(ctx, "s", build, (1e-5, 1e-1, 1e6), x, y, steps=30, batch_size=50)
            chosen[ctx.seed] = (best, scores)
            return {"lr": best}

    try:
        run_study("sweep-test", tmp_path / "s", seeds=(0,), progress=False, report=False)
    finally:
        from isotorch.studies import _registry

        _registry._REGISTRY.pop("sweep-test")
    best, scores = chosen[0]
    assert best == 0.1 and scores[1e-5] > scores[0.1]  # a useful rate beats one that barely moves
    assert scores[1e6] == math.inf or scores[1e6] > scores[0.1]  # a diverging rate loses instead of stopping the run


def test_isotropic_alignment_removes_the_barrier_of_a_rotated_copy(dtype):
    net, _ = build_mlp("isotropic", 6, 3, width=8, depth=2, arch_seed=0, init_seed=1)
    net = net.to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(4.0)  # far from the trivial function, so the straight path between rotated copies costs loss
    x = torch.randn(64, 6, dtype=dtype)
    y = net(x).argmax(1)
    twin = transform(net, sample_element(symmetries(net, x), torch.Generator().manual_seed(3)))
    loss = nn.functional.cross_entropy
    before = barrier(net, twin, loss, (x, y), steps=5).barrier
    after = barrier(net, align(net, twin, x=x[:16]).model, loss, (x, y), steps=5).barrier
    assert before > 1e-3  # a random rotation of the hidden units leaves the linear path
    assert abs(after) < (1e-4 if dtype == torch.float32 else 1e-9)
    # negative control: permutations alone cannot undo a rotation
    permuted = align(net, twin, x=x[:16], group="permutation").model
    assert barrier(net, permuted, loss, (x, y), steps=5).barrier > 1e-3


@pytest.mark.slow
def test_tiny_run(tiny_run):
    """The study's own results on the shared tiny run (test_studies.py checks its files, verdicts and resume)."""
    run = tiny_run("lmc")
    variants = ("elementwise", "isotropic", "w_asym", "sigma_asym", "syre")
    for final in run.data.finals.values():
        assert 0 < final["elementwise/input_cka"] < 0.999  # each net sees its own transform of the input
        for v in variants:
            assert math.isfinite(final[f"{v}/barrier_before"])
            assert 0 <= final[f"{v}/cka_universal_1"] <= 1 + 1e-9
        assert final["sigma_asym/barrier_after"] is None  # no symmetry to align over: NaN, stored as null
        assert 0 <= final["w_asym/moved_fraction"] <= 1
        for v in ("elementwise", "isotropic"):  # matching brings B closer to A in weight space
            assert final[f"{v}/distance_after"] < final[f"{v}/distance_before"]
    assert [f.title for f in run.findings] == [
        "loss barriers before and after alignment",
        "representation alignment at the end of training",
    ]
    assert set(run.findings[0].rows) == set(variants)
    assert "barrier (linear) aligned" in run.findings[0].columns
    paths = run.data.select(seed=0, run="isotropic", event="path")
    assert {p["kind"] for p in paths} == {"before", "after"} and len(paths[0]["losses"]) == 5
    figures = json.loads((run.out / "figures.json").read_text())
    for name in ("paths.png", "barriers.png", "cka.png"):
        assert (run.out / name).stat().st_size > 5_000
        assert any(f["path"] == name for f in figures)
    assert (run.out / "report.html").read_text().count("data:image/png;base64") >= 3
    sweeps = run.data.select(event="lr_sweep")
    assert len(sweeps) == 2 * len(variants) and all(s["lr"] in (1e-3, 1e-2) for s in sweeps)
    assert "ordering" in run.findings[0].caption  # the report says whether Lim et al.'s ordering was reproduced
