"""Canonical forms: one representative per symmetry orbit (REFERENCE §5.8).

Sites are visited in graph order, so that each site's producers already sit in canonical coordinates on their
input axis. At each free site, by its group:

* positive scaling (ReLU): unit fan-in, ‖(w_i, b_i)‖ = 1 (exact in one pass), or the balanced point
  ‖(w_i, b_i)‖ = ‖u_i‖ (iterated over all sites until it stops changing), which minimises the L2 norm;
* sign flips (odd activations): b_i ≥ 0, or the largest-magnitude entry of the row positive when b_i = 0;
* permutations: units sorted by the norm of their producer rows, largest first (ties: lexicographic);
* orthogonal (isotropic) sites: the eigenbasis of S = Σ M·Mᵀ over the site's producer and consumer slices,
  ordered by eigenvalue, each direction's sign fixed by its producer row (the SVD canonical form: the producer
  rows become orthogonal, sorted by singular value). S is unchanged by the other sites' orthogonal actions.

Sites with mean-orthogonal, block-orthogonal or general-linear groups are left as they are.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from isotorch.params import canonicalise, symmetries, sample_element, transform
    >>> model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> other = transform(model, sample_element(symmetries(model, x), torch.Generator().manual_seed(0)))
    >>> torch.allclose(canonicalise(model, x)[0].weight, canonicalise(other, x)[0].weight)
    True
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from isotorch._util import check_choice
from isotorch.params._element import Element
from isotorch.params._sites import Site, Symmetries, symmetries
from isotorch.params._transform import apply_element, check_model, transform

__all__ = ["canonical_element", "canonicalise"]

SCALINGS = ("fan_in", "balanced")


def _rows(tensors, site: Site, kinds=("out",)) -> torch.Tensor:
    """The site's slices of the given action kinds with the features first: an (n, m) float64 matrix."""
    parts = []
    for a in site.actions:
        if a.kind not in kinds:
            continue
        t = tensors[a.param]
        sa = a.axis if a.slice_axis is None else a.slice_axis
        stop = t.shape[sa] if a.stop is None else a.stop
        seg = t.narrow(sa, a.start, stop - a.start).movedim(a.axis, 0)
        parts.append(seg.reshape(site.size, -1).to(torch.float64))
    if not parts:
        return torch.zeros(site.size, 0, dtype=torch.float64)
    return torch.cat(parts, dim=1)


def _signs_of_rows(rows: torch.Tensor, biases: torch.Tensor | None) -> torch.Tensor:
    idx = rows.abs().argmax(dim=1)
    s = torch.sign(rows[torch.arange(rows.shape[0]), idx])
    if biases is not None:
        sb = torch.sign(biases)
        s = torch.where(biases.abs() > 1e-12 * (1 + biases.abs().max()), sb, s)
    return torch.where(s == 0, torch.ones_like(s), s)


def _bias(tensors, site: Site) -> torch.Tensor | None:
    for a in site.actions:
        if a.kind == "out" and a.param.endswith("bias") and a.inner == 1 and tensors[a.param].ndim == 1:
            return tensors[a.param].to(torch.float64)
    return None


def _order(rows: torch.Tensor) -> torch.Tensor:
    norms = rows.norm(dim=1)
    keys = [rows[:, j].numpy() for j in reversed(range(rows.shape[1]))] + [-np.round(norms.numpy(), 12)]
    return torch.from_numpy(np.lexsort(keys)).to(torch.long)


def canonical_element(
    model: nn.Module,
    x: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    *,
    syms: Symmetries | None = None,
    scaling: str = "fan_in",
) -> Element:
    """The element that brings ``model`` to its canonical form (see :func:`canonicalise`).

    Args:
        model: the network.
        x: an example input (used to find the sites if ``syms`` is not given).
        syms: precomputed :func:`symmetries` of the model.
        scaling: ``"fan_in"`` (unit producer rows) or ``"balanced"`` (producer and consumer norms equal) for
            positive-scaling sites.
    """
    check_choice(scaling, "scaling", SCALINGS)
    if syms is None:
        if x is None:
            raise ValueError("canonical_element needs an example input x= (or syms=)")
        syms = symmetries(model, x)
    check_model(model, syms)
    tensors = {k: v.detach().to(torch.float64) for k, v in model.state_dict().items() if v.is_floating_point()}
    total: dict[str, torch.Tensor] = {}

    def apply(name: str, g: torch.Tensor) -> None:
        tensors.update(apply_element(tensors, syms, {name: g}))
        total[name] = g @ total[name] if name in total else g

    sites = [s for s in syms.free if not s.general_linear]
    scaled = [s for s in sites if "positive_scaling" in s.groups]
    if scaling == "balanced":
        for _ in range(200):
            worst = 0.0
            for s in scaled:
                prod = _rows(tensors, s, ("out",)).norm(dim=1)
                cons = _rows(tensors, s, ("in",)).norm(dim=1)
                d = torch.where((prod > 0) & (cons > 0), (cons / prod.clamp_min(1e-300)).sqrt(), torch.ones_like(prod))
                worst = max(worst, float(d.log().abs().max()))
                apply(s.name, torch.diag(d))
            if worst < 1e-13:
                break
    for s in sites:
        if s in scaled and scaling == "fan_in":
            prod = _rows(tensors, s, ("out",)).norm(dim=1)
            d = torch.where(prod > 0, 1.0 / prod.clamp_min(1e-300), torch.ones_like(prod))
            apply(s.name, torch.diag(d))
        if "orthogonal" in s.groups:
            gram = _rows(tensors, s, ("out", "in", "dual"))
            _, vecs = torch.linalg.eigh(gram @ gram.mT)
            vecs = vecs.flip(1)  # largest eigenvalue first
            basis = vecs.mT
            signs = _signs_of_rows(basis @ _rows(tensors, s, ("out",)), None)
            apply(s.name, signs[:, None] * basis)
            continue
        if "signed_permutation" in s.groups:
            signs = _signs_of_rows(_rows(tensors, s, ("out",)), _bias(tensors, s))
            apply(s.name, torch.diag(signs))
        if "permutation" in s.groups:
            perm = _order(_rows(tensors, s, ("out",)))
            apply(s.name, torch.eye(s.size, dtype=torch.float64)[perm])
    return Element(syms, total)


def canonicalise(
    model: nn.Module,
    x: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    *,
    syms: Symmetries | None = None,
    scaling: str = "fan_in",
) -> nn.Module:
    """The canonical representative of ``model``'s symmetry orbit (a new model with the same function, verified).

    Two models that differ by an element of their sites' groups have the same canonical form (up to rounding,
    and for generic weights: ties in the sort keys or repeated singular values make the form ambiguous).

    Args:
        model: the network.
        x: an example input (used to find the sites and to verify the function).
        syms: precomputed :func:`symmetries` of the model.
        scaling: ``"fan_in"`` or ``"balanced"`` for ReLU sites.
    """
    g = canonical_element(model, x, syms=syms, scaling=scaling)
    return transform(model, g)
