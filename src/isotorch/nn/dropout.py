"""Isotropic dropout as a module: :class:`IsoDropout`."""

from __future__ import annotations

import torch
from torch import nn

from isotorch._functional.dropout import MODES, _check_mode, _check_p, iso_dropout
from isotorch._util import check_axis

__all__ = ["IsoDropout"]


class IsoDropout(nn.Module):
    """Isotropic dropout: identity in evaluation; in training unbiased, E[out] = x, with a rotation-invariant law.

    ``torch.nn.Dropout`` masks coordinates independently, so the law of its output is only invariant under
    signed permutations. The modes here (see :func:`isotorch.functional.iso_dropout`) make out(gx) and
    g·out(x) equal in distribution for every orthogonal g, which is what ``groups == ("orthogonal",)`` means for
    this module in training:

    - ``"vector"``: drop whole vectors with probability p and scale the kept ones by 1/(1 − p) (pathwise
      equivariant for a fixed random state);
    - ``"projection"``: (n/k)·P_k x with P_k a Haar-random rank-k projection, k = round((1 − p)·n);
    - ``"gaussian"``: x + s‖x‖ξ, ξ ~ N(0, I/n), s = √(p/(1 − p)).

    Args:
        p: drop rate in [0, 1) (default ``0.5``).
        mode: ``"vector"``, ``"projection"`` or ``"gaussian"`` (default ``"vector"``).
        dim: feature axis (default ``-1``).

    Shape:
        - Input: any shape with a non-empty axis ``dim``.
        - Output: same shape as the input.

    Examples:
        >>> import torch, isotorch as it
        >>> drop = it.nn.IsoDropout(0.25, mode="gaussian")
        >>> drop
        IsoDropout(p=0.25, mode='gaussian', dim=-1)
        >>> x = torch.randn(3, 8)
        >>> bool((drop.eval()(x) == x).all()), drop.train()(x).shape
        (True, torch.Size([3, 8]))
    """

    role = "dropout"
    modes = MODES

    def __init__(self, p: float = 0.5, mode: str = "vector", dim: int = -1) -> None:
        super().__init__()
        self.p = _check_p(p)
        self.mode = _check_mode(mode)
        self.dim = check_axis(dim)

    @property
    def groups(self) -> tuple[str, ...]:
        """Canonical groups the module is equivariant to (in distribution, in training) along ``dim``."""
        return ("orthogonal",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return iso_dropout(x, self.p, training=self.training, mode=self.mode, dim=self.dim)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}, dim={self.dim}"
