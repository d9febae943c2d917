"""The symmetry audit of a whole model: every primitive site, the parameter symmetries they induce, end to end.

One forward pass with hooks records what each leaf module received. Then, for the three "generations" of the
taxonomy (REFERENCE §1.2–1.4):

- **G1, primitives.** Each primitive site (a leaf module that is not a weight layer, or an isotorch primitive) is
  audited with :func:`audit_module` on the input it actually received, along its feature axis (an isotorch
  primitive's ``.dim``; channel dim 1 for conv feature maps; else the last dim). Weight layers (Linear, Conv,
  Embedding and anything whose ``weight`` has ≥ 2 dims) are "absorbed by the weights".
- **G2, parameters.** In a sequential chain W₁ → primitives → W₂, the primitives' common group G is a hidden-layer
  parameter symmetry: W₁ → gW₁, b₁ → gb₁, W₂ → W₂g⁻¹ (feature-aligned parameters of the primitives in between are
  permuted with g when g is a permutation). One random g of each maximal group is applied to a deep copy of the
  model and the output change is measured (it must be ~0); one element of a larger group is a negative control
  (it must change the output).
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
from torch import nn

from isotorch import groups as _groups
from isotorch.audit._function import _mode, _name_of, audit, audit_module, default_tolerance
from isotorch.audit._result import AuditResult, _json_errors, _json_float, maximal_groups, sort_groups
from isotorch.audit._sampling import Element, Sampler, as_generator, sample
from isotorch.testing import relative_error

__all__ = ["ChainAudit", "ModelAudit", "SiteRow", "audit_model"]

ABSORBED = "absorbed by the weights"
_STRUCTURAL = (nn.Identity, nn.Flatten, nn.Unflatten)
_CHANNEL_FIRST = (
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


def _is_isotorch_primitive(module: nn.Module) -> bool:
    return hasattr(module, "role") and hasattr(module, "groups") and hasattr(module, "dim")


def _is_weight_layer(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.ndim >= 2 and not _is_isotorch_primitive(module)


def _layer_axes(module: nn.Module) -> tuple[int, int] | None:
    """(output axis, input axis) of a weight layer's ``weight`` if G2 can transform it, else None."""
    if isinstance(module, nn.Linear):
        return 0, 1
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and module.groups == 1:
        return 0, 1
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:  # transformers' GPT-2
        return 1, 0
    return None


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


