"""Find the hidden sites of a model and the parameter-space symmetry group of each.

A *site* is a space of hidden features: the output axis of one or more producers (Linear, Conv, Embedding,
attention output), read by one or more consumers (the input axis of Linear, Conv, attention), with primitives in
between (REFERENCE §1.3, §5.2). If every primitive φ that touches the features satisfies φ(g·z) = g·φ(z), the
network function is unchanged by

    producers:  W → g·W,  b → g·b;      consumers:  W → W·g⁻¹;      per-feature norm parameters: p → g·p.

Residual connections merge the feature spaces they add into one site (the residual stream, one shared
permutation or rotation, §5.2 #12–13; its group is what its norms allow, §8.1). Attention adds its own sites, for
``nn.MultiheadAttention`` and for attention written as code (HF GPT-2/Llama/BERT/ViT, heads split by
view/reshape/transpose, q·kᵀ and softmax or ``scaled_dot_product_attention``, see ``_heads.py``): the head
permutation (#10; with grouped-query attention the K/V groups and the query heads inside each), per K/V head
GL(d_k) on W_Q·W_Kᵀ (#8; under RoPE one scaled rotation per frequency plane) and GL(d_v) on W_V·W_O (#9). A gated
MLP (SwiGLU) adds the invertible diagonal scalings of its linear up branch. A parameter read in several places
(a tied LM head) restricts or freezes every site it touches. Anything the analysis does not understand makes the
sites it touches *frozen*, with the reason; nothing is guessed.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from isotorch.params import symmetries
    >>> model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> syms = symmetries(model, torch.randn(4, 3))
    >>> [(s.name, s.group) for s in syms]
    [('0', 'permutation × positive_scaling'), ('2', 'signed_permutation')]
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from isotorch import groups as _groups
from isotorch._util import json_safe
from isotorch.params import _heads as H
from isotorch.params import _primitives as P
from isotorch.params._trace import Graph, Node, trace

logger = logging.getLogger(__name__)

__all__ = ["Action", "Norm", "PrimitiveUse", "Site", "Symmetries", "symmetries"]

KINDS = ("out", "in", "dual", "passenger")


@dataclass(frozen=True)
class Action:
    """How a site's group element g acts on one parameter or buffer.

    ``kind`` says which matrix multiplies the features along ``axis``: ``"out"`` (producer rows, biases: g),
    ``"in"`` (consumer columns: g⁻ᵀ, i.e. W → W·g⁻¹), ``"dual"`` (the key side of W_Q·W_Kᵀ: g⁻ᵀ on rows) or
    ``"passenger"`` (per-feature parameters such as norm gains and running statistics: g, permutations only).
    The axis holds ``n·inner`` entries ordered as (n, inner), e.g. conv channels flattened with their pixels, or
    attention heads with their head dimension. Only the range ``start:stop`` of ``slice_axis`` is touched.
    """

    param: str
    axis: int
    kind: str
    inner: int = 1
    slice_axis: int | None = None
    start: int = 0
    stop: int | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return json_safe(
            {
                "param": self.param,
                "axis": self.axis,
                "kind": self.kind,
                "inner": self.inner,
                "slice_axis": self.slice_axis,
                "start": self.start,
                "stop": self.stop,
            }
        )


@dataclass(frozen=True)
class Norm:
    """A normaliser acting on a site's features (what folding it into the readers needs, REFERENCE §8.2).

    Attributes:
        name: the module path, or the traced call's name for a functional norm.
        op: the class or function name (``"LayerNorm"``, ``"LlamaRMSNorm"``, ``"layer_norm"``).
        kind: ``"layer"`` (centres and scales) or ``"rms"`` (scales only).
        weight, bias: the parameter names of the per-feature gain and bias, or ``None``.
        eps: the epsilon added to the variance, if known.
        offset: 1.0 when the gain is applied as (1 + w) (Gemma style), else 0.0.
        readers: the modules that read this norm's output (their input axis is the site's).
    """

    name: str
    op: str
    kind: str
    weight: str | None
    bias: str | None
    eps: float | None
    offset: float
    readers: tuple[str, ...]

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return json_safe(
            {
                "name": self.name,
                "op": self.op,
                "kind": self.kind,
                "weight": self.weight,
                "bias": self.bias,
                "eps": self.eps,
                "offset": self.offset,
                "readers": list(self.readers),
            }
        )


@dataclass(frozen=True)
class Site:
    """One hidden feature space of a model and its parameter-space symmetry group.

    Attributes:
        name: the site's name (its first producer's module path, or ``<attention>.heads`` / ``.qk<h>`` /
            ``.vo<h>`` for attention sites).
        size: n, the number of features the group acts on (heads for a head site).
        kind: ``"hidden"`` (one producer), ``"residual"`` (several producers merged by additions), ``"heads"``,
            ``"query_key"`` or ``"value_output"``.
        groups: every canonical group key that holds at the site (closed under subgroups).
        maximal: the largest of them; the site's group is generated by these.
        general_linear: no primitive between producers and consumers: the whole of GL(n) is a symmetry.
        status: ``"free"`` (the group acts), ``"frozen"`` (a pattern not understood, see ``reason``) or
            ``"broken"`` (the symmetry was removed: syre, asymmetric layers, a primitive with a trivial group).
        reason: why the site is frozen or broken; ``None`` when free.
        producers, consumers: module paths writing and reading the features.
        primitives: the primitives at the site with their groups, e.g. ``"1: ReLU {permutation, ...}"``.
        actions: how an element acts on each parameter (see :class:`Action`).
        structure: a group outside the canonical lattice, for which ``groups`` is only ``{"trivial"}``:
            ``"rotary_planes"`` (RoPE query–key maps: one scaled rotation per plane (i, i + n/2)) or
            ``"nonzero_scaling"`` (invertible diagonal matrices: the linear up branch of a gated MLP).
        norms: the normalisers on the features (see :class:`Norm`), e.g. every LayerNorm of a residual stream.
        tied: (parameter, alias) pairs of tied weights the site acts on; the site then allows only orthogonal
            elements (W·gᵀ on one use and W·g⁻¹ on the other agree only then) and acts once per tensor.
    """

    name: str
    size: int
    kind: str
    groups: frozenset[str]
    maximal: frozenset[str]
    general_linear: bool
    status: str
    reason: str | None
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    primitives: tuple[str, ...]
    actions: tuple[Action, ...] = field(repr=False)
    structure: str | None = None
    norms: tuple[Norm, ...] = field(default=(), repr=False)
    tied: tuple[tuple[str, str], ...] = ()

    @property
    def group(self) -> str:
        """A readable name of the site's group, e.g. ``"orthogonal"`` or ``"permutation × positive_scaling"``."""
        if self.status != "free":
            return "trivial" if self.status == "broken" else "frozen"
        if self.structure is not None:
            return self.structure
        return P.describe(self.maximal, self.general_linear)

    @property
    def writers(self) -> tuple[str, ...]:
        """The modules that write the features (for a residual stream: embeddings, attention and MLP outputs)."""
        return self.producers

    @property
    def readers(self) -> tuple[str, ...]:
        """The modules that read the features (for a residual stream: q/k/v, MLP up/gate, the LM head)."""
        return self.consumers

    @property
    def free(self) -> bool:
        """Whether the site's group can be applied."""
        return self.status == "free"

    @property
    def continuous(self) -> bool:
        """Whether the site's group has a continuous part (orthogonal, positive scaling or general linear)."""
        if self.free and self.structure is not None:
            return True
        return self.free and (self.general_linear or any(_groups.get(k).continuous for k in self.maximal))

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return json_safe(
            {
                "name": self.name,
                "size": self.size,
                "kind": self.kind,
                "group": self.group,
                "groups": sorted(self.groups),
                "maximal": sorted(self.maximal),
                "general_linear": self.general_linear,
                "status": self.status,
                "reason": self.reason,
                "producers": list(self.producers),
                "consumers": list(self.consumers),
                "primitives": list(self.primitives),
                "actions": [a.to_dict() for a in self.actions],
                "structure": self.structure,
                "norms": [n.to_dict() for n in self.norms],
                "tied": [list(t) for t in self.tied],
            }
        )


@dataclass(frozen=True)
class PrimitiveUse:
    """One application of a primitive that the site analysis assigned a group to (read by the audit and convert).

    Attributes:
        node: the name of the graph node that applied it.
        path: the module path for a module call; ``None`` for a function or tensor method (``F.relu``, ``x.tanh()``).
        label: the module's class name, or the function/method name.
        module: the module, or ``None``.
        axis: the feature axis in the primitive's input tensor as traced (non-negative).
        ndim: the number of dimensions of that input.
        site: the name of the site whose features it acts on, or ``None`` when that space is no site (e.g. features
            not produced by a layer).
        groups: the group keys the analysis used for it; ``None`` for a linear operation (commutes with GL(n)).
    """

    node: str
    path: str | None
    label: str
    module: nn.Module | None = field(repr=False, compare=False)
    axis: int
    ndim: int
    site: str | None
    groups: tuple[str, ...] | None


