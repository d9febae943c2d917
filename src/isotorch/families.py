"""Primitive sets chosen by symmetry group, the primitive registry, and model conversion (in progress)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["PrimitiveSpec", "convert", "primitives", "register_primitive"]

ROLES = ("activation", "norm", "dropout", "pool", "gate")


@dataclass(frozen=True)
class PrimitiveSpec:
    """A registered primitive: how to build it at feature size n, its role, and the groups it declares.

    Attributes:
        name: registry name, e.g. ``"iso_tanh"``.
        role: one of ``activation``, ``norm``, ``dropout``, ``pool``, ``gate``.
        build: ``build(n)`` returns the module (in eval mode) for feature size ``n`` along ``dim``.
        groups: canonical group keys it is equivariant to (``"block_orthogonal:2"`` style for parameters).
        sizes: feature sizes at which the registry tests check it.
        input_shape: shape of a test input with ``n`` in place of the feature axis, e.g. ``(5, "n")`` or
            ``(2, "n", 6, 6)`` for a channel-first feature map.
        dim: the feature axis.
    """

    name: str
    role: str
    build: Callable[[int], nn.Module]
    groups: tuple[str, ...]
    sizes: tuple[int, ...] = (8,)
    input_shape: tuple = (5, "n")
    dim: int = -1


_PRIMITIVES: dict[str, PrimitiveSpec] = {}


def register_primitive(spec: PrimitiveSpec) -> PrimitiveSpec:
    """Add a primitive to the registry (tests audit every registered primitive against its declared groups)."""
    if spec.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {spec.role!r}")
    if spec.name in _PRIMITIVES:
        raise ValueError(f"a primitive named {spec.name!r} is already registered")
    _PRIMITIVES[spec.name] = spec
    return spec


def primitives(role: str | None = None) -> list[PrimitiveSpec]:
    """The registered primitives, optionally only those of one role."""
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES} or None, got {role!r}")
    return [s for s in _PRIMITIVES.values() if role is None or s.role == role]


def convert(model: nn.Module, family: str) -> nn.Module:
    raise NotImplementedError("in progress")
