"""Isotropic, direction-set and block-isotropic activations (functional forms).

An *isotropic* activation squashes only the length of the feature vector and keeps its direction:

    f(x) = σ(‖x‖) · x/‖x‖ = g(r) · x,    r = ‖x‖₂,  g(r) = σ(r)/r,

so that f(Rx) = R f(x) for every orthogonal R (group ``orthogonal``). Its Jacobian is

    J(x) = σ'(r) x̂x̂ᵀ + g(r) (I − x̂x̂ᵀ) = g(r) I + r g'(r) x̂x̂ᵀ,

which tends to σ'(0)·I at x = 0. With an intrinsic (squared) length o > 0, ρ = √(r² + o) replaces r in g:
f(x) = g(ρ)·x.

The numerics are the point of this module:

- g is evaluated by its Taylor series below a dtype-dependent cutoff (tanh(r)/r = 1 − r²/3 + 2r⁴/15 − …) and by
  σ(r)/r above it, each branch fed a safe input (the double-``where`` trick), so values *and* gradients are exact
  and finite at x = 0 and never see 0/0;
- the norm is overflow-safe (a row whose sum of squares overflows is rescaled by a power of two), so
  ‖x‖ = 1e30 in float32 gives ≈ σ(∞)·x̂, not 0 or NaN; a NaN stays in its own row. Traced, vmapped and
  accelerator code takes a branch-free path; plain eager CPU code checks on the host (free there) and runs the
  rescaling pass only when a row overflowed. Norms beyond the dtype's largest finite value still give 0;
- float16/bfloat16 inputs compute the norm and the scalar factor in float32 and return the input dtype;
- a custom :class:`torch.autograd.Function` saves only the input and one scalar per vector, and computes
  grad_in = g·grad + g'(ρ) (x·grad)/ρ · x in two passes. It traces under ``torch.compile(fullgraph=True)`` and
  composes with ``torch.func`` (``vmap``, ``grad``, ``jvp``, ``jacrev``, ``jacfwd``); a second derivative
  recomputes ρ from x with differentiable torch ops. A plain callable σ takes a pure-torch formula path
  differentiated by autograd instead.

:data:`PROFILES` maps profile names to :class:`Profile` objects (σ, σ', the Taylor coefficients of g):

============  ======================  ===========================  =========
name          σ(r)                    g(r) near 0                  σ'(0)
============  ======================  ===========================  =========
``tanh``      tanh r                  1 − r²/3 + 2r⁴/15 − …        1
``log1p``     log(1 + r)              1 − r/2 + r²/3 − …           1
``softsign``  r/(1 + r)               1 − r + r² − …               1
``relu``      max(r − 1, 0)           0 for r < 1                  0
============  ======================  ===========================  =========

:func:`iso_relu` builds the ``relu`` profile for any radius R > 0 (a ReLU of the norm with R = 0 is the identity).

The *direction-set* activation f_V(x) = Σ_k σ(x·v_k) v_k uses a (K, n) set of directions (K may exceed n); with
the standard basis it is exactly the elementwise σ. The *block-isotropic* activation is isotropic within each
block of k consecutive features: k = 1 is the elementwise odd map sign(x)·σ(|x|), k = n is the isotropic one.

Examples:
    >>> import torch, isotorch as it
    >>> x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    >>> it.functional.iso_tanh(x)  # direction kept, length 5 → tanh(5); the zero row stays 0
    tensor([[0.5999, 0.7999],
            [0.0000, 0.0000]])
    >>> it.functional.iso_activation(x, "softsign").norm(dim=-1)  # 5/(1 + 5)
    tensor([0.8333, 0.0000])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from isotorch._util import check_axis, check_floating, check_int, compute_dtype

__all__ = [
    "PROFILES",
    "Profile",
    "block_iso_activation",
    "direction_activation",
    "iso_activation",
    "iso_relu",
    "iso_tanh",
]


# ----------------------------------------------------------------------------------------------------------------
# profiles


def _horner(coeffs: tuple[float, ...], r: torch.Tensor) -> torch.Tensor:
    """Σ_k coeffs[k] r^k by Horner's rule (evaluated in r² when only even powers occur)."""
    if not any(coeffs):
        return torch.zeros_like(r)
    if len(coeffs) > 2 and not any(coeffs[1::2]):
        return _horner(coeffs[0::2], r * r)
    if len(coeffs) == 1:
        return torch.full_like(r, coeffs[0])
    acc = r * coeffs[-1] + coeffs[-2]
    for a in reversed(coeffs[:-2]):
        acc = acc * r + a
    return acc


