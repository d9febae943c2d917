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


def _g2_line(report: ModelAudit) -> str:
    free = [c for c in report.chains if c.status == "free"]
    verified = sum(c.verified for c in free)
    return f"{verified}/{len(free)} free sites verified; {len(report.chains) - len(free)} frozen or broken"


def _g1_common(report: ModelAudit) -> str:
    if not report.complete:
        return f"unknown: {len(report.not_analysed)} part(s) of the model were not seen (listed below)"
    return groups_text(report.common)


def model_renderable(report: ModelAudit):
    """The model audit as rich renderables: one table of rows, one of G2 sites, and a summary."""
    rows = Table(title=f"Symmetry audit of {report.model} on input {tuple(report.input_shape)}", show_lines=False)
    for column in ("operation", "type", "dim", "n", "maximal group", "errors", "note"):
        rows.add_column(column, overflow="fold")
    for r in report.rows:
        if r.role == "primitive":
            result = r.result
            errors = error_margin(result.errors, result.respects, result.tolerance) if result and result.ok else ""
            rows.add_row(r.path or "(model)", r.type, str(r.dim), str(r.n), groups_text(r.maximal), errors, r.note)
        else:
            style = "dim" if r.role in ("absorbed", "structural", "attention") else "yellow"
            rows.add_row(r.path or "(model)", r.type, "", "", "", "", Text(r.note, style=style))
    parts: list[Table | Text] = [rows]
    if report.chains:
        chains = Table(title="G2: parameter symmetries of the sites (W₁→gW₁, b₁→gb₁, W₂→W₂g⁻¹)")
        for column in ("site", "kind", "layers", "width", "group", "output change", "control", "verified"):
            chains.add_column(column, overflow="fold")
        for c in report.chains:
            changes = ", ".join(f"{symbol(k)} {v:.0e}" for k, v in c.changes.items())
            control = f"{symbol(c.control[0])} {c.control[1]:.0e}" if c.control else "–"
            if c.status != "free":
                verdict = Text(f"{c.status}: {c.reason}", style="yellow")
            else:
                verdict = Text("yes", style="green") if c.verified else Text(f"no: {c.note}", style="red")
            layers = " → ".join([c.first, *c.primitives, c.last]) if c.last else c.first
            group = "GL(n)" if c.group == "general_linear" else groups_text(c.groups) if c.groups else c.group
            chains.add_row(c.site, c.kind, layers, str(c.width), group, changes, control, verdict)
        parts.append(chains)
    summary = report.summary()
    lines = [f"G1  every primitive site holds: {_g1_common(report)}"]
    lines.append(f"G2  {_g2_line(report)} (site graph traced by {report.method})")
    g3 = summary["G3"]
    if not g3["measured"]:
        lines.append(f"G3  not measured: {g3['reason']}")
    elif g3["status"] != "ok":
        lines.append(f"G3  {g3['status']}: {g3['reason']}")
    else:
        lines.append(
            f"G3  end to end: equivariant {groups_text(g3['equivariant'])}; invariant {groups_text(g3['invariant'])}"
        )
    lines += [f"not seen: {line}" for line in report.not_analysed]
    parts.append(Text("\n".join(lines)))
    return RichGroup(*parts)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def model_markdown(report: ModelAudit) -> str:
    """The model audit as Markdown."""
    out = [f"# Symmetry audit of {report.model}", "", f"Input shape: {tuple(report.input_shape)}", ""]
    out += ["| operation | type | dim | n | maximal group | note |", "|---|---|---|---|---|---|"]
    for r in report.rows:
        dim = "" if r.dim is None else str(r.dim)
        n = "" if r.n is None else str(r.n)
        maximal = groups_text(r.maximal) if r.role == "primitive" else ""
        out.append(f"| {_md_escape(r.path or '(model)')} | {r.type} | {dim} | {n} | {maximal} | {_md_escape(r.note)} |")
    out += ["", "## Summary", "", f"- G1: every primitive holds {_g1_common(report)}."]
    out.append(f"- G2: {_g2_line(report)} (site graph traced by {report.method}).")
    for c in report.chains:
        if c.status != "free":
            out.append(f"- G2 site {c.site} ({c.kind}, width {c.width}): {c.status} ({_md_escape(str(c.reason))}).")
            continue
        changes = ", ".join(f"{symbol(k)}: {v:.1e}" for k, v in c.changes.items())
        control = f"; control {symbol(c.control[0])}: {c.control[1]:.1e}" if c.control else ""
        verdict = "verified" if c.verified else f"not verified ({c.note})"
        group = "GL(n)" if c.group == "general_linear" else groups_text(c.groups)
        out.append(
            f"- G2 site {c.site} ({c.kind}): {c.first} → {c.last} (width {c.width}): {group}; {changes}{control}; "
            f"{verdict}."
        )
    summary = report.summary()
    g3 = summary["G3"]
    if not g3["measured"]:
        out.append(f"- G3: not measured ({g3['reason']}).")
    elif g3["status"] != "ok":
        out.append(f"- G3: {g3['status']} ({g3['reason']}).")
    else:
        out.append(f"- G3: equivariant {groups_text(g3['equivariant'])}; invariant {groups_text(g3['invariant'])}.")
    if report.not_analysed:
        out += ["", "Not seen by the site graph:", ""] + [f"- {_md_escape(line)}" for line in report.not_analysed]
    return "\n".join(out) + "\n"
