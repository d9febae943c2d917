"""The symmetry audit of one function or module: which groups of the lattice does it respect?

For every candidate group G (default: :func:`isotorch.groups.lattice` at the size n of the feature axis) and
``trials`` random elements g ∈ G, the audit compares, in float64,

    equivariance:  rel(f(g·x), g·f(x))        invariance:  rel(f(g·x), f(x))

with rel(a, b) = rms(a − b) / max(rms(a) + rms(b), 1e-7) (:func:`isotorch.testing.relative_error`), on the
caller's input *and* on synthetic inputs (Gaussian, ×10, ×0.1, sparse, with outliers): an elementwise map can look
isotropic on special inputs. A group holds when the worst error is at most the tolerance of the output dtype
(:func:`isotorch.testing.tolerance`; float32 gets 10× slack, i.e. 1e-3 as in e3nn, because a composition of
float32 ops accumulates rounding). For continuous groups the Lie derivative

    L_A f(x) = J_f(x)(Ax) − A f(x)      (invariance: J_f(x)(Ax))

along random generators A of the Lie algebra (``torch.func.jvp``), normalised by ‖A‖ rms f(x) with ‖A‖ taken
where it acts (rms(Ax)/rms(x)), is a second opinion; disagreements between the two are reported. Functions that
are constant, zero or ignore their input are flagged ``degenerate`` instead of being credited with every symmetry;
functions that raise, return a non-tensor or a non-float, or are random get a result whose ``status`` and
``reason`` say so.

Above 512 features, elements of the continuous groups are products of random Householder reflections instead of
Haar samples (exact group elements that act in O(n); see :mod:`isotorch.audit._sampling`), so that auditing the
hidden layers of a real model does not cost an O(n³) QR per element.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from isotorch import groups as _groups
from isotorch._util import as_generator, check_bool, check_choice, check_int, feature_dim
from isotorch.audit._result import AuditResult, maximal_groups
from isotorch.audit._sampling import DISTRIBUTIONS, Element, Sampler, draw_input, random_generator
from isotorch.testing import relative_error, tolerance

__all__ = ["audit", "audit_module", "default_tolerance"]

PARAMETER_MODES = ("permute", "fixed")


def default_tolerance(dtype: torch.dtype) -> float:
    """The audit's tolerance for outputs of ``dtype``: :func:`isotorch.testing.tolerance`, ×10 for float32.

    Examples:
        >>> import torch
        >>> default_tolerance(torch.float32), default_tolerance(torch.float64)
        (0.001, 1e-09)
    """
    base = tolerance(dtype)
    return base * 10 if dtype == torch.float32 else base


def _name_of(fn: object) -> str:
    if isinstance(fn, functools.partial):
        return _name_of(fn.func)
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    return getattr(fn, "__name__", None) or type(fn).__name__


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().to(torch.float64).pow(2).mean().sqrt()) if t.numel() else 0.0


def _describe(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = message if len(message) <= 160 else message[:157] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@contextlib.contextmanager
def _rng_guard(device: torch.device):
    """Fork the global RNG so that auditing a random function does not advance the caller's RNG."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            yield


