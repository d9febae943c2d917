"""Isotropic normalisers: RMS normalisation with a scalar gain, ChiNorm, and an isotropic batch norm.

A normaliser is O(n)-equivariant along its feature axis when everything it divides by is a *scalar* that is
invariant under rotations of the feature vectors (a norm, a mean of norms, a total variance) and everything it
subtracts is built from the data itself (a batch mean vector). An elementwise gain or bias reduces the group to
permutations (REFERENCE.md §2.3, §3.1).

Numerics shared by every primitive here: half-precision inputs are computed in float32 and cast back; norms and
mean squares are taken after dividing by a detached max-abs scale, so that vectors with norms near the dtype's
range neither overflow nor underflow (the result is algebraically independent of the scale, so the gradient is
exact).
"""

from __future__ import annotations

import math

import torch

from isotorch._util import check_floating, check_real, compute_dtype, feature_dim

__all__ = ["chi_norm", "iso_batch_norm", "iso_rms_norm"]


# ---------------------------------------------------------------------------------------------------------------
# numerics shared by the isotropic primitives (imported by dropout, pooling and gating)


def _check_eps(eps: object) -> float:
    return check_real(eps, "eps", 0.0, math.inf, low_open=True, high_open=True)


def _check_momentum(momentum: object) -> float:
    return check_real(momentum, "momentum", 0.0, 1.0, low_open=False, high_open=False)


def _check_scalar(t: torch.Tensor, name: str, why: str) -> None:
    check_floating(t, name)
    if t.ndim != 0:
        raise ValueError(f"{name} must be a 0-d tensor ({why}), got shape {tuple(t.shape)}")


def _max_abs(x: torch.Tensor, dims, floor: float = 0.0) -> torch.Tensor:
    """Detached max |x| over ``dims`` (keepdim), at least ``floor``, else 1 where it is 0; NaN propagates."""
    m = x.detach().abs().amax(dim=dims, keepdim=True)
    if floor > 0:
        return m.clamp(min=floor)
    return torch.where(m == 0, torch.ones_like(m), m)


def _vector_norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    """‖x‖₂ along ``dim`` (keepdim) without overflow or underflow; its gradient at x = 0 is 0, not NaN.

    The vector is divided by its detached max-abs entry before squaring; the double ``where`` keeps autograd
    away from the square root at 0.
    """
    m = _max_abs(x, dim)
    s = (x / m).pow(2).sum(dim, keepdim=True)
    zero = s == 0
    root = torch.where(zero, torch.ones_like(s), s).sqrt()
    return torch.where(zero, torch.zeros_like(root), root) * m


def _plain_eager() -> bool:
    """Whether host checks on data are allowed: not traced by torch.compile and not under a torch.func transform
    (``vmap``, ``grad``, ...), where the branch-free paths run instead."""
    return not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()


def _update_running(running: torch.Tensor, batch: torch.Tensor, momentum: float) -> None:
    """running ← (1 − momentum)·running + momentum·batch, in place and without grad; skipped if batch is not finite.

    The finiteness check is a tensor ``where`` (no Python branch on data), so it compiles without graph breaks.
    """
    if torch._C._are_functorch_transforms_active():
        is_batched = torch._C._functorch.is_batchedtensor
        if is_batched(batch) and not is_batched(running):
            raise ValueError(
                "the running statistics would be updated in place from a vmapped batch, but they are not vmapped "
                "themselves: pass running statistics with a vmapped axis, or none (as for torch's batch_norm)"
            )
    with torch.no_grad():
        # written through a flat view: Inductor (torch 2.13) silently drops in-place updates of a 0-d buffer
        target = running.view(-1)
        batch = batch.detach().to(running.dtype).reshape(target.shape)
        updated = torch.lerp(target, batch, momentum)
        target.copy_(torch.where(torch.isfinite(batch).all(), updated, target))


# ---------------------------------------------------------------------------------------------------------------
# RMS normalisation


