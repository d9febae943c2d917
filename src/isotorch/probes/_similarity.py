"""Comparing representations: kernel alignment and (debiased) linear CKA, within or across networks.

    a(K_A, K_B)  = ⟨K_A, K_B⟩_F / (‖K_A‖_F ‖K_B‖_F)
    linear CKA   = ‖Y_cᵀX_c‖_F² / (‖X_cᵀX_c‖_F ‖Y_cᵀY_c‖_F)            (column-centred X, Y)

Linear CKA is HSIC(K, L)/√(HSIC(K, K)·HSIC(L, L)) with the linear kernels K = X_cX_cᵀ, L = Y_cY_cᵀ. Its debiased
form replaces each HSIC by the unbiased estimator (Song et al. 2012), which for centred features is, up to a factor
that cancels,

    HSIC_u(X, Y) ∝ ‖YᵀX‖_F² − n/(n−2)·Σ_i ‖x_i‖²‖y_i‖² + (Σ_i ‖x_i‖²)(Σ_i ‖y_i‖²)/((n−1)(n−2)),

so independent features score ≈ 0 at any sample size (the plain estimator is biased upwards when d is large
relative to n). Both are invariant to orthogonal maps and isotropic scaling of either side.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from isotorch._util import check_int, check_matrix, draw_seed, json_safe
from isotorch.probes._accumulators import Reservoir
from isotorch.probes._collect import (
    batch_size,
    check_common,
    check_layers,
    evaluation,
    hooked,
    model_device,
    progress_bar,
    run_model,
    split_batch,
    to_rows,
    total_inputs,
)

__all__ = ["LayerSimilarity", "compare_layers", "kernel_alignment", "linear_cka"]


def _hsic_terms(x: torch.Tensor, y: torch.Tensor) -> float:
    """⟨X_cX_cᵀ, Y_cY_cᵀ⟩_F via the smaller of the feature-space and sample-space products."""
    n, p = x.shape
    q = y.shape[1]
    if p * q <= n * n:
        return float(torch.linalg.matrix_norm(y.T @ x) ** 2)
    return float(((x @ x.T) * (y @ y.T)).sum())


def _debias(dot: float, r: torch.Tensor, s: torch.Tensor, n: int) -> float:
    return dot - n / (n - 2) * float(r @ s) + float(r.sum()) * float(s.sum()) / ((n - 1) * (n - 2))


class _Centred(NamedTuple):
    """One representation made ready for CKA against others: computed once per layer, not once per pair."""

    rows: torch.Tensor  # column-centred float64 features, (N, p)
    norms: torch.Tensor  # squared row norms ‖x_i‖², (N,)
    self_hsic: float  # ⟨X_cX_cᵀ, X_cX_cᵀ⟩_F, debiased when asked


def _centred(x: torch.Tensor, debiased: bool, device: torch.device | None = None) -> _Centred:
    x = x.detach().to(device=x.device if device is None else device, dtype=torch.float64)
    x = x - x.mean(dim=0)
    norms = (x * x).sum(1)
    self_hsic = _hsic_terms(x, x)
    if debiased:
        self_hsic = _debias(self_hsic, norms, norms, x.shape[0])
    return _Centred(x, norms, self_hsic)


def _cka(a: _Centred, b: _Centred, debiased: bool) -> float:
    xy = _hsic_terms(a.rows, b.rows)
    if debiased:
        xy = _debias(xy, a.norms, b.norms, a.rows.shape[0])
    xx, yy = a.self_hsic, b.self_hsic
    denom = (xx * yy) ** 0.5 if xx > 0 and yy > 0 else 0.0
    return xy / denom if denom > 0 else float("nan")


def _finite(rows: torch.Tensor, layer: str, model: str) -> torch.Tensor:
    if not torch.isfinite(rows).all():
        raise ValueError(f"layer {layer!r} of {model} gave NaN or inf values; CKA needs finite activations")
    return rows


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, debiased: bool = False) -> float:
    """Linear centred kernel alignment between two representations of the same N inputs.

    CKA = ‖Y_cᵀX_c‖_F² / (‖X_cᵀX_c‖_F ‖Y_cᵀY_c‖_F) with column-centred X, Y; ``debiased=True`` uses the unbiased
    HSIC estimator (module docstring), for which independent representations give ≈ 0.

    Args:
        x: (N, p) features of model A.
        y: (N, q) features of model B for the same inputs, in the same order.
        debiased: use the unbiased HSIC estimator (needs N ≥ 4). Default: ``False``.

    Shape:
        x: (N, p); y: (N, q); output: a float in [0, 1] (debiased: may dip slightly below 0).

    Examples:
        >>> import torch
        >>> from isotorch.probes import linear_cka
        >>> x = torch.randn(200, 10, dtype=torch.float64)
        >>> q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
        >>> round(linear_cka(x, 3 * x @ q), 6)                # invariant to rotation and scale
        1.0
        >>> abs(linear_cka(x, torch.randn(200, 10, dtype=torch.float64), debiased=True)) < 0.05
        True
    """
    x = check_matrix(x, "x", min_rows=2)
    y = check_matrix(y, "y", min_rows=2)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must describe the same inputs: got {x.shape[0]} and {y.shape[0]} rows")
    for name, t in (("x", x), ("y", y)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} holds NaN or inf values")
    n = x.shape[0]
    if debiased and n < 4:
        raise ValueError(f"debiased CKA needs at least 4 samples, got {n}")
    return _cka(_centred(x, debiased), _centred(y, debiased, x.device), debiased)


def kernel_alignment(k_a: torch.Tensor, k_b: torch.Tensor, *, centered: bool = False) -> float:
    """Kernel alignment ⟨K_A, K_B⟩_F / (‖K_A‖_F ‖K_B‖_F) of two N×N Gram matrices.

    With ``centered=True`` both are centred first (HKH with H = I − 𝟙𝟙ᵀ/N), which gives kernel CKA; linear
    kernels then reproduce :func:`linear_cka`.

    Args:
        k_a: (N, N) Gram matrix, e.g. h^A(x_i)·h^A(x_j).
        k_b: (N, N) Gram matrix on the same inputs.
        centered: centre the kernels. Default: ``False``.

    Examples:
        >>> import torch
        >>> from isotorch.probes import kernel_alignment, linear_cka
        >>> x, y = torch.randn(50, 4, dtype=torch.float64), torch.randn(50, 6, dtype=torch.float64)
        >>> abs(kernel_alignment(x @ x.T, y @ y.T, centered=True) - linear_cka(x, y)) < 1e-12
        True
    """
    for name, k in (("k_a", k_a), ("k_b", k_b)):
        check_matrix(k, name)
        if k.shape[0] != k.shape[1]:
            raise ValueError(f"{name} must be a square (N, N) Gram matrix, got shape {tuple(k.shape)}")
        if not torch.isfinite(k).all():
            raise ValueError(f"{name} holds NaN or inf values")
    if k_a.shape != k_b.shape:
        raise ValueError(f"k_a and k_b must have the same shape, got {tuple(k_a.shape)} and {tuple(k_b.shape)}")
    a = k_a.detach().to(torch.float64)
    b = k_b.detach().to(device=a.device, dtype=torch.float64)
    if centered:
        a = a - a.mean(0, keepdim=True) - a.mean(1, keepdim=True) + a.mean()
        b = b - b.mean(0, keepdim=True) - b.mean(1, keepdim=True) + b.mean()
    na, nb = torch.linalg.matrix_norm(a), torch.linalg.matrix_norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    return float((a * b).sum() / (na * nb))


@dataclass(frozen=True)
class LayerSimilarity:
    """CKA between every layer of model A (rows) and every layer of model B (columns) on the same inputs.

    Attributes:
        matrix: (L_A, L_B) CKA values.
        layers_a: layer names of model A.
        layers_b: layer names of model B.
        n_samples: inputs compared (a seeded uniform sample of the data, the same for both models).
        debiased: whether the debiased estimator was used.
        settings: feature mode, seed, sample cap.
    """

    matrix: torch.Tensor
    layers_a: tuple[str, ...]
    layers_b: tuple[str, ...]
    n_samples: int
    debiased: bool
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return json_safe(
            {
                "matrix": self.matrix.tolist(),
                "layers_a": list(self.layers_a),
                "layers_b": list(self.layers_b),
                "n_samples": self.n_samples,
                "debiased": self.debiased,
                "settings": dict(self.settings),
            }
        )

    def plot(self, ax=None, *, title: str | None = None):
        """Heat map of the CKA matrix; returns the matplotlib ``Figure``."""
        from isotorch.probes._plotting import new_axes

        fig, ax = new_axes(ax)
        image = ax.imshow(self.matrix.cpu().numpy(), vmin=0.0, vmax=1.0, cmap="magma", origin="lower")
        ax.set_yticks(range(len(self.layers_a)))
        ax.set_yticklabels(self.layers_a, fontsize="small")
        ax.set_xticks(range(len(self.layers_b)))
        ax.set_xticklabels(self.layers_b, rotation=45, ha="right", fontsize="small")
        ax.set_ylabel("model A")
        ax.set_xlabel("model B")
        fig.colorbar(image, ax=ax, label="debiased CKA" if self.debiased else "linear CKA")
        ax.set_title(title or f"layer similarity ({self.n_samples} inputs)")
        return fig


def compare_layers(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    data: Iterable,
    layers_a: Sequence[str],
    layers_b: Sequence[str] | None = None,
    *,
    debiased: bool = False,
    samples: int = 5_000,
    max_samples: int | None = None,
    features: str = "flatten",
    channel_dim: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    eval_mode: bool = True,
    progress: bool = False,
) -> LayerSimilarity:
    """Linear CKA between layers of two models, fed the same batches in one pass over ``data``.

    Both models see every batch; each layer keeps a reservoir of ``samples`` rows with the same keys, so the
    compared rows come from the same inputs (shuffling data loaders are fine). CKA is computed on those rows.

    Args:
        model_a: the first network.
        model_b: the second network (may be the same object as ``model_a``).
        data: batches as in :func:`collect`; labels are ignored.
        layers_a: module names of model A.
        layers_b: module names of model B. Default: ``None`` (= ``layers_a``).
        debiased: use the debiased CKA. Default: ``False``.
        samples: inputs kept for the comparison (a uniform sample). Default: 5,000.
        max_samples: stop after this many inputs. Default: ``None``.
        features: ``"flatten"`` or ``"pool"`` (one row per input is needed). Default: ``"flatten"``.
        channel_dim: channel axis for ``"pool"``. Default: 1.
        generator: ``torch.Generator`` for the reservoirs, or ``None`` (torch's global RNG); one seed is drawn from
            it for every layer of both models, recorded in ``settings["seed"]``. Default: ``None``.
        device: where to run both models. Default: ``None`` (each model's own device).
        eval_mode: run in eval mode. Default: ``True``.
        progress: show a progress bar. Default: ``False``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from isotorch.probes import compare_layers
        >>> a = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> sim = compare_layers(a, a, [torch.randn(64, 5) for _ in range(4)], ["0", "2"])
        >>> torch.diagonal(sim.matrix).round(decimals=6).tolist()
        [1.0, 1.0]
    """
    layers_a = check_layers(model_a, layers_a)
    layers_b = check_layers(model_b, layers_a if layers_b is None else layers_b)
    check_common(features, channel_dim, max_samples, "raise")
    if features == "channels":
        raise ValueError("features must be 'flatten' or 'pool' for compare_layers (one row per input)")
    check_int(samples, "samples", minimum=4)
    dev_a, dev_b = model_device(model_a, device), model_device(model_b, device)
    seed = draw_seed(generator)
    res_a = {n: Reservoir(samples, generator=torch.Generator().manual_seed(seed)) for n in layers_a}
    res_b = {n: Reservoir(samples, generator=torch.Generator().manual_seed(seed)) for n in layers_b}
    n_inputs = 0
    with (
        evaluation(model_a, eval_mode),
        evaluation(model_b, eval_mode),
        hooked(model_a, layers_a) as cap_a,
        hooked(model_b, layers_b) as cap_b,
        torch.no_grad(),
        progress_bar(progress, total_inputs(data, max_samples), "comparing layers") as advance,
    ):
        for batch in data:
            inputs, _ = split_batch(batch)
            size = batch_size(inputs)
            if max_samples is not None and n_inputs + size > max_samples:
                size = max_samples - n_inputs
                inputs = inputs[:size] if isinstance(inputs, torch.Tensor) else {k: v[:size] for k, v in inputs.items()}
            for model, dev, cap, reservoirs in ((model_a, dev_a, cap_a, res_a), (model_b, dev_b, cap_b, res_b)):
                cap.clear()
                moved = (
                    inputs.to(dev) if isinstance(inputs, torch.Tensor) else {k: v.to(dev) for k, v in inputs.items()}
                )
                run_model(model, moved)
                for name, res in reservoirs.items():
                    rows, _ = to_rows(cap[name], name, features, channel_dim)
                    res.update(rows)
            n_inputs += size
            advance(size)
            if max_samples is not None and n_inputs >= max_samples:
                break
    if n_inputs < 4:
        raise ValueError(f"data gave {n_inputs} input(s); CKA needs at least 4")
    # each layer is checked, centred and paired with itself once; the pairs then cost one cross product each
    device = next(iter(res_a.values())).values.device
    centred_b = [_centred(_finite(res_b[nb].values, nb, "model_b"), debiased, device) for nb in layers_b]
    matrix = torch.empty(len(layers_a), len(layers_b), dtype=torch.float64)
    for i, na in enumerate(layers_a):
        centred_a = _centred(_finite(res_a[na].values, na, "model_a"), debiased, device)
        for j, cb in enumerate(centred_b):
            matrix[i, j] = _cka(centred_a, cb, debiased)
    return LayerSimilarity(
        matrix=matrix,
        layers_a=tuple(layers_a),
        layers_b=tuple(layers_b),
        n_samples=len(next(iter(res_a.values()))),
        debiased=bool(debiased),
        settings={"features": features, "channel_dim": channel_dim, "seed": seed, "samples": samples},
    )
