"""The audit table: every primitive that a network is built from, torch's and isotorch's, and its measured group.

Each row is measured, not declared: activations, normalisers, pooling and dropout with :func:`audit` at feature size
n = 8 (``dim`` = the feature axis: the last one, or the channel axis of a feature map), optimisers with
:func:`audit_optimiser`, initialisers with :func:`audit_initialiser` and weight penalties with
:func:`audit_regulariser`. Every row is seeded, so the table is deterministic; ``docs/audit.md`` is generated from
it (``isotorch audit --primitives --markdown docs/audit.md``, ``make audit-docs``, with
``torch.Generator().manual_seed(0)``) and a test fails when that file is stale.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from isotorch import groups as _groups
from isotorch import init as _init
from isotorch import optim as _optim
from isotorch._util import check_generator, fresh_seed, json_safe
from isotorch.audit._function import _describe, audit, audit_module
from isotorch.audit._render import _md_escape, groups_text, symbol
from isotorch.audit._result import AuditResult
from isotorch.audit._training import InitialiserAudit, audit_initialiser, audit_optimiser, audit_regulariser

__all__ = ["PrimitiveTable", "TableRow", "primitive_table"]

N = 8
KINDS = ("activation", "norm", "pool", "dropout", "gate", "optimiser", "initialiser", "regulariser")
TITLES = {
    "activation": "Activations",
    "norm": "Normalisers",
    "pool": "Pooling",
    "dropout": "Dropout",
    "gate": "Gating",
    "optimiser": "Optimisers",
    "initialiser": "Initialisers",
    "regulariser": "Weight penalties",
}
COLUMNS: tuple[str, ...] = tuple(g.key for g in _groups.lattice(N) if g.name != "trivial")


@dataclass(frozen=True)
class TableRow:
    """One row of the audit table.

    Attributes:
        name: the primitive (``"layer_norm (affine)"``, ``"iso_tanh"``, ``"adam"``).
        source: ``"torch"`` or ``"isotorch"``.
        kind: activation, norm, pool, dropout, gate, optimiser, initialiser or regulariser.
        result: the :class:`AuditResult` (or :class:`InitialiserAudit`).
        declared: the groups the primitive declares (isotorch registries), or None.
        note: what was audited, in words.
    """

    name: str
    source: str
    kind: str
    result: AuditResult | InitialiserAudit
    declared: tuple[str, ...] | None = None
    note: str = ""

    @property
    def held(self) -> frozenset[str]:
        """The groups held for the relation the row is about (equivariance, or invariance)."""
        return self.result.equivariant if self.result.respects == "equivariance" else self.result.invariant

    @property
    def missing(self) -> tuple[str, ...]:
        """Declared groups that the measurement does not confirm."""
        if self.declared is None:
            return ()
        if not self.result.ok:
            return tuple(self.declared)
        return tuple(g for g in self.declared if _groups.get(g).key not in self.held)

    @property
    def agrees(self) -> bool | None:
        """Whether every declared group holds (None when nothing is declared)."""
        return None if self.declared is None else not self.missing

    def cell(self, key: str) -> str:
        """``E`` (equivariant), ``I`` (invariant), ``E I``, ``–`` (neither) or blank (not tested) for one group."""
        result = self.result
        if not result.ok:
            return ""
        tested = result.p_values if isinstance(result, InitialiserAudit) else result.errors
        if key not in tested:
            return ""
        marks = [m for m, s in (("E", result.equivariant), ("I", result.invariant)) if key in s]
        return " ".join(marks) if marks else "–"

    def summary(self) -> str:
        """The maximal groups, or the status when the row could not be measured."""
        if not self.result.ok:
            return self.result.status
        return groups_text(self.result.maximal)

    def remark(self) -> str:
        """The note, the reason for a non-ok status, declared-versus-measured, and disagreements (no numbers)."""
        parts = [self.note] if self.note else []
        if not self.result.ok and self.result.reason:
            parts.append(self.result.reason)
        if self.declared is not None:
            declared = ", ".join(symbol(_groups.get(g).key) for g in self.declared)
            parts.append(
                f"declares {declared}: confirmed"
                if not self.missing
                else f"declares {declared}: not confirmed for {', '.join(symbol(g) for g in self.missing)}"
            )
        for line in getattr(self.result, "disagreements", ()):
            parts.append(f"finite and Lie tests disagree on {line.split(':', 1)[0]}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return json_safe(
            {
                "name": self.name,
                "source": self.source,
                "kind": self.kind,
                "declared": list(self.declared) if self.declared is not None else None,
                "agrees": self.agrees,
                "note": self.note,
                "result": self.result.to_dict(),
            }
        )


@dataclass(frozen=True)
class PrimitiveTable:
    """The audit table: rows in a fixed order, the settings that produced them, and renderers.

    Attributes:
        rows: the :class:`TableRow` objects.
        seed: the seed of the generator every row started from (``torch.Generator().manual_seed(seed)``), or
            None when that generator was not in a freshly seeded state.
        n: the feature size of the function rows.
    """

    rows: tuple[TableRow, ...]
    seed: int | None
    n: int = N

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every row's full audit (errors, p-values, Lie derivatives)."""
        return json_safe(
            {
                "seed": self.seed,
                "n": self.n,
                "columns": list(COLUMNS),
                "torch_version": torch.__version__,
                "rows": [r.to_dict() for r in self.rows],
            }
        )

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def to_markdown(self) -> str:
        """The table as Markdown: verdicts only, so that the text is identical on every platform."""
        header = ["primitive", "source", "maximal group", *(symbol(c) for c in COLUMNS), "note"]
        lines = [
            "# Symmetry audit of primitives",
            "",
            "<!-- Generated by `isotorch audit --primitives --markdown docs/audit.md`; do not edit by hand. "
            "A test fails when this file is stale. -->",
            "",
            "Every row is measured by `isotorch.audit`, not declared: random elements g of each group act on the "
            "feature axis in float64, on the given input and on Gaussian, scaled, sparse and outlier inputs, and a "
            "group holds when the relative error stays within the tolerance of the output dtype (1e-3 in float32). "
            f"Feature size n = {self.n}{self._seed_text('; seed ')}.",
            "",
            "- **E**: equivariant, f(g·x) = g·f(x) (optimisers: the update rule commutes with g, gradients "
            "transforming as g⁻ᵀ).",
            "- **I**: invariant, f(g·x) = f(x) (initialisers: W and gW have the same law, KS test at α = 1e-3 on a "
            "64×64 weight, g acting on the rows; penalties: R(gW) = R(W)).",
            "- **–**: neither; blank: not tested. *Maximal group*: the largest groups held (the lattice is not a "
            "chain, so there can be two).",
            "- S_n permutations, B_n signed permutations, (ℝ>0)ⁿ positive diagonal scaling, O(n)_𝟙 the rotations "
            "fixing 𝟙, O(k)≀S rotations of blocks of k features (and block permutations), SO(n), O(n).",
            "",
        ]
        for kind in KINDS:
            rows = [r for r in self.rows if r.kind == kind]
            if not rows:
                continue
            lines += [f"## {TITLES[kind]}", ""]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            for r in rows:
                cells = [r.name, r.source, r.summary(), *(r.cell(c) for c in COLUMNS), _md_escape(r.remark())]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        return "\n".join(lines)

    def _seed_text(self, prefix: str) -> str:
        return "" if self.seed is None else f"{prefix}{self.seed}"

    def __rich__(self):
        from rich.table import Table

        table = Table(title=f"Symmetry audit of primitives (n = {self.n}{self._seed_text(', seed ')})")
        for column in ("primitive", "source", "kind", "maximal group", *(symbol(c) for c in COLUMNS), "note"):
            table.add_column(column, overflow="fold")
        for r in self.rows:
            style = None if r.agrees is not False else "red"
            table.add_row(r.name, r.source, r.kind, r.summary(), *(r.cell(c) for c in COLUMNS), r.remark(), style=style)
        return table


