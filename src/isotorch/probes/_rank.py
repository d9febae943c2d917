"""Ranks of representations and weights, and their profile through depth (the tunnel effect).

For the singular values s₁ ≥ … ≥ s_k of a matrix H:

    numerical rank  = #{i : s_i > τ·s₁}
    effective rank  = exp(−Σ_i p_i log p_i),  p_i = s_i / Σ_j s_j        (Roy & Vetterli 2007)
    stable rank     = ‖H‖_F² / s₁² = Σ_i s_i² / s₁²

``rank_profile`` computes them per layer from the streamed covariance Σ of centred features (s_i ∝ √λ_i(Σ)), so
any amount of data fits in memory. Eigenvalues of Σ carry an absolute error of about d·eps·λ₁, so singular values
below √(d·eps)·s₁ (≈ 1e-7 at d = 20) are not resolved that way: for a tolerance below ``covariance_floor(d)`` the
ranks come from an SVD of the centred rows kept by a reservoir (``svd_rows`` of them) instead.
Per head of an attention layer, use W_Q W_Kᵀ and W_V W_O (the factors alone are ambiguous up to GL(d_head)).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from isotorch._util import check_int, check_matrix, check_real, json_safe

__all__ = ["RankProfile", "effective_rank", "numerical_rank", "rank_profile", "stable_rank"]


def _singular_values(h: object, name: str = "h") -> torch.Tensor:
    h = check_matrix(h, name)
    if not torch.isfinite(h).all():
        raise ValueError(f"{name} holds NaN or inf values; singular values are undefined")
    return torch.linalg.svdvals(h.detach().to(torch.float64))


def _numerical_rank(s: torch.Tensor, tol: float) -> int:
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    return int((s > tol * s[0]).sum())


def _effective_rank(s: torch.Tensor) -> float:
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * torch.log(p)).sum()))


def _stable_rank(s: torch.Tensor) -> float:
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0.0
    return float((s * s).sum() / (s[0] * s[0]))


def _check_tol(tol: object) -> float:
    return check_real(tol, "tol", 0, 1, low_open=False, high_open=True)  # relative to the largest singular value


def numerical_rank(h: torch.Tensor, tol: float | None = None) -> int:
    """Number of singular values above ``tol`` times the largest: #{i : s_i > τ·s₁}.

    Args:
        h: (m, n) matrix (weights, or features with one sample per row).
        tol: relative tolerance τ in [0, 1). Default: ``None``, which uses ``torch.linalg.matrix_rank``'s rule
            τ = max(m, n)·eps of ``h``'s dtype. For learned representations τ = 1e-3 is more telling.

    Shape:
        h: (m, n).

    Examples:
        >>> import torch
        >>> from isotorch.probes import numerical_rank
        >>> h = torch.randn(50, 3, dtype=torch.float64) @ torch.randn(3, 20, dtype=torch.float64)
        >>> numerical_rank(h)
        3
    """
    s = _singular_values(h)
    if tol is None:
        tol = max(h.shape) * torch.finfo(h.dtype).eps
    return _numerical_rank(s, _check_tol(tol))


def effective_rank(h: torch.Tensor) -> float:
    """Roy–Vetterli effective rank exp(−Σ p_i log p_i) with p_i = s_i/Σ_j s_j (0 for the zero matrix).

    Between 1 and min(m, n); equal to k for a matrix with k equal non-zero singular values.

    Args:
        h: (m, n) matrix.

    Examples:
        >>> import torch
        >>> from isotorch.probes import effective_rank
        >>> round(effective_rank(torch.diag(torch.tensor([2.0, 2.0, 2.0, 0.0]))), 6)
        3.0
    """
    return _effective_rank(_singular_values(h))


def stable_rank(h: torch.Tensor) -> float:
    """Stable rank ‖h‖_F²/s₁² = Σ s_i²/s₁² (0 for the zero matrix); at most the rank, and robust to small s_i.

    Args:
        h: (m, n) matrix.

    Examples:
        >>> import torch
        >>> from isotorch.probes import stable_rank
        >>> stable_rank(torch.diag(torch.tensor([2.0, 1.0])))
        1.25
    """
    return _stable_rank(_singular_values(h))


def covariance_floor(dim: int) -> float:
    """Smallest relative singular value that covariance eigenvalues resolve: 10·√(d·eps) in float64."""
    return 10.0 * (max(dim, 1) * torch.finfo(torch.float64).eps) ** 0.5


def ranks_from_rows(rows: torch.Tensor, tol: float) -> tuple[int, float, float]:
    """(numerical, effective, stable) rank of the centred rows from their singular values (float64 SVD)."""
    x = rows.to(torch.float64)
    s = torch.linalg.svdvals(x - x.mean(0, keepdim=True))
    return _numerical_rank(s, tol), _effective_rank(s), _stable_rank(s)


def ranks_from_covariance(cov: torch.Tensor, tol: float) -> tuple[int, float, float]:
    """(numerical, effective, stable) rank of centred features from their covariance: s_i ∝ √λ_i(Σ)."""
    evals = torch.linalg.eigvalsh(cov.to(torch.float64)).flip(0).clamp(min=0.0)
    s = torch.sqrt(evals)
    return _numerical_rank(s, tol), _effective_rank(s), _stable_rank(s)


@dataclass(frozen=True)
class RankProfile:
    """Ranks of centred features, layer by layer.

    Attributes:
        layers: layer names in the order given.
        dims: feature dimension d of each layer.
        n_samples: rows seen per layer (N).
        numerical_rank: #{s_i > tol·s₁} per layer.
        effective_rank: Roy–Vetterli effective rank per layer.
        stable_rank: Σ s_i²/s₁² per layer.
        limited_by_samples: per layer, whether N − 1 < d (the centred rank is then capped at N − 1, not a property
            of the representation).
        tol: the relative tolerance of the numerical rank.
        method: per layer, ``"covariance"`` (eigenvalues of the streamed covariance) or ``"svd"`` (SVD of the
            centred rows of a reservoir, used when ``tol`` is below what the covariance resolves).
        settings: the feature mode and other collection settings.
    """

    layers: tuple[str, ...]
    dims: tuple[int, ...]
    n_samples: tuple[int, ...]
    numerical_rank: tuple[int, ...]
    effective_rank: tuple[float, ...]
    stable_rank: tuple[float, ...]
    limited_by_samples: tuple[bool, ...]
    tol: float
    method: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return json_safe(
            {
                "layers": list(self.layers),
                "dims": list(self.dims),
                "n_samples": list(self.n_samples),
                "numerical_rank": list(self.numerical_rank),
                "effective_rank": list(self.effective_rank),
                "stable_rank": list(self.stable_rank),
                "limited_by_samples": list(self.limited_by_samples),
                "tol": self.tol,
                "method": list(self.method),
                "settings": dict(self.settings),
            }
        )

    def plot(self, ax=None, *, title: str | None = None):
        """Ranks against depth (one marker per layer); returns the matplotlib ``Figure``."""
        from isotorch.probes._plotting import new_axes

        fig, ax = new_axes(ax)
        x = list(range(len(self.layers)))
        ax.plot(x, self.numerical_rank, "o-", label=f"numerical rank (τ = {self.tol:g})")
        ax.plot(x, self.effective_rank, "s-", label="effective rank")
        ax.plot(x, self.stable_rank, "^-", label="stable rank")
        ax.plot(x, self.dims, ":", color="0.5", label="dimension")
        ax.set_xticks(x)
        ax.set_xticklabels(self.layers, rotation=45, ha="right", fontsize="small")
        ax.set_yscale("log")
        ax.set_ylabel("rank")
        ax.set_title(title or "rank through depth")
        ax.legend(fontsize="small")
        return fig


def rank_profile(
    model: torch.nn.Module,
    data: Iterable,
    layers: list[str],
    *,
    tol: float = 1e-3,
    features: str = "flatten",
    channel_dim: int = 1,
    max_samples: int | None = None,
    device: torch.device | str | None = None,
    nan_policy: str = "raise",
    progress: bool = False,
    svd_rows: int = 10_000,
) -> RankProfile:
    """Numerical, effective and stable rank of each layer's centred features, streamed over ``data``.

    One pass with :func:`collect` (``probes=("moments",)``) accumulates each layer's covariance in float64; ranks
    come from its eigenvalues, s_i = √(N·λ_i). A ``tol`` below :func:`covariance_floor` of a layer's width (about
    1e-6) is beyond what those eigenvalues resolve; the pass then also keeps a reservoir of ``svd_rows`` rows and
    takes that layer's ranks from an SVD of the centred rows (``method`` says which, per layer; with more inputs
    than ``svd_rows`` the SVD sees a uniform subsample). The tunnel effect (Masarczyk et al. 2023) shows as ranks
    that rise, then fall and stay low in the last layers. Use 5–10k held-out inputs and say which ``features``
    mode you used.

    Args:
        model: the network (run in eval mode under ``torch.no_grad``).
        data: batches: tensors, (x, y) pairs, or a DataLoader.
        layers: module names from ``model.named_modules()``.
        tol: relative tolerance τ of the numerical rank. Default: 1e-3.
        features: how outputs with more than 2 dims become rows, as in :func:`collect`. Default: ``"flatten"``.
        channel_dim: the channel axis for ``features="channels"`` or ``"pool"``. Default: 1.
        max_samples: stop after this many inputs. Default: ``None`` (all of ``data``).
        device: where to run. Default: ``None`` (the model's device).
        nan_policy: ``"raise"`` or ``"omit"`` for non-finite activation rows. Default: ``"raise"``.
        progress: show a progress bar. Default: ``False``.
        svd_rows: rows kept for the SVD when ``tol`` is below the covariance floor. Default: 10,000.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from isotorch.probes import rank_profile
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> prof = rank_profile(model, [torch.randn(100, 8) for _ in range(3)], ["0", "2"])
        >>> prof.numerical_rank
        (8, 2)
    """
    from isotorch.probes._collect import collect

    tol = _check_tol(tol)
    check_int(svd_rows, "svd_rows", minimum=2)
    fine = tol < covariance_floor(1 << 20)  # some layer (width up to 2**20) may need the SVD: keep rows
    result = collect(
        model,
        data,
        layers,
        probes=("moments", "samples") if fine else ("moments",),
        reservoir_size=svd_rows,
        features=features,
        channel_dim=channel_dim,
        max_samples=max_samples,
        device=device,
        nan_policy=nan_policy,
        progress=progress,
    )
    dims, counts, num, eff, stab, limited, methods = [], [], [], [], [], [], []
    for name in result.layers:
        stats = result[name].moments
        assert stats is not None  # requested from collect above
        if stats.count < 2:
            raise ValueError(f"layer {name!r} produced {stats.count} row(s); ranks of centred features need >= 2")
        dim = stats.dim
        assert dim is not None  # two or more rows seen
        if tol < covariance_floor(dim):
            samples = result[name].samples
            assert samples is not None  # requested from collect above whenever the floor can bind
            n, e, s = ranks_from_rows(samples.values, tol)
            methods.append("svd")
        else:
            n, e, s = ranks_from_covariance(stats.covariance(correction=0), tol)
            methods.append("covariance")
        dims.append(dim)
        counts.append(stats.count)
        num.append(n)
        eff.append(e)
        stab.append(s)
        limited.append(stats.count - 1 < dim)
    return RankProfile(
        layers=tuple(result.layers),
        dims=tuple(dims),
        n_samples=tuple(counts),
        numerical_rank=tuple(num),
        effective_rank=tuple(eff),
        stable_rank=tuple(stab),
        limited_by_samples=tuple(limited),
        tol=tol,
        method=tuple(methods),
        settings={"features": features, "channel_dim": channel_dim, "max_samples": max_samples, "svd_rows": svd_rows},
    )
