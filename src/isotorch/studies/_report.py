"""``report.html`` for a study run folder: the verdicts on the study's claims first, then findings, figures, audits
of the saved models, config and environment.

The page is self-contained (figures are embedded as base64 PNG, no scripts, no external styles), so it opens
offline and can be moved or mailed on its own.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

from isotorch._util import dumps
from isotorch.studies._checkpoint import write_text_atomic
from isotorch.studies._run_folder import RunData, RunFolderError, _read_json
from isotorch.studies._stats import Findings
from isotorch.studies._verdicts import Verdict, check_verdicts, read_verdicts, write_verdicts

__all__ = ["write_report"]

logger = logging.getLogger(__name__)

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}figure{margin:1em 0}figcaption{color:#444;font-size:0.95em}img{max-width:100%}
pre{background:#f7f7f7;padding:0.6em;overflow-x:auto}.note{color:#8a5a00}.small{color:#555;font-size:0.9em}
.supported{color:#1a7f37;font-weight:bold}.contradicted{color:#c62828;font-weight:bold}
.inconclusive{color:#8a5a00;font-weight:bold}"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _findings_html(findings: list[Findings]) -> str:
    if not findings:
        return "<p class='note'>This study reported no findings table.</p>"
    parts = []
    for f in findings:
        head = "".join(f"<th>{_esc(c)}</th>" for c in f.columns)
        rows = "".join(
            f"<tr><td>{_esc(row)}</td>"
            + "".join(f"<td>{_esc(cells[c]) if c in cells else ''}</td>" for c in f.columns)
            + "</tr>"
            for row, cells in f.rows.items()
        )
        caption = f"<p>{_esc(f.caption)}</p>" if f.caption else ""
        parts.append(f"<h3>{_esc(f.title)}</h3>{caption}<table><tr><th></th>{head}</tr>{rows}</table>")
    return "".join(parts)


def _verdicts_html(verdicts: list[Verdict] | None, has_claims: bool) -> str:
    if verdicts is None:
        return "<p class='note'>No verdicts: the study could not reach them for this run (see the notes above).</p>"
    if not verdicts:
        if has_claims:
            return "<p class='note'>No verdicts were recorded for this run.</p>"
        return "<p>This study declares no claims to test.</p>"
    rows = "".join(
        f"<tr><td>{_esc(v.claim.text)}<br><span class='small'>statistic: {_esc(v.claim.statistic)}; source: "
        f"{_esc(v.claim.source)}</span></td><td class='{v.verdict}'>{v.verdict}</td>"
        f"<td>{_esc(v.interval_text())}</td><td>{_esc(', '.join(map(str, v.seeds)) or '—')}</td>"
        f"<td class='small'>{_esc(v.note)}</td></tr>"
        for v in verdicts
    )
    return (
        "<p>A claim is <b>supported</b> when the 95% confidence interval of its signed statistic excludes 0 on the "
        "claimed side, <b>contradicted</b> when it excludes 0 on the other side, and <b>inconclusive</b> "
        "otherwise.</p><table><tr><th>claim</th><th>verdict</th><th>estimate [95% CI]</th><th>seeds</th>"
        f"<th>how / why</th></tr>{rows}</table>"
    )


def _figures_html(out: Path, captions: dict[str, str]) -> str:
    """The study's figures in the order it listed them (a listed figure whose file is missing says so), then any
    other PNG in the folder, marked as not listed by this run."""
    extra = sorted(p.name for p in out.glob("*.png") if p.name not in captions)
    if not captions and not extra:
        return "<p class='note'>No figures.</p>"
    parts = []
    for name in [*captions, *extra]:
        path = out / name
        if not path.exists():
            parts.append(f"<p class='note'>Figure {_esc(name)} was listed by the study but its file is missing.</p>")
            continue
        data = base64.b64encode(path.read_bytes()).decode()
        caption = captions.get(name, "not listed by this run's study")
        parts.append(
            f"<figure id='{_esc(name)}'><img src='data:image/png;base64,{data}' alt='{_esc(name)}'>"
            f"<figcaption><b>{_esc(name)}</b>: {_esc(caption)}</figcaption></figure>"
        )
    return "".join(parts)


def _audit_html(out: Path) -> str:
    files = sorted((out / "models").glob("*.pt")) if (out / "models").exists() else []
    if not files:
        return "<p>No models were saved by this study.</p>"
    try:
        import torch

        from isotorch.audit import audit_model
    except ImportError as exc:
        return f"<p class='note'>isotorch.audit is not available ({_esc(exc)}); the saved models were not audited.</p>"
    parts = []
    for path in files:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
            if saved.get("input") is None:
                parts.append(f"<h3>{_esc(path.stem)}</h3><p class='note'>no example input saved: not audited</p>")
                continue
            # a seeded audit, so the report of a run is the same every time it is made
            audit_rng = torch.Generator().manual_seed(0)
            summary = audit_model(saved["model"], saved["input"], generator=audit_rng).summary()
        except Exception as exc:  # a failing audit must not lose the rest of the report
            logger.warning("audit of %s failed: %s", path, exc)
            parts.append(
                f"<h3>{_esc(path.stem)}</h3><p class='note'>audit failed: {_esc(type(exc).__name__)}: {_esc(exc)}</p>"
            )
            continue
        sites = "".join(
            f"<tr><td>{_esc(site)}</td><td>{_esc(', '.join(g) or '—')}</td></tr>"
            for site, g in summary["G1"]["sites"].items()
        )
        chains = "".join(
            f"<tr><td>{_esc(c['first'])} → {_esc(c['last'])}</td><td>{c['width']}</td>"
            f"<td>{_esc(', '.join(c['groups']) or '—')}</td><td>{'yes' if c['verified'] else 'no'}</td></tr>"
            for c in summary["G2"]
        )
        g3 = summary["G3"]
        end = (
            f"equivariant: {', '.join(g3['equivariant']) or '—'}; invariant: {', '.join(g3['invariant']) or '—'}"
            if g3.get("measured")
            else f"not measured ({g3.get('reason')})"
        )
        parts.append(
            f"<h3>{_esc(path.stem)}</h3><p>Primitive sites (maximal groups; common: "
            f"{_esc(', '.join(summary['G1']['common']) or '—')}):</p><table><tr><th>site</th><th>groups</th></tr>"
            f"{sites}</table><p>Hidden-layer parameter symmetries:</p><table><tr><th>chain</th><th>width</th>"
            f"<th>groups</th><th>verified</th></tr>{chains}</table><p>End to end: {_esc(end)}</p>"
        )
    return "".join(parts)


def write_report(out: str | Path) -> Path:
    """Write ``out/report.html`` for a study run folder and return its path.

    Uses ``verdicts.json``, ``findings.json`` and ``figures.json`` when the run wrote them; otherwise (an
    unfinished run, or a run from before verdicts existed) it asks the study for them from the records so far (if
    that fails, the report says so and shows the rest). ``verdicts.json`` is written then only for a finished run.
    """
    from isotorch.studies._registry import get

    out = Path(out)
    if not (out / "config.json").exists():
        raise RunFolderError(f"{out} is not a study run folder (no config.json)")
    meta = _read_json(out / "config.json")
    data = RunData.load(out)
    study = get(meta["study"])
    notes = []
    missing = [s for s in data.seeds if s not in data.finals]
    if missing:
        notes.append(f"This run is unfinished: seeds {missing} have no final results (resume it with --resume).")
    if (out / "findings.json").exists():
        findings = [Findings.from_dict(f) for f in _read_json(out / "findings.json")]
    else:
        try:
            findings = list(study.summarise(data))
            figures = study.figures(data, out)
            write_text_atomic(out / "figures.json", dumps([f.to_dict() for f in figures], indent=2) + "\n")
        except Exception as exc:
            findings = []
            notes.append(f"The study could not summarise this run: {type(exc).__name__}: {exc}")
    verdicts = read_verdicts(out)
    if verdicts is None and study.claims:
        try:
            verdicts = check_verdicts(data.study, study.claims, study.verdicts(data))
            if not missing:
                write_verdicts(out, verdicts)
        except Exception as exc:
            verdicts = None
            notes.append(f"The study could not reach its verdicts on this run: {type(exc).__name__}: {exc}")
    if verdicts and missing:
        notes.append("The verdicts below use only the seeds that finished.")
    captions = {}
    if (out / "figures.json").exists():
        captions = {f["path"]: f.get("caption", "") for f in _read_json(out / "figures.json")}
    finals = "".join(
        f"<tr><td>{seed}</td><td><code>{_esc(json.dumps(final))}</code></td></tr>"
        for seed, final in data.finals.items()
    )
    note_html = "".join(f"<p class='note'>{_esc(n)}</p>" for n in notes)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>isotorch study: {_esc(data.study)}</title>
<style>{_STYLE}</style></head><body>
<h1>isotorch study: {_esc(data.study)}</h1>
<p>{_esc(study.description)}</p>
<p>Seeds: {_esc(", ".join(map(str, data.seeds)))}; preset: {_esc(meta.get("preset"))}. Values are mean ± half-width
of the t-based 95% confidence interval over seeds (no ± for a single seed).</p>
{note_html}
<h2>Verdicts</h2>{_verdicts_html(verdicts, bool(study.claims))}
<h2>Findings</h2>{_findings_html(findings)}
<h2>Figures</h2>{_figures_html(out, captions)}
<h2>Symmetry audit of the saved models</h2>{_audit_html(out)}
<h2>Final results per seed</h2><table><tr><th>seed</th><th>results</th></tr>{finals}</table>
<h2>Config</h2><pre>{_esc(json.dumps(meta["config"], indent=2))}</pre>
<h2>Runner</h2><pre>{_esc(json.dumps(meta.get("runner", {}), indent=2))}</pre>
<h2>Environment</h2><pre>{_esc(json.dumps(meta.get("environment", {}), indent=2))}</pre>
</body></html>
"""
    path = out / "report.html"
    write_text_atomic(path, page)
    return path
