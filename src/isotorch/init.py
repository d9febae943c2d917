"""Initialisers by symmetry: weight laws that are invariant under rotations, and a registry of their groups.

An initialiser is *G-invariant in distribution* when the random weight W and g·W have the same law for every g in
G, acting on the output axis (W ↦ gW) or on the input axis (W ↦ Wgᵀ). I.i.d. Gaussian entries and Haar-orthogonal
matrices are O(n)-invariant on both sides; i.i.d. uniform entries (PyTorch's default ``kaiming_uniform_``) are only
B_n-invariant, because the law of each entry is a cube, not a ball, in ℝⁿ.

Examples:
    >>> import torch, isotorch as it
    >>> w = it.init.haar_orthogonal_(torch.empty(3, 5), generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(w @ w.T, torch.eye(3), atol=1e-6)
    True
    >>> it.init.get("kaiming_uniform").group
    'signed_permutation'
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from isotorch._util import check_choice, check_finite, check_floating, check_generator, check_name

__all__ = [
    "SCHEMES",
    "InitialiserSpec",
    "get",
    "haar_orthogonal_",
    "init_model_",
    "isotropic_normal_",
    "names",
]

SCHEMES: tuple[str, ...] = ("orthogonal", "normal")
_MODES = ("fan_in", "fan_out", "fan_avg")


def _check_tensor(tensor: object, minimum_ndim: int) -> torch.Tensor:
    tensor = check_floating(tensor, "tensor")
    if tensor.ndim < minimum_ndim:
        raise ValueError(f"tensor must have at least {minimum_ndim} dimensions, got shape {tuple(tensor.shape)}")
    return tensor


def _fans(tensor: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) as in ``torch.nn.init``: size(1)·receptive field and size(0)·receptive field."""
    receptive = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


