"""Neuron collapse and symmetry breaking, read from the weights of one hidden layer h = σ(W₁x + b₁), y = W₂h + b₂.

Each hidden unit i is the vector θ_i = (w_i, b_i, u_i) of its incoming weights, bias and outgoing column.

- **Permutation symmetry (S_n).** Δ_ij = ‖θ_i − θ_j‖/√2 is the distance of the pair from the fixed set of the swap
  (i j). Units are clustered by single linkage at Δ_ij ≤ τ·rms_i‖θ_i‖; the number of clusters is the number of
  distinct neurons, and the fraction of units in clusters of size > 1 measures neuron collapse.
- **Dead units.** m_i = (‖w_i‖² + b_i²)^{1/2}·‖u_i‖ (the unit's contribution scale); dead if m_i ≤ τ·max_j m_j.
- **Rotation symmetry (O(n), isotropic σ).** The distance of the layer from the fixed set of the reflection
  I − 2nnᵀ is (‖nᵀW₁‖² + (nᵀb₁)² + ‖W₂n‖²)^{1/2}; minimised over unit n it is the smallest singular value of the
  stacked matrix [W₁ | b₁ | W₂ᵀ] (n × (d_in + 1 + d_out)). The number of singular values ≤ τ·s_max is the degree
  of rotation symmetry left in the layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from isotorch._util import check_real, json_safe

__all__ = ["NeuronDistances", "neuron_distances"]


@dataclass(frozen=True)
class NeuronDistances:
    """Symmetry-breaking distances of one hidden layer (see the module docstring).

    Attributes:
        width: number of hidden units n.
        min_distance: min over pairs of Δ_ij = ‖θ_i − θ_j‖/√2 (``inf`` for a single unit).
        closest_pair: the unit indices (i, j) attaining it (``None`` for a single unit).
        n_distinct: number of single-linkage clusters at Δ ≤ rtol·rms‖θ‖.
        shared_fraction: fraction of units in a cluster of size > 1.
        clusters: cluster id of every unit.
        dead: indices of dead units (contribution m_i ≤ rtol·max m).
        singular_values: singular values of [W₁ | b₁ | W₂ᵀ], descending.
        rotation_distance: the smallest singular value (distance to the nearest reflection-fixed layer).
        n_near_zero: singular values ≤ rtol·s_max (degree of rotation symmetry).
        inactive: indices of units never active on the given activations (``None`` without activations).
        rtol: the relative tolerance used.
    """

    width: int
    min_distance: float
    closest_pair: tuple[int, int] | None
    n_distinct: int
    shared_fraction: float
    clusters: tuple[int, ...]
    dead: tuple[int, ...]
    singular_values: tuple[float, ...]
    rotation_distance: float
    n_near_zero: int
    inactive: tuple[int, ...] | None = None
    rtol: float = 1e-3
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return json_safe(
            {
                "width": self.width,
                "min_distance": self.min_distance,
                "closest_pair": None if self.closest_pair is None else list(self.closest_pair),
                "n_distinct": self.n_distinct,
                "shared_fraction": self.shared_fraction,
                "clusters": list(self.clusters),
                "dead": list(self.dead),
                "singular_values": list(self.singular_values),
                "rotation_distance": self.rotation_distance,
                "n_near_zero": self.n_near_zero,
                "inactive": None if self.inactive is None else list(self.inactive),
                "rtol": self.rtol,
                "settings": dict(self.settings),
            }
        )

    def __repr__(self) -> str:
        return (
            f"NeuronDistances(width={self.width}, min_distance={self.min_distance:.4g}, n_distinct={self.n_distinct}, "
            f"dead={len(self.dead)}, rotation_distance={self.rotation_distance:.4g}, n_near_zero={self.n_near_zero})"
        )


def _as_weight(t: object, name: str, shape_hint: str) -> torch.Tensor:
    if isinstance(t, torch.nn.Linear):
        t = t.weight
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.ndim != 2:
        raise ValueError(f"{name} must be a floating-point matrix of shape {shape_hint}, got {getattr(t, 'shape', t)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or inf values")
    return t.detach().to(torch.float64)


def _components(adjacent: torch.Tensor) -> torch.Tensor:
    """Connected components (single linkage) of a boolean adjacency matrix, labels 0..k−1 in order of first unit."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(csr_matrix(adjacent.cpu().numpy()), directed=False)
    order: dict[int, int] = {}
    return torch.tensor([order.setdefault(int(lab), len(order)) for lab in labels])