def iso_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    dim: int = -1,
    eps: float | None = None,
) -> torch.Tensor:
    """RMS normalisation with a scalar gain: γ·x/√(mean(x²) + ε) along ``dim``; O(n)-equivariant.

    Every vector along ``dim`` is divided by its own root mean square, which is rotation invariant, so
    f(gx) = g f(x) for every orthogonal g. The gain ``weight`` must be a scalar: an elementwise gain γ⊙
    commutes only with permutations (REFERENCE.md §2.3).

    Args:
        x: floating-point input.
        weight: optional 0-d scalar gain γ (default ``None``: no gain).
        dim: feature axis (default ``-1``).
        eps: ε added to the mean square; must be positive (default ``None``: ``torch.finfo(x.dtype).eps``, as
            ``torch.nn.RMSNorm``). A zero vector maps to zero.

    Shape:
        - Input: any shape with a non-empty axis ``dim``.
        - Output: same shape and dtype as the input (float16/bfloat16 are computed in float32).

    NaN confines to its vector; vectors with norms near the dtype's range do not overflow.

    Examples:
        >>> import torch, isotorch as it
        >>> x = torch.randn(4, 8, dtype=torch.float64)
        >>> y = it.functional.iso_rms_norm(x)
        >>> bool(torch.allclose(y.pow(2).mean(-1), torch.ones(4, dtype=torch.float64)))
        True
        >>> it.testing.equivariance_error(it.functional.iso_rms_norm, x, "orthogonal") < 1e-9
        True
    """
    check_floating(x)
    d = feature_dim(x, dim)
    eps = torch.finfo(x.dtype).eps if eps is None else _check_eps(eps)
    if weight is not None:
        _check_scalar(weight, "weight", "a scalar gain; an elementwise gain would reduce O(n) to permutations")
    h = x.to(compute_dtype(x.dtype))
    m = _max_abs(h, d, floor=math.sqrt(eps))  # x/√(mean x² + ε) = u/√(mean u² + ε/m²) with u = x/m, any m > 0
    u = h / m
    out = u * torch.rsqrt(u.pow(2).mean(d, keepdim=True) + eps / m.pow(2))
    if weight is not None:
        out = out * weight.to(out.dtype)
    return out.to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# ChiNorm


def _batch_norm_estimate(h: torch.Tensor, d: int) -> torch.Tensor:
    """mean ‖h‖ along ``d``: on eager CPU one fused ``vector_norm`` pass, unless the mean overflowed or is so
    close to 0 that squares lost precision; then (and when traced or on an accelerator) the scale-safe norm. Rows
    far below the mean may underflow on the fast path; their share of the mean is below its rounding error."""
    if h.device.type == "cpu" and _plain_eager():
        mean = torch.linalg.vector_norm(h, dim=d).mean()
        if math.sqrt(torch.finfo(h.dtype).tiny) * 1e4 < mean < math.inf:
            return mean
    return _vector_norm(h, d).mean()


def chi_norm(
    x: torch.Tensor,
    running_norm: torch.Tensor | None = None,
    *,
    training: bool = False,
    momentum: float = 0.01,
    eps: float = 1e-5,
    dim: int = -1,
) -> torch.Tensor:
    """ChiNorm: divide every vector by one scalar estimate μ of E‖h‖, x/(μ + ε); O(n)-equivariant.

    In training, μ = mean‖h‖ over every vector of the batch (all positions off ``dim``), and ``running_norm``
    (if given) is updated in place, μ̂ ← (1 − momentum)·μ̂ + momentum·μ. In evaluation μ = μ̂ is frozen. The
    radii of the samples keep their ratios (no shell collapse, REFERENCE.md §2.3), unlike x/‖x‖.

    Gradients flow through the batch estimate μ (as through BatchNorm's batch statistics): the training-mode
    forward is the function X ↦ X/mean‖X‖ of the whole batch, which is invariant to a common rescaling of the
    batch, and only the full gradient is orthogonal to that rescaling. Detaching μ would give the gradient of a
    different function and let the scale of the layer below drift. The running estimate μ̂ is a buffer and
    never receives gradients.

    Args:
        x: floating-point input.
        running_norm: 0-d running estimate μ̂ (default ``None``: no running estimate; then ``training`` must be
            ``True``).
        training: use and update batch statistics (default ``False``).
        momentum: weight of the batch estimate in the running update, in [0, 1] (default ``0.01``).
        eps: ε added to μ, positive (default ``1e-5``).
        dim: feature axis (default ``-1``).

    Shape:
        - Input: any shape with a non-empty axis ``dim``; in training, at least one vector.
        - Output: same shape and dtype as the input.

    Raises:
        ValueError: an empty batch in training, or no ``running_norm`` in evaluation.

    A NaN anywhere in a training batch makes every output NaN (a batch statistic cannot confine it); a
    non-finite batch estimate is not folded into ``running_norm``. In evaluation NaN stays in its vector.

    Examples:
        >>> import torch, isotorch as it
        >>> x = torch.randn(64, 16)
        >>> y = it.functional.chi_norm(x, training=True)
        >>> round(float(y.norm(dim=-1).mean()), 4)
        1.0
        >>> r = y.norm(dim=-1) / x.norm(dim=-1)  # one common factor: radii keep their ratios
        >>> bool(torch.allclose(r, r[0].expand(64)))
        True
    """
    check_floating(x)
    d = feature_dim(x, dim)
    momentum = _check_momentum(momentum)
    eps = _check_eps(eps)
    if running_norm is not None:
        _check_scalar(running_norm, "running_norm", "one scalar estimate of E‖h‖")
    h = x.to(compute_dtype(x.dtype))
    if training:
        if x.numel() == 0:
            raise ValueError(
                f"chi_norm needs at least one vector in training (the batch estimate is a mean of norms); "
                f"got x of shape {tuple(x.shape)}"
            )
        mu = _batch_norm_estimate(h, d)
        if running_norm is not None:
            _update_running(running_norm, mu, momentum)
    else:
        if running_norm is None:
            raise ValueError("running_norm is required when training=False (there is no batch estimate in eval)")
        mu = running_norm.to(h.dtype)
    return (h / (mu + eps)).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# isotropic batch normalisation