# ----------------------------------------------------------------------------------------------------------------
# the rows
# ----------------------------------------------------------------------------------------------------------------


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


def _fn_row(fn: Callable, shape=(5, N), dim=-1, **kwargs) -> Callable[[torch.Generator, str], AuditResult]:
    def run(gen: torch.Generator, name: str) -> AuditResult:
        return audit(fn, _randn(gen, *shape), dim=dim, generator=gen, name=name, **kwargs)

    return run


def _module_row(build: Callable[[torch.Generator], nn.Module], shape=(5, N), dim=-1, **kwargs):
    def run(gen: torch.Generator, name: str) -> AuditResult:
        module = build(gen)
        return audit_module(module, _randn(gen, *shape), dim=dim, generator=gen, name=name, **kwargs)

    return run


def _with_random_affine(module: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_((1.0 if name == "weight" else 0.0) + 0.5 * _randn(gen, *p.shape))
    return module


def _torch_rows() -> list[tuple[str, str, Callable, str]]:
    fmap = (2, N, 6, 6)
    return [
        ("tanh", "activation", _fn_row(torch.tanh), "odd elementwise"),
        ("relu", "activation", _fn_row(F.relu), "positively 1-homogeneous elementwise"),
        ("gelu", "activation", _fn_row(F.gelu), ""),
        ("silu", "activation", _fn_row(F.silu), ""),
        ("sigmoid", "activation", _fn_row(torch.sigmoid), ""),
        ("softplus", "activation", _fn_row(F.softplus), ""),
        ("elu", "activation", _fn_row(F.elu), ""),
        ("leaky_relu", "activation", _fn_row(F.leaky_relu), "positively 1-homogeneous elementwise"),
        ("softmax", "activation", _fn_row(functools.partial(F.softmax, dim=-1)), ""),
        ("log_softmax", "activation", _fn_row(functools.partial(F.log_softmax, dim=-1)), ""),
        ("layer_norm", "norm", _module_row(lambda g: nn.LayerNorm(N, elementwise_affine=False)), "no affine"),
        (
            "layer_norm (affine)",
            "norm",
            _module_row(lambda g: _with_random_affine(nn.LayerNorm(N), g)),
            "random γ, β, permuted with the features",
        ),
        ("rms_norm", "norm", _module_row(lambda g: nn.RMSNorm(N, elementwise_affine=False)), "no gain"),
        (
            "rms_norm (gain)",
            "norm",
            _module_row(lambda g: _with_random_affine(nn.RMSNorm(N), g)),
            "random elementwise gain, permuted with the features",
        ),
        (
            "batch_norm (train)",
            "norm",
            _fn_row(lambda x: F.batch_norm(x, None, None, training=True)),
            "batch statistics, no affine",
        ),
        (
            "batch_norm (eval, affine)",
            "norm",
            _module_row(lambda g: _fill_running(_with_random_affine(nn.BatchNorm1d(N), g), g)),
            "random γ, β and running statistics, permuted with the features",
        ),
        ("group_norm", "norm", _module_row(lambda g: nn.GroupNorm(2, N, affine=False), fmap, 1), "2 groups of 4"),
        ("normalize", "norm", _fn_row(F.normalize), "x/‖x‖"),
        ("max_pool2d", "pool", _fn_row(functools.partial(F.max_pool2d, kernel_size=2), fmap, 1), "channel dim"),
        ("avg_pool2d", "pool", _fn_row(functools.partial(F.avg_pool2d, kernel_size=2), fmap, 1), "channel dim"),
        ("dropout (train)", "dropout", _module_row(lambda g: nn.Dropout(0.5), train=True), "p = 0.5"),
        (
            "dropout (train, fixed mask)",
            "dropout",
            _module_row(lambda g: nn.Dropout(0.5), train=True, common_random_numbers=True),
            "p = 0.5, common random numbers",
        ),
        ("dropout (eval)", "dropout", _module_row(lambda g: nn.Dropout(0.5)), "identity"),
    ]


def _fill_running(module: nn.Module, gen: torch.Generator) -> nn.Module:
    mean, var = module.running_mean, module.running_var
    assert isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor)  # a BatchNorm tracking statistics
    with torch.no_grad():
        mean.copy_(0.5 * _randn(gen, N))
        var.copy_(torch.rand(N, generator=gen) + 0.5)
    return module


