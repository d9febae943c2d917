"""Asymmetric layers that remove parameter symmetries by construction (REFERENCE §5.8; Lim et al., NeurIPS 2024).

*W-asymmetric* layers fix ``n_fix`` random entries of every output row (``AsymLinear``) or output filter
(``AsymConv2d``) to κ·F with F ~ N(0, 1), so that no permutation of hidden units maps the layer to itself:

    W_eff = M ⊙ W + (1 − M) ⊙ κF,        M_rj = 0 on the n_fix fixed entries S_r of row r, 1 elsewhere.

Since W enters only through M ⊙ W, the gradient of the fixed entries is exactly zero (the gradient mask); they are
not counted in :attr:`AsymLinear.n_free`. Masks and fixed values are buffers drawn from a ``torch.Generator``
(not Python's per-process ``hash``), so they are reproducible and move with ``.to()``.

The *σ-asymmetric* activation FiGLU(x) = sigmoid(F·x) ⊙ x, with a fixed F ~ N(0, 1)^{n×n}, respects no
non-trivial group (``groups == ("trivial",)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from isotorch._util import check_axis, check_finite, check_int

__all__ = ["AsymConv2d", "AsymLinear", "FiGLU", "asym_conv2d", "asym_linear", "figlu"]


def _mask_and_fixed(rows: int, cols: int, n_fix: int, kappa: float, generator, dtype, device):
    mask = torch.ones(rows, cols, dtype=dtype)
    for r in range(rows):
        idx = torch.randperm(cols, generator=generator)[:n_fix]
        mask[r, idx] = 0.0
    fixed = torch.randn(rows, cols, generator=generator, dtype=dtype) * kappa * (1 - mask)
    return mask.to(device), fixed.to(device)


def asym_linear(
    x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, fixed: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The W-asymmetric linear map x ↦ x·(M ⊙ W + F_fixed)ᵀ + b (functional twin of :class:`AsymLinear`)."""
    return F.linear(x, mask * weight + fixed, bias)


def asym_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    fixed: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
) -> torch.Tensor:
    """The W-asymmetric 2-D convolution with kernel M ⊙ W + F_fixed (functional twin of :class:`AsymConv2d`)."""
    return F.conv2d(x, mask * weight + fixed, bias, stride, padding, dilation)


class _WAsymmetric(nn.Module):
    """What W-asymmetric layers share: a 0/1 ``mask`` of free entries and the ``fixed`` entries (1 − M) ⊙ κF."""

    _kind, _unit = "layer", "row"
    weight: torch.Tensor
    bias: torch.Tensor | None
    mask: torch.Tensor
    fixed: torch.Tensor
    n_fix: int
    kappa: float

    @property
    def n_free(self) -> int:
        """The number of trainable weight entries (fixed entries and biases excluded)."""
        return int(self.mask.sum())

    @property
    def _isotorch_params_broken(self) -> str | None:
        if self.n_fix == 0:
            return None
        return f"W-asymmetric {self._kind} ({self.n_fix} fixed entries per {self._unit}, κ={self.kappa:g})"

    def effective_weight(self) -> torch.Tensor:
        """W_eff = M ⊙ W + (1 − M) ⊙ κF."""
        return self.mask * self.weight + self.fixed