def neuron_distances(
    w_in: torch.Tensor,
    b_in: torch.Tensor | None,
    w_out: torch.Tensor,
    *,
    rtol: float = 1e-3,
    acts: torch.Tensor | None = None,
) -> NeuronDistances:
    """Distances of a hidden layer from its permutation-, dead-unit- and rotation-symmetric states.

    With θ_i = (w_i, b_i, u_i): Δ_ij = ‖θ_i − θ_j‖/√2, single-linkage clusters at Δ ≤ rtol·rms‖θ‖, dead units
    m_i = ‖(w_i, b_i)‖·‖u_i‖ ≤ rtol·max m, and the singular values of [W₁ | b₁ | W₂ᵀ] (the smallest one is the
    distance to the nearest reflection-symmetric layer; the count ≤ rtol·s_max is the rotation-symmetry degree).

    Args:
        w_in: (n, d_in) incoming weights W₁ (or an ``nn.Linear``).
        b_in: (n,) hidden bias b₁, or ``None``.
        w_out: (d_out, n) outgoing weights W₂ (or an ``nn.Linear``).
        rtol: relative tolerance for clustering, dead units and near-zero singular values. Default: 1e-3.
        acts: optional (N, n) post-activation values on data; units whose value is 0 on every row are reported as
            ``inactive`` (dead ReLUs on that data). Default: ``None``.

    Examples:
        >>> import torch
        >>> from isotorch.probes import neuron_distances
        >>> w1, w2 = torch.randn(3, 5, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
        >>> w1[2], w2[:, 2] = w1[0], w2[:, 0]                     # unit 2 duplicates unit 0
        >>> r = neuron_distances(w1, None, w2)
        >>> r.min_distance, r.closest_pair, r.n_distinct
        (0.0, (0, 2), 2)
    """
    w1 = _as_weight(w_in, "w_in", "(n, d_in)")
    w2 = _as_weight(w_out, "w_out", "(d_out, n)")
    n = w1.shape[0]
    if w2.shape[1] != n:
        raise ValueError(f"w_out must have shape (d_out, {n}) to match w_in's {n} units, got {tuple(w2.shape)}")
    if b_in is None:
        b = torch.zeros(n, 1, dtype=torch.float64, device=w1.device)
    else:
        if not isinstance(b_in, torch.Tensor) or b_in.shape != (n,):
            raise ValueError(f"b_in must have shape ({n},) or be None, got {tuple(getattr(b_in, 'shape', ()))}")
        if not torch.isfinite(b_in).all():
            raise ValueError("b_in holds NaN or inf values")
        b = b_in.detach().to(device=w1.device, dtype=torch.float64)[:, None]
    check_real(rtol, "rtol", 0, 1, low_open=False, high_open=True)
    theta = torch.cat([w1, b, w2.T.to(w1.device)], dim=1)

    if n > 1:
        dist = torch.cdist(theta, theta) / 2**0.5
        dist.fill_diagonal_(float("inf"))
        flat = int(torch.argmin(dist))
        i, j = divmod(flat, n)
        min_distance, pair = float(dist[i, j]), (min(i, j), max(i, j))
        scale = float(theta.pow(2).sum(1).mean().sqrt())
        adjacent = dist <= rtol * scale
        clusters = _components(adjacent)
    else:
        min_distance, pair, clusters = float("inf"), None, torch.zeros(1, dtype=torch.long)
    sizes = torch.bincount(clusters)
    shared = float((sizes[clusters] > 1).to(torch.float64).mean())

    incoming = torch.cat([w1, b], dim=1).norm(dim=1)
    magnitude = incoming * w2.norm(dim=0).to(w1.device)
    dead = (
        torch.nonzero(magnitude <= rtol * magnitude.max()).flatten() if float(magnitude.max()) > 0 else torch.arange(n)
    )

    s = torch.linalg.svdvals(theta)
    if s.shape[0] < n:  # fewer columns than units: the missing singular values are exactly zero
        s = torch.cat([s, s.new_zeros(n - s.shape[0])])
    near_zero = int((s <= rtol * s[0]).sum()) if float(s[0]) > 0 else n

    inactive = None
    if acts is not None:
        if not isinstance(acts, torch.Tensor) or acts.ndim != 2 or acts.shape[1] != n:
            raise ValueError(
                f"acts must have shape (N, {n}) (post-activation values), got {getattr(acts, 'shape', acts)}"
            )
        inactive = tuple(torch.nonzero((acts.detach() != 0).sum(0) == 0).flatten().tolist())
    return NeuronDistances(
        width=n,
        min_distance=min_distance,
        closest_pair=pair,
        n_distinct=int(sizes.numel()),
        shared_fraction=shared,
        clusters=tuple(clusters.tolist()),
        dead=tuple(dead.tolist()),
        singular_values=tuple(s.tolist()),
        rotation_distance=float(s[-1]),
        n_near_zero=near_zero,
        inactive=inactive,
        rtol=float(rtol),
        settings={"bias": b_in is not None},
    )
