"""Tests for isotorch.audit._model: per-primitive audits read from the site graph of isotorch.params, one G2 row per
site applied to a deep copy (verified, with a negative control), G3 end to end, and what cannot be audited."""

import json

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from isotorch.audit import ModelAudit, audit_model


def _seed_params(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "weight" in name:
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def _mlp(dtype):
    model = nn.Sequential(
        nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )
    return _seed_params(model).to(dtype)


def _cnn(dtype):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    _seed_params(model)
    with torch.no_grad():
        model[1].running_mean.normal_(generator=torch.Generator().manual_seed(1))
        model[1].running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    return model.to(dtype)


def _x(*shape, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)


def test_mlp_sites_chains_and_end_to_end(dtype):
    model = _mlp(dtype).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = audit_model(model, _x(4, 6, dtype=dtype))
    assert model.training  # mode restored
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # G2 works on a deep copy

    roles = {r.path: r.role for r in report.rows}
    assert roles == {
        "0": "absorbed",
        "1": "primitive",
        "2": "primitive",
        "3": "primitive",
        "4": "absorbed",
        "5": "primitive",
        "6": "absorbed",
    }
    maximal = {r.path: r.maximal for r in report.sites}
    assert maximal["1"] == {"permutation"}  # LayerNorm with a random affine
    assert maximal["2"] == {"permutation", "positive_scaling"}
    assert maximal["3"] == {"orthogonal", "positive_scaling"}  # dropout in eval mode is the identity
    assert maximal["5"] == {"signed_permutation"}
    assert report.common == {"permutation"}

    chains = {(c.first, c.last): c for c in report.chains}
    assert set(chains) == {("0", "4"), ("4", "6")}
    first, second = chains[("0", "4")], chains[("4", "6")]
    assert first.primitives == ("1", "2", "3") and first.groups == {"permutation"}
    assert second.groups == {"signed_permutation"}
    for chain in (first, second):
        assert chain.verified, chain
        assert chain.status == "free" and chain.kind == "hidden"
        assert all(v <= chain.tolerance for v in chain.changes.values())
        assert chain.control is not None and chain.control[1] > 10 * chain.tolerance  # a larger group breaks it
    assert report.not_analysed == () and report.complete  # the output layer 6 is no site
    assert {r.path: r.site for r in report.sites} == {"1": "0", "2": "0", "3": "0", "5": "4"}

    g3 = report.end_to_end
    assert g3 is not None and g3.ok
    assert g3.respects == "invariance" and g3.maximal == {"trivial"}  # the first layer fixes the input basis


def test_cnn_uses_the_channel_axis_and_verifies_conv_chains(dtype):
    report = audit_model(_cnn(dtype), _x(2, 3, 8, 8, dtype=dtype))
    sites = {r.path: r for r in report.sites}
    assert {r.dim for r in sites.values()} == {1}
    assert sites["1"].maximal == {"permutation"}  # BatchNorm with running statistics and affine
    assert sites["4"].maximal == {"permutation", "positive_scaling"}  # in-place ReLU
    assert sites["5"].maximal == {"permutation", "positive_scaling"}  # per-channel max pooling
    assert sites["7"].maximal == {"orthogonal", "positive_scaling"}  # average pooling is linear per channel
    assert {r.path: r.role for r in report.rows}["8"] == "structural"
    chains = {(c.first, c.last): c for c in report.chains}
    assert set(chains) == {("0", "3"), ("3", "6"), ("6", "9")}
    assert chains[("0", "3")].groups == {"permutation"}
    assert chains[("3", "6")].groups == {"permutation", "positive_scaling"}
    # average pooling and Flatten are linear: the whole of GL(4) acts between conv 6 and the Linear 9
    assert chains[("6", "9")].group == "general_linear" and chains[("6", "9")].control is None
    assert all(c.verified for c in report.chains), report.chains
    assert report.not_analysed == ()
    assert report.end_to_end.dim == 1


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)

    def forward(self, x):
        h = self.act(self.fc1(x))
        return self.fc2(h) + h


def test_a_hidden_activation_reused_outside_the_chain_is_caught():
    report = audit_model(_Residual(), _x(4, 8, dtype=torch.float32))
    (chain,) = report.chains  # fc1's features and fc2's output are one residual space, returned by the model
    assert not chain.verified and chain.status == "frozen" and chain.kind == "residual"
    assert "returned by the model" in chain.reason and chain.groups == frozenset() and chain.changes == {}


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def test_functional_activations_are_sites():
    report = audit_model(_Functional(), _x(4, 8, dtype=torch.float32))
    (row,) = report.sites
    assert (row.path, row.type, row.site) == ("relu", "relu()", "fc1")
    assert row.maximal == {"permutation", "positive_scaling"}
    (chain,) = report.chains
    assert (chain.first, chain.last, chain.primitives) == ("fc1", "fc2", ("relu",))
    assert chain.verified and chain.groups == {"permutation", "positive_scaling"}
    assert chain.control is not None and chain.control[1] > 10 * chain.tolerance


