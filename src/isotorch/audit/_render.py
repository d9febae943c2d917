"""Rich and Markdown renderings of audit results (the CLI prints them; the library never prints)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.console import Group as RichGroup
from rich.table import Table
from rich.text import Text

from isotorch.audit._result import sort_groups

if TYPE_CHECKING:  # pragma: no cover
    from isotorch.audit._model import ModelAudit

SYMBOLS = {
    "trivial": "{e}",
    "permutation": "S_n",
    "signed_permutation": "B_n",
    "positive_scaling": "(ℝ>0)ⁿ",
    "mean_orthogonal": "O(n)_𝟙",
    "special_orthogonal": "SO(n)",
    "orthogonal": "O(n)",
}


def symbol(key: str) -> str:
    """A short mathematical name for a group key (``block_orthogonal:4`` → ``O(4)≀S``)."""
    if key.startswith("block_orthogonal:"):
        return f"O({key.split(':', 1)[1]})≀S"
    return SYMBOLS.get(key, key)


def groups_text(keys) -> str:
    """Group keys as ``S_n, (ℝ>0)ⁿ`` in lattice order, or ``–`` when empty."""
    keys = sort_groups(keys)
    return ", ".join(symbol(k) for k in keys) if keys else "–"


def error_margin(errors, relation: str, tol: float) -> str:
    """``held ≤ a · fails ≥ b``: the worst held error and the smallest failing error of one relation."""
    values = [e[relation] for e in errors.values() if not math.isnan(e.get(relation, math.nan))]
    held = [v for v in values if v <= tol]
    failed = [v for v in values if v > tol]
    parts = []
    if held:
        parts.append(f"≤ {max(held):.0e}")
    if failed:
        parts.append(f"fails ≥ {min(failed):.0e}")
    return " · ".join(parts) if parts else ""


def model_renderable(report: ModelAudit):
    """The model audit as rich renderables: one table of rows, one of G2 chains, and a summary."""
    rows = Table(title=f"Symmetry audit of {report.model} on input {tuple(report.input_shape)}", show_lines=False)
    for column in ("module", "type", "dim", "n", "maximal group", "errors", "note"):
        rows.add_column(column, overflow="fold")
    for r in report.rows:
        if r.role == "primitive":
            result = r.result
            errors = error_margin(result.errors, result.respects, result.tolerance) if result.ok else ""
            rows.add_row(r.path or "(model)", r.type, str(r.dim), str(r.n), groups_text(r.maximal), errors, r.note)
        else:
            style = "dim" if r.role in ("absorbed", "structural") else "yellow"
            rows.add_row(r.path or "(model)", r.type, "", "", "", "", Text(r.note, style=style))
    parts = [rows]
    if report.chains:
        chains = Table(title="G2: hidden-layer parameter symmetries (W₁→gW₁, b₁→gb₁, W₂→W₂g⁻¹)")
        for column in ("chain", "width", "group", "output change", "control", "verified"):
            chains.add_column(column, overflow="fold")
        for c in report.chains:
            changes = ", ".join(f"{symbol(k)} {v:.0e}" for k, v in c.changes.items())
            control = f"{symbol(c.control[0])} {c.control[1]:.0e}" if c.control else "–"
            verdict = Text("yes", style="green") if c.verified else Text(f"no: {c.note}", style="red")
            name = " → ".join([c.first, *c.primitives, c.last])
            chains.add_row(name, str(c.width), groups_text(c.groups), changes, control, verdict)
        parts.append(chains)
    summary = report.summary()
    lines = [f"G1  every primitive site holds: {groups_text(summary['G1']['common'])}"]
    verified = sum(c.verified for c in report.chains)
    lines.append(
        f"G2  {verified}/{len(report.chains)} chains verified; {len(report.not_analysed)} weight layer(s) not in a "
        "sequential chain (not analysed)"
    )
    g3 = summary["G3"]
    if not g3["measured"]:
        lines.append(f"G3  not measured: {g3['reason']}")
    elif g3["status"] != "ok":
        lines.append(f"G3  {g3['status']}: {g3['reason']}")
    else:
        lines.append(
            f"G3  end to end: equivariant {groups_text(g3['equivariant'])}; invariant {groups_text(g3['invariant'])}"
        )
    parts.append(Text("\n".join(lines)))
    return RichGroup(*parts)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def model_markdown(report: ModelAudit) -> str:
    """The model audit as Markdown."""
    out = [f"# Symmetry audit of {report.model}", "", f"Input shape: {tuple(report.input_shape)}", ""]
    out += ["| module | type | dim | n | maximal group | note |", "|---|---|---|---|---|---|"]
    for r in report.rows:
        dim = "" if r.dim is None else str(r.dim)
        n = "" if r.n is None else str(r.n)
        maximal = groups_text(r.maximal) if r.role == "primitive" else ""
        out.append(f"| {_md_escape(r.path or '(model)')} | {r.type} | {dim} | {n} | {maximal} | {_md_escape(r.note)} |")
    summary = report.summary()
    out += ["", "## Summary", "", f"- G1: every primitive site holds {groups_text(summary['G1']['common'])}."]
    for c in report.chains:
        changes = ", ".join(f"{symbol(k)}: {v:.1e}" for k, v in c.changes.items())
        control = f"; control {symbol(c.control[0])}: {c.control[1]:.1e}" if c.control else ""
        verdict = "verified" if c.verified else f"not verified ({c.note})"
        out.append(
            f"- G2: {c.first} → {c.last} (width {c.width}): {groups_text(c.groups)}; {changes}{control}; {verdict}."
        )
    if not report.chains:
        out.append("- G2: no sequential chain weight layer → primitives → weight layer was found.")
    g3 = summary["G3"]
    if not g3["measured"]:
        out.append(f"- G3: not measured ({g3['reason']}).")
    elif g3["status"] != "ok":
        out.append(f"- G3: {g3['status']} ({g3['reason']}).")
    else:
        out.append(f"- G3: equivariant {groups_text(g3['equivariant'])}; invariant {groups_text(g3['invariant'])}.")
    if report.not_analysed:
        out += ["", "Not analysed by G2:", ""] + [f"- {_md_escape(line)}" for line in report.not_analysed]
    return "\n".join(out) + "\n"