class _Target:
    """Calls the audited function; for modules, permutes feature-aligned parameters with permutation elements.

    With ``common_random_numbers``, :meth:`capture_rng` records the global RNG state once (inside the audit's fork of
    the global RNG) and every call replays it, so a random function draws the same randomness on every call.
    """

    def __init__(
        self, fn: Callable, module: nn.Module | None, parameters: str, common_random_numbers: bool = False
    ) -> None:
        self.fn = fn
        self.module = module
        self.parameters = parameters
        self.common_random_numbers = common_random_numbers
        self.aligned: dict[str, torch.Tensor] = {}
        self._rng_state: tuple[torch.Tensor, tuple[int, torch.Tensor] | None] | None = None

    def align(self, n: int) -> None:
        if self.module is None or self.parameters != "permute":
            return
        named = [*self.module.named_parameters(), *self.module.named_buffers()]
        self.aligned = {k: t for k, t in named if t.ndim == 1 and t.shape[0] == n and t.is_floating_point()}

    def capture_rng(self, device: torch.device) -> None:
        """Record the global RNG state (CPU, and ``device`` when it is a GPU) that every call replays."""
        if not self.common_random_numbers:
            return
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            self._rng_state = (torch.get_rng_state(), (index, torch.cuda.get_rng_state(index)))
        else:
            self._rng_state = (torch.get_rng_state(), None)

    def _replay_rng(self) -> None:
        if self._rng_state is None:
            return
        cpu, cuda = self._rng_state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda[1], cuda[0])

    def pure(self, z: torch.Tensor) -> object:
        """A call that is safe under ``torch.func`` transforms: buffers (running statistics) are cloned inside it."""
        if self.module is None:
            return self(z)
        self._replay_rng()
        buffers = {k: b.clone() for k, b in self.module.named_buffers()}
        return torch.func.functional_call(self.module, buffers, (z.clone(),))

    def __call__(self, z: torch.Tensor, element: Element | None = None) -> object:
        z = z.clone()
        self._replay_rng()
        if element is not None and self.aligned and self.module is not None and element.is_permutation:
            moved = {k: element.act(t.detach(), 0).to(t.dtype) for k, t in self.aligned.items()}
            return torch.func.functional_call(self.module, moved, (z,))
        return self.fn(z)


def _feature_axis(y: torch.Tensor, x: torch.Tensor, dim: int) -> int | None:
    """The axis of the output that carries the feature axis of the input, or None if it was not kept."""
    n = x.shape[dim]
    if y.ndim == x.ndim:
        return dim if y.shape[dim] == n else None
    negative = dim - x.ndim if dim >= 0 else dim
    if y.ndim >= -negative and y.shape[negative] == n:
        return negative
    return None


def _resolve_groups(groups, n: int, name: str = "groups") -> list[_groups.Group]:
    if groups is None:
        return _groups.lattice(n)
    if isinstance(groups, (str, _groups.Group)):
        groups = [groups]
    out = []
    for g in groups:
        group = _groups.get(g)
        try:
            group.check(n)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if group not in out:
            out.append(group)
    if not out:
        raise ValueError(f"{name} must name at least one group, got an empty collection")
    return out


def _resolve_inputs(inputs) -> tuple[str, ...]:
    if inputs is None:
        return ("given", *DISTRIBUTIONS)
    inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    valid = ("given", *DISTRIBUTIONS)
    bad = [i for i in inputs if i not in valid]
    if bad or not inputs:
        raise ValueError(f"inputs must be a non-empty subset of {valid}, got {inputs!r}")
    return tuple(dict.fromkeys(inputs))


def _check_x(x: object, dim: int) -> int:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    d = feature_dim(x, dim)
    if x.numel() == 0:
        raise ValueError(f"x must be non-empty, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf; audit a finite input")
    return x.shape[d]


class _Max:
    """A running max that keeps NaN (an unmeasurable comparison fails the group)."""

    def __init__(self) -> None:
        self.value = 0.0

    def add(self, v: float) -> None:
        if math.isnan(v) or math.isnan(self.value):
            self.value = math.nan
        else:
            self.value = max(self.value, v)


def _held(value: float, tol: float) -> bool:
    return not math.isnan(value) and value <= tol


class _LieUnavailable(Exception):
    """Forward-mode AD through the function failed; the Lie derivative is reported as unavailable."""