@dataclass(frozen=True)
class Profile:
    """A radial profile σ of an isotropic activation f(x) = σ(‖x‖)·x/‖x‖ = g(‖x‖)·x.

    Args:
        name: a short name shown in ``repr`` and error messages.
        sigma: σ(r) for r ≥ 0, a function of a tensor; σ(0) = 0 is needed for continuity at x = 0.
        derivative: σ'(r), used by the backward pass.
        taylor: coefficients a_k of the Taylor series g(r) = σ(r)/r = Σ_k a_k r^k at 0 (a_0 = σ'(0)). The series
            is used below :meth:`cutoff`, where its last term falls under the dtype's machine epsilon.
        validity: the series is never used at or beyond this radius (its radius of convergence, or the radius
            below which it is exact). Default ``inf``.

    A profile is what :func:`iso_activation` needs to run its custom autograd function; a plain callable σ
    is differentiated by autograd instead.

    Examples:
        >>> import torch
        >>> from isotorch.functional import PROFILES
        >>> p = PROFILES["tanh"]
        >>> p.taylor[:3]  # 1 − r²/3 + …
        (1.0, 0.0, -0.3333333333333333)
        >>> p.ratio(torch.tensor([0.0, 2.0], dtype=torch.float64))  # tanh(r)/r, exact at 0
        tensor([1.0000, 0.4820], dtype=torch.float64)
    """

    name: str
    sigma: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor]
    taylor: tuple[float, ...]
    validity: float = math.inf
    # derived in __post_init__ (not arguments, not compared)
    _cutoffs: tuple[float, float] = field(init=False, repr=False, compare=False)
    _slope_taylor: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _series_matrix: tuple[tuple[float, float], ...] = field(init=False, repr=False, compare=False)
    _constants: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not callable(self.sigma) or not callable(self.derivative):
            raise TypeError("sigma and derivative must be callables mapping a tensor of radii to a tensor")
        taylor = tuple(float(a) for a in self.taylor)
        if not taylor or not all(math.isfinite(a) for a in taylor):
            raise ValueError(f"taylor must be a non-empty sequence of finite coefficients, got {self.taylor!r}")
        if not self.validity > 0:
            raise ValueError(f"validity must be > 0, got {self.validity!r}")
        object.__setattr__(self, "taylor", taylor)
        # precomputed here so that the traced forward reads plain floats (torch.compile friendly)
        last = max([k for k, a in enumerate(taylor) if k > 0 and a != 0.0], default=0)
        cutoffs: list[float] = []
        for dtype in (torch.float32, torch.float64):
            eps = torch.finfo(dtype).eps
            accurate = math.inf if last == 0 else (eps / abs(taylor[last])) ** (1.0 / last)
            cutoffs.append(min(accurate, float(self.validity)))
        object.__setattr__(self, "_cutoffs", (cutoffs[0], cutoffs[1]))
        object.__setattr__(self, "_slope_taylor", tuple(k * a for k, a in enumerate(taylor))[1:] or (0.0,))
        slope_padded = (*(k * a for k, a in enumerate(taylor) if k > 0), 0.0)
        object.__setattr__(self, "_series_matrix", tuple(zip(taylor, slope_padded, strict=True)))
        object.__setattr__(self, "_constants", {})  # eager only: (dtype, device) -> (exponents, coefficients)

    def cutoff(self, dtype: torch.dtype) -> float:
        """The radius below which g is evaluated by its Taylor series in ``dtype`` (where the last term < eps).

        Float16 and bfloat16 use the float32 value (their radii are computed in float32).
        """
        return self._cutoffs[1] if dtype == torch.float64 else self._cutoffs[0]

    @torch.compiler.assume_constant_result
    def _numbers(self, double: bool) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
        """(cutoff, Taylor coefficients of g, of g'): the floats the traced forward and backward read.

        Read through this method, they are constants of the traced graph. Read directly, ``torch.compile(...,
        dynamic=True)`` makes every float attribute a symbolic input, and Dynamo (torch 2.13) fails to lift a float
        first read inside one ``autograd.Function`` subgraph into the next one ("lift_tracked_freevar_to_input
        should not be called on root SubgraphTracer") as soon as a model has two isotropic activations.
        """
        return self._cutoffs[1] if double else self._cutoffs[0], self.taylor, self._slope_taylor

    def ratio(self, r: torch.Tensor) -> torch.Tensor:
        """g(r) = σ(r)/r for r ≥ 0, exact at r = 0 (where it is σ'(0))."""
        return self._ratio(r, slope=False)[0]

    def ratio_and_slope(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g(r) and g'(r) = (σ'(r) − g(r))/r, both finite and accurate down to r = 0."""
        return self._ratio(r, slope=True)

    def _ratio(self, r: torch.Tensor, slope: bool, fast: bool = False):
        c, taylor, slope_taylor = self._numbers(r.dtype == torch.float64)
        small = r < c
        # double where: each branch sees only inputs where it is finite, so autograd never meets 0/0 or inf·0
        r_series = torch.where(small, r, 0.0)
        r_direct = torch.where(small, c if c < math.inf else 1.0, r)
        g_direct = self.sigma(r_direct) / r_direct
        g_series, dg_series = self._series(r_series, slope, fast, taylor, slope_taylor)
        g = torch.where(small, g_series, g_direct)
        if not slope:
            return g, None
        dg_direct = (self.derivative(r_direct) - g_direct) / r_direct
        return g, torch.where(small, dg_series, dg_direct)

    def _series(self, r: torch.Tensor, slope: bool, fast: bool, taylor: tuple, slope_taylor: tuple):
        """The Taylor series of g (and g') at r: Horner's rule, or, with ``fast`` (eager, no autograd through it),
        one matrix product of the powers of r with the coefficients (fewer kernel launches for small tensors)."""
        if not fast:
            return _horner(taylor, r), (_horner(slope_taylor, r) if slope else None)
        key = (r.dtype, r.device)
        if key not in self._constants:
            exponents = torch.arange(len(self.taylor), dtype=r.dtype, device=r.device)
            self._constants[key] = (exponents, torch.tensor(self._series_matrix, dtype=r.dtype, device=r.device))
        exponents, matrix = self._constants[key]
        out = r.unsqueeze(-1).pow(exponents) @ (matrix if slope else matrix[:, 0])
        return (out[..., 0], out[..., 1]) if slope else (out, None)


def _tanh_derivative(r: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.tanh(r).square()


def _log1p_derivative(r: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + r)


def _softsign(r: torch.Tensor) -> torch.Tensor:
    return r / (1.0 + r)


def _softsign_derivative(r: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + r).square()


# tanh(r)/r = Σ 2^{2k}(2^{2k} − 1) B_{2k} r^{2k−2} / (2k)!
_TANH_TAYLOR = (1.0, 0.0, -1.0 / 3.0, 0.0, 2.0 / 15.0, 0.0, -17.0 / 315.0, 0.0, 62.0 / 2835.0)


_RELU_PROFILES: dict[float, Profile] = {}


def _relu_profile(radius: float) -> Profile:
    """σ(r) = max(r − R, 0), one cached Profile per radius (a stable object for torch.compile's guards)."""
    profile = _RELU_PROFILES.get(radius)
    if profile is None:
        profile = _RELU_PROFILES[radius] = _make_relu_profile(radius)
    return profile


class _Shifted:
    """r ↦ fn(r, R) for a fixed radius R, picklable; R is read through a constant-result method, so that a
    compiled graph holds it as a constant (see :meth:`Profile._numbers`)."""

    def __init__(self, fn: Callable[[torch.Tensor, float], torch.Tensor], radius: float) -> None:
        self.fn, self.radius = fn, radius

    @torch.compiler.assume_constant_result
    def _radius(self) -> float:
        return self.radius

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        return self.fn(r, self._radius())


def _relu_sigma(r: torch.Tensor, radius: float) -> torch.Tensor:
    return torch.clamp(r - radius, min=0.0)


def _relu_derivative(r: torch.Tensor, radius: float) -> torch.Tensor:
    return (r > radius).to(r.dtype)


def _make_relu_profile(radius: float) -> Profile:
    """g is exactly 0 below R, so the 'series' is the constant 0 there."""
    sigma = _Shifted(_relu_sigma, radius)
    derivative = _Shifted(_relu_derivative, radius)
    return Profile(f"relu(radius={radius:g})", sigma, derivative, (0.0,), validity=radius)


PROFILES: dict[str, Profile] = {
    "tanh": Profile("tanh", torch.tanh, _tanh_derivative, _TANH_TAYLOR),
    "log1p": Profile(
        "log1p", torch.log1p, _log1p_derivative, tuple((-1.0) ** k / (k + 1) for k in range(9)), validity=1.0
    ),
    "softsign": Profile("softsign", _softsign, _softsign_derivative, tuple((-1.0) ** k for k in range(9)), 1.0),
    "relu": _relu_profile(1.0),
}


def _resolve_profile(profile) -> Profile | Callable:
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, str):
        try:
            return PROFILES[profile]
        except KeyError:
            raise ValueError(
                f"unknown profile {profile!r}; valid names: {', '.join(PROFILES)} (or a Profile, or a callable σ)"
            ) from None
    if callable(profile):
        return profile
    raise TypeError(f"profile must be a name ({', '.join(PROFILES)}), a Profile or a callable σ, got {profile!r}")


# ----------------------------------------------------------------------------------------------------------------
# validation


def _check_input(x, dim, name: str = "x") -> None:
    check_floating(x, name)
    check_axis(dim)
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the feature axis), got a 0-d tensor")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(
            f"dim={dim} is out of range for {name} with {x.ndim} dimensions (expected {-x.ndim}..{x.ndim - 1})"
        )


