"""The group that each primitive between two linear layers respects, and the group of a site.

A site's group is the intersection of the groups of every primitive that touches its features (REFERENCE §1.3):
a composition keeps at least the intersection of its parts' groups. Groups are handled as sets of canonical keys
(:mod:`isotorch.groups`), each closed downwards: a primitive that respects O(n) also respects every compact
subgroup of it. Since a map equivariant to g and to h is equivariant to gh, a site respects the group generated
by the keys in its set (for ReLU: permutations and positive scalings generate the positive monomial matrices).

Known torch modules and functions are looked up in a fixed table (REFERENCE §3.1); isotorch primitives declare
their ``groups``; anything else parameter-free is measured with :func:`isotorch.audit.audit` on the input it
received.
"""

from __future__ import annotations

import functools
import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from isotorch import groups as _groups

# Groups of a linear map on the features: every channel-mixing matrix commutes with it.
LINEAR = ("orthogonal", "positive_scaling")
_RELU = ("permutation", "positive_scaling")
_ELEMENTWISE = ("permutation",)
_ODD = ("signed_permutation",)
_DIAGONAL = ("signed_permutation", "positive_scaling")

# Parameter-free torch modules, by exact type. Modules whose group depends on their settings are handled in
# module_groups().
_MODULE_TABLE: dict[type, tuple[str, ...]] = {
    nn.ReLU: _RELU,
    nn.LeakyReLU: _RELU,
    nn.ReLU6: _ELEMENTWISE,
    nn.ELU: _ELEMENTWISE,
    nn.CELU: _ELEMENTWISE,
    nn.SELU: _ELEMENTWISE,
    nn.GELU: _ELEMENTWISE,
    nn.SiLU: _ELEMENTWISE,
    nn.Mish: _ELEMENTWISE,
    nn.Sigmoid: _ELEMENTWISE,
    nn.LogSigmoid: _ELEMENTWISE,
    nn.Softplus: _ELEMENTWISE,
    nn.Hardsigmoid: _ELEMENTWISE,
    nn.Hardswish: _ELEMENTWISE,
    nn.Tanh: _ODD,
    nn.Softsign: _ODD,
    nn.Tanhshrink: _ODD,
    nn.Hardshrink: _ODD,
    nn.Softshrink: _ODD,
    nn.Dropout: _DIAGONAL,
    nn.Dropout1d: _DIAGONAL,
    nn.Dropout2d: _DIAGONAL,
    nn.Dropout3d: _DIAGONAL,
    nn.MaxPool1d: _RELU,
    nn.MaxPool2d: _RELU,
    nn.MaxPool3d: _RELU,
    nn.AdaptiveMaxPool1d: _RELU,
    nn.AdaptiveMaxPool2d: _RELU,
    nn.AdaptiveMaxPool3d: _RELU,
    nn.AvgPool1d: LINEAR,
    nn.AvgPool2d: LINEAR,
    nn.AvgPool3d: LINEAR,
    nn.AdaptiveAvgPool1d: LINEAR,
    nn.AdaptiveAvgPool2d: LINEAR,
    nn.AdaptiveAvgPool3d: LINEAR,
    nn.Identity: LINEAR,
}

# Modules that pool over the spatial axes and must keep the channel axis at dim 1.
SPATIAL = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)

# Elementwise torch functions and tensor methods (fx call_function / call_method targets).
_FUNCTION_TABLE: dict[object, tuple[str, ...]] = {
    torch.relu: _RELU,
    F.relu: _RELU,
    F.leaky_relu: _RELU,
    torch.tanh: _ODD,
    F.tanh: _ODD,
    F.softsign: _ODD,
    torch.sigmoid: _ELEMENTWISE,
    F.sigmoid: _ELEMENTWISE,
    F.gelu: _ELEMENTWISE,
    F.silu: _ELEMENTWISE,
    F.mish: _ELEMENTWISE,
    F.elu: _ELEMENTWISE,
    F.selu: _ELEMENTWISE,
    F.softplus: _ELEMENTWISE,
    F.hardswish: _ELEMENTWISE,
    F.hardsigmoid: _ELEMENTWISE,
    F.relu6: _ELEMENTWISE,
    F.dropout: _DIAGONAL,
    torch.dropout: _DIAGONAL,
    operator.neg: LINEAR,
    torch.neg: LINEAR,
}
# Pooling functions: they act on the spatial axes after the channel axis (dim 1), channel by channel.
_SPATIAL_FUNCTION_TABLE: dict[object, tuple[str, ...]] = {
    F.max_pool1d: _RELU,
    F.max_pool2d: _RELU,
    F.max_pool3d: _RELU,
    F.adaptive_max_pool1d: _RELU,
    F.adaptive_max_pool2d: _RELU,
    F.adaptive_max_pool3d: _RELU,
    F.avg_pool1d: LINEAR,
    F.avg_pool2d: LINEAR,
    F.avg_pool3d: LINEAR,
    F.adaptive_avg_pool1d: LINEAR,
    F.adaptive_avg_pool2d: LINEAR,
    F.adaptive_avg_pool3d: LINEAR,
}
for _f in list(_SPATIAL_FUNCTION_TABLE):  # F.max_pool2d is a wrapper; fx and the recorder may see either name
    _inner = getattr(torch, getattr(_f, "__name__", ""), None)  # every key is a named function
    if _inner is not None and callable(_inner):
        _SPATIAL_FUNCTION_TABLE.setdefault(_inner, _SPATIAL_FUNCTION_TABLE[_f])

