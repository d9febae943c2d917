"""Apply a group element to a model's parameters, and verify that the function did not change.

For each site s with element g (REFERENCE §1.3, §5.2):

    producers  W → g·W, b → g·b            consumers  W → W·g⁻¹
    dual rows  W_K → g⁻ᵀ·W_K (keys)        passengers p → g·p (per-feature norm parameters, permutations)

The new model is checked on the example input the symmetries were found with: if its output differs from the
original's by more than the dtype tolerance (:func:`isotorch.testing.tolerance`), :class:`SymmetryError` is
raised. isotorch never returns a silently broken model.

Optimiser state transforms like the gradient, ∇L(T·θ) = T⁻ᵀ∇L(θ): momentum and first moments with T⁻ᵀ, Adam's
second moments with the elementwise square of T⁻ᵀ, which is exact only for monomial elements (permutations, sign
flips, positive scalings); for a rotation it raises, because Adam is not rotation-equivariant (REFERENCE §2.5).
States that are neither (Adamax's max |g|, ASGD's parameter average, Adadelta's squared updates) are moved by
signed permutations only; any other element raises.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from isotorch import testing as _testing
from isotorch.params._element import Element, _is_perm, check_membership
from isotorch.params._errors import SymmetryError
from isotorch.params._rotations import _hadamard_apply, _hadamard_int
from isotorch.params._sites import Action, Symmetries
from isotorch.params._trace import evaluation

__all__ = ["transform"]

_GRADIENT_STATE = {"momentum_buffer", "exp_avg", "grad", "prev"}
_SQUARE_STATE = {"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum"}
# exact only under signed permutations: ASGD's parameter average ``ax`` moves like the parameter, Adamax's running
# max |g| ``exp_inf`` like |g|, Adadelta's ``acc_delta`` like squared updates; under scalings each differs
_SIGNED_PERMUTATION_STATE = {"ax": "gradient", "exp_inf": "square", "acc_delta": "square"}


def _signed_permutation(m: torch.Tensor) -> bool:
    if m.ndim == 1:  # a permutation index vector
        return True
    nonzero = m.abs() > 0
    return bool((nonzero.sum(1) == 1).all() and torch.allclose(m.abs().sum(1), torch.ones_like(m[:, 0])))


def act(t: torch.Tensor, g: torch.Tensor, action: Action, plan: _Plan | None = None) -> torch.Tensor:
    """Multiply the features of ``t`` along ``action.axis`` (in the range of ``action.slice_axis``) by ``g``.

    ``g`` is an (n, n) matrix or a permutation index vector; the result has ``t``'s dtype and is differentiable
    in both ``t`` and ``g``. ``plan`` (from :func:`_plan_of`, computed once per element) says how to apply a
    constant ``g`` cheaply: monomial matrices by ``index_select`` × scale, (signed, scaled) Hadamard matrices by a
    fast Hadamard transform; without it the plan is worked out here.
    """
    if plan is None:
        plan = _plan_of(g)
    sa = action.axis if action.slice_axis is None else action.slice_axis
    size = t.shape[sa]
    stop = size if action.stop is None else action.stop
    sliced = (action.start, stop) != (0, size)
    seg = t.narrow(sa, action.start, stop - action.start) if sliced else t
    n = g.shape[0]
    if _is_perm(g) and seg.shape[action.axis] == n * action.inner:
        # select along the axis directly: no copies to move the axis first and back
        index = g.to(seg.device)
        if action.inner != 1:
            index = (index[:, None] * action.inner + torch.arange(action.inner, device=seg.device)).reshape(-1)
        out = seg.index_select(action.axis, index)
        if not sliced:
            return out
        return torch.cat([t.narrow(sa, 0, action.start), out, t.narrow(sa, stop, size - stop)], dim=sa)
    if plan.kind == "hadamard" and seg.shape[action.axis] == n * action.inner:
        # g = α·diag(r)·H·diag(c) (H or Hᵀ the integer Hadamard matrix): g·m = α·r ⊙ (H·(c ⊙ m)), O(n log n)-ish
        alpha, rows, cols, transposed = plan.data
        dtype = torch.promote_types(g.dtype, seg.dtype)
        shape = [1] * seg.ndim
        shape[action.axis] = -1
        r = rows.to(device=seg.device, dtype=dtype).repeat_interleave(action.inner).reshape(shape)
        c = cols.to(device=seg.device, dtype=dtype).repeat_interleave(action.inner).reshape(shape)
        # left multiplication by H along the axis is x·Hᵀ in the transform's row convention
        out = _hadamard_apply(seg.to(dtype) * c, action.axis, transpose=not transposed, inner=action.inner)
        out = (out * (r * alpha)).to(t.dtype)
        if not sliced:
            return out
        return torch.cat([t.narrow(sa, 0, action.start), out, t.narrow(sa, stop, size - stop)], dim=sa)
    if plan.kind == "monomial" and seg.shape[action.axis] == n * action.inner:
        # one non-zero per row (signed permutations, scalings): O(n·m), exact
        cols, values = plan.data
        index = cols.to(seg.device)
        scale = values.to(device=seg.device, dtype=torch.promote_types(values.dtype, seg.dtype))
        if action.inner != 1:
            index = (index[:, None] * action.inner + torch.arange(action.inner, device=seg.device)).reshape(-1)
            scale = scale.repeat_interleave(action.inner)
        shape = [1] * seg.ndim
        shape[action.axis] = -1
        out = (seg.index_select(action.axis, index) * scale.reshape(shape)).to(t.dtype)
        if not sliced:
            return out
        return torch.cat([t.narrow(sa, 0, action.start), out, t.narrow(sa, stop, size - stop)], dim=sa)
    moved = seg.movedim(action.axis, 0)
    if moved.shape[0] != n * action.inner:
        raise SymmetryError(
            f"parameter {action.param} has {moved.shape[0]} entries on axis {action.axis}, but the element acts on "
            f"{n} features × {action.inner}"
        )
    m = moved.reshape(n, action.inner, -1)
    if _is_perm(g):
        out = m.index_select(0, g.to(m.device))
    else:
        dtype = torch.promote_types(g.dtype, m.dtype)
        out = torch.einsum("ij,jkr->ikr", g.to(device=m.device, dtype=dtype), m.to(dtype)).to(t.dtype)
    out = out.reshape(moved.shape).movedim(0, action.axis)
    if not sliced:
        return out
    return torch.cat([t.narrow(sa, 0, action.start), out, t.narrow(sa, stop, size - stop)], dim=sa)


@dataclass(frozen=True)
class _Plan:
    """How to apply one element matrix: ``kind`` "perm" (index vector or permutation), "monomial" (data: columns,
    values), "hadamard" (data: α, row signs, column signs, whether H is transposed) or "dense"."""

    kind: str
    data: tuple = ()


def _plan_of(g: torch.Tensor) -> _Plan:
    """The cheapest exact way to apply ``g`` (an O(n²) look at its entries; a matrix with a gradient is dense)."""
    if _is_perm(g):
        return _Plan("perm")
    if g.ndim != 2 or g.requires_grad:
        return _Plan("dense")
    monomial = _monomial(g)
    if monomial is not None:
        return _Plan("monomial", monomial)
    form = _hadamard_form(g)
    if form is not None:
        return _Plan("hadamard", form)
    return _Plan("dense")


def _hadamard_form(g: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor, bool] | None:
    """(α, r, c, transposed) with g = α·diag(r)·H·diag(c) exactly (r, c signs; H the integer Hadamard matrix of
    :func:`hadamard`, or its transpose), or ``None``. Every entry of such a g is ±α, so the test is exact: all
    |g_ij| equal to |g_00| (to one ulp) and the sign pattern of g·H (elementwise) of rank one."""
    n = g.shape[0]
    if n < 4 or g.shape != (n, n) or not g.is_floating_point():
        return None
    alpha = float(g[0, 0].abs())
    if alpha == 0.0 or not bool(((g.abs() - alpha).abs() <= 2 * torch.finfo(g.dtype).eps * alpha).all()):
        return None
    try:
        h = _hadamard_int(n).to(g.device)
    except ValueError:  # no Hadamard matrix of this order here
        return None
    signs = torch.where(g > 0, 1, -1).to(torch.int64)
    for transposed, mat in ((False, h), (True, h.T)):
        pattern = signs * mat  # = r_i c_j for g = α·diag(r)·H·diag(c)
        rows, cols = pattern[:, 0], pattern[0, :] * pattern[0, 0]
        if torch.equal(pattern, rows[:, None] * cols[None, :]):
            return alpha, rows, cols, transposed
    return None


def _monomial(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(column of the non-zero entry of each row, its value) if ``g`` has exactly one non-zero per row and per
    column, else ``None``."""
    nonzero = g != 0
    if not bool((nonzero.sum(1) == 1).all()) or not bool((nonzero.sum(0) == 1).all()):
        return None
    cols = nonzero.to(torch.int8).argmax(1)
    return cols, g.gather(1, cols[:, None]).squeeze(1)