@dataclass(frozen=True, repr=False)
class SiteRow:
    """One module of the model: a primitive site, a weight layer, a structural op, or a skipped module.

    Attributes:
        path: the module's name in ``model.named_modules()``.
        type: its class name.
        role: ``"primitive"``, ``"absorbed"`` (weight layer), ``"structural"`` (reshape, identity) or
            ``"skipped"`` (could not be audited; :attr:`note` says why).
        dim: the feature axis audited (None when not audited).
        n: the feature size (None when not audited).
        maximal: the largest groups held (empty when not audited).
        errors: group key → {"equivariance", "invariance"} relative errors.
        note: a short explanation (absorbed, skipped reason, declared vs measured groups, ...).
        result: the full :class:`AuditResult` of a primitive site.
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "path": self.path,
            "type": self.type,
            "role": self.role,
            "dim": self.dim,
            "n": self.n,
            "maximal": sort_groups(self.maximal),
            "errors": _json_errors(self.errors),
            "note": self.note,
            "result": self.result.to_dict() if self.result is not None else None,
        }

    def __repr__(self) -> str:
        groups = "{" + ", ".join(sort_groups(self.maximal)) + "}"
        return f"SiteRow({self.path!r}, {self.type}, {self.role}, maximal={groups}, note={self.note!r})"


@dataclass(frozen=True, repr=False)
class ChainAudit:
    """G2 for one chain W₁ → primitives → W₂: the induced hidden-layer symmetry, applied and verified.

    Attributes:
        first, last: paths of the two weight layers.
        primitives: paths of the primitive sites between them.
        width: the hidden width n.
        groups: the maximal groups of the intersection of the primitives' groups (the parameter symmetry).
        changes: group key → relative change of the model output after one random element was applied.
        control: (group key, output change) for an element of a larger group, or None when there is none.
        tolerance: the output tolerance.
        verified: every change ≤ tolerance, and the control (if any) changed the output by more.
        note: an explanation when not verified.
    """

    first: str
    last: str
    primitives: tuple[str, ...]
    width: int
    groups: frozenset[str]
    changes: Mapping[str, float]
    control: tuple[str, float] | None
    tolerance: float
    verified: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "first": self.first,
            "last": self.last,
            "primitives": list(self.primitives),
            "width": self.width,
            "groups": sort_groups(self.groups),
            "changes": {k: _json_float(self.changes[k]) for k in sort_groups(self.changes)},
            "control": None
            if self.control is None
            else {"group": self.control[0], "change": _json_float(self.control[1])},
            "tolerance": self.tolerance,
            "verified": self.verified,
            "note": self.note,
        }

    def __repr__(self) -> str:
        groups = "{" + ", ".join(sort_groups(self.groups)) + "}"
        return f"ChainAudit({self.first} → {self.last}, width={self.width}, groups={groups}, verified={self.verified})"


@dataclass(frozen=True, repr=False)
class ModelAudit:
    """The audit of a model: one row per module and the three-generation summary.

    Attributes:
        model: the model's class name.
        input_shape: shape of the input of the recorded forward pass.
        rows: :class:`SiteRow` per module, in execution order (modules never called come last).
        chains: G2, one :class:`ChainAudit` per sequential chain W₁ → primitives → W₂.
        end_to_end: G3, the audit of the whole model on its input (None when not applicable).
        end_to_end_reason: why G3 was not measured.
        not_analysed: patterns that G2 did not analyse, with the reason.
        settings: the audit's settings (trials, inputs, seed, ...).
    """

    model: str
    input_shape: tuple[int, ...]
    rows: tuple[SiteRow, ...]
    chains: tuple[ChainAudit, ...]
    end_to_end: AuditResult | None
    end_to_end_reason: str | None
    not_analysed: tuple[str, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sites(self) -> tuple[SiteRow, ...]:
        """The primitive rows that were audited."""
        return tuple(r for r in self.rows if r.role == "primitive" and r.result is not None)

    @property
    def common(self) -> frozenset[str]:
        """The maximal groups that every audited primitive site holds (its feature size aside)."""
        held = [r.result.equivariant for r in self.sites if r.result.ok and r.result.respects == "equivariance"]
        if not held:
            return frozenset()
        common = frozenset.intersection(*held)
        n = min(r.n for r in self.sites)
        return maximal_groups(common, n)

    def summary(self) -> dict[str, Any]:
        """The three generations: G1 per-site groups, G2 chains, G3 end to end (JSON-ready)."""
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
                "sites": {r.path: sort_groups(r.maximal) for r in self.sites},
                "common": sort_groups(self.common),
            },
            "G2": [c.to_dict() for c in self.chains],
            "G3": g3,
            "not_analysed": list(self.not_analysed),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: rows, summary and settings."""
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "settings": dict(self.settings),
            "rows": [r.to_dict() for r in self.rows],
            "summary": self.summary(),
            "end_to_end": self.end_to_end.to_dict() if self.end_to_end is not None else None,
        }

    def to_markdown(self) -> str:
        """The rows and the summary as Markdown."""
        from isotorch.audit._render import model_markdown

        return model_markdown(self)

    def __rich__(self):
        from isotorch.audit._render import model_renderable

        return model_renderable(self)

    def __repr__(self) -> str:
        verified = sum(c.verified for c in self.chains)
        return (
            f"ModelAudit({self.model}, {len(self.sites)} primitive sites, "
            f"common={{{', '.join(sort_groups(self.common))}}}, "
            f"G2 {verified}/{len(self.chains)} chains verified)"
        )


