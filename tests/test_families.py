import copy
import math

import pytest
import torch
from torch import nn

import isotorch as it
from isotorch import families, groups
from isotorch.testing import assert_equivariant, equivariance_error, tolerance

# -- families -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["elementwise", "isotropic", "block:2", "direction:12"])
def test_family_primitives_respect_the_family_group(name):
    fam = families.get(name)
    x = torch.randn(6, 8, dtype=torch.float64)
    act = fam.activation(8, -1).double().eval()
    assert_equivariant(act, x, fam.group)
    norm = fam.norm(8, -1, "batch").double().train()
    assert_equivariant(norm, x, fam.group)


def test_family_lookup_errors():
    with pytest.raises(KeyError, match="valid families: elementwise, isotropic"):
        families.get("isotropc")
    with pytest.raises(ValueError, match="positive integer"):
        families.get("block:0")
    with pytest.raises(ValueError, match="positive integer"):
        families.get("block")
    with pytest.raises(ValueError, match="takes no parameter"):
        families.get("isotropic:3")
    with pytest.raises(TypeError):
        families.get(3)


def test_family_optimiser_and_init():
    fam = families.get("isotropic")
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    fam.init_(model, generator=torch.Generator().manual_seed(0))
    w = model[0].weight.detach().double()  # (6, 4): a tall Haar-orthogonal matrix has orthonormal columns
    torch.testing.assert_close(w.T @ w, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.count_nonzero(model[0].bias) == 0
    opt = fam.make_optimiser(model.parameters(), lr=1e-2)
    assert type(opt).__name__ == "IsoAdam"


# -- conversion ---------------------------------------------------------------------------------------------------


def _mlp():
    return nn.Sequential(
        nn.Linear(5, 8),
        nn.Tanh(),
        nn.LayerNorm(8),
        nn.Dropout(0.1),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def test_convert_mlp_keeps_weights_and_swaps_only_primitives():
    model = _mlp()
    iso, report = it.convert(model, "isotropic", return_report=True)
    assert [type(m).__name__ for m in iso] == [
        "Linear",
        "IsoTanh",
        "ChiNorm",
        "IsoDropout",
        "Linear",
        "IsoTanh",
        "Linear",
    ]
    old, new = model.state_dict(), iso.state_dict()
    for key in ("0.weight", "0.bias", "4.weight", "4.bias", "6.weight", "6.bias"):
        assert torch.equal(old[key], new[key])
    assert type(model[1]) is nn.Tanh, "the input model is left unchanged"
    assert [r.path for r in report.swapped] == ["1", "2", "3", "5"]
    assert report.swapped[1].note.startswith("dropped weight, bias")
    assert report.left == ()
    assert report.to_dict()["group"] == "orthogonal"


def test_converted_mlp_gains_rotation_parameter_symmetry():
    """After conversion the hidden layer carries O(n): W₁→QW₁, b₁→Qb₁, W₂→W₂Qᵀ leaves the function unchanged."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    q = groups.get("orthogonal").sample(8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def rotated(model):
        model = copy.deepcopy(model)
        with torch.no_grad():
            model[0].weight.copy_(q @ model[0].weight)
            model[0].bias.copy_(q @ model[0].bias)
            model[2].weight.copy_(model[2].weight @ q.T)
        return model

    iso = it.convert(base, "isotropic").eval()
    torch.testing.assert_close(rotated(iso)(x), iso(x), atol=1e-12, rtol=0)
    assert (rotated(base)(x) - base(x)).abs().max() > 1e-2, "negative control: elementwise tanh has no O(n)"


def test_convert_cnn_uses_the_channel_axis():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.GELU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
        nn.SiLU(),
    )
    iso, report = it.convert(model, "isotropic", return_report=True)
    dims = {r.path: r.dim for r in report.swapped}
    assert dims == {"1": 1, "2": 1, "3": 1, "5": 1, "8": -1}
    assert type(iso[3]).__name__ == "NormMaxPool2d" and type(iso[1]).__name__ == "IsoBatchNorm"
    x = torch.randn(2, 3, 8, 8)
    assert iso.eval()(x).shape == (2, 10)
    assert torch.equal(iso[0].weight, model[0].weight) and torch.equal(iso[7].weight, model[7].weight)


def test_convert_block_family_leaves_indivisible_widths_alone():
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
    _, report = it.convert(model, "block:2", return_report=True)
    assert [r.path for r in report.swapped] == ["1"]
    assert report.left[0].path == "3" and "does not divide" in report.left[0].note


class _OutOfOrder(nn.Module):
    """Registers its output layer and activation before the layer that feeds them, so registration order says
    nothing (and a probe input built from the first registered layer does not fit)."""

    def __init__(self):
        super().__init__()
        self.fc2 = nn.Linear(6, 3)
        self.act = nn.Tanh()
        self.fc1 = nn.Linear(4, 6)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_convert_reads_feature_sizes_from_an_x():
    _, report = it.convert(_OutOfOrder(), "direction:8", return_report=True)
    assert report.swapped == () and "x" in report.left[0].note
    converted, report = it.convert(_OutOfOrder(), "direction:8", x=torch.randn(3, 4), return_report=True)
    assert [r.path for r in report.swapped] == ["act"]
    assert converted.act.directions.shape == (8, 6)
    assert converted(torch.randn(3, 4)).shape == (3, 3)


def test_convert_errors():
    with pytest.raises(TypeError, match="model"):
        it.convert("not a model", "isotropic")
    with pytest.raises(KeyError, match="valid families"):
        it.convert(_mlp(), "rotational")
    with pytest.raises(KeyError, match="dims"):
        it.convert(_mlp(), "isotropic", dims={"99": 1})


# -- group averaging ----------------------------------------------------------------------------------------------


def _b3():
    swap = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])
    cycle = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])
    flip = torch.diag(torch.tensor([-1.0, 1, 1]))
    return groups.generate(torch.stack([swap, cycle, flip]))


def _dihedral(m):
    c, s = math.cos(2 * math.pi / m), math.sin(2 * math.pi / m)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    ref = torch.tensor([[1.0, 0], [0, -1]], dtype=torch.float64)
    return groups.generate(torch.stack([rot, ref]))


def _single_direction(v, k):
    return lambda x: k * torch.tanh(x @ v)[..., None] * v


@pytest.mark.parametrize(
    ("elements", "directions"),
    [
        (_b3(), torch.cat([torch.eye(3), -torch.eye(3)]).double()),
        (
            _dihedral(5),
            torch.tensor(
                [[math.cos(2 * math.pi * j / 5), math.sin(2 * math.pi * j / 5)] for j in range(5)], dtype=torch.float64
            ),
        ),
    ],
    ids=["B3-cross-polytope", "D5-pentagon"],
)
def test_symmetrise_equals_the_direction_set_activation(elements, directions, dtype):
    assert elements.shape[0] in (48, 10)
    v = directions.to(dtype)
    x = torch.randn(7, v.shape[1], dtype=dtype)
    averaged = families.symmetrise(_single_direction(v[0], v.shape[0]), elements)
    direct = it.nn.DirectionActivation(v, "tanh").to(dtype)
    torch.testing.assert_close(averaged(x), direct(x), atol=10 * tolerance(dtype), rtol=0)
    # equivariant under the finite group, and the unsymmetrised map is not
    for g in elements[:6].to(dtype):
        torch.testing.assert_close(averaged(x @ g.T), averaged(x) @ g.T, atol=10 * tolerance(dtype), rtol=0)
    raw = _single_direction(v[0], v.shape[0])
    g = elements[1].to(dtype)
    assert (raw(x @ g.T) - raw(x) @ g.T).abs().max() > 1e-2


def test_symmetrise_on_channel_axis_and_errors():
    elements = _b3()
    f = families.symmetrise(torch.tanh, elements, dim=1)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(f(x), torch.tanh(x))  # tanh is already B_n-equivariant: averaging changes nothing
    with pytest.raises(ValueError, match="group_elements"):
        families.symmetrise(torch.tanh, torch.eye(3))
    with pytest.raises(ValueError, match="size"):
        f(torch.randn(2, 4))


def test_convert_keeps_modules_that_are_already_the_family_s_and_lists_what_it_drops():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.LayerNorm(6), nn.Linear(6, 2))
    with torch.no_grad():
        model[3].weight.fill_(3.0)
    model.train()
    model(torch.randn(16, 4))  # non-trivial running statistics
    model.eval()
    same, report = it.convert(model, "elementwise", return_report=True)
    x = torch.randn(5, 4)
    torch.testing.assert_close(same(x), model(x))  # BatchNorm1d and the LayerNorm gain survive
    assert all("kept" in r.note for r in report.swapped if r.old in ("BatchNorm1d", "LayerNorm"))
    _, report = it.convert(model, "isotropic", return_report=True)
    notes = {r.old: r.note for r in report.swapped}
    assert "running_mean" in notes["BatchNorm1d"] and "weight" in notes["LayerNorm"]


def test_convert_matches_the_model_s_dtype():
    model = _mlp().double()
    for family in ("elementwise", "isotropic"):
        converted = it.convert(model, family).eval()
        assert converted(torch.randn(3, 5, dtype=torch.float64)).dtype == torch.float64
        assert {t.dtype for t in [*converted.parameters(), *converted.buffers()] if t.is_floating_point()} == {
            torch.float64
        }


def test_family_optimisers_share_their_defaults():
    params = [nn.Parameter(torch.randn(3))]
    decay = {f: families.get(f).make_optimiser(params).defaults["weight_decay"] for f in ("elementwise", "isotropic")}
    assert decay == {"elementwise": 0.0, "isotropic": 0.0}


@pytest.mark.parametrize("dim", [1, -2, 0])
def test_symmetrise_passes_fn_the_feature_axis_where_it_was(dim):
    """fn acting on ``dim`` sees a tensor of the input's rank with its feature axis at ``dim``."""
    elements = _dihedral(4)
    x = torch.randn(3, 2, 5, dtype=torch.float64) if dim != 0 else torch.randn(2, 3, 5, dtype=torch.float64)
    f = families.symmetrise(lambda t: it.functional.iso_tanh(t, dim=dim), elements, dim=dim)
    torch.testing.assert_close(f(x), it.functional.iso_tanh(x, dim=dim))  # already O(2)-equivariant
    one = families.symmetrise(lambda t: it.functional.iso_tanh(t, dim=-1), elements)
    v = torch.randn(2, dtype=torch.float64)
    torch.testing.assert_close(one(v), it.functional.iso_tanh(v))


# -- conversion of the models researchers use (feature axes from the site graph) ------------------------------------


class _LayerNorm2d(nn.LayerNorm):
    """timm/ConvNeXt-style LayerNorm over the channels of an (N, C, H, W) map: permute, normalise, permute back."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


class _ConvNeXtBlock(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.norm = _LayerNorm2d(c)
        self.pw1, self.act, self.pw2 = nn.Conv2d(c, 2 * c, 1), nn.GELU(), nn.Conv2d(2 * c, c, 1)

    def forward(self, x):
        h = self.norm(self.stem(x))
        return h + self.pw2(self.act(self.pw1(h)))


def test_convert_convnext_layernorm2d_on_the_channel_axis():
    model = _ConvNeXtBlock().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    iso, report = it.convert(model, "isotropic", x=x, return_report=True)
    rows = {r.path: r for r in report.swapped}
    assert rows["norm"].new == "ChiNorm" and rows["norm"].dim == 1 and iso.norm.dim == 1  # the channels, not W
    assert rows["act"].new == "IsoTanh" and iso.act.dim == 1
    assert report.left == ()
    iso.eval()
    # the converted primitives act on the channels: a channel rotation commutes with them; the isotropic
    # activation on the wrong axis would not (a rotation of W is the negative control)
    h = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    assert equivariance_error(iso.norm, h, groups.get("orthogonal"), dim=1) < 1e-9
    h = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    assert equivariance_error(iso.act, h, groups.get("orthogonal"), dim=1) < 1e-9
    assert equivariance_error(iso.act, h, groups.get("orthogonal"), dim=-1) > 1e-3
    assert iso(x).shape == model(x).shape


def test_convert_without_an_x_builds_a_probe_from_the_first_layer():
    model = _ConvNeXtBlock().double()
    _, report = it.convert(model, "isotropic", return_report=True)
    assert "probe input (2, 3, 8, 8)" in report.source
    assert {r.path: r.dim for r in report.swapped} == {"norm": 1, "act": 1}


class _BatchNormAct2d(nn.BatchNorm2d):
    """timm-style BatchNormAct2d: batch norm, then an activation submodule."""

    def __init__(self, c):
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))


class _BatchNormRelu(nn.BatchNorm2d):
    """Batch norm with a functional activation inside: more than a normaliser."""

    def forward(self, x):
        return torch.relu(super().forward(x))


class _SqueezeExcite(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.pool, self.reduce, self.act = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, r, 1), nn.SiLU()
        self.expand, self.gate = nn.Conv2d(r, c, 1), nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class _EfficientNetBlock(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, c, 3, padding=1), _BatchNormAct2d(c)
        self.dw, self.bn1, self.act1 = nn.Conv2d(c, c, 3, padding=1, groups=c), _BatchNormRelu(c), nn.SiLU()
        self.se = _SqueezeExcite(c)
        self.proj, self.bn2 = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        h = self.bn0(self.stem(x))
        h = self.se(self.act1(self.bn1(self.dw(h))))
        return torch.nn.functional.hardswish(self.bn2(self.proj(h)))


def test_convert_efficientnet_block_reports_every_normaliser_and_activation():
    model = _EfficientNetBlock().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    iso, report = it.convert(model, "isotropic", x=x, return_report=True)
    swapped = {r.path: r for r in report.swapped}
    left = {r.path: r for r in report.left}
    assert swapped["act1"].new == "IsoTanh" and swapped["act1"].dim == 1
    assert swapped["se.act"].new == "IsoTanh" and swapped["se.act"].dim == 1
    assert swapped["bn0.act"].dim == 1 and swapped["bn2"].new == "IsoBatchNorm"
    assert "gate" in left["se.gate"].note  # squeeze-excite: x * sigmoid(...) is not an activation to swap
    assert "submodules" in left["bn0"].note
    assert "more than batch normalisation" in left["bn1"].note
    assert any(r.old == "hardswish()" and "function" in r.note for r in report.left)
    # nothing silent: every normaliser and activation of the model is swapped or left with a reason
    norms_and_acts = {
        p
        for p, m in model.named_modules()
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.SiLU, nn.Sigmoid, nn.ReLU))
    }
    assert norms_and_acts <= set(swapped) | set(left)
    assert all(r.note for r in report.left)
    assert iso(x).shape == model(x).shape


def test_convert_transformers_activations_and_rmsnorm():
    transformers = pytest.importorskip("transformers")
    from transformers.activations import ACT2FN, GELUActivation, NewGELUActivation
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = LlamaRMSNorm(8)
            self.fc1, self.a1 = nn.Linear(8, 12), NewGELUActivation()
            self.fc2, self.a2 = nn.Linear(12, 12), GELUActivation()
            self.fc3, self.a3 = nn.Linear(12, 12), ACT2FN["gelu_new"]
            self.fc4, self.a4 = nn.Linear(12, 8), ACT2FN["silu"]

        def forward(self, x):
            h = self.a2(self.fc2(self.a1(self.fc1(self.norm(x)))))
            return self.a4(self.fc4(self.a3(self.fc3(h))))

    assert transformers.__version__
    model = Block().double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    iso, report = it.convert(model, "isotropic", x=x, return_report=True)
    swapped = {r.path: r for r in report.swapped}
    assert {p: (r.new, r.dim) for p, r in swapped.items()} == {
        "norm": ("ChiNorm", -1),
        "a1": ("IsoTanh", -1),
        "a2": ("IsoTanh", -1),
        "a3": ("IsoTanh", -1),
        "a4": ("IsoTanh", -1),
    }
    assert "normaliser" in swapped["norm"].note and "weight" in swapped["norm"].note
    assert report.left == ()
    assert iso.eval()(x).shape == (3, 5, 8)
    same, report = it.convert(model, "elementwise", x=x, return_report=True)
    assert type(same.norm) is LlamaRMSNorm and "kept" in {r.path: r for r in report.swapped}["norm"].note
    torch.testing.assert_close(same.norm(x), model.norm(x))


class _Gated(nn.Module):
    """A GLU-style unit: silu(gate(x)) * up(x); the SiLU's output multiplies another tensor."""

    def __init__(self):
        super().__init__()
        self.gate, self.up, self.down, self.act = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 4), nn.SiLU()

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


def test_convert_leaves_a_gating_activation_alone():
    _, report = it.convert(_Gated(), "isotropic", x=torch.randn(3, 4), return_report=True)
    (row,) = report.left
    assert row.path == "act" and "gate" in row.note and report.swapped == ()


def test_convert_x_that_does_not_fit():
    with pytest.raises(ValueError, match=r"^x does not fit the model"):
        it.convert(_mlp(), "isotropic", x=torch.randn(3, 7))