_METHOD_TABLE: dict[str, tuple[str, ...]] = {
    "relu": _RELU,
    "tanh": _ODD,
    "sigmoid": _ELEMENTWISE,
    "neg": LINEAR,
    "contiguous": LINEAR,
    "clone": LINEAR,
    "detach": LINEAR,
}


def is_isotorch_primitive(module: nn.Module) -> bool:
    """Whether ``module`` declares its symmetry the isotorch way (``role``, ``dim`` and ``groups``)."""
    return all(hasattr(type(module), attr) or hasattr(module, attr) for attr in ("role", "groups", "dim"))


def function_groups(target: object) -> tuple[str, ...] | None:
    """The group keys of a known elementwise torch function, or ``None``."""
    try:
        return _FUNCTION_TABLE.get(target)
    except TypeError:  # unhashable target
        return None


def spatial_function_groups(target: object) -> tuple[str, ...] | None:
    """The group keys of a pooling function acting on the axes after the channel axis (dim 1), or ``None``."""
    try:
        return _SPATIAL_FUNCTION_TABLE.get(target)
    except TypeError:  # unhashable target
        return None


def method_groups(name: str) -> tuple[str, ...] | None:
    """The group keys of a known elementwise tensor method, or ``None``."""
    return _METHOD_TABLE.get(name)


def module_groups(module: nn.Module, n: int, axis: int, ndim: int) -> tuple[tuple[str, ...] | None, str | None]:
    """The group keys of a known torch module acting on features of size ``n`` on ``axis`` of an ``ndim`` tensor.

    Returns ``(keys, None)`` for a known module, ``(None, reason)`` for a known module used in a way whose group
    is not the table's (e.g. a LayerNorm over more than the feature axis), and ``(None, None)`` for a module that
    is not in the table.
    """
    kind = type(module)
    if kind in _MODULE_TABLE:
        if kind in SPATIAL and axis != 1:
            return None, f"{kind.__name__} pools over the axes after dim 1, but the features are on axis {axis}"
        return _MODULE_TABLE[kind], None
    if type(module) is nn.Hardtanh:
        if module.min_val == -module.max_val:
            return _ODD, None
        return _ELEMENTWISE, None
    if type(module) is nn.PReLU:
        if module.weight.numel() == 1:
            return _RELU, None
        return None, "PReLU with one slope per channel (per-feature parameters) is not supported"
    if type(module) is nn.Softmax or type(module) is nn.LogSoftmax or type(module) is nn.Softmin:
        d = module.dim if module.dim is not None else -1
        if d % ndim != axis:
            return None, f"{kind.__name__} normalises along dim {module.dim}, not the feature axis {axis}"
        return _ELEMENTWISE, None
    if type(module) is nn.LayerNorm or type(module) is nn.RMSNorm:
        shape = tuple(module.normalized_shape)
        if shape != (n,) or axis != ndim - 1:
            return None, f"{kind.__name__}{shape} normalises over more than the feature axis (size {n})"
        affine = module.weight is not None
        if affine:
            return _ELEMENTWISE, None
        return ("mean_orthogonal",) if kind is nn.LayerNorm else ("orthogonal",), None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if axis != 1:
            return None, f"{kind.__name__} normalises channel dim 1, but the features are on axis {axis}"
        return _ELEMENTWISE, None
    return None, None


def passenger_names(module: nn.Module, n: int) -> list[tuple[str, int]]:
    """The parameters and buffers of a primitive that live on the feature axis: (local name, axis) pairs.

    For torch norms these are the per-feature gains, biases and running statistics; for an isotorch primitive,
    every parameter or buffer axis of size ``n``.
    """
    out = []
    tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    for name, t in tensors:
        if t is None or t.ndim == 0 or not t.is_floating_point():
            continue
        for ax, size in enumerate(t.shape):
            if size == n and t.numel() > 1:
                out.append((name, ax))
    return out


@functools.lru_cache(maxsize=4096)
def closure(keys: frozenset[str], n: int) -> frozenset[str]:
    """All canonical keys at size ``n`` that are subgroups of one of ``keys`` (``"trivial"`` included)."""
    out = {"trivial"}
    lattice = _groups.lattice(n)
    for key in keys:
        try:
            declared = _groups.get(key)
        except (KeyError, ValueError):  # not a canonical key: claims nothing we can act with
            continue
        if declared.name == "block_orthogonal" and n % declared._block_size() != 0:
            continue
        for g in lattice:
            if _groups.is_subgroup(g, declared, n):
                out.add(g.key)
    return frozenset(out)


def describe(keys: frozenset[str], general_linear: bool = False) -> str:
    """A readable name of the group generated by ``keys``, e.g. ``permutation × positive_scaling``."""
    if general_linear:
        return "general_linear"
    order = {name: i for i, name in enumerate(_groups.names())}
    return " × ".join(sorted(keys, key=lambda k: (order[k.partition(":")[0]], k)))


def prod(values) -> int:
    """The product of a sequence of ints (1 for an empty one)."""
    return math.prod(int(v) for v in values)
