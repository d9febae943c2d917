"""Fold normaliser gains and biases into the layers that read them, so a residual stream's group becomes O(d).

"Computational invariance" (SliceGPT, Ashkboos et al. 2024; QuaRot 2024; REFERENCE §8.2). A norm with a per-channel
gain γ and bias β commutes only with permutations, so the residual stream of a LayerNorm or RMSNorm transformer has
the group S_d. :func:`fold_norms` rewrites the model without changing its function:

1. every norm's gain and bias go into the readers of its output (q/k/v, MLP up/gate, the LM head, a classifier):
   W_in ← W_in·diag(γ), b_in ← b_in + W_in·β (original W_in); the norm becomes gain-free;
2. LayerNorm streams are made mean-free: every writer (embeddings, attention and MLP output projections, their
   biases, class tokens) is centred over the d channels, W_out ← (I − 𝟙𝟙ᵀ/d)·W_out; then LayerNorm(h) = RMSNorm(h)
   on the stream and each LayerNorm is replaced by a gain-free ``nn.RMSNorm`` with the same ε;
3. a reader whose weight is tied to another parameter (GPT-2's ``lm_head.weight is wte.weight``) is untied before
   a gain γ ≠ 1 is folded into it, and the report says so (with γ = 1 the tie survives: a centred tied head reads
   a mean-free normalised vector, so centring the embedding does not change its logits).

Everything it needs comes from the site graph of :func:`~isotorch.params.symmetries` (residual sites, their
``norms`` with readers, writer and reader ``actions``, ``tied`` weights; REFERENCE §8.1). The result is verified
on the example input (the function must not change). Afterwards ``symmetries`` reports the stream with group
``orthogonal`` and :func:`~isotorch.params.transform` with any orthogonal matrix there (e.g. :func:`hadamard`)
keeps the outputs to round-off.

Not foldable, with an error naming the module: a norm the site graph does not know (a primitive on the stream that
is neither a recognised norm nor dropout nor O(d)-equivariant), a functional norm (no module to replace), a
post-LN norm (its output is the stream itself, read by the skip connection: BERT, ``norm_first=False``), a norm
whose readers the graph does not list, and a frozen stream.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, replace
from typing import Any, Literal, overload

import torch
from torch import nn

from isotorch._util import json_safe
from isotorch.params._errors import SymmetryError
from isotorch.params._sites import Action, Site

__all__ = ["FoldReport", "fold_norms"]

_PASS_LABELS = frozenset({"Dropout", "Identity", "dropout"})
_PASS_THROUGH = frozenset(
    {"getitem", "__getitem__", "view", "reshape", "contiguous", "to", "type_as", "float", "double", "clone", "dropout"}
)
_ADDS = frozenset({"add", "__add__", "__radd__", "add_", "__iadd__", "iadd"})


@dataclass(frozen=True)
class FoldReport:
    """What :func:`fold_norms` did.

    Attributes:
        streams: the residual sites whose norms were folded.
        norms: the norms made gain-free, as (module path, old class, new class).
        mean_free: the streams made mean-free by centring their writers (LayerNorm streams).
        untied: (parameter that now has its own copy, the parameter it was tied to).
        new_biases: reader biases created to hold a folded norm bias.
        groups: the stream's group after folding (``orthogonal``, or ``mean_orthogonal`` where a LayerNorm stream
            could not be made mean-free), per stream.
        notes: why a stream keeps a smaller group, and other remarks.
        error: the relative output error of the folded model on the example input (round-off).
    """

    streams: tuple[str, ...]
    norms: tuple[tuple[str, str, str], ...]
    mean_free: tuple[str, ...]
    untied: tuple[tuple[str, str], ...]
    new_biases: tuple[str, ...]
    groups: dict[str, str]
    notes: tuple[str, ...]
    error: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return json_safe(
            {
                "streams": list(self.streams),
                "norms": [list(n) for n in self.norms],
                "mean_free": list(self.mean_free),
                "untied": [list(p) for p in self.untied],
                "new_biases": list(self.new_biases),
                "groups": dict(self.groups),
                "notes": list(self.notes),
                "error": self.error,
            }
        )


class _FoldedEncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` after :func:`fold_norms`: its norms are gain-free ``nn.RMSNorm`` modules, so the
    fused inference kernel (which reads ``norm.weight``/``norm.bias`` as a LayerNorm's) is skipped and the layer runs
    its own unfused path, which calls the norm modules."""

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        import torch.nn.functional as F

        src_key_padding_mask = F._canonical_mask(
            mask=src_key_padding_mask,
            mask_name="src_key_padding_mask",
            other_type=F._none_or_dtype(src_mask),
            other_name="src_mask",
            target_type=src.dtype,
        )
        src_mask = F._canonical_mask(
            mask=src_mask,
            mask_name="src_mask",
            other_type=None,
            other_name="",
            target_type=src.dtype,
            check_other=False,
        )
        x = src
        x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
        return x + self._ff_block(self.norm2(x))


