"""Helpers shared by the studies' models (private)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["layer_features", "unparametrized"]


def layer_features(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Outputs of the named submodules on ``x`` (conv outputs averaged over space), under ``no_grad``."""
    found: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: found.__setitem__(name, o.detach()))
        for name in names
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {k: (v.flatten(2).mean(2) if v.ndim > 2 else v) for k, v in found.items()}


def unparametrized(model: nn.Module) -> nn.Module:
    """A copy without parametrisations (e.g. syre's W = θ + θ₀ baked into a plain weight), for saving and probing.

    ``torch.nn.utils.parametrize.remove_parametrizations`` on a deep copy would delete the property from the
    parametrised class that the copy shares with the original (breaking the original), so the copy's modules are
    given back their original class and plain parameters instead.

    Examples:
        >>> from isotorch.params import syre
        >>> net = syre(nn.Linear(3, 2), 0.1, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(unparametrized(net)(x), net(x)), type(unparametrized(net)).__name__, type(net).__name__
        (True, 'Linear', 'ParametrizedLinear')
    """
    import copy

    from torch.nn.utils import parametrize

    new = copy.deepcopy(model)
    for module in new.modules():
        if parametrize.is_parametrized(module):
            values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
            module.__class__ = parametrize.type_before_parametrizations(module)
            del module._modules["parametrizations"]
            for name, value in values.items():
                module.register_parameter(name, nn.Parameter(value))
    return new
