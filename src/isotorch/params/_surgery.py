"""Isotropic network surgery: SVD diagonalisation, growing and pruning units (REFERENCE §5.9).

Possible only because an isotropic site's group is continuous (O(n)): any rotation of the hidden basis is a
symmetry, so the basis can be chosen to make the layer diagonal, and units can be added or removed along
singular directions.

* ``svd_diagonalise``: with W_l = RΛQᵀ, the element Rᵀ at the site gives W_l ← ΛQᵀ, b_l ← Rᵀb_l,
  W_{l+1} ← W_{l+1}R (left form); ``full=True`` also rotates the input site by Qᵀ, so that W_l ← Λ.
* ``grow``: a zero row in the producer, a zero bias and a new consumer column drawn from scale·N(0, 1); exact
  because the new pre-activation is 0 and an isotropic activation leaves ‖z‖ unchanged.
* ``prune``: diagonalise, then remove the k units with the smallest singular values. With b* the removed
  biases and W* the removed consumer columns, the activation's intrinsic squared length is increased by ‖b*‖²
  (keeps ‖z‖), and W*b*·mean(σ(ρ)/ρ) is added to the consumer bias (the "expectation" form of the reference's ψ).
  Exact when the removed singular values and biases are zero; otherwise the change of the consumer's
  pre-activation is at most ‖W_c‖₂·σ_max,removed·‖x‖ + ‖W*‖₂·(σ_max,removed·‖x‖ + ‖b*‖) per sample, for
  profiles with σ(ρ) ≤ ρ and a 1-Lipschitz activation (tanh, softsign, log1p, ReLU-of-norm). The bound is checked.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from isotorch._util import check_generator, check_int, json_safe
from isotorch.params._element import Element
from isotorch.params._errors import SymmetryError
from isotorch.params._sites import Site, Symmetries, symmetries
from isotorch.params._trace import evaluation
from isotorch.params._transform import function_error, transform
from isotorch.testing import tolerance

__all__ = ["PruneResult", "grow", "prune", "svd_diagonalise"]


def _resolve(model: nn.Module, site: str | Site, x, syms: Symmetries | None) -> tuple[Symmetries, Site]:
    if syms is None:
        if x is None:
            raise ValueError("surgery needs an example input x= (or syms=) to find and verify the site")
        syms = symmetries(model, x)
    name = site.name if isinstance(site, Site) else site
    return syms, syms[name]


def _check_isotropic(site: Site, what: str) -> None:
    if not site.free:
        raise SymmetryError(f"site {site.name!r} is {site.status}: {site.reason}")
    if "orthogonal" not in site.groups and not site.general_linear:
        raise SymmetryError(
            f"{what} needs an isotropic site (orthogonal group); site {site.name!r} has {site.group} — rotating it "
            "would change the function"
        )


def _single_linear_producer(model: nn.Module, site: Site) -> nn.Linear:
    if len(site.producers) != 1:
        raise ValueError(f"site {site.name!r} has {len(site.producers)} producers; surgery needs exactly one")
    module = model.get_submodule(site.producers[0])
    if not isinstance(module, nn.Linear):
        raise ValueError(f"surgery needs a Linear producer, site {site.name!r} is produced by {type(module).__name__}")
    return module


def svd_diagonalise(
    model: nn.Module,
    site: str | Site,
    *,
    x: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    syms: Symmetries | None = None,
    full: bool = False,
) -> nn.Module:
    """Rotate an isotropic site so that its producer's rows are orthogonal, sorted by singular value.

    Args:
        model: the network (not modified).
        site: the site (name or :class:`~isotorch.params.Site`); it must have an orthogonal group and a single
            Linear producer.
        x: the example input (to find the site and verify the function) unless ``syms`` is given.
        syms: precomputed :func:`symmetries`.
        full: also rotate the producer's input site (which must be isotropic too) so that W ← Λ (diagonal).

    Returns:
        A new model with the same function (verified).

    Examples:
        >>> import torch, isotorch as it
        >>> from torch import nn
        >>> from isotorch.params import svd_diagonalise
        >>> model = nn.Sequential(nn.Linear(4, 6), it.nn.IsoTanh(), nn.Linear(6, 2)).double()
        >>> new = svd_diagonalise(model, "0", x=torch.randn(5, 4, dtype=torch.float64))
        >>> w = new[0].weight
        >>> torch.allclose(w @ w.T, torch.diag(torch.diagonal(w @ w.T)), atol=1e-10)
        True
    """
    syms, s = _resolve(model, site, x, syms)
    _check_isotropic(s, "svd_diagonalise")
    producer = _single_linear_producer(model, s)
    w = producer.weight.detach().to(torch.float64)
    u, _, vh = torch.linalg.svd(w, full_matrices=True)
    matrices = {s.name: u.mT.contiguous()}
    if full:
        param = f"{s.producers[0]}.weight"
        previous = [t for t in syms if any(a.param == param and a.kind == "in" for a in t.actions)]
        if not previous:
            raise ValueError(f"full=True needs a hidden site before {s.name!r}; its producer reads the model input")
        _check_isotropic(previous[0], "svd_diagonalise(full=True)")
        matrices[previous[0].name] = vh.contiguous()
    return transform(model, Element(syms, matrices))


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _linear_at(model: nn.Module, name: str) -> nn.Linear:
    """The ``nn.Linear`` at ``name``: a producer or consumer of a site that :func:`_check_growable` accepted."""
    module = model.get_submodule(name)
    assert isinstance(module, nn.Linear), name
    return module


def _resized_linear(old: nn.Linear, out_extra: int = 0, in_extra: int = 0) -> nn.Linear:
    new = nn.Linear(
        old.in_features + in_extra,
        old.out_features + out_extra,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[: old.out_features, : old.in_features] = old.weight
        if old.bias is not None:
            new.bias.zero_()
            new.bias[: old.out_features] = old.bias
    return new


def _check_growable(model: nn.Module, site: Site) -> None:
    if site.kind not in ("hidden", "residual"):
        raise ValueError(f"site {site.name!r} ({site.kind}) cannot be resized")
    for a in site.actions:
        module = model.get_submodule(a.param.rpartition(".")[0])
        if a.kind == "passenger" or not isinstance(module, nn.Linear) or a.inner != 1 or a.slice_axis is not None:
            raise ValueError(
                f"resizing supports sites between Linear layers without per-feature parameters; {a.param} "
                f"({type(module).__name__}, {a.kind}) is in the way"
            )


def grow(
    model: nn.Module,
    site: str | Site,
    k: int,
    *,
    x: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    syms: Symmetries | None = None,
    scale: float = 0.01,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Add ``k`` units to a site (neurogenesis): zero producer rows and biases, small random consumer columns.

    Args:
        model: the network (not modified).
        site: the site to widen (Linear producers and consumers, no per-feature parameters).
        k: the number of new units (≥ 1).
        x: the example input unless ``syms`` is given.
        syms: precomputed :func:`symmetries`.
        scale: the standard deviation of the new consumer columns (default 0.01; a zero column would leave the new
            rows with zero gradient).
        generator: a ``torch.Generator`` for the new columns.

    Returns:
        A new, wider model with the same function (verified: exact when the activation maps a zero pre-activation
        to zero without changing the others, e.g. isotropic or ReLU sites).

    Examples:
        >>> import torch, isotorch as it
        >>> from torch import nn
        >>> from isotorch.params import grow
        >>> model = nn.Sequential(nn.Linear(4, 6), it.nn.IsoTanh(), nn.Linear(6, 2))
        >>> grow(model, "0", 3, x=torch.randn(5, 4))[0]
        Linear(in_features=4, out_features=9, bias=True)
    """
    generator = check_generator(generator)
    check_int(k, "k")
    syms, s = _resolve(model, site, x, syms)
    if not s.free:
        raise SymmetryError(f"site {s.name!r} is {s.status}: {s.reason}")
    _check_growable(model, s)
    new = copy.deepcopy(model)
    for name in s.producers:
        _replace_module(new, name, _resized_linear(_linear_at(model, name), out_extra=k))
    for name in s.consumers:
        old = _linear_at(new, name)
        grown = _resized_linear(old, in_extra=k)
        with torch.no_grad():
            cols = torch.randn(grown.out_features, k, generator=generator, dtype=torch.float64) * scale
            grown.weight[:, old.in_features :] = cols.to(grown.weight)
        _replace_module(new, name, grown)
    err, dtype = function_error(model, new, syms.x)
    if not err <= tolerance(dtype):
        raise SymmetryError(f"growing site {s.name!r} changed the function: relative error {err:.3e}")
    return new


