"""fold_norms (REFERENCE §8.2): function-preserving on GPT-2, Llama, ViT and hand-written pre-norm blocks; afterwards
the residual stream's group is O(d) and Hadamard/Haar rotations keep the outputs (the reference is each model's own
forward pass, HF's for the HF families); negative controls and bad input."""

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isotorch import groups
from isotorch.params import Element, SymmetryError, fold_norms, hadamard, symmetries, transform
from isotorch.params._transform import function_error

TOL = 1e-9


def _perturb_norms(model, seed=0):
    """Random gains and biases, so the fold has something to do (fresh HF norms are γ = 1, β = 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and any(k in name.lower() for k in ("ln", "norm")):
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
                if name.endswith("bias"):
                    p.sub_(1.0)
    return model


def _haar(n, seed=0):
    return groups.get("orthogonal").sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rotate(model, x, site, q, tol=TOL):
    return transform(model, Element(symmetries(model, x), {site: q}), tol=tol)


class PreNorm(nn.Module):
    """Pre-norm MLP blocks on a residual stream: h ← h + down(gelu(up(norm(h)))), then head(norm_f(h))."""

    def __init__(self, norm=nn.LayerNorm, d=8, final_norm=True, functional=False):
        super().__init__()
        self.emb = nn.Linear(5, d)
        self.norm1, self.up, self.down = norm(d), nn.Linear(d, 16), nn.Linear(16, d)
        self.norm2, self.up2, self.down2 = norm(d), nn.Linear(d, 16, bias=False), nn.Linear(16, d)
        self.norm_f = norm(d) if final_norm else None
        self.head = nn.Linear(d, 3)
        self.functional = functional

    def forward(self, x):
        h = self.emb(x)
        z = F.layer_norm(h, h.shape[-1:], self.norm1.weight, self.norm1.bias) if self.functional else self.norm1(h)
        h = h + self.down(F.gelu(self.up(z)))
        h = h + self.down2(torch.tanh(self.up2(self.norm2(h))))
        return self.head(self.norm_f(h) if self.norm_f is not None else h)


class MaxNorm(nn.Module):
    """A normaliser fold_norms does not know: x / max|x| · w."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x / x.abs().amax(-1, keepdim=True) * self.weight


def _prenorm(**kw):
    torch.manual_seed(0)
    return _perturb_norms(PreNorm(**kw).double())


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.RMSNorm])
def test_prenorm_fold_then_rotate(norm):
    model = _prenorm(norm=norm)
    x = torch.randn(6, 5, dtype=torch.float64)
    fresh = torch.randn(9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert symmetries(model, x)["emb"].group == "permutation"
    folded, report = fold_norms(model, x, return_report=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input model is untouched
    assert function_error(model, folded, (fresh,))[0] <= TOL
    assert report.groups == {"emb": "orthogonal"} and report.streams == ("emb",)
    assert report.mean_free == (("emb",) if norm is nn.LayerNorm else ())
    assert {old for _, old, _ in report.norms} == {norm.__name__}
    assert all(isinstance(folded.get_submodule(n), nn.RMSNorm) for n in ("norm1", "norm2", "norm_f"))
    assert folded.norm1.weight is None  # gain-free
    if norm is nn.LayerNorm:
        assert "up2.bias" in report.new_biases  # β of n2 needed a bias in a bias-free reader
        assert float(folded.emb.weight.detach().sum(0).abs().max()) < 1e-12  # writers centred: the stream is mean-free
    syms = symmetries(folded, x)
    assert syms["emb"].group == "orthogonal"
    for q in (_haar(8), hadamard(8)):
        rotated = _rotate(folded, x, "emb", q)
        assert function_error(model, rotated, (fresh,))[0] <= TOL
    json.dumps(report.to_dict(), allow_nan=False)


def test_rotation_needs_the_fold():
    """Negative controls: a rotation on the unfolded stream is refused, and breaks the function if forced."""
    model = _prenorm()
    x = torch.randn(6, 5, dtype=torch.float64)
    syms = symmetries(model, x)
    with pytest.raises(SymmetryError, match="'emb'"):
        transform(model, Element(syms, {"emb": _haar(8)}))
    with pytest.raises(SymmetryError, match="changed the model's function"):
        transform(model, Element(syms, {"emb": _haar(8)}), check_group=False)


def test_fold_in_float32():
    model = _prenorm().float()
    x = torch.randn(6, 5)
    folded = fold_norms(model, x)
    fresh = torch.randn(9, 5)
    assert function_error(model, folded, (fresh,))[0] <= 1e-5
    rotated = _rotate(folded, x, "emb", hadamard(8, dtype=torch.float32), tol=1e-4)
    assert function_error(model, rotated, (fresh,))[0] <= 1e-4


def test_raw_reader_keeps_the_mean_and_a_smaller_group():
    """A head reading the stream without a norm sees its mean: the LayerNorm stream cannot be centred."""
    model = _prenorm(final_norm=False)
    x = torch.randn(6, 5, dtype=torch.float64)
    folded, report = fold_norms(model, x, return_report=True)
    assert report.mean_free == () and report.groups == {"emb": "mean_orthogonal"}
    assert "head" in report.notes[0]
    assert function_error(model, folded, (torch.randn(4, 5, dtype=torch.float64),))[0] <= TOL
    assert isinstance(folded.norm1, nn.LayerNorm) and folded.norm1.weight is None


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face families (tiny configs, random weights)
# ---------------------------------------------------------------------------------------------------------------

needs_hf = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="the HF families need transformers (the hf extra)"
)


def _gpt2(dtype=torch.float64):
    from isotorch.studies._lm import gpt2

    return _perturb_norms(gpt2(40, n_layer=2, n_embd=12, n_head=3, n_positions=16, dtype=dtype))


def _llama(tie=False):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50,
        max_position_embeddings=32,
        tie_word_embeddings=tie,
    )
    return _perturb_norms(transformers.LlamaForCausalLM(cfg).double().eval())


