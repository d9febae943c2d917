"""Sites and their groups: MLPs, CNNs, residual networks, transformer blocks, frozen patterns, hook fallback."""

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import isotorch as it
from isotorch.params import Element, SymmetryError, sample_element, symmetries, transform
from isotorch.testing import relative_error
from tests.params.params_models import CNN, ResMLP, Transformer, iso_mlp, mlp, tokens


def _x(dtype, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(7), dtype=dtype)


@pytest.mark.parametrize(
    ("act", "maximal"),
    [
        (nn.ReLU, {"permutation", "positive_scaling"}),
        (nn.LeakyReLU, {"permutation", "positive_scaling"}),
        (nn.Tanh, {"signed_permutation"}),
        (nn.GELU, {"permutation"}),
        (nn.Sigmoid, {"permutation"}),
        (it.nn.IsoTanh, {"orthogonal"}),
    ],
)
def test_mlp_site_groups(act, maximal):
    model = mlp(act)
    syms = symmetries(model, _x(torch.float64, 6, 5))
    assert [s.name for s in syms] == ["0", "2"]
    for s in syms:
        assert s.free and set(s.maximal) == maximal and not s.general_linear
        assert s.producers == (s.name,) and s.size == 16


def test_linear_linear_site_is_general_linear(dtype):
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3)).to(dtype)
    syms = symmetries(model, _x(dtype, 5, 4))
    (site,) = syms
    assert site.general_linear and site.group == "general_linear"
    # a non-orthogonal invertible matrix is a symmetry of a linear pair
    g = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 3 * torch.eye(6)
    new = transform(model, Element(syms, {"0": g}))
    assert not torch.allclose(new[0].weight, model[0].weight)


@pytest.mark.parametrize(
    ("norm", "maximal"),
    [
        (lambda: nn.LayerNorm(16), {"permutation"}),
        (lambda: nn.LayerNorm(16, elementwise_affine=False), {"mean_orthogonal"}),
        (lambda: nn.RMSNorm(16, elementwise_affine=False), {"orthogonal"}),
        (lambda: nn.RMSNorm(16), {"permutation"}),
        (lambda: it.nn.IsoRMSNorm(), {"orthogonal"}),
    ],
)
def test_norm_sites_transform(norm, maximal, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), norm(), nn.Linear(16, 3)).to(dtype)
    with torch.no_grad():  # non-trivial affine parameters
        for p in model[1].parameters():
            p.add_(torch.randn_like(p) * 0.3)
    syms = symmetries(model, _x(dtype, 7, 5))
    (site,) = syms
    assert set(site.maximal) == maximal
    for seed in range(3):
        transform(model, sample_element(syms, torch.Generator().manual_seed(seed)))
    # negative control: a Haar rotation breaks every site that is not orthogonal
    if maximal != {"orthogonal"}:
        rot = it.groups.get("orthogonal").sample(16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        with pytest.raises(SymmetryError):
            transform(model, Element(syms, {"0": rot}), check_group=False)


def test_cnn_sites_and_transform(dtype):
    torch.manual_seed(0)
    model = CNN().to(dtype)
    model.bn1.running_mean.normal_()
    model.bn1.running_var.uniform_(0.5, 2)
    x = _x(dtype, 2, 3, 8, 8)
    syms = symmetries(model, x)
    assert {s.name: s.group for s in syms} == {"c1": "permutation", "c2": "permutation", "fc1": "permutation"}
    assert any(a.param == "fc1.weight" and a.inner == 16 for a in syms["c2"].actions)  # flattened consumer
    assert {a.param for a in syms["c1"].actions if a.kind == "passenger"} >= {"bn1.running_mean", "bn1.weight"}
    new = transform(model, sample_element(syms, torch.Generator().manual_seed(0)))
    assert relative_error(new.eval()(x), model.eval()(x)) < it.testing.tolerance(dtype)
    # negative control: sign flips are not a symmetry of the ReLU/BatchNorm site
    signs = torch.diag(torch.tensor([-1.0, 1, 1, 1, 1, 1], dtype=torch.float64))
    with pytest.raises(SymmetryError):
        transform(model, Element(syms, {"c1": signs}), check_group=False)


def test_residual_stream_is_one_shared_site(dtype):
    model = ResMLP().to(dtype)
    x = _x(dtype, 6, 4)
    syms = symmetries(model, x)
    stream = syms["inp"]
    assert stream.kind == "residual" and stream.group == "permutation"
    assert set(stream.producers) == {"inp", "blocks.0.3", "blocks.1.3"}
    assert set(stream.consumers) == {"blocks.0.1", "blocks.1.1", "out"}
    transform(model, sample_element(syms, torch.Generator().manual_seed(1)))
    # negative control: permuting only the first writer of the stream (not shared) changes the function
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(2))
    broken = ResMLP().to(dtype)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.inp.weight.copy_(model.inp.weight[perm])
        broken.inp.bias.copy_(model.inp.bias[perm])
        broken.blocks[0][1].weight.copy_(model.blocks[0][1].weight[:, perm])
    assert relative_error(broken.eval()(x), model.eval()(x)) > 1e-3


