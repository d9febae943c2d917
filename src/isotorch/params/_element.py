"""Group elements acting on a model's sites: construction, membership, random sampling.

An :class:`Element` assigns one matrix g_s ∈ G_s to some sites s of a :class:`~isotorch.params.Symmetries`. A
permutation may be given as an index vector ``perm`` (g = I[perm], so that g·W = W[perm]: new unit i is old unit
``perm[i]``, the Git Re-Basin convention), which is how large permutations are stored and applied.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from isotorch.params import symmetries, sample_element
    >>> syms = symmetries(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)), torch.randn(4, 3))
    >>> g = sample_element(syms, generator=torch.Generator().manual_seed(0))
    >>> g.matrix("0").shape
    torch.Size([5, 5])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from isotorch import groups as _groups
from isotorch._util import check_generator, json_safe
from isotorch.params._errors import SymmetryError
from isotorch.params._sites import Site, Symmetries

__all__ = ["Element", "sample_element"]


def _is_perm(t: torch.Tensor) -> bool:
    return t.ndim == 1 and not t.is_floating_point() and not t.is_complex()


@dataclass(frozen=True)
class Element:
    """A group element: one matrix (or permutation index vector) per site of ``symmetries``.

    Sites act in the order of ``symmetries`` (the order of ``matrices`` does not matter). Most sites commute, but
    an attention's head permutation π and its per-position sites (query–key and value–output maps, the query heads
    within a K/V group) form a wreath product: the per-position element at position p acts on the head that π
    moved there (position p ← M_p · head π_p), so :meth:`inverse` and composition carry them along with π.

    Args:
        symmetries: the :class:`~isotorch.params.Symmetries` whose sites the element acts on.
        matrices: site name → an (n, n) floating matrix, or an (n,) integer permutation (g = I[perm]). Sites not
            named are left alone.

    Raises:
        KeyError: a name that is not a site.
        ValueError: a matrix of the wrong shape, or an index vector that is not a permutation.
    """

    symmetries: Symmetries = field(repr=False, compare=False)
    matrices: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.symmetries, Symmetries):
            raise TypeError(f"symmetries must be a Symmetries, got {type(self.symmetries).__name__}")
        checked = {}
        for name, g in dict(self.matrices).items():
            site = self.symmetries[name]
            if not isinstance(g, torch.Tensor):
                raise TypeError(f"the element at site {name!r} must be a tensor, got {type(g).__name__}")
            n = site.size
            if _is_perm(g):
                if g.shape != (n,) or not torch.equal(torch.sort(g.cpu()).values, torch.arange(n)):
                    raise ValueError(f"the index vector at site {name!r} must be a permutation of range({n})")
                g = g.to(torch.long)
            elif g.ndim != 2 or g.shape != (n, n) or not g.is_floating_point():
                raise ValueError(
                    f"the element at site {name!r} must be a ({n}, {n}) floating matrix or a permutation index "
                    f"vector of length {n}, got {g.dtype} of shape {tuple(g.shape)}"
                )
            checked[name] = g.detach()
        ordered = {site.name: checked[site.name] for site in self.symmetries if site.name in checked}
        object.__setattr__(self, "matrices", MappingProxyType(ordered))

    def matrix(self, name: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The element at site ``name`` as an (n, n) matrix (the identity for sites not in the element)."""
        site = self.symmetries[name]
        g = self.matrices.get(name)
        if g is None:
            return torch.eye(site.size, dtype=dtype)
        if _is_perm(g):
            return torch.eye(site.size, dtype=dtype, device=g.device)[g]
        return g.to(dtype)

    def inverse(self) -> Element:
        """The inverse element (applying it undoes :func:`~isotorch.params.transform` with this one)."""
        positions = _positions(self.symmetries)
        out = {}
        for name, g in self.matrices.items():
            if name not in positions:
                out[name] = _invert(g)
        for name, (heads, index) in positions.items():
            # (π, M)⁻¹ = (π⁻¹, p ↦ M_{π⁻¹(p)}⁻¹)
            source = name
            if heads in self.matrices:
                source = index[int(torch.argsort(_as_index(self.matrices[heads]))[index[name]])]
            if source in self.matrices:
                out[name] = _invert(self.matrices[source])
        return Element(self.symmetries, out)

    def __matmul__(self, other: Element) -> Element:
        """The composition ``self ∘ other`` (apply ``other`` first), site by site; a per-position site composes
        with ``other``'s element at the position ``self``'s head permutation takes it from."""
        if not isinstance(other, Element):
            return NotImplemented
        positions = _positions(self.symmetries)
        out: dict[str, torch.Tensor] = {}
        for name in dict.fromkeys([*self.matrices, *other.matrices, *positions]):
            a = self.matrices.get(name)
            source = name
            if name in positions and positions[name][0] in self.matrices:
                heads, index = positions[name]
                source = index[int(_as_index(self.matrices[heads])[index[name]])]
            b = other.matrices.get(source)
            if a is None or b is None:  # one side only, or neither (then the site is left out)
                one = b if a is None else a
                if one is not None:
                    out[name] = one
            elif _is_perm(a) and _is_perm(b):
                out[name] = b[a]
            else:
                out[name] = self.matrix(name) @ other.matrix(source)
        return Element(self.symmetries, out)

    def to_dict(self) -> dict:
        """A JSON-ready dict: site → nested list (matrix) or list of ints (permutation)."""
        return json_safe({name: {"permutation" if _is_perm(g) else "matrix": g} for name, g in self.matrices.items()})