class _IsoBatchNormTrain(torch.autograd.Function):
    """y = γ·(x − μ_c)·s with s = (σ² + ε)^(−1/2), σ² = Σ (x − μ_c)²/m over the m positions (the mean squared norm
    of the centred vectors): the training forward in three passes, and the backward of batch normalisation with one
    scalar variance (x̂ = (x − μ_c)·s),

        ∂L/∂x = γ·s·(g − mean_c(g) − x̂·Σ(g·x̂)/m),   ∂L/∂γ = Σ g·x̂,

    in about five (autograd of the plain formula takes three times as many). Under ``create_graph`` the backward
    is rebuilt from x with differentiable ops, so second derivatives are exact.
    """

    @staticmethod
    def forward(x, weight, others, eps):
        mu = x.mean(dim=others, keepdim=True)
        c = x - mu
        var = torch.linalg.vector_norm(c).pow(2) / math.prod(c.shape[i] for i in others)
        scale = torch.rsqrt(var + eps)
        return c.mul_(scale if weight is None else scale * weight), mu, var

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, ctx.others, ctx.eps = inputs
        _, mu, var = output
        ctx.save_for_backward(x, weight, mu, var)
        ctx.mark_non_differentiable(mu, var)

    @staticmethod
    def backward(ctx, g, _grad_mu, _grad_var):
        x, weight, mu, var = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: rebuild the statistics from x so that they carry gradients
            mu = x.mean(dim=ctx.others, keepdim=True)
            var = (x - mu).pow(2).sum() / math.prod(x.shape[i] for i in ctx.others)
        s = torch.rsqrt(var + ctx.eps)
        x_hat = torch.addcmul(-mu * s, x, s)
        g_dot = (g * x_hat).sum()  # Σ g·x̂: the gain's gradient, and the variance term below
        gain = s if weight is None else s * weight
        positions = math.prod(g.shape[i] for i in ctx.others)
        grad_x = torch.addcmul(g - g.mean(dim=ctx.others, keepdim=True), x_hat, -g_dot / positions) * gain
        grad_w = g_dot if weight is not None and ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None