def _check_length(length):
    """None, a float o ≥ 0 (0 means none), or a 0-d floating tensor (kept as is; it may require grad)."""
    if length is None:
        return None
    if isinstance(length, torch.Tensor):
        if length.ndim != 0 or not length.is_floating_point():
            raise ValueError(
                f"length must be a float or a 0-d floating tensor (the squared intrinsic length o ≥ 0), got a "
                f"{length.dtype} tensor of shape {tuple(length.shape)}"
            )
        return length
    if isinstance(length, bool) or not isinstance(length, (int, float)):
        raise TypeError(f"length must be a float ≥ 0 or a 0-d tensor, got {type(length).__name__}")
    length = float(length)
    if not (math.isfinite(length) and length >= 0.0):
        raise ValueError(f"length (the squared intrinsic length o) must be a finite float ≥ 0, got {length!r}")
    return length if length > 0.0 else None


# ----------------------------------------------------------------------------------------------------------------
# isotropic activation: norm, forward and backward formulas


def _eager_buffers() -> bool:
    """Whether full-size temporaries may be reused in place: plain eager mode (not traced, not under vmap & co.)."""
    return not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()


def _norm(
    x: torch.Tensor, dim: int, cdt: torch.dtype, differentiable: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """‖x‖ along ``dim`` (keepdim) in ``cdt``, branch-free, safe against overflow and, if ``differentiable``,
    against 0/0 in autograd (double ``where``: zero vectors are measured as the vector of ones and masked).

    Returns the norm and the full-size temporary of the overflow pass (``None`` if there was none), which the
    caller may reuse as an output buffer.
    """
    r = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=cdt)
    if x.dtype == torch.float16 and not differentiable:  # a float32 sum of float16 squares cannot overflow
        return r, None
    # rows whose sum of squares overflowed are measured again after an exact power-of-two downscale; the other
    # rows are multiplied by 1 (a per-row scale keeps their squares out of the slow subnormal range). The scale
    # and the masks are piecewise constant, so gradients flow only through the second measurement.
    scale = _overflow_scale(r, cdt).to(x.dtype)
    scaled = x * scale
    if differentiable:
        zero = r == 0
        r_safe = torch.linalg.vector_norm(torch.where(zero, 1.0, scaled), dim=dim, keepdim=True, dtype=cdt)
        return torch.where(zero, 0.0, r_safe / scale), None
    return torch.linalg.vector_norm(scaled, dim=dim, keepdim=True, dtype=cdt) / scale, scaled


