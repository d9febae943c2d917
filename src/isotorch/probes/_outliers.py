"""Outlier channels and simulated low-bit quantisation of activations and weights (REFERENCE §8.3).

Trained transformers carry a few residual-stream channels far larger than the rest (a privileged basis); rotating
the stream spreads them and makes per-token quantisation cheap (QuaRot, SpinQuant). For activations h (N tokens, d
channels) and weights W:

    max/rms ratio      r = max_j |h_j| / √(mean_j h_j²)         per token (along dim=-1) or per channel (dim=0);
                                                                1 for a constant-magnitude vector, √d for a one-hot
    channel kurtosis   κ_j = E[(h_j − μ_j)⁴] / (E[(h_j − μ_j)²])²   (Pearson; 3 for a Gaussian, 1.8 uniform)
    fake quantisation  Q_b(x) = s·clamp(round(x/s), −q, q),  q = 2^{b−1} − 1,  s = c·max|x| / q over each group
                       (symmetric, round-to-nearest-even; c the clip ratio; a group of zeros stays zero)
    error              ‖x − Q_b(x)‖² / ‖x‖²                      (relative mean squared error)

A *group* shares one scale: ``dim=-1`` on (N, d) activations is per-token quantisation, ``dim=0`` per-channel,
``dim=None`` per-tensor; on an ``nn.Linear`` weight (out, in) ``dim=1`` is per-output-channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from isotorch._util import check_floating, check_int, check_matrix, check_real, feature_dim, json_safe

__all__ = [
    "OutlierResult",
    "WeightQuantisation",
    "channel_kurtosis",
    "fake_quantise",
    "max_rms_ratio",
    "outliers",
    "quantisation_error",
    "weight_quantisation",
]


def _check_dim(x: torch.Tensor, dim: object) -> int | None:
    return None if dim is None else feature_dim(x, dim)


def _check_bits(bits: object) -> int:
    return check_int(bits, "bits", minimum=2, maximum=16)  # symmetric signed integers


def _check_tensor(x: object, name: str) -> torch.Tensor:
    x = check_floating(x, name)
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); nothing to measure")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or inf values")
    return x


class _RoundSTE(torch.autograd.Function):
    """round() in the forward pass, the identity in the backward pass (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def fake_quantise(
    x: torch.Tensor,
    bits: int,
    *,
    dim: int | None = -1,
    clip_ratio: float = 1.0,
    straight_through: bool = False,
) -> torch.Tensor:
    """Symmetric quantise–dequantise Q_b(x) = s·clamp(round(x/s), −q, q), one scale s = c·max|x|/q per group.

    Args:
        x: floating-point tensor.
        bits: b in [2, 16]; q = 2^{b−1} − 1 levels each side of zero (int8: q = 127, int4: q = 7).
        dim: the axis a scale is shared along (max|x| is taken over it): ``-1`` per row (per token of (N, d)
            activations), ``0`` per column (per channel), ``None`` one scale for the tensor. Default: -1.
        clip_ratio: c in (0, 1]; values beyond c·max|x| are clipped. Default: 1.0.
        straight_through: round with a straight-through gradient (identity), so a loss on Q_b(x) trains what
            produced x (SpinQuant); otherwise round() has zero gradient. Default: ``False``.

    Shape:
        x: any; output: same as ``x``.

    Examples:
        >>> import torch
        >>> fake_quantise(torch.tensor([[1.0, -0.6, 0.26]]), 2).tolist()
        [[1.0, -1.0, 0.0]]
        >>> fake_quantise(torch.tensor([[0.3, -1.0, 0.55]]), 8).mul(127).round().tolist()
        [[38.0, -127.0, 70.0]]
    """
    x = check_floating(x)
    q = float(2 ** (_check_bits(bits) - 1) - 1)
    d = _check_dim(x, dim)
    check_real(clip_ratio, "clip_ratio", 0, 1, low_open=True, high_open=False)
    amax = x.abs().amax() if d is None else x.abs().amax(dim=d, keepdim=True)
    scale = amax * (float(clip_ratio) / q)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    scaled = x / safe
    rounded = _RoundSTE.apply(scaled) if straight_through else torch.round(scaled)
    return torch.clamp(rounded, -q, q) * safe * (scale > 0)


def quantisation_error(x: torch.Tensor, bits: int, *, dim: int | None = -1, clip_ratio: float = 1.0) -> float:
    """Relative squared error ‖x − Q_b(x)‖²/‖x‖² of :func:`fake_quantise` (0 for an all-zero ``x``).

    Args:
        x: as in :func:`fake_quantise`.
        bits: as in :func:`fake_quantise`.
        dim: as in :func:`fake_quantise`.
        clip_ratio: as in :func:`fake_quantise`.

    Examples:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(1000, 64, generator=g, dtype=torch.float64)
        >>> quantisation_error(x, 8) < quantisation_error(x, 4) < 0.05
        True
    """
    x = _check_tensor(x, "x")
    with torch.no_grad():
        x64 = x.detach().double()
        err = (x64 - fake_quantise(x64, bits, dim=dim, clip_ratio=clip_ratio)).pow(2).sum()
        total = x64.pow(2).sum()
    return float(err / total) if float(total) > 0 else 0.0


def max_rms_ratio(h: torch.Tensor, dim: int | None = -1) -> torch.Tensor:
    """max|h|/rms(h) along ``dim``: one value per token (``dim=-1`` of (N, d)) or per channel (``dim=0``); one
    value over all entries for ``dim=None``.

    In [1, √n] for n entries along ``dim``; 1 for ±c vectors, √n for a one-hot; ≈ √(2 ln n) for Gaussian rows.
    An all-zero slice gives NaN (no magnitude to compare with). Computed in float64.

    Examples:
        >>> import torch
        >>> max_rms_ratio(torch.tensor([[1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 3.0, 0.0]]))
        tensor([1., 2.], dtype=torch.float64)
    """
    h = _check_tensor(h, "h")
    d = _check_dim(h, dim)
    h64 = h.detach().double()
    rms = h64.pow(2).mean(dim=d).sqrt()
    peak = h64.abs().amax() if d is None else h64.abs().amax(dim=d)
    return peak / rms


def channel_kurtosis(h: torch.Tensor) -> torch.Tensor:
    """Pearson kurtosis E[(h_j − μ_j)⁴]/Var(h_j)² of each channel j of (N, d) activations, float64 (d,).

    3 for a Gaussian channel, 1.8 uniform, large for a channel with rare huge values; NaN for a constant channel.
    Matches ``scipy.stats.kurtosis(h, axis=0, fisher=False, bias=True)``.

    Examples:
        >>> import torch
        >>> channel_kurtosis(torch.tensor([[1.0], [-1.0], [1.0], [-1.0]]))
        tensor([1.], dtype=torch.float64)
    """
    h = check_matrix(_check_tensor(h, "h"), "h", min_rows=2)
    c = h.detach().double()
    c = c - c.mean(0)
    m2 = c.pow(2).mean(0)
    return c.pow(4).mean(0) / (m2 * m2)


@dataclass(frozen=True)
class OutlierResult:
    """Outlier statistics of (N, d) activations (one row per token).

    Attributes:
        n_tokens, dim: N and d.
        token_max_rms_mean, token_max_rms_max: mean and largest per-token max|h|/rms(h) (over non-zero tokens).
        channel_rms: rms of each channel over tokens, (d,).
        channel_max_rms: per-channel max|h|/rms(h) over tokens, (d,).
        channel_kurtosis: Pearson kurtosis of each channel (``None`` where the channel is constant), (d,).
        outlier_channels: channels whose rms exceeds ``threshold`` × the median channel rms.
        threshold: that multiple.
        token_error: relative squared error of per-token fake quantisation, ``{bits: error}``.
        channel_error: the same with per-channel scales.
    """

    n_tokens: int
    dim: int
    token_max_rms_mean: float
    token_max_rms_max: float
    channel_rms: tuple[float, ...]
    channel_max_rms: tuple[float | None, ...]
    channel_kurtosis: tuple[float | None, ...]
    outlier_channels: tuple[int, ...]
    threshold: float
    token_error: dict[int, float]
    channel_error: dict[int, float]

    @property
    def max_kurtosis(self) -> float | None:
        """The largest channel kurtosis (``None`` if every channel is constant)."""
        values = [k for k in self.channel_kurtosis if k is not None]
        return max(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (strict JSON: undefined values are ``None``; bit widths as string keys)."""
        return json_safe(
            {
                "n_tokens": self.n_tokens,
                "dim": self.dim,
                "token_max_rms_mean": self.token_max_rms_mean,
                "token_max_rms_max": self.token_max_rms_max,
                "channel_rms": list(self.channel_rms),
                "channel_max_rms": list(self.channel_max_rms),
                "channel_kurtosis": list(self.channel_kurtosis),
                "max_kurtosis": self.max_kurtosis,
                "outlier_channels": list(self.outlier_channels),
                "threshold": self.threshold,
                "token_error": {str(b): e for b, e in self.token_error.items()},
                "channel_error": {str(b): e for b, e in self.channel_error.items()},
            }
        )

    def __repr__(self) -> str:
        errors = ", ".join(f"int{b} {e:.2e}" for b, e in self.token_error.items())
        return (
            f"OutlierResult(N={self.n_tokens}, d={self.dim}, token max/rms mean {self.token_max_rms_mean:.2f} "
            f"(max {self.token_max_rms_max:.2f}), max kurtosis {self.max_kurtosis}, "
            f"{len(self.outlier_channels)} outlier channel(s), per-token error {errors})"
        )


def outliers(h: torch.Tensor, *, bits: tuple[int, ...] = (8, 4), threshold: float = 5.0) -> OutlierResult:
    """Outlier channels and quantisation error of (N, d) activations, e.g. the residual stream at one layer.

    Args:
        h: (N, d) activations, one token per row (flatten (B, T, d) with ``h.flatten(0, -2)``).
        bits: bit widths to simulate, per token and per channel. Default: (8, 4).
        threshold: a channel is an outlier if its rms exceeds this multiple of the median channel rms. Default: 5.

    Examples:
        >>> import torch
        >>> h = torch.randn(500, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> h[:, 3] *= 50
        >>> res = outliers(h)
        >>> res.outlier_channels, res.token_max_rms_mean > 5
        ((3,), True)
    """
    h = check_matrix(_check_tensor(h, "h"), "h", min_rows=2)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (threshold > 0):
        raise ValueError(f"threshold must be a float > 0 (a multiple of the median channel rms), got {threshold!r}")
    if not isinstance(bits, (tuple, list)) or not bits:
        raise ValueError(f"bits must be a non-empty tuple of ints in [2, 16], got {bits!r}")
    bits = tuple(_check_bits(b) for b in bits)
    h64 = h.detach().double()
    token = max_rms_ratio(h64, -1)
    token = token[torch.isfinite(token)]
    channel_rms = h64.pow(2).mean(0).sqrt()
    median = float(channel_rms.median())
    big = torch.nonzero(channel_rms > threshold * median).flatten().tolist() if median > 0 else []
    return OutlierResult(
        n_tokens=h.shape[0],
        dim=h.shape[1],
        token_max_rms_mean=float(token.mean()) if token.numel() else math.nan,
        token_max_rms_max=float(token.max()) if token.numel() else math.nan,
        channel_rms=tuple(float(v) for v in channel_rms),
        channel_max_rms=tuple(json_safe(max_rms_ratio(h64, 0))),
        channel_kurtosis=tuple(json_safe(channel_kurtosis(h64))),
        outlier_channels=tuple(big),
        threshold=float(threshold),
        token_error={b: quantisation_error(h64, b, dim=-1) for b in bits},
        channel_error={b: quantisation_error(h64, b, dim=0) for b in bits},
    )


@dataclass(frozen=True)
class WeightQuantisation:
    """Per-output-channel fake-quantisation error of a model's weight matrices.

    Attributes:
        names: parameter names (2-D weights of Linear, HF Conv1D and Embedding modules).
        errors: ``{bits: (relative error per weight, in the order of names)}``.
        total: ``{bits: ‖W − Q(W)‖²/‖W‖² summed over all of them}``.
    """

    names: tuple[str, ...]
    errors: dict[int, tuple[float, ...]]
    total: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (bit widths as string keys)."""
        return json_safe(
            {
                "names": list(self.names),
                "errors": {str(b): list(v) for b, v in self.errors.items()},
                "total": {str(b): v for b, v in self.total.items()},
            }
        )


def _input_axis(module: nn.Module) -> int | None:
    """The axis of a weight that one output channel's scale is shared along, or None if not a known matrix."""
    if isinstance(module, nn.Linear):
        return 1  # (out, in)
    if isinstance(module, nn.Embedding):
        return 1  # one row per token, quantised per row
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return 0  # Hugging Face Conv1D: (in, out), y = x·W + b
    return None


def weight_quantisation(model: nn.Module, *, bits: tuple[int, ...] = (8, 4)) -> WeightQuantisation:
    """Per-output-channel fake-quantisation error of every Linear, Hugging Face Conv1D and Embedding weight.

    A parameter shared by several modules (a tied head) is counted once, under its first name.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> res = weight_quantisation(net)
        >>> res.names, res.total[8] < res.total[4]
        (('0.weight', '2.weight'), True)
    """
    if not isinstance(bits, (tuple, list)) or not bits:
        raise ValueError(f"bits must be a non-empty tuple of ints in [2, 16], got {bits!r}")
    bits = tuple(_check_bits(b) for b in bits)
    names, weights, seen = [], [], set()
    for path, module in model.named_modules():
        axis = _input_axis(module)
        w = getattr(module, "weight", None)
        if axis is None or not isinstance(w, torch.Tensor) or w.ndim != 2 or id(w) in seen:
            continue
        seen.add(id(w))
        names.append(f"{path}.weight" if path else "weight")
        weights.append((w.detach().double(), axis))
    if not weights:
        raise ValueError("model has no Linear, Conv1D or Embedding weight to quantise")
    errors, total = {}, {}
    for b in bits:
        errs, num, den = [], 0.0, 0.0
        for w, axis in weights:
            e = float((w - fake_quantise(w, b, dim=axis)).pow(2).sum())
            n = float(w.pow(2).sum())
            errs.append(e / n if n > 0 else 0.0)
            num, den = num + e, den + n
        errors[b] = tuple(errs)
        total[b] = num / den if den > 0 else 0.0
    return WeightQuantisation(tuple(names), errors, total)
