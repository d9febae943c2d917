"""Activation modules chosen by symmetry group: isotropic, direction-set and block-isotropic.

Each module declares its symmetry: ``role = "activation"`` and ``groups``, the canonical group keys (see
:mod:`isotorch.groups`) that it is equivariant to along its feature axis ``dim``:

=============================  ============================================================================
module                         groups
=============================  ============================================================================
:class:`IsotropicActivation`   ``("orthogonal",)``, the top of the lattice (also :class:`IsoTanh`,
                               :class:`IsoReLU`)
:class:`BlockIsotropicActivation`  ``("block_orthogonal:k",)``; for k = 1 also ``"signed_permutation"``
:class:`DirectionActivation`   ``("signed_permutation",)`` for ±standard-basis directions with odd σ (or
                               with each ±e_i present equally often); ``("permutation",)`` for the standard
                               basis with a non-odd σ; otherwise ``("trivial",)``
=============================  ============================================================================

A generic direction set, e.g. Thomson points, has a trivial exact symmetry group: the function is equivariant
only to the finite group Sym(V) of orthogonal maps that permute its directions, which for generic V is {I}.
More directions make the activation closer to isotropic *in distribution*, not equivariant to a bigger group.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from isotorch._functional import activation as _F
from isotorch._util import check_axis, check_int

__all__ = [
    "BlockIsotropicActivation",
    "DirectionActivation",
    "IsoReLU",
    "IsoTanh",
    "IsotropicActivation",
]


def _profile_repr(profile) -> str:
    if isinstance(profile, str):
        return repr(profile)
    if isinstance(profile, _F.Profile):
        return repr(profile.name)
    return getattr(profile, "__name__", type(profile).__name__)


class IsotropicActivation(nn.Module):
    """Isotropic activation f(x) = σ(ρ)/ρ · x along ``dim``, ρ = √(‖x‖² + o) (o = 0 unless a length is set).

    Squashes the length of each feature vector and keeps its direction, so f(Rx) = Rf(x) for every orthogonal R.
    See :func:`isotorch.functional.iso_activation` for the numerics.

    The profile acts on the radius ‖x‖ itself (tanh saturates beyond ‖x‖ ≈ 2.6), so what reaches it at
    initialisation matters: the isotropic normalisers (:class:`IsoBatchNorm`, :class:`ChiNorm`) hand it vectors
    of mean norm about 1 at any width, whereas a per-feature variance of 1 would give ‖x‖ ≈ √n and saturate it
    (docs/isotropic_training.md).

    Args:
        profile: a name in :data:`isotorch.functional.PROFILES` (``"tanh"``, ``"log1p"``, ``"softsign"``,
            ``"relu"``), a :class:`~isotorch.functional.Profile`, or a callable σ. Default ``"tanh"``.
        dim: the feature axis (``1`` for the channels of a conv feature map). Default ``-1``.
        length: the intrinsic squared length o > 0. Default ``None``: no length, or 1e-6 when learned.
        learn_length: learn o as a ``Parameter`` ``log_length`` = log o (positive by construction).
            Default ``False``.
        device: factory arguments for ``log_length``.
        dtype: factory arguments for ``log_length``.

    Shape:
        - Input: (*, n, *) with the feature axis at ``dim``. Output: same shape and dtype.

    Attributes:
        role: ``"activation"``.
        groups: ``("orthogonal",)``.

    Examples:
        >>> import torch, isotorch as it
        >>> act = it.nn.IsotropicActivation("log1p", dim=1, learn_length=True)
        >>> act
        IsotropicActivation(profile='log1p', dim=1, length=1e-06, learn_length=True)
        >>> act(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
        >>> act.groups
        ('orthogonal',)
    """

    role = "activation"
    fixed_length: torch.Tensor | None
    initial_length: float | None

    def __init__(
        self,
        profile: str | _F.Profile | Callable[[torch.Tensor], torch.Tensor] = "tanh",
        dim: int = -1,
        length: float | None = None,
        learn_length: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.profile = profile
        self._profile = _F._resolve_profile(profile)
        self.dim = check_axis(dim)
        self.learn_length = bool(learn_length)
        if length is not None and (
            isinstance(length, bool) or not isinstance(length, (int, float)) or not math.isfinite(length) or length <= 0
        ):
            raise ValueError(f"length (the squared intrinsic length o) must be a finite float > 0, got {length!r}")
        if self.learn_length:
            self.initial_length = 1e-6 if length is None else float(length)
            self.log_length = nn.Parameter(torch.empty((), device=device, dtype=dtype))
            self.reset_parameters()
        else:
            # a fixed length is state that surgery may change (``isotorch.params.prune``), so it is saved in the
            # state dict as the buffer ``fixed_length``; the forward reads its float mirror, never the tensor
            self.register_buffer("fixed_length", None)
            self.initial_length = None if length is None else float(length)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "initial_length" and not getattr(self, "learn_length", True):
            device = self.fixed_length.device if self.fixed_length is not None else None
            self.fixed_length = (
                None if value is None else torch.tensor(float(value), dtype=torch.float64, device=device)
            )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, msgs):
        if not self.learn_length:  # the saved length (or its absence) replaces ours, then the buffer loads it
            saved = state_dict.get(prefix + "fixed_length")
            self.initial_length = None if saved is None else float(saved)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, msgs)

    def reset_parameters(self) -> None:
        """Reset the learned length to its initial value (no-op without ``learn_length``)."""
        if self.learn_length:
            assert self.initial_length is not None  # a learned length always has an initial value
            with torch.no_grad():
                self.log_length.fill_(math.log(self.initial_length))

    @property
    def length(self) -> torch.Tensor | float | None:
        """The intrinsic squared length o: exp(``log_length``) when learned, else the fixed float (or None)."""
        return self.log_length.exp() if self.learn_length else self.initial_length

    @property
    def groups(self) -> tuple[str, ...]:
        return ("orthogonal",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _F._check_input(x, self.dim)
        if not self.learn_length and self.fixed_length is not None and torch.compiler.is_compiling():
            # the 0-d buffer, not its float mirror: under dynamic=True a float attribute would become a symbolic
            # input that Dynamo cannot lift into the activation's autograd.Function (see Profile._numbers)
            return _F._iso(x, self._profile, self.dim, self.fixed_length)
        return _F._iso(x, self._profile, self.dim, _F._check_length(self.length))

    def extra_repr(self) -> str:
        parts = [f"profile={_profile_repr(self.profile)}", f"dim={self.dim}"]
        if self.initial_length is not None:
            parts.append(f"length={self.initial_length:g}")
        if self.learn_length:
            parts.append("learn_length=True")
        return ", ".join(parts)


class IsoTanh(IsotropicActivation):
    """Isotropic tanh f(x) = tanh(‖x‖)·x/‖x‖ along ``dim``; the output lies in the open unit ball.

    Args:
        dim: the feature axis. Default ``-1``.

    Shape:
        - Input: (*, n, *) with the feature axis at ``dim``. Output: same shape and dtype.

    Examples:
        >>> import torch, isotorch as it
        >>> it.nn.IsoTanh()(torch.tensor([[3.0, 4.0]]))
        tensor([[0.5999, 0.7999]])
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__("tanh", dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class IsoReLU(IsotropicActivation):
    """Isotropic thresholded ReLU f(x) = max(‖x‖ − R, 0)·x/‖x‖ along ``dim`` (zero inside the ball of radius R).

    Args:
        radius: the threshold R > 0 (R = 0 would be the identity). Default ``1.0``.
        dim: the feature axis. Default ``-1``.

    Shape:
        - Input: (*, n, *) with the feature axis at ``dim``. Output: same shape and dtype.

    Examples:
        >>> import torch, isotorch as it
        >>> it.nn.IsoReLU(radius=2.0)(torch.tensor([[3.0, 4.0], [0.6, 0.8]]))
        tensor([[1.8000, 2.4000],
                [0.0000, 0.0000]])
    """

    def __init__(self, radius: float = 1.0, dim: int = -1) -> None:
        if isinstance(radius, bool) or not isinstance(radius, (int, float)):
            raise TypeError(f"radius must be a float > 0, got {type(radius).__name__}")
        if not (math.isfinite(radius) and radius > 0):
            raise ValueError(
                f"radius must be a finite float > 0, got {radius!r} (a ReLU of the norm with radius 0 is the identity)"
            )
        super().__init__(_F._relu_profile(float(radius)), dim)
        self.radius = float(radius)

    def extra_repr(self) -> str:
        return f"radius={self.radius:g}, dim={self.dim}"


class DirectionActivation(nn.Module):
    """Direction-set activation f_V(x) = Σ_k σ(x·v_k)·v_k along ``dim`` for a (K, n) direction set V.

    With V = I this is the elementwise σ. The directions are a buffer (they move with ``.to()`` and are saved in
    the state dict, but are not trained).

    Args:
        directions: a (K, n) floating tensor, e.g. from :mod:`isotorch.directions`; K may exceed n.
        activation: the elementwise σ (``"tanh"``, ``"softsign"``, ``"sin"``, ``"relu"``, ``"gelu"``,
            ``"silu"``, ``"sigmoid"``) or a callable. Default ``"tanh"``.
        dim: the feature axis. Default ``-1``.

    Shape:
        - Input: (*, n, *) with the feature axis at ``dim``. Output: same shape and dtype.

    Attributes:
        groups: ``("signed_permutation",)`` when V is a ±standard basis and σ is odd (or each ±e_i occurs
            equally often, so that only the odd part of σ survives); ``("permutation",)`` when V is a standard
            basis up to one common sign and σ is not odd; ``("trivial",)`` otherwise. A generic set such as
            Thomson points has a trivial exact symmetry group. A callable σ counts as odd if it passes a numerical
            probe on a float64 grid.

    Examples:
        >>> import torch, isotorch as it
        >>> act = it.nn.DirectionActivation(torch.eye(4), "relu")
        >>> act
        DirectionActivation(directions=4×4, activation='relu', dim=-1)
        >>> act.groups
        ('permutation',)
        >>> it.nn.DirectionActivation(torch.cat([torch.eye(4), -torch.eye(4)]), "relu").groups
        ('signed_permutation',)
    """

    role = "activation"
    directions: torch.Tensor

    def __init__(
        self,
        directions: torch.Tensor,
        activation: str | Callable[[torch.Tensor], torch.Tensor] = "tanh",
        dim: int = -1,
    ) -> None:
        super().__init__()
        if not isinstance(directions, torch.Tensor):
            raise TypeError(f"directions must be a (K, n) tensor, got {type(directions).__name__}")
        if directions.ndim != 2 or directions.shape[0] < 1 or directions.shape[1] < 1:
            raise ValueError(f"directions must be a (K, n) tensor with K, n ≥ 1, got shape {tuple(directions.shape)}")
        _F._check_directions(directions, directions.shape[1])
        self._sigma = _F._resolve_elementwise(activation)
        self.activation = activation
        self.dim = check_axis(dim)
        self.register_buffer("directions", directions.detach().clone())
        self._odd = _F._is_odd(activation)

    @property
    def groups(self) -> tuple[str, ...]:
        v = self.directions.detach().to(torch.float64)
        k, n = v.shape
        nonzero = v.abs() > 1e-6
        if not bool((nonzero.sum(1) == 1).all()) or not bool(((v[nonzero].abs() - 1).abs() <= 1e-6).all()):
            return ("trivial",)
        axis = nonzero.to(torch.int64).argmax(1)
        sign = v[torch.arange(k), axis] > 0
        plus = torch.bincount(axis[sign], minlength=n)
        minus = torch.bincount(axis[~sign], minlength=n)
        if not bool((plus == plus[0]).all() and (minus == minus[0]).all()):
            return ("trivial",)
        if self._odd or int(plus[0]) == int(minus[0]):
            return ("signed_permutation",)
        return ("permutation",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.direction_activation(x, self.directions, self._sigma, dim=self.dim)

    def extra_repr(self) -> str:
        k, n = self.directions.shape
        act = repr(self.activation) if isinstance(self.activation, str) else _profile_repr(self.activation)
        return f"directions={k}×{n}, activation={act}, dim={self.dim}"


class BlockIsotropicActivation(nn.Module):
    """Block-isotropic activation: isotropic within each block of ``block`` consecutive features along ``dim``.

    f(x)_b = σ(‖x_b‖)·x_b/‖x_b‖ for each block x_b. The group is O(k) ≀ S_{n/k} (``block_orthogonal:k``):
    block = 1 is the elementwise odd map sign(x)·σ(|x|) (``signed_permutation``), block = n is isotropic.

    Args:
        block: the block size k ≥ 1 (must divide the feature size of the input).
        profile: as in :class:`IsotropicActivation`. Default ``"tanh"``.
        dim: the feature axis. Default ``-1``.

    Shape:
        - Input: (*, n, *) with n divisible by ``block`` at ``dim``. Output: same shape and dtype.

    Examples:
        >>> import torch, isotorch as it
        >>> act = it.nn.BlockIsotropicActivation(4)
        >>> act, act.groups
        (BlockIsotropicActivation(block=4, profile='tanh', dim=-1), ('block_orthogonal:4',))
        >>> act(torch.randn(3, 8)).shape
        torch.Size([3, 8])
    """

    role = "activation"

    def __init__(
        self,
        block: int,
        profile: str | _F.Profile | Callable[[torch.Tensor], torch.Tensor] = "tanh",
        dim: int = -1,
    ) -> None:
        super().__init__()
        self.block = check_int(block, "block")
        self.profile = profile
        self._profile = _F._resolve_profile(profile)
        self.dim = check_axis(dim)

    @property
    def groups(self) -> tuple[str, ...]:
        key = f"block_orthogonal:{self.block}"
        return (key, "signed_permutation") if self.block == 1 else (key,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.block_iso_activation(x, self.block, self._profile, dim=self.dim)

    def extra_repr(self) -> str:
        return f"block={self.block}, profile={_profile_repr(self.profile)}, dim={self.dim}"
