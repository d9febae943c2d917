"""The symmetry audit of a whole model: every primitive site, the parameter symmetries they induce, end to end.

The model is read once by the site graph of :func:`isotorch.params.symmetries` (torch.fx, with forward hooks as
the fallback): every operation with the value it computed on ``x``, every hidden feature space (site) and the
axis that carries its features. Then, for the three "generations" of the taxonomy (REFERENCE §1.2–1.4):

- **G1, primitives.** Each primitive of the graph — a module (activation, norm, pooling, dropout, an isotorch
  primitive) or a function called in ``forward`` (``F.relu``, ``torch.tanh``, ``F.softmax`` over attention keys,
  ...) — is audited with :func:`audit_module` / :func:`audit` on the input it actually received, along the axis it
  acts on: the site graph's feature axis where the primitive sits on a site (read from the traced tensors, e.g. the
  last axis of ViT tokens (B, T, C), the channel axis of a LayerNorm2d that permutes), else the axis the primitive
  itself normalises or acts on (softmax ``dim``, BatchNorm channels). Linear layers are "absorbed by the weights";
  a module the graph cannot see inside is listed as *opaque*, and then G1 claims no common group.
- **G2, parameters.** One row per site of the graph (hidden layers, residual streams, attention heads and
  per-head query–key and value–output maps), with the site's group. For a free site one random element of each
  maximal group is applied to a private copy of the model through the site's parameter actions
  (:func:`isotorch.params.transform`'s machinery) and the output change is measured (it must be ~0); one element of
  a larger group is a negative control (it must change the output). A frozen or broken site says why.
- **G3, end to end.** Whether the whole model is invariant or equivariant under each group acting on its input
  (the Geometric Deep Learning case; an MLP is not, because its first layer fixes the input basis).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from isotorch import groups as _groups
from isotorch._util import as_generator, fresh_seed, json_safe
from isotorch.audit._function import _mode, _name_of, audit, audit_module, default_tolerance
from isotorch.audit._result import AuditResult, by_group, maximal_groups, sort_groups
from isotorch.audit._sampling import Sampler
from isotorch.testing import relative_error

__all__ = ["ChainAudit", "ModelAudit", "SiteRow", "audit_model"]

ABSORBED = "absorbed by the weights"
_STRUCTURAL = (nn.Identity, nn.Flatten, nn.Unflatten)
# linear layers that params does not produce sites for, but that are linear all the same
_OTHER_LINEAR = (nn.modules.conv._ConvTransposeNd, nn.EmbeddingBag)
# primitives that act on the channel axis 1 of their input
_CHANNEL_MODULES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
_CHANNEL_FUNCTIONS = {
    F.batch_norm,
    F.group_norm,
    F.instance_norm,
    F.local_response_norm,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.lp_pool1d,
    F.lp_pool2d,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
}
_SOFTMAX_FUNCTIONS = {F.softmax, torch.softmax, F.log_softmax, torch.log_softmax, F.softmin}
_LAST_AXIS_FUNCTIONS = {F.layer_norm, torch.layer_norm, *([F.rms_norm] if hasattr(F, "rms_norm") else [])}
_DIM_FUNCTIONS = {F.normalize: 1, F.glu: -1}  # default dim of functions that take one
_NONLINEAR_METHODS = {"softmax", "log_softmax", "relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "exp"}
_NONLINEAR_FUNCTIONS = {
    *_CHANNEL_FUNCTIONS,
    *_SOFTMAX_FUNCTIONS,
    *_LAST_AXIS_FUNCTIONS,
    *_DIM_FUNCTIONS,
    torch.exp,
    torch.erf,
    torch.rsqrt,
    F.scaled_dot_product_attention,
}


def _is_isotorch_primitive(module: nn.Module) -> bool:
    return hasattr(module, "role") and hasattr(module, "groups") and hasattr(module, "dim")


def first_tensor(out: object) -> torch.Tensor | None:
    """The first tensor in a model output (a tensor, a tuple/list, or a dict such as a transformers output)."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def _float_leaves(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    return [t for v in values for t in _float_leaves(v)]


