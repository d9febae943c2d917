"""Symmetry audits of the training-time primitives: optimisers, initialisers and regularisers.

- **Optimiser** (equivariance of the update rule). Parameters θ (a (n, k) matrix and an (n,) vector, the group
  acting on their first axis as on a hidden layer, W → gW) and a fixed stream of gradients G₁…G_T are run through
  ``steps`` steps twice: once as they are, once transformed, θ → gθ and G_t → g⁻ᵀG_t (gradients transform
  contragrediently; for orthogonal g this is gG_t). The optimiser is G-equivariant when the second run's
  displacement equals g times the first's: rel(Δ', gΔ) ≤ tolerance. SGD and momentum are O(n)-equivariant; Adam,
  RMSProp and Adagrad only B_n-equivariant (their second moment is per coordinate).
- **Initialiser** (invariance in law). W and gW must have the same distribution. Two independent sets of draws are
  compared with two-sample Kolmogorov–Smirnov tests on the entries, the row norms and ``projections`` random
  projections of the columns; the Bonferroni-corrected p-value is reported, and the law is called invariant when
  p ≥ ``alpha``.
  Gaussian and orthogonal initialisations are O(n)-invariant; i.i.d. uniform ones only B_n-invariant.
- **Regulariser** (invariance of a penalty): R(gW) = R(W). L1 is B_n-invariant, L2 O(n)-invariant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from isotorch import groups as _groups
from isotorch._util import as_generator, check_int, check_probability, draw_seed, json_safe
from isotorch.audit._function import (
    _describe,
    _name_of,
    _resolve_groups,
    _rng_guard,
    audit,
    default_tolerance,
)
from isotorch.audit._result import AuditResult, maximal_groups, sort_groups
from isotorch.audit._sampling import Element, Sampler
from isotorch.testing import relative_error

__all__ = ["InitialiserAudit", "audit_initialiser", "audit_optimiser", "audit_regulariser"]


def _run_optimiser(factory, weight, bias, grads) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.nn.Parameter(weight.clone())
    b = torch.nn.Parameter(bias.clone())
    optimiser = factory([w, b])
    if not isinstance(optimiser, torch.optim.Optimizer):
        raise TypeError(f"the factory returned {type(optimiser).__name__}, not a torch.optim.Optimizer")
    for gw, gb in grads:
        optimiser.zero_grad()
        w.grad = gw.clone()
        b.grad = gb.clone()
        optimiser.step()
    return w.detach() - weight, b.detach() - bias


def audit_optimiser(
    factory: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    *,
    n: int = 8,
    steps: int = 5,
    groups: Iterable[str | _groups.Group] | None = None,
    trials: int = 3,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    name: str | None = None,
) -> AuditResult:
    """Measure the groups under which an optimiser's update rule is equivariant.

    Args:
        factory: ``factory(params) -> torch.optim.Optimizer``, e.g. ``lambda p: torch.optim.Adam(p, lr=1e-2)``.
        n: size of the axis the group acts on (default 8); the parameters are an (n, 3) matrix and an (n,) vector.
        steps: optimiser steps per run (default 5).
        groups: candidate groups (default :func:`isotorch.groups.lattice` of n).
        trials: random elements per group (default 3), each with a fresh gradient stream.
        generator: ``torch.Generator`` or ``None`` (torch's global RNG).
        dtype: parameter dtype (default float64; the tolerance follows it).
        name: label (default the factory's name).

    Returns:
        An :class:`AuditResult` with ``kind="optimiser"``: ``errors[g]["equivariance"]`` = rel(Δ', gΔ).
        An optimiser that raises is ``"failed"``, one that does not move the parameters ``"degenerate"``, one
        whose two identical runs differ ``"random"``.

    Examples:
        >>> import torch
        >>> sorted(audit_optimiser(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)).maximal)
        ['orthogonal']
        >>> sorted(audit_optimiser(lambda p: torch.optim.Adam(p, lr=1e-2)).maximal)
        ['signed_permutation']
    """
    if not callable(factory):
        raise TypeError(f"factory must be callable (params -> optimiser), got {type(factory).__name__}")
    n = check_int(n, "n")
    steps = check_int(steps, "steps")
    trials = check_int(trials, "trials")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    group_list = _resolve_groups(groups, n)
    gen = as_generator(generator)
    sampler = Sampler(gen)
    tol = default_tolerance(dtype)
    label = name if name is not None else _name_of(factory)
    errors: dict[str, dict[str, float]] = {}

    def result(status: str, reason: str | None = None, **fields) -> AuditResult:
        return AuditResult(
            name=label,
            kind="optimiser",
            n=n,
            dim=0,
            dtype=str(dtype).replace("torch.", ""),
            tolerance=tol,
            trials=trials,
            inputs=("gradient stream",),
            errors=errors,
            equivariant=fields.get("equivariant", frozenset()),
            invariant=frozenset(),
            maximal=fields.get("maximal", frozenset()),
            status=status,
            reason=reason,
        )

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    streams = []
    for _ in range(trials):
        weight, bias = randn(n, 3), randn(n)
        grads = [(randn(n, 3), randn(n)) for _ in range(steps)]
        streams.append((weight, bias, grads))
    with _rng_guard(torch.device("cpu")):
        try:
            base = [_run_optimiser(factory, *stream) for stream in streams]
            again = _run_optimiser(factory, *streams[0])
        except Exception as exc:
            return result("failed", f"raised {_describe(exc)}")
        first = torch.cat([base[0][0].flatten(), base[0][1]])
        if relative_error(torch.cat([again[0].flatten(), again[1]]), first) > tol:
            return result("random", "two runs on the same gradient stream differ")
        if all(float(torch.cat([dw.flatten(), db]).abs().max()) == 0 for dw, db in base):
            return result("degenerate", "the optimiser does not move the parameters")
        for group in group_list:
            worst = 0.0
            count = 1 if group.name == "trivial" else trials
            for element, (weight, bias, grads), (dw, db) in zip(
                sampler.elements(group, n, count), streams, base, strict=False
            ):
                contra = element.contragredient()

                def move(t: torch.Tensor, el: Element = element) -> torch.Tensor:
                    return el.act(t, 0).to(dtype)

                moved_grads = [(contra.act(gw, 0).to(dtype), contra.act(gb, 0).to(dtype)) for gw, gb in grads]
                try:
                    dw2, db2 = _run_optimiser(factory, move(weight), move(bias), moved_grads)
                except Exception as exc:
                    return result("failed", f"raised on transformed parameters: {_describe(exc)}")
                err = relative_error(torch.cat([dw2.flatten(), db2]), torch.cat([move(dw).flatten(), move(db)]))
                worst = math.nan if math.isnan(err) else max(worst, err)
            errors[group.key] = {"equivariance": worst, "invariance": math.nan}
    equivariant = frozenset(k for k, e in errors.items() if e["equivariance"] <= tol)
    return result("ok", equivariant=equivariant, maximal=maximal_groups(equivariant, n))


@dataclass(frozen=True, repr=False)
class InitialiserAudit:
    """Whether an initialiser's law is invariant under each group acting on the rows of W (W → gW).

    Attributes:
        name: the initialiser's name.
        shape: shape of the initialised weight; the group acts on ``shape[0]`` (rows, as W₁ → gW₁).
        samples: independent draws on each side of a test.
        alpha: significance level; invariant when the corrected p-value is ≥ alpha.
        p_values: group key → Bonferroni-corrected min p-value of the KS tests (entries, row norms, projections)
            and of a chi-square test of the entries binned in units of their RMS, which sees tails and kurtosis.
        statistics: group key → the largest KS statistic (sup distance between empirical CDFs).
        invariant: groups whose p-value is ≥ alpha.
        maximal: the largest invariant groups.
        status, reason, notes: as in :class:`AuditResult` (``"degenerate"`` for constant or deterministic
            initialisers, ``"failed"`` when the initialiser raises).
    """

    name: str
    shape: tuple[int, ...]
    samples: int
    alpha: float
    p_values: Mapping[str, float]
    statistics: Mapping[str, float]
    invariant: frozenset[str]
    maximal: frozenset[str]
    status: str = "ok"
    reason: str | None = None
    notes: tuple[str, ...] = ()
    kind: str = field(default="initialiser", init=False)
    respects: str = field(default="invariance", init=False)
    equivariant: frozenset[str] = field(default=frozenset(), init=False)

    @property
    def ok(self) -> bool:
        """Whether the test ran (status ``"ok"``)."""
        return self.status == "ok"

    @property
    def degenerate(self) -> bool:
        """Whether the initialiser was flagged as constant or deterministic."""
        return self.status == "degenerate"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return json_safe(
            {
                "name": self.name,
                "kind": self.kind,
                "shape": list(self.shape),
                "samples": self.samples,
                "alpha": self.alpha,
                "status": self.status,
                "reason": self.reason,
                "respects": self.respects,
                "maximal": sort_groups(self.maximal),
                "invariant": sort_groups(self.invariant),
                "p_values": {k: self.p_values[k] for k in sort_groups(self.p_values)},
                "statistics": {k: self.statistics[k] for k in sort_groups(self.statistics)},
                "notes": list(self.notes),
            }
        )

    def __repr__(self) -> str:
        groups = "{" + ", ".join(sort_groups(self.maximal)) + "}"
        reason = f", reason={self.reason!r}" if self.reason else ""
        return f"InitialiserAudit({self.name!r}, status={self.status!r}{reason}, maximal={groups} (in law))"


# Edges, in units of the pooled root mean square, of the bins of the entries' law compared by :func:`_tail_test`:
# signed, finer in the tails, where non-Gaussian i.i.d. laws differ from their rotated (near-Gaussian) mixtures.
_TAIL_EDGES = (-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


@dataclass(frozen=True)
class _TailTest:
    statistic: float
    pvalue: float


def _tail_test(a: torch.Tensor, b: torch.Tensor) -> _TailTest:
    """Chi-square test of homogeneity of the binned entries of W and gW (bins: :data:`_TAIL_EDGES` × the pooled
    RMS), sensitive to tails and kurtosis where the KS test on 16k entries is not.

    Why it has power: the only i.i.d. laws that are rotation invariant are the centred Gaussians (Maxwell), and a
    rotated i.i.d. matrix has near-Gaussian entries (each a mix of n entries), so a truncated normal, uniform,
    Laplace or Student-t law differs from its rotation mostly in the tails (mass beyond 2.3·RMS: 0 for a normal
    truncated at 2σ, about 2% after rotation). A law that *is* invariant gives the same table on both sides.
    """
    a, b = a.flatten(), b.flatten()
    scale = float(torch.cat([a, b]).pow(2).mean().sqrt())
    if not scale > 0:
        return _TailTest(0.0, 1.0)
    edges = torch.tensor(_TAIL_EDGES, dtype=torch.float64) * scale
    counts = np.stack(
        [
            np.bincount(torch.bucketize(v.to(torch.float64), edges).numpy(), minlength=len(_TAIL_EDGES) + 1)
            for v in (a, b)
        ]
    )
    counts = counts[:, counts.sum(0) > 0]
    if counts.shape[1] < 2:
        return _TailTest(0.0, 1.0)
    result = stats.chi2_contingency(counts, correction=False)
    return _TailTest(float(result.statistic), float(result.pvalue))


def _draw(fn, shape) -> torch.Tensor:
    t = torch.empty(shape, dtype=torch.float64)
    out = fn(t)
    out = out if isinstance(out, torch.Tensor) else t
    return out.detach().to(torch.float64)


def audit_initialiser(
    fn: Callable[[torch.Tensor], torch.Tensor | None],
    *,
    shape: tuple[int, ...] = (64, 64),
    samples: int = 4,
    groups: Iterable[str | _groups.Group] | None = None,
    trials: int = 2,
    projections: int = 2,
    alpha: float = 1e-3,
    generator: torch.Generator | None = None,
    name: str | None = None,
) -> InitialiserAudit:
    """Test whether an initialiser's law is invariant under each group acting on the rows of the weight.

    For each group element g, the law of W is compared with the law of gW drawn independently: KS tests of the
    entries, row norms and random projections, and a chi-square test of the entries binned in units of their RMS
    (finer in the tails). The binned test gives power against non-Gaussian i.i.d. laws: an i.i.d. law is
    rotation invariant only if it is Gaussian, and a rotation mixes n entries into a near-Gaussian one, so a
    truncated normal, uniform, Laplace or Student-t law differs from its rotation mainly in the tails, which a KS
    test on 16k entries hardly sees (it called ``trunc_normal_`` O(n)-invariant at some seeds). Over 40 seeds,
    ``normal_`` and Haar-orthogonal laws gave no false alarm at ``alpha=1e-3``.

    Args:
        fn: an initialiser in ``torch.nn.init`` style: ``fn(tensor)`` fills the tensor in place (and may return
            it). It draws from the global RNG, which is forked and seeded from ``generator``.
        shape: weight shape (default (64, 64)); the group acts on ``shape[0]``.
        samples: independent draws on each side (default 4, i.e. 16384 entries for 64×64).
        groups: candidate groups (default: the lattice of ``shape[0]`` without block groups).
        trials: group elements per group (default 2).
        projections: random projections of the columns tested next to the entries and row norms (default 2).
        alpha: significance level (default 1e-3).
        generator: ``torch.Generator`` or ``None`` (torch's global RNG).
        name: label (default the function's name).

    Returns:
        An :class:`InitialiserAudit` with a p-value per group.

    Examples:
        >>> import torch
        >>> sorted(audit_initialiser(torch.nn.init.normal_).maximal)
        ['orthogonal']
        >>> sorted(audit_initialiser(torch.nn.init.kaiming_uniform_).maximal)
        ['signed_permutation']
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (an initialiser such as torch.nn.init.normal_), got {type(fn).__name__}")
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) < 2
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)
    ):
        raise ValueError(f"shape must be a tuple of at least two positive ints, got {shape!r}")
    shape = tuple(shape)
    samples = check_int(samples, "samples")
    trials = check_int(trials, "trials")
    projections = check_int(projections, "projections") if projections else 0
    alpha = check_probability(alpha, "alpha")
    n = shape[0]
    group_list = _resolve_groups(groups if groups is not None else _groups.lattice(n, blocks=()), n)
    gen = as_generator(generator)
    sampler = Sampler(gen)
    label = name if name is not None else _name_of(fn)
    seed = draw_seed(gen)

    def out(status, reason=None, p_values=None, statistics=None, invariant=frozenset(), notes=()):
        return InitialiserAudit(
            name=label,
            shape=shape,
            samples=samples,
            alpha=alpha,
            p_values=p_values or {},
            statistics=statistics or {},
            invariant=invariant,
            maximal=maximal_groups(invariant, n),
            status=status,
            reason=reason,
            notes=tuple(notes),
        )

    with _rng_guard(torch.device("cpu")):
        torch.manual_seed(seed)
        try:
            left = torch.stack([_draw(fn, shape) for _ in range(samples)])
            right = torch.stack([_draw(fn, shape) for _ in range(samples)])
        except Exception as exc:
            return out("failed", f"raised {_describe(exc)}")
    if not bool(torch.isfinite(left).all() and torch.isfinite(right).all()):
        return out("failed", "the initialiser produced NaN or inf")
    if float(left.std()) == 0 and float(right.std()) == 0:
        return out("degenerate", "constant initialiser: every entry is the same")
    if torch.equal(left[0], right[0]):
        return out("degenerate", "deterministic initialiser: its law is a point mass, invariant only where gW = W")

    directions = torch.randn(projections, n, generator=gen, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)

    def statistics_of(w: torch.Tensor) -> list[np.ndarray]:
        cols = w.reshape(samples, n, -1)
        values = [cols.flatten().numpy(), cols.norm(dim=2).flatten().numpy()]
        values += [torch.einsum("i,sij->sj", d, cols).flatten().numpy() for d in directions]
        # float32 rounding, so that float64 round-off (e.g. row norms of an orthogonal matrix, 1 ± 1e-16) does not
        # split a point mass into two distributions
        return [v.astype(np.float32) for v in values]

    reference = statistics_of(left)
    reference_entries = left.reshape(samples, n, -1)
    p_values, ks = {}, {}
    for group in group_list:
        if group.name == "trivial":
            p_values[group.key], ks[group.key] = 1.0, 0.0
            continue
        tests = []
        for element in sampler.elements(group, n, trials):
            moved = element.act(right.reshape(samples, n, -1), 1)
            for a, b in zip(reference, statistics_of(moved), strict=True):
                tests.append(stats.ks_2samp(a, b))
            tests.append(_tail_test(reference_entries, moved))
        p_values[group.key] = min(1.0, len(tests) * min(float(t.pvalue) for t in tests))
        ks[group.key] = max(float(t.statistic) for t in tests if not isinstance(t, _TailTest))
    invariant = frozenset(k for k, p in p_values.items() if p >= alpha)
    return out("ok", p_values=p_values, statistics=ks, invariant=invariant)


def audit_regulariser(
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    shape: tuple[int, ...] = (8, 6),
    groups: Iterable[str | _groups.Group] | None = None,
    trials: int = 8,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    name: str | None = None,
) -> AuditResult:
    """Measure the groups under which a weight penalty R(W) is invariant, R(gW) = R(W), g acting on the rows.

    Args:
        fn: the penalty, ``fn(weight) -> scalar tensor``, e.g. ``lambda w: w.abs().sum()``.
        shape: weight shape (default (8, 6)); the group acts on ``shape[0]``.
        groups: candidate groups (default the lattice of ``shape[0]``).
        trials: random elements per group (default 8).
        generator: ``torch.Generator`` or ``None`` (torch's global RNG).
        dtype: weight dtype (default float64).
        name: label (default the function's name).

    Returns:
        An :class:`AuditResult` with ``kind="regulariser"`` and ``respects="invariance"``.

    Examples:
        >>> sorted(audit_regulariser(lambda w: w.abs().sum()).maximal)
        ['signed_permutation']
        >>> sorted(audit_regulariser(lambda w: w.pow(2).sum()).maximal)
        ['orthogonal']
    """
    if (
        not isinstance(shape, (tuple, list))
        or not shape
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)
    ):
        raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}")
    gen = as_generator(generator)
    weight = torch.randn(tuple(shape), generator=gen, dtype=torch.float64).to(dtype)
    result = audit(fn, weight, dim=0, groups=groups, trials=trials, generator=gen, name=name, lie=True)
    fields = {k: getattr(result, k) for k in result.__dataclass_fields__}
    fields.update(
        kind="regulariser", respects="invariance", maximal=result.maximal_invariant if result.ok else frozenset()
    )
    fields.update(notes=tuple(note for note in result.notes if "does not keep the feature axis" not in note))
    return AuditResult(**fields)
