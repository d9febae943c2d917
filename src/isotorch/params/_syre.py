"""syre: remove parameter symmetries with a frozen random offset (REFERENCE §5.8; Ziyin, Xu, Chuang, ICLR 2025).

Each weight W (every floating parameter with at least two dimensions; biases too with ``include_bias``) is
reparametrised with :func:`torch.nn.utils.parametrize.register_parametrization` as

    offset:    W = θ + θ₀                  θ₀ ~ N(0, σ₀²) frozen
    diagonal:  W = θ₀ + θ ⊙ d^{−1/2}       d ~ exp(N(0, 1)) frozen, positive

where θ is the trainable ``parametrizations.weight.original``, initialised so that W is unchanged. Weight decay
on θ then is syre's γ‖W − θ₀‖² (weight decay towards a random point), or, for ``"diagonal"``, the penalty
γ(W − θ₀)ᵀD(W − θ₀) with a random positive diagonal D — needed for rotation symmetries, since plain L2 is itself
rotation-invariant. A reflection I − 2O keeps the regulariser only if Oθ₀ = 0, which has probability 0.

The function is unchanged; the *loss with weight decay* loses the site symmetries, and :func:`symmetries` reports
every site that touches a reparametrised weight as broken.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from isotorch._util import check_choice, check_finite, check_generator

__all__ = ["SyreOffset", "syre"]

KINDS = ("offset", "diagonal")


class SyreOffset(nn.Module):
    """The syre parametrisation W = θ₀ + θ ⊙ s (s = 1 for ``"offset"``, d^{−1/2} for ``"diagonal"``).

    Args:
        offset: the frozen offset θ₀ (a buffer).
        scale: the frozen positive elementwise scale s (a buffer), or ``None`` for 1.

    Shape:
        - Input: θ, the shape of ``offset``. Output: W, the same shape.
    """

    offset: torch.Tensor
    scale: torch.Tensor | None

    def __init__(self, offset: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("offset", offset.detach().clone())
        self.register_buffer("scale", None if scale is None else scale.detach().clone())

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return self.offset + (theta if self.scale is None else theta * self.scale)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        diff = weight - self.offset
        return diff if self.scale is None else diff / self.scale

    def extra_repr(self) -> str:
        return f"shape={tuple(self.offset.shape)}, diagonal={self.scale is not None}"


def syre(
    model: nn.Module,
    sigma0: float,
    kind: str = "offset",
    *,
    generator: torch.Generator | None = None,
    include_bias: bool = False,
) -> nn.Module:
    """A copy of ``model`` whose weights are reparametrised around a frozen random point (syre).

    Args:
        model: the network (not modified).
        sigma0: the standard deviation σ₀ ≥ 0 of the offset θ₀ (0: no offset, only useful with ``"diagonal"``).
        kind: ``"offset"`` (W = θ + θ₀) or ``"diagonal"`` (W = θ₀ + θ ⊙ d^{−1/2}, a random positive diagonal
            penalty for continuous groups).
        generator: a ``torch.Generator`` for the offsets (default: torch's global RNG).
        include_bias: also reparametrise 1-D parameters (biases, norm gains); the reference gives biases no
            offset (default ``False``).

    Returns:
        The new model; train it with weight decay (e.g. ``AdamW(weight_decay=γ)``) to apply the penalty.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from isotorch.params import syre, symmetries
        >>> model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
        >>> x = torch.randn(4, 3)
        >>> broken = syre(model, 0.1, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(broken(x), model(x), atol=1e-6)
        True
        >>> symmetries(broken, x)["0"].status
        'broken'
    """
    generator = check_generator(generator)
    check_choice(kind, "kind", KINDS)
    check_finite(sigma0, "sigma0", minimum=0)
    if kind == "offset" and sigma0 == 0:
        raise ValueError("sigma0 must be > 0 for kind='offset' (a zero offset removes nothing)")
    new = copy.deepcopy(model)
    targets = []
    for module in new.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.is_floating_point() and (p.ndim >= 2 or (include_bias and p.ndim >= 1)):
                targets.append((module, name, p))
    if not targets:
        raise ValueError("the model has no weights to reparametrise")
    for module, name, p in targets:
        offset = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) * sigma0
        scale = None
        if kind == "diagonal":
            scale = torch.exp(-0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype)).to(p.device)
        parametrize.register_parametrization(module, name, SyreOffset(offset, scale))
    return new
