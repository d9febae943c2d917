import importlib.util
import math

import numpy as np
import pytest
import torch

from isotorch.studies._text import MarkovLanguage, markov_language


def _lang(v=6, sharpness=2.0, seed=0) -> MarkovLanguage:
    return markov_language(v, sharpness=sharpness, generator=torch.Generator().manual_seed(seed))


def test_transition_rows_are_distributions():
    lang = _lang()
    assert lang.transition.shape == (6, 6, 6)
    assert (lang.transition > 0).all()
    torch.testing.assert_close(lang.transition.sum(-1), torch.ones(6, 6, dtype=torch.float64), rtol=0, atol=1e-14)


def test_stationary_matches_numpy_eigenvector_of_the_pair_chain():
    """Reference: the left eigenvector for eigenvalue 1 of the explicit V²×V² pair-chain matrix (numpy)."""
    lang = _lang(5)
    v = 5
    p = lang.transition.numpy()
    m = np.zeros((v * v, v * v))
    for a in range(v):
        for b in range(v):
            for c in range(v):
                m[a * v + b, b * v + c] = p[a, b, c]
    w, vecs = np.linalg.eig(m.T)
    k = int(np.argmin(np.abs(w - 1.0)))
    pi = np.real(vecs[:, k])
    pi = pi / pi.sum()
    np.testing.assert_allclose(lang.stationary.numpy().ravel(), pi, rtol=0, atol=1e-12)
    h = -sum(pi[a * v + b] * p[a, b, c] * math.log(p[a, b, c]) for a in range(v) for b in range(v) for c in range(v))
    assert lang.entropy_rate == pytest.approx(h, rel=1e-12)


def test_entropies_are_ordered():
    lang = _lang(16, sharpness=3.0)
    assert 0 < lang.entropy_rate <= lang.first_entropy <= math.log(16)
    assert lang.loss_lower_bound(2) == pytest.approx(lang.first_entropy)
    assert lang.entropy_rate < lang.loss_lower_bound(64) < lang.first_entropy
    sharper = _lang(16, sharpness=6.0)
    assert sharper.entropy_rate < lang.entropy_rate


def test_sampling_is_deterministic_given_a_generator():
    lang = _lang()
    a = lang.sample(4, 20, generator=torch.Generator().manual_seed(3))
    b = lang.sample(4, 20, generator=torch.Generator().manual_seed(3))
    c = lang.sample(4, 20, generator=torch.Generator().manual_seed(4))
    assert a.dtype == torch.long and a.shape == (4, 20)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 6
    batches = list(lang.batches(3, 2, 5, generator=torch.Generator().manual_seed(0)))
    assert len(batches) == 3 and all(x.shape == (2, 5) for x in batches)


def test_samples_follow_the_chain():
    """Empirical pair frequencies → π, the source's mean log loss → the exact bound (Monte Carlo, ±5 SE)."""
    lang = _lang(4, sharpness=1.5)
    x = lang.sample(4000, 32, generator=torch.Generator().manual_seed(0))
    pairs = torch.bincount((x[:, 5] * 4 + x[:, 6]), minlength=16).double() / x.shape[0]
    assert (pairs - lang.stationary.flatten()).abs().max() < 0.03
    # transition frequencies out of the most frequent context
    a, b = divmod(int(lang.stationary.flatten().argmax()), 4)
    ctx = (x[:, :-2] == a) & (x[:, 1:-1] == b)
    counts = torch.bincount(x[:, 2:][ctx], minlength=4).double()
    assert (counts / counts.sum() - lang.transition[a, b]).abs().max() < 0.02
    losses = lang.log_loss(x)
    assert losses.shape == (4000, 31)
    per_seq = losses.mean(1)
    se = float(per_seq.std() / math.sqrt(per_seq.numel()))
    assert abs(float(per_seq.mean()) - lang.loss_lower_bound(32)) < 5 * se


def test_no_predictor_beats_the_bound():
    """A unigram and a bigram predictor fitted on the same data sit above the bound (they see less context)."""
    lang = _lang(6, sharpness=3.0)
    x = lang.sample(2000, 16, generator=torch.Generator().manual_seed(1))
    bigram = torch.ones(6, 6, dtype=torch.float64)
    bigram.index_put_(
        (x[:, :-1].flatten(), x[:, 1:].flatten()), torch.ones(x[:, 1:].numel(), dtype=torch.float64), accumulate=True
    )
    bigram = bigram / bigram.sum(1, keepdim=True)
    bigram_loss = float(-torch.log(bigram[x[:, :-1], x[:, 1:]]).mean())
    assert bigram_loss > lang.loss_lower_bound(16) + 0.05
    assert float(lang.log_loss(x).mean()) < bigram_loss


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 1}, "vocab_size"),
        ({"vocab_size": 1000}, "vocab_size"),
        ({"vocab_size": 4.0}, "vocab_size"),
        ({"vocab_size": 4, "sharpness": 0.0}, "sharpness"),
        ({"vocab_size": 4, "sharpness": float("inf")}, "sharpness"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        markov_language(**kwargs)


def test_bad_sampling_arguments():
    lang = _lang()
    with pytest.raises(ValueError, match="seq_len"):
        lang.sample(2, 1)
    with pytest.raises(ValueError, match="batch_size"):
        lang.sample(0, 4)
    with pytest.raises(ValueError, match="tokens must lie"):
        lang.log_loss(torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="tokens"):
        lang.log_loss(torch.zeros(2, 3))


def test_to_dict_is_strict_json():
    import json

    d = _lang().to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert "entropy_rate" in repr(_lang())


# ---------------------------------------------------------------------------------------------------------------
# Small GPT-2-style models on the language (isotorch.studies._lm)
# ---------------------------------------------------------------------------------------------------------------

needs_hf = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="the GPT-2 builder needs transformers (the hf extra)"
)


