"""Primitive families chosen by symmetry group, conversion, and group averaging.

A :class:`PrimitiveSet` names a group and gives one primitive for each role a network is built from
(activation, normaliser, dropout, pooling, gating, initialiser, optimiser). Registered families:

=================  ===========================  ===============================================================
name               group                        activation
=================  ===========================  ===============================================================
``elementwise``    permutation                  ``torch.nn.Tanh`` (today's default: each neuron on its own)
``isotropic``      orthogonal                   :class:`~isotorch.nn.IsoTanh` (σ(‖x‖)·x/‖x‖)
``block:<k>``      block_orthogonal:k           :class:`~isotorch.nn.BlockIsotropicActivation` (isotropic per
                                                block of k features; k = 1 is elementwise tanh)
``direction:<K>``  trivial (generic K)          :class:`~isotorch.nn.DirectionActivation` over K Thomson
                                                directions
=================  ===========================  ===============================================================

:func:`convert` swaps the primitives of an existing model for a family's, keeping every weight, and reports what
it swapped and what it left alone. :func:`symmetrise` is the generating half of the taxonomy: it turns any
primitive into a G-equivariant one by averaging over a finite group.

Examples:
    >>> import torch, isotorch as it
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> iso, report = it.convert(mlp, "isotropic", return_report=True)
    >>> type(iso[1]).__name__, report.swapped[0].path
    ('IsoTanh', '1')
    >>> torch.equal(iso[0].weight, mlp[0].weight)
    True
"""

from __future__ import annotations

import copy
import logging
import operator
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal, TypeVar, overload

import torch
import torch.nn.functional as F
from torch import nn

from isotorch import directions as _directions
from isotorch import init as _init
from isotorch import nn as inn
from isotorch import optim as _optim
from isotorch._util import json_safe

__all__ = [
    "ConversionReport",
    "ConversionRow",
    "PrimitiveSet",
    "Symmetrised",
    "convert",
    "get",
    "names",
    "register",
    "symmetrise",
]

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=nn.Module)  # convert returns a copy of the model's own class (only submodules are swapped)

# ----------------------------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrimitiveSet:
    """A family of primitives that share one symmetry group.

    Each factory builds the family's primitive for a feature axis of size ``n`` at position ``dim``.

    Attributes:
        name: registry name (``"isotropic"``, ``"block:4"``, ...).
        group: the canonical group key that every primitive of the family respects.
        activation: ``activation(n, dim)``.
        norm: ``norm(n, dim, kind)`` with ``kind`` ``"layer"`` (per-sample normalisers: LayerNorm, RMSNorm,
            GroupNorm with one group) or ``"batch"`` (BatchNorm).
        dropout: ``dropout(p, dim)``.
        pool: ``pool(kernel_size, stride, padding)`` for 2-D feature maps (channels at dim 1).
        gate: ``gate(dim)``: input split in two halves along ``dim`` (like ``torch.nn.GLU``).
        init: a name in :func:`isotorch.init.names`.
        optimiser: a name in :func:`isotorch.optim.names`.
        description: one line for tables.
    """

    name: str
    group: str
    activation: Callable[[int, int], nn.Module]
    norm: Callable[[int, int, str], nn.Module]
    dropout: Callable[[float, int], nn.Module]
    pool: Callable[..., nn.Module]
    gate: Callable[[int], nn.Module]
    init: str
    optimiser: str
    description: str = ""

    def make_optimiser(self, params, **kwargs) -> torch.optim.Optimizer:
        """Build the family's optimiser for ``params`` (keyword arguments go to its constructor)."""
        factory, _ = _optim.get(self.optimiser)
        kwargs.setdefault("weight_decay", 0.0)  # the registry's factories differ here; a matched pair must not
        return factory(params, **kwargs)

    def init_(self, model: nn.Module, *, generator: torch.Generator | None = None) -> nn.Module:
        """Re-initialise every Linear/Conv weight of ``model`` in place with the family's initialiser."""
        fn, _ = _init.get(self.init)
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                with torch.no_grad():
                    fn(module.weight, generator=generator)
                    if module.bias is not None:
                        module.bias.zero_()
        return model


