"""Groups acting linearly on a feature axis.

Every primitive in isotorch is classified by a group G of n×n matrices acting on one feature axis of a tensor:
a map f is *G-equivariant* when f(g·x) = g·f(x) and *G-invariant* when f(g·x) = f(x) for all g ∈ G. The
canonical groups (names are fixed strings used everywhere in isotorch) are

================  ====================================  ==========================================
name              group                                 typical primitive
================  ====================================  ==========================================
trivial           {I}                                   anything
permutation       S_n (permutation matrices)            ReLU, GELU, sigmoid, BatchNorm, softmax
signed_permutation B_n = S_n ⋉ {±1}ⁿ                    tanh, sin (odd elementwise maps), Adam
positive_scaling  positive diagonal matrices            ReLU, leaky ReLU (positively homogeneous)
mean_orthogonal   {R ∈ O(n) : R𝟙 = 𝟙} ≅ O(n−1)          LayerNorm without affine
block_orthogonal  O(k) ≀ S_{n/k}: O(k) on each block,   block-isotropic activation
                  blocks permuted
special_orthogonal SO(n)                                (rotations without reflections)
orthogonal        O(n)                                  isotropic activation, RMSNorm, SGD
================  ====================================  ==========================================

``block_orthogonal`` with block size k is the full symmetry group of an activation that is isotropic within
each block of k consecutive features: k = 1 gives B_n, k = n gives O(n).

Examples:
    >>> import torch, isotorch as it
    >>> g = it.groups.get("orthogonal").sample(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> it.groups.get("orthogonal").contains(g)
    True
    >>> it.groups.is_subgroup("permutation", "mean_orthogonal")
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from isotorch._util import check_dtype, check_generator, check_int

__all__ = [
    "Group",
    "act",
    "covers",
    "generate",
    "get",
    "is_subgroup",
    "lattice",
    "maximal",
    "names",
]

_NAMES: tuple[str, ...] = (
    "trivial",
    "permutation",
    "signed_permutation",
    "positive_scaling",
    "mean_orthogonal",
    "block_orthogonal",
    "special_orthogonal",
    "orthogonal",
)


def names() -> list[str]:
    """The canonical group names, smallest to largest (``"block_orthogonal"`` needs a block size: see :func:`get`).

    Examples:
        >>> import isotorch as it
        >>> it.groups.names()[:3]
        ['trivial', 'permutation', 'signed_permutation']
    """
    return list(_NAMES)


_COMPACT = {
    "trivial",
    "permutation",
    "signed_permutation",
    "mean_orthogonal",
    "block_orthogonal",
    "special_orthogonal",
    "orthogonal",
}
_CONTINUOUS = {"positive_scaling", "mean_orthogonal", "block_orthogonal", "special_orthogonal", "orthogonal"}


def _haar_orthogonal(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """Haar-distributed O(n) in float64: QR of a Gaussian matrix with the sign of diag(R) fixed."""
    a = torch.randn(n, n, generator=generator, dtype=torch.float64, device=device)
    q, r = torch.linalg.qr(a)
    d = torch.sign(torch.diagonal(r))
    d = torch.where(d == 0, torch.ones_like(d), d)
    return q * d


def _random_permutation(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    perm = torch.randperm(n, generator=generator, device=device)
    return torch.eye(n, dtype=torch.float64, device=device)[perm]


def _random_signs(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=generator, device=device).to(torch.float64) * 2 - 1


def _mean_basis(n: int, device) -> torch.Tensor:
    """An orthonormal basis whose first column is 𝟙/√n (deterministic, float64)."""
    a = torch.eye(n, dtype=torch.float64, device=device)
    a[:, 0] = 1.0
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r))


@dataclass(frozen=True)
class Group:
    """A group of n×n matrices acting on a feature axis, by canonical name.

    Args:
        name: one of :func:`names`.
        block: block size k for ``block_orthogonal`` (must divide n when sampling); ``None`` otherwise.
        log_scale_std: standard deviation of log-scales when sampling ``positive_scaling`` (default 0.5).

    Use :func:`get` rather than constructing directly.
    """

    name: str
    block: int | None = None
    log_scale_std: float = field(default=0.5, compare=False)

    @property
    def compact(self) -> bool:
        """Whether the group is compact (a subgroup of O(n)); ``positive_scaling`` is not."""
        return self.name in _COMPACT

    @property
    def continuous(self) -> bool:
        """Whether the group has a non-trivial Lie algebra (``block_orthogonal`` with k = 1 has none)."""
        if self.name == "block_orthogonal":
            return self.block is not None and self.block > 1
        return self.name in _CONTINUOUS

    @property
    def key(self) -> str:
        """A string that identifies the group including its parameters, e.g. ``block_orthogonal:4``."""
        return f"{self.name}:{self.block}" if self.name == "block_orthogonal" else self.name

    def __str__(self) -> str:
        return self.key

    def _block_size(self) -> int:
        """The block size k of ``block_orthogonal`` (always set by :func:`get`)."""
        if self.block is None:
            raise ValueError("block_orthogonal needs a block size: use groups.get('block_orthogonal', block=k)")
        return self.block

    def check(self, n: int) -> int:
        """Raise ``ValueError`` if the group cannot act on a feature axis of size ``n``; return ``n``."""
        n = check_int(n, "n")
        if self.name == "block_orthogonal" and n % self._block_size() != 0:
            raise ValueError(
                f"block_orthogonal with block={self.block} needs a feature size divisible by {self.block}, got {n}"
            )
        return n

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw one element as an (n, n) matrix; Haar-uniform for the compact groups.

        Sampling is done in float64 and cast to ``dtype`` at the end.

        Examples:
            >>> import torch
            >>> from isotorch import groups
            >>> g = groups.get("signed_permutation").sample(4, generator=torch.Generator().manual_seed(0))
            >>> g.shape, g.abs().sum(0).tolist()  # one ±1 in every column
            (torch.Size([4, 4]), [1.0, 1.0, 1.0, 1.0])
            >>> q = groups.get("orthogonal").sample(6, dtype=torch.float64)
            >>> torch.allclose(q.T @ q, torch.eye(6, dtype=torch.float64))
            True
        """
        generator = check_generator(generator)
        n = self.check(n)
        check_dtype(dtype)
        dev = device if device is not None else (generator.device if generator is not None else None)
        name = self.name
        if name == "trivial":
            g = torch.eye(n, dtype=torch.float64, device=dev)
        elif name == "permutation":
            g = _random_permutation(n, generator, dev)
        elif name == "signed_permutation":
            g = _random_signs(n, generator, dev)[:, None] * _random_permutation(n, generator, dev)
        elif name == "positive_scaling":
            logs = torch.randn(n, generator=generator, dtype=torch.float64, device=dev) * self.log_scale_std
            g = torch.diag(torch.exp(logs))
        elif name == "orthogonal":
            g = _haar_orthogonal(n, generator, dev)
        elif name == "special_orthogonal":
            g = _haar_orthogonal(n, generator, dev)
            if torch.linalg.det(g) < 0:
                g[:, 0] = -g[:, 0]
        elif name == "mean_orthogonal":
            b = _mean_basis(n, dev)
            inner = torch.eye(n, dtype=torch.float64, device=dev)
            if n > 1:
                inner[1:, 1:] = _haar_orthogonal(n - 1, generator, dev)
            g = b @ inner @ b.T
        elif name == "block_orthogonal":
            k = self._block_size()
            m = n // k
            blocks = [_haar_orthogonal(k, generator, dev) for _ in range(m)]
            perm = torch.randperm(m, generator=generator, device=dev).tolist()
            g = torch.zeros(n, n, dtype=torch.float64, device=dev)
            for i, j in enumerate(perm):
                g[i * k : (i + 1) * k, j * k : (j + 1) * k] = blocks[i]
        else:  # pragma: no cover - guarded by get()
            raise AssertionError(name)
        return g.to(dtype)

    def contains(self, matrix: torch.Tensor, atol: float = 1e-6) -> bool:
        """Whether a square matrix is (within ``atol``) an element of this group."""
        if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be a square 2-D tensor, got {getattr(matrix, 'shape', type(matrix))}")
        g = matrix.detach().to(torch.float64)
        n = g.shape[0]
        if self.name == "block_orthogonal" and n % self._block_size() != 0:
            return False
        eye = torch.eye(n, dtype=torch.float64, device=g.device)

        def close(a, b) -> bool:
            return bool(torch.allclose(a, b, atol=atol, rtol=0))

        def is_monomial(values_ok) -> bool:
            nonzero = g.abs() > atol
            if not (nonzero.sum(0) == 1).all() or not (nonzero.sum(1) == 1).all():
                return False
            return bool(values_ok(g[nonzero]))

        name = self.name
        if name == "trivial":
            return close(g, eye)
        if name == "permutation":
            return is_monomial(lambda v: ((v - 1).abs() <= atol).all())
        if name == "signed_permutation":
            return is_monomial(lambda v: ((v.abs() - 1).abs() <= atol).all())
        if name == "positive_scaling":
            return close(g, torch.diag(torch.diagonal(g))) and bool((torch.diagonal(g) > atol).all())
        orthogonal = close(g.T @ g, eye)
        if name == "orthogonal":
            return orthogonal
        if name == "special_orthogonal":
            return orthogonal and bool(torch.linalg.det(g) > 0)
        if name == "mean_orthogonal":
            ones = torch.ones(n, dtype=torch.float64, device=g.device)
            return orthogonal and close(g @ ones, ones)
        if name == "block_orthogonal":
            k = self._block_size()
            norms = g.reshape(n // k, k, n // k, k).pow(2).sum(dim=(1, 3)).sqrt()  # Frobenius norm per block
            pattern = norms > atol
            monomial = bool((pattern.sum(0) == 1).all() and (pattern.sum(1) == 1).all())
            return orthogonal and monomial
        raise AssertionError(name)  # pragma: no cover

    def lie_algebra(
        self, n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """A basis of the group's Lie algebra as a (d, n, n) tensor (d = 0 for discrete groups).

        so(n): E_ij − E_ji for i < j; positive scaling: E_ii; mean-orthogonal: so(n−1) conjugated into the
        complement of 𝟙; block-orthogonal: so(k) on each block.
        """
        n = self.check(n)

        def so(m: int) -> torch.Tensor:
            i, j = torch.triu_indices(m, m, offset=1)
            basis = torch.zeros(len(i), m, m, dtype=torch.float64, device=device)
            idx = torch.arange(len(i), device=device)
            basis[idx, i, j] = 1.0
            basis[idx, j, i] = -1.0
            return basis

        name = self.name
        if name in ("orthogonal", "special_orthogonal"):
            out = so(n)
        elif name == "positive_scaling":
            out = torch.diag_embed(torch.eye(n, dtype=torch.float64, device=device))
        elif name == "mean_orthogonal":
            b = _mean_basis(n, device)
            inner = torch.zeros(max(n - 1, 0) * max(n - 2, 0) // 2, n, n, dtype=torch.float64, device=device)
            if n > 2:
                inner[:, 1:, 1:] = so(n - 1)
            out = b @ inner @ b.T
        elif name == "block_orthogonal":
            k = self._block_size()
            per = so(k)
            parts = []
            for start in range(0, n, k):
                basis = torch.zeros(per.shape[0], n, n, dtype=torch.float64, device=device)
                basis[:, start : start + k, start : start + k] = per
                parts.append(basis)
            out = torch.cat(parts) if parts else torch.zeros(0, n, n, dtype=torch.float64, device=device)
        else:
            out = torch.zeros(0, n, n, dtype=torch.float64, device=device)
        return out.to(dtype)


def get(name: str | Group, **params: float) -> Group:
    """Look up a canonical group by name.

    Args:
        name: one of :func:`names`; ``"block_orthogonal:K"`` is accepted as a short form for
            ``get("block_orthogonal", block=K)``. A :class:`Group` is returned unchanged.
        **params: ``block`` (block size, required for ``block_orthogonal``) and ``log_scale_std``
            (for ``positive_scaling``).

    Raises:
        KeyError: unknown name (the message lists the valid names).
        ValueError: missing or invalid parameters.

    Examples:
        >>> import torch
        >>> from isotorch import groups
        >>> groups.get("block_orthogonal:4").key  # the short form of get("block_orthogonal", block=4)
        'block_orthogonal:4'
        >>> p = groups.get("permutation").sample(5, generator=torch.Generator().manual_seed(0))
        >>> groups.get("orthogonal").contains(p), groups.get("positive_scaling").contains(p)
        (True, False)
    """
    if isinstance(name, Group):
        if params:
            raise ValueError("parameters cannot be given together with a Group instance")
        return name
    if not isinstance(name, str):
        raise TypeError(f"group name must be a str, got {type(name).__name__}")
    base, _, suffix = name.partition(":")
    if base not in _NAMES:
        raise KeyError(f"unknown group {name!r}; valid names: {', '.join(_NAMES)}")
    if suffix:
        if base != "block_orthogonal" or "block" in params:
            raise ValueError(f"unexpected suffix in group name {name!r}; only 'block_orthogonal:K' takes one")
        try:
            params["block"] = int(suffix)
        except ValueError:
            raise ValueError(f"block size in {name!r} must be an integer") from None
    unknown = set(params) - {"block", "log_scale_std"}
    if unknown:
        raise ValueError(f"unknown group parameters {sorted(unknown)}; valid: block, log_scale_std")
    block = params.get("block")
    if base == "block_orthogonal":
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block_orthogonal needs block=K with K a positive int, got {block!r}")
    elif block is not None:
        raise ValueError(f"block= applies only to block_orthogonal, not {base!r}")
    log_scale_std = float(params.get("log_scale_std", 0.5))
    if not math.isfinite(log_scale_std) or log_scale_std <= 0:
        raise ValueError(f"log_scale_std must be a positive finite float, got {log_scale_std!r}")
    return Group(base, block, log_scale_std)


def is_subgroup(a: str | Group, b: str | Group, n: int | None = None) -> bool:
    """Whether group ``a`` is a subgroup of group ``b`` as matrix groups on ℝⁿ (for generic n ≥ 3).

    Containments: trivial ≤ everything; S_n ≤ B_n ≤ O(n); S_n ≤ O(n)_𝟙 ≤ O(n); SO(n) ≤ O(n); every compact group
    ≤ O(n). The block groups O(k)≀S_{n/k} contain no other canonical group but the trivial one, and lie in no
    other block group: a permutation of k-blocks need not map the blocks of a coarser partition to each other.
    B_n = O(1)≀S_n, and if ``n`` is given, ``block_orthogonal:n`` is compared as ``orthogonal``.
    """
    a, b = _normalise_block(get(a), n), _normalise_block(get(b), n)
    if a == b or a.name == "trivial":
        return True
    if b.name == "orthogonal":
        return a.compact
    if a.name == "permutation":
        return b.name in ("signed_permutation", "mean_orthogonal")
    return False


def _normalise_block(g: Group, n: int | None) -> Group:
    if g.name == "block_orthogonal" and g.block == 1:
        return get("signed_permutation")
    if g.name == "block_orthogonal" and g.block == n:
        return get("orthogonal")
    return g


def maximal(keys: Iterable[str | Group], n: int) -> frozenset[str]:
    """The largest groups among ``keys`` at feature size ``n``: those not a proper subgroup of another one.

    The lattice is not a chain, so there can be several (ReLU holds both ``permutation`` and ``positive_scaling``).
    Two names of one group at this size (``block_orthogonal:n`` and ``orthogonal``) count once, by the canonical one.

    Examples:
        >>> sorted(maximal({"trivial", "permutation", "positive_scaling"}, 8))
        ['permutation', 'positive_scaling']
    """
    held = {get(k).key for k in keys}

    def below(a: str, b: str) -> bool:
        return is_subgroup(a, b, n) and not is_subgroup(b, a, n)

    top = {a for a in held if not any(below(a, b) for b in held if b != a)}
    for a in sorted(top):  # equal groups under two names: keep the canonical one
        if a.startswith("block_orthogonal") and any(b != a and is_subgroup(a, b, n) for b in top):
            top.discard(a)
    return frozenset(top)


def lattice(n: int, *, blocks: tuple[int, ...] | None = None) -> list[Group]:
    """The canonical groups that act on a feature axis of size ``n``, smallest first.

    Block-orthogonal groups are included for ``blocks`` (default: the proper divisors 1 < k < n of n).
    """
    n = check_int(n, "n")
    if blocks is None:
        blocks = tuple(k for k in range(2, n) if n % k == 0)
    out = [get(name) for name in _NAMES if name != "block_orthogonal"]
    out += [get("block_orthogonal", block=k) for k in blocks if n % k == 0]
    order = {name: i for i, name in enumerate(_NAMES)}
    return sorted(out, key=lambda g: (order[g.name], g.block or 0))


def covers(group: str | Group, n: int) -> list[Group]:
    """The next larger groups of ``group`` in :func:`lattice` at size ``n`` (its immediate supergroups).

    These are the negative controls of a symmetry test: a primitive that holds ``group`` should fail them.
    """
    g = get(group)
    groups = lattice(n)
    above = [h for h in groups if h != g and is_subgroup(g, h, n) and not is_subgroup(h, g, n)]
    return [h for h in above if not any(m != h and is_subgroup(m, h, n) and not is_subgroup(h, m, n) for m in above)]


def act(matrix: torch.Tensor, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Apply the matrix g to every vector of ``x`` along ``dim``: (g·x)[..., i, ...] = Σ_j g_ij x[..., j, ...].

    The product is computed in the promoted dtype of ``matrix`` and ``x`` (pass a float64 matrix to act in
    float64).
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square 2-D, got shape {tuple(matrix.shape)}")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim={dim} is out of range for a tensor with {x.ndim} dimensions")
    if x.shape[dim] != matrix.shape[0]:
        raise ValueError(f"x has size {x.shape[dim]} along dim={dim}, but the matrix is {tuple(matrix.shape)}")
    dtype = torch.promote_types(matrix.dtype, x.dtype)
    moved = x.to(dtype).movedim(dim, -1)
    return (moved @ matrix.to(dtype).T).movedim(-1, dim)


def generate(generators: torch.Tensor, *, max_order: int = 10_000, atol: float = 1e-6) -> torch.Tensor:
    """All elements of the finite matrix group generated by ``generators``, as a (|G|, n, n) float64 tensor.

    The closure is built by breadth-first multiplication; two products are the same element when they agree to
    ``atol`` entrywise. Use it to give :func:`isotorch.families.symmetrise` a finite group, e.g. the dihedral
    group of a polygon from a rotation and a reflection, or the icosahedral group from two rotations.

    Raises:
        ValueError: generators that are not a (m, n, n) stack of orthogonal matrices, or a group larger than
            ``max_order`` (likely not finite).
    """
    if not isinstance(generators, torch.Tensor) or generators.ndim != 3 or generators.shape[1] != generators.shape[2]:
        raise ValueError(f"generators must be an (m, n, n) tensor, got {getattr(generators, 'shape', generators)}")
    gens = generators.detach().to(torch.float64)
    n = gens.shape[1]
    eye = torch.eye(n, dtype=torch.float64, device=gens.device)
    if not torch.allclose(gens.transpose(1, 2) @ gens, eye.expand_as(gens), atol=1e-6):
        raise ValueError("generators must be orthogonal matrices (a finite matrix group is conjugate to one)")
    elements = eye[None]
    frontier = eye[None]
    while len(frontier):
        candidates = (gens[:, None] @ frontier[None]).reshape(-1, n, n)
        new: list[torch.Tensor] = []
        for c in candidates:
            known = torch.cat([elements, *[m[None] for m in new]]) if new else elements
            if (known - c).abs().amax(dim=(1, 2)).min() > atol:
                new.append(c)
        if len(elements) + len(new) > max_order:
            raise ValueError(f"the generated group has more than max_order={max_order} elements")
        frontier = torch.stack(new) if new else frontier[:0]
        elements = torch.cat([elements, frontier])
    return elements