def _invert(g: torch.Tensor) -> torch.Tensor:
    return torch.argsort(g) if _is_perm(g) else torch.linalg.inv(g.to(torch.float64)).to(g.dtype)


def _as_index(g: torch.Tensor) -> torch.Tensor:
    """A permutation as an index vector (g = I[perm]), from an index vector or a permutation matrix."""
    return g if _is_perm(g) else g.abs().argmax(1)


_PER_POSITION = {"query_key": "qk", "value_output": "vo", "query_group": "group"}


def _positions(symmetries: Symmetries) -> dict[str, tuple[str, Any]]:
    """Per-position attention sites → (their head site, a two-way index: site name ↔ position)."""
    by_kind: dict[tuple[str, str], dict] = {}
    for site in symmetries:
        stem = _PER_POSITION.get(site.kind)
        prefix, _, last = site.name.rpartition(".")
        if stem is None or not last.startswith(stem) or f"{prefix}.heads" not in symmetries:
            continue
        index = by_kind.setdefault((prefix, stem), {})
        position = int(last[len(stem) :])
        index[site.name], index[position] = position, site.name
    return {
        name: (f"{prefix}.heads", index)
        for (prefix, _), index in by_kind.items()
        for name in index
        if isinstance(name, str)
    }


def _in_structure(structure: str, g: torch.Tensor, atol: float) -> bool:
    """Membership in the groups outside the canonical lattice (see :attr:`Site.structure`)."""
    n = g.shape[0]
    if _is_perm(g):
        return bool(torch.equal(g.cpu(), torch.arange(n)))
    g = g.detach().to(torch.float64)
    scale = float(g.abs().max()) or 1.0
    if structure == "nonzero_scaling":
        off = g - torch.diag(torch.diagonal(g))
        return bool(off.abs().max() <= atol * scale) and bool((torch.diagonal(g).abs() > atol * scale).all())
    if structure == "rotary_planes":
        if n % 2:
            return False
        h = n // 2
        a, b = torch.diagonal(g)[:h], torch.diagonal(g[h:, :h])
        expected = torch.zeros_like(g)
        idx = torch.arange(h)
        expected[idx, idx] = a
        expected[idx + h, idx + h] = a
        expected[idx + h, idx] = b
        expected[idx, idx + h] = -b
        return bool((g - expected).abs().max() <= atol * scale) and bool((a * a + b * b > (atol * scale) ** 2).all())
    return False


