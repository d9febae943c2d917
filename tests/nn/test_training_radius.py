"""Isotropic nets start unsaturated: the radius entering an isotropic activation is O(1) at initialisation
(issue 12 item 4; docs/isotropic_training.md).

The ResNet-18 is built here by hand with torchvision's layout and initialisation (torchvision is not a dependency).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import isotorch as it
from isotorch import nn as inn


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class _ResNet18(nn.Module):
    """torchvision's resnet18: 7×7 stem, max-pool, four stages of two basic blocks (64…512), kaiming fan_out."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for i, width in enumerate((64, 128, 256, 512)):
            stages.append(nn.Sequential(_BasicBlock(cin, width, 1 if i == 0 else 2), _BasicBlock(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _saturated_fraction(model: nn.Module, x: torch.Tensor) -> tuple[float, int]:
    """Share of the vectors entering the IsoTanh modules with tanh(‖x‖) > 0.99, and how many calls were seen."""
    counts = [0, 0, 0]

    def hook(module, args):
        r = args[0].detach().norm(dim=module.dim)
        counts[0] += int((torch.tanh(r) > 0.99).sum())
        counts[1] += r.numel()
        counts[2] += 1

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, inn.IsoTanh)]
    try:
        with torch.no_grad():
            model.train()(x)
    finally:
        for h in handles:
            h.remove()
    return counts[0] / counts[1], counts[2]


@pytest.fixture(scope="module")
def converted_resnet():
    torch.manual_seed(0)
    return it.convert(_ResNet18(), "isotropic")


def test_converted_resnet18_starts_unsaturated(converted_resnet):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    fraction, calls = _saturated_fraction(converted_resnet, x)
    assert calls == 17  # the stem and two activations in each of the eight blocks
    assert fraction <= 0.5, f"{fraction:.1%} of IsoTanh inputs are saturated at initialisation"


def test_control_per_feature_variance_saturates(converted_resnet):
    """Negative control: normalising each feature to variance 1 (as BatchNorm does) puts the radius near √C,
    and then nearly every IsoTanh input is saturated: the test above has power."""
    handles = [
        m.register_forward_hook(lambda mod, args, out: out * math.sqrt(mod.num_features))
        for m in converted_resnet.modules()
        if isinstance(m, inn.IsoBatchNorm)
    ]
    try:
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        fraction, _ = _saturated_fraction(converted_resnet, x)
    finally:
        for h in handles:
            h.remove()
    assert fraction > 0.9


@pytest.mark.parametrize("kind", ["batch", "layer"])
@pytest.mark.parametrize("width", [16, 512])
@pytest.mark.parametrize("scale", [1e-2, 1.0, 30.0])
def test_family_normalisers_give_unit_radius_at_any_width(kind, width, scale):
    """Natively: the isotropic family's normalisers map vectors of any width and scale to a mean radius O(1)."""
    norm = it.families.get("isotropic").norm(width, -1, kind).train()
    x = scale * torch.randn(256, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + scale
    radius = norm(x).detach().norm(dim=-1)
    assert 0.5 < float(radius.mean()) < 1.5
    assert float((torch.tanh(radius) > 0.99).double().mean()) < 0.05
