"""Privileged-Plane Projective method (PPP): where in each privileged plane the activation directions fall.

For each plane with frame (e₁, e₂), every unit activation â with in-plane norm ρ = ‖(â·e₁, â·e₂)‖ ≥ ε contributes
its point c = (â·e₁, â·e₂) in the unit disk; points are pooled over planes, histogrammed on an R×R grid over
[−1, 1]² and smoothed with a Gaussian of standard deviation ``bandwidth``. Projection alone over-populates the
diagonals (volume effect), so the image shown is the ratio to the same construction for an isotropic Gaussian
sample of the same size in the same planes:

    ratio(c) = density_data(c) / density_isotropic(c)

Ratios above 1 mark directions the data prefers (clusters = quantisation); pixels where the reference density is
below 10⁻³ of its maximum are NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from isotorch._util import check_generator, check_int, check_real, draw_seed, json_safe
from isotorch.probes._planes import (
    block_sizes,
    chunk_elements_for,
    iter_planes,
    parallel_rows,
    prepare,
)

__all__ = ["PPPResult", "ppp"]

_FLOOR = 1e-3


@dataclass(frozen=True)
class PPPResult:
    """PPP density images on an R×R grid over [−1, 1]² (rows: e₂ from −1 to 1; columns: e₁ from −1 to 1).

    Attributes:
        image: (R, R) density ratio data/isotropic (NaN where the reference is negligible).
        density: (R, R) smoothed data density of in-plane points per plane and sample (integrates to
            ``kept_fraction``).
        reference: (R, R) the same for the isotropic Gaussian sample.
        epsilon: minimum in-plane norm of a counted point.
        bandwidth: Gaussian smoothing standard deviation (disk units).
        kept_fraction: fraction of (sample, plane) pairs with ρ ≥ ε in the data.
        reference_kept_fraction: the same for the isotropic sample.
        n_samples: rows used.
        n_planes: planes pooled.
        excluded_nonfinite, excluded_zero: rows dropped.
        settings: basis kind, planes, resolution.
    """

    image: torch.Tensor
    density: torch.Tensor
    reference: torch.Tensor
    epsilon: float
    bandwidth: float
    kept_fraction: float
    reference_kept_fraction: float
    n_samples: int
    n_planes: int
    excluded_nonfinite: int = 0
    excluded_zero: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (images as nested lists; NaN → None)."""

        def grid(t: torch.Tensor):
            return [[None if math.isnan(v) else v for v in row] for row in t.tolist()]

        return json_safe(
            {
                "image": grid(self.image),
                "density": grid(self.density),
                "reference": grid(self.reference),
                "epsilon": self.epsilon,
                "bandwidth": self.bandwidth,
                "kept_fraction": self.kept_fraction,
                "reference_kept_fraction": self.reference_kept_fraction,
                "n_samples": self.n_samples,
                "n_planes": self.n_planes,
                "excluded_nonfinite": self.excluded_nonfinite,
                "excluded_zero": self.excluded_zero,
                "settings": dict(self.settings),
            }
        )

    def __repr__(self) -> str:
        finite = self.image[torch.isfinite(self.image)]
        top = float(finite.max()) if finite.numel() else float("nan")
        return (
            f"PPPResult(resolution={self.image.shape[0]}, planes={self.n_planes}, epsilon={self.epsilon:.4g}, "
            f"max ratio={top:.4g}, kept_fraction={self.kept_fraction:.4g}, n_samples={self.n_samples})"
        )

    def plot(self, ax=None, *, title: str | None = None, limit: float = 3.0):
        """Show log₂ of the density ratio (red: more than isotropic, blue: less), clipped at ±``limit``."""
        from isotorch.probes._plotting import new_axes

        fig, ax = new_axes(ax, figsize=(5.0, 4.5))
        log_ratio = torch.log2(self.image.clamp(min=2.0**-limit)).cpu().numpy()
        image = ax.imshow(log_ratio, origin="lower", extent=(-1, 1, -1, 1), cmap="RdBu_r", vmin=-limit, vmax=limit)
        theta = torch.linspace(0, 2 * math.pi, 200)
        ax.plot(torch.cos(theta).numpy(), torch.sin(theta).numpy(), color="0.3", lw=0.5)
        ax.set_xlabel("â·e₁")
        ax.set_ylabel("â·e₂")
        ax.set_aspect("equal")
        fig.colorbar(image, ax=ax, label="log₂ density / isotropic")
        ax.set_title(title or f"PPP ({self.n_planes} planes, ε = {self.epsilon:.3g})")
        return fig


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing with zero padding (sigma in pixels)."""
    if sigma <= 0:
        return image
    radius = max(1, math.ceil(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum())[None, None, :]
    out = torch.nn.functional.conv1d(image[:, None, :], kernel, padding=radius)[:, 0, :]
    out = torch.nn.functional.conv1d(out.T.contiguous()[:, None, :], kernel, padding=radius)[:, 0, :].T
    return out.contiguous()


def ppp(
    acts: torch.Tensor,
    basis: torch.Tensor | str | None = None,
    *,
    epsilon: float | None = None,
    resolution: int = 300,
    bandwidth: float = 0.02,
    planes: str = "comb",
    max_planes: int | None = None,
    generator: torch.Generator | None = None,
    nan_policy: str = "raise",
) -> PPPResult:
    """Privileged-plane density of activation directions, normalised by an isotropic Gaussian sample.

    ratio(c) = density_data(c)/density_isotropic(c) over in-plane points c = (â·e₁, â·e₂) with ‖c‖ ≥ ε, pooled over
    planes and smoothed (module docstring). The isotropic reference is a Gaussian sample of the same size, drawn
    from ``generator`` and projected onto the same planes.

    Args:
        acts: (N, n) activations (rows normalised; zero rows dropped and counted).
        basis: as in :func:`srm`. Default: ``None`` (standard basis).
        epsilon: minimum in-plane norm ρ of a counted point, in (−1, 1); default as in :func:`srm`.
        resolution: grid size R. Default: 300.
        bandwidth: Gaussian smoothing standard deviation in disk units (the grid step is 2/R). Default: 0.02.
        planes: ``"comb"`` or ``"perm"``. Default: ``"comb"``.
        max_planes: random subset of planes. Default: ``None``.
        generator: ``torch.Generator`` for the reference sample, basis and plane subset, or ``None`` (torch's global
            RNG). Default: ``None``.
        nan_policy: ``"raise"`` or ``"omit"``. Default: ``"raise"``.

    Shape:
        acts: (N, n); images: (R, R).

    Examples:
        >>> import torch
        >>> from isotorch.probes import ppp
        >>> g = torch.Generator().manual_seed(0)
        >>> axes = torch.eye(6)[torch.randint(0, 6, (3000,), generator=g)] + 0.05 * torch.randn(3000, 6, generator=g)
        >>> r = ppp(axes, resolution=64, generator=torch.Generator().manual_seed(0))
        >>> r.image.shape, bool(r.image[32, 62] > 10), bool(r.image[54, 54] < 0.1)   # the e₁ axis vs the diagonal
        (torch.Size([64, 64]), True, True)
    """
    resolution = check_int(resolution, "resolution", minimum=2)
    check_real(bandwidth, "bandwidth", 0, 2, low_open=False, high_open=True)  # disk units
    gen = check_generator(generator)
    setup = prepare(acts, basis, epsilon, planes, max_planes, gen, nan_policy)
    device = setup.acts.device
    n, n_planes = setup.n_features, setup.n_planes
    eps2 = setup.epsilon**2 if setup.epsilon > 0 else 0.0
    row_chunk, plane_chunk = block_sizes(n_planes, chunk_elements_for(device))
    ref_seed = draw_seed(gen)

    def histogram(source: torch.Tensor | None):
        def partial(r0: int, r1: int):
            hist = torch.zeros(resolution * resolution, dtype=torch.long, device=device)
            kept = 0
            for start in range(r0, r1, row_chunk):
                stop = min(start + row_chunk, r1)
                if source is None:
                    block_gen = torch.Generator().manual_seed(ref_seed + start)
                    a = torch.randn(stop - start, n, generator=block_gen, dtype=torch.float64).to(device)
                else:
                    a = source[start:stop].to(torch.float64)
                a = a / torch.linalg.vector_norm(a, dim=1, keepdim=True)
                coords = (a if setup.standard else a @ setup.basis.T).T.contiguous()
                for _, _, p, q in iter_planes(coords, setup.i, setup.j, setup.frames, plane_chunk):
                    keep = (p * p + q * q >= eps2).view(-1)
                    ix = torch.floor((p + 1.0) * (resolution / 2.0)).clamp_(0, resolution - 1)
                    iy = torch.floor((q + 1.0) * (resolution / 2.0)).clamp_(0, resolution - 1)
                    hist.scatter_add_(0, (iy * resolution + ix).long().view(-1), keep.long())
                    kept += int(keep.sum())
            return hist, kept

        parts = parallel_rows(partial, setup.n_samples, device)
        hist = sum(p[0] for p in parts).view(resolution, resolution).to(torch.float64)
        return hist, sum(p[1] for p in parts)

    data_hist, data_kept = histogram(setup.acts)
    ref_hist, ref_kept = histogram(None)
    sigma = bandwidth * resolution / 2.0
    pixel_area = (2.0 / resolution) ** 2
    norm = setup.n_samples * n_planes * pixel_area
    density = _blur(data_hist, sigma) / norm
    reference = _blur(ref_hist, sigma) / norm
    floor = _FLOOR * float(reference.max())
    image = torch.where(reference > floor, density / reference.clamp(min=1e-300), float("nan"))
    total = setup.n_samples * n_planes
    return PPPResult(
        image=image,
        density=density,
        reference=reference,
        epsilon=setup.epsilon,
        bandwidth=float(bandwidth),
        kept_fraction=data_kept / total,
        reference_kept_fraction=ref_kept / total,
        n_samples=setup.n_samples,
        n_planes=n_planes,
        excluded_nonfinite=setup.excluded_nonfinite,
        excluded_zero=setup.excluded_zero,
        settings={"basis": setup.kind, "planes": planes, "max_planes": max_planes, "resolution": resolution},
    )