@dataclass
class _Call:
    index: int
    path: str
    module: nn.Module
    args: tuple
    kwargs: dict
    inputs: Any = None
    clone: torch.Tensor | None = None
    output: Any = None


def _shrink(x: torch.Tensor, dim: int, max_elements: int) -> tuple[torch.Tensor, str | None]:
    """Keep the first samples (and positions) so that an audit of a large activation stays cheap."""
    if x.numel() <= max_elements:
        return x, None
    dim = dim % x.ndim
    original = tuple(x.shape)
    for axis in (0, 1):
        if axis >= x.ndim or axis == dim or x.numel() <= max_elements:
            continue
        if axis == 1 and (x.ndim < 3 or dim == 1 or x.ndim > 3):
            continue
        per = x.numel() // x.shape[axis]
        keep = max(1, max_elements // max(per, 1))
        x = x.narrow(axis, 0, min(keep, x.shape[axis]))
    if tuple(x.shape) == original:
        return x, None
    return x, f"audited on a slice {tuple(x.shape)} of the activation {original}"


def _declared_note(module: nn.Module, result: AuditResult) -> str:
    try:
        declared = tuple(module.groups)
    except Exception:
        return "declares groups, but reading .groups raised"
    missing = [g for g in declared if g not in result.errors or g not in result.equivariant]
    if missing:
        return f"declares {', '.join(declared)}; fails {', '.join(missing)}"
    return f"declares {', '.join(declared)}: holds"


def _site_dim(call: _Call, x: torch.Tensor, last_weight: nn.Module | None) -> int:
    module = call.module
    if _is_isotorch_primitive(module):
        return int(module.dim)
    if x.ndim >= 3 and (isinstance(module, _CHANNEL_FIRST) or isinstance(last_weight, nn.modules.conv._ConvNd)):
        return 1
    return -1


@contextlib.contextmanager
def _applied(model: nn.Module, first: str, last: str, primitives: Iterable[str], element: Element):
    """Apply W₁ → gW₁, b₁ → gb₁, W₂ → W₂g⁻¹ (and permute the primitives' aligned parameters) in place on
    ``model`` (the audit's private deep copy), and restore every touched tensor exactly afterwards."""
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def assign(t: torch.Tensor, value: torch.Tensor) -> None:
        saved.append((t, t.detach().clone()))
        t.copy_(value.to(t.dtype))

    inverse_t = element.contragredient()
    try:
        with torch.no_grad():
            a = model.get_submodule(first)
            out_axis, _ = _layer_axes(a)
            assign(a.weight, element.act(a.weight, out_axis))
            if getattr(a, "bias", None) is not None:
                assign(a.bias, element.act(a.bias, 0))
            b = model.get_submodule(last)
            _, in_axis = _layer_axes(b)
            assign(b.weight, inverse_t.act(b.weight, in_axis))
            if element.is_permutation:
                for path in primitives:
                    site = model.get_submodule(path)
                    for t in [*site.parameters(recurse=True), *site.buffers(recurse=True)]:
                        if t.ndim == 1 and t.shape[0] == element.n and t.is_floating_point():
                            assign(t, element.act(t, 0))
        yield model
    finally:
        with torch.no_grad():
            for t, original in reversed(saved):
                t.copy_(original)


def _output(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    with torch.no_grad():
        return first_tensor(model(x))


def audit_model(
    model: nn.Module,
    x: torch.Tensor,
    *,
    groups: Iterable[str | _groups.Group] | None = None,
    trials: int = 4,
    generator: torch.Generator | int | None = None,
    inputs: tuple[str, ...] = ("given", "gaussian", "outliers"),
    max_elements: int = 16384,
    max_samples: int = 1,
    input_dim: int | None = None,
    lie: bool = True,
) -> ModelAudit:
    """Audit every primitive site of a model on the input it received, and summarise G1, G2 and G3.

    The model runs in eval mode (its modes are restored afterwards). Sites are audited non-exhaustively (a group
    stops at its first failure) on their recorded input (sliced to at most ``max_elements`` entries along the
    batch and sequence axes) and on synthetic inputs of the same shape.

    Args:
        model: the model; it is not modified (G2 transforms a deep copy).
        x: the input of one forward pass, ``model(x)`` (a float tensor, or token ids for a language model).
        groups: candidate groups for every site (default: the lattice without block groups, plus the block sizes
            that isotorch primitives declare).
        trials: random elements per group and site (default 4).
        generator: ``torch.Generator`` or int seed (default seed 0).
        inputs: inputs per site (default ``("given", "gaussian", "outliers")``).
        max_elements: activations larger than this are sliced before auditing (default 16384).
        max_samples: G2 compares the model's outputs on the first ``max_samples`` samples of x (default 1).
        input_dim: the feature axis of ``x`` for G3 (default: 1 if the first weight layer is a convolution, else
            -1).
        lie: compute Lie derivatives at each site, on its recorded input (default True).

    Returns:
        A :class:`ModelAudit`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``x`` is not a tensor.
        RuntimeError: the forward pass itself raised (the message says so).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> mlp = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> report = audit_model(mlp, torch.randn(4, 6, generator=torch.Generator().manual_seed(0)))
        >>> sorted(report.sites[0].maximal)
        ['signed_permutation']
        >>> report.chains[0].verified
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    gen = as_generator(generator)
    sampler = Sampler(gen)
    seed = generator if isinstance(generator, int) else None

    # classify modules
    candidates: dict[str, nn.Module] = {}
    composite_rows: list[SiteRow] = []
    skip_under: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(p + ".") for p in skip_under):
            continue
        if _is_isotorch_primitive(module) and module is not model:
            candidates[path] = module
            skip_under.append(path)
        elif not any(True for _ in module.children()):
            if module is not model or not path:
                candidates[path] = module
        elif any(p is not None for p in module._parameters.values()):
            composite_rows.append(
                SiteRow(
                    path,
                    type(module).__name__,
                    "skipped",
                    note="composite with its own parameters (e.g. attention): its own computation is not a hooked "
                    "primitive",
                )
            )

    calls: list[_Call] = []
    by_module: dict[nn.Module, list[_Call]] = {}

    def pre_hook(path):
        def hook(module, args, kwargs):
            call = _Call(len(calls), path, module, args, kwargs)
            first_arg = args[0] if args else None
            call.inputs = first_arg
            if (
                isinstance(first_arg, torch.Tensor)
                and not _is_weight_layer(module)
                and not by_module.get(module)
                and first_arg.is_floating_point()
            ):
                call.clone = first_arg.detach().clone()
            calls.append(call)
            by_module.setdefault(module, []).append(call)

        return hook

    def post_hook(module, args, kwargs, output):
        for call in reversed(by_module.get(module, [])):
            if call.output is None:
                call.output = output
                break

    handles = []
    try:
        for path, module in candidates.items():
            handles.append(module.register_forward_pre_hook(pre_hook(path), with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
        with _mode(model, False), torch.no_grad():
            try:
                reference = first_tensor(model(x))
            except Exception as exc:
                raise RuntimeError(f"the forward pass model(x) raised {type(exc).__name__}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()

    with _mode(model, False):
        rows, results = _audit_sites(candidates, calls, by_module, groups, trials, sampler, inputs, max_elements, lie)
        chains, not_analysed = _chains(model, x, calls, results, reference, gen, max_samples)
        end_to_end, reason = _end_to_end(model, x, calls, input_dim, trials, sampler)

    never = [
        SiteRow(
            path, type(m).__name__, "skipped", note="never called in the forward pass (unused, or a fused fast path)"
        )
        for path, m in candidates.items()
        if m not in by_module
    ]
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
        rows=tuple(rows + composite_rows + never),
        chains=tuple(chains),
        end_to_end=end_to_end,
        end_to_end_reason=reason,
        not_analysed=tuple(not_analysed),
        settings=settings,
    )


def _site_groups(groups, module: nn.Module, n: int):
    if groups is not None:
        return groups
    blocks = []
    if _is_isotorch_primitive(module):
        try:
            for key in module.groups:
                g = _groups.get(key)
                if g.name == "block_orthogonal" and n % g.block == 0:
                    blocks.append(g.block)
        except Exception:
            pass
    return _groups.lattice(n, blocks=tuple(blocks))


def _audit_sites(candidates, calls, by_module, groups, trials, sampler, inputs, max_elements, lie):
    rows: list[SiteRow] = []
    results: dict[nn.Module, AuditResult] = {}
    last_weight = None
    seen = set()
    for call in calls:
        module = call.module
        if _is_weight_layer(module):
            last_weight = module
        if module in seen:
            continue
        seen.add(module)
        count = len(by_module[module])
        type_name = type(module).__name__
        if _is_weight_layer(module):
            rows.append(SiteRow(call.path, type_name, "absorbed", note=ABSORBED))
            continue
        if isinstance(module, _STRUCTURAL):
            rows.append(SiteRow(call.path, type_name, "structural", note="reshape or identity: no computation"))
            continue
        reason = None
        tensors = [a for a in call.args if isinstance(a, torch.Tensor)]
        tensors += [v for v in call.kwargs.values() if isinstance(v, torch.Tensor)]
        if call.clone is None:
            reason = "its input is not a floating-point tensor"
        elif len(call.args) != 1 or call.kwargs or len(tensors) != 1:
            reason = "called with more than one argument"
        elif not isinstance(call.output, torch.Tensor):
            reason = f"returns {type(call.output).__name__}, not a tensor"
        if reason is not None:
            rows.append(SiteRow(call.path, type_name, "skipped", note=reason))
            continue
        dim = _site_dim(call, call.clone, last_weight)
        x, shrink_note = _shrink(call.clone, dim, max_elements)
        n = x.shape[dim]
        try:
            result = audit_module(
                module,
                x,
                dim=dim,
                groups=_site_groups(groups, module, n),
                trials=trials,
                inputs=inputs,
                exhaustive=False,
                lie=lie,
                name=call.path,
                _sampler=sampler,
                _lie_inputs=1,
            )
        except (TypeError, ValueError) as exc:
            rows.append(SiteRow(call.path, type_name, "skipped", note=f"cannot be audited: {exc}"))
            continue
        results[module] = result
        notes = []
        if not result.ok:
            notes.append(f"{result.status}: {result.reason}")
        if _is_isotorch_primitive(module) and result.ok:
            notes.append(_declared_note(module, result))
        if count > 1:
            notes.append(f"called {count} times; the first call is audited")
        if shrink_note:
            notes.append(shrink_note)
        if result.disagreements:
            notes.append(f"{len(result.disagreements)} finite/Lie disagreement(s)")
        rows.append(
            SiteRow(call.path, type_name, "primitive", dim, n, result.maximal, result.errors, "; ".join(notes), result)
        )
    return rows, results


def _follow(calls: list[_Call], start: int, results) -> tuple[list[_Call], _Call | None, str | None]:
    """From weight layer ``calls[start]``, follow its output through primitive sites to the next weight layer."""
    current = calls[start].output
    between: list[_Call] = []
    index = start
    while True:
        consumers = [c for c in calls[index + 1 :] if c.inputs is current]
        if not consumers:
            return between, None, "its output does not flow directly into another hooked module"
        nxt = consumers[0]
        if len(consumers) > 1 and nxt.output is not current:  # an in-place or identity module passes it on
            return between, None, "its output feeds several modules (a branch)"

        if _is_weight_layer(nxt.module):
            return between, nxt, None
        result = results.get(nxt.module)
        if result is None or not result.ok or result.respects != "equivariance":
            return between, None, f"{nxt.path} ({type(nxt.module).__name__}) is not an audited shape-keeping primitive"
        between.append(nxt)
        current, index = nxt.output, nxt.index


def _reference(model: nn.Module, x: torch.Tensor, reference: torch.Tensor, max_samples: int):
    """The first ``max_samples`` samples of x and the model's output on them (x itself when slicing fails)."""
    if x.ndim == 0 or x.shape[0] <= max_samples:
        return x, reference
    try:
        small = x[:max_samples]
        out = _output(model, small)
        if out is not None:
            return small, out
    except Exception:  # a model that needs the full batch is verified on it
        pass
    return x, reference


def _change(private: nn.Module, chain, element: Element, x: torch.Tensor, reference: torch.Tensor) -> float:
    """The relative change of the output when ``element`` is applied to one chain of the private copy."""
    first, last, paths = chain
    with _applied(private, first, last, paths, element) as transformed:
        out = _output(transformed, x)
    return relative_error(out, reference) if out is not None else math.nan


def _chains(model, x, calls, results, reference, gen, max_samples):
    chains: list[ChainAudit] = []
    not_analysed: list[str] = []
    if reference is None:
        return chains, ["G2: the model output contains no tensor"]
    tol = default_tolerance(reference.dtype) if reference.is_floating_point() else 1e-3
    private = None  # one deep copy of the model, transformed in place per element and restored after
    for i, call in enumerate(calls):
        if not _is_weight_layer(call.module) or not isinstance(call.output, torch.Tensor):
            continue
        between, end, why = _follow(calls, i, results)
        if end is None:
            not_analysed.append(f"{call.path}: {why}")
            continue
        first_axes, last_axes = _layer_axes(call.module), _layer_axes(end.module)
        if first_axes is None or last_axes is None:
            bad = call if first_axes is None else end
            not_analysed.append(f"{call.path} → {end.path}: {type(bad.module).__name__} layers are not supported by G2")
            continue
        n = call.module.weight.shape[first_axes[0]]
        if end.module.weight.shape[last_axes[1]] != n:
            not_analysed.append(f"{call.path} → {end.path}: the widths do not match")
            continue
        held = [results[c.module].equivariant for c in between]
        lattice = _groups.lattice(n, blocks=())
        intersection = frozenset.intersection(*held) if held else frozenset(g.key for g in lattice)
        maximal = maximal_groups(intersection, n)
        paths = tuple(c.path for c in between)
        if private is None:
            private = copy.deepcopy(model)
            x, reference = _reference(private, x, reference, max_samples)

        chain = (call.path, end.path, paths)
        changes = {
            key: _change(private, chain, sample(_groups.get(key), n, gen), x, reference) for key in sort_groups(maximal)
        }
        control = None
        candidates = [
            c.key for key in sort_groups(maximal) for c in _groups.covers(key, n) if c.key not in intersection
        ]
        if candidates:
            control = (candidates[0], _change(private, chain, sample(_groups.get(candidates[0]), n, gen), x, reference))
        held_ok = all(v <= tol for v in changes.values())
        control_ok = control is None or control[1] > tol
        note = ""
        if not held_ok:
            note = "the output changed: the hidden activation may also be used outside the chain (e.g. a residual)"
        elif not control_ok:
            note = f"the control {control[0]} did not change the output: the chain is more symmetric than measured"
        elif control is None:
            note = "no larger group in the lattice to use as a control"
        chains.append(
            ChainAudit(call.path, end.path, paths, n, maximal, changes, control, tol, held_ok and control_ok, note)
        )
    return chains, not_analysed


def _end_to_end(model, x, calls, input_dim, trials, sampler):
    if not x.is_floating_point():
        return None, "the input is not floating point (e.g. token ids): no group acts on it"
    if input_dim is None:
        weights = [c.module for c in calls if _is_weight_layer(c.module)]
        input_dim = 1 if weights and isinstance(weights[0], nn.modules.conv._ConvNd) and x.ndim >= 3 else -1
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