def _elementwise_norm(n: int, dim: int, kind: str) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(n) if dim == -1 else nn.BatchNorm2d(n)
    return nn.LayerNorm(n) if dim == -1 else nn.GroupNorm(1, n)


def _isotropic_norm(n: int, dim: int, kind: str) -> nn.Module:
    # Per-sample x/‖x‖ next to an isotropic activation cancels it ("shell collapse", REFERENCE 2.3), so the
    # isotropic family normalises with population or batch statistics and keeps each sample's radius.
    return inn.IsoBatchNorm(n, dim=dim) if kind == "batch" else inn.ChiNorm(n, dim=dim)


def _shared(name: str, group: str, activation, description: str, *, elementwise: bool = False) -> PrimitiveSet:
    if elementwise:
        return PrimitiveSet(
            name=name,
            group=group,
            activation=activation,
            norm=_elementwise_norm,
            dropout=lambda p, dim: nn.Dropout(p),
            pool=lambda kernel_size, stride=None, padding=0: nn.MaxPool2d(kernel_size, stride, padding),
            gate=lambda dim: nn.GLU(dim),
            init="kaiming_uniform",
            optimiser="adam",
            description=description,
        )
    return PrimitiveSet(
        name=name,
        group=group,
        activation=activation,
        norm=_isotropic_norm,
        dropout=lambda p, dim: inn.IsoDropout(p, dim=dim),
        pool=lambda kernel_size, stride=None, padding=0: inn.NormMaxPool2d(kernel_size, stride, padding),
        gate=lambda dim: inn.IsoGate(dim=dim),
        init="orthogonal",
        optimiser="iso_adam",
        description=description,
    )


_FAMILIES: dict[str, tuple[Callable[..., PrimitiveSet], bool]] = {}


def register(name: str, factory: Callable[..., PrimitiveSet], *, parametrised: bool = False) -> None:
    """Register a family: ``factory()`` builds it, or ``factory(k)`` for a parametrised family named ``name:<k>``."""
    if name in _FAMILIES or ":" in name:
        raise ValueError(f"family name {name!r} is taken or contains ':'")
    _FAMILIES[name] = (factory, parametrised)


def names() -> list[str]:
    """The registered family names (parametrised ones shown as ``name:<k>``)."""
    return [f"{name}:<k>" if parametrised else name for name, (_, parametrised) in _FAMILIES.items()]


def get(name: str | PrimitiveSet) -> PrimitiveSet:
    """Look up a family: ``"elementwise"``, ``"isotropic"``, ``"block:<k>"`` or ``"direction:<K>"``.

    Raises:
        KeyError: unknown family (the message lists the valid names).
        ValueError: a malformed parameter (``"block:x"``, ``"block:0"``).

    Examples:
        >>> from isotorch import families
        >>> iso = families.get("isotropic")
        >>> iso.group, type(iso.activation(64, -1)).__name__, type(iso.norm(64, -1, "layer")).__name__
        ('orthogonal', 'IsoTanh', 'ChiNorm')
        >>> families.get("block:4").group
        'block_orthogonal:4'
    """
    if isinstance(name, PrimitiveSet):
        return name
    if not isinstance(name, str):
        raise TypeError(f"family must be a name or a PrimitiveSet, got {type(name).__name__}")
    base, sep, param = name.partition(":")
    if base not in _FAMILIES:
        raise KeyError(f"unknown family {name!r}; valid families: {', '.join(names())}")
    factory, parametrised = _FAMILIES[base]
    if parametrised:
        if not re.fullmatch(r"[0-9]+", param) or int(param) < 1:
            raise ValueError(f"family {base!r} needs a positive integer parameter, e.g. '{base}:4'; got {name!r}")
        return factory(int(param))
    if sep:
        raise ValueError(f"family {base!r} takes no parameter; got {name!r}")
    return factory()


def _block_family(k: int) -> PrimitiveSet:
    def activation(n: int, dim: int) -> nn.Module:
        if n % k:
            raise ValueError(f"block size {k} does not divide the feature size {n}")
        return inn.BlockIsotropicActivation(k, dim=dim)

    return _shared(f"block:{k}", f"block_orthogonal:{k}", activation, f"isotropic tanh within blocks of {k} features")