def _lie_errors(target: _Target, group, tested, dim, ydim, trials, gen, lie_inputs) -> dict[str, float] | None:
    n = tested[0][1].shape[dim]
    eq, inv = _Max(), _Max()
    count = max(1, trials // 4)
    ran = False
    for _label, z, _fz in tested[:lie_inputs]:
        for _ in range(count):
            a_el = random_generator(group, n, gen)
            if a_el is None:
                return None
            tangent64 = a_el.act(z, dim)
            tangent = tangent64.to(z.dtype)
            try:
                with warnings.catch_warnings():
                    # torch loads its forward-AD decompositions on first use through the deprecated torch.jit.script
                    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
                    # (output, jvp): torch's annotation also allows the has_aux triple
                    out, jvp = torch.func.jvp(target.pure, (z,), (tangent,))[:2]
            except Exception as exc:
                raise _LieUnavailable(_describe(exc)) from None
            # normalised by ‖A‖ rms f(x), with ‖A‖ measured where it acts: rms(Ax) / rms(x)
            scale = max(_rms(tangent64) / max(_rms(z), 1e-300) * _rms(out), 1e-12)
            if ydim is not None:
                eq.add(_rms(jvp.to(torch.float64) - a_el.act(out, ydim)) / scale)
            inv.add(_rms(jvp) / scale)
            ran = True
    if not ran:
        return None
    return {"equivariance": eq.value if ydim is not None else math.nan, "invariance": inv.value}


_CONNECTED = ("special_orthogonal", "positive_scaling")


def _disagreements(errors, lie, tol) -> list[str]:
    out = []
    for key, lie_errors in lie.items():
        for relation, l_err in lie_errors.items():
            f_err = errors[key][relation]
            if math.isnan(l_err) or math.isnan(f_err) or _held(f_err, tol) == _held(l_err, tol):
                continue
            if _held(l_err, tol):
                why = (
                    "the violation only shows at finite distance from the identity (e.g. an eps or a saturation)"
                    if _groups.get(key).name in _CONNECTED
                    else "the identity component holds, a disconnected part (e.g. reflections) breaks it"
                )
                out.append(
                    f"{key} {relation}: the Lie derivative vanishes ({l_err:.1e}) but finite elements fail "
                    f"({f_err:.1e}): {why}"
                )
            else:
                out.append(
                    f"{key} {relation}: finite elements hold ({f_err:.1e}) but the Lie derivative is {l_err:.1e}: "
                    f"the function is not smooth at these inputs, or the finite trials missed a violation"
                )
    return out


def _run(
    target: _Target,
    x: torch.Tensor,
    *,
    dim: int,
    groups,
    trials: int,
    generator,
    tol: float | None,
    inputs,
    exhaustive: bool,
    lie: bool,
    name: str,
    kind: str,
    sampler: Sampler | None = None,
    lie_inputs: int | None = None,
) -> AuditResult:
    n = _check_x(x, dim)
    trials = check_int(trials, "trials")
    group_list = _resolve_groups(groups, n)
    input_names = _resolve_inputs(inputs)
    gen = sampler.generator if sampler is not None else as_generator(generator)
    sampler = sampler if sampler is not None else Sampler(gen)
    target.align(n)
    notes: list[str] = []

    def result(status: str, reason: str | None, **fields) -> AuditResult:
        base = {
            "name": name,
            "kind": kind,
            "n": n,
            "dim": dim,
            "dtype": str(fields.pop("out_dtype", x.dtype)).replace("torch.", ""),
            "tolerance": fields.pop("tol_value", math.nan),
            "trials": trials,
            "inputs": fields.pop("input_labels", ()),
            "errors": {},
            "equivariant": frozenset(),
            "invariant": frozenset(),
            "maximal": frozenset(),
            "status": status,
            "reason": reason,
            "notes": tuple(notes),
        }
        base.update(fields)
        return AuditResult(**base)

    with _rng_guard(x.device), torch.no_grad():
        target.capture_rng(x.device)
        try:
            y = target(x)
        except Exception as exc:
            return result("failed", f"raised {_describe(exc)}")
        if not isinstance(y, torch.Tensor):
            return result("failed", f"returned {type(y).__name__}, not a tensor")
        if not y.is_floating_point():
            return result("failed", f"returned a {str(y.dtype).replace('torch.', '')} tensor, not floating point")
        if not bool(torch.isfinite(y).all()):
            return result("failed", "the output on the given input contains NaN or inf")
        tol = default_tolerance(y.dtype) if tol is None else float(tol)
        base_tol = default_tolerance(y.dtype)  # randomness and degeneracy do not depend on the caller's tolerance
        common = {"out_dtype": y.dtype, "tol_value": tol}
        try:
            y_again = target(x)
        except Exception as exc:
            return result("failed", f"raised on a second call: {_describe(exc)}", **common)
        if not isinstance(y_again, torch.Tensor) or y_again.shape != y.shape:
            return result("random", "two calls on the same input return different shapes", **common)
        difference = relative_error(y_again, y)
        if not difference <= base_tol:
            return result("random", f"two calls on the same input differ (relative error {difference:.2e})", **common)
        ydim = _feature_axis(y, x, dim)
        if ydim is None:
            notes.append(
                f"the output {tuple(y.shape)} does not keep the feature axis (size {n} along dim={dim}) of the "
                f"input {tuple(x.shape)}: only invariance is measured"
            )
        if _rms(x) == 0 or (n > 1 and bool((x.std(dim) == 0).all())):
            notes.append("the given input is constant along dim, so it cannot reveal a broken symmetry by itself")

        tested: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        for label in input_names:
            z = x if label == "given" else draw_input(label, x, gen)
            try:
                fz = y if label == "given" else target(z)
            except Exception as exc:
                notes.append(f"input {label!r} skipped: the function raised {_describe(exc)}")
                continue
            if not isinstance(fz, torch.Tensor) or fz.shape != y.shape:
                notes.append(f"input {label!r} skipped: the output shape depends on the input values")
                continue
            if not bool(torch.isfinite(fz).all()):
                notes.append(f"input {label!r} skipped: the output contains NaN or inf")
                continue
            tested.append((label, z, fz))
        labels = tuple(label for label, _, _ in tested)
        common["input_labels"] = labels

        degenerate = None
        if all(_rms(fz) == 0 for _, _, fz in tested):
            degenerate = "the output is zero on every input"
        else:
            a, b = draw_input("gaussian", x, gen), draw_input("gaussian", x, gen)
            try:
                fa, fb = target(a), target(b)
                if isinstance(fa, torch.Tensor) and isinstance(fb, torch.Tensor) and fa.shape == fb.shape:
                    if relative_error(fa, fb) <= base_tol:
                        degenerate = "the output does not depend on the input (equal on independent inputs)"
            except Exception as exc:
                notes.append(f"the degeneracy check raised {_describe(exc)}")

        errors: dict[str, dict[str, float]] = {}
        for group in group_list:
            count = 1 if group.name == "trivial" else trials
            eq = _Max() if ydim is not None else None
            inv = _Max()
            for element in sampler.elements(group, n, count):
                for label, z, fz in tested:
                    eq_done = eq is None or (not exhaustive and not _held(eq.value, tol))
                    inv_done = not exhaustive and not _held(inv.value, tol)
                    if eq_done and inv_done:
                        break
                    gz = element.act(z, dim).to(z.dtype)
                    try:
                        fgz = target(gz, element)
                    except Exception as exc:
                        notes.append(
                            f"{group.key}: the function raised on a transformed {label} input: {_describe(exc)}"
                        )
                        fgz = None
                    if not isinstance(fgz, torch.Tensor) or fgz.shape != fz.shape:
                        if eq is not None:
                            eq.add(math.nan)
                        inv.add(math.nan)
                        continue
                    if not eq_done and eq is not None and ydim is not None:  # eq is None exactly when ydim is
                        eq.add(relative_error(fgz, element.act(fz, ydim)))
                    if not inv_done:
                        inv.add(relative_error(fgz, fz))
            errors[group.key] = {"equivariance": eq.value if eq is not None else math.nan, "invariance": inv.value}

        if not tested:
            return result("failed", "no input could be evaluated (see notes)", errors=errors, **common)
        if degenerate is not None:
            return result("degenerate", degenerate, errors=errors, **common)

        equivariant = frozenset(k for k, e in errors.items() if _held(e["equivariance"], tol))
        invariant = frozenset(k for k, e in errors.items() if _held(e["invariance"], tol))
        respects = "equivariance" if ydim is not None else "invariance"
        maximal = maximal_groups(equivariant if ydim is not None else invariant, n)

        lie_errors: dict[str, dict[str, float]] = {}
        if lie:
            try:
                for group in group_list:
                    if group.continuous:
                        measured = _lie_errors(target, group, tested, dim, ydim, trials, gen, lie_inputs)
                        if measured is not None:
                            lie_errors[group.key] = measured
            except _LieUnavailable as exc:
                lie_errors = {}
                notes.append(f"Lie derivative unavailable (forward-mode AD failed): {exc}")
        disagreements = _disagreements(errors, lie_errors, tol)

    return result(
        "ok",
        None,
        errors=errors,
        equivariant=equivariant,
        invariant=invariant,
        maximal=maximal,
        respects=respects,
        lie=lie_errors,
        disagreements=tuple(disagreements),
        **common,
    )


def audit(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    dim: int = -1,
    groups: Iterable[str | _groups.Group] | str | None = None,
    trials: int = 8,
    generator: torch.Generator | None = None,
    tol: float | None = None,
    inputs: Sequence[str] | None = None,
    exhaustive: bool = True,
    lie: bool = True,
    name: str | None = None,
    common_random_numbers: bool = False,
) -> AuditResult:
    """Measure which groups of the lattice a function is equivariant or invariant to, along ``dim``.

    An ``nn.Module`` is passed on to :func:`audit_module` (eval mode, parameters included).

    Args:
        fn: a function of one tensor, or an ``nn.Module``.
        x: a floating-point input; the groups act on ``x.shape[dim]`` features.
        dim: the feature axis (default -1).
        groups: candidate group names or :class:`~isotorch.groups.Group` objects (default
            :func:`isotorch.groups.lattice` of ``x.shape[dim]``).
        trials: random elements per group (default 8); each is tested on every input.
        generator: ``torch.Generator`` for elements and synthetic inputs, or ``None`` (torch's global RNG: one
            draw seeds the audit's own stream). Pass ``torch.Generator().manual_seed(seed)`` for a reproducible
            audit. The global RNG is otherwise forked, so the audited function's own randomness never advances it.
        tol: relative-error tolerance (default :func:`default_tolerance` of the output dtype).
        inputs: which inputs to test: ``"given"`` and any of ``"gaussian"``, ``"scaled_up"``, ``"scaled_down"``,
            ``"sparse"``, ``"outliers"`` (default all).
        exhaustive: when False, stop testing a group at its first failure (faster; the error is then a lower
            bound of the max).
        lie: also compute Lie derivatives for the continuous groups (default True).
        name: label for the result (default the function's name).
        common_random_numbers: replay one state of the global RNG before every call, so that a random function
            (dropout) is audited as one fixed function: f_ω(g·x) against g·f_ω(x) for one ω, the state the global
            RNG is in when the audit starts (default False: two calls that differ make the result ``"random"``).
            The caller's global RNG (CPU, and the input's GPU) is restored afterwards either way.

    Returns:
        An :class:`AuditResult`; a function that raises, returns a non-tensor or non-float, or is random gets a
        result with ``status`` and ``reason`` instead of an exception.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, or ``fn`` is not callable.
        ValueError: ``dim`` out of range, empty or non-finite ``x``, bad ``trials``/``groups``/``inputs``.

    Shape:
        x: any shape with the feature axis at ``dim``; the output either keeps that axis (equivariance and
        invariance are measured) or not (invariance only).

    Examples:
        >>> import torch
        >>> x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
        >>> sorted(audit(torch.relu, x).maximal)
        ['permutation', 'positive_scaling']
        >>> sorted(audit(lambda t: t.norm(dim=-1), x).maximal)  # a scalar per row: invariance
        ['orthogonal']
        >>> audit(torch.zeros_like, x).degenerate
        True
    """
    if isinstance(fn, nn.Module):
        return audit_module(
            fn,
            x,
            dim=dim,
            groups=groups,
            trials=trials,
            generator=generator,
            tol=tol,
            inputs=inputs,
            exhaustive=exhaustive,
            lie=lie,
            name=name,
            common_random_numbers=common_random_numbers,
        )
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    return _run(
        _Target(fn, None, "fixed", check_bool(common_random_numbers, "common_random_numbers")),
        x,
        dim=dim,
        groups=groups,
        trials=trials,
        generator=generator,
        tol=tol,
        inputs=inputs,
        exhaustive=exhaustive,
        lie=lie,
        name=name if name is not None else _name_of(fn),
        kind="function",
    )


@contextlib.contextmanager
def _mode(module: nn.Module, train: bool):
    """Set every submodule to train/eval mode; afterwards restore each one's own mode, and its buffers (a
    train-mode audit must not leave BatchNorm's running statistics changed)."""
    modes = {m: m.training for m in module.modules()}
    buffers = [(b, b.detach().clone()) for b in module.buffers()] if train else []
    module.train(train)
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        with torch.no_grad():
            for b, original in buffers:
                b.copy_(original)


def audit_module(
    module: nn.Module,
    x: torch.Tensor,
    *,
    dim: int = -1,
    groups: Iterable[str | _groups.Group] | str | None = None,
    trials: int = 8,
    generator: torch.Generator | None = None,
    tol: float | None = None,
    inputs: Sequence[str] | None = None,
    exhaustive: bool = True,
    lie: bool = True,
    name: str | None = None,
    parameters: str = "permute",
    train: bool = False,
    common_random_numbers: bool = False,
    _sampler: Sampler | None = None,
    _lie_inputs: int | None = None,
) -> AuditResult:
    """Audit a module as it is, parameters included, in eval mode (its modes and buffers are restored afterwards).

    Feature-aligned parameters and buffers (1-D, of length n = ``x.shape[dim]``: LayerNorm's γ and β,
    BatchNorm's running statistics) are permuted together with the input when the group element is a permutation
    (``parameters="permute"``, the hidden-layer symmetry of §1.3: γ and β move with their neurons); under every other
    element they are held fixed. So ``LayerNorm`` with a trained affine is permutation-equivariant, and no more.

    Args:
        module: the module to audit.
        x: a floating-point input.
        dim: the feature axis (default -1).
        groups: as in :func:`audit`.
        trials: as in :func:`audit`.
        generator: as in :func:`audit`.
        tol: as in :func:`audit`.
        inputs: as in :func:`audit`.
        exhaustive: as in :func:`audit`.
        lie: as in :func:`audit`.
        name: as in :func:`audit`.
        common_random_numbers: as in :func:`audit`.
        parameters: ``"permute"`` (default) or ``"fixed"`` (audit the map x ↦ module(x) with frozen parameters).
        train: audit in train mode (e.g. to see that dropout is random); default False (eval mode).

    Shape:
        x: any shape with the feature axis at ``dim``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
        >>> sorted(audit_module(nn.LayerNorm(8, elementwise_affine=False), x).maximal)
        ['mean_orthogonal']
        >>> audit_module(nn.Dropout(0.5), x, train=True).status
        'random'
        >>> sorted(audit_module(nn.Dropout(0.5), x, train=True, common_random_numbers=True).maximal)  # one mask
        ['positive_scaling']
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    check_choice(parameters, "parameters", PARAMETER_MODES)
    with _mode(module, bool(train)):
        return _run(
            _Target(module, module, parameters, check_bool(common_random_numbers, "common_random_numbers")),
            x,
            dim=dim,
            groups=groups,
            trials=trials,
            generator=generator,
            tol=tol,
            inputs=inputs,
            exhaustive=exhaustive,
            lie=lie,
            name=name if name is not None else _name_of(module),
            kind="module",
            sampler=_sampler,
            lie_inputs=_lie_inputs,
        )
