"""Norm max-pooling: in each window keep the whole channel vector of largest norm (O(C)-equivariant).

``torch.nn.functional.max_pool2d`` takes the maximum of every channel separately, which commutes only with
permutations of the channels. Selecting one *site* per window by the norm of its channel vector, and keeping
that vector whole, commutes with every orthogonal map of the channels (REFERENCE.md §2.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from isotorch._functional.norm import _vector_norm
from isotorch._util import check_bool, check_floating, compute_dtype

__all__ = ["norm_max_pool2d"]


def norm_max_pool2d(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """2-D max-pooling by channel-vector norm: out[n, :, w] = x[n, :, s*], s* = argmax over sites s ∈ w of ‖x[n, :, s]‖.

    The site is chosen with ``max_pool2d(..., return_indices=True)`` on the per-site norms (computed without
    gradient, in float32 for half-precision inputs, overflow-safe) and the channel vectors are gathered, so the
    gradient flows to the selected vectors only (summed where windows overlap), as for ``max_pool2d``.

    Ties: among sites of equal norm, the first in row-major order within the window wins (``max_pool2d``'s
    rule). Equivariance holds up to that rule: a rotation keeps norms equal only to rounding, so sites whose
    norms agree to rounding may swap. A NaN in a channel vector makes its norm NaN, which ``max_pool2d``
    selects, so NaN spreads to exactly the windows that contain it. Padding sites are never selected.

    Args:
        x: floating-point (N, C, H, W) feature map; the channel axis (``dim=1``) is the feature axis.
        kernel_size: as ``torch.nn.functional.max_pool2d``
            (defaults: ``stride=None`` (= ``kernel_size``), ``padding=0``, ``dilation=1``, ``ceil_mode=False``).
        stride: see ``kernel_size``.
        padding: see ``kernel_size``.
        dilation: see ``kernel_size``.
        ceil_mode: see ``kernel_size``.

    Shape:
        - Input: (N, C, H, W) with C ≥ 1 (an empty batch passes through).
        - Output: (N, C, H_out, W_out) with max_pool2d's H_out, W_out.

    Examples:
        >>> import torch, isotorch as it
        >>> x = torch.zeros(1, 2, 2, 2)
        >>> x[0, :, 1, 0] = torch.tensor([3.0, -4.0])  # norm 5: the largest vector in the window
        >>> x[0, :, 0, 1] = torch.tensor([4.0, 0.0])  # the largest entry of channel 0, but norm 4
        >>> it.functional.norm_max_pool2d(x, 2).flatten().tolist()
        [3.0, -4.0]
    """
    check_floating(x)
    if x.ndim != 4:
        raise ValueError(f"x must be a 4-D (N, C, H, W) feature map, got shape {tuple(x.shape)}")
    batch, channels, height, width = x.shape
    if channels == 0:
        raise ValueError(f"x has no channels (shape {tuple(x.shape)}); expected C >= 1 along dim=1")
    check_bool(ceil_mode, "ceil_mode")
    xd = x.detach().to(compute_dtype(x.dtype))
    norms = None  # (N, 1, H, W): only their order matters, so squared norms serve while they stay normal floats
    if x.device.type == "cpu" and not torch.compiler.is_compiling():  # eager CPU: one fused pass, host check
        norms = (xd * xd).sum(1, keepdim=True)
        if bool(((norms < torch.finfo(norms.dtype).tiny) | torch.isinf(norms)).any()):
            norms = None  # overflow, underflow (or an exact zero vector): measure exactly
    if norms is None:
        norms = _vector_norm(xd, 1)
    _, index = F.max_pool2d(
        norms,
        kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        ceil_mode=ceil_mode,
        return_indices=True,
    )
    out_h, out_w = index.shape[-2:]
    # gather straight into the (B, C, out_h, out_w) output (not a view of a flat result): under
    # torch.compile(dynamic=True) Inductor cannot order the strides of such a view when out_h may be 1
    index = index.expand(batch, channels, out_h, out_w)
    return x.reshape(batch, channels, 1, height * width).expand(batch, channels, out_h, height * width).gather(3, index)
