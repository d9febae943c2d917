"""Random group elements and Lie-algebra generators with a cheap action, and the test-input distributions.

Up to :data:`DENSE_LIMIT` features, elements are the Haar samples of :meth:`isotorch.groups.Group.sample`. Above it
(the hidden layers of real models, n = 768 or 3072), an O(n³) QR per element would dominate the audit, so elements
are drawn in a structured form that acts in O(n) per vector: monomial groups as a permutation and a scale vector,
O(n), SO(n) and O(n)_𝟙 as a product of random Householder reflections (vectors ⟂ 𝟙 for O(n)_𝟙). These are exact
group elements, but not Haar-distributed: they move a random low-dimensional subspace, which is enough to expose a
broken symmetry (the violation is first order in the move). Lie-algebra generators are dense up to the limit and
low rank (A = UWᵀ − WUᵀ) above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from isotorch import groups as _groups

DISTRIBUTIONS: tuple[str, ...] = ("gaussian", "scaled_up", "scaled_down", "sparse", "outliers")
"""Synthetic inputs drawn next to the caller's input (``"given"``): N(0, 1); ×10; ×0.1; N(0, 1) with 70% of the
entries zeroed; N(0, 1) with 2% of the entries multiplied by 30."""

DENSE_LIMIT = 512
"""Feature size above which group elements and generators are drawn in structured form (see the module doc)."""

REFLECTIONS = 8
"""Householder reflections per structured orthogonal element."""


@dataclass(frozen=True, eq=False)
class Element:
    """A linear map g on ℝⁿ (a group element or a Lie-algebra generator), stored in the cheapest exact form.

    Exactly one representation is set: ``dense`` (an (n, n) matrix), ``perm``/``scale`` (monomial:
    (g·x)_i = scale_i x_{perm_i}), ``reflections`` ((m, n) unit vectors v_k, g = H_1 ⋯ H_m with H = I − 2vvᵀ),
    ``low_rank`` ((U, W), each (n, r): g = UWᵀ − WUᵀ) or ``blocks`` ((n/k, k, k) block-diagonal matrix).
    Everything is float64.
    """

    n: int
    dense: torch.Tensor | None = None
    perm: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    reflections: torch.Tensor | None = None
    low_rank: tuple[torch.Tensor, torch.Tensor] | None = None
    blocks: torch.Tensor | None = None

    @classmethod
    def of(cls, matrix: torch.Tensor) -> Element:
        """Wrap a square matrix, recognising monomial matrices (permutations, signs, diagonals)."""
        m = matrix.to(torch.float64)
        nonzero = m != 0
        if bool((nonzero.sum(0) == 1).all()) and bool((nonzero.sum(1) == 1).all()):
            perm = nonzero.to(torch.int8).argmax(1)
            return cls(m.shape[0], perm=perm, scale=m[torch.arange(m.shape[0], device=m.device), perm])
        return cls(m.shape[0], dense=m)

    @property
    def is_permutation(self) -> bool:
        """Whether g is a permutation matrix (feature-aligned parameters are then permuted with the input)."""
        return self.scale is not None and bool((self.scale == 1).all())

    @property
    def matrix(self) -> torch.Tensor:
        """The dense (n, n) float64 matrix (built on demand)."""
        if self.dense is not None:
            return self.dense
        anchor = (
            next(t for t in (self.perm, self.reflections, self.blocks) if t is not None)
            if self.low_rank is None
            else self.low_rank[0]
        )
        return self.act(torch.eye(self.n, dtype=torch.float64, device=anchor.device), 0)

    def act(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """g·x along ``dim`` in float64 (the result is float64)."""
        x = x.to(torch.float64)
        if self.dense is not None:
            return _groups.act(self.dense.to(x.device), x, dim)
        if self.perm is not None and self.scale is not None:  # set together
            shape = [1] * x.ndim
            shape[dim] = -1
            return x.index_select(dim, self.perm.to(x.device)) * self.scale.to(x.device).view(shape)
        y = x.movedim(dim, -1)
        if self.reflections is not None:
            for v in self.reflections.flip(0).to(x.device):
                y = y - 2.0 * (y @ v)[..., None] * v
        elif self.low_rank is not None:
            u, w = (t.to(x.device) for t in self.low_rank)
            y = (y @ w) @ u.T - (y @ u) @ w.T
        else:
            assert self.blocks is not None  # exactly one representation is set
            blocks = self.blocks.to(x.device)
            count, k, _ = blocks.shape
            y = torch.einsum("bij,...bj->...bi", blocks, y.reshape(*y.shape[:-1], count, k)).reshape(y.shape)
        return y.movedim(-1, dim)

    def inverse(self) -> Element:
        """g⁻¹ (exact for monomial and reflection elements)."""
        if self.perm is not None and self.scale is not None:  # set together
            perm = torch.empty_like(self.perm)
            perm[self.perm] = torch.arange(self.n, device=self.perm.device)
            return Element(self.n, perm=perm, scale=1.0 / self.scale[perm])
        if self.reflections is not None:
            return Element(self.n, reflections=self.reflections.flip(0))
        return Element.of(torch.linalg.inv(self.matrix))

    def contragredient(self) -> Element:
        """g⁻ᵀ, how a gradient transforms when the parameter transforms by g (g itself when g is orthogonal)."""
        if self.perm is not None and self.scale is not None:  # set together
            return Element(self.n, perm=self.perm, scale=1.0 / self.scale)
        if self.reflections is not None:
            return self
        return Element.of(torch.linalg.inv(self.matrix).T.contiguous())


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def sample(group: _groups.Group, n: int, generator: torch.Generator) -> Element:
    """One element of ``group`` at size n: Haar up to :data:`DENSE_LIMIT`, structured above (see the module doc)."""
    name = group.name
    if n <= DENSE_LIMIT or name not in _STRUCTURED:
        return Element.of(group.sample(n, generator=generator, dtype=torch.float64))
    if name == "trivial":
        return Element(n, perm=torch.arange(n), scale=torch.ones(n, dtype=torch.float64))
    if name in ("permutation", "signed_permutation"):
        perm = torch.randperm(n, generator=generator)
        if name == "permutation":
            return Element(n, perm=perm, scale=torch.ones(n, dtype=torch.float64))
        signs = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
        return Element(n, perm=perm, scale=signs)
    if name == "positive_scaling":
        logs = torch.randn(n, generator=generator, dtype=torch.float64) * group.log_scale_std
        return Element(n, perm=torch.arange(n), scale=torch.exp(logs))
    count = REFLECTIONS
    if name != "special_orthogonal":  # an odd count gives det −1: O(n) and O(n)_𝟙 include reflections
        count += int(torch.randint(0, 2, (1,), generator=generator))
    v = torch.randn(count, n, generator=generator, dtype=torch.float64)
    if name == "mean_orthogonal":
        v = v - v.mean(dim=1, keepdim=True)  # H𝟙 = 𝟙 when v ⟂ 𝟙
    return Element(n, reflections=_unit_rows(v))


_STRUCTURED = {
    "trivial",
    "permutation",
    "signed_permutation",
    "positive_scaling",
    "orthogonal",
    "special_orthogonal",
    "mean_orthogonal",
}


class Sampler:
    """Draws group elements once per (group, n) and reuses them, so that many sites share the cost."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self._cache: dict[tuple[str, int], list[Element]] = {}

    def elements(self, group: _groups.Group, n: int, count: int) -> list[Element]:
        cached = self._cache.setdefault((group.key, n), [])
        while len(cached) < count:
            cached.append(sample(group, n, self.generator))
        return cached[:count]


