"""The capacity study: matched model pairs, the isotropic site's exact rotation symmetry, the capacity measures on
known answers, config validation, and a tiny end-to-end run with its report."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from isotorch import groups
from isotorch.studies._config import ConfigError, make_config
from isotorch.studies.capacity import CapacityConfig, build_mlp, capacity_measures, gradient_norms


def _rotate_hidden(model, q):
    """Act on the first hidden layer with q: W₀ → qW₀, b₀ → qb₀, W₁ → W₁qᵀ (a parameter-space transform)."""
    out = copy.deepcopy(model)
    lins = [m for m in out if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        lins[0].weight.copy_(q @ lins[0].weight)
        lins[0].bias.copy_(q @ lins[0].bias)
        lins[1].weight.copy_(lins[1].weight @ q.T)
    return out


@pytest.mark.parametrize("variant", ["iso", "iso_chi"])
def test_isotropic_site_has_exact_rotation_symmetry(variant, dtype, generator):
    torch.manual_seed(0)
    iso = build_mlp(6, 5, 2, 3, variant).to(dtype).eval()
    x = torch.randn(32, 6, dtype=dtype, generator=generator)
    q = groups.get("orthogonal").sample(5, generator=generator, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert torch.allclose(_rotate_hidden(iso, q)(x), iso(x), atol=tol, rtol=0)
    # negative control: the elementwise twin (same weights) is not O(n)-symmetric
    torch.manual_seed(0)
    elem = build_mlp(6, 5, 2, 3, "tanh_ln" if variant == "iso_chi" else "tanh").to(dtype).eval()
    assert (_rotate_hidden(elem, q)(x) - elem(x)).abs().max() > 1e-3


def test_pairs_are_matched_and_structured():
    torch.manual_seed(3)
    elem = build_mlp(8, 4, 3, 2, "tanh_ln")
    torch.manual_seed(3)
    iso = build_mlp(8, 4, 3, 2, "iso_chi")
    assert [type(m).__name__ for m in elem] == ["Linear", "LayerNorm", "Tanh"] * 3 + ["Linear"]
    assert [type(m).__name__ for m in iso] == ["Linear", "ChiNorm", "IsoTanh"] * 3 + ["Linear"]
    for a, b in zip(elem.parameters(), iso.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="variant must be one of"):
        build_mlp(8, 4, 1, 2, "relu")


def test_capacity_measures_known_answers():
    torch.manual_seed(0)
    m = build_mlp(6, 8, 2, 3, "tanh")
    lins = [x for x in m if isinstance(x, torch.nn.Linear)]
    with torch.no_grad():
        # hidden layer 0: units 0..3 duplicated into 4..7 → 4 distinct neurons (its outgoing W₁ then has rank ≤ 4)
        lins[0].weight[4:] = lins[0].weight[:4]
        lins[0].bias[4:] = lins[0].bias[:4]
        lins[1].weight[:, 4:] = lins[1].weight[:, :4]
    r = capacity_measures(m, rank_tol=0.01, neuron_tol=0.05)
    assert r["weight_rank"] == 4  # the one hidden→hidden matrix W₁ (8×8) has 4 distinct columns
    assert r["effective_rank"] <= 4 + 1e-9
    # layer 0: 4 clusters; layer 1 (generic W₁ rows, W₂ columns): 8
    assert r["n_distinct"] == pytest.approx((4 + 8) / 2)
    # Θ₀ = [W₀|b₀|W₁ᵀ] has 4 distinct rows → rank 4; Θ₁ (8 × (8 + 1 + 3)) is generic: rank 8
    assert r["theta_rank"] == pytest.approx((4 + 8) / 2)
    one = capacity_measures(build_mlp(6, 8, 1, 3, "tanh"))
    assert math.isnan(one["weight_rank"]) and one["n_distinct"] == 8


def test_gradient_norms_leave_the_model_untouched():
    torch.manual_seed(0)
    m = build_mlp(6, 8, 3, 3, "iso_chi")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    g = gradient_norms(m, torch.randn(16, 6), torch.randint(0, 3, (16,)))
    assert len(g) == 4 and all(v > 0 and math.isfinite(v) for v in g)
    assert all(p.grad is None for p in m.parameters())
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k  # ChiNorm's running estimate did not move


def test_config_validation():
    for override, message in [
        ("widths=16,-1", "widths must be"),
        ("depths=2,2", "depths must be"),
        ("variants=tanh,relu", "variants must be"),
        ("dataset=imagenet", "dataset must be"),
        ("dataset=mnist", "data_root must"),
        ("rank_tol=1.5", "rank_tol must be"),
        ("weight_decay=-1", "weight_decay must be"),
        ("epochs=0", "epochs must be"),
        ("lrs=0.01,-1", "lrs must be"),
    ]:
        with pytest.raises(ConfigError, match=message):
            make_config(CapacityConfig, overrides=[override])
    assert make_config(CapacityConfig, overrides=["widths=8"]).widths == (8,)


@pytest.mark.slow
def test_tiny_run(tiny_run):
    """The study's own results on the shared tiny run (test_studies.py checks its files, verdicts and resume)."""
    run = tiny_run("capacity")
    config = run.data.config
    finals = run.data.finals
    assert set(finals) == {0, 1}
    titles = [f.title for f in run.findings]
    assert len(titles) == 4
    acc, chosen, grads, capacity = run.findings
    assert all(e.mean in (3e-3, 1e-2) for row in chosen.rows.values() for e in row.values() if e.n == 1)
    assert set(acc.rows) == {
        f"{lab}, w={w}" for lab in ("tanh", "tanh + LayerNorm", "iso-tanh", "iso-tanh + ChiNorm") for w in config.widths
    }
    assert acc.columns == tuple(f"depth {d}" for d in config.depths)
    assert "distinct units" in capacity.columns and "weight rank (τ=0.01)" in capacity.columns
    assert all(e.n == 2 for row in grads.rows.values() for e in row.values())
    # sanity: a depth-1 tanh net beats chance (0.1) after two epochs on digits
    assert acc.rows["tanh, w=16"]["depth 1"].mean > 0.3
    # the rank / distinct counts never exceed the width
    for w in config.widths:
        for key in ("tanh", "iso"):
            f = finals[0][f"{key} w={w} d={max(config.depths)}/distinct_units"]
            assert 1 <= f <= w
    out = run.out
    for name in ("accuracy_vs_depth.png", "gradient_norms.png", "capacity_vs_width.png"):
        assert (out / name).stat().st_size > 10_000
    assert {f["path"] for f in json.loads((out / "figures.json").read_text())} >= {"gradient_norms.png"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png") >= 3
    drop = {
        s: [finals[s][f"{v} w=16 d=2/test_acc"] - finals[s][f"{v} w=16 d=1/test_acc"] for v in ("iso", "tanh")]
        for s in (0, 1)
    }
    first = {v.claim.name: v for v in run.verdicts}["isotropic-degrades-slower-with-depth"]
    assert math.isclose(first.estimate, sum(a - b for a, b in drop.values()) / 2, rel_tol=1e-9, abs_tol=1e-12)
    assert len(run.data.select(event="lr_sweep")) == 2 * 4 * 2 * 2  # seeds × variants × widths × depths