def _direction_family(k: int) -> PrimitiveSet:
    def activation(n: int, dim: int) -> nn.Module:
        return inn.DirectionActivation(
            _directions.thomson(k, n, generator=torch.Generator().manual_seed(0)), "tanh", dim=dim
        )

    return _shared(f"direction:{k}", "trivial", activation, f"tanh over {k} Thomson directions")


register(
    "elementwise",
    lambda: _shared(
        "elementwise", "permutation", lambda n, dim: nn.Tanh(), "torch's elementwise primitives", elementwise=True
    ),
)
register("isotropic", lambda: _shared("isotropic", "orthogonal", lambda n, dim: inn.IsoTanh(dim=dim), "isotropic"))
register("block", _block_family, parametrised=True)
register("direction", _direction_family, parametrised=True)


# ----------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------

_ACTIVATIONS = (
    nn.Tanh,
    nn.ReLU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.ELU,
    nn.LeakyReLU,
    nn.Softplus,
    nn.Mish,
    nn.Hardtanh,
    nn.Softsign,
    nn.CELU,
    nn.SELU,
)
_TORCH_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_", operator.truediv, torch.div, "div", "div_"}
_STRUCTURAL = (nn.Flatten, nn.Identity, nn.Unflatten)


@dataclass(frozen=True)
class ConversionRow:
    """One module (or function called in ``forward``) considered by :func:`convert`."""

    path: str
    old: str
    new: str | None
    dim: int | None
    note: str = ""

    def to_dict(self) -> dict:
        return json_safe(asdict(self))


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert` swapped and what it left alone (and why): every normaliser and activation of the model
    is in one of the two lists.

    Attributes:
        family, group: the family converted to and its group.
        swapped: the modules replaced by the family's (or kept because they already are).
        left: the normalisers, activations and other primitives left alone, each with the reason.
        source: where the feature axes came from (``"x"``, a probe input built from the first layer, or
            ``None`` when the model could not be run).
    """

    family: str
    group: str
    swapped: tuple[ConversionRow, ...] = field(default_factory=tuple)
    left: tuple[ConversionRow, ...] = field(default_factory=tuple)
    source: str | None = None

    def to_dict(self) -> dict:
        return json_safe(
            {
                "family": self.family,
                "group": self.group,
                "source": self.source,
                "swapped": [r.to_dict() for r in self.swapped],
                "left": [r.to_dict() for r in self.left],
            }
        )

    def __repr__(self) -> str:
        return (
            f"ConversionReport(family={self.family!r}, group={self.group!r}, swapped={len(self.swapped)}, "
            f"left={len(self.left)})"
        )


@dataclass
class _Call:
    """What the site graph saw of one module: its input, the feature axis on it, and whether it gates."""

    x: torch.Tensor | None = None
    axis: int | None = None
    gate: bool = False
    axes: set = field(default_factory=set)


def _probe_input(model: nn.Module) -> list[tuple[torch.Tensor, str]]:
    """Candidate inputs built from the first layer in registration order (tried in turn until one runs)."""
    for path, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            continue
        dtype, gen = weight.dtype, torch.Generator().manual_seed(0)
        name = f"{path or '(model)'} ({type(module).__name__})"
        if isinstance(module, nn.Embedding):
            ids = torch.randint(0, module.num_embeddings, (2, 8), generator=gen)
            return [(ids, f"token ids (2, 8) for {name}")]
        if isinstance(module, nn.Linear):
            x = torch.randn(2, module.in_features, generator=gen, dtype=torch.float64).to(dtype)
            return [(x, f"a probe input (2, {module.in_features}) built from {name}")]
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
            spatial = len(module.kernel_size)
            out = []
            for size in (8, 16, 32, 64):
                shape = (2, module.in_channels, *([size] * spatial))
                x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
                out.append((x, f"a probe input {shape} built from {name}"))
            return out
        return []
    return []


def _is_mul_with_tensor(node, source) -> bool:
    """Whether ``node`` multiplies ``source``'s output by another computed tensor at least as large (``source`` is
    then the gate: squeeze-excite's sigmoid, a GLU's activation; the gated signal is the larger operand)."""
    if node.op not in ("function", "method") or node.target not in _MUL:
        return False
    own = source.value.numel() if isinstance(source.value, torch.Tensor) else 0
    others = [a for a in [*node.args, *node.kwargs.values()] if a is not source]
    return any(
        getattr(a, "op", None) not in (None, "param") and isinstance(a.value, torch.Tensor) and a.value.numel() >= own
        for a in others
    )


def _readable(axis: int, ndim: int) -> int:
    """The last axis as -1 (so that it holds at any rank), any other by its index."""
    return -1 if axis == ndim - 1 else axis


def _graph_calls(model: nn.Module, x) -> tuple[dict[str, _Call], list[ConversionRow]]:
    """Read the site graph of ``model`` on ``x``: for each module path, its first input, its feature axis (the one
    the graph traces on that input, or the axis a torch primitive itself acts on) and whether its output gates
    another tensor (is multiplied by it); and the activations and normalisers called as functions in ``forward``
    outside any module that convert swaps or lists as a whole."""
    from isotorch.audit._model import _is_primitive_call, _own_axis
    from isotorch.params._sites import analyse

    _, graph, uses, axes = analyse(model, x)
    use_of = {u.node: u for u in uses}
    consumers: dict[int, list] = {}
    for node in graph.nodes:
        for a in [*node.args, *node.kwargs.values()]:
            if hasattr(a, "op"):
                consumers.setdefault(id(a), []).append(node)
    calls: dict[str, _Call] = {}
    scopes: dict[str, list] = {}
    for node in graph.nodes:
        if node.op == "module":
            arg = node.args[0] if node.args else None
            value = getattr(arg, "value", None)
            if not isinstance(value, torch.Tensor):
                continue
            assert node.qualname is not None  # set on every "module" node
            call = calls.setdefault(node.qualname, _Call(value))
            use = use_of.get(node.name)
            arg_name: str = getattr(arg, "name", "")  # "" names no node
            axis: int | None
            if use is not None:
                axis = use.axis
            elif type(node.target).__module__.startswith("torch.nn"):
                axis = _own_axis(node, value.ndim)
                axis = axes.get(arg_name) if axis is None else axis
            else:
                axis = axes.get(arg_name)
            if axis is not None:
                axis = _readable(axis, value.ndim)
                call.axes.add(axis)
                call.axis = axis if call.axis is None else call.axis
            call.gate |= any(_is_mul_with_tensor(c, node) for c in consumers.get(id(node), []))
        elif node.scope:
            scopes.setdefault(node.scope, []).append(node)
    for path, nodes in scopes.items():  # modules the trace went through: their input comes from outside
        if path in calls:
            continue
        inside = {id(n) for n in nodes}
        outer = [a for n in nodes for a in n.args if hasattr(a, "op") and id(a) not in inside and a.op != "param"]
        outer = [a for a in outer if isinstance(a.value, torch.Tensor)]
        if not outer:
            continue
        value = outer[0].value
        call = calls.setdefault(path, _Call(value))
        axis = axes.get(outer[0].name)
        if axis is not None:
            call.axis = _readable(axis, value.ndim)
            call.axes.add(call.axis)
        last = nodes[-1]
        call.gate = any(_is_mul_with_tensor(c, last) for c in consumers.get(id(last), []) if id(c) not in inside)
    functions = []
    for node in graph.nodes:
        if node.op not in ("function", "method") or not _is_primitive_call(node, use_of.get(node.name)):
            continue
        if node.target in _MUL:  # a product of two tensors (a gate's application), not an activation
            continue
        scope = getattr(node, "scope", None)
        if scope and not any(True for _ in model.get_submodule(scope).children()):
            continue  # inside a module that is converted or listed as a whole
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "?")
        where = f"{scope}: {node.name}" if scope else node.name
        note = "left alone: a function called in forward (convert swaps modules)"
        functions.append(ConversionRow(where, f"{name}()", None, None, note))
    return calls, functions


def _elementwise_nonlinear(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` acts like an activation on ``x``: the same scalar function at every entry (it commutes
    with any shuffle of the entries) and not linear."""
    if not x.is_floating_point() or x.numel() < 2 or any(True for _ in module.parameters()):
        return False
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype) * 2
    perm = torch.randperm(z.numel(), generator=gen)
    try:
        with torch.no_grad():
            y = module(z)
            y_perm = module(z.flatten()[perm].reshape(z.shape))
            y2 = module(2 * z)
    except Exception:
        return False
    if not isinstance(y, torch.Tensor) or y.shape != z.shape:
        return False
    tol = 1e-5 if z.dtype == torch.float32 else 1e-10
    same = torch.allclose(y_perm.flatten(), y.flatten()[perm], atol=tol, rtol=tol)
    linear = torch.allclose(y2, 2 * y, atol=tol, rtol=tol)
    return bool(same and not linear)


def _norm_kind(module: nn.Module, x: torch.Tensor | None, dim: int | None) -> tuple[str | None, str]:
    """``("layer" | "batch", note)`` for a normaliser, recognised by class (torch's norms) or by behaviour (a
    per-feature gain ``weight`` and an output that does not change when the input is scaled), else ``(None, "")``."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batch", ""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)):
        return "layer", ""
    weight = getattr(module, "weight", None)
    if x is None or not isinstance(weight, torch.Tensor) or weight.ndim != 1 or not x.is_floating_point():
        return None, ""
    if dim is None:  # e.g. a norm on the model input, where no layer marks the features: its gain says where
        dim = _gain_axis(weight, x)
    if dim is None or weight.shape[0] != x.shape[dim]:
        return None, ""
    try:
        with torch.no_grad():
            y, y3 = module(x), module(3 * x)
    except Exception:
        return None, ""
    if isinstance(y, torch.Tensor) and y.shape == x.shape and torch.allclose(y, y3, atol=1e-3, rtol=1e-3):
        return "layer", "recognised as a normaliser: a per-feature gain and an output invariant to the input's scale"
    return None, ""