def _default_input(model: nn.Module):
    """A small example input for a Hugging Face model (token ids or pixels), or None."""
    config = getattr(model, "config", None)
    name = getattr(model, "main_input_name", None)
    if config is None:
        return None
    if name == "input_ids" and getattr(config, "vocab_size", None):
        t = min(8, getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 8)
        return (torch.arange(2 * t).reshape(2, t) * 7 + 3) % config.vocab_size
    if name == "pixel_values" and getattr(config, "image_size", None):
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        dtype = next(model.parameters()).dtype
        gen = torch.Generator().manual_seed(0)
        return torch.randn(2, config.num_channels, size, size, generator=gen, dtype=dtype)
    return None


def _op_name(node) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    if target in (operator.add, operator.iadd, torch.add):
        return "add"
    return getattr(target, "__name__", str(target))


def _users(graph) -> dict[int, list]:
    """id(node) → the nodes that take it as an argument."""
    users: dict[int, list] = {}
    for node in graph.nodes:
        for arg in _flat(node.args) + _flat(list(node.kwargs.values())):
            users.setdefault(id(arg), []).append(node)
    return users


def _is_post_norm(graph, norm_name: str, users: dict[int, list] | None = None) -> bool:
    """Whether the norm's output reaches an addition through pass-through ops (its output is the stream)."""
    starts = [n for n in graph.nodes if n.op == "module" and (n.qualname == norm_name or n.name == norm_name)]
    starts += [n for n in graph.nodes if n.op == "call_module" and n.target == norm_name]
    users = _users(graph) if users is None else users
    seen, todo = set(), list(starts)
    while todo:
        node = todo.pop()
        for user in users.get(id(node), []):
            if id(user) in seen:
                continue
            seen.add(id(user))
            name = _op_name(user)
            if name in _ADDS:
                return True
            module = user.target if isinstance(user.target, nn.Module) else None
            if name in _PASS_THROUGH or (module is not None and type(module).__name__ in _PASS_LABELS):
                todo.append(user)
    return False


def _flat(obj) -> list:
    if isinstance(obj, (tuple, list)):
        return [x for o in obj for x in _flat(o)]
    if isinstance(obj, dict):
        return [x for o in obj.values() for x in _flat(o)]
    return [obj]