class _Pair(nn.Module):
    def forward(self, x, y):
        return x + y


class _Tuple(nn.Module):
    def forward(self, x):
        return x, x


class _Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.pair, self.tuple, self.unused = _Pair(), _Tuple(), nn.GELU()

    def forward(self, x):
        a = self.attn(x, x, x)[0]
        b, _ = self.tuple(a)
        return self.pair(a, b)


def test_modules_that_cannot_be_audited_are_skipped_with_a_reason():
    report = audit_model(_Odd(), _x(2, 5, 8, dtype=torch.float32))
    notes = {r.path: (r.role, r.note) for r in report.rows}
    assert notes["attn"][0] == "attention" and "softmax over the keys" in notes["attn"][1]
    assert "attn.out_proj" not in notes  # part of the attention row
    assert notes["pair"][0] == "structural" and "traced through" in notes["pair"][1]  # fx inlines it: an addition
    assert notes["tuple"][0] == "structural"
    assert notes["unused"] == ("skipped", "never called in the forward pass (unused, or a fused fast path)")
    assert report.sites == ()
    kinds = {c.site: c.kind for c in report.chains}  # attention's maps are G2 rows
    assert kinds == {
        "attn.heads": "heads",
        "attn.qk0": "query_key",
        "attn.vo0": "value_output",
        "attn.qk1": "query_key",
        "attn.vo1": "value_output",
    }
    assert all(c.verified for c in report.chains), report.chains
    assert report.chains[0].control[0] == "orthogonal" and report.chains[0].control[1] > 1e-2  # mixing heads breaks it


class _Declared(nn.Module):
    """An isotorch-style primitive: role, dim and groups (this one overclaims)."""

    role, dim = "activation", -1

    def __init__(self, groups):
        super().__init__()
        self._groups = groups

    @property
    def groups(self):
        return self._groups

    def forward(self, x):
        return torch.tanh(x)


def test_isotorch_primitives_are_checked_against_their_declared_groups():
    model = nn.Sequential(
        nn.Linear(4, 8), _Declared(("orthogonal",)), nn.Linear(8, 8), _Declared(("signed_permutation",))
    )
    report = audit_model(model, _x(3, 4, dtype=torch.float32))
    notes = {r.path: r.note for r in report.sites}
    assert "fails orthogonal" in notes["1"]
    assert "signed_permutation: holds" in notes["3"]


def test_equivariant_model_end_to_end():
    report = audit_model(nn.Sequential(nn.Tanh(), nn.Softsign()), _x(3, 6, dtype=torch.float64))
    assert report.end_to_end.maximal == {"signed_permutation"}
    assert report.summary()["G3"]["equivariant"] == ["signed_permutation"]


def test_token_inputs_skip_end_to_end():
    model = nn.Sequential(nn.Embedding(10, 8), nn.GELU(), nn.Linear(8, 8))
    report = audit_model(model, torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(0)))
    assert report.end_to_end is None and "not floating point" in report.end_to_end_reason
    assert {r.path: r.role for r in report.rows}["0"] == "absorbed"
    assert report.sites[0].maximal == {"permutation"}


def test_large_activations_are_sliced():
    report = audit_model(nn.Sequential(nn.GELU()), _x(16, 40, 8, dtype=torch.float32), max_elements=64)
    (row,) = report.sites
    assert "slice" in row.note and row.maximal == {"permutation"}


def test_reports_serialise_and_render():
    report = audit_model(_mlp(torch.float32), _x(4, 6, dtype=torch.float32))
    assert isinstance(report, ModelAudit)
    d = report.to_dict()
    json.dumps(d, allow_nan=False)
    assert set(d["summary"]) == {"G1", "G2", "G3", "not_analysed"}
    assert {c["site"] for c in d["summary"]["G2"]} == {"0", "4"}
    markdown = report.to_markdown()
    assert "| 2 | ReLU | -1 | 16 | S_n, (ℝ>0)ⁿ |" in markdown
    console = Console(record=True, width=160)
    console.print(report)
    text = console.export_text()
    assert "G2: parameter symmetries of the sites" in text and "2/2 free sites verified" in text
    assert "ModelAudit(Sequential" in repr(report)