@dataclass(frozen=True)
class PruneResult:
    """The result of :func:`prune`.

    Attributes:
        model: the pruned model.
        removed: the singular values of the removed units.
        removed_bias: the norm ‖b*‖ of the removed units' biases (in the singular basis).
        length_update: how much the activation's intrinsic squared length grew (‖b*‖²; 0 if it has none).
        bound: the bound on the consumer pre-activation change per sample (see the module docstring).
        change: the largest measured change of the consumer pre-activation on the example input.
        output_error: the relative change of the model output on the example input.
    """

    model: nn.Module = field(repr=False)
    removed: tuple[float, ...]
    removed_bias: float
    length_update: float
    bound: float
    change: float
    output_error: float

    def to_dict(self) -> dict:
        """A JSON-ready dict (without the model)."""
        return json_safe(
            {
                "removed": list(self.removed),
                "removed_bias": self.removed_bias,
                "length_update": self.length_update,
                "bound": self.bound,
                "change": self.change,
                "output_error": self.output_error,
            }
        )


def _activation_module(model: nn.Module, site: Site):
    mods = []
    for desc in site.primitives:
        name = desc.split(":")[0]
        try:
            mods.append(model.get_submodule(name))
        except AttributeError:
            continue
    return [m for m in mods if hasattr(m, "initial_length") or hasattr(m, "log_length")]