def _inverse_transpose(g: torch.Tensor) -> torch.Tensor:
    if _is_perm(g):
        return g  # a permutation matrix is orthogonal: g⁻ᵀ = g
    plan = _plan_of(g)
    if plan.kind == "monomial":  # g[i, c_i] = v_i  ⇒  g⁻ᵀ[i, c_i] = 1/v_i: no O(n³) inverse
        cols, values = plan.data
        out = torch.zeros_like(g)
        out[torch.arange(g.shape[0], device=g.device), cols] = 1 / values
        return out
    if plan.kind == "hadamard":  # g = α·D_r·H·D_c, HHᵀ = nI  ⇒  g⁻ᵀ = g/(α²n)
        return g / (plan.data[0] ** 2 * g.shape[0])
    return torch.linalg.inv(g).mT


def apply_element(
    tensors: Mapping[str, torch.Tensor],
    syms: Symmetries,
    matrices: Mapping[str, torch.Tensor],
    *,
    mode: str = "parameter",
    skip_missing: bool = False,
    inplace: bool = False,
) -> dict[str, torch.Tensor]:
    """Apply site matrices to a dict of named tensors (differentiable); returns the changed entries.

    Args:
        tensors: state-dict-like name → tensor.
        syms: the symmetries whose site actions are used.
        matrices: site name → (n, n) matrix or permutation index vector.
        mode: ``"parameter"`` (the action on parameters), ``"gradient"`` (its inverse transpose, for gradients and
            first moments) or ``"square"`` (the elementwise square of the gradient action, for second moments;
            monomial elements only).
        skip_missing: ignore actions on tensors that are not in ``tensors``.
        inplace: write into ``tensors`` themselves (no copies; not differentiable), e.g. the state of a fresh
            copy of the model.
    """
    out: dict[str, torch.Tensor] = {}
    owned: set[str] = set()
    for name, g in matrices.items():
        site = syms[name]
        g_inv_t = _inverse_transpose(g)
        plans = {id(g): _plan_of(g), id(g_inv_t): _plan_of(g_inv_t)}  # once per element, not per action
        for a in site.actions:
            if a.param not in tensors:
                if skip_missing:
                    continue
                raise SymmetryError(f"parameter {a.param} of site {name!r} is not in the model")
            forward = a.kind in ("out", "passenger")
            if mode == "gradient":
                forward = not forward
            mat = g if forward else g_inv_t
            if mode == "square":
                mat = (g_inv_t if forward else g) if not _is_perm(g) else g
                if not _is_perm(mat):
                    nonzero = mat.abs() > 1e-12 * mat.abs().max()
                    if not bool((nonzero.sum(0) == 1).all() and (nonzero.sum(1) == 1).all()):
                        raise SymmetryError(
                            f"second-moment optimiser state cannot be transformed by the non-monomial element at "
                            f"site {name!r} (an adaptive optimiser is not equivariant to it)"
                        )
                    mat = mat * mat
            plan = plans.get(id(mat)) if mode != "square" else None
            current = out.get(a.param)
            if current is None:
                current = tensors[a.param]
                if inplace:
                    owned.add(a.param)
                elif not torch.is_grad_enabled() or not (current.requires_grad or mat.requires_grad):
                    current = current.clone()  # owned: sliced actions then write their slice in place
                    owned.add(a.param)
            if a.param in owned and not (torch.is_grad_enabled() and mat.requires_grad):
                _act_slice_inplace(current, mat, a, plan)
                out[a.param] = current
            else:
                out[a.param] = act(current, mat, a, plan)
    return out