class AsymLinear(_WAsymmetric):
    """A W-asymmetric linear layer: ``n_fix`` entries of each output row are fixed to κ·N(0, 1).

    W_eff = M ⊙ W + (1 − M) ⊙ κF, y = x·W_effᵀ + b.

    Args:
        in_features: input size, as in ``nn.Linear``.
        out_features: output size, as in ``nn.Linear``.
        bias: learn an additive bias (default ``True``).
        n_fix: fixed entries per output row, 0 ≤ n_fix ≤ in_features.
        kappa: the scale κ of the fixed entries (default 1.0).
        generator: a ``torch.Generator`` for the mask, the fixed values and the initial weights.
        device: factory arguments.
        dtype: factory arguments.

    Shape:
        - Input: (*, in_features). Output: (*, out_features).

    Examples:
        >>> import torch
        >>> from isotorch.params import AsymLinear
        >>> layer = AsymLinear(6, 4, n_fix=2, generator=torch.Generator().manual_seed(0))
        >>> layer(torch.randn(3, 6)).shape, layer.n_free
        (torch.Size([3, 4]), 16)
    """

    _isotorch_params_layer = "linear"
    _isotorch_params_leaf = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        n_fix: int,
        kappa: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features", minimum=0, maximum=1 << 62)
        self.out_features = check_int(out_features, "out_features", minimum=0, maximum=1 << 62)
        self.n_fix = check_int(n_fix, "n_fix", minimum=0, maximum=in_features)
        self.kappa = check_finite(kappa, "kappa")
        dtype = dtype or torch.get_default_dtype()
        bound = 1 / math.sqrt(max(in_features, 1))
        w = (torch.rand(out_features, in_features, generator=generator, dtype=dtype) * 2 - 1) * bound
        mask, fixed = _mask_and_fixed(out_features, in_features, n_fix, self.kappa, generator, dtype, device)
        self.weight = nn.Parameter(w.to(device) * mask)
        if bias:
            b = (torch.rand(out_features, generator=generator, dtype=dtype) * 2 - 1) * bound
            self.bias = nn.Parameter(b.to(device))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("mask", mask)
        self.register_buffer("fixed", fixed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return asym_linear(x, self.weight, self.mask, self.fixed, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"n_fix={self.n_fix}, kappa={self.kappa:g}"
        )


class AsymConv2d(_WAsymmetric):
    """A W-asymmetric 2-D convolution: ``n_fix`` entries of each output filter (in × kh × kw) are fixed.

    Args:
        in_channels: as in ``nn.Conv2d``
            (``groups`` = 1, zero padding).
        out_channels: see ``in_channels``.
        kernel_size: see ``in_channels``.
        stride: see ``in_channels``.
        padding: see ``in_channels``.
        dilation: see ``in_channels``.
        bias: see ``in_channels``.
        n_fix: fixed entries per output filter, 0 ≤ n_fix ≤ in_channels·kh·kw.
        kappa: the scale κ of the fixed entries (default 1.0).
        generator: a ``torch.Generator`` for the mask, the fixed values and the initial weights.
        device: factory arguments.
        dtype: factory arguments.

    Shape:
        - Input: (N, in_channels, H, W). Output: (N, out_channels, H', W') as for ``nn.Conv2d``.

    Examples:
        >>> import torch
        >>> from isotorch.params import AsymConv2d
        >>> conv = AsymConv2d(3, 4, 3, padding=1, n_fix=5, generator=torch.Generator().manual_seed(0))
        >>> conv(torch.randn(2, 3, 8, 8)).shape, conv.n_free
        (torch.Size([2, 4, 8, 8]), 88)
    """

    _kind, _unit = "convolution", "filter"

    _isotorch_params_layer = "conv"
    _isotorch_params_leaf = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        *,
        n_fix: int,
        kappa: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups = 1
        fan_in = in_channels * kh * kw
        self.n_fix = check_int(n_fix, "n_fix", minimum=0, maximum=fan_in)
        self.kappa = check_finite(kappa, "kappa")
        dtype = dtype or torch.get_default_dtype()
        bound = 1 / math.sqrt(max(fan_in, 1))
        w = (torch.rand(out_channels, fan_in, generator=generator, dtype=dtype) * 2 - 1) * bound
        mask, fixed = _mask_and_fixed(out_channels, fan_in, n_fix, self.kappa, generator, dtype, device)
        shape = (out_channels, in_channels, kh, kw)
        self.weight = nn.Parameter((w.to(device) * mask).reshape(shape))
        if bias:
            b = (torch.rand(out_channels, generator=generator, dtype=dtype) * 2 - 1) * bound
            self.bias = nn.Parameter(b.to(device))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("mask", mask.reshape(shape))
        self.register_buffer("fixed", fixed.reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return asym_conv2d(x, self.weight, self.mask, self.fixed, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, n_fix={self.n_fix}, kappa={self.kappa:g}"
        )


def figlu(x: torch.Tensor, weight: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """FiGLU(x) = sigmoid(F·x) ⊙ x along ``dim`` for a fixed (n, n) matrix F (functional twin of :class:`FiGLU`)."""
    if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"weight must be a square (n, n) matrix, got shape {tuple(weight.shape)}")
    if not -x.ndim <= dim < x.ndim or x.shape[dim] != weight.shape[0]:
        raise ValueError(f"x must have size {weight.shape[0]} along dim={dim}, got shape {tuple(x.shape)}")
    moved = x.movedim(dim, -1)
    return (torch.sigmoid(moved @ weight.mT) * moved).movedim(-1, dim)


class FiGLU(nn.Module):
    """σ-asymmetric gated activation FiGLU(x) = sigmoid(F·x) ⊙ x with a fixed random F ~ N(0, 1)^{n×n}.

    Args:
        features: n, the size of the feature axis.
        dim: the feature axis (default ``-1``).
        generator: a ``torch.Generator`` for F.
        device: factory arguments for F.
        dtype: factory arguments for F.

    Shape:
        - Input: (*, n, *) with the feature axis at ``dim``. Output: same shape.

    Attributes:
        role: ``"activation"``.
        groups: ``("trivial",)``.

    Examples:
        >>> import torch
        >>> from isotorch.params import FiGLU
        >>> act = FiGLU(5, generator=torch.Generator().manual_seed(0))
        >>> act(torch.randn(2, 5)).shape, act.groups
        (torch.Size([2, 5]), ('trivial',))
    """

    role = "activation"
    weight: torch.Tensor

    def __init__(
        self,
        features: int,
        dim: int = -1,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.features = check_int(features, "features")
        self.dim = check_axis(dim)
        w = torch.randn(features, features, generator=generator, dtype=dtype or torch.get_default_dtype())
        self.register_buffer("weight", w.to(device))

    @property
    def groups(self) -> tuple[str, ...]:
        """The canonical groups FiGLU is equivariant to: only the trivial group."""
        return ("trivial",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return figlu(x, self.weight, self.dim)

    def extra_repr(self) -> str:
        return f"features={self.features}, dim={self.dim}"