@dataclass(frozen=True, repr=False)
class SiteRow:
    """One operation of the model: a primitive site, a weight layer, attention, a structural op, or a skipped one.

    Attributes:
        path: the module's name in ``model.named_modules()``, or the graph node's name for a function called in
            ``forward`` (e.g. ``"relu"``).
        type: its class name, or the function's name followed by ``()`` (``"gelu()"``).
        role: ``"primitive"``, ``"absorbed"`` (weight layer), ``"attention"`` (its maps are G2 rows),
            ``"structural"`` (reshape, identity, inlined code), ``"opaque"`` (the site graph cannot see inside it:
            its primitives are not audited) or ``"skipped"`` (could not be audited; :attr:`note` says why).
        dim: the feature axis audited (None when not audited).
        n: the feature size (None when not audited).
        maximal: the largest groups held (empty when not audited).
        errors: group key → {"equivariance", "invariance"} relative errors.
        note: a short explanation (absorbed, skipped reason, declared vs measured groups, ...).
        result: the full :class:`AuditResult` of an audited primitive site (None for a primitive whose group is
            the site graph's, e.g. a product of two feature tensors).
        site: the G2 site whose features it acts on, or None.
    """

    path: str
    type: str
    role: str
    dim: int | None = None
    n: int | None = None
    maximal: frozenset[str] = frozenset()
    errors: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    note: str = ""
    result: AuditResult | None = None
    site: str | None = None

    @property
    def held(self) -> frozenset[str]:
        """Every group key the primitive holds (closed under subgroups); empty when unknown."""
        if self.result is not None:
            return self.result.equivariant if self.result.ok and self.result.respects == "equivariance" else frozenset()
        if self.role == "primitive" and self.maximal and self.n:
            from isotorch.params._primitives import closure

            return closure(frozenset(self.maximal), self.n)
        return frozenset()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return json_safe(
            {
                "path": self.path,
                "type": self.type,
                "role": self.role,
                "dim": self.dim,
                "n": self.n,
                "maximal": sort_groups(self.maximal),
                "errors": by_group(self.errors),
                "note": self.note,
                "site": self.site,
                "result": self.result.to_dict() if self.result is not None else None,
            }
        )

    def __repr__(self) -> str:
        groups = "{" + ", ".join(sort_groups(self.maximal)) + "}"
        return f"SiteRow({self.path!r}, {self.type}, {self.role}, maximal={groups}, note={self.note!r})"


@dataclass(frozen=True, repr=False)
class ChainAudit:
    """G2 for one site of the model's site graph (:func:`isotorch.params.symmetries`): its group, applied and
    verified on a private copy of the model.

    Attributes:
        site: the site's name in the site graph (``syms[site]``).
        kind: ``"hidden"``, ``"residual"``, ``"heads"``, ``"query_key"``, ``"value_output"`` (as the site graph).
        first: the first layer writing the features (the site's first producer).
        last: the last layer reading them (its last consumer).
        primitives: the primitives acting on its features (module paths, or graph node names of functions).
        width: the number of features n the group acts on (heads for a head site).
        groups: the site's maximal groups (empty when frozen or broken).
        group: the site graph's name of the group (``"permutation × positive_scaling"``, ``"general_linear"``,
            ``"frozen"``, ``"trivial"``).
        status: ``"free"``, ``"frozen"`` or ``"broken"``.
        reason: why the site is frozen or broken (None when free).
        changes: group key → relative change of the model output after one random element was applied.
        control: (group key, output change) for an element of a larger group, or None when there is none.
        tolerance: the output tolerance.
        verified: a free site whose elements kept the output (≤ tolerance) and whose control (if any) changed it.
        note: an explanation when not verified.
    """

    site: str
    kind: str
    first: str
    last: str
    primitives: tuple[str, ...]
    width: int
    groups: frozenset[str]
    group: str
    status: str
    reason: str | None
    changes: Mapping[str, float]
    control: tuple[str, float] | None
    tolerance: float
    verified: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return json_safe(
            {
                "site": self.site,
                "kind": self.kind,
                "first": self.first,
                "last": self.last,
                "primitives": list(self.primitives),
                "width": self.width,
                "groups": sort_groups(self.groups),
                "group": self.group,
                "status": self.status,
                "reason": self.reason,
                "changes": dict(self.changes),
                "control": None if self.control is None else {"group": self.control[0], "change": self.control[1]},
                "tolerance": self.tolerance,
                "verified": self.verified,
                "note": self.note,
            }
        )

    def __repr__(self) -> str:
        return (
            f"ChainAudit({self.site}: {self.first} → {self.last}, {self.kind}, width={self.width}, "
            f"group={self.group}, verified={self.verified})"
        )