def _act_slice_inplace(t: torch.Tensor, g: torch.Tensor, action: Action, plan: _Plan | None = None) -> None:
    """:func:`act` written into ``t`` (a tensor this module owns): only the touched slice is rewritten, instead of
    concatenating a new copy of the whole parameter for every head of a packed projection."""
    sa = action.axis if action.slice_axis is None else action.slice_axis
    size = t.shape[sa]
    stop = size if action.stop is None else action.stop
    seg = t.narrow(sa, action.start, stop - action.start)
    new = act(seg, g, Action(action.param, action.axis, action.kind, action.inner), plan)
    with torch.no_grad():
        seg.copy_(new)


def check_model(model: nn.Module, syms: Symmetries) -> None:
    """Raise ``ValueError`` if ``model``'s state dict does not match the one the symmetries were found on."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if shapes == dict(syms.shapes):
        return
    missing = sorted(set(syms.shapes) - set(shapes))
    extra = sorted(set(shapes) - set(syms.shapes))
    changed = [
        f"{k}: {shapes[k]} vs {syms.shapes[k]}" for k in shapes if k in syms.shapes and shapes[k] != syms.shapes[k]
    ]
    parts = []
    if missing:
        parts.append(f"missing {missing[:5]}")
    if extra:
        parts.append(f"unexpected {extra[:5]}")
    if changed:
        parts.append(f"different shapes {changed[:5]}")
    raise ValueError(f"model does not match the symmetries ({syms.model}): " + "; ".join(parts))


def _leaves(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _leaves(o)]
    if isinstance(obj, Mapping):
        return [t for o in obj.values() for t in _leaves(o)]
    return []


def _rescaled(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Divide both by their largest magnitude, so that the relative error does not overflow for huge outputs."""
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    scale = max(float(a.abs().max()) if a.numel() else 0.0, float(b.abs().max()) if b.numel() else 0.0)
    if scale > 0 and scale != float("inf"):
        return a / scale, b / scale
    return a, b