def test_the_settings_record_the_seed_that_reproduces_the_audit():
    model, x = _mlp(torch.float32), _x(4, 6, dtype=torch.float32)
    assert audit_model(model, x, generator=torch.Generator().manual_seed(5)).settings["seed"] == 5
    torch.manual_seed(1)
    drawn = audit_model(model, x)  # generator=None: a stream seeded from one draw of the global RNG
    seed = drawn.settings["seed"]
    again = audit_model(model, x, generator=torch.Generator().manual_seed(seed))
    assert again.to_dict() == drawn.to_dict()
    used = torch.Generator().manual_seed(5)
    torch.randn(1, generator=used)
    assert audit_model(model, x, generator=used).settings["seed"] is None  # no seed reproduces a used generator


def test_bad_arguments_and_failing_forward():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        audit_model(torch.tanh, _x(2, 3))
    with pytest.raises(TypeError, match="tensor"):
        audit_model(nn.Tanh(), [1.0])
    with pytest.raises(RuntimeError, match=r"^x does not fit the model: the forward pass"):
        audit_model(nn.Linear(3, 2), _x(2, 4, dtype=torch.float32))


# -- one engine: the audit's G2 is the site graph of isotorch.params -------------------------------------------


class _Stream(nn.Module):
    """A residual MLP whose stream is read by two layers, plus a functional tanh."""

    def __init__(self):
        super().__init__()
        self.embed, self.up, self.down, self.head = nn.Linear(4, 8), nn.Linear(8, 12), nn.Linear(12, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.down(torch.tanh(self.up(h)))
        return self.head(h)


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.attn = nn.Linear(6, 8), nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc, self.out = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        h = self.attn(h, h, h, need_weights=False)[0]
        return self.out(F.gelu(self.fc(h)))


def _encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)


def _agreement_models():
    return [
        ("mlp", _mlp(torch.float64), _x(4, 6)),
        ("cnn", _cnn(torch.float64), _x(2, 3, 8, 8)),
        ("functional", _Functional().double(), _x(4, 8)),
        ("residual", _Residual().double(), _x(4, 8)),
        ("stream", _seed_params(_Stream()).double(), _x(4, 4)),
        ("attention", _Attention().double(), _x(2, 5, 6)),
        ("encoder", _encoder().double(), _x(2, 5, 8)),
    ]


@pytest.mark.parametrize("name", [m[0] for m in _agreement_models()])
def test_every_g2_row_is_a_params_site_with_the_same_group(name):
    from isotorch.params import symmetries

    _, model, x = next(m for m in _agreement_models() if m[0] == name)
    report = audit_model(model, x, trials=2, inputs=("given",), lie=False)
    syms = symmetries(model, x)
    assert [c.site for c in report.chains] == [s.name for s in syms]
    for chain in report.chains:
        site = syms[chain.site]
        assert (chain.group, chain.status, chain.width, chain.kind) == (site.group, site.status, site.size, site.kind)
        assert chain.groups == (site.maximal if site.free else frozenset())
        if site.free:  # float64: every element of the site's group keeps the output to round-off
            assert chain.verified, chain
            assert all(v <= 1e-9 for v in chain.changes.values()), chain.changes
        else:
            assert chain.reason == site.reason and not chain.verified


def test_g1_of_a_torch_encoder_does_not_overclaim():
    """nn.TransformerEncoderLayer calls F.relu in forward: G1's common group is S_n at most, never O(n)_𝟙 (which
    the LayerNorms alone would hold at their initial affine γ = 1, β = 0)."""
    report = audit_model(_encoder(), _x(2, 5, 8, dtype=torch.float32), trials=2, lie=False)
    relu = [r for r in report.sites if r.type == "relu()"]
    assert relu and relu[0].maximal == {"permutation", "positive_scaling"}
    assert any(r.maximal == {"mean_orthogonal"} for r in report.sites if r.type == "LayerNorm")
    assert report.complete and report.common == {"permutation"}
    stream = [c for c in report.chains if c.kind in ("heads", "query_key", "value_output")]
    assert stream and all(c.verified for c in stream)


class _Scores(nn.Module):
    """Hand-written single-head attention: the softmax over keys is a G1 row on the key axis."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-2, -1) / 2.0
        return F.softmax(scores, dim=-1) @ self.v(x)


def test_softmax_over_keys_is_a_row_on_the_key_axis(dtype):
    report = audit_model(_Scores().to(dtype), _x(2, 7, 6, dtype=dtype), trials=2, lie=False)
    (row,) = [r for r in report.sites if r.type == "softmax()"]
    assert row.dim == -1 and row.n == 7  # the key axis of the (batch, queries, keys) scores
    assert row.maximal == {"permutation"}
    assert "orthogonal" in row.result.errors and row.result.errors["orthogonal"]["equivariance"] > 1e-3  # control


class _LayerNorm2d(nn.LayerNorm):
    """timm-style LayerNorm over the channels of an (N, C, H, W) map (permute, normalise, permute back)."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