@dataclass(frozen=True, repr=False)
class ModelAudit:
    """The audit of a model: one row per operation and the three-generation summary.

    Attributes:
        model: the model's class name.
        input_shape: shape of the input of the recorded forward pass.
        rows: :class:`SiteRow` per module or primitive function, in execution order (modules never called last).
        chains: G2, one :class:`ChainAudit` per site of the site graph.
        end_to_end: G3, the audit of the whole model on its input (None when not applicable).
        end_to_end_reason: why G3 was not measured.
        not_analysed: what the site graph could not see (opaque modules, code between hooked modules), and why.
        settings: the audit's settings (trials, inputs, ...; seed: the generator's seed when
            ``torch.Generator().manual_seed(seed)`` reproduces the audit, else None).
        method: how the site graph was traced (``"fx"``, ``"hooks"``, ...).
    """

    model: str
    input_shape: tuple[int, ...]
    rows: tuple[SiteRow, ...]
    chains: tuple[ChainAudit, ...]
    end_to_end: AuditResult | None
    end_to_end_reason: str | None
    not_analysed: tuple[str, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)
    method: str = "fx"

    @property
    def sites(self) -> tuple[SiteRow, ...]:
        """The primitive rows that were audited."""
        return tuple(r for r in self.rows if r.role == "primitive" and r.result is not None)

    @property
    def complete(self) -> bool:
        """Whether the site graph saw every operation of the model (no opaque module, no untraced code)."""
        return not self.not_analysed

    @property
    def common(self) -> frozenset[str]:
        """The maximal groups that every primitive holds (its feature size aside); empty when a primitive holds
        none, or when the model is not :attr:`complete` (G1 never claims more than it saw)."""
        prims = [(r.held, r.n) for r in self.rows if r.role == "primitive" and r.n]
        if not prims or not self.complete:
            return frozenset()
        n = min(size for _, size in prims)
        common = frozenset.intersection(*[_at_size(held, n) for held, _ in prims])
        return maximal_groups(common, n)

    def summary(self) -> dict[str, Any]:
        """The three generations: G1 per-site groups, G2 sites, G3 end to end (JSON-ready)."""
        g3: dict[str, Any]
        if self.end_to_end is None:
            g3 = {"measured": False, "reason": self.end_to_end_reason}
        else:
            r = self.end_to_end
            g3 = {
                "measured": True,
                "status": r.status,
                "reason": r.reason,
                "equivariant": sort_groups(r.maximal) if r.respects == "equivariance" else [],
                "invariant": sort_groups(r.maximal_invariant),
            }
        return {
            "G1": {
                "sites": {r.path: sort_groups(r.maximal) for r in self.rows if r.role == "primitive"},
                "common": sort_groups(self.common),
                "complete": self.complete,
            },
            "G2": [c.to_dict() for c in self.chains],
            "G3": g3,
            "not_analysed": list(self.not_analysed),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: rows, summary and settings."""
        return json_safe(
            {
                "model": self.model,
                "input_shape": list(self.input_shape),
                "method": self.method,
                "settings": dict(self.settings),
                "rows": [r.to_dict() for r in self.rows],
                "summary": self.summary(),
                "end_to_end": self.end_to_end.to_dict() if self.end_to_end is not None else None,
            }
        )

    def to_markdown(self) -> str:
        """The rows and the summary as Markdown."""
        from isotorch.audit._render import model_markdown

        return model_markdown(self)

    def __rich__(self):
        from isotorch.audit._render import model_renderable

        return model_renderable(self)

    def __repr__(self) -> str:
        free = [c for c in self.chains if c.status == "free"]
        verified = sum(c.verified for c in free)
        common = "{" + ", ".join(sort_groups(self.common)) + "}" if self.complete else "unknown (not complete)"
        return (
            f"ModelAudit({self.model}, {len(self.sites)} primitive sites, common={common}, "
            f"G2 {verified}/{len(free)} free sites verified, {len(self.chains) - len(free)} frozen or broken)"
        )


def _at_size(held: frozenset[str], n: int) -> frozenset[str]:
    """The keys of ``held`` that are groups at size ``n`` too (block groups whose block does not divide n go)."""
    out = set()
    for key in held:
        g = _groups.get(key)
        if g.name == "block_orthogonal" and n % g._block_size():
            continue
        out.add(key)
    return frozenset(out)


def _shrink(x: torch.Tensor, dim: int, max_elements: int) -> tuple[torch.Tensor, str | None]:
    """Keep the first samples (and positions) so that an audit of a large activation stays cheap."""
    if x.numel() <= max_elements:
        return x, None
    dim = dim % x.ndim
    original = tuple(x.shape)
    for axis in range(x.ndim - 1):
        if axis == dim or x.numel() <= max_elements:
            continue
        per = x.numel() // x.shape[axis]
        keep = max(1, max_elements // max(per, 1))
        x = x.narrow(axis, 0, min(keep, x.shape[axis]))
    if tuple(x.shape) == original:
        return x, None
    return x, f"audited on a slice {tuple(x.shape)} of the activation {original}"


def _declared_note(module: nn.Module, result: AuditResult) -> str:
    try:
        claimed: Any = module.groups  # a primitive's group keys (nn.Module types attributes as tensors or modules)
        declared = tuple(claimed)
    except Exception:
        return "declares groups, but reading .groups raised"
    missing = [g for g in declared if g not in result.errors or g not in result.equivariant]
    if missing:
        return f"declares {', '.join(declared)}; fails {', '.join(missing)}"
    return f"declares {', '.join(declared)}: holds"


def _value(obj: Any) -> Any:
    """The concrete value of a graph argument (nodes replaced by what they computed)."""
    from isotorch.params._trace import Node

    if isinstance(obj, Node):
        return obj.value
    if isinstance(obj, tuple):
        return tuple(_value(o) for o in obj)
    if isinstance(obj, list):
        return [_value(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _value(v) for k, v in obj.items()}
    return obj


def _label(node) -> str:
    if node.op == "module":
        return type(node.target).__name__
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", repr(node.target))
    return f"{name}()"


def _dim_argument(node, default: int) -> int:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dim = _value(dim)
    return int(dim) if isinstance(dim, int) else default


def _own_axis(node, ndim: int) -> int | None:
    """The axis a primitive itself acts on (softmax ``dim``, norms, channel-wise pools), or None if it does not
    single one out (an elementwise map)."""
    if node.op == "module":
        module = node.target
        if _is_isotorch_primitive(module):
            return int(module.dim) % ndim
        if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            return (module.dim if module.dim is not None else -1) % ndim
        if isinstance(module, _CHANNEL_MODULES) and ndim >= 2:
            return 1
        if type(module) in (nn.LayerNorm, nn.RMSNorm):  # a subclass may permute first (LayerNorm2d)
            return ndim - 1
        return None
    target = node.target
    if node.op == "method":
        return _dim_argument(node, -1) % ndim if target in ("softmax", "log_softmax") else None
    if target in _SOFTMAX_FUNCTIONS:
        return _dim_argument(node, -1) % ndim
    if target in _DIM_FUNCTIONS:
        return _dim_argument(node, _DIM_FUNCTIONS[target]) % ndim
    if target in _CHANNEL_FUNCTIONS and ndim >= 2:
        return 1
    if target in _LAST_AXIS_FUNCTIONS:
        return ndim - 1
    return None


def _is_linear_layer(module: nn.Module) -> bool:
    from isotorch.params._sites import _linear_layer

    return _linear_layer(module) is not None or isinstance(module, _OTHER_LINEAR)


def _site_groups(groups, module: nn.Module | None, n: int):
    if groups is not None:
        return groups
    blocks = []
    if module is not None and _is_isotorch_primitive(module):
        try:
            claimed: Any = module.groups  # a primitive's group keys (nn.Module types attributes as tensors or modules)
            for key in claimed:
                g = _groups.get(key)
                if g.name == "block_orthogonal" and n % g._block_size() == 0:
                    blocks.append(g._block_size())
        except Exception:
            pass
    return _groups.lattice(n, blocks=tuple(blocks))


def _forward_error(exc: Exception) -> RuntimeError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return RuntimeError(f"x does not fit the model: the forward pass model(x) raised {type(exc).__name__}: {first}")


def audit_model(
    model: nn.Module,
    x: torch.Tensor,
    *,
    groups: Iterable[str | _groups.Group] | None = None,
    trials: int = 4,
    generator: torch.Generator | None = None,
    inputs: tuple[str, ...] = ("given", "gaussian", "outliers"),
    max_elements: int = 16384,
    max_samples: int = 1,
    input_dim: int | None = None,
    lie: bool = True,
) -> ModelAudit:
    """Audit every primitive of a model on the input it received, and summarise G1, G2 and G3.

    The model is read by its site graph (:func:`isotorch.params.symmetries`), in eval mode (its modes are restored
    afterwards). Primitives are audited non-exhaustively (a group stops at its first failure) on their recorded
    input (sliced to at most ``max_elements`` entries along the leading axes) and on synthetic inputs of the same
    shape, along the axis they act on (see the module docstring). G2 has one row per site of the graph.

    Args:
        model: the model; it is not modified (G2 transforms a deep copy).
        x: the input of one forward pass, ``model(x)`` (a float tensor, or token ids for a language model).
        groups: candidate groups for every primitive (default: the lattice without block groups, plus the block
            sizes that isotorch primitives declare).
        trials: random elements per group and primitive (default 4).
        generator: ``torch.Generator`` or ``None`` (torch's global RNG).
        inputs: inputs per primitive (default ``("given", "gaussian", "outliers")``).
        max_elements: activations larger than this are sliced before auditing (default 16384).
        max_samples: G2 compares the model's outputs on the first ``max_samples`` samples of x (default 1).
        input_dim: the feature axis of ``x`` for G3 (default: 1 if the first operation on x is a convolution or a
            channel-wise primitive, else -1).
        lie: compute Lie derivatives at each primitive, on its recorded input (default True).

    Returns:
        A :class:`ModelAudit`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``x`` is not a tensor.
        RuntimeError: the forward pass itself raised (the message names ``x`` and what the model raised).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> mlp = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> report = audit_model(mlp, torch.randn(4, 6, generator=torch.Generator().manual_seed(0)))
        >>> sorted(report.sites[0].maximal)
        ['signed_permutation']
        >>> report.chains[0].site, report.chains[0].group, report.chains[0].verified
        ('0', 'signed_permutation', True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    from isotorch.params._sites import analyse

    gen = as_generator(generator)
    sampler = Sampler(gen)
    seed = fresh_seed(gen)  # recorded in the settings when torch.Generator().manual_seed(seed) reproduces the audit
    with _mode(model, False), torch.no_grad():
        try:
            model(x)
        except Exception as exc:
            raise _forward_error(exc) from exc
        syms, graph, uses, axes = analyse(model, x)

    with _mode(model, False):
        rows, not_analysed = _rows(model, syms, graph, uses, axes, groups, trials, sampler, inputs, max_elements, lie)
        chains = _g2(model, syms, uses, x, gen, max_samples)
        end_to_end, reason = _end_to_end(model, x, graph, input_dim, trials, sampler)

    settings = {
        "trials": trials,
        "inputs": list(inputs),
        "max_elements": max_elements,
        "max_samples": max_samples,
        "seed": seed,
        "groups": None if groups is None else [str(_groups.get(g)) for g in groups],
    }
    return ModelAudit(
        model=type(model).__name__,
        input_shape=tuple(x.shape),
        rows=tuple(rows),
        chains=tuple(chains),
        end_to_end=end_to_end,
        end_to_end_reason=reason,
        not_analysed=tuple(not_analysed),
        settings=settings,
        method=graph.method,
    )


def _is_primitive_call(node, use) -> bool:
    """Whether a function/method node of the graph is a primitive (a G1 row)."""
    if use is not None:
        return use.groups is not None
    if node.op == "method":
        return node.target in _NONLINEAR_METHODS
    from isotorch.params._primitives import LINEAR, function_groups

    try:
        keys = function_groups(node.target)
        return (keys is not None and keys != LINEAR) or node.target in _NONLINEAR_FUNCTIONS
    except TypeError:
        return False


def _rows(model, syms, graph, uses, axes, groups, trials, sampler, inputs, max_elements, lie):
    from isotorch.params._trace import Node

    use_of: dict = {}
    for u in uses:
        use_of.setdefault(u.node, u)
    rows: list[SiteRow] = []
    not_analysed: list[str] = []
    seen: dict[int, int] = {}  # id(module) → index of its row
    counts: dict[int, int] = {}
    called: set[int] = set()
    node_modules: list[str] = []
    cache: dict = {}  # equal primitives (same kind and parameters) on inputs of the same shape are audited once
    for node in graph.nodes:
        if node.op == "opaque":
            if graph.note and not any(line.startswith("code between") for line in not_analysed):
                not_analysed.append(f"code between modules that the trace could not see ({graph.note})")
            continue
        if node.op == "module":
            module = node.target
            called.add(id(module))
            node_modules.append(node.qualname)
            if id(module) in seen:
                counts[id(module)] += 1
                continue
            counts[id(module)] = 1
            seen[id(module)] = len(rows)
            rows.append(
                _module_row(
                    syms,
                    node,
                    use_of.get(node.name),
                    axes,
                    groups,
                    trials,
                    sampler,
                    inputs,
                    max_elements,
                    lie,
                    not_analysed,
                    cache,
                )
            )
        elif node.op in ("function", "method") and _is_primitive_call(node, use_of.get(node.name)):
            rows.append(
                _call_row(
                    node, use_of.get(node.name), axes, groups, trials, sampler, inputs, max_elements, lie, Node, cache
                )
            )
    for key, index in seen.items():
        if counts[key] > 1:
            r = rows[index]
            note = "; ".join(p for p in (r.note, f"called {counts[key]} times; the first call is audited") if p)
            rows[index] = SiteRow(r.path, r.type, r.role, r.dim, r.n, r.maximal, r.errors, note, r.result, r.site)
    # modules that are no node of the graph
    for path, module in model.named_modules():
        if not path or id(module) in called or any(path.startswith(p + ".") for p in node_modules if p):
            continue
        if any(True for _ in module.children()):
            continue
        torch_leaf = type(module).__module__.startswith("torch.nn") or _is_isotorch_primitive(module)
        if torch_leaf or graph.method == "hooks":
            note = "never called in the forward pass (unused, or a fused fast path)"
        else:
            note = "no call of its own in the traced graph: traced through (its operations are rows), or never called"
        rows.append(SiteRow(path, type(module).__name__, "skipped" if torch_leaf else "structural", note=note))
    return rows, not_analysed


def _module_row(syms, node, use, axes, groups, trials, sampler, inputs, max_elements, lie, not_analysed, cache):
    module, path = node.target, node.qualname
    type_name = type(module).__name__
    if isinstance(module, nn.MultiheadAttention):
        maps = [s.name for s in syms if s.name.startswith(f"{path}.")]
        note = "softmax over the keys inside; its maps are G2 rows: " + (", ".join(maps) if maps else "none")
        return SiteRow(path, type_name, "attention", note=note)
    if _is_linear_layer(module):
        return SiteRow(path, type_name, "absorbed", note=ABSORBED)
    if isinstance(module, _STRUCTURAL):
        return SiteRow(path, type_name, "structural", note="reshape or identity: no computation")
    weights = [p for p in module.parameters(recurse=False) if p.ndim >= 2]
    if not _is_isotorch_primitive(module) and (any(True for _ in module.children()) or weights):
        why = "a composite module" if any(True for _ in module.children()) else "an unknown layer with weight matrices"
        line = f"{path} ({type_name}): {why} that the site graph cannot see inside; its primitives are not audited"
        not_analysed.append(line)
        return SiteRow(path, type_name, "opaque", note=line.split(": ", 1)[1])
    values = [_value(a) for a in node.args]
    kw_values = _value(node.kwargs)
    reason = None
    x = values[0] if values else None
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        reason = "its input is not a floating-point tensor"
    elif len(values) != 1 or kw_values:
        reason = "called with more than one argument"
    elif not isinstance(node.value, torch.Tensor):
        reason = f"returns {type(node.value).__name__}, not a tensor"
    if reason is not None:
        return SiteRow(path, type_name, "skipped", note=reason)
    assert isinstance(x, torch.Tensor)  # no reason: the input is a floating-point tensor
    dim = _axis(node, use, axes, x)
    key = None
    tensors = [*module.parameters(), *module.buffers()]
    if not _is_isotorch_primitive(module) and sum(t.numel() for t in tensors) <= 65536:
        # the same kind with equal parameters (e.g. the norms of a freshly initialised transformer) on an input of
        # the same shape computes the same map: one audit serves all
        state = tuple((t.dtype, tuple(t.shape), _bytes(t)) for t in tensors)
        key = (type(module), module.extra_repr(), state, tuple(x.shape), dim)
    return _audited_row(
        path,
        type_name,
        module,
        lambda: module,
        x,
        dim,
        use,
        groups,
        trials,
        sampler,
        inputs,
        max_elements,
        lie,
        cache,
        key,
    )


def _readable(axis: int, ndim: int) -> int:
    """The last axis as -1, any other by its index (as the rest of isotorch reports feature axes)."""
    return -1 if axis == ndim - 1 else axis


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def _axis(node, use, axes, x: torch.Tensor) -> int:
    """The feature axis: the site graph's where the primitive is on a site, else the primitive's own, else the
    graph's feature axis of its input, else the last."""
    if use is not None:
        return use.axis
    own = _own_axis(node, x.ndim)
    if own is not None:
        return own
    for a in node.args:
        name = getattr(a, "name", None)
        if name in axes:
            return axes[name]
    return x.ndim - 1


def _call_row(node, use, axes, groups, trials, sampler, inputs, max_elements, lie, Node, cache):
    label = _label(node)
    path = getattr(node, "scope", None)
    path = f"{path}: {node.name}" if path else node.name
    site = use.site if use is not None else None
    if node.target is F.scaled_dot_product_attention:
        return SiteRow(
            path, label, "attention", note="softmax over the keys of q·kᵀ; heads and per-head maps are G2 rows"
        )
    feature_args = [
        i
        for i, a in enumerate(node.args)
        if isinstance(a, Node) and a.op != "param" and isinstance(a.value, torch.Tensor)
    ]
    if len(feature_args) != 1 or any(
        isinstance(v, Node) and v.op != "param" and isinstance(v.value, torch.Tensor) for v in node.kwargs.values()
    ):
        if use is not None and use.groups is not None and len(feature_args) > 1:
            value = node.args[feature_args[0]].value
            n = value.shape[use.axis]
            maximal = maximal_groups(frozenset(use.groups), n)
            note = "combines several tensors of features: its group is the site graph's (REFERENCE §3.1), not measured"
            return SiteRow(path, label, "primitive", _readable(use.axis, value.ndim), n, maximal, note=note, site=site)
        return SiteRow(path, label, "skipped", note="its input is not one tensor of features", site=site)
    k = feature_args[0]
    x = node.args[k].value
    if not x.is_floating_point():
        return SiteRow(path, label, "skipped", note="its input is not a floating-point tensor", site=site)
    per_feature = [
        a
        for a in [*node.args, *node.kwargs.values()]
        if isinstance(a, Node) and a.op == "param" and isinstance(a.value, torch.Tensor) and a.value.numel() > 1
    ]
    if per_feature and use is not None and use.groups is not None:
        # e.g. a norm's gain applied as ``weight * x``: the gain moves with the features (the site graph acts on it),
        # which an audit of the function with the gain held fixed would not see
        n = x.shape[use.axis]
        maximal = maximal_groups(frozenset(use.groups), n)
        note = "a per-feature parameter that moves with the features: its group is the site graph's, not measured"
        return SiteRow(path, label, "primitive", _readable(use.axis, x.ndim), n, maximal, note=note, site=site)
    rest = [_value(a) for a in node.args]
    kwargs = _value(node.kwargs)
    kwargs.pop("inplace", None)
    target = node.target

    if node.op == "method":
        name = target.rstrip("_") if target.endswith("_") and not target.endswith("__") else target

        def fn(t):
            args = rest[1:] if k == 0 else rest
            return getattr(t, name)(*args, **kwargs)
    else:

        def fn(t):
            args = list(rest)
            args[k] = t
            return target(*args, **kwargs)

    dim = _axis(node, use, axes, x)
    constants = [repr(v) for i, v in enumerate(rest) if i != k and not isinstance(v, torch.Tensor)]
    constants += [f"{name}={v!r}" for name, v in kwargs.items() if not isinstance(v, torch.Tensor)]
    params = any(isinstance(v, torch.Tensor) for i, v in enumerate(rest) if i != k) or any(
        isinstance(v, torch.Tensor) for v in kwargs.values()
    )
    key = None if params else (label, node.target, tuple(constants), tuple(x.shape), dim)
    return _audited_row(
        path, label, None, lambda: fn, x, dim, use, groups, trials, sampler, inputs, max_elements, lie, cache, key
    )


def _audited_row(
    path, type_name, module, target, x, dim, use, groups, trials, sampler, inputs, max_elements, lie, cache, key
):
    site = use.site if use is not None else None
    x = x.detach()
    dim = dim - x.ndim if dim == x.ndim - 1 else dim  # the last axis reads as -1, as in the rest of isotorch
    if x.ndim == 0 or x.shape[dim] < 2:
        note = "acts on an axis of size 1 (e.g. a norm's reduced statistic): no group to measure"
        return SiteRow(path, type_name, "skipped", note=note, site=site)
    if key is not None and key in cache:
        first, r = cache[key]
        note = f"the same map as {first} (equal parameters, if any) on an input of the same shape: its audit is reused"
        return SiteRow(path, type_name, "primitive", r.dim, r.n, r.maximal, r.errors, note, r.result, site)
    x, shrink_note = _shrink(x, dim, max_elements)
    n = x.shape[dim]
    try:
        if module is not None:
            result = audit_module(
                module,
                x,
                dim=dim,
                groups=_site_groups(groups, module, n),
                trials=trials,
                inputs=inputs,
                exhaustive=False,
                lie=lie,
                name=path,
                _sampler=sampler,
                _lie_inputs=1,
            )
        else:
            result = audit(
                target(),
                x,
                dim=dim,
                groups=_site_groups(groups, None, n),
                trials=trials,
                generator=sampler.generator,
                inputs=inputs,
                exhaustive=False,
                lie=lie,
                name=path,
            )
    except (TypeError, ValueError, RuntimeError) as exc:
        return SiteRow(path, type_name, "skipped", note=f"cannot be audited: {exc}", site=site)
    notes = []
    if not result.ok:
        notes.append(f"{result.status}: {result.reason}")
    if module is not None and _is_isotorch_primitive(module) and result.ok:
        notes.append(_declared_note(module, result))
    if shrink_note:
        notes.append(shrink_note)
    if result.disagreements:
        notes.append(f"{len(result.disagreements)} finite/Lie disagreement(s)")
    row = SiteRow(path, type_name, "primitive", dim, n, result.maximal, result.errors, "; ".join(notes), result, site)
    if key is not None:
        cache[key] = (path, row)
    return row


def _reference_input(model: nn.Module, x: torch.Tensor, max_samples: int):
    """The first ``max_samples`` samples of x and the model's float outputs on them (x itself if slicing fails)."""
    if x.ndim > 0 and x.shape[0] > max_samples:
        try:
            small = x[:max_samples]
            with torch.no_grad():
                out = _float_leaves(model(small))
            if out:
                return small, out
        except Exception:  # a model that needs the full batch is verified on it
            pass
    with torch.no_grad():
        return x, _float_leaves(model(x))


def _change(private: nn.Module, x: torch.Tensor, reference: list[torch.Tensor]) -> float:
    with torch.no_grad():
        out = _float_leaves(private(x))
    if len(out) != len(reference) or not out:
        return math.nan
    return max(relative_error(a, b) for a, b in zip(out, reference, strict=True))


@contextlib.contextmanager
def _applied(syms, live: dict, original: dict, matrices: dict[str, torch.Tensor]):
    """Apply ``matrices`` (site name → element) to the private copy in place (the site graph's parameter
    actions), and restore every touched tensor exactly afterwards."""
    from isotorch.params._transform import apply_element

    changes = apply_element(original, syms, matrices)
    try:
        with torch.no_grad():
            for key, value in changes.items():
                live[key].copy_(value)
        yield
    finally:
        with torch.no_grad():
            for key in changes:
                live[key].copy_(original[key])


def _change_with(private, syms, live, original, matrices, x, reference) -> float:
    with _applied(syms, live, original, matrices):
        return _change(private, x, reference)


def _element(site, gen: torch.Generator) -> torch.Tensor:
    """A random element of a free site's group: the product of one sample of each maximal group (a random
    orthogonal matrix times a positive diagonal for GL(n)); a permutation alone as its index vector."""
    n = site.size
    keys = ["orthogonal", "positive_scaling"] if site.general_linear else sort_groups(site.maximal)
    if keys == ["permutation"]:
        return _as_index(_groups.get("permutation").sample(n, generator=gen, dtype=torch.float64))
    g = torch.eye(n, dtype=torch.float64)
    for key in keys:
        g = g @ _groups.get(key).sample(n, generator=gen, dtype=torch.float64)
    return g


def _as_index(g: torch.Tensor) -> torch.Tensor:
    """A permutation matrix as its index vector (g = I[perm]), which the site graph applies without a matmul."""
    return g.argmax(dim=1)


def _g2(model, syms, uses, x, gen, max_samples) -> list[ChainAudit]:
    if not len(syms):
        return []
    primitives: dict[str, list[str]] = {}
    for u in uses:
        path = u.path if u.path is not None else u.node
        if u.site is not None and path not in primitives.setdefault(u.site, []):
            primitives[u.site].append(path)
    private = copy.deepcopy(model).eval()
    x, reference = _reference_input(private, x, max_samples)
    if not reference:
        return []
    tol = default_tolerance(reference[0].dtype)
    live = dict(private.state_dict(keep_vars=True))
    original = {k: v.detach().clone() for k, v in live.items()}
    joint: dict[str, list[str]] = {}  # site → the free per-head GL sites of the same attention and kind
    groups_of: dict[tuple, list[str]] = {}
    for site in syms:
        if site.free and site.general_linear and site.kind in ("query_key", "value_output"):
            groups_of.setdefault((site.kind, site.producers), []).append(site.name)
    for names in groups_of.values():
        for name in names:
            joint[name] = names
    joint_changes: dict[str, float] = {}
    # one random element at every free site at once: one forward pass verifies them all; only if the output
    # changes is each site verified on its own, to say which
    free = [site for site in syms if site.free]
    together = math.nan
    if free:
        together = _change_with(private, syms, live, original, {s.name: _element(s, gen) for s in free}, x, reference)
    chains = []
    for site in syms:
        n = site.size
        first = site.producers[0] if site.producers else site.name
        last = site.consumers[-1] if site.consumers else ""
        common = dict(
            site=site.name,
            kind=site.kind,
            first=first,
            last=last,
            primitives=tuple(primitives.get(site.name, ())),
            width=n,
            group=site.group,
            status=site.status,
            reason=site.reason,
            tolerance=tol,
        )
        if not site.free:
            chains.append(
                ChainAudit(
                    **common,
                    groups=frozenset(),
                    changes={},
                    control=None,
                    verified=False,
                    note=f"{site.status}: {site.reason}",
                )
            )
            continue

        def change(g: torch.Tensor, name=site.name) -> float:
            with _applied(syms, live, original, {name: g}):
                return _change(private, x, reference)

        changes: dict[str, float] = {}
        control = None
        group = joint.get(site.name)
        if together <= tol:
            changes["all free sites at once"] = together
        elif group is not None:  # the per-head maps of one attention: one element at each, verified together
            if group[0] not in joint_changes:
                matrices = {}
                for name in group:
                    g = _groups.get("orthogonal").sample(syms[name].size, generator=gen, dtype=torch.float64)
                    matrices[name] = g @ _groups.get("positive_scaling").sample(
                        syms[name].size, generator=gen, dtype=torch.float64
                    )
                with _applied(syms, live, original, matrices):
                    joint_changes[group[0]] = _change(private, x, reference)
            changes["general_linear"] = joint_changes[group[0]]
        elif site.general_linear:
            g = _groups.get("orthogonal").sample(n, generator=gen, dtype=torch.float64)
            g = g @ _groups.get("positive_scaling").sample(n, generator=gen, dtype=torch.float64)
            changes["general_linear"] = change(g)
        else:
            for key in sort_groups(site.maximal):
                g = _groups.get(key).sample(n, generator=gen, dtype=torch.float64)
                changes[key] = change(_as_index(g) if _groups.get(key).name == "permutation" else g)
        if not site.general_linear:  # the negative control: an element of a larger group must change the output
            candidates = [
                c.key for key in sort_groups(site.maximal) for c in _groups.covers(key, n) if c.key not in site.groups
            ]
            if site.kind == "heads":  # sign flips and scalings of whole heads are per-head maps: mix heads instead
                candidates = ["orthogonal"]
            if candidates:
                g = _groups.get(candidates[0]).sample(n, generator=gen, dtype=torch.float64)
                control = (candidates[0], change(g))
        held_ok = all(v <= tol for v in changes.values())
        control_ok = control is None or not control[1] <= tol  # a NaN output changed too
        note = ""
        if not held_ok:
            note = "the output changed under an element of the site's group"
        elif not control_ok and control is not None:  # (a failed control is always set)
            note = f"the control {control[0]} did not change the output: the site is more symmetric than the graph says"
        elif together <= tol:
            note = f"verified with one random element at each of the {len(free)} free sites at once"
            if site.general_linear:
                note += "; GL(n): no larger group to use as a control"
        elif group is not None:
            note = f"GL(n), verified with one element at each of the {len(group)} {site.kind} maps of {first} at once"
        elif control is None:
            note = (
                "GL(n): no larger group to use as a control" if site.general_linear else "no larger group as a control"
            )
        chains.append(
            ChainAudit(
                **common,
                groups=site.maximal,
                changes=changes,
                control=control,
                verified=held_ok and control_ok,
                note=note,
            )
        )
    return chains


def _end_to_end(model, x, graph, input_dim, trials, sampler):
    if not x.is_floating_point():
        return None, "the input is not floating point (e.g. token ids): no group acts on it"
    if input_dim is None:
        input_dim = -1
        inputs = [n for n in graph.nodes if n.op == "input"]
        readers = [n for n in graph.nodes if any(a is i for i in inputs for a in n.args)]
        if readers and x.ndim >= 3:
            first = readers[0]
            if first.op == "module" and isinstance(first.target, nn.modules.conv._ConvNd):
                input_dim = 1
            elif first.op in ("module", "function", "method") and _own_axis(first, x.ndim) == 1:
                input_dim = 1
    name = _name_of(model)

    def whole(z):
        return first_tensor(model(z))

    try:
        result = audit(
            whole,
            x,
            dim=input_dim,
            groups=_groups.lattice(x.shape[input_dim], blocks=()),
            trials=trials,
            generator=sampler.generator,
            inputs=("given", "gaussian"),
            exhaustive=False,
            lie=False,
            name=name,
        )
    except (TypeError, ValueError) as exc:
        return None, f"cannot be audited end to end: {exc}"
    return result, None