def function_error(model_a: nn.Module, model_b: nn.Module, inputs: tuple) -> tuple[float, torch.dtype]:
    """The largest relative error between the outputs of two models on ``inputs`` (eval mode, no grad)."""
    with evaluation(model_a), evaluation(model_b):
        out_a = _leaves(model_a(*inputs))
        out_b = _leaves(model_b(*inputs))
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in out_a):
        raise ValueError("the model's output on the example input is not finite, so no transform can be verified")
    if len(out_a) != len(out_b) or not out_a:
        raise SymmetryError("the transformed model returns a different output structure")
    errors = [
        _testing.relative_error(*_rescaled(a, b)) if a.is_floating_point() else float(not torch.equal(a, b))
        for a, b in zip(out_a, out_b, strict=True)
    ]
    worst = max(errors)
    if any(e != e for e in errors):  # NaN
        worst = float("nan")
    return worst, out_a[0].dtype


def verify(model: nn.Module, new: nn.Module, syms: Symmetries, tol: float | None, what: str) -> float:
    """Raise :class:`SymmetryError` if ``new`` computes a different function than ``model`` on the example."""
    err, dtype = function_error(model, new, syms.x)
    limit = tol if tol is not None else (_testing.tolerance(dtype) if dtype.is_floating_point else 0.0)
    if not err <= limit:
        raise SymmetryError(
            f"{what} changed the model's function on the example input: relative error {err:.3e} > tolerance "
            f"{limit:.1e} ({dtype})"
        )
    return err


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict(keep_vars=True))


def load_changes(model: nn.Module, changes: Mapping[str, torch.Tensor]) -> None:
    """Copy changed tensors into ``model``'s parameters and buffers in place."""
    state = _state_tensors(model)
    with torch.no_grad():
        for name, value in changes.items():
            state[name].copy_(value)


