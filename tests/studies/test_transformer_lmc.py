"""The transformer_lmc study: a planted symmetry undone (naive not: the negative control), config errors, a tiny run."""

from __future__ import annotations

import html
import json

import pytest
import torch

pytest.importorskip("transformers")

from isotorch.studies._config import ConfigError, make_config
from isotorch.studies.transformer_lmc import METHODS, TransformerLMCConfig, pair_barriers


def _trained_pair():
    """A briefly trained 1 × 16 GPT-2 A and B = A moved by a planted element of its symmetry group: permutations of
    the stream, the MLP hidden units and the heads, and Haar-random orthogonal per-head query–key and value–output
    maps (B computes A's function; its weights are far from A's)."""
    from isotorch import groups
    from isotorch.params import Element, symmetries, transform
    from isotorch.studies._lm import gpt2, train_lm
    from isotorch.studies._text import markov_language

    lang = markov_language(8, generator=torch.Generator().manual_seed(0))
    model = gpt2(8, n_layer=1, n_embd=16, n_head=2, n_positions=16, seed=0)
    train_lm(model, lang, steps=60, batch_size=16, seq_len=16, lr=1e-2, data_seed=1)
    model = model.double().eval()
    tokens = lang.sample(16, 16, generator=torch.Generator().manual_seed(2))
    syms = symmetries(model, tokens[:2])
    gen = torch.Generator().manual_seed(3)
    planted = {}
    for site in syms.free:
        if site.kind in ("query_key", "value_output"):
            planted[site.name] = groups.get("orthogonal").sample(site.size, generator=gen, dtype=torch.float64)
        else:
            planted[site.name] = torch.randperm(site.size, generator=gen)
    assert {syms[n].kind for n in planted} == {"residual", "hidden", "heads", "query_key", "value_output"}
    twin = transform(model, Element(syms, planted))
    return model, twin, tokens


def test_planted_symmetry_is_undone_by_full_alignment_and_not_by_none():
    model, twin, tokens = _trained_pair()
    with torch.no_grad():  # the twin computes the same function
        torch.testing.assert_close(twin(input_ids=tokens).logits, model(input_ids=tokens).logits, rtol=0, atol=1e-10)
    res = pair_barriers(model, twin, tokens, alphas=5, activation_tokens=tokens)
    assert list(res) == list(METHODS)
    # negative control: interpolating the un-aligned twin leaves the function's valley
    assert res["naive"]["barrier"] > 0.05 and res["naive"]["distance"] > 1.0
    # full alignment recovers the planted element: the path is A itself
    assert abs(res["full"]["barrier"]) < 1e-9 and res["full"]["distance"] < 1e-8
    assert abs(res["full_activations"]["barrier"]) < 1e-6
    assert res["full_gl"]["distance"] < 1e-8  # invertible per-head maps fit orthogonal ones exactly
    # permutations alone cannot undo the orthogonal per-head maps
    assert res["permutation"]["distance"] > 100 * res["full"]["distance"]
    for values in res.values():
        assert len(values["losses"]) == 5
        assert values["losses"][0] == pytest.approx(res["naive"]["losses"][0], abs=1e-10)  # A at λ = 0


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("n_embd=10", "n_embd must be divisible"),
        ("alphas=4", "alphas must be an odd int"),
        ("steps=0", "steps must be"),
        ("lr=0", "lr must be"),
        ("vocab_size=300", "vocab_size must be"),
    ],
)
def test_bad_config_names_the_key(item, match):
    with pytest.raises(ConfigError, match=match):
        make_config(TransformerLMCConfig, overrides=[item])


@pytest.mark.slow
def test_tiny_run(tiny_run):
    """The study's own results on the shared tiny run (test_studies.py checks its files, verdicts and resume)."""
    run = tiny_run("transformer_lmc")
    (table,) = run.findings
    assert [r.split(" (")[0] for r in table.rows] == list(METHODS)
    for seed in (0, 1):
        f = run.data.finals[seed]
        assert f["loss_a"] < 2.2 and f["loss_b"] < 2.2  # below uniform (log 8 = 2.08) plus a margin: it ran
        assert f["full/distance"] < f["naive/distance"]
        for m in METHODS:
            assert f[f"{m}/barrier_max"] >= f[f"{m}/midpoint"] - 1e-12
    figures = json.loads((run.out / "figures.json").read_text())
    assert [f["path"] for f in figures] == ["barrier_curves.png", "barriers.png"]
    report = (run.out / "report.html").read_text()
    for f in figures:
        assert (run.out / f["path"]).stat().st_size > 5_000
        assert html.escape(f["caption"][:40]) in report