def random_generator(group: _groups.Group, n: int, generator: torch.Generator) -> Element | None:
    """A random element A of the group's Lie algebra (``None`` when the algebra is {0}).

    Up to :data:`DENSE_LIMIT`: so(n) ∋ M − Mᵀ; the algebra of O(n)_𝟙 is P(M − Mᵀ)P with P = I − 𝟙𝟙ᵀ/n;
    block_orthogonal: so(k) on each block; positive_scaling: a diagonal; other continuous groups draw Gaussian
    coefficients on ``group.lie_algebra(n)``. Dense generators are scaled to ‖A‖_F = √n. Above the limit,
    so(n) and the algebra of O(n)_𝟙 use rank-2r generators UWᵀ − WUᵀ (columns ⟂ 𝟙 for O(n)_𝟙).
    """
    name = group.name
    if name == "positive_scaling":
        d = torch.randn(n, generator=generator, dtype=torch.float64)
        return Element(n, perm=torch.arange(n), scale=d * (math.sqrt(n) / d.norm()))
    if name == "block_orthogonal":
        k = group._block_size()
        if k < 2:
            return None
        m = torch.randn(n // k, k, k, generator=generator, dtype=torch.float64)
        skew = m - m.transpose(1, 2)
        return Element(n, blocks=skew * (math.sqrt(n) / skew.norm()))
    if name in ("orthogonal", "special_orthogonal", "mean_orthogonal"):
        if n < (3 if name == "mean_orthogonal" else 2):
            return None
        if n > DENSE_LIMIT:
            u, w = torch.randn(2, n, REFLECTIONS, generator=generator, dtype=torch.float64)
            if name == "mean_orthogonal":
                u, w = u - u.mean(dim=0), w - w.mean(dim=0)
            return Element(n, low_rank=(u, w))
        m = torch.randn(n, n, generator=generator, dtype=torch.float64)
        a = m - m.T
        if name == "mean_orthogonal":
            a = a - a.mean(dim=0, keepdim=True) - a.mean(dim=1, keepdim=True) + a.mean()  # P a P
    else:
        basis = group.lie_algebra(n)
        if basis.shape[0] == 0:
            return None
        coefficients = torch.randn(basis.shape[0], generator=generator, dtype=torch.float64)
        a = torch.einsum("k,kij->ij", coefficients, basis)
    norm = torch.linalg.matrix_norm(a)
    if float(norm) <= 1e-12:
        return None
    return Element(n, dense=a * (math.sqrt(n) / norm))


def draw_input(kind: str, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A synthetic input of ``like``'s shape, dtype and device from one of :data:`DISTRIBUTIONS`."""
    z = torch.randn(like.shape, generator=generator, dtype=torch.float64)
    if kind == "scaled_up":
        z = z * 10.0
    elif kind == "scaled_down":
        z = z * 0.1
    elif kind == "sparse":
        z = z * (torch.rand(like.shape, generator=generator, dtype=torch.float64) < 0.3)
    elif kind == "outliers":
        z = torch.where(torch.rand(like.shape, generator=generator, dtype=torch.float64) < 0.02, z * 30.0, z)
    elif kind != "gaussian":
        raise ValueError(f"unknown input distribution {kind!r}; valid: given, {', '.join(DISTRIBUTIONS)}")
    return z.to(device=like.device, dtype=like.dtype)