def _module(model: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise SymmetryError(
            f"{what} {path!r} is not a module of the model (a functional call cannot be folded)"
        ) from None


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _tensor_names(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def _reader_actions(model: nn.Module, site: Site, reader: str) -> list[tuple[str, Action]]:
    """(attribute on the reader module, action) for each weight of ``reader`` that reads the stream."""
    module = _module(model, reader, f"reader of a norm on stream {site.name!r}:")
    params = dict(model.named_parameters(remove_duplicate=False))
    by_tensor = {id(params[a.param]): a for a in site.actions if a.param in params}
    out = []
    for attr, p in module.named_parameters(recurse=False):
        full = f"{reader}.{attr}" if reader else attr
        direct = [a for a in site.actions if a.param == full and a.kind == "in"]
        if direct:
            out += [(attr, a) for a in direct]
        elif id(p) in by_tensor and by_tensor[id(p)].param != full and p.ndim == 2:
            # a tied weight: the site acts once, on its canonical name; the stream axis is the same axis
            out.append((attr, replace(by_tensor[id(p)], param=full, kind="in")))
    if not out:
        raise SymmetryError(
            f"reader {reader!r} of a norm on stream {site.name!r}: the site graph gives no weight of it"
        )
    return out


def _axis_vector(v: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _narrow(t: torch.Tensor, a: Action) -> torch.Tensor:
    if a.slice_axis is None:
        return t
    stop = t.shape[a.slice_axis] if a.stop is None else a.stop
    return t.narrow(a.slice_axis, a.start, stop - a.start)


def _where(graph, name: str | None, path: str | None, model: nn.Module) -> str:
    """``module 'a.b' (Class)`` for a module path, else the traced call with the module it was called in."""
    if path:
        return f"module {path!r} ({type(model.get_submodule(path)).__name__})"
    node = next((n for n in graph.nodes if n.name == name), None)
    scope = getattr(node, "scope", None)
    if scope:
        return f"module {scope!r} ({type(model.get_submodule(scope)).__name__}, call {name!r})"
    return f"call {name!r} in the top-level forward"


def _check_post_norm(site: Site, graph, model: nn.Module) -> None:
    modules = dict(model.named_modules())
    users = _users(graph) if site.norms else {}
    for norm in site.norms:
        if norm.name in modules and _is_post_norm(graph, norm.name, users):
            raise SymmetryError(
                f"norm {norm.name!r} ({type(model.get_submodule(norm.name)).__name__}) is post-LN: its output is the "
                "residual stream itself (read by the skip connection), so its gain cannot be folded into readers "
                "(BERT, TransformerEncoderLayer(norm_first=False)); nothing was folded"
            )


def _check_unknown(site: Site, uses, graph, model: nn.Module) -> None:
    known = {n.name for n in site.norms}
    for use in uses:
        if use.site != site.name or use.label in _PASS_LABELS or (use.path or use.node) in known:
            continue
        if use.groups is None or "orthogonal" in use.groups:
            continue  # linear, or already O(d)-equivariant: nothing to fold
        groups = ", ".join(use.groups) or "trivial"
        raise SymmetryError(
            f"fold_norms does not know the norm {use.label} at {_where(graph, use.node, use.path, model)}: it acts "
            f"on the residual stream {site.name!r} with group {groups}, and only LayerNorm/RMSNorm gains can be "
            "folded away; nothing was folded"
        )


def _check_stream(site: Site, graph, model: nn.Module) -> None:
    for norm in site.norms:
        if norm.name not in dict(model.named_modules()):
            raise SymmetryError(
                f"norm {norm.op} at {_where(graph, norm.name, None, model)} is a functional call on stream "
                f"{site.name!r}: there is no module to replace by a gain-free one (use a module); nothing was folded"
            )
    for norm in site.norms:
        if norm.kind not in ("layer", "rms"):
            raise SymmetryError(f"fold_norms does not know the norm {norm.op} at module {norm.name!r}")
    if not site.free:
        raise SymmetryError(f"stream {site.name!r} is {site.status}: {site.reason}; its norms cannot be folded")
    for norm in site.norms:
        if (norm.weight or norm.bias) and not norm.readers:
            raise SymmetryError(
                f"norm {norm.name!r}: the site graph lists no layer reading its output, so its gain/bias has "
                "nowhere to go; nothing was folded"
            )


def _output_error(model: nn.Module, graph, new: nn.Module, inputs: tuple) -> tuple[float, torch.dtype]:
    """The relative output error of ``new`` against the output the trace recorded (one forward pass saved)."""
    from isotorch.params._trace import evaluation
    from isotorch.params._transform import _leaves, _rescaled, function_error

    last = graph.nodes[-1] if graph.nodes else None
    if last is None or last.op != "output" or not _leaves(last.value):
        return function_error(model, new, inputs)
    from isotorch import testing as _testing

    with evaluation(new):
        out_b = _leaves(new(*inputs))
    out_a = _leaves(last.value)
    if len(out_a) != len(out_b):
        raise SymmetryError("the folded model returns a different output structure")
    errors = [
        _testing.relative_error(*_rescaled(a, b)) if a.is_floating_point() else float(not torch.equal(a, b))
        for a, b in zip(out_a, out_b, strict=True)
    ]
    worst = float("nan") if any(e != e for e in errors) else max(errors)
    return worst, out_a[0].dtype


@overload
def fold_norms(
    model: nn.Module,
    x: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    *,
    return_report: Literal[False] = False,
    tol: float | None = None,
) -> nn.Module: ...


@overload
def fold_norms(
    model: nn.Module,
    x: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    *,
    return_report: Literal[True],
    tol: float | None = None,
) -> tuple[nn.Module, FoldReport]: ...


@overload
def fold_norms(
    model: nn.Module,
    x: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    *,
    return_report: bool = False,
    tol: float | None = None,
) -> nn.Module | tuple[nn.Module, FoldReport]: ...


def fold_norms(
    model: nn.Module,
    x: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    *,
    return_report: bool = False,
    tol: float | None = None,
) -> nn.Module | tuple[nn.Module, FoldReport]:
    """Return a copy of ``model`` with every residual-stream norm gain-free and the same function.

    See the module docstring for the rewrite (REFERENCE §8.2). The model must be pre-norm (GPT-2, Llama, ViT,
    ``nn.TransformerEncoderLayer(norm_first=True)``, hand-written blocks); nothing in ``model`` is modified.

    Args:
        model: the network.
        x: an example input for the site graph and the check. Default: ``None``, which builds token ids or pixels
            for a Hugging Face model from its config (any other model needs ``x``).
        return_report: also return a :class:`FoldReport`. Default: ``False``.
        tol: relative output tolerance of the check. Default: :func:`isotorch.testing.tolerance` of the output
            dtype (float32's where a norm class computes in float32 internally, e.g. ``LlamaRMSNorm``).

    Raises:
        SymmetryError: a norm it cannot fold (named), a frozen stream, or a function that changed.
        ValueError: no example input, or no residual stream (a stream without norms is returned as a copy, with
            a note in the report).

    Examples:
        >>> import torch
        >>> from isotorch.params import fold_norms, symmetries, transform, Element, hadamard
        >>> from isotorch.studies._lm import gpt2
        >>> model = gpt2(16, n_layer=1, n_embd=8, n_head=2, n_positions=8, dtype=torch.float64)
        >>> with torch.no_grad():
        ...     _ = model.transformer.ln_f.weight.mul_(2.0)  # a gain to fold into the tied head
        >>> folded, report = fold_norms(model, return_report=True)
        >>> report.untied, report.mean_free, report.groups
        ((('lm_head.weight', 'transformer.wte.weight'),), ('transformer.wte',), {'transformer.wte': 'orthogonal'})
        >>> x = torch.randint(0, 16, (2, 5))
        >>> stream = symmetries(folded, x)["transformer.wte"]
        >>> stream.group
        'orthogonal'
        >>> rotated = transform(folded, Element(symmetries(folded, x), {stream.name: hadamard(8)}))
        >>> bool(torch.allclose(rotated(x).logits, model(x).logits, atol=1e-10))
        True
    """
    from isotorch import testing as _testing
    from isotorch.params._sites import analyse

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if x is None:
        x = _default_input(model)
        if x is None:
            raise ValueError(f"x: fold_norms needs an example input for a {type(model).__name__} (pass x=...)")
    syms, graph, uses, _ = analyse(model, x)
    residual = [s for s in syms if s.kind == "residual"]
    for site in residual:
        _check_post_norm(site, graph, model)
    for site in residual:
        _check_unknown(site, uses, graph, model)
    streams = [s for s in syms if s.kind == "residual" and s.norms]
    if not streams:
        residual = [s for s in syms if s.kind == "residual"]
        if not residual:
            kinds = sorted({s.kind for s in syms}) or ["none"]
            raise ValueError(
                f"model has no residual stream (site kinds found: {', '.join(kinds)}; graph method {syms.method!r}), "
                "so there are no stream norms to fold"
            )
        unfolded = tuple(f"stream {s.name!r} has no norm with a gain to fold" for s in residual)
        report = FoldReport((), (), (), (), (), {s.name: s.group for s in residual}, unfolded, 0.0)
        new = copy.deepcopy(model)
        return (new, report) if return_report else new
    for site in streams:
        _check_stream(site, graph, model)

    new = copy.deepcopy(model)
    names = _tensor_names(model)
    untied, new_biases, replaced, mean_free, notes, groups = [], [], [], [], [], {}
    fresh_copies: dict[int, nn.Parameter] = {}  # untied reader weights, by the id of the shared original
    torch_classes = (nn.LayerNorm, nn.RMSNorm)
    loose = False
    with torch.no_grad():
        for site in streams:
            # 1. gains and biases into the readers (from the original weights), untying shared reader weights
            for norm in site.norms:
                module = model.get_submodule(norm.name)
                loose |= not isinstance(module, torch_classes)
                params = dict(model.named_parameters())
                d = site.size
                gain = torch.full((d,), norm.offset, dtype=torch.float64)
                gain = gain + params[norm.weight].double() if norm.weight else torch.ones(d, dtype=torch.float64)
                bias = params[norm.bias].double() if norm.bias else None
                for reader in norm.readers:
                    r_old, r_new = model.get_submodule(reader), new.get_submodule(reader)
                    for attr, a in _reader_actions(model, site, reader):
                        w_old = getattr(r_old, attr)
                        scales = bool((gain != 1).any())  # a unit gain leaves the weight alone: no need to untie
                        if (
                            scales
                            and len(names.get(id(w_old), [])) > 1
                            and getattr(r_new, attr) is not fresh_copies.get(id(w_old))
                        ):
                            others = [n for n in names[id(w_old)] if n != a.param]
                            fresh_copies[id(w_old)] = nn.Parameter(getattr(r_new, attr).detach().clone())
                            setattr(r_new, attr, fresh_copies[id(w_old)])
                            untied.append((a.param, others[0]))
                        w = getattr(r_new, attr)
                        view = _narrow(w, a)
                        if w.ndim != 2:
                            raise SymmetryError(
                                f"reader {reader!r}: cannot fold a norm into a {w.ndim}-d weight {attr}"
                            )
                        g = gain.repeat_interleave(a.inner)
                        if bias is not None and bool((bias != 0).any()):
                            b_attr = attr.replace("weight", "bias")
                            out_axis = 1 - a.axis
                            delta = torch.tensordot(
                                view.double(), bias.repeat_interleave(a.inner), dims=([a.axis], [0])
                            )
                            b = getattr(r_new, b_attr, None)
                            if b is None:
                                b = nn.Parameter(torch.zeros(w.shape[out_axis], dtype=w.dtype, device=w.device))
                                setattr(r_new, b_attr, b)
                                new_biases.append(f"{reader}.{b_attr}")
                            start = a.start if a.slice_axis == out_axis else 0
                            b[start : start + delta.numel()] += delta.to(b.dtype)
                        view.mul_(_axis_vector(g, 2, a.axis).to(w.dtype))
            # 2. mean-free LayerNorm streams
            layer = [n for n in site.norms if n.kind == "layer"]
            read = {r for n in site.norms for r in n.readers}
            raw = [c for c in site.consumers if c not in read]
            centre = bool(layer) and len(layer) == len(site.norms) and not raw
            if layer and not centre:
                why = f"consumers {raw} read the stream without a norm" if raw else "it mixes LayerNorm and RMSNorm"
                notes.append(f"stream {site.name!r} kept its mean ({why}): its group is mean_orthogonal")
            if centre:
                current: dict[str, torch.Tensor] = dict(new.named_parameters(remove_duplicate=False))
                current.update(dict(new.named_buffers()))
                for a in site.actions:
                    if a.kind != "out":
                        continue
                    t = _narrow(current[a.param], a)
                    moved = t.movedim(a.axis, -1)
                    blocks = moved.reshape(*moved.shape[:-1], -1, a.inner)
                    blocks -= blocks.mean(dim=-2, keepdim=True)
                    t.copy_(blocks.reshape(moved.shape).movedim(-1, a.axis))
                mean_free.append(site.name)
            # 3. gain-free norms
            for norm in site.norms:
                old = new.get_submodule(norm.name)
                ref = next(iter(old.parameters()), None)
                ref_dtype = ref.dtype if ref is not None else None
                ref_device = ref.device if ref is not None else None
                fresh: nn.Module
                if norm.kind == "rms" or centre:
                    fresh = nn.RMSNorm(
                        site.size, eps=norm.eps, elementwise_affine=False, dtype=ref_dtype, device=ref_device
                    )
                else:
                    fresh = nn.LayerNorm(
                        site.size, eps=norm.eps or 1e-5, elementwise_affine=False, dtype=ref_dtype, device=ref_device
                    )
                _set_module(new, norm.name, fresh)
                replaced.append((norm.name, type(old).__name__, type(fresh).__name__))
            groups[site.name] = "mean_orthogonal" if layer and not centre else "orthogonal"
    for path, module in new.named_modules():
        if type(module) is nn.TransformerEncoderLayer and not isinstance(module.norm1, nn.LayerNorm):
            module.__class__ = _FoldedEncoderLayer  # norm_first (post-LN was refused above)
            notes.append(f"{path}: nn.TransformerEncoderLayer runs its unfused path (its fused kernel needs LayerNorm)")
    config = getattr(new, "config", None)
    if untied and config is not None and getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False
    err, dtype = _output_error(model, graph, new, syms.x)
    limit = tol if tol is not None else _testing.tolerance(torch.float32 if loose else dtype)
    if not err <= limit:
        raise SymmetryError(
            f"folding the norms of {', '.join(s.name for s in streams)} changed the model's function on the example "
            f"input: relative error {err:.3e} > tolerance {limit:.1e}"
        )
    report = FoldReport(
        streams=tuple(s.name for s in streams),
        norms=tuple(replaced),
        mean_free=tuple(mean_free),
        untied=tuple(dict.fromkeys(untied)),
        new_biases=tuple(new_biases),
        groups=groups,
        notes=tuple(notes),
        error=err,
    )
    return (new, report) if return_report else new