def _tokens(vocab, shape, seed):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@needs_hf
def test_gpt2_fold_untie_and_rotate():
    model = _gpt2()
    x, fresh = _tokens(40, (2, 6), 0), _tokens(40, (3, 9), 1)
    folded, report = fold_norms(model, return_report=True)  # the example input comes from the config
    assert report.untied == (("lm_head.weight", "transformer.wte.weight"),)
    assert folded.lm_head.weight is not folded.transformer.wte.weight
    assert model.lm_head.weight is model.transformer.wte.weight  # the original stays tied
    assert folded.config.tie_word_embeddings is False
    assert report.new_biases == ("lm_head.bias",)  # ln_f's β goes into the bias-free head
    assert report.mean_free == ("transformer.wte",) and len(report.norms) == 5
    assert function_error(model, folded, (fresh,))[0] <= TOL
    stream = symmetries(folded, x)["transformer.wte"]
    assert stream.group == "orthogonal"
    for q in (hadamard(12), _haar(12, seed=3)):  # 12 = Paley order
        rotated = _rotate(folded, x, stream.name, q)
        torch.testing.assert_close(rotated(fresh).logits, model(fresh).logits, rtol=0, atol=1e-10)


@needs_hf
def test_gpt2_with_unit_gains_stays_tied():
    """γ = 1 (a fresh model): nothing to fold into the head, so the tie survives, and the rotation acts on it once."""
    from isotorch.studies._lm import gpt2

    model = gpt2(40, n_layer=1, n_embd=12, n_head=3, n_positions=16, dtype=torch.float64)
    x, fresh = _tokens(40, (2, 6), 0), _tokens(40, (3, 9), 1)
    folded, report = fold_norms(model, x, return_report=True)
    assert report.untied == () and folded.lm_head.weight is folded.transformer.wte.weight
    assert function_error(model, folded, (fresh,))[0] <= TOL
    rotated = _rotate(folded, x, "transformer.wte", hadamard(12))
    assert rotated.lm_head.weight is rotated.transformer.wte.weight
    assert function_error(model, rotated, (fresh,))[0] <= TOL


@needs_hf
def test_gpt2_float32():
    model = _gpt2(torch.float32)
    folded = fold_norms(model)
    fresh = _tokens(40, (3, 9), 1)
    assert function_error(model, folded, (fresh,))[0] <= 1e-5


@needs_hf
@pytest.mark.parametrize("tie", [False, True])
def test_llama_fold_and_rotate(tie):
    model = _llama(tie)
    x, fresh = _tokens(50, (2, 6), 0), _tokens(50, (3, 7), 1)
    folded, report = fold_norms(model, return_report=True)
    assert report.mean_free == () and report.groups == {"model.embed_tokens": "orthogonal"}
    assert report.untied == ((("lm_head.weight", "model.embed_tokens.weight"),) if tie else ())
    assert report.new_biases == ()  # RMSNorm has no bias
    # HF's LlamaRMSNorm normalises in float32 even in a float64 model; the gain-free nn.RMSNorm does not
    assert function_error(model, folded, (fresh,))[0] <= 1e-6
    stream = symmetries(folded, x)["model.embed_tokens"]
    assert stream.group == "orthogonal"
    rotated = _rotate(folded, x, stream.name, _haar(32))
    assert function_error(folded, rotated, (fresh,))[0] <= TOL
    rotated = _rotate(folded, x, stream.name, hadamard(32))
    assert function_error(folded, rotated, (fresh,))[0] <= TOL


