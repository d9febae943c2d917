"""Isotropic normalisers as modules: :class:`IsoRMSNorm`, :class:`ChiNorm`, :class:`IsoBatchNorm`.

Each divides by a scalar that is invariant under rotations of the feature vectors and has at most a scalar
gain, so its symmetry group along ``dim`` is O(n) (``groups == ("orthogonal",)``), where ``torch.nn.LayerNorm``,
``RMSNorm`` and ``BatchNorm`` with their elementwise affine parameters only have permutations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from isotorch._functional.norm import (
    _check_eps,
    _check_momentum,
    chi_norm,
    iso_batch_norm,
    iso_rms_norm,
)
from isotorch._util import check_axis, check_bool, check_int

__all__ = ["ChiNorm", "IsoBatchNorm", "IsoRMSNorm"]


def _check_input_features(x: torch.Tensor, dim: int, num_features: int) -> None:
    if isinstance(x, torch.Tensor) and -x.ndim <= dim < x.ndim and x.shape[dim] != num_features:
        raise ValueError(
            f"expected x.shape[{dim}] == num_features = {num_features}, got input of shape {tuple(x.shape)}"
        )


class IsoRMSNorm(nn.Module):
    """RMS normalisation with a scalar gain, γ·x/√(mean(x²) + ε); O(n)-equivariant along ``dim``.

    The scalar gain γ (a 0-d ``Parameter``) keeps the group O(n); ``torch.nn.RMSNorm``'s elementwise gain
    would reduce it to permutations. See :func:`isotorch.functional.iso_rms_norm`.

    Args:
        dim: feature axis (default ``-1``).
        eps: ε added to the mean square, positive (default ``None``: ``torch.finfo(x.dtype).eps``).
        gain: learn a scalar gain γ, initialised to 1 (default ``True``).
        device: device of the gain.
        dtype: dtype of the gain.

    Shape:
        - Input: any shape with a non-empty axis ``dim``.
        - Output: same shape as the input.

    Examples:
        >>> import torch, isotorch as it
        >>> norm = it.nn.IsoRMSNorm()
        >>> norm
        IsoRMSNorm(dim=-1, eps=None, gain=True)
        >>> norm(torch.randn(2, 5)).shape, norm.weight.shape, norm.groups
        (torch.Size([2, 5]), torch.Size([]), ('orthogonal',))
    """

    role = "norm"

    def __init__(
        self,
        dim: int = -1,
        eps: float | None = None,
        gain: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_axis(dim)
        self.eps = None if eps is None else _check_eps(eps)
        self.gain = check_bool(gain, "gain")
        if gain:
            self.weight = nn.Parameter(torch.empty((), device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    @property
    def groups(self) -> tuple[str, ...]:
        """Canonical groups the module is equivariant to along ``dim``: ``("orthogonal",)``."""
        return ("orthogonal",)

    def reset_parameters(self) -> None:
        """Set the gain to 1."""
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return iso_rms_norm(x, self.weight, dim=self.dim, eps=self.eps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}, gain={self.gain}"


class ChiNorm(nn.Module):
    """ChiNorm: divide by one scalar estimate μ̂ of E‖h‖, x/(μ̂ + ε); O(n)-equivariant along ``dim``.

    The running estimate ``running_norm`` (a 0-d buffer) starts at √num_features, the approximate mean of the
    χ distribution of ‖h‖ for h ~ N(0, I). In training the batch estimate mean‖h‖ normalises the batch
    (gradients flow through it, as through BatchNorm's statistics) and is folded into ``running_norm`` with
    ``momentum``; in evaluation ``running_norm`` is frozen. Each sample keeps its radius relative to the others,
    so next to an isotropic activation the layer does not collapse onto a shell as x/‖x‖ would. After
    normalisation the mean norm is 1. See :func:`isotorch.functional.chi_norm`.

    Args:
        num_features: n, the size of the feature axis.
        dim: feature axis (default ``-1``).
        momentum: weight of the batch estimate in the running update (default ``0.01``).
        eps: ε added to the estimate (default ``1e-5``).
        device: device of the running estimate.
        dtype: dtype of the running estimate.

    Shape:
        - Input: any shape with size n along ``dim``; in training, at least one vector.
        - Output: same shape as the input.

    Examples:
        >>> import torch, isotorch as it
        >>> norm = it.nn.ChiNorm(16)
        >>> norm
        ChiNorm(16, dim=-1, momentum=0.01, eps=1e-05)
        >>> float(norm.running_norm)
        4.0
        >>> _ = norm(torch.randn(8, 16))  # training mode: the running estimate moves towards the batch
        >>> float(norm.running_norm) != 4.0
        True
    """

    role = "norm"
    running_norm: torch.Tensor

    def __init__(
        self,
        num_features: int,
        dim: int = -1,
        momentum: float = 0.01,
        eps: float = 1e-5,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = check_int(num_features, "num_features")
        self.dim = check_axis(dim)
        self.momentum = _check_momentum(momentum)
        self.eps = _check_eps(eps)
        self.register_buffer("running_norm", torch.empty((), device=device, dtype=dtype))
        self.reset_parameters()

    @property
    def groups(self) -> tuple[str, ...]:
        """Canonical groups the module is equivariant to along ``dim``: ``("orthogonal",)``."""
        return ("orthogonal",)

    def reset_running_stats(self) -> None:
        """Set the running estimate to √num_features."""
        self.running_norm.fill_(math.sqrt(self.num_features))

    def reset_parameters(self) -> None:
        """Reset the running estimate (ChiNorm has no learnable parameters)."""
        self.reset_running_stats()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input_features(x, self.dim, self.num_features)
        return chi_norm(
            x, self.running_norm, training=self.training, momentum=self.momentum, eps=self.eps, dim=self.dim
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, dim={self.dim}, momentum={self.momentum}, eps={self.eps}"


class IsoBatchNorm(nn.Module):
    """Isotropic batch normalisation, γ·(x − μ)/√(σ² + ε) with a mean *vector* μ and a *scalar* variance σ².

    Statistics are taken over every position off ``dim``: the batch of an (N, C) input with ``dim=-1``, or the
    batch and spatial axes of an (N, C, H, W) map with ``dim=1``. σ² is the total variance E‖x − μ‖², so the
    output vectors have a mean squared *norm* of 1 (not a variance of 1 per feature, which would put their radius
    near √n and saturate an isotropic activation after it; docs/isotropic_training.md). Buffers:
    ``running_mean`` (n,) and ``running_var`` (0-d), updated in training as in ``torch.nn.BatchNorm``. See
    :func:`isotorch.functional.iso_batch_norm`.

    **Affine.** Only a scalar gain γ (``affine=True``). A bias vector b would make the map x ↦ … + b, which
    commutes with g only if gb = b: b transforms as b → gb, a symmetry of the *parameters* (§1.3) but not of the
    primitive. The running mean is such a vector too: training mode is O(n)-equivariant in x, evaluation mode
    is equivariant jointly with ``running_mean → g·running_mean`` (in x alone only while the running mean is 0,
    e.g. right after construction, or with ``center=False``, which never subtracts a mean).

    Args:
        num_features: n, the size of the feature axis.
        dim: feature axis (default ``-1``; use ``1`` for (N, C, H, W)).
        momentum: weight of the batch statistics in the running update (default ``0.1``).
        eps: ε added to the variance (default ``1e-5``).
        affine: learn a scalar gain γ, initialised to 1 (default ``True``).
        center: subtract the mean vector (default ``True``).
        device: device of the gain and the running statistics.
        dtype: dtype of the gain and the running statistics.

    Shape:
        - Input: any shape with size n along ``dim``; in training, at least two vectors.
        - Output: same shape as the input.

    Examples:
        >>> import torch, isotorch as it
        >>> bn = it.nn.IsoBatchNorm(3, dim=1)
        >>> bn
        IsoBatchNorm(3, dim=1, momentum=0.1, eps=1e-05, affine=True, center=True)
        >>> y = bn(torch.randn(4, 3, 5, 5) + 2)
        >>> bn.running_mean.shape, bn.running_var.shape, bool(y.mean(dim=(0, 2, 3)).abs().max() < 1e-5)
        (torch.Size([3]), torch.Size([]), True)
    """

    role = "norm"
    weight: torch.Tensor | None
    running_mean: torch.Tensor | None
    running_var: torch.Tensor

    def __init__(
        self,
        num_features: int,
        dim: int = -1,
        momentum: float = 0.1,
        eps: float = 1e-5,
        affine: bool = True,
        center: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = check_int(num_features, "num_features")
        self.dim = check_axis(dim)
        self.momentum = _check_momentum(momentum)
        self.eps = _check_eps(eps)
        self.affine = check_bool(affine, "affine")
        self.center = check_bool(center, "center")
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.empty((), **factory))
        else:
            self.register_parameter("weight", None)
        if center:
            self.register_buffer("running_mean", torch.empty(num_features, **factory))
        else:
            self.register_buffer("running_mean", None)
        self.register_buffer("running_var", torch.empty((), **factory))
        self.reset_parameters()

    @property
    def groups(self) -> tuple[str, ...]:
        """Canonical groups the module is equivariant to along ``dim``: ``("orthogonal",)`` (see the class
        docstring for the running mean in evaluation)."""
        return ("orthogonal",)

    def reset_running_stats(self) -> None:
        """Set the running mean to 0 and the running total variance to n (E‖h‖² for h ~ N(0, I), as ChiNorm's
        running norm starts at √n)."""
        if self.running_mean is not None:
            self.running_mean.zero_()
        self.running_var.fill_(float(self.num_features))

    def reset_parameters(self) -> None:
        """Reset the running statistics and set the gain to 1."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input_features(x, self.dim, self.num_features)
        return iso_batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
            dim=self.dim,
            center=self.center,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, dim={self.dim}, momentum={self.momentum}, eps={self.eps}, "
            f"affine={self.affine}, center={self.center}"
        )