def prune(
    model: nn.Module,
    site: str | Site,
    k: int,
    criterion: str = "singular_value",
    *,
    x: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    syms: Symmetries | None = None,
) -> PruneResult:
    """Remove the ``k`` units of an isotropic site with the smallest singular values (neurodegeneration).

    Args:
        model: the network (not modified).
        site: an isotropic site with a single Linear producer and Linear consumers.
        k: the number of units to remove (1 ≤ k < n).
        criterion: ``"singular_value"`` (the only criterion).
        x: the example input unless ``syms`` is given.
        syms: precomputed :func:`symmetries`.

    Returns:
        :class:`PruneResult` with the pruned model, the removed singular values, the bound and the measured change.

    Raises:
        SymmetryError: a site that is not isotropic, or a measured change above the bound.

    Examples:
        >>> import torch, isotorch as it
        >>> from torch import nn
        >>> from isotorch.params import prune
        >>> model = nn.Sequential(nn.Linear(3, 6), it.nn.IsoTanh(), nn.Linear(6, 2)).double()
        >>> result = prune(model, "0", 2, x=torch.randn(5, 3, dtype=torch.float64))
        >>> result.model[0], result.removed  # rank ≤ 3 (+ bias): the two smallest singular values are 0
        (Linear(in_features=3, out_features=4, bias=True), (0.0, 0.0))
    """
    if criterion != "singular_value":
        raise ValueError(f"criterion must be 'singular_value', got {criterion!r}")
    syms, s = _resolve(model, site, x, syms)
    _check_isotropic(s, "prune")
    _check_growable(model, s)
    check_int(k, "k", maximum=s.size - 1)
    diag = svd_diagonalise(model, s, syms=syms)
    producer = _linear_at(diag, s.producers[0])
    sv = producer.weight.detach().to(torch.float64).norm(dim=1)
    keep = s.size - k
    removed = sv[keep:]
    removed = torch.where(removed < 1e-12 * max(float(sv.max()), 1e-300), torch.zeros_like(removed), removed)
    b_star = (
        producer.bias.detach()[keep:].to(torch.float64)
        if producer.bias is not None
        else torch.zeros(k, dtype=torch.float64)
    )
    inputs = syms.x
    # the producer's input and the mean radial factor σ(ρ)/ρ at the site on the example input
    captured: dict[str, torch.Tensor] = {}
    hooks = [producer.register_forward_hook(lambda m, a, o: captured.update(inp=a[0].detach(), z=o.detach()))]
    acts = _activation_module(diag, s)
    if acts:
        hooks.append(acts[0].register_forward_hook(lambda m, a, o: captured.update(h=o.detach())))
    with evaluation(diag):
        diag(*inputs)
    for h in hooks:
        h.remove()
    z = captured["z"].to(torch.float64).reshape(-1, s.size)
    factor = 1.0
    if "h" in captured:
        hz = captured["h"].to(torch.float64).reshape(-1, s.size)
        ratio = hz.norm(dim=1) / z.norm(dim=1).clamp_min(1e-300)
        factor = float(ratio.mean())
    new = copy.deepcopy(diag)
    _replace_module(new, s.producers[0], _shrunk(producer, out_keep=keep))
    length_update = float(b_star.pow(2).sum())
    for act in _activation_module(new, s):
        if length_update > 0:
            if getattr(act, "learn_length", False):
                with torch.no_grad():
                    act.log_length.copy_(torch.log(act.log_length.exp() + length_update))
            else:
                act.initial_length = (act.initial_length or 0.0) + length_update
    if not _activation_module(new, s):
        length_update = 0.0
    consumer_cols = []
    for name in s.consumers:
        old = _linear_at(diag, name)
        w_star = old.weight.detach()[:, keep:].to(torch.float64)
        consumer_cols.append((name, old, w_star))
        shrunk = _shrunk(old, in_keep=keep)
        if isinstance(shrunk.bias, torch.Tensor):  # a Parameter, or None without a bias
            with torch.no_grad():
                shrunk.bias.add_((w_star @ b_star * factor).to(shrunk.bias))
        _replace_module(new, name, shrunk)
    # the bound and the measured change of each consumer's pre-activation
    x_norm = float(captured["inp"].to(torch.float64).reshape(-1, producer.in_features).norm(dim=1).max())
    sig = float(removed.max()) if len(removed) else 0.0
    bound, change = 0.0, 0.0
    outs_old, outs_new = {}, {}
    hooks = []
    for name, _, _ in consumer_cols:
        hooks.append(diag.get_submodule(name).register_forward_hook(lambda m, a, o, n=name: outs_old.update({n: o})))
        hooks.append(new.get_submodule(name).register_forward_hook(lambda m, a, o, n=name: outs_new.update({n: o})))
    err, dtype = function_error(diag, new, inputs)
    for h in hooks:
        h.remove()
    for name, old, w_star in consumer_cols:
        wc = float(torch.linalg.matrix_norm(old.weight.detach().to(torch.float64), ord=2))
        ws = float(torch.linalg.matrix_norm(w_star, ord=2)) if w_star.numel() else 0.0
        bound = max(bound, wc * sig * x_norm + ws * (sig * x_norm + float(b_star.norm())))
        delta = (outs_new[name].to(torch.float64) - outs_old[name].to(torch.float64)).reshape(-1, old.out_features)
        change = max(change, float(delta.norm(dim=1).max()))
    slack = tolerance(dtype) * (1 + max(float(o.abs().max()) for o in outs_old.values()))
    if not change <= bound + slack or math.isnan(change):
        raise SymmetryError(f"pruning site {s.name!r} changed a consumer by {change:.3e}, above the bound {bound:.3e}")
    return PruneResult(
        model=new,
        removed=tuple(float(v) for v in removed),
        removed_bias=float(b_star.norm()),
        length_update=length_update,
        bound=bound,
        change=change,
        output_error=err,
    )


def _shrunk(old: nn.Linear, out_keep: int | None = None, in_keep: int | None = None) -> nn.Linear:
    out_f = old.out_features if out_keep is None else out_keep
    in_f = old.in_features if in_keep is None else in_keep
    new = nn.Linear(in_f, out_f, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight[:out_f, :in_f])
        if old.bias is not None:
            new.bias.copy_(old.bias[:out_f])
    return new