def _training_rows() -> list[tuple[str, str, str, Callable, tuple[str, ...] | None, str]]:
    rows: list[tuple[str, str, str, Callable, tuple[str, ...] | None, str]] = []
    for name in _optim.names():
        factory, declared = _optim.get(name)
        rows.append((name, "isotorch", "optimiser", _optimiser_row(factory), tuple(declared), ""))
    for name in _init.names():
        fn, group = _init.get(name)
        rows.append((name, "isotorch", "initialiser", _initialiser_row(fn), (group,), ""))
    rows.append(("l1", "torch", "regulariser", _regulariser_row(lambda w: w.abs().sum()), None, "Σ|w|"))
    rows.append(("l2", "torch", "regulariser", _regulariser_row(lambda w: w.pow(2).sum()), None, "Σw²"))
    return rows


def _optimiser_row(factory):
    return lambda gen, name: audit_optimiser(factory, n=N, generator=gen, name=name)


def _initialiser_row(fn):
    return lambda gen, name: audit_initialiser(fn, generator=gen, name=name)


def _regulariser_row(fn):
    return lambda gen, name: audit_regulariser(fn, shape=(N, 6), generator=gen, name=name)


def _isotorch_rows() -> list[tuple[str, str, Callable, tuple[str, ...], str]]:
    from isotorch import nn as inn

    rows = []
    for spec in map(inn.get, inn.names()):
        n = spec.sizes[0] if spec.sizes else N

        def run(gen, name, spec=spec, n=n):
            module = spec.build(n)
            return audit_module(
                module,
                spec.example_input(n, generator=gen),
                dim=spec.dim,
                generator=gen,
                name=name,
                train=spec.train,
                common_random_numbers=spec.train,
            )

        note = "; ".join(p for p in ("train mode, common random numbers" if spec.train else "", spec.note) if p)
        rows.append((spec.name, spec.role, run, tuple(spec.groups), note))
    return rows