@dataclass(frozen=True)
class Symmetries:
    """The sites of a model found on an example input (see :func:`symmetries`).

    Index by site name (``syms["fc1"]``), iterate over sites, and use :attr:`free` for the sites whose group can
    be applied. The example input and the parameter shapes are kept (not shown) so that transforms can be
    verified and checked against the model they are applied to.
    """

    sites: tuple[Site, ...]
    model: str
    method: str
    note: str | None = None
    x: tuple = field(default=(), repr=False, compare=False)
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no site named {name!r}; sites: {', '.join(s.name for s in self.sites) or '(none)'}")

    def __contains__(self, name: object) -> bool:
        return any(s.name == name for s in self.sites)

    def __iter__(self) -> Iterator[Site]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    @property
    def free(self) -> tuple[Site, ...]:
        """The sites whose group can be applied."""
        return tuple(s for s in self.sites if s.free)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return json_safe(
            {
                "model": self.model,
                "method": self.method,
                "note": self.note,
                "sites": [s.to_dict() for s in self.sites],
            }
        )

    def __repr__(self) -> str:
        lines = [f"Symmetries({self.model}, traced by {self.method}, {len(self.sites)} sites)"]
        width = max([len(s.name) for s in self.sites] + [4])
        for s in self.sites:
            detail = s.group if s.free else f"{s.status}: {s.reason}"
            lines.append(f"  {s.name:<{width}}  n={s.size:<5} {s.kind:<12} {detail}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# the analysis


class _Space:
    """A feature space under construction (a union-find item)."""

    def __init__(self, index: int, n: int, order: int):
        self.index = index
        self.parent = self
        self.n = n
        self.order = order
        self.producers: list[str] = []
        self.consumers: list[str] = []
        self.actions: list[Action] = []
        self.primitives: list[tuple[str, tuple[str, ...] | None]] = []
        self.frozen: list[str] = []
        self.broken: list[str] = []
        self.reaches_output = False
        self.norms: dict[str, dict] = {}  # norm name -> Norm fields (readers as a list)
        self.absorbed = False  # q/k/v or attention-output space, reported by its attention sites
        self.split = False  # a packed projection split into parts (c_attn), reported by its parts
        self.added = False  # features of several layers merged by an addition (a residual stream)

    def root(self) -> _Space:
        s = self
        while s.parent is not s:
            s.parent = s.parent.parent
            s = s.parent
        return s


@dataclass(frozen=True)
class _Feat:
    """A tensor carrying the features of a space on ``axis`` (size n·inner, ordered (n, inner))."""

    space: _Space
    axis: int
    inner: int
    ndim: int
    norm: str | None = None  # the norm whose output these features are (readers are recorded under it)


@dataclass(frozen=True)
class _AttnOut:
    """The tuple returned by multi-head attention; item 0 carries the features of ``space``."""

    space: _Space | None


_INPUT = "input"  # derived from the model input (a fixed basis)
_CONST = "const"  # does not depend on any feature space (constants, parameters, shapes)
_UNKNOWN = "unknown"  # computed by an operation the analysis does not understand

_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}
_PASS_METHODS = {"contiguous", "clone", "detach", "to", "float", "double", "half", "bfloat16", "type_as"}
_SHAPE_METHODS = {"size", "dim", "numel", "shape", "__len__"}
_RESHAPE_METHODS = {"view", "reshape", "flatten"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
_TRANSPOSE = {"transpose", "permute", "swapaxes", "movedim"}
_REDUCE = {"mean", "sum"}
_MATMUL = {operator.matmul, torch.matmul}


def _close(a: Any, b: Any) -> bool:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return False
    a, b = a.double(), b.double()
    scale = max(float(a.abs().max()) if a.numel() else 0.0, float(b.abs().max()) if b.numel() else 0.0, 1e-300)
    tol = 1e-10 if a.dtype == torch.float64 else 1e-5
    return bool(torch.isfinite(a).all()) and float((a - b).abs().max()) <= tol * scale


def _elementwise_keys(fn, x: torch.Tensor, axis: int) -> tuple[str, ...] | None:
    """The group keys of ``fn`` if it acts elementwise on the feature axis of ``x`` (checked on ``x``: a random
    permutation commutes with it, and changing one feature changes no other output), else ``None``. Sign and
    scale symmetries are then read off f(−x) = −f(x) and f(c·x) = c·f(x); f(x) = a·x is linear."""
    n = x.shape[axis] if x.ndim else 0
    if n < 2 or not x.is_floating_point() or x.numel() == 0:
        return None
    try:
        with torch.no_grad():
            y = fn(x)
            if not isinstance(y, torch.Tensor) or y.shape != x.shape or not bool(torch.isfinite(y).all()):
                return None
            gen = torch.Generator().manual_seed(0)
            perm = torch.randperm(n, generator=gen)
            if not _close(fn(x.index_select(axis, perm)), y.index_select(axis, perm)):
                return None
            spread = float(x.abs().max()) or 1.0
            for j in dict.fromkeys((0, n - 1, int(torch.randint(n, (1,), generator=gen)))):
                x2 = x.clone()
                column = x2.select(axis, j)
                column.copy_(torch.randn(column.shape, generator=gen, dtype=torch.float64).to(x.dtype) * spread)
                y2 = fn(x2)
                keep = torch.ones(n, dtype=torch.bool)
                keep[j] = False
                if not _close(y2.movedim(axis, -1)[..., keep], y.movedim(axis, -1)[..., keep]):
                    return None
            xd, yd = x.double(), y.double()
            slope = float((xd * yd).sum() / (xd * xd).sum()) if float((xd * xd).sum()) > 0 else 0.0
            if _close(y, x * slope):
                return P.LINEAR
            keys = ["signed_permutation" if _close(fn(-x), -y) else "permutation"]
            if _close(fn(x * 2.5), y * 2.5):
                keys.append("positive_scaling")
            return tuple(keys)
    except Exception:  # anything the probes cannot run: leave it to the full audit
        return None


def other_is_scalar_tensor(other: Any, other_node: Any) -> bool:
    """Whether the non-feature factor of a product is a one-element constant tensor (a scale such as 1/√d)."""
    if not (isinstance(other, str) and other == _CONST and isinstance(other_node, Node)):
        return False
    value = other_node.value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True  # a number computed from shapes (fx: math.sqrt(d_h))
    return isinstance(value, torch.Tensor) and value.numel() == 1


def _flat(obj: Any) -> list:
    if isinstance(obj, list):
        return [x for o in obj for x in _flat(o)]
    return [obj]


def _parametrised(module: nn.Module) -> list[str]:
    """The names of the tensors torch's ``parametrize`` registered on ``module`` (its ``parametrizations``)."""
    registered = module.parametrizations
    assert isinstance(registered, nn.ModuleDict)
    return list(registered)


def _linear_layer(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv"`` or ``"embedding"`` for the layers that produce and consume features."""
    kind = getattr(type(module), "_isotorch_params_layer", None)
    if kind is not None:
        return kind
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "conv"
    if isinstance(module, nn.Embedding):
        return "embedding"
    weight = getattr(module, "weight", None)
    if (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and getattr(module, "nf", None) == weight.shape[1]
    ):
        return "conv1d"  # HF GPT-2: y = x·W + b with W of shape (in, out)
    return None


class _Analysis:
    def __init__(self, model: nn.Module, graph: Graph):
        self.model = model
        self.graph = graph
        self.spaces: list[_Space] = []
        self.values: dict[int, Any] = {}
        self.extra_sites: list[Site] = []
        self.audit_cache: dict[tuple, tuple[str, ...]] = {}
        self.current: Node | None = None
        self.uses: list[tuple[Node, _Space, int, int, tuple[str, ...] | None]] = []
        self.root_site: dict[int, int] = {}
        self.attention: list[H.AttentionRecord] = []
        self.scales: list[tuple[_Space, list[Action], str, _Space, int]] = []  # SwiGLU up branches
        self.children: dict[int, list[_Space]] = {}  # split parent space -> its parts
        # parameter uses: canonical name -> [(node name, understood)], and aliases of tied tensors
        self.canon: dict[str, str] = {}
        first: dict[int, str] = {}
        for name, t in list(model.named_parameters(remove_duplicate=False)) + list(
            model.named_buffers(remove_duplicate=False)
        ):
            self.canon[name] = first.setdefault(id(t), name)
        self.param_reads: dict[str, list[list]] = {}
        self.understood: set[int] = set()

    # -- helpers -----------------------------------------------------------------------------------------------

    def new_space(self, n: int) -> _Space:
        s = _Space(len(self.spaces), n, len(self.spaces))
        self.spaces.append(s)
        return s

    def union(self, a: _Space, b: _Space) -> _Space:
        ra, rb = a.root(), b.root()
        if ra is rb:
            return ra
        if rb.order < ra.order:
            ra, rb = rb, ra
        rb.parent = ra
        for attr in ("producers", "consumers", "actions", "primitives", "frozen", "broken"):
            getattr(ra, attr).extend(getattr(rb, attr))
        for key, info in rb.norms.items():
            ra.norms.setdefault(key, info)
        ra.reaches_output = ra.reaches_output or rb.reaches_output
        ra.added = ra.added or rb.added
        if rb.split or ra.split:
            ra.frozen.append("a packed projection is used both split and unsplit")
        if ra.n != rb.n:
            ra.frozen.append(f"added features of different sizes ({ra.n} and {rb.n})")
        return ra

    def classify(self, arg: Any) -> Any:
        if isinstance(arg, Node):
            return self.values.get(id(arg), _UNKNOWN)
        if isinstance(arg, (tuple, list)):
            return [self.classify(a) for a in arg]
        if isinstance(arg, dict):
            return [self.classify(a) for a in arg.values()]
        return _CONST

    def feats_in(self, obj: Any) -> list[_Feat]:
        out = []
        if isinstance(obj, _Feat):
            out.append(obj)
        elif isinstance(obj, _AttnOut) and obj.space is not None:
            out.append(_Feat(obj.space, -1, 1, 0))
        elif isinstance(obj, H.Heads):
            out.append(_Feat(obj.space, obj.dim_axis, 1, obj.ndim))
        elif isinstance(obj, (H.Half, H.Rot, H.RopeTerm)):
            out.append(_Feat(obj.parent.space, obj.parent.dim_axis, 1, obj.parent.ndim))
        elif isinstance(obj, H.Scores):
            out.extend(self.feats_in([obj.q, obj.k]))
        elif isinstance(obj, H.Parts):
            out.extend(self.feats_in(list(obj.parts)))
        elif isinstance(obj, list):
            for o in obj:
                out.extend(self.feats_in(o))
        return out

    def taints(self, obj: Any) -> set[str]:
        if isinstance(obj, str):
            return {obj}
        if isinstance(obj, list):
            return set().union(*[self.taints(o) for o in obj]) if obj else set()
        return set()

    def freeze(self, feats: list[_Feat], reason: str) -> None:
        for f in feats:
            r = f.space.root()
            if reason not in r.frozen:
                r.frozen.append(reason)

    def result_taint(self, node: Node) -> str:
        kinds = self.taints([self.classify(a) for a in node.args] + [self.classify(v) for v in node.kwargs.values()])
        if _INPUT in kinds:
            return _INPUT
        if _UNKNOWN in kinds:
            return _UNKNOWN
        return _CONST

    def param_name(self, qualname: str, local: str) -> str:
        return f"{qualname}.{local}" if qualname else local

    # -- the walk ------------------------------------------------------------------------------------------------

    def run(self) -> None:
        for node in self.graph.nodes:
            self.current = node
            self.values[id(node)] = self.visit(node)
            self.record_reads(node)
        self.current = None

    def record_reads(self, node: Node) -> None:
        """Note which parameters ``node`` read and whether the analysis accounted for that use."""
        names: list[str] = []
        if node.op == "module":
            prefix = node.qualname
            assert prefix is not None  # set on every module node
            names = [self.param_name(prefix, n) for n, _ in node.target.named_parameters()]
        elif node.op in ("function", "method"):
            stack = list(node.args) + list(node.kwargs.values())
            while stack:
                a = stack.pop()
                if isinstance(a, Node):
                    v = self.values.get(id(a))
                    if isinstance(v, tuple) and v[0] in ("param", "paramT", "paramE") and v[1]:
                        names.append(v[1])
                elif isinstance(a, (tuple, list)):
                    stack.extend(a)
                elif isinstance(a, dict):
                    stack.extend(a.values())
        ok = id(node) in self.understood
        for name in names:
            self.param_reads.setdefault(self.canon.get(name, name), []).append([node.name, ok])

    def visit(self, node: Node) -> Any:
        if node.op == "input":
            return _INPUT
        if node.op == "param":
            return ("param", node.qualname, node.value)
        if node.op == "output":
            for f in self.feats_in(self.classify(node.args)):
                f.space.root().reaches_output = True
            return _CONST
        if node.op == "const":
            return _CONST
        if node.op == "opaque":
            feats = self.feats_in(self.classify(list(node.args)))
            reason = node.kwargs.get("reason") if isinstance(node.kwargs, dict) else None
            self.freeze(feats, reason or f"its features are used by code that could not be traced ({self.graph.note})")
            return _UNKNOWN
        if node.op == "module":
            return self.visit_module(node)
        return self.visit_call(node)

    def first_arg(self, node: Node) -> Any:
        if node.args:
            return self.classify(node.args[0])
        if node.kwargs:
            return self.classify(next(iter(node.kwargs.values())))
        return _CONST

    def visit_module(self, node: Node) -> Any:
        module, qual = node.target, node.qualname
        assert qual is not None  # set on every module node
        if isinstance(module, nn.MultiheadAttention):
            self.understood.add(id(node))
            return self.visit_attention(node)
        layer = _linear_layer(module)
        arg = self.first_arg(node)
        other = self.feats_in([self.classify(a) for a in node.args[1:]] + [self.classify(node.kwargs)])
        if other:
            self.freeze(other, f"{qual} ({type(module).__name__}) receives features in an extra argument")
        if layer is not None:
            self.understood.add(id(node))
            return self.visit_layer(node, module, qual, layer, arg)
        if isinstance(arg, (H.Heads, H.Scores, H.Half, H.Rot, H.RopeTerm, H.Parts)):
            return self.visit_headed_module(node, module, qual, arg)
        if not isinstance(arg, _Feat):
            return self.result_taint(node)
        return self.visit_primitive(node, module, qual, arg)

    def consume(self, feat: _Feat, qual: str, actions: list[Action]) -> None:
        """Record a layer reading ``feat`` (its input-axis actions), under the norm that produced it if any."""
        space = feat.space.root()
        space.consumers.append(qual)
        space.actions.extend(actions)
        if feat.norm is not None and feat.norm in space.norms:
            readers = space.norms[feat.norm]["readers"]
            if qual not in readers:
                readers.append(qual)

    def visit_layer(self, node: Node, module: nn.Module, qual: str, layer: str, arg: Any) -> Any:
        name = type(module).__name__
        broken = getattr(module, "_isotorch_params_broken", None)
        if broken is None and parametrize.is_parametrized(module):
            broken = f"{qual} is reparametrised ({', '.join(_parametrised(module))}): syre or a constraint"
        weight_name = "weight"
        grouped = layer == "conv" and getattr(module, "groups", 1) != 1
        in_axis = 0 if layer == "conv1d" else 1
        # consumer side
        if isinstance(arg, (H.Heads, H.Scores, H.Half, H.Rot, H.RopeTerm, H.Parts)):
            self.freeze(self.feats_in(arg), f"{qual} ({name}) reads attention heads before they are merged")
        elif isinstance(arg, _Feat):
            ok_axis = arg.axis == arg.ndim - 1 if layer in ("linear", "conv1d") else arg.axis == 1
            if layer == "embedding":
                self.freeze([arg], f"{qual} (Embedding) reads hidden features as indices")
            elif not ok_axis:
                self.freeze([arg], f"{qual} ({name}) reads the features along axis {arg.axis}, not its input axis")
            elif grouped:
                self.freeze([arg], f"{qual} is a grouped convolution (groups={module.groups})")
            elif layer == "conv" and arg.inner != 1:
                self.freeze([arg], f"{qual} ({name}) reads flattened features")
            else:
                self.consume(arg, qual, [Action(self.param_name(qual, weight_name), in_axis, "in", arg.inner)])
                if broken:
                    arg.space.root().broken.append(broken)
        # producer side
        value = node.value
        if not isinstance(value, torch.Tensor):
            return _UNKNOWN
        if layer == "embedding":
            assert isinstance(module, nn.Embedding)  # the only layer _linear_layer calls "embedding"
            axis, n = value.ndim - 1, module.embedding_dim
            actions = [Action(self.param_name(qual, weight_name), 1, "out")]
        else:
            axis = value.ndim - 1 if layer in ("linear", "conv1d") else 1
            n = value.shape[axis]
            actions = [Action(self.param_name(qual, weight_name), 1 if layer == "conv1d" else 0, "out")]
            if getattr(module, "bias", None) is not None:
                actions.append(Action(self.param_name(qual, "bias"), 0, "out"))
        space = self.new_space(n)
        space.producers.append(qual)
        space.actions.extend(actions)
        if broken:
            space.broken.append(broken)
        if grouped:
            space.frozen.append(f"{qual} is a grouped convolution (groups={module.groups})")
        return _Feat(space, axis, 1, value.ndim)

    def visit_attention(self, node: Node) -> Any:
        module: nn.MultiheadAttention = node.target
        qual = node.qualname
        assert qual is not None  # set on every module node
        args = list(node.args) + [None] * 3
        kw = node.kwargs
        q = self.classify(kw.get("query", args[0]))
        k = self.classify(kw.get("key", args[1]))
        v = self.classify(kw.get("value", args[2]))
        d, heads = module.embed_dim, module.num_heads
        dh = d // heads
        unsupported = None
        if not module._qkv_same_embed_dim:
            unsupported = f"{qual} has separate q/k/v projection weights (kdim/vdim), not supported"
        elif module.bias_k is not None:
            unsupported = f"{qual} has add_bias_kv=True, not supported"
        other = self.feats_in([self.classify(a) for a in args[3:] if a is not None] + [self.classify(kw)])
        other = [f for f in other if not any(f is x for x in (q, k, v))]
        if other:
            self.freeze(other, f"{qual} receives features in a mask or extra argument")
        if unsupported is None and parametrize.is_parametrized(module):
            unsupported = f"{qual} is reparametrised ({', '.join(_parametrised(module))}): syre or a constraint"
        w = self.param_name(qual, "in_proj_weight")
        b = self.param_name(qual, "in_proj_bias") if module.in_proj_bias is not None else None
        # the stream (consumer) side: query, key and value rows of in_proj read their inputs
        same = isinstance(q, _Feat) and q is k and k is v
        for part, feat in enumerate((q, k, v)):
            if not isinstance(feat, _Feat):
                continue
            if unsupported:
                self.freeze([feat], unsupported)
                continue
            if feat.axis != feat.ndim - 1 or feat.inner != 1:
                self.freeze([feat], f"{qual} reads the features along axis {feat.axis}, not the last axis")
                continue
            sp = feat.space.root()
            if qual not in sp.consumers:
                sp.consumers.append(qual)
            if feat.norm is not None and feat.norm in sp.norms and qual not in sp.norms[feat.norm]["readers"]:
                sp.norms[feat.norm]["readers"].append(qual)
            if same:
                sp.actions.append(Action(w, 1, "in"))
                break
            sp.actions.append(Action(w, 1, "in", slice_axis=0, start=part * d, stop=(part + 1) * d))
        # the attention-internal sites
        o_w = self.param_name(qual, "out_proj.weight")
        if unsupported is None:
            if heads > 1:
                acts = []
                for part in range(3):
                    acts.append(Action(w, 0, "out", dh, None, part * d, (part + 1) * d))
                    if b:
                        acts.append(Action(b, 0, "out", dh, None, part * d, (part + 1) * d))
                acts.append(Action(o_w, 1, "in", dh))
                self.extra_sites.append(self.fixed_site(f"{qual}.heads", heads, "heads", ("permutation",), acts, qual))
            for h in range(heads):
                lo = h * dh
                acts = [Action(w, 0, "out", 1, None, lo, lo + dh), Action(w, 0, "dual", 1, None, d + lo, d + lo + dh)]
                if b:
                    acts += [
                        Action(b, 0, "out", 1, None, lo, lo + dh),
                        Action(b, 0, "dual", 1, None, d + lo, d + lo + dh),
                    ]
                self.extra_sites.append(self.fixed_site(f"{qual}.qk{h}", dh, "query_key", None, acts, qual))
                acts = [Action(w, 0, "out", 1, None, 2 * d + lo, 2 * d + lo + dh)]
                if b:
                    acts.append(Action(b, 0, "out", 1, None, 2 * d + lo, 2 * d + lo + dh))
                acts.append(Action(o_w, 1, "in", 1, None, lo, lo + dh))
                self.extra_sites.append(self.fixed_site(f"{qual}.vo{h}", dh, "value_output", None, acts, qual))
        # the producer side: out_proj writes a new feature space
        value = node.value
        out = value[0] if isinstance(value, tuple) else value
        if not isinstance(out, torch.Tensor):
            return _UNKNOWN
        space = self.new_space(d)
        space.producers.append(qual)
        space.actions.append(Action(o_w, 0, "out"))
        if module.out_proj.bias is not None:
            space.actions.append(Action(self.param_name(qual, "out_proj.bias"), 0, "out"))
        if unsupported:
            space.frozen.append(unsupported)
        return _AttnOut(space)

    def fixed_site(self, name, n, kind, keys, actions, qual) -> Site:
        general = keys is None
        groups = P.closure(frozenset(P.LINEAR if general else keys), n)
        return Site(
            name=name,
            size=n,
            kind=kind,
            groups=groups,
            maximal=_groups.maximal(groups, n),
            general_linear=general,
            status="free",
            reason=None,
            producers=(qual,),
            consumers=(qual,),
            primitives=(),
            actions=tuple(actions),
        )

    def visit_primitive(self, node: Node, module: nn.Module, qual: str, arg: _Feat) -> Any:
        space = arg.space.root()
        n = space.n
        name = type(module).__name__
        if isinstance(module, nn.Flatten):
            return self.reshape(arg, node.args[0].value, node.value, f"{qual} (Flatten)")
        if P.is_isotorch_primitive(module):
            declared: Any = module  # its dim and groups are plain attributes, which nn.Module does not type
            dim = int(declared.dim)
            if dim % arg.ndim != arg.axis:
                self.freeze([arg], f"{qual} ({name}) acts along dim {module.dim}, but the features are on {arg.axis}")
                return _UNKNOWN
            if arg.inner != 1:
                self.freeze([arg], f"{qual} ({name}) acts on flattened features")
                return _UNKNOWN
            value = node.value
            if not isinstance(value, torch.Tensor) or value.ndim != arg.ndim or value.shape[arg.axis] != n:
                self.freeze([arg], f"{qual} ({name}) changes the size of the feature axis (e.g. a gate)")
                return _UNKNOWN
            own = tuple(declared.groups)
            self.add_primitive(space, f"{qual}: {name}", own)
            for local, ax in P.passenger_names(module, n) if set(own) != {"trivial"} else ():
                space.actions.append(Action(self.param_name(qual, local), ax, "passenger"))
            return self.same(arg, node.value)
        keys, reason = P.module_groups(module, n, arg.axis, arg.ndim)
        if reason:
            self.freeze([arg], f"{qual}: {reason}")
            return _UNKNOWN
        if keys is not None:
            if arg.inner != 1 and keys != P.LINEAR and not set(keys) <= {"permutation", "positive_scaling"}:
                self.freeze([arg], f"{qual} ({name}) acts on flattened features")
                return _UNKNOWN
            self.understood.add(id(node))
            if isinstance(module, nn.modules.dropout._DropoutNd):
                # the symmetries are those of the function in eval mode, where dropout is the identity (in training
                # its random masks respect only signed permutations and scalings)
                keys, name = P.LINEAR, f"{name} (identity in eval mode)"
            self.add_primitive(space, f"{qual}: {name}", keys)
            for local, ax in P.passenger_names(module, n):
                space.actions.append(Action(self.param_name(qual, local), ax, "passenger"))
            out = self.same(arg, node.value)
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and isinstance(out, _Feat):
                kind = "layer" if isinstance(module, nn.LayerNorm) else "rms"
                weight = self.param_name(qual, "weight") if module.weight is not None else None
                bias = getattr(module, "bias", None)
                bias = self.param_name(qual, "bias") if bias is not None else None
                return self.add_norm(out, qual, name, kind, weight, bias, module.eps, 0.0)
            if isinstance(module, (nn.Dropout, nn.Identity)) and isinstance(out, _Feat):
                return _Feat(out.space, out.axis, out.inner, out.ndim, arg.norm)
            return out
        if any(True for _ in module.parameters(recurse=True)):
            found = self.identify_norm(node, module, arg)
            if found is not None:
                kind, weight, bias, eps, offset = found
                self.understood.add(id(node))
                self.add_primitive(space, f"{qual}: {name}", ("permutation",))
                for local in (weight, bias):
                    if local is not None:
                        space.actions.append(Action(self.param_name(qual, local), 0, "passenger"))
                out = self.same(arg, node.value)
                if not isinstance(out, _Feat):
                    return out
                w = self.param_name(qual, weight) if weight else None
                b = self.param_name(qual, bias) if bias else None
                return self.add_norm(out, qual, name, kind, w, b, eps, offset)
            self.freeze([arg], f"{qual}: unsupported layer {name} (it has parameters)")
            return _UNKNOWN
        rest = node.args[1:]
        key = (type(module), repr(module), repr(self.concrete(rest)), repr(self.concrete(node.kwargs)))
        fn = lambda t: module(t, *self.concrete(rest), **self.concrete(node.kwargs))  # noqa: E731
        return self.audited(node, arg, fn, qual, key)

    def add_norm(self, out: _Feat, name: str, op: str, kind: str, weight, bias, eps, offset) -> _Feat:
        """Record a normaliser on the features of ``out``; its readers are collected as layers read it."""
        space = out.space.root()
        eps = float(eps) if isinstance(eps, (int, float)) else None
        space.norms[name] = {
            "name": name,
            "op": op,
            "kind": kind,
            "weight": weight,
            "bias": bias,
            "eps": eps,
            "offset": offset,
            "readers": [],
        }
        return _Feat(out.space, out.axis, out.inner, out.ndim, name)

    def identify_norm(self, node: Node, module: nn.Module, arg: _Feat):
        """Read an unknown layer whose only parameters are per-feature vectors (HF ``LlamaRMSNorm``,
        ``T5LayerNorm``, ...) as RMSNorm or LayerNorm with a gain, by comparing its output on the traced input with
        each formula. Returns (kind, weight name, bias name, eps, offset) or ``None``."""
        x = node.args[0].value if node.args and isinstance(node.args[0], Node) else None
        y = node.value
        n = arg.space.root().n
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or y.shape != x.shape:
            return None
        if arg.axis != arg.ndim - 1 or arg.inner != 1 or next(module.children(), None) is not None:
            return None
        own = dict(module.named_parameters(recurse=False))
        if not own or any(p.ndim != 1 or p.shape[0] != n for p in own.values()) or len(own) > 2:
            return None
        weight = "weight" if "weight" in own else None
        bias = "bias" if "bias" in own else None
        if weight is None or len(own) != (2 if bias else 1):
            return None
        eps = None
        for attr in ("variance_epsilon", "eps", "epsilon", "layer_norm_eps", "rms_norm_eps"):
            value = getattr(module, attr, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                eps = float(value)
                break
        if eps is None:
            return None
        x64, y64 = x.detach().double(), y.detach().double()
        w = own["weight"].detach().double()
        b = own["bias"].detach().double() if bias else torch.zeros_like(w)
        rms = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps)
        centred = x64 - x64.mean(-1, keepdim=True)
        ln = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
        tol = 1e-5  # HF norms compute in float32 even for float64 models; 1e-5 still tells RMSNorm from LayerNorm
        scale = float(y64.abs().max()) or 1.0
        for kind, z in (("rms", rms), ("layer", ln)):
            for offset in (0.0, 1.0):
                if float((z * (w + offset) + b - y64).abs().max()) <= tol * scale:
                    return kind, weight, bias, eps, offset
        return None

    def add_primitive(self, space: _Space, desc: str, keys: tuple[str, ...]) -> None:
        space.primitives.append((desc, None if keys == P.LINEAR else keys))
        node = self.current
        if node is not None and node.op in ("module", "function", "method"):
            feats = self.feats_in([self.classify(a) for a in node.args] + [self.classify(node.kwargs)])
            if feats:
                x = feats[0]
                self.uses.append((node, space, x.axis % max(x.ndim, 1), x.ndim, None if keys == P.LINEAR else keys))

    def same(self, arg: _Feat, value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or value.ndim != arg.ndim:
            self.freeze([arg], "a primitive changed the shape of the features")
            return _UNKNOWN
        return arg

    def concrete(self, obj: Any) -> Any:
        if isinstance(obj, Node):
            return obj.value
        if isinstance(obj, tuple):
            return tuple(self.concrete(o) for o in obj)
        if isinstance(obj, list):
            return [self.concrete(o) for o in obj]
        if isinstance(obj, dict):
            return {k: self.concrete(v) for k, v in obj.items()}
        return obj

    def audited(self, node: Node, arg: _Feat, fn, desc: str, key: tuple | None = None) -> Any:
        """Measure the group of an unknown parameter-free operation with isotorch.audit (once per operation,
        settings and input shape: a model repeats its blocks)."""
        if arg.inner != 1:
            self.freeze([arg], f"{desc}: unknown operation on flattened features")
            return _UNKNOWN
        x = node.args[0].value if node.args and isinstance(node.args[0], Node) else None
        if not isinstance(x, torch.Tensor) or not isinstance(node.value, torch.Tensor) or node.value.shape != x.shape:
            self.freeze([arg], f"{desc}: unknown operation that changes the shape of the features")
            return _UNKNOWN
        if key is not None:
            try:
                key = (*key, tuple(x.shape), x.dtype, arg.axis)
                hash(key)
            except TypeError:
                key = None
        keys = self.audit_cache.get(key) if key is not None else None
        if keys is None:
            keys = _elementwise_keys(fn, x.detach(), arg.axis)
            if keys is not None and key is not None:
                self.audit_cache[key] = keys
        if keys is not None:  # an elementwise function (e.g. HF's GELU classes): cheap exact checks suffice
            self.add_primitive(arg.space.root(), f"{desc} (audited)", keys)
            return arg
        from isotorch.audit import audit  # imported here: isotorch.audit builds on this module

        try:
            # a fixed probe: finding the structure must neither depend on nor advance the global RNG
            result = audit(fn, x.detach().clone(), dim=arg.axis, generator=torch.Generator().manual_seed(0))
            keys = tuple(sorted(result.equivariant))
        except Exception as err:
            self.freeze([arg], f"{desc}: the audit of this unknown operation failed ({type(err).__name__}: {err})")
            return _UNKNOWN
        if not keys:
            keys = ("trivial",)
        self.add_primitive(arg.space.root(), f"{desc} (audited)", keys)
        return arg

    def reshape(self, arg: _Feat, before: Any, after: Any, desc: str) -> Any:
        if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor):
            self.freeze([arg], f"{desc}: cannot follow the reshape")
            return _UNKNOWN
        a, ib, ia = arg.axis, tuple(before.shape), tuple(after.shape)
        if ib == ia or (len(ia) > a and ia[: a + 1] == ib[: a + 1] and arg.inner == 1):
            return _Feat(arg.space, a, arg.inner, len(ia), arg.norm)
        if len(ia) == a + 1 and ia[:a] == ib[:a]:  # flatten the feature axis with everything after it
            return _Feat(arg.space, a, arg.inner * P.prod(ib[a + 1 :]), len(ia))
        tail = len(ib) - a
        if len(ia) >= tail and ia[len(ia) - tail :] == ib[a:]:  # only axes before the features change
            return _Feat(arg.space, len(ia) - tail, arg.inner, len(ia), arg.norm)
        if (
            arg.inner == 1
            and len(ia) == len(ib) + 1
            and ia[:a] == ib[:a]
            and ia[a + 2 :] == ib[a + 1 :]
            and ia[a] * ia[a + 1] == ib[a]
            and ia[a] > 1
        ):  # (…, H·d_h, …) → (…, H, d_h, …): attention heads
            return H.Heads(arg.space, a, a + 1, len(ia), tuple(range(ia[a])), ia[a + 1])
        self.freeze([arg], f"{desc}: a reshape {ib} → {ia} that mixes the feature axis with others")
        return _UNKNOWN

    def visit_call(self, node: Node) -> Any:
        target = node.target
        args = [self.classify(a) for a in node.args]
        kwargs = {k: self.classify(v) for k, v in node.kwargs.items()}
        feats = self.feats_in(args + list(kwargs.values()))
        label = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
        if target is operator.getitem and args and isinstance(args[0], _AttnOut):
            index = node.args[1] if len(node.args) > 1 else None
            if index == 0 and args[0].space is not None and isinstance(node.value, torch.Tensor):
                return _Feat(args[0].space, node.value.ndim - 1, 1, node.value.ndim)
            return _CONST
        if not feats:
            x = args[0] if args else None
            if isinstance(x, tuple) and x[0] == "param" and isinstance(node.value, torch.Tensor) and x[2].ndim == 2:
                swaps = (node.op == "method" and target in ("t", "T", "mT")) or (
                    ((node.op == "method" and target in ("transpose", "swapaxes")) or target is torch.transpose)
                    and {int(self.concrete(d)) % 2 for d in node.args[1:3]} == {0, 1}
                )
                if swaps:
                    self.understood.add(id(node))  # a view; its uses are checked where it is read
                    return ("paramT", x[1], x[2])
            if isinstance(x, tuple) and x[0] == "param" and node.op == "method" and target in ("expand", "expand_as"):
                self.understood.add(id(node))  # a broadcast view (e.g. ViT's class token), read by a cat
                return ("paramE", x[1], x[2])
            return self.result_taint(node)
        x = args[0] if args else None
        if any(isinstance(a, H.HEADED) for a in _flat(args + list(kwargs.values()))):
            return self.visit_headed(node, target, args, kwargs, feats, label)
        if target is operator.getitem and isinstance(x, H.Parts):
            index = self.concrete(node.args[1])
            return x.parts[index] if isinstance(index, int) else self.fail(feats, label)
        if (node.op == "method" and target in _SHAPE_METHODS) or target is getattr:
            return _CONST
        spatial = P.spatial_function_groups(target) if node.op == "function" else None
        if spatial is not None and isinstance(x, _Feat) and len(feats) == 1:
            returns_indices = bool(self.concrete(node.kwargs.get("return_indices", False)))
            if x.axis != 1 or x.inner != 1 or returns_indices or not isinstance(node.value, torch.Tensor):
                return self.fail(feats, f"{label} (pools the axes after dim 1, but the features are on {x.axis})")
            self.understood.add(id(node))
            self.add_primitive(x.space.root(), f"{node.name}: {label}", spatial)
            return self.same(x, node.value)
        if target is torch.cat:
            return self.visit_cat(node, args, feats, label)
        if (node.op == "method" and target in ("split", "chunk")) or target in (torch.split, torch.chunk):
            return self.visit_split(node, x, feats, label)
        if target is F.linear or target in _MATMUL or (node.op == "method" and target in ("matmul", "__matmul__")):
            return self.visit_functional_linear(node, target, args, kwargs, feats, label)
        if target in (F.layer_norm, F.rms_norm, torch.layer_norm, torch.rms_norm):
            return self.visit_functional_norm(node, target, args, kwargs, feats, label)
        if target is F.scaled_dot_product_attention:
            return self.fail(feats, f"{label} on features that are not split into heads")
        if (node.op == "method" and target in _PASS_METHODS) or target in (torch.clone,):
            return x if isinstance(x, _Feat) else self.fail(feats, label)
        if node.op == "method":
            keys = P.method_groups(target)
        else:
            keys = P.function_groups(target)
        if keys is not None and isinstance(x, _Feat) and len(feats) == 1:
            if target in (F.dropout, torch.dropout):
                keys, label = P.LINEAR, f"{label} (identity in eval mode)"
            self.add_primitive(x.space.root(), f"{node.name}: {label}", keys)
            return self.same(x, node.value)
        if target in _ADD or (node.op == "method" and target in {"add", "sub", "add_", "sub_"}):
            return self.visit_add(node, args, feats, label)
        if target in _MUL or target in _DIV or (node.op == "method" and target in {"mul", "div", "mul_", "div_"}):
            return self.visit_mul(node, args, feats, label, divide=target in _DIV or target in {"div", "div_"})
        if target in _RESHAPE_FUNCTIONS or (node.op == "method" and target in _RESHAPE_METHODS):
            if isinstance(x, _Feat) and len(feats) == 1:
                return self.reshape(x, node.args[0].value, node.value, f"{node.name}: {label}")
            return self.fail(feats, label)
        if (node.op == "method" and target in _TRANSPOSE) or target in (torch.transpose, torch.permute):
            return self.visit_transpose(node, x, feats, label)
        if target is operator.getitem:
            return self.visit_getitem(node, x, feats, label)
        if (node.op == "method" and target in _REDUCE) or target in (torch.mean, torch.sum):
            return self.visit_reduce(node, x, feats, label)
        if isinstance(x, _Feat) and len(feats) == 1 and node.op in ("function", "method"):
            rest, kw = self.concrete(tuple(node.args[1:])), self.concrete(node.kwargs)
            if node.op == "method":
                fn = lambda t: getattr(t, target)(*rest, **kw)  # noqa: E731
            else:
                fn = lambda t: target(t, *rest, **kw)  # noqa: E731
            key = (node.op, target, repr(rest), repr(kw))
            return self.audited(node, x, fn, f"{node.name}: {label}", key)
        return self.fail(feats, label)

    # -- attention written as code (heads, q·kᵀ, softmax, ·v) ---------------------------------------------------

    def visit_headed_module(self, node: Node, module: nn.Module, qual: str, x: Any) -> Any:
        feats = self.feats_in(x)
        if isinstance(module, (nn.Dropout, nn.Identity)) and isinstance(x, (H.Heads, H.Scores)):
            return x
        if isinstance(module, nn.Softmax) and isinstance(x, H.Scores):
            d = module.dim if module.dim is not None else -1
            return x if int(d) % x.ndim == x.ndim - 1 else self.fail(feats, f"{qual} (softmax over queries)")
        return self.fail(feats, f"{qual} ({type(module).__name__}) on attention heads")

    def visit_headed(self, node: Node, target: Any, args: list, kwargs: dict, feats: list[_Feat], label: str) -> Any:
        """Operations on features split into heads, on scores, and on the pieces of RoPE."""
        method = node.op == "method"
        x = args[0] if args else None
        value = node.value
        if target is F.scaled_dot_product_attention:
            return self.visit_sdpa(node, args, kwargs, feats)
        if target in _MATMUL or (method and target in ("matmul", "__matmul__")):
            return self.visit_attention_product(node, x, args[1] if len(args) > 1 else None, feats, label)
        headed = [a for a in _flat(args + list(kwargs.values())) if isinstance(a, H.HEADED)]
        single = len(headed) == 1 and x is headed[0]
        if single and ((method and target in H._PASS) or target in (torch.clone, *H._DROPOUT_FUNCTIONS)):
            return x
        if single and isinstance(x, H.Scores):
            if target in H._SOFTMAX_FUNCTIONS or (method and target == "softmax"):
                d = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
                d = self.concrete(d)
                if d is not None and int(d) % x.ndim == x.ndim - 1:
                    return x
                return self.fail(feats, f"{label} that is not over the keys")
            if method and target in ("masked_fill", "masked_fill_"):
                return x
        if single and isinstance(x, H.Heads) and isinstance(value, torch.Tensor):
            if (method and target in H._TRANSPOSE_METHODS) or target in (torch.transpose, torch.permute):
                dims = [self.concrete(a) for a in node.args[1:]]
                if "dims" in node.kwargs:
                    dims = [self.concrete(node.kwargs["dims"])]
                order = H.transpose_order(target if isinstance(target, str) else label, target, dims, x.ndim)
                return H.transposed(x, order) if order is not None else self.fail(feats, label)
            if target in _RESHAPE_FUNCTIONS or (method and target in _RESHAPE_METHODS):
                before = tuple(node.args[0].value.shape)
                got = H.reshape_heads(x, before, tuple(value.shape))
                if isinstance(got, tuple):
                    space = x.space.root()
                    if x.rope is None and x.heads == tuple(range(space.n // x.dh)) and space.n == len(x.heads) * x.dh:
                        return _Feat(x.space, got[1], 1, value.ndim)
                    return self.fail(feats, f"{label} that merges heads which are not the space's own heads")
                return got if got is not None else self.fail(feats, f"{label} of attention heads")
            if target is operator.getitem:
                index = self.concrete(node.args[1])
                index = index if isinstance(index, tuple) else (index,)
                got = H.index_heads(x, index, value.ndim)
                return got if got is not None else self.fail(feats, f"indexing of attention heads {index}")
            if (method and target == "unsqueeze") or target is torch.unsqueeze:
                d = int(self.concrete(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))) % value.ndim
                index = tuple([slice(None)] * d + [None])
                got = H.index_heads(x, index, value.ndim)
                return got if got is not None else self.fail(feats, label)
            if method and target in ("expand", "expand_as", "repeat_interleave") and target != "repeat_interleave":
                before = tuple(node.args[0].value.shape)
                after = tuple(value.shape)
                changed = [i for i in range(len(after)) if before[i] != after[i]] if len(before) == len(after) else None
                if changed is not None and all(i == x.rep_axis for i in changed):
                    return x
                return self.fail(feats, f"{label} of attention heads")
        if target in _MUL or target in _DIV or (method and target in ("mul", "div", "mul_", "div_")):
            return self.visit_headed_mul(node, args, feats, label, target in _DIV or target in ("div", "div_"))
        if target in _ADD or (method and target in ("add", "add_")):
            return self.visit_headed_add(node, args, feats, label)
        if single and isinstance(x, H.Half) and (target in (operator.neg, torch.neg) or (method and target == "neg")):
            return H.Half(x.parent, x.part, -x.sign)
        if target is torch.cat:
            parts = args[0] if isinstance(args[0], list) else []
            d = self.concrete(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0))
            raw = node.args[0] if isinstance(node.args[0], (list, tuple)) else []
            live = [p for p in parts if isinstance(p, H.HEADED)]
            empty = all(
                isinstance(r, Node) and isinstance(r.value, torch.Tensor) and r.value.numel() == 0
                for r, p in zip(raw, parts, strict=False)
                if not isinstance(p, H.HEADED)
            )
            if len(live) == 1 and isinstance(live[0], H.Heads) and empty and len(parts) == len(raw):
                return live[0]  # appended to an empty cache (HF DynamicCache on the first call)
            if len(parts) == 2 and all(isinstance(p, H.Half) for p in parts):
                second, first = parts
                p = first.parent
                same = second.parent is p and second.part == 1 and first.part == 0
                if same and int(d) % p.ndim == p.dim_axis and second.sign == -first.sign and p.rope is None:
                    return H.Rot(p)
            return self.fail(feats, f"{label} of attention heads")
        if target is torch.where and len(args) == 3 and isinstance(args[1], H.Scores) and len(headed) == 1:
            return args[1]
        return self.fail(feats, f"{label} on attention heads")

    def visit_headed_mul(self, node: Node, args: list, feats: list[_Feat], label: str, divide: bool) -> Any:
        if len(args) < 2:
            return self.fail(feats, label)
        a, b = args[0], args[1]
        first = isinstance(a, H.HEADED)
        x, other, other_node = (a, b, node.args[1]) if first else (b, a, node.args[0])
        if divide and not first:
            return self.fail(feats, label)
        if isinstance(other, H.HEADED) or self.feats_in(other):
            return self.fail(feats, f"{label} of attention heads by features")
        scalar = (other == _CONST and not isinstance(other_node, Node)) or other_is_scalar_tensor(other, other_node)
        if scalar and isinstance(x, (H.Heads, H.Scores)):
            return x
        const = other_node.value if isinstance(other_node, Node) else None
        if divide or not isinstance(const, torch.Tensor) or isinstance(other, tuple):
            return self.fail(feats, f"{label} of attention heads by a parameter or unknown tensor")
        if isinstance(x, H.Heads) and x.rope is None and x.rep_axis is None:
            return H.RopeTerm(x, const, False)
        if isinstance(x, H.Rot):
            return H.RopeTerm(x.parent, const, True)
        return self.fail(feats, f"{label} of attention heads by a tensor")

    def visit_headed_add(self, node: Node, args: list, feats: list[_Feat], label: str) -> Any:
        if len(args) < 2 or node.kwargs.get("alpha") is not None:
            return self.fail(feats, label)
        a, b = args[0], args[1]
        if isinstance(a, H.RopeTerm) and isinstance(b, H.RopeTerm) and a.parent is b.parent and a.rotated != b.rotated:
            cos, sin = (a.const, b.const) if b.rotated else (b.const, a.const)
            p = a.parent
            if isinstance(node.value, torch.Tensor) and H.rope_consistent(cos, sin, p, tuple(node.value.shape)):
                return H.Heads(p.space, p.head_axis, p.dim_axis, p.ndim, p.heads, p.dh, "half", None)
            return self.fail(feats, "a rotary embedding whose cos/sin do not repeat across the two halves")
        scores, other, other_node = (a, b, node.args[1]) if isinstance(a, H.Scores) else (b, a, node.args[0])
        if isinstance(scores, H.Scores) and not isinstance(other, H.HEADED) and not self.feats_in(other):
            if isinstance(other, tuple):
                return self.fail(feats, f"{label}: a parameter added to the attention scores")
            t = other_node.value if isinstance(other_node, Node) else None
            per_head = scores.per_head or H.varies_over_heads(t, scores.head_axis, scores.ndim)
            return H.Scores(scores.q, scores.k, scores.kmap, scores.head_axis, scores.ndim, per_head)
        return self.fail(feats, f"{label} on attention heads")

    def visit_attention_product(self, node: Node, a: Any, b: Any, feats: list[_Feat], label: str) -> Any:
        if isinstance(a, H.Heads) and isinstance(b, H.Heads):
            nd = a.ndim
            ok = (
                b.ndim == nd
                and a.dim_axis == nd - 1
                and b.dim_axis == nd - 2
                and a.head_axis == b.head_axis
                and a.rep_axis is None
                and b.rep_axis is None
                and len(a.heads) == len(b.heads)
                and a.dh == b.dh
            )
            if ok:
                return H.Scores(a, b, b.heads, a.head_axis, nd)
            return self.fail(feats, f"{label} of heads that is not q·kᵀ over the head features")
        if isinstance(a, H.Scores) and isinstance(b, H.Heads):
            ok = b.ndim == a.ndim and b.dim_axis == b.ndim - 1 and b.head_axis == a.head_axis and b.rep_axis is None
            if ok and len(b.heads) == len(a.q.heads):
                return self.attention_record(node, a.q, a.k, a.kmap, b, b.heads, a.per_head, a.head_axis, a.ndim)
            return self.fail(feats, f"{label} of scores with values that do not match their heads")
        return self.fail(feats, f"{label} on attention heads")

    def visit_sdpa(self, node: Node, args: list, kwargs: dict, feats: list[_Feat]) -> Any:
        names = ("query", "key", "value", "attn_mask")
        got = [args[i] if len(args) > i else kwargs.get(k) for i, k in enumerate(names)]
        q, k, v, mask = got
        if not (isinstance(q, H.Heads) and isinstance(k, H.Heads) and isinstance(v, H.Heads)):
            return self.fail(feats, "scaled_dot_product_attention of tensors that are not split into heads")
        nd = q.ndim
        ok = all(
            t.ndim == nd and t.dim_axis == nd - 1 and t.head_axis == nd - 3 and t.rep_axis is None for t in (q, k, v)
        )
        if not ok or k.dh != q.dh:
            return self.fail(feats, "scaled_dot_product_attention with heads not on axis -3")
        gqa = bool(self.concrete(node.kwargs.get("enable_gqa", False)))
        hq = len(q.heads)

        def mapped(t: H.Heads) -> tuple[int, ...] | None:
            if len(t.heads) == hq:
                return t.heads
            if gqa and hq % len(t.heads) == 0:
                rep = hq // len(t.heads)
                return tuple(t.heads[i // rep] for i in range(hq))
            return None

        kmap, vmap = mapped(k), mapped(v)
        if kmap is None or vmap is None:
            return self.fail(feats, "scaled_dot_product_attention with mismatched head counts")
        per_head = False
        if mask is not None:
            if isinstance(mask, H.HEADED) or self.feats_in(mask) or isinstance(mask, tuple):
                return self.fail(feats, "scaled_dot_product_attention with a mask made from features or parameters")
            raw = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
            per_head = H.varies_over_heads(raw.value if isinstance(raw, Node) else None, nd - 3, nd)
        return self.attention_record(node, q, k, kmap, v, vmap, per_head, nd - 3, nd)

    def attention_record(self, node, q, k, kmap, v, vmap, per_head, head_axis, ndim) -> Any:
        """Record one attention computation; its output is a new space (read by the output projection)."""
        out = self.new_space(len(q.heads) * v.dh)
        out.absorbed = True
        record = H.AttentionRecord(q, k, v, out, tuple(kmap), tuple(vmap), per_head, node.name)
        for t in (q, k, v):
            t.space.root().absorbed = True
        self.attention.append(record)
        return H.Heads(out, head_axis, ndim - 1, ndim, tuple(range(len(q.heads))), v.dh)

    # -- packed projections, functional layers and norms ------------------------------------------------------

    def visit_split(self, node: Node, x: Any, feats: list[_Feat], label: str) -> Any:
        """``split``/``chunk`` of features: along the feature axis a packed projection (GPT-2's ``c_attn``) becomes
        one space per part, each acting on its slice of the producer's rows; along another axis every part keeps
        the space."""
        parts = node.value
        if not isinstance(x, _Feat) or len(feats) != 1 or not isinstance(parts, (tuple, list)):
            return self.fail(feats, label)
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        dim = int(self.concrete(dim)) % x.ndim
        if dim != x.axis:
            return H.Parts(tuple(_Feat(x.space, x.axis, x.inner, x.ndim, x.norm) for _ in parts))
        root = x.space.root()
        if x.inner != 1 or root.consumers or root.primitives or root.frozen or root.absorbed or root.split:
            return self.fail(feats, f"{label} of features that are already in use")
        if any(a.kind != "out" or a.slice_axis not in (None, a.axis) for a in root.actions):
            return self.fail(feats, f"{label} of features written by more than one packed layer")
        out, lo = [], 0
        children = []
        for part in parts:
            size = part.shape[dim]
            child = self.new_space(size)
            child.producers.extend(root.producers)
            for a in root.actions:
                start = a.start + lo * a.inner
                child.actions.append(Action(a.param, a.axis, "out", a.inner, a.axis, start, start + size * a.inner))
            child.broken.extend(root.broken)
            children.append(child)
            out.append(_Feat(child, x.axis, 1, x.ndim))
            lo += size
        root.split = True
        self.children[id(root)] = children
        return H.Parts(tuple(out))

    def visit_cat(self, node: Node, args: list, feats: list[_Feat], label: str) -> Any:
        """``torch.cat`` along a non-feature axis (tokens): the parts share one feature space; a parameter part
        (ViT's class token) is written like an embedding."""
        parts = args[0] if args and isinstance(args[0], list) else None
        value = node.value
        if parts is None or not isinstance(value, torch.Tensor):
            return self.fail(feats, label)
        nd = value.ndim
        d = int(self.concrete(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0))) % nd
        pf = [p for p in parts if isinstance(p, _Feat)]
        if len(pf) != len(feats) or any(f.axis != pf[0].axis or f.inner != 1 or f.ndim != nd for f in pf):
            return self.fail(feats, label)
        axis = pf[0].axis
        if d == axis:
            return self.fail(feats, f"{label} along the feature axis")
        root = pf[0].space.root()
        for f in pf[1:]:
            root = self.union(root, f.space)
        for p in parts:
            if isinstance(p, _Feat):
                continue
            if isinstance(p, tuple) and p[0] in ("param", "paramE"):
                t = p[2]
                pa = axis - (nd - t.ndim)
                if 0 <= pa < t.ndim and t.shape[pa] == root.n:
                    root.actions.append(Action(p[1], pa, "out"))
                    root.added = True
                    continue
            self.freeze(pf, f"{node.name}: concatenates a tensor that does not transform with the features")
            return _UNKNOWN
        self.understood.add(id(node))
        return _Feat(root, axis, 1, nd)

    def visit_functional_linear(self, node: Node, target, args: list, kwargs: dict, feats, label: str) -> Any:
        """``F.linear(x, W, b)``, ``x @ W`` and ``x @ W.t()`` with a parameter W: a layer called as a function
        (e.g. an output head that reuses the embedding matrix)."""
        x = args[0] if args else None
        w = args[1] if len(args) > 1 else kwargs.get("weight")
        b = args[2] if len(args) > 2 else kwargs.get("bias")
        if not isinstance(x, _Feat) or len(feats) != 1 or not (isinstance(w, tuple) and w[0] in ("param", "paramT")):
            return self.fail(feats, label)
        linear = target is F.linear
        value = w[2]
        if value.ndim != 2 or x.axis != x.ndim - 1 or x.inner != 1:
            return self.fail(feats, label)
        # the axis of the parameter that x's features meet, and the one that indexes the outputs
        if linear:
            in_axis, out_axis = (1, 0) if w[0] == "param" else (0, 1)
        else:
            in_axis, out_axis = (0, 1) if w[0] == "param" else (1, 0)
        name = f"{node.scope}.{node.name}" if node.scope else node.name
        self.understood.add(id(node))
        self.consume(x, name, [Action(w[1], in_axis, "in")])
        out = node.value
        if not isinstance(out, torch.Tensor):
            return _UNKNOWN
        space = self.new_space(out.shape[-1])
        space.producers.append(name)
        space.actions.append(Action(w[1], out_axis, "out"))
        if isinstance(b, tuple) and b[0] == "param" and b[2].ndim == 1:
            space.actions.append(Action(b[1], 0, "out"))
        elif b is not None and b != _CONST:
            space.frozen.append(f"{name}: a bias that is not a parameter")
        return _Feat(space, out.ndim - 1, 1, out.ndim)

    def visit_functional_norm(self, node: Node, target, args: list, kwargs: dict, feats, label: str) -> Any:
        """``F.layer_norm`` / ``F.rms_norm`` over the feature axis, with optional gain and bias parameters."""
        x = args[0] if args else None
        if not isinstance(x, _Feat) or len(feats) != 1:
            return self.fail(feats, label)
        shape = self.concrete(node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape"))
        shape = (shape,) if isinstance(shape, int) else tuple(shape or ())
        space = x.space.root()
        if shape != (space.n,) or x.axis != x.ndim - 1 or x.inner != 1:
            self.freeze([x], f"{node.name}: {label} over {shape}, not the feature axis alone")
            return _UNKNOWN
        rms = target in (F.rms_norm, torch.rms_norm)
        names = ("weight", "eps") if rms else ("weight", "bias", "eps")
        raw = {k: (node.args[i + 2] if len(node.args) > i + 2 else node.kwargs.get(k)) for i, k in enumerate(names)}
        params = {}
        for k in ("weight", "bias"):
            v = raw.get(k)
            if v is None:
                continue
            c = self.classify(v)
            if not (isinstance(c, tuple) and c[0] == "param" and tuple(c[2].shape) == (space.n,)):
                self.freeze([x], f"{node.name}: {label} with a {k} that is not a per-feature parameter")
                return _UNKNOWN
            params[k] = c[1]
        self.understood.add(id(node))
        keys: tuple[str, ...] = ("permutation",) if params else ("orthogonal",) if rms else ("mean_orthogonal",)
        self.add_primitive(space, f"{node.name}: {label}", keys)
        for v in params.values():
            space.actions.append(Action(v, 0, "passenger"))
        out = self.same(x, node.value)
        if not isinstance(out, _Feat):
            return out
        eps = self.concrete(raw.get("eps"))
        name = f"{node.scope}.{node.name}" if node.scope else node.name
        kind = "rms" if rms else "layer"
        return self.add_norm(out, name, label, kind, params.get("weight"), params.get("bias"), eps, 0.0)

    def fail(self, feats: list[_Feat], label: str) -> Any:
        self.freeze(feats, f"unsupported operation {label!s} on the features")
        return _UNKNOWN

    def visit_add(self, node: Node, args: list, feats: list[_Feat], label: str) -> Any:
        if len(args) < 2 or node.kwargs.get("alpha") is not None:
            return self.fail(feats, label)
        a, b = args[0], args[1]
        if isinstance(a, _Feat) and isinstance(b, _Feat):
            if a.axis != b.axis or a.inner != b.inner:
                self.freeze([a, b], f"{node.name}: adds features on different axes")
                return _UNKNOWN
            root = self.union(a.space, b.space)
            root.added = True
            ndim = node.value.ndim if isinstance(node.value, torch.Tensor) else a.ndim
            if ndim != a.ndim:
                self.freeze([a], f"{node.name}: an addition that broadcasts the features to more axes")
                return _UNKNOWN
            return _Feat(root, a.axis, a.inner, a.ndim)
        feat, other, other_node = (a, b, node.args[1]) if isinstance(a, _Feat) else (b, a, node.args[0])
        space = feat.space.root()
        if other == _CONST and not isinstance(other_node, Node):
            self.add_primitive(space, f"{node.name}: adds a constant", ("permutation", "mean_orthogonal"))
            return feat
        if isinstance(other, tuple) and other[0] == "param" and isinstance(other[2], torch.Tensor):
            p = other[2]
            pa = feat.axis - (feat.ndim - p.ndim)
            if feat.inner == 1 and 0 <= pa < p.ndim and p.shape[pa] == space.n:
                self.understood.add(id(node))
                space.actions.append(Action(other[1], pa, "out"))
                return feat
            self.freeze([feat], f"{node.name}: adds {other[1]} of shape {tuple(p.shape)} that is not per-feature")
            return _UNKNOWN
        what = "the model input" if other == _INPUT else "a tensor that does not transform with the features"
        self.freeze([feat], f"{node.name}: adds {what}")
        return _UNKNOWN

    def visit_mul(self, node: Node, args: list, feats: list[_Feat], label: str, divide: bool) -> Any:
        if len(args) < 2:
            return self.fail(feats, label)
        a, b = args[0], args[1]
        if isinstance(a, _Feat) and isinstance(b, _Feat):
            if a.axis != b.axis or a.inner != b.inner:
                self.freeze([a, b], f"{node.name}: multiplies features on different axes")
                return _UNKNOWN
            linear = [] if divide else [f.space.root() for f in (a, b) if self.fresh_linear(f)]
            if a.space.root() is b.space.root():
                linear = []
            snapshots = [(r, list(r.actions), r.producers[0]) for r in linear]
            root = self.union(a.space, b.space)
            self.add_primitive(root, f"{node.name}: elementwise product", ("permutation",))
            for r, actions, producer in snapshots:
                # a gated unit: the linear branch may be scaled by any invertible diagonal, undone by the reader
                self.scales.append((r, actions, producer, root, len(root.primitives)))
            return _Feat(root, a.axis, a.inner, a.ndim)
        if other_is_scalar_tensor(*((b, node.args[1]) if isinstance(a, _Feat) else (a, node.args[0]))):
            if isinstance(a, _Feat) or not divide:
                return a if isinstance(a, _Feat) else b
        if divide and not isinstance(a, _Feat):
            return self.fail(feats, label)
        feat, other, other_node = (a, b, node.args[1]) if isinstance(a, _Feat) else (b, a, node.args[0])
        if other == _CONST and not isinstance(other_node, Node):
            return feat  # a Python number: a linear map on the features
        if isinstance(other, tuple) and other[0] == "param" and isinstance(other[2], torch.Tensor):
            p = other[2]
            if p.numel() == 1:
                return feat
            pa = feat.axis - (feat.ndim - p.ndim)
            space = feat.space.root()
            if feat.inner == 1 and 0 <= pa < p.ndim and p.shape[pa] == space.n and p.numel() == space.n:
                self.understood.add(id(node))
                self.add_primitive(space, f"{node.name}: per-feature scale {other[1]}", ("permutation",))
                space.actions.append(Action(other[1], pa, "passenger"))
                return feat
        self.freeze([feat], f"{node.name}: multiplies the features by a tensor that does not transform with them")
        return _UNKNOWN

    def fresh_linear(self, f: _Feat) -> bool:
        """Whether ``f`` is the output of one linear layer, not yet read or passed through a primitive."""
        r = f.space.root()
        return (
            f.inner == 1
            and not r.primitives
            and len(set(r.producers)) == 1
            and not r.consumers
            and not r.frozen
            and not r.absorbed
            and not r.norms
            and all(a.kind == "out" for a in r.actions)
        )

    def visit_transpose(self, node: Node, x: Any, feats: list[_Feat], label: str) -> Any:
        if not isinstance(x, _Feat) or len(feats) != 1:
            return self.fail(feats, label)
        dims = [self.concrete(a) for a in node.args[1:]]
        if "dims" in node.kwargs:
            dims = [self.concrete(node.kwargs["dims"])]
        nd = x.ndim
        try:
            if label in ("permute",) or node.target is torch.permute:
                order = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else list(dims)
                order = [int(d) % nd for d in order]
                new_axis = order.index(x.axis)
            elif label == "movedim":
                src, dst = int(dims[0]) % nd, int(dims[1]) % nd
                order = list(range(nd))
                order.insert(dst, order.pop(src))
                new_axis = order.index(x.axis)
            else:
                d0, d1 = int(dims[0]) % nd, int(dims[1]) % nd
                new_axis = d1 if x.axis == d0 else d0 if x.axis == d1 else x.axis
        except (ValueError, TypeError, IndexError):
            return self.fail(feats, label)
        return _Feat(x.space, new_axis, x.inner, nd, x.norm)

    def visit_getitem(self, node: Node, x: Any, feats: list[_Feat], label: str) -> Any:
        if not isinstance(x, _Feat) or len(feats) != 1:
            return self.fail(feats, label)
        index = self.concrete(node.args[1])
        index = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, (torch.Tensor, list)) for i in index) or index.count(Ellipsis) > 1:
            return self.fail(feats, "advanced indexing")
        if Ellipsis in index:
            k = index.index(Ellipsis)
            used = sum(1 for i in index if i is not None and i is not Ellipsis)
            index = index[:k] + (slice(None),) * (x.ndim - used) + index[k + 1 :]
        axis, pos = x.axis, 0
        new_axis = None
        out_pos = 0
        for i in index:
            if i is None:
                out_pos += 1
                continue
            if pos == x.axis:
                if i != slice(None):
                    self.freeze([x], f"{node.name}: indexes into the feature axis")
                    return _UNKNOWN
                new_axis = out_pos
            if not isinstance(i, int):
                out_pos += 1
            pos += 1
        if new_axis is None:
            new_axis = out_pos + (axis - pos)
        value = node.value
        if not isinstance(value, torch.Tensor):
            return self.fail(feats, label)
        return _Feat(x.space, new_axis, x.inner, value.ndim, x.norm)

    def visit_reduce(self, node: Node, x: Any, feats: list[_Feat], label: str) -> Any:
        if not isinstance(x, _Feat) or len(feats) != 1:
            return self.fail(feats, label)
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = self.concrete(dims)
        keepdim = bool(self.concrete(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)))
        if dims is None:
            return self.fail(feats, f"{label} over all axes")
        dims = {int(d) % x.ndim for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
        if x.axis in dims:
            self.freeze([x], f"{node.name}: {label} over the feature axis")
            return _UNKNOWN
        new_axis = x.axis if keepdim else x.axis - sum(1 for d in dims if d < x.axis)
        return _Feat(x.space, new_axis, x.inner, x.ndim if keepdim else x.ndim - len(dims))

    # -- the sites -----------------------------------------------------------------------------------------------

    def join_tied(self) -> None:
        """A tied weight written on one feature space and read on another (BERT's decoder reuses the word
        embeddings after its transform): one element must act on both, so the two spaces become one site."""
        aliased = {c for name, c in self.canon.items() if name != c}
        owners: dict[tuple[str, int], list[_Space]] = {}
        for s in self.spaces:
            r = s.root()
            if r.absorbed or r.split:
                continue
            for a in r.actions:
                canon = self.canon.get(a.param, a.param)
                if canon in aliased and a.kind in ("out", "in") and a.slice_axis is None and a.inner == 1:
                    group = owners.setdefault((canon, a.axis), [])
                    if not any(g is r for g in group):
                        group.append(r)
        for group in owners.values():
            for other in group[1:]:
                if group[0].root() is not other.root() and group[0].root().n == other.root().n:
                    self.union(group[0], other)

    def sites(self) -> list[Site]:
        self.join_tied()
        roots = []
        for s in self.spaces:
            r = s.root()
            if r not in roots:
                roots.append(r)
        sites: list[Site] = []
        for r in roots:
            if not r.producers or r.absorbed:
                continue  # no layer writes it, or an attention projection (reported by its attention sites)
            if r.split and not (r.consumers or r.reaches_output or r.primitives):
                continue  # a packed projection, reported by its parts
            if not r.consumers and r.reaches_output:
                continue  # an output layer, not a hidden site
            frozen = list(r.frozen)
            if r.split:
                frozen.append("a packed projection is used both split and unsplit")
            if r.reaches_output:
                frozen.append("the features are returned by the model (the output basis is fixed)")
            if not r.consumers and not r.reaches_output:
                frozen.append("the features are not read by any layer")
            actions = list(dict.fromkeys(r.actions))
            groups = P.closure(frozenset(P.LINEAR), r.n)
            general = True
            prims = []
            for desc, keys in r.primitives:
                if keys is None:
                    prims.append(f"{desc} (linear)")
                    continue
                general = False
                groups = groups & P.closure(frozenset(keys), r.n)
                prims.append(f"{desc} {{{', '.join(keys)}}}")
            broken = list(dict.fromkeys(r.broken))
            if groups == frozenset({"trivial"}) and not frozen:
                trivial = [d for d, k in r.primitives if k is not None and set(k) <= {"trivial"}]
                broken.append(
                    "no non-trivial group is shared by its primitives"
                    + (f" ({', '.join(trivial)} respects only the trivial group)" if trivial else "")
                )
            status = "frozen" if frozen else "broken" if broken else "free"
            reason = "; ".join(dict.fromkeys(frozen)) if frozen else "; ".join(broken) if broken else None
            self.root_site[id(r)] = len(sites)
            sites.append(
                Site(
                    name=r.producers[0],
                    size=r.n,
                    kind="residual" if r.added and len(set(r.producers)) > 1 else "hidden",
                    groups=groups,
                    maximal=_groups.maximal(groups, r.n),
                    general_linear=general,
                    status=status,
                    reason=reason,
                    producers=tuple(dict.fromkeys(r.producers)),
                    consumers=tuple(dict.fromkeys(r.consumers)),
                    primitives=tuple(prims),
                    actions=tuple(actions),
                    norms=tuple(Norm(**{**info, "readers": tuple(info["readers"])}) for info in r.norms.values()),
                )
            )
        seen: dict[str, int] = {}
        for i, site in enumerate(sites):
            if site.name in seen:
                seen[site.name] += 1
                sites[i] = _replace(site, name=f"{site.name}#{seen[site.name]}")
            else:
                seen[site.name] = 1
        sites = _freeze_conflicts([self.shared(site) for site in sites])
        extra = list(self.extra_sites)
        for record in self.attention:
            extra.extend(self.attention_sites(record))
        extra.extend(self.scale_sites())
        out = sites + [self.shared(site) for site in extra]
        names = {site.name for site in sites}
        for i in range(len(sites), len(out)):
            if out[i].name in names:  # two attentions at the top level of a model share a prefix
                k = 2
                while f"{out[i].name}#{k}" in names:
                    k += 1
                out[i] = _replace(out[i], name=f"{out[i].name}#{k}")
            names.add(out[i].name)
        if not out:
            out = self.unread_sites()
        return out

    def shared(self, site: Site) -> Site:
        """Apply what shared parameters imply: one action per tensor (tied names are merged), orthogonal elements
        only where a tied tensor is both written (W·gᵀ) and read (W·g⁻¹), and frozen where a parameter the site
        acts on is also used somewhere the analysis did not follow."""
        acts: list[Action] = []
        index: dict[tuple, Action] = {}
        tied: list[tuple[str, str]] = []
        restrict = False
        reasons: list[str] = []
        for a in site.actions:
            canon = self.canon.get(a.param, a.param)
            if canon != a.param and (a.param, canon) not in tied:
                tied.append((a.param, canon))
            b = Action(canon, a.axis, a.kind, a.inner, a.slice_axis, a.start, a.stop)
            key = (canon, a.axis, a.inner, a.slice_axis, a.start, a.stop)
            prev = index.get(key)
            if prev is None:
                index[key] = b
                acts.append(b)
            elif prev.kind != b.kind:
                if {prev.kind, b.kind} == {"out", "in"}:
                    restrict = True
                else:
                    reasons.append(f"tied parameter {canon} is acted on both as {prev.kind} and as {b.kind}")
        for param in dict.fromkeys(a.param for a in acts):
            unknown = [n for n, ok in self.param_reads.get(param, []) if not ok]
            if unknown:
                reasons.append(
                    f"parameter {param} is also read by {', '.join(unknown[:3])}, a use the analysis cannot follow "
                    "(a shared weight)"
                )
        changes: dict[str, Any] = {"actions": tuple(acts), "tied": tuple(tied)}
        if restrict and site.free:
            if site.structure is not None:
                reasons.append("a tied weight is both written and read, which only orthogonal elements allow")
            else:
                base = P.closure(frozenset(P.LINEAR), site.size) if site.general_linear else site.groups
                groups = base & P.closure(frozenset({"orthogonal"}), site.size)
                changes.update(groups=groups, maximal=_groups.maximal(groups, site.size), general_linear=False)
                if groups == frozenset({"trivial"}):
                    changes.update(
                        status="broken",
                        reason="a tied weight allows only orthogonal elements, and its primitives respect none",
                    )
        if reasons:
            reason = "; ".join(
                dict.fromkeys(([site.reason] if site.status == "frozen" and site.reason else []) + reasons)
            )
            changes.update(status="frozen", reason=reason)
        return _replace(site, **changes)

    def record_reasons(self, record: H.AttentionRecord) -> list[str]:
        """Why the attention sites of ``record`` cannot act (empty when they can)."""
        reasons: list[str] = []
        roles = {"query": record.q, "key": record.k, "value": record.v}
        roots = {role: t.space.root() for role, t in roles.items()}
        if len({id(r) for r in roots.values()}) < 3:
            reasons.append("query, key and value are the same features")
        for role, r in roots.items():
            reasons.extend(f"{role}: {x}" for x in dict.fromkeys(r.frozen))
            if r.consumers:
                reasons.append(f"the {role} features are also read by {', '.join(dict.fromkeys(r.consumers))}")
            if r.reaches_output:
                reasons.append(f"the {role} features are returned by the model")
            if r.primitives:
                reasons.append(f"the {role} features pass through {', '.join(d for d, _ in r.primitives)}")
            if not r.producers:
                reasons.append(f"the {role} features are not written by a layer")
            uses = sum(1 for o in self.attention for t in (o.q, o.k, o.v) if t.space.root() is r)
            if uses > 1:
                reasons.append(f"the {role} features feed more than one attention product")
            if any(a.kind != "out" for a in r.actions):
                reasons.append(f"the {role} features carry per-feature parameters")
        out = record.out.root()
        if out is not record.out or out.producers:
            reasons.append("the attention output is mixed with other features before a projection reads it")
        reasons.extend(f"attention output: {x}" for x in dict.fromkeys(out.frozen))
        if out.primitives:
            reasons.append(f"the attention output passes through {', '.join(d for d, _ in out.primitives)}")
        if out.reaches_output:
            reasons.append("the attention output is returned by the model")
        if not out.consumers:
            reasons.append("the attention output is not read by a layer")
        hq, dh = len(record.q.heads), record.q.dh
        if record.q.heads != tuple(range(hq)) or roots["query"].n != hq * dh:
            reasons.append("the query heads are not the query projection's own heads in order")
        hk = roots["key"].n // record.k.dh
        if sorted(set(record.kmap)) != list(range(hk)) or record.kmap != record.vmap:
            reasons.append("keys and values are not grouped alike over the query heads")
        if roots["value"].n != hk * record.v.dh:
            reasons.append("the value heads do not match the key heads")
        return reasons

    def attention_sites(self, record: H.AttentionRecord) -> list[Site]:
        """The head, query–key and value–output sites of one attention computation (REFERENCE §8.1)."""
        reasons = self.record_reasons(record)
        out = record.out.root()
        qr, kr, vr = (t.space.root() for t in (record.q, record.k, record.v))
        producers = tuple(dict.fromkeys(qr.producers + kr.producers + vr.producers))
        consumers = tuple(dict.fromkeys(out.consumers))
        prefix = H.head_prefix(list(producers) + list(consumers))
        hq, dh, dv = len(record.q.heads), record.q.dh, record.v.dh
        hk = max(1, kr.n // record.k.dh)
        rep = max(1, hq // hk)
        o_acts = [a for a in out.actions if a.kind == "in"] if not reasons else []

        def sub(actions, lo, hi, size, kind=None, mult=1):
            """The actions restricted to features [lo·size, hi·size), grouped by ``mult`` features."""
            got = []
            for a in actions:
                if a.slice_axis not in (None, a.axis):
                    reasons.append(f"parameter {a.param} is sliced on another axis than its features")
                    continue
                start = a.start + lo * size * a.inner
                stop = a.start + hi * size * a.inner
                got.append(Action(a.param, a.axis, kind or a.kind, a.inner * mult, a.axis, start, stop))
            return got

        q_acts, k_acts, v_acts = ([a for a in r.actions if a.kind == "out"] for r in (qr, kr, vr))
        specs: list[tuple] = []  # (name, size, kind, keys, structure, actions, extra reasons)
        contiguous = record.kmap == tuple(i // rep for i in range(hq))
        bias = (
            ["a per-head attention bias (ALiBi, relative positions) tells the heads apart"] if record.per_head else []
        )
        if hk > 1:
            if contiguous:
                acts = sub(q_acts, 0, hk, rep * dh, mult=rep * dh) + sub(k_acts, 0, hk, dh, mult=dh)
                acts += sub(v_acts, 0, hk, dv, mult=dv) + sub(o_acts, 0, hk, rep * dv, mult=rep * dv)
                specs.append((f"{prefix}.heads", hk, "heads", ("permutation",), None, acts, bias))
            else:
                specs.append(
                    (
                        f"{prefix}.heads",
                        hk,
                        "heads",
                        ("permutation",),
                        None,
                        [],
                        ["query heads of one key head are not contiguous"],
                    )
                )
        if rep > 1:
            for j in range(hk):
                acts = sub(q_acts, j * rep, (j + 1) * rep, dh, mult=dh) + sub(
                    o_acts, j * rep, (j + 1) * rep, dv, mult=dv
                )
                specs.append((f"{prefix}.group{j}", rep, "query_group", ("permutation",), None, acts, bias))
        rope = record.q.rope
        qk_reasons = [] if record.q.rope == record.k.rope else ["RoPE is applied to only one of query and key"]
        for j in range(hk):
            acts = []
            for i in range(hq):
                if record.kmap[i] == j:
                    acts += sub(q_acts, i, i + 1, dh)
            acts += sub(k_acts, j, j + 1, dh, kind="dual")
            structure = "rotary_planes" if rope == "half" else None
            specs.append((f"{prefix}.qk{j}", dh, "query_key", None, structure, acts, qk_reasons))
            acts = sub(v_acts, j, j + 1, dv)
            for i in range(hq):
                if record.vmap[i] == j:
                    acts += sub(o_acts, i, i + 1, dv)
            specs.append((f"{prefix}.vo{j}", dv, "value_output", None, None, acts, []))
        sites = []
        for name, n, kind, keys, structure, acts, extra in specs:
            why = list(dict.fromkeys(reasons + extra))
            general = keys is None and structure is None
            if structure is not None:
                groups = frozenset({"trivial"})
            else:
                groups = P.closure(frozenset(P.LINEAR if keys is None else keys), n)
            sites.append(
                Site(
                    name=name,
                    size=n,
                    kind=kind,
                    groups=groups,
                    maximal=_groups.maximal(groups, n),
                    general_linear=general,
                    status="frozen" if why else "free",
                    reason="; ".join(why) if why else None,
                    producers=producers,
                    consumers=consumers,
                    primitives=(f"{record.node}: softmax attention",),
                    actions=tuple(acts),
                    structure=structure,
                )
            )
        return sites

    def scale_sites(self) -> list[Site]:
        """The linear branch of each gated unit (SwiGLU's up projection): any invertible diagonal on its rows,
        undone on the columns of the layer that reads the product (REFERENCE §8.1)."""
        sites = []
        for branch, actions, producer, merged, count in self.scales:
            res = merged.root()
            reasons = list(dict.fromkeys(res.frozen))
            for desc, keys in res.primitives[count:]:
                if keys is not None and not {"positive_scaling", "signed_permutation"} <= set(keys):
                    reasons.append(f"{desc} after the product does not commute with scalings")
            if res.norms:
                reasons.append("a norm acts after the product")
            if res.reaches_output:
                reasons.append("the product is returned by the model")
            readers = [a for a in res.actions if a.kind == "in"]
            if not readers:
                reasons.append("no layer reads the product")
            if any(a.kind == "passenger" for a in res.actions):
                reasons.append("per-feature parameters act on the product")
            sites.append(
                Site(
                    name=f"{producer}.scale",
                    size=branch.n,
                    kind="up_scale",
                    groups=frozenset({"trivial"}),
                    maximal=frozenset({"trivial"}),
                    general_linear=False,
                    status="frozen" if reasons else "free",
                    reason="; ".join(reasons) if reasons else None,
                    producers=(producer,),
                    consumers=tuple(dict.fromkeys(res.consumers)),
                    primitives=tuple(d for d, _ in res.primitives),
                    actions=tuple(actions) + tuple(readers),
                    structure="nonzero_scaling",
                )
            )
        return sites

    def unread_sites(self) -> list[Site]:
        """When no site was found, one frozen entry per layer the analysis could not read, with the reason, so
        that an unreadable architecture never gives a silent empty result."""
        reasons: dict[str, list[str]] = {}
        for r in {id(s.root()): s.root() for s in self.spaces}.values():
            for p in r.producers or ["(features)"]:
                reasons.setdefault(p, []).extend(r.frozen)
        for param, reads in self.param_reads.items():
            for node, ok in reads:
                if not ok:
                    reasons.setdefault(node, []).append(f"reads {param} in a way the analysis cannot follow")
        if not reasons and any(True for _ in self.model.parameters()):
            note = f" ({self.graph.note})" if self.graph.note else ""
            reasons[type(self.model).__name__] = [f"no layer of the model was reached by the traced run{note}"]
        out = []
        for name, why in reasons.items():
            why = list(dict.fromkeys(why))
            if not why:
                continue
            out.append(
                Site(
                    name=name,
                    size=0,
                    kind="unread",
                    groups=frozenset({"trivial"}),
                    maximal=frozenset({"trivial"}),
                    general_linear=False,
                    status="frozen",
                    reason="; ".join(why),
                    producers=(),
                    consumers=(),
                    primitives=(),
                    actions=(),
                )
            )
        return out

    def feature_axes(self) -> dict[str, int]:
        """Node name → the axis of its value that carries the features of a space (for every such node)."""
        return {
            node.name: value.axis % max(value.ndim, 1)
            for node in self.graph.nodes
            if isinstance(value := self.values.get(id(node)), _Feat)
        }

    def primitive_uses(self, sites: list[Site]) -> list[PrimitiveUse]:
        """The recorded primitive applications, each with the name of its site (call after :meth:`sites`)."""
        out = []
        for node, space, axis, ndim, keys in self.uses:
            index = self.root_site.get(id(space.root()))
            module = node.target if node.op == "module" else None
            if module is not None:
                label = type(module).__name__
            else:
                label = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "?")
            out.append(
                PrimitiveUse(
                    node=node.name,
                    path=node.qualname if node.op == "module" else None,
                    label=label,
                    module=module,
                    axis=axis,
                    ndim=ndim,
                    site=None if index is None else sites[index].name,
                    groups=keys,
                )
            )
        return out


def _freeze_conflicts(sites: list[Site]) -> list[Site]:
    """Freeze sites that claim the same parameter axis (a module applied at two different places)."""
    owner: dict[tuple[str, int], list[int]] = {}
    for i, s in enumerate(sites):
        for a in s.actions:
            owner.setdefault((a.param, a.axis), [])
            if i not in owner[(a.param, a.axis)]:
                owner[(a.param, a.axis)].append(i)
    bad: dict[int, str] = {}
    for (param, axis), idx in owner.items():
        if len(idx) > 1:
            for i in idx:
                others = ", ".join(sites[j].name for j in idx if j != i)
                bad[i] = f"parameter {param} (axis {axis}) is also acted on by site {others} (a shared module)"
    out = []
    for i, s in enumerate(sites):
        if i in bad:
            reason = bad[i] if s.reason is None or s.status != "frozen" else f"{s.reason}; {bad[i]}"
            s = _replace(s, status="frozen", reason=reason)
        out.append(s)
    return out


def _replace(site: Site, **changes) -> Site:
    from dataclasses import replace

    return replace(site, **changes)


def symmetries(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...]) -> Symmetries:
    """Find the hidden sites of ``model`` on the example input ``x`` and the symmetry group of each.

    The model is traced with torch.fx, or, when fx cannot trace it (HF transformers, data-dependent control
    flow), run once on ``x`` while every torch function and tensor method outside leaf modules is recorded
    (``TorchFunctionMode``); either way in eval mode, so dropout is the identity. Each hidden feature space gets
    the intersection of the groups of its primitives: the declared ``groups`` of an isotorch primitive, a fixed
    table for torch's own (ReLU: permutation × positive scaling; tanh: signed permutation; GELU: permutation;
    LayerNorm with affine: permutation; RMSNorm without affine: orthogonal; ...), HF norm classes read as RMSNorm
    or LayerNorm with a gain, and a numerical probe (:func:`isotorch.audit.audit` for anything not elementwise)
    on the received input for any other parameter-free operation. See :class:`Site` for what each site reports;
    a model the analysis cannot read at all gives frozen ``"unread"`` entries with the reasons, never an empty
    result.

    Args:
        model: the network (any ``nn.Module``; it is not modified).
        x: an example input: a tensor, or a tuple of the model's positional tensor inputs. Transforms are verified
            on it, so make it generic (random, a few rows).

    Returns:
        :class:`Symmetries`, a frozen collection of :class:`Site` (index by name).

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``x`` is not a tensor or tuple of tensors.
        ValueError: ``x`` is empty or not finite, or the model refuses it (a one-line message naming ``x``, its
            shape and dtype, and what the model's first layer expects).

    Shape:
        x: whatever the model accepts; nothing is assumed beyond the model running on it.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from isotorch.params import symmetries
        >>> syms = symmetries(nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 1)), torch.randn(3, 4))
        >>> syms["0"].group, syms["0"].producers, syms["0"].consumers
        ('permutation', ('0',), ('2',))
    """
    return analyse(model, x)[0]


def analyse(model: nn.Module, x) -> tuple[Symmetries, Graph, list[PrimitiveUse], dict[str, int]]:
    """:func:`symmetries`, plus the traced graph (every node with its value on ``x``), the primitive applications
    and the feature axis of every node whose value carries a space's features (node name → axis); the audit and
    :func:`isotorch.families.convert` read these instead of walking the model again."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    from isotorch.params._trace import as_inputs

    inputs = tuple(t.detach().clone() for t in as_inputs(x))
    for t in inputs:
        if t.numel() == 0:
            raise ValueError(f"x must not be empty (transforms are verified on it), got shape {tuple(t.shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError("x must be finite (transforms are verified on it); it contains NaN or inf")
    graph = trace(model, inputs)
    analysis = _Analysis(model, graph)
    analysis.run()
    sites = analysis.sites()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    syms = Symmetries(
        sites=tuple(sites),
        model=type(model).__name__,
        method=graph.method,
        note=graph.note,
        x=inputs,
        shapes=MappingProxyType(shapes),
    )
    return syms, graph, analysis.primitive_uses(sites), analysis.feature_axes()