def iso_batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    *,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    dim: int = -1,
    center: bool = True,
) -> torch.Tensor:
    """Isotropic batch normalisation: γ·(x − μ)/√(σ² + ε) with a mean *vector* μ and a *scalar* variance σ².

    In training, μ is the mean of the vectors over every position off ``dim`` (the batch, and the spatial axes
    of an (N, C, H, W) map with ``dim=1``) and σ² = mean over positions of ‖x − μ‖², the total variance (the
    mean squared *norm* of the centred vectors). The output's vectors therefore have a mean squared norm of 1
    (γ² with a gain), whatever n: their radius is O(1), where an isotropic activation σ(‖x‖)·x/‖x‖ acts on it
    (docs/isotropic_training.md). Dividing by the per-feature variance σ²/n instead, as ``torch.nn.BatchNorm``
    does entry by entry, would give radii near √n and saturate the next isotropic tanh (after
    ``convert(resnet18, "isotropic")`` every input of every IsoTanh had tanh(‖x‖) > 0.99).

    The running statistics (if given) are updated in place: ``running_mean`` with μ and ``running_var`` with the
    unbiased σ²·m/(m − 1) for m positions (as ``torch.nn.BatchNorm``; with ``center=False`` the uncorrected mean
    square, as no mean was estimated). In evaluation they replace μ and σ².

    Symmetry: the batch mean rotates with the data and σ² is rotation invariant, so training mode is
    O(n)-equivariant in x. In evaluation the map x ↦ γ(x − μ̂)/√(σ̂² + ε) subtracts a *fixed* vector: it is
    O(n)-equivariant only jointly with μ̂ → gμ̂ (a parameter symmetry, like a bias; exact in x alone while
    μ̂ = 0 or with ``center=False``). There is no bias vector for the same reason, and the gain γ is a scalar
    because an elementwise gain commutes only with permutations.

    Args:
        x: floating-point input.
        running_mean: (n,) running mean vector (default ``None``); must be ``None`` when ``center=False``.
        running_var: 0-d running total variance, an estimate of E‖x − μ‖² (default ``None``).
        weight: optional 0-d scalar gain γ (default ``None``).
        training: use and update batch statistics (default ``False``).
        momentum: weight of the batch statistics in the running update, in [0, 1] (default ``0.1``).
        eps: ε added to the variance, positive (default ``1e-5``).
        dim: feature axis (default ``-1``; use ``1`` for (N, C, H, W) maps).
        center: subtract the mean vector (default ``True``). ``False`` divides by the root mean square
            √(mean ‖x‖² + ε) of the uncentred batch, which is O(n)-equivariant in evaluation too.

    Shape:
        - Input: any shape with a non-empty axis ``dim`` of size n; in training, at least two vectors.
        - Output: same shape and dtype as the input.

    Raises:
        ValueError: fewer than two vectors in training; missing running statistics in evaluation; running
            statistics of the wrong shape.

    A NaN anywhere in a training batch makes every output NaN (batch statistics cannot confine it); non-finite
    batch statistics are not folded into the running statistics. In evaluation NaN stays in its vector.

    Examples:
        >>> import torch, isotorch as it
        >>> x = 3 * torch.randn(32, 8, dtype=torch.float64) + 1
        >>> y = it.functional.iso_batch_norm(x, training=True)
        >>> bool(y.mean(0).abs().max() < 1e-12), round(float(y.pow(2).sum(-1).mean()), 4)  # mean ‖y‖² = 1
        (True, 1.0)
        >>> f = lambda t: it.functional.iso_batch_norm(t, training=True)
        >>> it.testing.equivariance_error(f, x, "orthogonal") < 1e-9
        True
    """
    check_floating(x)
    d = feature_dim(x, dim)
    momentum = _check_momentum(momentum)
    eps = _check_eps(eps)
    n = x.shape[d]
    if running_mean is not None:
        if not center:
            raise ValueError("running_mean must be None when center=False (nothing is subtracted)")
        check_floating(running_mean, "running_mean")
        if tuple(running_mean.shape) != (n,):
            raise ValueError(
                f"running_mean must have shape ({n},) to match x.shape[{dim}] = {n}, got {tuple(running_mean.shape)}"
            )
    if running_var is not None:
        _check_scalar(running_var, "running_var", "one scalar variance shared by all features")
    if weight is not None:
        _check_scalar(weight, "weight", "a scalar gain; an elementwise gain would reduce O(n) to permutations")
    h = x.to(compute_dtype(x.dtype))
    feature_shape = [1] * x.ndim
    feature_shape[d] = n
    if training:
        count = x.numel() // n
        if count < 2:
            raise ValueError(
                f"iso_batch_norm needs more than one vector in training to estimate a variance; got x of shape "
                f"{tuple(x.shape)} ({count} vector(s) along dim={dim})"
            )
        others = tuple(i for i in range(x.ndim) if i != d)
        out: torch.Tensor | None = None
        var: torch.Tensor | None = None
        if center and h.device.type == "cpu" and _plain_eager():
            # eager CPU fast path with a hand-written backward; the host check falls back to the scale-safe path
            # when the sum of squares overflowed or the batch holds NaN
            gain = None if weight is None else weight.to(h.dtype)
            out, mu, var = _IsoBatchNormTrain.apply(h, gain, others, eps)
            if bool(torch.isfinite(var)):
                weight = None  # already applied
            else:
                out = None
        if out is None:
            if center:
                mu = h.mean(dim=others, keepdim=True)
                c = h - mu
            else:
                c = h
            m = _max_abs(c, tuple(range(x.ndim)), floor=math.sqrt(eps))  # scale-safe: see iso_rms_norm
            u = c / m
            var_scaled = u.pow(2).sum() / count
            out = u * torch.rsqrt(var_scaled + eps / m.pow(2))
            var = var_scaled * m.reshape(()).pow(2)
        if running_mean is not None:
            _update_running(running_mean, mu, momentum)
        if running_var is not None:
            assert var is not None  # set by either path above
            _update_running(running_var, var * count / (count - 1) if center else var, momentum)
    else:
        if running_var is None or (center and running_mean is None):
            raise ValueError(
                "running_var (and running_mean when center=True) are required when training=False "
                "(there are no batch statistics in eval)"
            )
        # running_mean is set exactly when center=True (both checked above)
        c = h - running_mean.to(h.dtype).reshape(feature_shape) if running_mean is not None else h
        out = c * torch.rsqrt(running_var.to(h.dtype) + eps)
    if weight is not None:
        out = out * weight.to(out.dtype)
    return out.to(x.dtype)
