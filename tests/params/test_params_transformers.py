"""Transformers in params.symmetries + transform (REFERENCE §8.1): HF GPT-2, Llama, BERT, ViT (tiny configs, random
weights, float64), torch's encoder/decoder layers and hand-written attention. Every free site is checked with a
random element on a fresh input; negative controls show the restrictions are real."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isotorch.params import Element, SymmetryError, align, sample_element, symmetries, transform
from isotorch.params._transform import function_error

transformers = pytest.importorskip("transformers", reason="the HF families need transformers (the hf extra)")

TOL = 1e-9


def _tokens(vocab, shape, seed):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _gpt2(**kw):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16, **kw)
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def _llama(**kw):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50,
        max_position_embeddings=32,
        **kw,
    )
    return transformers.LlamaForCausalLM(cfg).double().eval()


def _bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        vocab_size=50,
        max_position_embeddings=32,
    )
    return transformers.BertForMaskedLM(cfg).double().eval()


def _vit():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        image_size=16,
        patch_size=8,
        num_channels=3,
        num_labels=5,
    )
    return transformers.ViTForImageClassification(cfg).double().eval()


def check_every_site(model, x, fresh, tol=TOL, seed=0):
    """Each free site alone, and all of them together, keep the outputs on the example and on a fresh input."""
    syms = symmetries(model, x)
    gen = torch.Generator().manual_seed(seed)
    for site in syms:
        if site.free:
            new = transform(model, sample_element(syms, gen, sites=[site.name]), tol=tol)
            assert function_error(model, new, (fresh,))[0] <= tol, site.name
        else:
            assert site.reason, site.name
    new = transform(model, sample_element(syms, gen), tol=tol)
    assert function_error(model, new, (fresh,))[0] <= tol
    return syms


def _kinds(syms):
    out = {}
    for s in syms:
        out.setdefault(s.kind, []).append(s)
    return out


def test_gpt2_sites_and_elements():
    model = _gpt2()
    syms = check_every_site(model, _tokens(50, (2, 7), 0), _tokens(50, (3, 9), 1))
    assert syms.method == "functions" and "fx" in syms.note  # fx cannot trace HF GPT-2
    kinds = _kinds(syms)
    stream = syms["transformer.wte"]
    assert stream.kind == "residual" and stream.group == "permutation"  # LayerNorm gains allow permutations only
    assert ("lm_head.weight", "transformer.wte.weight") in stream.tied
    assert "transformer.h.1.mlp.c_proj" in stream.writers and "lm_head" in stream.readers
    norms = {n.name: n for n in stream.norms}
    assert norms["transformer.h.0.ln_1"].readers == ("transformer.h.0.attn.c_attn",)
    assert norms["transformer.h.0.ln_1"].kind == "layer" and norms["transformer.h.0.ln_1"].weight.endswith("weight")
    assert [s.name for s in kinds["heads"]] == ["transformer.h.0.attn.heads", "transformer.h.1.attn.heads"]
    assert len(kinds["query_key"]) == len(kinds["value_output"]) == 2 * 4
    assert all(s.general_linear and s.size == 8 for s in kinds["query_key"])
    assert syms["transformer.h.0.mlp.c_fc"].group == "permutation"  # NewGELU


def test_gpt2_eager_attention_reads_the_same_sites():
    sdpa = symmetries(_gpt2(), _tokens(50, (2, 7), 0))
    eager = symmetries(_gpt2(attn_implementation="eager"), _tokens(50, (2, 7), 0))
    assert [(s.name, s.group) for s in sdpa] == [(s.name, s.group) for s in eager]


def test_gpt2_negative_controls():
    model = _gpt2()
    x = _tokens(50, (2, 7), 0)
    syms = symmetries(model, x)
    gen = torch.Generator().manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(128, 128, generator=gen, dtype=torch.float64))[0]
    with pytest.raises(SymmetryError, match="not in the site's group"):  # a rotation at a GELU site
        transform(model, Element(syms, {"transformer.h.0.mlp.c_fc": rotation}))
    with pytest.raises(SymmetryError, match="changed the model's function"):
        transform(model, Element(syms, {"transformer.h.0.mlp.c_fc": rotation}), check_group=False)
    stream = torch.linalg.qr(torch.randn(32, 32, generator=gen, dtype=torch.float64))[0]
    with pytest.raises(SymmetryError, match="not in the site's group"):  # LayerNorm gains are not folded
        transform(model, Element(syms, {"transformer.wte": stream}))
    with pytest.raises(SymmetryError, match="changed the model's function"):
        transform(model, Element(syms, {"transformer.wte": stream}), check_group=False)


@pytest.fixture
def exact_llama_norm(monkeypatch):
    """HF's LlamaRMSNorm computes in float32 even in a float64 model; this computes it in the input dtype, so that
    the identities can be checked to 1e-9 (the analysis itself is run on the class as shipped elsewhere)."""
    from transformers.models.llama import modeling_llama

    def forward(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_llama_sites_and_elements(exact_llama_norm, attn):
    model = _llama(attn_implementation=attn)
    syms = check_every_site(model, _tokens(50, (2, 7), 0), _tokens(50, (3, 9), 1))
    kinds = _kinds(syms)
    assert syms["model.embed_tokens"].kind == "residual" and syms["model.embed_tokens"].group == "permutation"
    assert {n.kind for n in syms["model.embed_tokens"].norms} == {"rms"}
    assert [s.size for s in kinds["heads"]] == [2, 2]  # 2 K/V heads, each carrying 2 query heads
    assert len(kinds["query_group"]) == 4 and all(s.size == 2 for s in kinds["query_group"])
    assert all(s.structure == "rotary_planes" for s in kinds["query_key"]) and len(kinds["query_key"]) == 4
    assert all(s.general_linear for s in kinds["value_output"])
    assert [s.name for s in kinds["up_scale"]] == [
        "model.layers.0.mlp.up_proj.scale",
        "model.layers.1.mlp.up_proj.scale",
    ]
    assert syms["model.layers.0.mlp.gate_proj"].group == "permutation"


def test_llama_as_shipped_and_negative_controls():
    model = _llama()
    x, fresh = _tokens(50, (2, 7), 0), _tokens(50, (3, 9), 1)
    syms = check_every_site(model, x, fresh, tol=1e-6)  # float32 norms inside: exact to ~1e-7 only
    gen = torch.Generator().manual_seed(0)
    qk = syms["model.layers.0.self_attn.qk0"]
    general = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))[0] * 1.3
    with pytest.raises(SymmetryError, match="not in the site's group"):  # RoPE allows rotations per plane only
        transform(model, Element(syms, {qk.name: general}))
    with pytest.raises(SymmetryError, match="changed the model's function"):
        transform(model, Element(syms, {qk.name: general}), check_group=False, tol=1e-6)
    # the up-branch scaling must not reach the gate: a scaling of the gate rows breaks SiLU
    scale = syms["model.layers.0.mlp.up_proj.scale"]
    assert all("gate_proj" not in a.param for a in scale.actions)


def test_bert_post_ln_sites_and_tied_decoder():
    model = _bert()
    syms = check_every_site(model, _tokens(50, (2, 7), 0), _tokens(50, (3, 9), 1))
    kinds = _kinds(syms)
    assert len(kinds["heads"]) == 2 and len(kinds["query_key"]) == 8
    assert syms["bert.encoder.layer.0.intermediate.dense"].group == "permutation"
    # the decoder reuses the word embeddings on another feature space (after the head's transform): one element
    # acts on both spaces, so they form one site, restricted to orthogonal elements (here: LayerNorm gains, S_n)
    stream = syms["bert.embeddings.word_embeddings"]
    assert stream.free and stream.group == "permutation"
    assert ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight") in stream.tied
    assert "cls.predictions.transform.dense" in stream.writers and "cls.predictions.decoder" in stream.readers


def test_vit_pre_ln_sites():
    model = _vit()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    syms = check_every_site(model, x, torch.randn(3, 3, 16, 16, generator=gen, dtype=torch.float64))
    stream = syms["vit.embeddings.patch_embeddings.projection"]
    assert stream.kind == "residual" and stream.group == "permutation"
    params = {a.param for a in stream.actions}
    assert {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings", "classifier.weight"} <= params
    assert len(_kinds(syms)["heads"]) == 2


def test_torch_encoder_and_decoder_layers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 16),
        nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True),
        nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True, activation="gelu"),
        nn.Linear(16, 3),
    ).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    syms = check_every_site(model, x, torch.randn(3, 4, 6, generator=gen, dtype=torch.float64))
    assert syms["0"].kind == "residual" and syms["0"].group == "permutation"
    assert syms["1.linear1"].group == "permutation × positive_scaling"  # F.relu called as a function
    assert syms["2.linear1"].group == "permutation"  # F.gelu
    assert len(_kinds(syms)["heads"]) == 2

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Linear(6, 16)
            self.dec = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.out = nn.Linear(16, 2)

        def forward(self, x):
            h = self.emb(x)
            return self.out(self.dec(h, h))

    dec = Decoder().double()
    syms = check_every_site(dec, x, torch.randn(3, 4, 6, generator=gen, dtype=torch.float64))
    assert {"dec.self_attn.heads", "dec.multihead_attn.heads"} <= {s.name for s in syms}


class HandWritten(nn.Module):
    """Attention split by view/reshape/permute/transpose, functional norm and activation, a functionally tied head."""

    def __init__(self, d=16, heads=4, vocab=20, norms=True):
        super().__init__()
        self.heads, self.norms = heads, norms
        self.emb = nn.Embedding(vocab, d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, 32), nn.Linear(32, d)

    def forward(self, idx):
        x = self.emb(idx)
        b, t, d = x.shape
        h = self.ln(x) if self.norms else x
        q = self.q(h).view(b, t, self.heads, -1).transpose(1, 2)
        k = self.k(h).reshape(b, t, self.heads, -1).permute(0, 2, 1, 3)
        v = self.v(h).view(b, t, self.heads, d // self.heads).transpose(1, 2)
        a = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.o((a @ v).transpose(1, 2).contiguous().view(b, t, d))
        h = F.layer_norm(x, (d,)) if self.norms else x
        x = x + self.down(F.relu(self.up(h)))
        return F.linear(x, self.emb.weight)


def test_hand_written_attention():
    torch.manual_seed(0)
    model = HandWritten().double()
    syms = check_every_site(model, _tokens(20, (2, 5), 0), _tokens(20, (3, 6), 1))
    assert syms.method == "fx"
    assert {"attention.heads", "attention.qk0", "attention.vo3"} <= {s.name for s in syms}
    assert syms["up"].group == "permutation × positive_scaling"
    assert syms["emb"].group == "permutation"  # the LayerNorm's gain


def test_functionally_tied_head_allows_only_orthogonal_elements():
    torch.manual_seed(0)
    model = HandWritten(norms=False).double()
    x = _tokens(20, (2, 5), 0)
    syms = check_every_site(model, x, _tokens(20, (3, 6), 1))
    stream = syms["emb"]
    assert stream.group == "orthogonal" and not stream.general_linear  # not GL: the head reuses emb.weight
    gen = torch.Generator().manual_seed(0)
    general = torch.randn(16, 16, generator=gen, dtype=torch.float64) + 4 * torch.eye(16, dtype=torch.float64)
    with pytest.raises(SymmetryError, match="not in the site's group"):
        transform(model, Element(syms, {"emb": general}))
    with pytest.raises(SymmetryError, match="changed the model's function"):
        transform(model, Element(syms, {"emb": general}), check_group=False)


def test_align_of_tied_models():
    torch.manual_seed(0)
    a = HandWritten().double()
    x = _tokens(20, (4, 5), 0)
    syms = symmetries(a, x)
    gen = torch.Generator().manual_seed(3)
    perms = {s.name: torch.randperm(s.size, generator=gen) for s in syms.free if "permutation" in s.groups}
    b = transform(a, Element(syms, perms))
    result = align(a, b, x=x, group="permutation")  # the planted permutations (stream, MLP, heads) are recovered
    assert function_error(b, result.model, (_tokens(20, (3, 6), 1),))[0] <= TOL
    assert result.distance_after < 1e-9 < result.distance_before
    gpt_a, gpt_b = _gpt2(), _gpt2()
    with torch.no_grad():
        for p in gpt_b.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tokens = _tokens(50, (2, 7), 0)
    result = align(gpt_a, gpt_b, x=tokens)
    assert function_error(gpt_b, result.model, (_tokens(50, (3, 9), 1),))[0] <= TOL
    assert result.distance_after <= result.distance_before


def test_bad_input_names_x():
    model = _gpt2()
    with pytest.raises(ValueError, match=r"^x \(shape \(2, 7\) and dtype torch.float32\) does not fit GPT2LMHeadModel"):
        symmetries(model, torch.randn(2, 7))
    try:
        symmetries(model, torch.randn(2, 7))
    except ValueError as err:
        assert "\n" not in str(err) and "integer token ids" in str(err)
    mlp = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"x \(shape \(4, 5\).*3 on the last axis"):
        symmetries(mlp, torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"x \(shape \(4, 3\) and dtype torch.float64\).*torch.float32"):
        symmetries(mlp, torch.randn(4, 3, dtype=torch.float64))


class _Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return torch.einsum("bi,ij->bj", x, self.w.exp())


def test_unreadable_architecture_gives_reasons():
    syms = symmetries(nn.Sequential(_Opaque(), nn.ReLU(), _Opaque()), torch.randn(3, 4))
    assert len(syms) > 0 and not syms.free
    assert all(s.status == "frozen" and s.reason for s in syms)


@pytest.mark.parametrize("family", ["gpt2", "llama", "vit"])
def test_float32_elements_keep_outputs(family):
    gen = torch.Generator().manual_seed(0)
    if family == "vit":
        model = _vit().float()
        x, fresh = (torch.randn(n, 3, 16, 16, generator=gen) for n in (2, 3))
    else:
        model = (_gpt2() if family == "gpt2" else _llama()).float()
        x, fresh = _tokens(50, (2, 7), 0), _tokens(50, (3, 9), 1)
    syms = symmetries(model, x)
    new = transform(model, sample_element(syms, gen, dtype=torch.float32))  # verified to 1e-4 (float32)
    assert function_error(model, new, (fresh,))[0] <= 1e-4


class _FunctionalCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.adaptive_avg_pool2d(torch.tanh(self.c2(x)), 1)
        return self.fc(torch.flatten(x, 1))


def test_functional_pooling():
    model = _FunctionalCNN().double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    syms = check_every_site(model, x, torch.randn(3, 3, 8, 8, generator=gen, dtype=torch.float64))
    assert syms["c1"].group == "permutation × positive_scaling"  # relu then max-pool
    assert syms["c2"].group == "signed_permutation"  # tanh then average pool


class _SharedWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h) + torch.einsum("bi,ji->bj", x, self.fc1.weight)[:, :2]  # fc1.weight read again


def test_weight_read_elsewhere_freezes_its_sites():
    syms = symmetries(_SharedWeight().double(), torch.randn(3, 4, dtype=torch.float64))
    site = syms["fc1"]
    assert site.status == "frozen" and "fc1.weight is also read by" in site.reason


def test_torch_transformer_encoder_stack():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=False)
    model = nn.Sequential(nn.Linear(6, 16), encoder, nn.Linear(16, 3)).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    syms = check_every_site(model, x, torch.randn(3, 4, 6, generator=gen, dtype=torch.float64))
    assert syms["0"].group == "permutation" and len(syms["0"].norms) == 5  # 2 × (norm1, norm2) + the final norm
    assert {s.name for s in syms if s.kind == "heads"} == {"1.layers.0.self_attn.heads", "1.layers.1.self_attn.heads"}


@pytest.mark.parametrize("family", ["Qwen2", "Mistral", "OPT"])
def test_more_decoder_families(family):
    """Qwen2 (q/k/v biases), Mistral (sliding-window cache), OPT (learned positions, ReLU): every free site checked;
    tolerance 1e-6 because their RMSNorms compute in float32 even in float64 models."""
    torch.manual_seed(0)
    common = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 4, "vocab_size": 50}
    if family == "OPT":
        cfg = transformers.OPTConfig(ffn_dim=48, word_embed_proj_dim=32, **common)
    else:
        cfg = getattr(transformers, f"{family}Config")(intermediate_size=48, num_key_value_heads=2, **common)
    model = getattr(transformers, f"{family}ForCausalLM")(cfg).double().eval()
    syms = check_every_site(model, _tokens(50, (2, 7), 0), _tokens(50, (3, 9), 1), tol=1e-6)
    assert syms.free and len(syms.free) == len(syms)
    assert any(s.kind == "heads" for s in syms) and any(s.kind == "residual" for s in syms)
