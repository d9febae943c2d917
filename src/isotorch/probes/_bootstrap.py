"""Bias-corrected and accelerated (BCa) bootstrap over samples, for statistics that are smooth functions of means.

A statistic T = g(F̄) of the column means F̄ = (1/N) Σ_s F_s of per-sample features F (N, m) is resampled with
replacement over the N rows (B replicates), and the interval is Efron's BCa (1987):

    z₀ = Φ⁻¹((#{T*_b < T} + ½ #{T*_b = T}) / B),   a = Σ_i (T̄₍.₎ − T₍i₎)³ / (6 (Σ_i (T̄₍.₎ − T₍i₎)²)^{3/2}),
    α₁,₂ = Φ(z₀ + (z₀ + z)/(1 − a(z₀ + z)))   for z = Φ⁻¹(α/2), Φ⁻¹(1 − α/2),

the interval being the α₁ and α₂ quantiles of the replicates. T₍i₎ are the jackknife (leave-one-out) values; for a
function of means they cost one pass, F̄₍i₎ = (N F̄ − F_i)/(N − 1). ``scipy.stats.bootstrap(method="BCa")`` computes
the same interval (the tests compare them), but its jackknife is O(N²).

Statistics that are sums over privileged planes are accumulated one block of planes at a time: the resamples are
drawn from generators seeded per block of replicates, so every block of planes sees the same resamples.
"""

from __future__ import annotations

import math

import torch

from isotorch._util import draw_seed

__all__ = ["ResampleStream", "bca_bounds"]

# Elements of one (replicates × rows) block of resample counts.
COUNT_ELEMENTS = 1 << 22


class ResampleStream:
    """The same B bootstrap resamples of N rows, replayable block by block of replicates.

    ``means(features)`` returns the (B, m) column means of ``features`` (N, m) under every resample; calling it again
    with other features (another block of planes) uses the same resamples.
    """

    def __init__(self, n_rows: int, n_bootstrap: int, generator: torch.Generator | None, device) -> None:
        self.n_rows = n_rows
        self.n_bootstrap = n_bootstrap
        self.device = device
        self.seed = draw_seed(generator)
        self.block = max(1, min(n_bootstrap, COUNT_ELEMENTS // max(n_rows, 1)))

    def _counts(self, b0: int) -> torch.Tensor:
        b = min(self.block, self.n_bootstrap - b0)
        gen = torch.Generator().manual_seed(self.seed + b0)
        idx = torch.randint(0, self.n_rows, (b, self.n_rows), generator=gen)
        counts = torch.zeros(b, self.n_rows, dtype=torch.float64)
        counts.scatter_add_(1, idx, torch.ones(b, self.n_rows, dtype=torch.float64))
        return counts.to(self.device)

    def blocks(self):
        """Yield (start, counts) for each block of replicates: counts (b, N) of every row in each resample."""
        for b0 in range(0, self.n_bootstrap, self.block):
            yield b0, self._counts(b0)

    def means(self, features: torch.Tensor) -> torch.Tensor:
        out = [self._counts(b0) @ features for b0 in range(0, self.n_bootstrap, self.block)]
        return torch.cat(out) / self.n_rows


def jackknife_means(features: torch.Tensor) -> torch.Tensor:
    """(N, m) leave-one-out column means."""
    n = features.shape[0]
    return (features.sum(0, keepdim=True) - features) / (n - 1)


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _normal_ppf(p: float) -> float:
    from scipy.special import ndtri

    return float(ndtri(p))


def bca_bounds(
    estimate: torch.Tensor, replicates: torch.Tensor, jackknife: torch.Tensor, confidence: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCa bounds of each statistic: ``estimate`` (k,), ``replicates`` (B, k), ``jackknife`` (N, k).

    Returns (low, high), each (k,); NaN where the estimate, a replicate or a jackknife value is not finite.
    """
    k = estimate.shape[0]
    low = torch.full((k,), float("nan"), dtype=torch.float64)
    high = torch.full((k,), float("nan"), dtype=torch.float64)
    alpha = (1.0 - confidence) / 2.0
    for c in range(k):
        t, r, jk = float(estimate[c]), replicates[:, c].double(), jackknife[:, c].double()
        if not math.isfinite(t) or not bool(torch.isfinite(r).all()) or not bool(torch.isfinite(jk).all()):
            continue
        if float(r.max() - r.min()) == 0.0:
            low[c] = high[c] = t
            continue
        b = r.numel()
        frac = (float((r < t).sum()) + 0.5 * float((r == t).sum())) / b
        z0 = _normal_ppf(min(max(frac, 0.5 / b), 1.0 - 0.5 / b))
        d = jk.mean() - jk
        spread = float((d * d).sum()) ** 1.5
        a = float((d**3).sum()) / (6.0 * spread) if spread > 0 else 0.0
        levels = []
        for z in (_normal_ppf(alpha), _normal_ppf(1.0 - alpha)):
            shifted = z0 + z
            levels.append(_normal_cdf(z0 + shifted / (1.0 - a * shifted)))
        lo, hi = torch.quantile(r, torch.tensor(levels, dtype=torch.float64, device=r.device)).tolist()
        low[c], high[c] = lo, hi
    return low, high
