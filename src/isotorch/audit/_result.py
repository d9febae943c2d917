"""The result of a symmetry audit, and the lattice helpers that every audit shares."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from isotorch import groups as _groups
from isotorch._util import json_safe

__all__ = ["AuditResult", "maximal_groups", "sort_groups"]

STATUSES = ("ok", "degenerate", "random", "failed")
RELATIONS = ("equivariance", "invariance")


def _order(key: str) -> tuple[int, int]:
    group = _groups.get(key)
    return _groups.names().index(group.name), group.block or 0


def sort_groups(keys: Iterable[str]) -> list[str]:
    """Group keys in lattice order (``trivial`` first, ``orthogonal`` last, blocks by size)."""
    return sorted(set(keys), key=_order)


#: The largest groups among a set of held groups (re-exported from :func:`isotorch.groups.maximal`).
maximal_groups = _groups.maximal


def by_group(errors: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``errors`` as plain dicts, groups in lattice order (for ``to_dict``)."""
    return {key: dict(errors[key]) for key in sort_groups(errors)}


@dataclass(frozen=True, repr=False)
class AuditResult:
    """What one audit measured: per group, the worst relative error of equivariance and of invariance.

    Attributes:
        name: what was audited (function name, module path, optimiser name).
        kind: ``"function"``, ``"module"``, ``"optimiser"`` or ``"regulariser"``.
        n: size of the feature axis the groups act on.
        dim: the feature axis.
        dtype: dtype of the output (sets the tolerance).
        tolerance: an error at or below it counts as "holds".
        trials: random group elements per group.
        inputs: names of the inputs the finite test ran on (``"given"`` is the caller's input).
        errors: group key → ``{"equivariance": e, "invariance": e}``, the max relative error over trials and
            inputs (NaN where it was not measured; when ``exhaustive=False`` a failing group's error is the first
            one above tolerance, a lower bound of the max).
        equivariant: groups with equivariance error ≤ tolerance.
        invariant: groups with invariance error ≤ tolerance.
        maximal: the largest groups held for :attr:`respects` (several when the lattice branches).
        respects: ``"equivariance"`` when the output keeps the feature axis, else ``"invariance"``.
        lie: continuous group key → ``{"equivariance": e, "invariance": e}``, the Lie-derivative second opinion
            rms(J_f(x)Ax − A f(x)) / (‖A‖ rms f(x)) with ‖A‖ = rms(Ax)/rms(x) (invariance: without the A f(x)
            term), max over generators and inputs.
        disagreements: one sentence per (group, relation) where the finite and infinitesimal tests disagree.
        status: ``"ok"``, ``"degenerate"`` (constant, zero or input-ignoring), ``"random"`` (two calls on the
            same input differ) or ``"failed"`` (raised, returned a non-tensor, non-finite or non-float output).
        reason: why the status is not ``"ok"``.
        notes: warnings that do not change the status (e.g. a degenerate given input, skipped inputs).

    Examples:
        >>> import torch
        >>> from isotorch.audit import audit
        >>> result = audit(torch.tanh, torch.randn(5, 8, generator=torch.Generator().manual_seed(0)))
        >>> sorted(result.maximal)
        ['signed_permutation']
        >>> result.errors["orthogonal"]["equivariance"] > 1e-2
        True
    """

    name: str
    kind: str
    n: int
    dim: int
    dtype: str
    tolerance: float
    trials: int
    inputs: tuple[str, ...]
    errors: Mapping[str, Mapping[str, float]]
    equivariant: frozenset[str]
    invariant: frozenset[str]
    maximal: frozenset[str]
    respects: str = "equivariance"
    lie: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    disagreements: tuple[str, ...] = ()
    status: str = "ok"
    reason: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the audit measured the function (status ``"ok"``)."""
        return self.status == "ok"

    @property
    def degenerate(self) -> bool:
        """Whether the function was flagged as constant, zero or ignoring its input (see :attr:`reason`)."""
        return self.status == "degenerate"

    @property
    def random(self) -> bool:
        """Whether two calls on the same input gave different outputs."""
        return self.status == "random"

    @property
    def maximal_invariant(self) -> frozenset[str]:
        """The largest groups under which the output is invariant."""
        return maximal_groups(self.invariant, self.n)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (sets become lists in lattice order, NaN becomes ``None``)."""
        return json_safe(
            {
                "name": self.name,
                "kind": self.kind,
                "n": self.n,
                "dim": self.dim,
                "dtype": self.dtype,
                "tolerance": self.tolerance,
                "trials": self.trials,
                "inputs": list(self.inputs),
                "status": self.status,
                "reason": self.reason,
                "respects": self.respects,
                "maximal": sort_groups(self.maximal),
                "equivariant": sort_groups(self.equivariant),
                "invariant": sort_groups(self.invariant),
                "errors": by_group(self.errors),
                "lie": by_group(self.lie),
                "disagreements": list(self.disagreements),
                "notes": list(self.notes),
            }
        )

    def __repr__(self) -> str:
        def fmt(keys) -> str:
            return "{" + ", ".join(sort_groups(keys)) + "}"

        parts = [f"{self.name!r}", f"status={self.status!r}"]
        if self.reason:
            parts.append(f"reason={self.reason!r}")
        parts += [
            f"n={self.n}",
            f"dim={self.dim}",
            f"maximal={fmt(self.maximal)} ({self.respects})",
            f"equivariant={fmt(self.equivariant)}",
            f"invariant={fmt(self.invariant)}",
        ]
        if self.disagreements:
            parts.append(f"disagreements={len(self.disagreements)}")
        return f"AuditResult({', '.join(parts)})"