def _tiny(**kwargs):
    from isotorch.studies._lm import gpt2

    kwargs = {"n_layer": 2, "n_embd": 16, "n_head": 2, "n_positions": 16, **kwargs}
    return gpt2(8, **kwargs)


@needs_hf
def test_gpt2_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = _tiny(seed=1), _tiny(seed=1), _tiny(seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.transformer.wte.weight, b.transformer.wte.weight)
    assert not torch.equal(a.transformer.wte.weight, c.transformer.wte.weight)
    import transformers

    assert isinstance(a, transformers.GPT2LMHeadModel)
    assert a.lm_head.weight is a.transformer.wte.weight
    assert _tiny(tie_word_embeddings=False).lm_head.weight is not _tiny().transformer.wte.weight
    assert _tiny(dtype=torch.float64).transformer.wte.weight.dtype == torch.float64


@needs_hf
def test_isotropic_family_swaps_only_the_mlp_activation():
    """The MLP computes c_proj(iso_tanh(c_fc(x))) (isotorch.functional), every weight as in the GELU model."""
    from isotorch.functional import iso_tanh

    gelu, iso = _tiny(dtype=torch.float64), _tiny(family="isotropic", dtype=torch.float64)
    assert type(gelu.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"
    for (n1, p1), (n2, p2) in zip(gelu.named_parameters(), iso.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    mlp = iso.transformer.h[1].mlp
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    w1, b1, w2, b2 = mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias
    expected = iso_tanh(x @ w1 + b1, dim=-1) @ w2 + b2  # Conv1D: y = x·W + b
    torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)


@needs_hf
def test_lm_loss_matches_a_numpy_transcription():
    from isotorch.studies._lm import evaluate_lm, lm_loss

    model = _tiny(dtype=torch.float64)
    tokens = torch.randint(0, 8, (3, 7), generator=torch.Generator().manual_seed(0))
    logits = model(input_ids=tokens).logits.detach().numpy()
    t = tokens.numpy()
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref = -np.mean([logp[b, i - 1, t[b, i]] for b in range(3) for i in range(1, 7)])
    assert float(lm_loss(model, tokens).detach()) == pytest.approx(ref, rel=1e-6)
    per_seq = evaluate_lm(model, tokens, batch_size=2)
    assert per_seq.shape == (3,) and float(per_seq.mean()) == pytest.approx(ref, rel=1e-12)


@needs_hf
def test_trained_model_learns_but_never_beats_the_source_entropy():
    from isotorch.studies._lm import evaluate_lm, train_lm

    lang = markov_language(8, sharpness=3.0, generator=torch.Generator().manual_seed(0))
    model = _tiny()
    result = train_lm(model, lang, steps=60, batch_size=32, seq_len=16, lr=1e-2, data_seed=1)
    assert result.steps == 60 and len(result.losses) == 60
    held_out = lang.sample(1000, 16, generator=torch.Generator().manual_seed(2))
    losses = evaluate_lm(model, held_out)
    mean, se = float(losses.mean()), float(losses.std() / math.sqrt(losses.numel()))
    assert mean < math.log(8) - 0.3  # it learned (uniform guessing costs log V)
    assert mean > lang.loss_lower_bound(16) - 3 * se  # and no model beats the source
    assert float(lang.log_loss(held_out).mean()) < mean
    import json

    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["steps"] == 60


@needs_hf
def test_lm_step_is_one_adamw_update_on_the_batch_of_data_seed_and_t():
    """LMStep(t) is the hand-written update on batch t of its data seed, bit for bit; another seed, other batches."""
    from isotorch.studies._lm import LMStep, lm_loss

    lang = _lang()
    model, twin = _tiny(), _tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    step = LMStep(model, opt, lang, batch_size=4, seq_len=8, data_seed=3)
    for t in (0, 1, 5):
        loss = step(t)
        tokens = lang.sample(4, 8, generator=torch.Generator().manual_seed(1_000_003 * 4 + t))
        twin.train()
        expected = lm_loss(twin, tokens)
        twin_opt.zero_grad()
        expected.backward()
        twin_opt.step()
        assert torch.equal(loss, expected.detach())
    assert model.training
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(step.batch(5), step.batch(5))
    assert not torch.equal(LMStep(model, opt, lang, batch_size=4, seq_len=8, data_seed=4).batch(5), step.batch(5))


@needs_hf
def test_lm_bad_arguments():
    from isotorch.studies._lm import gpt2, lm_loss, train_lm

    with pytest.raises(ValueError, match="n_embd must be divisible"):
        gpt2(8, n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="vocab_size"):
        gpt2(0)
    with pytest.raises(KeyError, match="unknown family"):
        gpt2(8, n_embd=8, n_head=2, family="nope")
    with pytest.raises(ValueError, match="tokens"):
        lm_loss(_tiny(), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="lr"):
        train_lm(_tiny(), _lang(), steps=1, lr=0.0)