@needs_hf
def test_vit_fold_and_rotate():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        num_hidden_layers=2,
        hidden_size=24,
        intermediate_size=48,
        num_attention_heads=4,
        image_size=16,
        patch_size=8,
        num_channels=3,
        num_labels=5,
    )
    model = _perturb_norms(transformers.ViTForImageClassification(cfg).double().eval())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    fresh = torch.randn(3, 3, 16, 16, generator=gen, dtype=torch.float64)
    folded, report = fold_norms(model, x, return_report=True)
    name = "vit.embeddings.patch_embeddings.projection"
    assert report.mean_free == (name,)
    assert function_error(model, folded, (fresh,))[0] <= TOL
    cls = folded.vit.embeddings.cls_token.detach()
    assert float(cls.sum(-1).abs().max()) < 1e-12  # the class token is a writer: centred too
    assert symmetries(folded, x)[name].group == "orthogonal"
    rotated = _rotate(folded, x, name, hadamard(24))  # 24 = 2 · 12
    assert function_error(model, rotated, (fresh,))[0] <= TOL


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_unknown_norm_class_names_the_module():
    model = _prenorm(norm=MaxNorm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]
    with pytest.raises(SymmetryError, match=r"does not know the norm .* module 'norm1' \(MaxNorm"):
        fold_norms(model, torch.randn(6, 5, dtype=torch.float64))
    # nothing half-folded: the model the caller holds is exactly as it was (the fold works on a copy)
    assert [type(m) for m in model.modules()] == modules
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_functional_norm_names_the_call():
    model = _prenorm(functional=True)
    with pytest.raises(SymmetryError, match=r"layer_norm.*functional call on stream 'emb'"):
        fold_norms(model, torch.randn(6, 5, dtype=torch.float64))


@needs_hf
def test_post_ln_is_refused_naming_the_norm():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        num_hidden_layers=1,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        vocab_size=30,
        max_position_embeddings=16,
    )
    with pytest.raises(SymmetryError, match=r"norm 'bert\.embeddings\.LayerNorm' \(LayerNorm\) is post-LN"):
        fold_norms(transformers.BertForMaskedLM(cfg).double().eval())
    torch.manual_seed(0)
    encoder = nn.Sequential(
        nn.Linear(6, 16), nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True), nn.Linear(16, 3)
    ).double()
    with pytest.raises(SymmetryError, match=r"norm '1\.norm1' \(LayerNorm\) is post-LN"):
        fold_norms(encoder, torch.randn(2, 5, 6, dtype=torch.float64))


def test_rotation_of_wrong_size_or_not_orthogonal_names_the_site():
    model = _prenorm()
    x = torch.randn(6, 5, dtype=torch.float64)
    folded = fold_norms(model, x)
    syms = symmetries(folded, x)
    with pytest.raises(ValueError, match="site 'emb'"):
        Element(syms, {"emb": hadamard(4)})
    with pytest.raises(SymmetryError, match="'emb'"):
        transform(folded, Element(syms, {"emb": 2 * _haar(8)}))


def test_missing_example_input_and_no_stream():
    with pytest.raises(ValueError, match="x: fold_norms needs an example input"):
        fold_norms(PreNorm())
    with pytest.raises(TypeError, match="model"):
        fold_norms("model", torch.randn(2, 5))
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no residual stream"):
        fold_norms(mlp, torch.randn(2, 3))


def test_a_wrong_fold_is_caught_by_the_check(monkeypatch):
    """The check compares with the traced output: a fold that scales the readers wrongly raises, naming the stream."""
    from isotorch.params import _fold

    monkeypatch.setattr(
        _fold, "_axis_vector", lambda v, ndim, axis: (1.5 * v).reshape([-1 if i == axis else 1 for i in range(ndim)])
    )
    with pytest.raises(SymmetryError, match="folding the norms of emb changed the model's function"):
        fold_norms(_prenorm(), torch.randn(6, 5, dtype=torch.float64))


@pytest.mark.parametrize("stack", [False, True])
def test_torch_encoder_layers_norm_first(stack):
    """nn.TransformerEncoderLayer(norm_first=True), alone or in nn.TransformerEncoder with a final norm."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True)
    if stack:
        body = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=False)
    else:
        body = nn.Sequential(
            layer, nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True)
        )
        body.append(nn.LayerNorm(16))
    model = _perturb_norms(nn.Sequential(nn.Linear(6, 16), body, nn.Linear(16, 3)).double().eval())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    fresh = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)
    folded, report = fold_norms(model, x, return_report=True)
    assert report.groups == {"0": "orthogonal"} and report.mean_free == ("0",) and len(report.norms) == 5
    assert function_error(model, folded, (fresh,))[0] <= TOL
    assert symmetries(folded, x)["0"].group == "orthogonal"
    rotated = _rotate(folded, x, "0", hadamard(16))
    assert function_error(model, rotated, (fresh,))[0] <= TOL


@needs_hf
def test_gemma_gain_offset():
    """Gemma's RMSNorm multiplies by (1 + w): the folded gain is 1 + w (Norm.offset = 1), the head is tied."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GemmaConfig(
        num_hidden_layers=1,
        hidden_size=16,
        intermediate_size=24,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        vocab_size=30,
        max_position_embeddings=16,
    )
    model = _perturb_norms(transformers.GemmaForCausalLM(cfg).double().eval())
    x, fresh = _tokens(30, (2, 6), 0), _tokens(30, (3, 7), 1)
    folded, report = fold_norms(model, return_report=True)
    assert report.untied == (("lm_head.weight", "model.embed_tokens.weight"),)
    assert function_error(model, folded, (fresh,))[0] <= 1e-6  # HF normalises in float32 internally
    stream = symmetries(folded, x)["model.embed_tokens"]
    assert stream.group == "orthogonal"
    rotated = _rotate(folded, x, stream.name, hadamard(16))
    assert function_error(folded, rotated, (fresh,))[0] <= TOL