def _sample_structure(structure: str, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random element of a structured group: random signs and log-normal scales, or per plane a random angle
    and a log-normal scale."""
    if structure == "nonzero_scaling":
        signs = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
        return torch.diag(signs * torch.exp(0.5 * torch.randn(n, generator=generator, dtype=torch.float64)))
    if structure == "rotary_planes":
        h = n // 2
        angle = torch.rand(h, generator=generator, dtype=torch.float64) * 2 * torch.pi
        radius = torch.exp(0.3 * torch.randn(h, generator=generator, dtype=torch.float64))
        g = torch.zeros(n, n, dtype=torch.float64)
        idx = torch.arange(h)
        g[idx, idx] = g[idx + h, idx + h] = radius * torch.cos(angle)
        g[idx + h, idx] = radius * torch.sin(angle)
        g[idx, idx + h] = -radius * torch.sin(angle)
        return g
    raise ValueError(f"unknown site structure {structure!r}")


def contains(site: Site, g: torch.Tensor, atol: float = 1e-6) -> bool:
    """Whether ``g`` (a matrix or a permutation index vector) lies in the group of ``site``."""
    if not site.free:
        return False
    if site.structure is not None:
        return _in_structure(site.structure, g, atol)
    if _is_perm(g):
        return "permutation" in site.groups
    g = g.detach().to(torch.float64)
    if site.general_linear:
        if not bool(torch.isfinite(g).all()):
            return False
        lu, _, info = torch.linalg.lu_factor_ex(g)  # invertible: every pivot clearly non-zero (cheaper than an SVD)
        pivots = torch.diagonal(lu).abs()
        return int(info) == 0 and float(pivots.min()) > g.shape[0] * torch.finfo(g.dtype).eps * float(pivots.max())
    for key in site.maximal:
        if _groups.get(key).contains(g, atol=atol):
            return True
    scaled = "positive_scaling" in site.groups
    if scaled and ("permutation" in site.groups or "signed_permutation" in site.groups):
        nonzero = g.abs() > atol
        if bool((nonzero.sum(0) == 1).all() and (nonzero.sum(1) == 1).all()):
            values = g[nonzero]
            return "signed_permutation" in site.groups or bool((values > 0).all())
    return False


def check_membership(element: Element) -> None:
    """Raise :class:`SymmetryError` if an element's matrix is not in its site's group."""
    for name, g in element.matrices.items():
        site = element.symmetries[name]
        if site.status != "free":
            raise SymmetryError(f"site {name!r} is {site.status} and cannot be transformed: {site.reason}")
        if not contains(site, g):
            prims = "; ".join(site.primitives) or "no primitives"
            raise SymmetryError(
                f"the element at site {name!r} is not in the site's group {site.group} (primitives: {prims})"
            )


def sample_element(
    syms: Symmetries,
    generator: torch.Generator | None = None,
    *,
    sites: list[str] | None = None,
    dtype: torch.dtype = torch.float64,
) -> Element:
    """Draw a random element of the symmetry group of every free site.

    Each site's matrix is the product of one Haar-random sample (:meth:`isotorch.groups.Group.sample`) from each
    of its maximal groups, e.g. a random permutation times a random positive diagonal for a ReLU site; a site with
    no primitive between its layers (GL(n)) gets a random orthogonal matrix times a positive diagonal. A site whose
    group is the permutations alone gets a permutation index vector (cheap to store and apply for wide layers); the
    structured groups (:attr:`Site.structure`) get random signs and scales, or a random scaled rotation per plane.

    Args:
        syms: the model's :class:`~isotorch.params.Symmetries`.
        generator: a ``torch.Generator`` for reproducible draws (default: torch's global RNG).
        sites: the site names to draw for (default: every free site).
        dtype: the dtype of the matrices (float64 by default, so that transforms are exact to rounding).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from isotorch.params import symmetries, sample_element, transform
        >>> model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
        >>> syms = symmetries(model, torch.randn(5, 3, dtype=torch.float64))
        >>> new = transform(model, sample_element(syms, torch.Generator().manual_seed(1)))
    """
    generator = check_generator(generator)
    if not isinstance(syms, Symmetries):
        raise TypeError(f"syms must be the Symmetries of a model, got {type(syms).__name__}")
    names = [s.name for s in syms.free] if sites is None else list(sites)
    out = {}
    for name in names:
        site = syms[name]
        if not site.free:
            raise SymmetryError(f"site {name!r} is {site.status}: {site.reason}")
        n = site.size
        if site.structure is not None:
            g = _sample_structure(site.structure, n, generator)
        elif set(site.maximal) == {"permutation"}:
            out[name] = torch.randperm(n, generator=generator)  # an index vector: no n × n matrix to build or apply
            continue
        elif site.general_linear:
            g = _groups.get("orthogonal").sample(n, generator=generator, dtype=torch.float64)
            g = g @ _groups.get("positive_scaling").sample(n, generator=generator, dtype=torch.float64)
        else:
            g = torch.eye(n, dtype=torch.float64)
            for key in sorted(site.maximal):
                g = g @ _groups.get(key).sample(n, generator=generator, dtype=torch.float64)
        out[name] = g.to(dtype)
    return Element(syms, out)