class _Tokens(nn.Module):
    """ViT-like tokens (B, T, C) normalised by a LayerNorm, and a ConvNeXt-like LayerNorm2d on channels."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm2d = nn.Conv2d(3, 8, 2, stride=2), _LayerNorm2d(8)
        self.norm, self.fc = nn.LayerNorm(8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.norm2d(self.conv(x))  # (B, 8, 4, 4)
        tokens = h.flatten(2).transpose(1, 2)  # (B, 16, 8)
        return self.fc(self.norm(tokens))


def test_the_feature_axis_is_the_one_the_primitive_acts_on():
    model = _seed_params(_Tokens()).double()
    report = audit_model(model, _x(2, 3, 8, 8), trials=2, lie=False)
    rows = {r.type: r for r in report.rows if r.role == "primitive"}
    assert rows["LayerNorm"].dim == -1 and rows["LayerNorm"].n == 8  # tokens (B, T, C): the last axis, not T = 16
    assert rows["layer_norm()"].n == 8  # LayerNorm2d normalises the 8 channels, read after its permute
    assert rows["LayerNorm"].maximal == {"permutation"}  # a random affine


def test_g2_passes_through_identity_and_dropout(dtype):
    model = nn.Sequential(nn.Linear(5, 8), nn.Identity(), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2)).to(dtype)
    report = audit_model(model, _x(4, 5, dtype=dtype), trials=2, lie=False)
    (chain,) = report.chains
    assert (chain.first, chain.last, chain.primitives) == ("0", "4", ("1", "2", "3"))
    assert chain.groups == {"permutation", "positive_scaling"} and chain.verified
    assert chain.control is not None and chain.control[1] > 10 * chain.tolerance
    assert {r.path: r.role for r in report.rows}["1"] == "structural"


def _hf(name):
    transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")
    torch.manual_seed(0)
    if name == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=16, vocab_size=50)
        model = transformers.GPT2Model(config)
        x = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    else:
        config = transformers.ViTConfig(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=8, patch_size=4
        )
        model = transformers.ViTModel(config)
        x = _x(2, 3, 8, 8)
    return model.double().eval(), x


@pytest.mark.parametrize("name", ["gpt2", "vit"])
def test_transformers_models_agree_with_params_and_read_tokens_on_the_last_axis(name):
    from isotorch.params import symmetries

    model, x = _hf(name)
    report = audit_model(model, x, trials=2, lie=False)
    syms = symmetries(model, x)
    assert [c.site for c in report.chains] == [s.name for s in syms]
    for chain in report.chains:
        assert (chain.group, chain.status) == (syms[chain.site].group, syms[chain.site].status)
        assert chain.verified or chain.status != "free", chain
    kinds = {c.kind for c in report.chains if c.status == "free"}
    assert {"hidden", "heads", "query_key", "value_output"} <= kinds  # MLP hidden and attention's maps
    norms = [r for r in report.sites if r.type == "LayerNorm"]
    assert norms and all((r.dim, r.n) == (-1, 16) for r in norms)  # tokens (B, T, C): the channels, not T
    assert report.complete and report.common == {"permutation"}  # GELU: S_n, nothing larger


class _Gain(nn.Module):
    """tanh, then a per-feature gain applied in forward: the gain breaks tanh's sign flips."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)
        self.gain = nn.Parameter(1 + torch.rand(8, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)) * self.gain)


def test_a_functional_per_feature_gain_is_a_row_and_g1_does_not_overclaim(dtype):
    report = audit_model(_Gain().to(dtype), _x(5, 4, dtype=dtype), trials=2, lie=False)
    rows = {r.type: r for r in report.rows if r.role == "primitive"}
    assert rows["tanh()"].maximal == {"signed_permutation"} and rows["tanh()"].result is not None
    assert rows["mul()"].maximal == {"permutation"} and "per-feature parameter" in rows["mul()"].note
    assert report.common == {"permutation"}  # not B_n: the gain is a primitive too
    (chain,) = report.chains
    assert chain.groups == {"permutation"} and chain.verified
    assert chain.control[0] == "signed_permutation" and chain.control[1] > 10 * chain.tolerance  # sign flips break it


def test_g2_checks_each_site_on_its_own_when_the_joint_element_changes_the_output(monkeypatch):
    import isotorch.audit._model as m
    from isotorch import groups

    def rotation(site, gen):  # not in a tanh site's group: the joint check fails, each site is then checked alone
        return groups.get("orthogonal").sample(site.size, generator=gen, dtype=torch.float64)

    monkeypatch.setattr(m, "_element", rotation)
    report = audit_model(_mlp(torch.float64), _x(4, 6), trials=2, lie=False)
    for chain in report.chains:
        assert "all free sites at once" not in chain.changes and set(chain.changes) == set(chain.groups)
        assert chain.verified and all(v <= 1e-9 for v in chain.changes.values())