def test_residual_rms_stream_rotates(dtype):
    model = ResMLP(norm="rms").to(dtype)
    syms = symmetries(model, _x(dtype, 6, 4))
    assert syms["inp"].group == "orthogonal"
    transform(model, sample_element(syms, torch.Generator().manual_seed(0)))


def test_transformer_sites(dtype):
    torch.manual_seed(0)
    model = Transformer().to(dtype)
    idx = tokens()
    syms = symmetries(model, idx)
    kinds = {s.name: (s.kind, s.group) for s in syms}
    assert kinds["emb"] == ("residual", "orthogonal")
    assert kinds["blocks.0.attn.heads"] == ("heads", "permutation")
    assert kinds["blocks.0.attn.qk1"] == ("query_key", "general_linear")
    assert kinds["blocks.1.attn.vo0"] == ("value_output", "general_linear")
    assert kinds["blocks.0.up"] == ("hidden", "permutation")
    assert {a.param for a in syms["emb"].actions} >= {
        "emb.weight",
        "pos",
        "head.weight",
        "blocks.0.attn.in_proj_weight",
    }
    for seed in range(2):
        new = transform(model, sample_element(syms, torch.Generator().manual_seed(seed)))
        assert not torch.allclose(new.emb.weight, model.emb.weight)


def test_transformer_negative_controls(dtype):
    torch.manual_seed(0)
    model = Transformer(affine=True).to(dtype)
    with torch.no_grad():
        for norm in (model.norm, model.blocks[0].n1):
            norm.weight.uniform_(0.5, 1.5)
    syms = symmetries(model, tokens())
    assert syms["emb"].group == "permutation"  # RMSNorm gains are elementwise
    rot = it.groups.get("orthogonal").sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(SymmetryError):
        transform(model, Element(syms, {"emb": rot}), check_group=False)
    # the key side of W_Q W_Kᵀ needs the inverse transpose: applying g to both breaks the function
    g = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 2 * torch.eye(4)
    transform(model, Element(syms, {"blocks.0.attn.qk0": g}))
    wrong = transform(model, Element(syms, {"blocks.0.attn.qk0": g}), check=False)
    with torch.no_grad():
        wrong.blocks[0].attn.in_proj_weight[8:12] = g.to(dtype) @ model.blocks[0].attn.in_proj_weight[8:12]
    idx = tokens()
    assert relative_error(wrong.eval()(idx), model.eval()(idx)) > 1e-3


class _Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)
        self.fc3 = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.cumsum(self.fc1(x), dim=-1)
        return self.fc3(F.relu(self.fc2(h))), h


def test_unsupported_patterns_are_frozen():
    syms = symmetries(_Cumsum(), torch.randn(5, 4))
    site = syms["fc1"]
    assert site.status == "frozen" and "returned by the model" in site.reason
    assert syms["fc2"].free
    with pytest.raises(SymmetryError, match="frozen"):
        sample_element(syms, sites=["fc1"])


class _InputResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(x + self.fc(x)))


def test_residual_from_the_input_is_frozen():
    syms = symmetries(_InputResidual(), torch.randn(3, 4))
    assert syms["fc"].status == "frozen" and "model input" in syms["fc"].reason


class _Cube(nn.Module):
    def forward(self, x):
        return x**3


def test_unknown_primitive_is_audited():
    model = nn.Sequential(nn.Linear(4, 6), _Cube(), nn.Linear(6, 2)).double()
    syms = symmetries(model, torch.randn(9, 4, dtype=torch.float64))
    assert syms["0"].group == "signed_permutation"
    assert "audited" in syms["0"].primitives[0]


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))

    def forward(self, x):
        if x.sum() > 1e9:  # data-dependent control flow: torch.fx cannot trace it
            return x
        return self.seq(x)


def test_recording_fallback_finds_chain_sites(dtype):
    model = _Branchy().to(dtype)
    x = _x(dtype, 5, 4)
    syms = symmetries(model, x)
    assert syms.method == "functions" and "fx" in syms.note
    assert syms["seq.0"].group == "signed_permutation"
    transform(model, sample_element(syms, torch.Generator().manual_seed(0)))


class _BranchyResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 1e9:
            return x
        h = self.a(x)
        return self.b(self.act(h) + h)  # functional code between modules: recorded, not hidden


def test_recording_fallback_follows_functional_code():
    model = _BranchyResidual().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    syms = symmetries(model, x)
    assert syms.method == "functions"
    assert syms["a"].free and syms["a"].group == "permutation × positive_scaling"
    transform(model, sample_element(syms, torch.Generator().manual_seed(0)))