def _failed(name: str, kind: str, exc: BaseException) -> AuditResult:
    return AuditResult(
        name=name,
        kind=kind,
        n=N,
        dim=-1,
        dtype="",
        tolerance=float("nan"),
        trials=0,
        inputs=(),
        errors={},
        equivariant=frozenset(),
        invariant=frozenset(),
        maximal=frozenset(),
        status="failed",
        reason=f"could not be built or audited: {_describe(exc)}",
    )


def primitive_table(
    *,
    generator: torch.Generator | None = None,
    torch_primitives: bool = True,
    isotorch_primitives: bool = True,
    training: bool = True,
    kinds: Sequence[str] | None = None,
) -> PrimitiveTable:
    """Audit every primitive of torch and isotorch and return the table (deterministic given ``generator``).

    Every row starts from the same random state, a copy of ``generator``'s: its elements and inputs come from a
    generator in that state, and the global RNG (from which dropout and initialisers draw) is set to it in a fork. So
    a row's result does not depend on which other rows are in the table, and neither ``generator`` nor the caller's
    global RNG is advanced.

    Args:
        generator: a CPU ``torch.Generator`` whose current state every row starts from, or ``None`` (torch's
            global RNG, its CPU state). ``isotorch audit --primitives`` passes ``torch.Generator().manual_seed(0)``.
        torch_primitives: include torch's activations, normalisers, pooling and dropout (default True).
        isotorch_primitives: include every registered primitive, :func:`isotorch.nn.names` (default True).
        training: include optimisers, initialisers and weight penalties (default True).
        kinds: keep only rows of these kinds (default all).

    The rows run single-threaded (``torch.set_num_threads(1)``, restored afterwards): every tensor is tiny, and
    on a busy machine thread synchronisation costs more than it saves.

    Returns:
        A :class:`PrimitiveTable`; render it with rich (``rich.print(table)``), :meth:`~PrimitiveTable.to_markdown`
        or :meth:`~PrimitiveTable.to_json`.

    Examples:
        >>> import torch
        >>> gen = torch.Generator().manual_seed(0)
        >>> table = primitive_table(generator=gen, isotorch_primitives=False, training=False, kinds=["activation"])
        >>> {r.name: r.summary() for r in table.rows}["tanh"], table.seed
        ('B_n', 0)
    """
    generator = check_generator(generator)
    source_rng = torch.default_generator if generator is None else generator
    if source_rng.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got one on {source_rng.device}")
    state, seed = source_rng.get_state(), fresh_seed(source_rng)
    if kinds is not None:
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise ValueError(f"kinds must be a subset of {KINDS}, got {bad}")
    specs: list[tuple[str, str, str, Callable, tuple[str, ...] | None, str]] = []
    if torch_primitives:
        specs += [(name, "torch", kind, run, None, note) for name, kind, run, note in _torch_rows()]
    if isotorch_primitives:
        specs += [(name, "isotorch", kind, run, declared, note) for name, kind, run, declared, note in _isotorch_rows()]
    if training:
        specs += _training_rows()
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every tensor here is tiny: thread synchronisation would cost more than it saves
    try:
        for name, source, kind, run, declared, note in specs:
            if kinds is not None and kind not in kinds:
                continue
            rows.append(TableRow(name, source, kind, _run_row(run, name, kind, state), declared, note))
    finally:
        torch.set_num_threads(threads)
    return PrimitiveTable(tuple(rows), seed)


def _run_row(run, name: str, kind: str, state: torch.Tensor):
    gen = torch.Generator()
    gen.set_state(state)
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(state)  # random primitives (dropout) and initialisers draw from the global RNG
        try:
            return run(gen, name)
        except Exception as exc:
            return _failed(name, kind, exc)
