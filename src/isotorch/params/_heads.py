"""Attention written as code: heads split by view/reshape/transpose, q·kᵀ, softmax, ·v, merge (REFERENCE §8.1).

The site analysis (``_sites.py``) follows the features of the query, key and value projections into heads and
back. When a projection's output is reshaped from (…, H·d_h) to (…, H, d_h), its value becomes :class:`Heads`; the
product q·kᵀ over d_h becomes :class:`Scores` (softmax, scaling, masks and dropout keep it); the product of scores
with v makes a new feature space, the attention output, read by the output projection. From one such record the
analysis builds the attention sites: the head permutation (with grouped-query attention: the K/V groups carrying
their query heads, and the query heads inside each group), per K/V head the query–key map (GL(d_h), or under RoPE
one scaled rotation per frequency plane) and the value–output map (GL(d_h)). RoPE is recognised in the form HF uses,
q·cos + rotate_half(q)·sin with rotate_half(x) = cat(−x₂, x₁). Anything else that touches the heads freezes the
attention sites with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

_SOFTMAX_FUNCTIONS = {F.softmax, torch.softmax}
_DROPOUT_FUNCTIONS = {F.dropout, torch.dropout}
_PASS = {"contiguous", "clone", "detach", "to", "float", "double", "half", "bfloat16", "type", "type_as"}
_TRANSPOSE_METHODS = {"transpose", "permute", "swapaxes", "movedim", "mT"}


@dataclass(frozen=True, eq=False)
class Heads:
    """A tensor carrying a space's features split into heads: ``head_axis`` indexes heads (position i holds head
    ``heads[i]`` of the space, so a repeated K/V head appears several times), ``dim_axis`` the d_h features of a
    head. ``rep_axis`` is an inserted axis of repeats next to the head axis (``repeat_kv``)."""

    space: Any
    head_axis: int
    dim_axis: int
    ndim: int
    heads: tuple[int, ...]
    dh: int
    rope: str | None = None
    rep_axis: int | None = None


@dataclass(frozen=True, eq=False)
class Half:
    """One half of the head features (``x[..., :d_h/2]`` or ``x[..., d_h/2:]``), possibly negated: rotate_half."""

    parent: Heads
    part: int
    sign: int


@dataclass(frozen=True, eq=False)
class Rot:
    """rotate_half(x) = cat(∓x₂, ±x₁) of ``parent`` along its head features."""

    parent: Heads


@dataclass(frozen=True, eq=False)
class RopeTerm:
    """``parent`` (or its rotate_half) times a constant tensor: one of the two terms of RoPE."""

    parent: Heads
    const: torch.Tensor = field(repr=False)
    rotated: bool


@dataclass(frozen=True, eq=False)
class Scores:
    """q·kᵀ per head (and anything softmax/scale/mask/dropout made of it); the last axis indexes keys."""

    q: Heads
    k: Heads
    kmap: tuple[int, ...]
    head_axis: int
    ndim: int
    per_head: bool = False


@dataclass(eq=False)
class AttentionRecord:
    """One attention computation found in the graph (see the module docstring)."""

    q: Heads
    k: Heads
    v: Heads
    out: Any  # the _Space of the attention output
    kmap: tuple[int, ...]  # output head i reads key head kmap[i]
    vmap: tuple[int, ...]  # output head i reads value head vmap[i]
    per_head: bool
    node: str
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class Parts:
    """The result of splitting a feature axis (``split``/``chunk``): one feature value per part."""

    parts: tuple


HEADED = (Heads, Half, Rot, RopeTerm, Scores)


def _axis(d: Any, ndim: int) -> int:
    return int(d) % ndim


def _moved(order: list[int], axis: int | None) -> int | None:
    return None if axis is None else order.index(axis)


def transposed(x: Heads, order: list[int]) -> Heads:
    """``x`` with its axes reordered by ``order`` (new axis i is old axis order[i])."""
    return Heads(
        x.space,
        order.index(x.head_axis),
        order.index(x.dim_axis),
        x.ndim,
        x.heads,
        x.dh,
        x.rope,
        _moved(order, x.rep_axis),
    )


def transpose_order(label: str, target: Any, dims: list, nd: int) -> list[int] | None:
    """The axis order of a transpose/permute/movedim call, or ``None`` if it cannot be read."""
    try:
        if label == "permute" or target is torch.permute:
            order = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else list(dims)
            return [_axis(d, nd) for d in order]
        if label == "movedim":
            src, dst = _axis(dims[0], nd), _axis(dims[1], nd)
            order = list(range(nd))
            order.insert(dst, order.pop(src))
            return order
        if label == "mT":
            d0, d1 = nd - 2, nd - 1
        else:
            d0, d1 = _axis(dims[0], nd), _axis(dims[1], nd)
        order = list(range(nd))
        order[d0], order[d1] = order[d1], order[d0]
        return order
    except (ValueError, TypeError, IndexError):
        return None


def reshape_heads(x: Heads, before: tuple, after: tuple) -> Any:
    """Follow a reshape of a :class:`Heads` value: merge the repeat axis into the head axis (``repeat_kv``), or merge
    heads and head features back into one feature axis. Returns a :class:`Heads`, ``("merged", axis)`` or ``None``."""
    h, d, r = x.head_axis, x.dim_axis, x.rep_axis
    if before == after:
        return x
    if r is not None and r == h + 1 and after == (*before[:h], before[h] * before[r], *before[r + 1 :]):
        rep = before[r]
        heads = tuple(i for i in x.heads for _ in range(rep))
        return Heads(x.space, h, d - 1 if d > r else d, len(after), heads, x.dh, x.rope, None)
    if r is None and d == h + 1 and after == (*before[:h], before[h] * before[d], *before[d + 1 :]):
        return ("merged", h)
    return None


def index_heads(x: Heads, index: tuple, out_ndim: int) -> Any:
    """Follow ``x[index]``: ``None`` inserts an axis (a repeat axis when right after the heads), full slices keep
    axes, a half of the head features gives a :class:`Half`. Returns ``None`` for anything else."""
    if any(isinstance(i, (torch.Tensor, list)) for i in index) or index.count(Ellipsis) > 1:
        return None
    if Ellipsis in index:
        k = index.index(Ellipsis)
        used = sum(1 for i in index if i is not None and i is not Ellipsis)
        index = index[:k] + (slice(None),) * (x.ndim - used) + index[k + 1 :]
    index = index + (slice(None),) * (x.ndim - sum(1 for i in index if i is not None))
    new_pos: dict[int, int] = {}
    inserted: list[int] = []
    pos, out = 0, 0
    half = None
    for i in index:
        if i is None:
            inserted.append(out)
            out += 1
            continue
        if isinstance(i, int):
            return None  # an integer index drops an axis; not used by attention code
        if i != slice(None) and pos not in (x.dim_axis, x.head_axis, x.rep_axis) and isinstance(i, slice):
            pass  # a slice of tokens or batch (a sliding-window cache) keeps heads and head features
        elif i != slice(None):
            if pos != x.dim_axis or not isinstance(i, slice) or i.step not in (None, 1):
                return None
            h = x.dh // 2
            start, stop = i.start or 0, x.dh if i.stop is None else i.stop
            start, stop = start % x.dh if start < 0 else start, stop % x.dh if stop < 0 else stop
            if x.dh % 2 or (start, stop) not in ((0, h), (h, x.dh)):
                return None
            half = 0 if start == 0 else 1
        new_pos[pos] = out
        pos += 1
        out += 1
    if half is not None:
        if inserted or x.rep_axis is not None:
            return None
        return Half(x, half, 1)
    rep = x.rep_axis
    if rep is None and len(inserted) == 1 and inserted[0] == new_pos[x.head_axis] + 1:
        rep = inserted[0]
    elif inserted:
        return None
    else:
        rep = None if rep is None else new_pos[rep]
    return Heads(x.space, new_pos[x.head_axis], new_pos[x.dim_axis], out_ndim, x.heads, x.dh, x.rope, rep)


def rope_consistent(cos: torch.Tensor, sin: torch.Tensor, x: Heads, shape: tuple) -> bool:
    """Whether q·cos + rotate_half(q)·sin is a scaled rotation in every plane (i, i + d_h/2): the constants must
    repeat across the two halves of the head features."""
    try:
        c = torch.broadcast_to(cos, shape).movedim(x.dim_axis, -1)
        s = torch.broadcast_to(sin, shape).movedim(x.dim_axis, -1)
    except RuntimeError:
        return False
    h = x.dh // 2
    return bool(torch.equal(c[..., :h], c[..., h:]) and torch.equal(s[..., :h], s[..., h:]))


def varies_over_heads(t: torch.Tensor | None, head_axis: int, ndim: int) -> bool:
    """Whether a tensor added to scores (a mask or a position bias) differs between heads (``None``: no tensor)."""
    if not isinstance(t, torch.Tensor) or t.ndim < ndim - head_axis:
        return False
    ax = head_axis - (ndim - t.ndim)
    if ax < 0 or t.shape[ax] == 1:
        return False
    first = t.narrow(ax, 0, 1)
    return not bool(torch.equal(t, first.expand_as(t)))


def head_prefix(paths: list[str]) -> str:
    """The common module-path prefix of the projections of one attention (e.g. ``transformer.h.0.attn``)."""
    parts = [p.split(".") for p in paths if p]
    if not parts:
        return "attention"
    common = []
    for items in zip(*parts, strict=False):
        if all(i == items[0] for i in items):
            common.append(items[0])
        else:
            break
    if len(parts) == 1 or common == parts[0]:
        common = parts[0][:-1] if len(parts[0]) > 1 else parts[0]
    return ".".join(common) or "attention"