@torch.no_grad()
def haar_orthogonal_(
    tensor: torch.Tensor, gain: float = 1.0, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill ``tensor`` in place with gain · a Haar-random matrix with orthonormal rows or columns.

    The tensor is viewed as a matrix of shape (rows, cols) = (size(0), numel/size(0)), as ``torch.nn.init``
    flattens convolution weights. With A a (max, min) matrix of i.i.d. N(0, 1) entries and A = QR its QR
    decomposition, Q·diag(sign(diag R)) is Haar-distributed on the Stiefel manifold of orthonormal frames (the
    sign fix removes the bias of the QR convention); it is transposed when rows < cols. The law of W is
    invariant under W ↦ gW and W ↦ Wgᵀ for orthogonal g. Sampling runs in float64 and is cast to the tensor's dtype.

    Args:
        tensor: floating tensor with at least 2 dimensions; an empty tensor is returned unchanged.
        gain: scale factor (default 1).
        generator: random generator (default: the global one on the generator's or tensor's device).

    Shape:
        W Wᵀ = gain²·I when rows ≤ cols, and WᵀW = gain²·I when rows ≥ cols (W the flattened matrix).

    Examples:
        >>> w = haar_orthogonal_(torch.empty(4, 2, 3), gain=2.0, generator=torch.Generator().manual_seed(0))
        >>> m = w.reshape(4, 6)
        >>> torch.allclose(m @ m.T, 4 * torch.eye(4), atol=1e-5)
        True
    """
    generator = check_generator(generator)
    tensor = _check_tensor(tensor, 2)
    gain = check_finite(gain, "gain")
    if tensor.numel() == 0:
        return tensor
    rows = tensor.shape[0]
    cols = tensor.numel() // rows
    device = generator.device if generator is not None else tensor.device
    a = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64, device=device)
    q, r = torch.linalg.qr(a)
    signs = torch.sign(torch.diagonal(r))
    q = q * torch.where(signs == 0, torch.ones_like(signs), signs)
    if rows < cols:
        q = q.T
    tensor.copy_((gain * q).reshape(tensor.shape))
    return tensor


@torch.no_grad()
def isotropic_normal_(
    tensor: torch.Tensor, gain: float = 1.0, *, mode: str = "fan_in", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill ``tensor`` in place with i.i.d. N(0, σ²) entries, σ = gain/√fan.

    The Gaussian law of W is invariant under W ↦ gW and W ↦ Wgᵀ for every orthogonal g (the density depends on
    ‖W‖_F only). fan is fan_in = size(1)·receptive field, fan_out = size(0)·receptive field, or their mean
    (``"fan_avg"``, as in Xavier), with torch.nn.init's conventions. ``gain=1, mode="fan_in"`` keeps the
    variance of activations through a linear layer; ``gain=√2`` is He initialisation for ReLU.

    Args:
        tensor: floating tensor with at least 2 dimensions.
        gain: scale factor (default 1).
        mode: ``"fan_in"`` (default), ``"fan_out"`` or ``"fan_avg"``.
        generator: random generator (default: the global one).

    Examples:
        >>> w = isotropic_normal_(torch.empty(256, 400), generator=torch.Generator().manual_seed(0))
        >>> round(float(w.std() * 20), 1)
        1.0
    """
    generator = check_generator(generator)
    tensor = _check_tensor(tensor, 2)
    gain = check_finite(gain, "gain")
    check_choice(mode, "mode", _MODES)
    if tensor.numel() == 0:
        return tensor
    fan_in, fan_out = _fans(tensor)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    return tensor.normal_(0.0, gain / math.sqrt(fan), generator=generator)


_SCHEME_FUNCTIONS = {"orthogonal": haar_orthogonal_, "normal": isotropic_normal_}
_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


@torch.no_grad()
def init_model_(
    model: nn.Module,
    scheme: str = "orthogonal",
    *,
    gain: float = 1.0,
    zero_bias: bool = True,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Re-initialise every ``nn.Linear`` and convolution weight of ``model`` in place with a rotation-invariant law.

    Args:
        model: the module; submodules other than ``nn.Linear`` and ``nn.Conv*d``/``nn.ConvTranspose*d`` are left
            as they are.
        scheme: ``"orthogonal"`` (:func:`haar_orthogonal_`, default) or ``"normal"`` (:func:`isotropic_normal_`).
        gain: passed to the initialiser (default 1).
        zero_bias: set the biases of those layers to zero (default ``True``), as the isotropic recipe does.
        generator: random generator, drawn from in module order (default: the global one).

    Returns:
        ``model``.

    Examples:
        >>> net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
        >>> _ = init_model_(net, "orthogonal", generator=torch.Generator().manual_seed(0))
        >>> w = net[0].weight.detach()
        >>> torch.allclose(w @ w.T, torch.eye(3), atol=1e-6), net[2].bias.detach().tolist()
        (True, [0.0, 0.0])
    """
    generator = check_generator(generator)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_choice(scheme, "scheme", SCHEMES)
    gain = check_finite(gain, "gain")
    fill = _SCHEME_FUNCTIONS[scheme]
    for name, module in model.named_modules():
        if not isinstance(module, _LAYERS):
            continue
        if isinstance(module.weight, nn.parameter.UninitializedParameter):
            raise ValueError(f"module {name!r} has an uninitialised (lazy) weight; run a forward pass first")
        fill(module.weight, gain, generator=generator)
        if zero_bias and module.bias is not None:
            module.bias.zero_()
    return model


class InitialiserSpec(NamedTuple):
    """A registered initialiser: ``init(tensor, *, generator=None)`` and the group its law is invariant under.

    The claim: for g in ``group`` acting on the output axis (W ↦ gW) or on the input axis of the flattened weight
    (W ↦ Wgᵀ), g·W has the same law as W.
    """

    init: Callable[..., torch.Tensor]
    group: str


_INITIALISERS: dict[str, InitialiserSpec] = {
    "orthogonal": InitialiserSpec(haar_orthogonal_, "orthogonal"),
    "normal": InitialiserSpec(isotropic_normal_, "orthogonal"),
    "kaiming_normal": InitialiserSpec(nn.init.kaiming_normal_, "orthogonal"),
    "xavier_normal": InitialiserSpec(nn.init.xavier_normal_, "orthogonal"),
    "kaiming_uniform": InitialiserSpec(nn.init.kaiming_uniform_, "signed_permutation"),
    "xavier_uniform": InitialiserSpec(nn.init.xavier_uniform_, "signed_permutation"),
    "uniform": InitialiserSpec(functools.partial(nn.init.uniform_, a=-1.0, b=1.0), "signed_permutation"),
}
"""Initialisers by name → :class:`InitialiserSpec` (init, declared group).

``"uniform"`` is U(−1, 1): the symmetric interval is what makes it B_n-invariant (torch's default U(0, 1) is
only S_n-invariant, since a sign flip moves its mean).
"""


def names() -> list[str]:
    """The registered initialiser names (see :func:`get`).

    Examples:
        >>> import isotorch as it
        >>> it.init.names()[:2]
        ['orthogonal', 'normal']
    """
    return list(_INITIALISERS)


def get(name: str) -> InitialiserSpec:
    """The registered initialiser ``name``: an :class:`InitialiserSpec` (init, declared group).

    Raises:
        KeyError: unknown name (the message lists the valid names).
    """
    return _INITIALISERS[check_name(name, _INITIALISERS, "initialiser")]