class _ReadsIntoPython(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 1e9:  # fx cannot trace this
            return x
        h = self.a(x)
        scale = float(h.abs().max())  # feature values leave torch: whatever follows is invisible
        return self.b(torch.relu(h) * scale)


def test_recording_fallback_freezes_values_read_into_python():
    syms = symmetries(_ReadsIntoPython(), torch.randn(3, 4))
    assert syms["a"].status == "frozen"


def test_repr_and_to_dict_are_readable():
    syms = symmetries(mlp(nn.ReLU), torch.randn(3, 5, dtype=torch.float64))
    text = repr(syms)
    assert "permutation × positive_scaling" in text and "Sequential" in text
    data = json.loads(json.dumps(syms.to_dict()))
    assert data["sites"][0]["group"] == "permutation × positive_scaling"
    with pytest.raises(KeyError, match="sites: 0, 2"):
        syms["nope"]


def test_degenerate_example_inputs_are_refused():
    with pytest.raises(ValueError, match="empty"):
        symmetries(mlp(), torch.zeros(0, 5, dtype=torch.float64))
    x = torch.randn(3, 5, dtype=torch.float64)
    x[1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        symmetries(mlp(), x)
    model = mlp(nn.Tanh)
    big = torch.randn(2, 5, dtype=torch.float64) * 1e200  # huge norms: the check must not overflow
    transform(model, sample_element(symmetries(model, big), torch.Generator().manual_seed(0)))
    relu = mlp()
    with torch.no_grad():
        relu[2].weight.mul_(1e300)
    syms = symmetries(relu, torch.randn(2, 5, dtype=torch.float64) * 1e10)  # overflows inside the model
    with pytest.raises(ValueError, match="not finite"):
        transform(relu, sample_element(syms, torch.Generator().manual_seed(0)))
    zero = torch.zeros(3, 5, dtype=torch.float64)  # the zero vector is a valid (if weak) example
    transform(relu, sample_element(symmetries(relu, zero), torch.Generator().manual_seed(0)))


def test_bad_input():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        symmetries(lambda x: x, torch.randn(2))
    with pytest.raises(TypeError, match="x must be"):
        symmetries(mlp(), "data")


@given(
    widths=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    act=st.sampled_from([nn.ReLU, nn.Tanh, nn.GELU, it.nn.IsoTanh, nn.Identity]),
    batch=st.integers(1, 4),
    use64=st.booleans(),
)
def test_random_mlps_keep_their_function(widths, act, batch, use64):
    dtype = torch.float64 if use64 else torch.float32
    model = mlp(act, (3, *widths, 2), dtype)
    x = _x(dtype, batch, 3)
    syms = symmetries(model, x)
    assert len(syms) == len(widths)
    new = transform(model, sample_element(syms, torch.Generator().manual_seed(len(widths))))
    with torch.no_grad():
        assert relative_error(new(x), model(x)) <= it.testing.tolerance(dtype)


def test_iso_sites_in_float32_and_negative_control(dtype):
    model = iso_mlp(dtype=dtype)
    x = _x(dtype, 6, 5)
    syms = symmetries(model, x)
    transform(model, sample_element(syms, torch.Generator().manual_seed(0)))
    relu = mlp(nn.ReLU, dtype=dtype)
    rsyms = symmetries(relu, x)
    rot = it.groups.get("orthogonal").sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(SymmetryError, match="not in the site's group"):
        transform(relu, Element(rsyms, {"0": rot}))
    with pytest.raises(SymmetryError, match="changed the model's function"):
        transform(relu, Element(rsyms, {"0": rot}), check_group=False)


class _ResNet(nn.Module):
    """A small ResNet: conv stem, two basic blocks (one with a 1×1 projection shortcut), global pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(4)
        self.a1, self.na1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.a2, self.na2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.b1, self.nb1 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.b2, self.nb2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.short = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.na2(self.a2(F.relu(self.na1(self.a1(x))))))
        x = F.relu(self.short(x) + self.nb2(self.b2(F.relu(self.nb1(self.b1(x))))))
        return self.fc(x.mean(dim=(2, 3)))


def test_resnet_streams(dtype):
    torch.manual_seed(0)
    model = _ResNet().to(dtype)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = _x(dtype, 2, 3, 6, 6)
    syms = symmetries(model, x)
    assert set(syms["stem"].producers) == {"stem", "a2"} and syms["stem"].group == "permutation"
    assert set(syms["short"].producers) == {"short", "b2"} and set(syms["short"].consumers) == {"fc"}
    assert syms["a1"].kind == "hidden" and syms["b1"].group == "permutation"
    for seed in range(2):
        transform(model, sample_element(syms, torch.Generator().manual_seed(seed)))
    scale = torch.diag(torch.linspace(0.5, 2.0, 4, dtype=torch.float64))  # BatchNorm: no positive scaling
    with pytest.raises(SymmetryError):
        transform(model, Element(syms, {"stem": scale}), check_group=False)