def _overflow_scale(r: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """Per-vector scale: an exact power of two (2^-80 in float32, 2^-640 in float64) where ‖x‖ overflowed, 1
    elsewhere (in ``cdt``). For such a row ‖x‖ ≥ 2^(max_exp/2), so the scaled entries neither overflow when squared
    nor underflow where it matters."""
    down = 2.0**-640 if cdt == torch.float64 else 2.0**-80  # literals: constants even under dynamic=True
    return torch.where(torch.isinf(r), torch.full_like(r, down, dtype=cdt), torch.ones_like(r, dtype=cdt))


def _rescaled_norm(x: torch.Tensor, r: torch.Tensor, dim: int, cdt: torch.dtype) -> torch.Tensor:
    """‖x‖ again, with the rows whose norm overflowed downscaled by an exact power of two first."""
    scale = _overflow_scale(r, cdt).to(x.dtype)
    return torch.linalg.vector_norm(x * scale, dim=dim, keepdim=True, dtype=cdt) / scale


def _norm_eager_cpu(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`_norm` for plain eager CPU float32/float64 input, where a host check is free.

    The overflow pass runs only when some row overflowed. A reduction over a strided axis (e.g. the channels of a
    conv map) squares into a full-size buffer and sums, which is much faster on CPU than ``vector_norm`` there;
    the buffer is then reused for the output.
    """
    buffer = None
    if x.stride(dim) == 1:
        r = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    else:
        buffer = torch.mul(x, x)
        r = buffer.sum(dim, keepdim=True).sqrt_()
    if bool(torch.isinf(r).any()):
        r = _rescaled_norm(x, r, dim, x.dtype)
    return r, buffer


def _radius(r: torch.Tensor, length) -> torch.Tensor:
    """ρ = √(r² + o), overflow-safe (hypot)."""
    if length is None:
        return r
    if isinstance(length, torch.Tensor):
        return torch.hypot(r, length.to(r.dtype).sqrt())
    return torch.hypot(r, torch.full_like(r, math.sqrt(length)))


def _iso_formula(x: torch.Tensor, profile, dim: int, length) -> torch.Tensor:
    """The pure-torch path f = g(ρ)·x, differentiated by autograd (any callable σ; double backward)."""
    cdt = compute_dtype(x.dtype)
    xc = x.to(cdt)
    rho = _radius(_norm(xc, dim, cdt, differentiable=True)[0], length)
    if isinstance(profile, Profile):
        g = profile.ratio(rho)
    else:
        # no Taylor series for an arbitrary σ: clamp r at √tiny, where σ(r)/r = σ'(0) to rounding if σ(0) = 0
        floor = math.sqrt(torch.finfo(cdt).tiny)
        rho_safe = torch.clamp(rho, min=floor)
        s = profile(rho_safe)
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"profile σ must return a tensor, got {type(s).__name__}")
        g = s / rho_safe
    return (xc * g).to(x.dtype)


def _iso_vjp(x, rho, grad, profile: Profile, dim: int, length, length_needs_grad: bool, reuse: bool):
    """grad_x = g(ρ)·grad + g'(ρ)·(x·grad)/ρ · x and grad_o = Σ g'(ρ)(x·grad)/(2ρ).

    With ``reuse`` (plain eager, no double backward) the product x⊙grad is computed once into a buffer that then
    receives grad_x, so the backward allocates one full-size tensor, like ``tanh``'s.
    """
    cdt = rho.dtype
    g, dg = profile._ratio(rho, slope=True, fast=reuse)
    rho_safe = torch.where(rho > 0, rho, 1.0)
    if reuse and x.dtype == cdt:
        buffer = torch.mul(x, grad)
        w = dg * buffer.sum(dim, keepdim=True) / rho_safe
        grad_x = torch.mul(grad, g, out=buffer).addcmul_(x, w)
    else:
        xc, gc = x.to(cdt), grad.to(cdt)
        w = dg * torch.linalg.vecdot(xc, gc, dim=dim).unsqueeze(dim) / rho_safe
        if torch.compiler.is_compiling():  # one small stacked buffer: Inductor stores the per-vector coefficients
            g, w = torch.stack([g, w]).unbind(0)  # instead of recomputing them for every element
        grad_x = torch.addcmul(gc * g, xc, w).to(x.dtype)
    grad_length = None
    if length_needs_grad:
        grad_length = (0.5 * w.sum()).to(length.dtype)
    return grad_x, grad_length


class _IsoActivation(torch.autograd.Function):
    """f(x) = g(ρ)·x with a hand-written backward that saves x and ρ only (no custom jvp: traceable by dynamo)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, length, dim, profile):
        cdt = compute_dtype(x.dtype)
        eager = _eager_buffers()
        if eager and x.device.type == "cpu" and x.dtype == cdt:
            r, buffer = _norm_eager_cpu(x, dim)
        else:  # branch-free: traceable, vmappable, no host synchronisation on accelerators
            r, buffer = _norm(x, dim, cdt)
        rho = _radius(r, length)
        g = profile._ratio(rho, slope=False, fast=eager)[0]
        if buffer is not None and eager:  # write into the norm pass's temporary: one full-size allocation
            return torch.mul(x, g, out=buffer), rho  # (float16/bfloat16: multiplied in float32, stored as x.dtype)
        return (x * g).to(x.dtype), rho

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, length, dim, profile = inputs
        _, rho = output
        ctx.dim, ctx.profile = dim, profile
        ctx.length_is_tensor = isinstance(length, torch.Tensor)
        ctx.length = None if ctx.length_is_tensor else length
        ctx.save_for_backward(x, rho, *((length,) if ctx.length_is_tensor else ()))
        ctx.mark_non_differentiable(rho)

    @staticmethod
    def backward(ctx, grad_y, _grad_rho):
        x, rho, *rest = ctx.saved_tensors
        length = rest[0] if ctx.length_is_tensor else ctx.length
        create_graph = torch.is_grad_enabled()
        if create_graph:  # rebuild ρ from x so that second derivatives flow through it
            rho = _radius(_norm(x, ctx.dim, rho.dtype, differentiable=True)[0], length)
        needs_length = ctx.length_is_tensor and ctx.needs_input_grad[1]
        reuse = not create_graph and _eager_buffers()
        grad_x, grad_length = _iso_vjp(x, rho, grad_y, ctx.profile, ctx.dim, length, needs_length, reuse)
        return grad_x, grad_length, None, None


class _IsoActivationForwardAD(_IsoActivation):
    """The same function with a custom jvp, for forward-mode AD and torch.func (dynamo cannot trace a custom jvp)."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        _IsoActivation.setup_context(ctx, inputs, output)
        x, length = inputs[0], inputs[1]
        ctx.save_for_forward(x, output[1], *((length,) if ctx.length_is_tensor else ()))

    @staticmethod
    def jvp(ctx, x_t, length_t, _dim_t, _profile_t):
        x, rho, *_ = ctx.saved_tensors
        cdt = rho.dtype
        xc = x.to(cdt)
        g, dg = ctx.profile._ratio(rho, slope=True, fast=not torch.is_grad_enabled())
        rho_safe = torch.where(rho > 0, rho, 1.0)
        # dρ = (x·dx)/ρ + do/(2ρ);  df = g·dx + g'(ρ)·dρ·x
        drho = torch.zeros_like(rho)
        out = torch.zeros_like(xc)
        if x_t is not None:
            xt = x_t.to(cdt)
            drho = drho + torch.linalg.vecdot(xc, xt, dim=ctx.dim).unsqueeze(ctx.dim) / rho_safe
            out = out + g * xt
        if ctx.length_is_tensor and length_t is not None:
            drho = drho + 0.5 * length_t.to(cdt) / rho_safe
        return (out + (dg * drho) * xc).to(x.dtype), None


def _iso(x: torch.Tensor, profile, dim: int, length) -> torch.Tensor:
    if not isinstance(profile, Profile):
        return _iso_formula(x, profile, dim, length)
    fn = _IsoActivation if torch.compiler.is_compiling() else _IsoActivationForwardAD
    return fn.apply(x, length, dim, profile)[0]


# ----------------------------------------------------------------------------------------------------------------
# public functions


def iso_activation(
    x: torch.Tensor,
    profile: str | Profile | Callable[[torch.Tensor], torch.Tensor] = "tanh",
    *,
    dim: int = -1,
    length: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Isotropic activation f(x) = σ(‖x‖)·x/‖x‖ along ``dim``: squashes the length, keeps the direction.

    f(x) = g(ρ)·x with g(ρ) = σ(ρ)/ρ and ρ = ‖x‖ (or ρ = √(‖x‖² + o) with an intrinsic length o). The map is
    O(n)-equivariant along ``dim`` (group ``orthogonal``) and its Jacobian at 0 is σ'(0)·I.

    Args:
        x: floating-point input.
        profile: a name in :data:`PROFILES` (``"tanh"``, ``"log1p"``, ``"softsign"``, ``"relu"``), a
            :class:`Profile`, or a callable σ (with σ(0) = 0; differentiated by autograd, no custom backward).
            Default ``"tanh"``.
        dim: the feature axis (``1`` for the channels of a conv feature map). Default ``-1``.
        length: the intrinsic *squared* length o ≥ 0, a float or a 0-d tensor (which may require grad).
            Default ``None`` (o = 0).

    Shape:
        - Input: any shape (*, n, *) with the feature axis at ``dim``.
        - Output: the same shape and dtype.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: ``dim`` is out of range, an unknown profile name, or an invalid ``length``.

    Examples:
        >>> import torch
        >>> from isotorch.functional import iso_activation
        >>> x = torch.tensor([[3.0, 4.0]])
        >>> iso_activation(x, "log1p").norm(dim=-1)  # log(1 + 5)
        tensor([1.7918])
        >>> iso_activation(torch.zeros(1, 2), "tanh", length=0.25).shape
        torch.Size([1, 2])
    """
    _check_input(x, dim)
    return _iso(x, _resolve_profile(profile), dim, _check_length(length))


def iso_tanh(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Isotropic tanh: f(x) = tanh(‖x‖)·x/‖x‖ along ``dim`` (fills the unit ball; group ``orthogonal``).

    Args:
        x: floating-point input.
        dim: the feature axis. Default ``-1``.

    Shape:
        - Input: (*, n, *) with the feature axis at ``dim``. Output: same shape and dtype.

    Examples:
        >>> import torch
        >>> from isotorch.functional import iso_tanh
        >>> iso_tanh(torch.tensor([[30.0, 40.0]]))  # saturated: a unit vector along x
        tensor([[0.6000, 0.8000]])
        >>> iso_tanh(torch.randn(2, 8, 4, 4), dim=1).shape  # channels of a conv map
        torch.Size([2, 8, 4, 4])
    """
    _check_input(x, dim)
    return _iso(x, PROFILES["tanh"], dim, None)


def iso_relu(x: torch.Tensor, radius: float = 1.0, *, dim: int = -1) -> torch.Tensor:
    """Isotropic thresholded ReLU: f(x) = max(‖x‖ − R, 0)·x/‖x‖ along ``dim`` (group ``orthogonal``).

    Vectors inside the ball of radius R map to 0 (so the Jacobian at 0 is 0); outside it the length shrinks
    by R. R must be positive: a ReLU of the norm (R = 0) is the identity.

    Args:
        x: floating-point input.
        radius: the threshold R > 0. Default ``1.0``.
        dim: the feature axis. Default ``-1``.

    Shape:
        - Input: (*, n, *) with the feature axis at ``dim``. Output: same shape and dtype.

    Raises:
        ValueError: ``radius`` ≤ 0 or not finite.

    Examples:
        >>> import torch
        >>> from isotorch.functional import iso_relu
        >>> iso_relu(torch.tensor([[0.3, 0.4], [3.0, 4.0]]), radius=1.0)
        tensor([[0.0000, 0.0000],
                [2.4000, 3.2000]])
    """
    _check_input(x, dim)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise TypeError(f"radius must be a float > 0, got {type(radius).__name__}")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(
            f"radius must be a finite float > 0, got {radius!r} (a ReLU of the norm with radius 0 is the identity)"
        )
    radius = float(radius)
    if torch.compiler.is_compiling() and radius not in _RELU_PROFILES:
        # a Profile built while tracing has no real object behind it for Profile._numbers to read: take the
        # autograd formula path for a radius first met in compiled code (σ(r) = 0 below R, so its clamp is exact)
        return _iso_formula(x, functools.partial(_relu_sigma, radius=radius), dim, None)
    return _iso(x, _relu_profile(radius), dim, None)


_ELEMENTWISE: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], bool]] = {
    # name: (σ, whether σ is odd)
    "tanh": (torch.tanh, True),
    "softsign": (F.softsign, True),
    "sin": (torch.sin, True),
    "relu": (torch.relu, False),
    "gelu": (F.gelu, False),
    "silu": (F.silu, False),
    "sigmoid": (torch.sigmoid, False),
}


def _resolve_elementwise(activation) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(activation, str):
        try:
            return _ELEMENTWISE[activation][0]
        except KeyError:
            raise ValueError(
                f"unknown activation {activation!r}; valid names: {', '.join(_ELEMENTWISE)} (or a callable σ)"
            ) from None
    if callable(activation):
        return activation
    raise TypeError(f"activation must be a name ({', '.join(_ELEMENTWISE)}) or a callable σ, got {activation!r}")


def _is_odd(activation) -> bool:
    """Whether σ is odd: known for the named activations, probed on a float64 grid for a callable."""
    if isinstance(activation, str):
        return _ELEMENTWISE[activation][1]
    t = torch.cat([torch.linspace(0.0, 6.0, 49, dtype=torch.float64), torch.tensor([0.01, 0.37, 11.0, 40.0])])
    try:
        with torch.no_grad():
            pos, neg = activation(t), activation(-t)
        return bool(torch.allclose(neg, -pos, rtol=1e-6, atol=1e-9))
    except Exception:  # σ that cannot run on a float64 probe: make no claim
        return False


def _check_directions(directions, n: int) -> None:
    if not isinstance(directions, torch.Tensor):
        raise TypeError(f"directions must be a (K, n) tensor, got {type(directions).__name__}")
    if not directions.is_floating_point():
        raise TypeError(f"directions must be a floating-point tensor, got dtype {directions.dtype}")
    if directions.ndim != 2 or directions.shape[0] < 1 or directions.shape[1] != n:
        raise ValueError(
            f"directions must be a (K, n) tensor with K ≥ 1 and n = {n} (the size of x along dim), got shape "
            f"{tuple(directions.shape)}"
        )


def direction_activation(
    x: torch.Tensor,
    directions: torch.Tensor,
    activation: str | Callable[[torch.Tensor], torch.Tensor] = "tanh",
    *,
    dim: int = -1,
) -> torch.Tensor:
    """Direction-set activation f_V(x) = Σ_k σ(x·v_k)·v_k over the rows v_k of a (K, n) direction set.

    K may exceed n (e.g. Thomson points). With the standard basis V = I this is exactly the elementwise σ.
    The map is equivariant to the orthogonal maps that permute V (Sym(V); Sym(±V) when σ is odd): B_n for
    ±standard bases with odd σ, S_n for the standard basis, and generically only the trivial group.

    Args:
        x: floating-point input.
        directions: a (K, n) floating tensor; rows are directions (cast to the dtype of ``x``).
        activation: the elementwise σ: ``"tanh"``, ``"softsign"``, ``"sin"``, ``"relu"``, ``"gelu"``,
            ``"silu"``, ``"sigmoid"``, or a callable. Default ``"tanh"``.
        dim: the feature axis. Default ``-1``.

    Shape:
        - Input: (*, n, *) with the feature axis at ``dim``; directions (K, n). Output: same shape as x.

    Raises:
        ValueError: ``directions`` is not 2-D or its second size is not n; unknown ``activation`` name.

    Examples:
        >>> import torch
        >>> from isotorch.functional import direction_activation
        >>> x = torch.randn(4, 3)
        >>> torch.equal(direction_activation(x, torch.eye(3)), torch.tanh(x))
        True
    """
    _check_input(x, dim)
    _check_directions(directions, x.shape[dim])
    sigma = _resolve_elementwise(activation)
    v = directions.to(dtype=x.dtype)
    moved = x.movedim(dim, -1)
    return (sigma(moved @ v.T) @ v).movedim(-1, dim)


def block_iso_activation(
    x: torch.Tensor,
    block: int,
    profile: str | Profile | Callable[[torch.Tensor], torch.Tensor] = "tanh",
    *,
    dim: int = -1,
) -> torch.Tensor:
    """Block-isotropic activation: an isotropic activation on each block of ``block`` consecutive features.

    For x split along ``dim`` into blocks x_b of size k, f(x)_b = σ(‖x_b‖)·x_b/‖x_b‖. Its group is
    O(k) ≀ S_{n/k} (``block_orthogonal:k``): k = 1 gives the elementwise odd map sign(x)·σ(|x|) (B_n), k = n
    gives :func:`iso_activation` (O(n)).

    Args:
        x: floating-point input.
        block: the block size k ≥ 1; must divide the size n of ``x`` along ``dim``.
        profile: as in :func:`iso_activation`. Default ``"tanh"``.
        dim: the feature axis. Default ``-1``.

    Shape:
        - Input: (*, n, *) with the feature axis at ``dim``. Output: same shape and dtype.

    Raises:
        ValueError: ``block`` is not a positive int dividing n.

    Examples:
        >>> import torch
        >>> from isotorch.functional import block_iso_activation
        >>> x = torch.tensor([[3.0, 4.0, -0.5, 0.0]])
        >>> block_iso_activation(x, 2).norm(dim=-1) ** 2  # tanh(5)² + tanh(0.5)²
        tensor([1.2134])
        >>> torch.allclose(block_iso_activation(x, 1), torch.tanh(x))
        True
    """
    _check_input(x, dim)
    resolved = _resolve_profile(profile)
    n = x.shape[dim]
    check_int(block, "block")
    if n % block != 0:
        raise ValueError(f"block={block} must divide the size of x along dim={dim}, which is {n}")
    if block == n:
        return _iso(x, resolved, dim, None)
    d = dim % x.ndim
    split = (*x.shape[:d], n // block, block, *x.shape[d + 1 :])
    return _iso(x.reshape(split), resolved, d + 1, None).reshape(x.shape)
