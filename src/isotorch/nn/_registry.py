"""The registry of isotorch's primitives: each one, how to build it for a test, and the groups it declares.

Every registered primitive is audited against its declared groups by the test suite (float32 and float64, with the
next larger group of the lattice as negative control) and gets a row of the audit table
(:func:`isotorch.audit.primitive_table`), the moment it is registered. Reach it like every registry of isotorch:
:func:`names` and :func:`get`; :func:`register` adds to it.

Examples:
    >>> import isotorch as it
    >>> spec = it.nn.get("iso_tanh")
    >>> spec.role, spec.groups, type(spec.build(8)).__name__
    ('activation', ('orthogonal',), 'IsoTanh')
    >>> "chi_norm" in it.nn.names(role="norm")
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from isotorch import directions as _directions
from isotorch import groups as _groups
from isotorch._util import check_choice, check_name
from isotorch.nn.activation import BlockIsotropicActivation, DirectionActivation, IsoReLU, IsoTanh, IsotropicActivation
from isotorch.nn.dropout import IsoDropout
from isotorch.nn.norm import ChiNorm, IsoBatchNorm, IsoRMSNorm
from isotorch.nn.pooling import NormMaxPool2d

__all__ = ["ROLES", "PrimitiveSpec", "get", "names", "register"]

ROLES = ("activation", "norm", "dropout", "pool", "gate")
"""The roles a primitive can play in a network."""


@dataclass(frozen=True)
class PrimitiveSpec:
    """A registered primitive: how to build it at feature size n, its role, and the groups it declares.

    Add one with :func:`register`; ``build(n)`` must return a module whose ``role`` and ``groups`` attributes match.

    Attributes:
        name: registry name, e.g. ``"iso_tanh"``.
        role: one of ``activation``, ``norm``, ``dropout``, ``pool``, ``gate``.
        build: ``build(n)`` returns the module for feature size ``n`` along ``dim``.
        groups: canonical group keys it is equivariant to (``"block_orthogonal:2"`` style for parameters).
        sizes: feature sizes at which the registry tests check it.
        input_shape: shape of a test input with ``"n"`` in place of the feature axis, e.g. ``(5, "n")`` or
            ``(2, "n", 6, 6)`` for a channel-first feature map.
        dim: the feature axis.
        train: check it in training mode (batch statistics; dropout with common random numbers).
        note: why the negative control does not apply, when it does not.
    """

    name: str
    role: str
    build: Callable[[int], nn.Module]
    groups: tuple[str, ...]
    sizes: tuple[int, ...] = (8,)
    input_shape: tuple = (5, "n")
    dim: int = -1
    train: bool = False
    note: str = ""

    def example_input(self, n: int, *, dtype=torch.float32, generator: torch.Generator | None = None) -> torch.Tensor:
        """A generic Gaussian test input of :attr:`input_shape` with feature size ``n``."""
        shape = tuple(n if s == "n" else s for s in self.input_shape)
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


_PRIMITIVES: dict[str, PrimitiveSpec] = {}


def register(spec: PrimitiveSpec) -> PrimitiveSpec:
    """Add a primitive to the registry; the test suite then audits it against its declared groups.

    Raises:
        ValueError: an unknown role, or a name that is already registered.
        KeyError: a declared group that :func:`isotorch.groups.get` does not know.
    """
    check_choice(spec.role, "role", ROLES)
    if spec.name in _PRIMITIVES:
        raise ValueError(f"a primitive named {spec.name!r} is already registered")
    for key in spec.groups:
        _groups.get(key)
    _PRIMITIVES[spec.name] = spec
    return spec


def names(role: str | None = None) -> list[str]:
    """The registered primitive names, in registration order; ``role`` keeps one role's (see :data:`ROLES`)."""
    if role is not None:
        check_choice(role, "role", ROLES)
    return [name for name, spec in _PRIMITIVES.items() if role is None or spec.role == role]


def get(name: str) -> PrimitiveSpec:
    """The registered primitive ``name``: a :class:`PrimitiveSpec` (how to build it, its role and groups).

    Raises:
        KeyError: unknown name (the message lists the valid names).
    """
    return _PRIMITIVES[check_name(name, _PRIMITIVES, "primitive")]


_MAP = (2, "n", 5, 5)
_ISO = ("orthogonal",)
_SCALAR_NOTE = "multiplies each vector by a scalar, so it commutes with every linear map: no larger group can fail"
for _spec in (
    PrimitiveSpec("iso_tanh", "activation", lambda n: IsoTanh(), _ISO),
    PrimitiveSpec("iso_tanh_channels", "activation", lambda n: IsoTanh(dim=1), _ISO, input_shape=_MAP, dim=1),
    PrimitiveSpec("iso_log1p", "activation", lambda n: IsotropicActivation("log1p"), _ISO),
    PrimitiveSpec("iso_softsign", "activation", lambda n: IsotropicActivation("softsign"), _ISO),
    PrimitiveSpec("iso_relu", "activation", lambda n: IsoReLU(radius=1.0), _ISO),
    PrimitiveSpec("iso_tanh_length", "activation", lambda n: IsotropicActivation("tanh", length=0.5), _ISO),
    PrimitiveSpec(
        "block_iso_2", "activation", lambda n: BlockIsotropicActivation(2), ("block_orthogonal:2",), sizes=(8, 6)
    ),
    PrimitiveSpec(
        "direction_standard_tanh",
        "activation",
        lambda n: DirectionActivation(_directions.standard_basis(n), "tanh"),
        ("signed_permutation",),
    ),
    PrimitiveSpec(
        "direction_thomson",
        "activation",
        lambda n: DirectionActivation(
            _directions.thomson(n + 4, n, generator=torch.Generator().manual_seed(0)), "tanh"
        ),
        ("trivial",),
    ),
    PrimitiveSpec("iso_rms_norm", "norm", lambda n: IsoRMSNorm(), _ISO),
    PrimitiveSpec("chi_norm", "norm", lambda n: ChiNorm(n), _ISO, train=True),
    PrimitiveSpec("iso_batch_norm", "norm", lambda n: IsoBatchNorm(n), _ISO, train=True),
    PrimitiveSpec(
        "iso_batch_norm_channels",
        "norm",
        lambda n: IsoBatchNorm(n, dim=1),
        _ISO,
        input_shape=_MAP,
        dim=1,
        train=True,
    ),
    PrimitiveSpec("iso_dropout", "dropout", lambda n: IsoDropout(0.5), _ISO, train=True, note=_SCALAR_NOTE),
    PrimitiveSpec("norm_max_pool", "pool", lambda n: NormMaxPool2d(2), _ISO, input_shape=(2, "n", 4, 4), dim=1),
):
    register(_spec)