def transform(
    model: nn.Module,
    element: Element,
    *,
    optimiser: torch.optim.Optimizer | None = None,
    check: bool = True,
    check_group: bool = True,
    tol: float | None = None,
) -> nn.Module:
    """Apply a group element to a copy of ``model`` and verify that the function is unchanged.

    Every parameter and buffer that a site touches is transformed: weights, biases, attention projections, norm
    gains and running statistics (see :class:`~isotorch.params.Action`).

    Args:
        model: the model the element's symmetries were found on (or one with the same state-dict shapes).
        element: an :class:`~isotorch.params.Element` (from :func:`sample_element`, :func:`align`, or built by
            hand).
        optimiser: if given, its state (momentum, Adam moments) is transformed like the gradient and the optimiser
            is rebound **in place** to the returned model's parameters.
        check: verify the function on the example input (default ``True``).
        check_group: check first that every matrix lies in its site's group (default ``True``).
        tol: the relative-error tolerance of the check (default: :func:`isotorch.testing.tolerance` of the
            output dtype, 1e-4 in float32 and 1e-9 in float64).

    Returns:
        A new model (``model`` is not modified).

    Raises:
        SymmetryError: a matrix outside its site's group, a frozen or broken site, or a function that changed.
        ValueError: a model that does not match the element's symmetries.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from isotorch.params import symmetries, transform, Element, SymmetryError
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
        >>> syms = symmetries(model, torch.randn(8, 3, dtype=torch.float64))
        >>> swapped = transform(model, Element(syms, {"0": torch.tensor([1, 0, 3, 2])}))
        >>> torch.equal(swapped[0].weight[0], model[0].weight[1])
        True
        >>> rotation = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
        >>> try:
        ...     transform(model, Element(syms, {"0": rotation}))
        ... except SymmetryError as err:
        ...     print("refused")
        refused
    """
    if not isinstance(element, Element):
        raise TypeError(f"element must be an Element, got {type(element).__name__}")
    syms = element.symmetries
    check_model(model, syms)
    if check_group:
        check_membership(element)
    else:
        for name in element.matrices:
            if not syms[name].free:
                raise SymmetryError(f"site {name!r} is {syms[name].status}: {syms[name].reason}")
    new = copy.deepcopy(model)
    with torch.no_grad():  # written straight into the copy's parameters and buffers
        apply_element(_state_tensors(new), syms, element.matrices, inplace=True)
    if check:
        verify(model, new, syms, tol, "the transform")
    if optimiser is not None:
        _rebind_optimiser(optimiser, model, new, syms, element)
    return new


def _rebind_optimiser(optimiser, model, new, syms, element) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    new_params = dict(new.named_parameters())
    state: dict[str, dict] = {}
    for group in optimiser.param_groups:
        for p in group["params"]:
            if id(p) not in names:
                raise ValueError("the optimiser holds a parameter that is not in the model")
            state[names[id(p)]] = optimiser.state.get(p, {})
    # collect every state tensor with its parameter's shape into per-key dicts and transform them together
    keys = {k for s in state.values() for k, v in s.items() if isinstance(v, torch.Tensor) and v.ndim > 0}
    touched = {a.param for name in element.matrices for a in syms[name].actions}
    transformed: dict[str, dict[str, torch.Tensor]] = {}
    for key in keys:
        tensors = {
            n: s[key]
            for n, s in state.items()
            if isinstance(s.get(key), torch.Tensor) and s[key].shape == new_params[n].shape
        }
        relevant = {n: t for n, t in tensors.items() if n in touched}
        if not relevant:
            continue
        if key in _GRADIENT_STATE:
            mode = "gradient"
        elif key in _SQUARE_STATE:
            mode = "square"
        elif key in _SIGNED_PERMUTATION_STATE:
            if not all(_signed_permutation(m) for m in element.matrices.values()):
                raise SymmetryError(
                    f"optimiser state {key!r} can be moved exactly only by (signed) permutations, not by this element"
                )
            mode = _SIGNED_PERMUTATION_STATE[key]
        else:
            raise SymmetryError(f"optimiser state {key!r} has no known transformation rule")
        changes = apply_element(tensors, syms, element.matrices, mode=mode, skip_missing=True)
        for n, v in changes.items():
            if n in tensors:
                transformed.setdefault(n, {})[key] = v
    new_state = {}
    for group in optimiser.param_groups:
        group["params"] = [new_params[names[id(p)]] for p in group["params"]]
    for n, s in state.items():
        entry = {
            k: (transformed.get(n, {}).get(k, v).clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()
        }
        if entry:
            new_state[new_params[n]] = entry
    optimiser.state.clear()
    optimiser.state.update(new_state)
