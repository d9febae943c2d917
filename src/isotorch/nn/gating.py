"""Isotropic gating as a module: :class:`IsoGate`, the O(n)-equivariant analogue of ``torch.nn.GLU``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from isotorch._functional.gating import GATE_MODES, PROFILES, _check_gate_mode, _check_offset, _check_profile, iso_gate
from isotorch._util import check_axis, check_floating, feature_dim

__all__ = ["IsoGate"]


class IsoGate(nn.Module):
    """Isotropic GLU: split the input in halves (a, b) along ``dim`` and return a·φ(t) with a scalar gate t.

    ``mode="norm"``: t = ‖b‖ − offset (default offset √(n/2), the typical norm of a standard-normal half);
    ``mode="inner"``: t = a·b/√(n/2) − offset (default offset 0). See :func:`isotorch.functional.iso_gate`.

    ``groups == ("orthogonal",)`` means: the same orthogonal g acting on both halves of the input gives g acting
    on the output, module(cat(g·a, g·b)) = g·module(cat(a, b)). In ``"norm"`` mode the halves may even be
    rotated independently. ``torch.nn.GLU``, a ⊙ σ(b), commutes only with a permutation applied to both halves.
    The module has no parameters, like GLU, so the layer before it sets the gate's scale.

    Args:
        dim: axis to split (default ``-1``); its size must be even.
        profile: φ, ``"sigmoid"``, ``"tanh"``, ``"silu"``, ``"identity"`` or a callable (default ``"sigmoid"``).
        mode: ``"norm"`` or ``"inner"`` (default ``"norm"``).
        offset: constant subtracted from t (default ``None``: √(n/2) for ``"norm"``, 0 for ``"inner"``).

    Shape:
        - Input: (*, 2m, *) with the even axis at ``dim``.
        - Output: (*, m, *).

    Examples:
        >>> import torch, isotorch as it
        >>> gate = it.nn.IsoGate(mode="inner")
        >>> gate
        IsoGate(dim=-1, profile='sigmoid', mode='inner', offset=None)
        >>> gate(torch.randn(3, 8)).shape
        torch.Size([3, 4])
    """

    role = "gate"
    profiles = tuple(PROFILES)
    modes = GATE_MODES

    def __init__(
        self,
        dim: int = -1,
        profile: str | Callable[[torch.Tensor], torch.Tensor] = "sigmoid",
        mode: str = "norm",
        offset: float | None = None,
    ) -> None:
        super().__init__()
        _check_profile(profile)
        self.dim = check_axis(dim, what="the axis to split")
        self.profile = profile
        self.mode = _check_gate_mode(mode)
        self.offset = _check_offset(offset)

    @property
    def groups(self) -> tuple[str, ...]:
        """Canonical groups g such that g on both halves of the input gives g on the output: ``("orthogonal",)``."""
        return ("orthogonal",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_floating(x)
        d = feature_dim(x, self.dim)
        if x.shape[d] % 2 != 0:
            raise ValueError(
                f"IsoGate splits dim={self.dim} into two halves; its size must be even, got shape {tuple(x.shape)}"
            )
        a, b = x.chunk(2, dim=d)
        return iso_gate(a, b, dim=self.dim, profile=self.profile, mode=self.mode, offset=self.offset)

    def extra_repr(self) -> str:
        profile = self.profile if isinstance(self.profile, str) else getattr(self.profile, "__name__", "callable")
        return f"dim={self.dim}, profile={profile!r}, mode={self.mode!r}, offset={self.offset}"
