"""Norm max-pooling as a module: :class:`NormMaxPool2d`."""

from __future__ import annotations

import torch
from torch import nn

from isotorch._functional.pooling import norm_max_pool2d

__all__ = ["NormMaxPool2d"]


class NormMaxPool2d(nn.Module):
    """2-D max-pooling by channel-vector norm: each window keeps the channel vector of largest norm.

    The channel axis (``dim = 1`` of an (N, C, H, W) map) is the feature axis; the module commutes with every
    orthogonal map of the channels (``groups == ("orthogonal",)``), whereas ``torch.nn.MaxPool2d`` pools each
    channel separately and commutes only with channel permutations. Ties go to the first site in row-major
    order within the window. See :func:`isotorch.functional.norm_max_pool2d`.

    Args:
        kernel_size: window size.
        stride: window stride (default ``None``: ``kernel_size``).
        padding: implicit padding, never selected (default ``0``).
        dilation: spacing of the window's sites (default ``1``).
        ceil_mode: use ceil instead of floor for the output size (default ``False``).

    Shape:
        - Input: (N, C, H, W).
        - Output: (N, C, H_out, W_out), as ``torch.nn.MaxPool2d``.

    Examples:
        >>> import torch, isotorch as it
        >>> pool = it.nn.NormMaxPool2d(2)
        >>> pool
        NormMaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
        >>> pool(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 3, 4, 4])
    """

    role = "pool"
    dim = 1

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode

    @property
    def groups(self) -> tuple[str, ...]:
        """Canonical groups the module is equivariant to along the channel axis: ``("orthogonal",)``."""
        return ("orthogonal",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )
