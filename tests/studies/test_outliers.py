"""The outliers study: variants, the rotation convention, function preservation, config errors, a tiny run."""

from __future__ import annotations

import html
import json

import pytest
import torch

pytest.importorskip("transformers")

from isotorch.studies._config import ConfigError, make_config
from isotorch.studies.outliers import (
    CONDITIONS,
    OutliersConfig,
    _capture,
    analyse_model,
    build_model,
)


def _small(**kw):
    base = {"vocab_size": 8, "n_layer": 1, "n_embd": 16, "n_head": 2, "seq_len": 8}
    base.update(kw)
    return OutliersConfig(**base)


def test_variants_differ_only_in_their_stream_primitives():
    config = _small()
    e, i = build_model(config, "elementwise", 0), build_model(config, "isotropic", 0)
    assert type(e.transformer.h[0].mlp.act).__name__ != "IsoTanh"
    assert type(i.transformer.h[0].mlp.act).__name__ == "IsoTanh"
    assert isinstance(i.transformer.ln_f, torch.nn.RMSNorm) and i.transformer.ln_f.weight is None
    shared = dict(i.named_parameters())
    for name, p in e.named_parameters():
        if name in shared:
            assert torch.equal(p, shared[name]), name  # same initial weights where both have the layer


def test_analysis_keeps_the_function_and_rotates_the_readers_inputs():
    """Every condition computes the original function (float64 round-off); the learned rotation Q acts as h·Q on
    the norm outputs, so the rotated model's norm outputs are the folded model's times Q."""
    from isotorch.params import fold_norms, learn_rotation, symmetries, transform
    from isotorch.params._element import Element
    from isotorch.studies._text import markov_language

    config = _small()
    model = build_model(config, "elementwise", 0)
    with torch.no_grad():  # trained-looking gains and biases, so the fold has work to do
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    lang = markov_language(8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(2)
    ev, ca = lang.sample(6, 8, generator=gen), lang.sample(4, 8, generator=gen)
    res = analyse_model(model, ev, ca, seed=0, learn_steps=3, align_samples=40, n_bootstrap=5, n_null=2)
    assert set(res["conditions"]) == set(CONDITIONS)
    for cond, values in res["conditions"].items():
        assert values["max_dlogits"] < 1e-10, cond
        assert 0 < values["act_err4"] < 1 and values["act_err8"] < values["act_err4"]
    assert res["conditions"]["original"]["max_dlogits"] == 0.0
    assert (
        res["rotations"]["hadamard"]
        and res["rotations"]["learned_calib_error"] <= res["rotations"]["learned_init_error"]
    )
    # the convention: h ↦ h·Q is the stream element Qᵀ
    m64 = model.double()
    folded = fold_norms(m64, ev[:2])
    syms = symmetries(folded, ev[:2])
    stream = next(s for s in syms if s.kind == "residual")
    norms = [n.name for n in stream.norms]
    q = learn_rotation(torch.randn(50, 16, dtype=torch.float64), steps=2, generator=gen).matrix
    rotated = transform(folded, Element(syms, {stream.name: q.T.contiguous()}))
    _, _, before = _capture(folded, ev, norms)
    _, _, after = _capture(rotated, ev, norms)
    for n in norms:
        torch.testing.assert_close(after[n], before[n] @ q, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("variants=elementwise,bogus", "variants: 'bogus'"),
        ("n_embd=10", "n_embd must be divisible"),
        ("steps=0", "steps must be"),
        ("lr=0", "lr must be"),
        ("vocab_size=300", "vocab_size must be"),
    ],
)
def test_bad_config_names_the_key(item, match):
    with pytest.raises(ConfigError, match=match):
        make_config(OutliersConfig, overrides=[item])


@pytest.mark.slow
def test_tiny_run(tiny_run):
    """The study's own results on the shared tiny run (test_studies.py checks its files, verdicts and resume)."""
    run = tiny_run("outliers")
    stream, quant = run.findings
    assert len(stream.rows) == 2 and any(r.startswith("elementwise") for r in stream.rows)
    assert "elementwise: hadamard" in quant.rows and "isotropic: learned" in quant.rows
    for seed in (0, 1):
        f = run.data.finals[seed]
        for variant in ("elementwise", "isotropic"):
            key = f"variant={variant}"
            assert f[f"{key}/eval_loss"] < 2.5  # below uniform (log 8 = 2.08) plus a margin: it ran
            for cond in CONDITIONS:
                assert f[f"{key}/{cond}/max_dlogits"] < 1e-9
    figures = json.loads((run.out / "figures.json").read_text())
    assert [f["path"] for f in figures] == ["channel_max_rms.png", "quantisation_error.png", "kurtosis.png"]
    report = (run.out / "report.html").read_text()
    for f in figures:
        assert (run.out / f["path"]).stat().st_size > 5_000
        assert html.escape(f["caption"][:40]) in report