def _gain_axis(weight: torch.Tensor, x: torch.Tensor) -> int | None:
    """The axis of ``x`` a per-feature gain fits: the last if it fits, else the only one, else None."""
    fits = [a for a in range(x.ndim) if x.shape[a] == weight.shape[0]]
    if x.ndim - 1 in fits:
        return -1
    return fits[0] if len(fits) == 1 else None


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


@overload
def convert(
    model: _M,
    family: str | PrimitiveSet,
    *,
    x: torch.Tensor | None = None,
    dims: dict[str, int] | None = None,
    return_report: Literal[False] = False,
) -> _M: ...


@overload
def convert(
    model: _M,
    family: str | PrimitiveSet,
    *,
    x: torch.Tensor | None = None,
    dims: dict[str, int] | None = None,
    return_report: Literal[True],
) -> tuple[_M, ConversionReport]: ...


def convert(
    model: _M,
    family: str | PrimitiveSet,
    *,
    x: torch.Tensor | None = None,
    dims: dict[str, int] | None = None,
    return_report: bool = False,
) -> _M | tuple[_M, ConversionReport]:
    """Return a copy of ``model`` whose activations, normalisers, dropout, pooling and gates are ``family``'s.

    Linear, convolutional and embedding layers (the channel mixing that absorbs any group) keep their weights;
    only primitives are swapped. Torch's Tanh/ReLU/GELU/SiLU/Sigmoid/ELU/... and any parameter-free module that
    acts like one (the same scalar function at every entry, e.g. transformers' ``NewGELUActivation``) become the
    family's activation; LayerNorm/RMSNorm/GroupNorm(1 group) and modules that behave like a per-sample normaliser
    (a per-feature gain, invariant to the input's scale: ``LlamaRMSNorm``, a ConvNeXt ``LayerNorm2d``) its
    per-sample normaliser, BatchNorm its batch normaliser, Dropout its dropout, MaxPool2d its pooling and GLU its
    gate. An activation whose output multiplies another tensor (a squeeze-excite or GLU gate) is left alone.
    Elementwise affine parameters of normalisers cannot be carried over to a family whose normaliser has a scalar
    gain; the report says so. Every normaliser and activation that is not converted is listed with the reason,
    functions called in ``forward`` (``F.relu``) included.

    The feature axis of each primitive is read from the site graph of :func:`isotorch.params.symmetries` on
    ``x``: the axis that carries the features where the primitive sits (e.g. the channels of a
    LayerNorm2d that permutes them last, the last axis of ViT tokens), or the axis a torch primitive itself acts on
    (BatchNorm's channels). Without ``x`` a probe input is built from the first layer in registration
    order (a Linear's ``in_features``, a Conv's channels); when it does not run, activations are left alone (pass
    ``x``). ``dims={path: dim}`` overrides the axis of any module.

    Args:
        model: the model to convert (left unchanged).
        family: a family name (see :func:`get`) or a :class:`PrimitiveSet`.
        x: optional input of one forward pass, from which the feature axes and sizes are read.
        dims: optional per-module feature axis overrides.
        return_report: also return a :class:`ConversionReport`.

    Returns:
        The converted model, or ``(model, report)`` when ``return_report`` is true.

    Examples:
        >>> import torch
        >>> from isotorch import convert
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.LayerNorm(8))
        >>> iso = convert(mlp, "isotropic")
        >>> [type(m).__name__ for m in iso], type(mlp[1]).__name__  # the original is left as it was
        (['Linear', 'IsoTanh', 'ChiNorm'], 'Tanh')
        >>> torch.equal(iso[0].weight, mlp[0].weight)  # weights kept
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    fam = get(family)
    dims = dict(dims or {})
    new_model = copy.deepcopy(model)
    known = {path for path, _ in new_model.named_modules()}
    unknown = set(dims) - known
    if unknown:
        raise KeyError(f"dims names modules that are not in the model: {sorted(unknown)}")
    calls, source, functions = _read_graph(new_model, x)

    swapped: list[ConversionRow] = []
    left: list[ConversionRow] = []
    for path, module in list(new_model.named_modules()):
        if not path:
            continue
        call = calls.get(path)
        site_x = call.x if call is not None else None
        dim = dims.get(path, call.axis if call is not None else None)
        if call is not None and len(call.axes) > 1 and path not in dims:
            dim = None
        children = any(True for _ in module.children())
        try:
            new, note, role = _swap(module, fam, site_x, dim, call, children)
            dim = getattr(new, "dim", dim) if isinstance(getattr(new, "dim", None), int) else dim
        except (ValueError, TypeError) as exc:  # e.g. a block size that does not divide the width
            new, note, role = None, f"left alone: {exc}", "primitive"
        if call is not None and len(call.axes) > 1 and path not in dims and new is None and role:
            note = f"left alone: called on different feature axes {sorted(call.axes)} (pass dims=)"
        old = type(module).__name__
        if new is not None:
            reference = next(iter([*module.parameters(), *module.buffers()]), None)
            if reference is None:
                reference = next(iter([*new_model.parameters()]), None)
            if reference is not None and reference.is_floating_point():
                new = new.to(device=reference.device, dtype=reference.dtype)
            _set_module(new_model, path, new)
            swapped.append(ConversionRow(path, old, type(new).__name__, dim if dim is not None else -1, note))
        elif role:
            left.append(ConversionRow(path, old, None, dim, note))
    left += functions
    report = ConversionReport(fam.name, fam.group, tuple(swapped), tuple(left), source)
    logger.info("converted %d primitives to %s; left %d alone", len(swapped), fam.name, len(left))
    return (new_model, report) if return_report else new_model


def _read_graph(model: nn.Module, x) -> tuple[dict[str, _Call], str | None, list[ConversionRow]]:
    """The site graph's view of each module, where the input came from, and the functional primitives (which
    convert cannot swap)."""
    candidates = [(x, "x")] if x is not None else _probe_input(model)
    for candidate, source in candidates:
        try:
            calls, functions = _graph_calls(model, candidate)
        except Exception as exc:
            if x is not None:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ValueError(f"x does not fit the model: {type(exc).__name__}: {first}") from exc
            continue
        return calls, source, functions
    return {}, None, []


def _swap(module, fam, x, dim, call, children) -> tuple[nn.Module | None, str, str]:
    """The family's replacement for one module, a note, and its role (``""`` for modules that are no primitive);
    ``(None, reason, role)`` to leave it alone."""
    gate = call is not None and call.gate
    if isinstance(module, _ACTIVATIONS) or (
        not children and x is not None and dim is not None and _elementwise_nonlinear(module, x)
    ):
        if gate:
            return None, "left alone: its output multiplies another tensor (a gate, e.g. squeeze-excite)", "activation"
        if dim is None or x is None:
            return None, "left alone: feature size and axis unknown (pass x=)", "activation"
        note = (
            ""
            if isinstance(module, _ACTIVATIONS)
            else "recognised as an activation: the same scalar map at every entry"
        )
        return fam.activation(x.shape[dim], dim), note, "activation"
    if isinstance(module, nn.GLU):
        return fam.gate(module.dim), "", "gate"
    if isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
        return fam.dropout(module.p, dim if dim is not None else -1), "", "dropout"
    if isinstance(module, nn.MaxPool2d):
        if module.dilation not in (1, (1, 1)) or module.ceil_mode or module.return_indices:
            return (
                None,
                "left alone: dilation, ceil_mode and return_indices are not supported by the family's pool",
                "pool",
            )
        return fam.pool(module.kernel_size, module.stride, module.padding), "", "pool"
    kind, recognised = _norm_kind(module, x, dim)
    if kind is None:
        if _is_layer(module) or (not children and isinstance(module, _STRUCTURAL)):
            return None, "", ""
        if x is not None and dim is not None and not children and not any(True for _ in module.parameters()):
            return None, "left alone: not a primitive isotorch converts", "primitive"
        return None, "", ""
    return _swap_norm(module, fam, kind, recognised, x, dim, children)


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag))


def _swap_norm(module, fam, kind, recognised, x, dim, children):
    name = type(module).__name__
    exact = type(module) in (*_TORCH_NORMS, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if children:
        return None, "left alone: a normaliser with submodules (e.g. BatchNormAct2d: norm then activation)", "norm"
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not exact and x is not None:
        expected = F.batch_norm(
            x, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0, module.eps
        )
        with torch.no_grad():
            if not torch.allclose(module.eval()(x), expected, atol=1e-5, rtol=1e-4):
                return None, f"left alone: {name} computes more than batch normalisation", "norm"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        size, dim = module.num_features, 1
    elif type(module) in (nn.LayerNorm, nn.RMSNorm):
        if len(module.normalized_shape) != 1:
            return None, "left alone: normalises over several axes", "norm"
        size, dim = module.normalized_shape[0], -1
    elif isinstance(module, nn.GroupNorm):
        if module.num_groups != 1:
            return None, f"left alone: GroupNorm with {module.num_groups} groups is not a per-sample normaliser", "norm"
        size, dim = module.num_channels, 1
    else:  # a subclass or look-alike: the axis the site graph traced (e.g. LayerNorm2d's channels)
        if x is not None and dim is None and isinstance(getattr(module, "weight", None), torch.Tensor):
            dim = _gain_axis(module.weight, x)
        if x is None or dim is None:
            return None, "left alone: feature axis unknown (pass x=)", "norm"
        size = x.shape[dim]
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.shape != (size,):
            return None, f"left alone: its gain of shape {tuple(weight.shape)} is not one per feature", "norm"
    if fam.group == "permutation":
        return copy.deepcopy(module), "kept as it is: a per-feature normaliser is already the family's", "norm"
    new = fam.norm(size, dim, kind)
    dropped = [n for n, _ in module.named_parameters(recurse=False)]
    dropped += [n for n, b in module.named_buffers(recurse=False) if b.is_floating_point()]
    note = f"dropped {', '.join(dropped)}: {type(new).__name__} cannot represent them" if dropped else ""
    if recognised:
        note = f"{recognised}; {note}" if note else recognised
    return new, note, "norm"


# ----------------------------------------------------------------------------------------------------------------
# Group averaging: the generating half of the taxonomy
# ----------------------------------------------------------------------------------------------------------------


class Symmetrised(nn.Module):
    """The G-equivariant average of a primitive over a finite group G of n×n matrices.

    .. math:: f_G(x) = \\frac{1}{|G|} \\sum_{g \\in G} \\rho(g)^{-1} f(\\rho(g) x)

    Args:
        fn: the primitive to symmetrise; it receives a tensor of the input's rank, feature axis at ``dim``, with the
            |G| transformed copies stacked along a batch axis (axis 0, or axis 1 when ``dim`` is 0).
        elements: the group's elements as a (|G|, n, n) tensor (see :func:`isotorch.groups.generate`).
        dim: the feature axis.

    Shape:
        - Input: (*, n, *) with n at ``dim``. Output: the same.
    """

    role = "activation"
    elements: torch.Tensor
    inverses: torch.Tensor

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], elements: torch.Tensor, dim: int = -1):
        super().__init__()
        if not isinstance(elements, torch.Tensor) or elements.ndim != 3 or elements.shape[1] != elements.shape[2]:
            raise ValueError(
                f"group_elements must be a (|G|, n, n) tensor, got {getattr(elements, 'shape', type(elements))}"
            )
        self.fn = fn
        self.dim = dim
        elements = elements.detach().to(torch.float64)
        self.register_buffer("elements", elements)
        self.register_buffer("inverses", torch.linalg.inv(elements))

    @property
    def groups(self) -> tuple[str, ...]:
        """Equivariant to the finite group given by :attr:`elements` (not a canonical group in general)."""
        return ("trivial",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.elements.shape[-1]
        if x.shape[self.dim] != n:
            raise ValueError(f"x has size {x.shape[self.dim]} along dim={self.dim}, but the group acts on size {n}")
        dim = self.dim % x.ndim
        batch = 1 if dim == 0 else 0  # the group's copies are stacked along a non-feature axis, so that fn sees
        squeeze = x.ndim == 1  # a tensor of the input's rank with its feature axis where it was
        if squeeze:
            x, dim, batch = x[None], 1, 0
        g = self.elements.to(x.dtype)
        gx = torch.einsum("gij,...j->g...i", g, x.movedim(dim, -1)).movedim(-1, dim + 1)  # (G, *x.shape)
        size = x.shape[batch]
        stacked = gx.movedim(0, batch).flatten(batch, batch + 1)  # (..., G·size, ...)
        y = self.fn(stacked).unflatten(batch, (g.shape[0], size)).movedim(batch, 0)
        out = torch.einsum("gij,g...j->...i", self.inverses.to(x.dtype), y.movedim(dim + 1, -1)) / g.shape[0]
        out = out.movedim(-1, dim)
        return out[0] if squeeze else out

    def extra_repr(self) -> str:
        return f"order={self.elements.shape[0]}, n={self.elements.shape[-1]}, dim={self.dim}"


def symmetrise(
    fn: Callable[[torch.Tensor], torch.Tensor], group_elements: torch.Tensor, *, dim: int = -1
) -> Symmetrised:
    """Build a G-equivariant primitive from any primitive by group averaging (see :class:`Symmetrised`).

    Averaging a single-direction map K·σ(x·v)·v over the symmetry group of a direction set V ∋ v gives exactly
    the direction-set activation Σ_k σ(x·v_k)·v_k (when G acts transitively on V).

    Examples:
        >>> import torch, isotorch as it
        >>> signs = it.groups.generate(torch.diag(torch.tensor([-1.0, 1.0, 1.0]))[None])  # {I, reflection}
        >>> f = it.families.symmetrise(torch.nn.functional.relu, signs)
        >>> x = torch.tensor([[-2.0, 1.0, -1.0]])
        >>> f(x)  # the x0 coordinate becomes (relu(x0) − relu(−x0))/2 = x0/2: odd in x0
        tensor([[-1.,  1.,  0.]])
    """
    return Symmetrised(fn, group_elements, dim=dim)
