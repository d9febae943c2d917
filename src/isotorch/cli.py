"""The ``isotorch`` command: ``demo`` (the main job), ``audit`` and ``study``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from isotorch.studies._cli import study_app

app = typer.Typer(help="isotorch: symmetry-principled deep learning.", no_args_is_help=True, add_completion=False)
app.add_typer(study_app, name="study")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder for metrics, figures and report.html.")] = Path("runs/demo"),
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    epochs: Annotated[int, typer.Option(help="Training epochs per model.")] = 30,
) -> None:
    """The main job: train a matched elementwise/isotropic pair on digits, measure, and write a report."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from isotorch.studies.demo import METRICS, DemoConfig, format_metric, run_demo

    console = Console()
    try:
        config = DemoConfig(seeds=_parse_ints(seeds, "--seeds"), epochs=epochs)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("demo", total=None)
        result = run_demo(out, config, progress=lambda done, total: bar.update(task, completed=done, total=total))

    n = len(config.seeds)
    table = Table(title=f"digits, {n} seeds (mean ± 95% CI)" if n > 1 else "digits, 1 seed (no interval)")
    table.add_column("metric")
    for name in result.summary:
        table.add_column(name, justify="right")
    for key, label, scale in METRICS:
        table.add_row(label, *(format_metric(summary, key, scale) for summary in result.summary.values()))
    if result.lmc:
        table.add_row(
            "LMC barrier: unaligned → aligned",
            *(f"{s['barrier_before']:.3f} → {s['barrier_after']:.3f}" for s in result.summary.values()),
        )
    console.print(table)
    if not result.lmc:
        console.print("linear mode connectivity needs two seeds (e.g. --seeds 0,1): skipped")
    prims = Table(title="primitive sites and their measured groups (isotorch.audit)")
    for column in result.primitives[0]:
        prims.add_column(column)
    for row in result.primitives:
        prims.add_row(*(str(v) for v in row.values()))
    console.print(prims)
    console.print(f"report: {result.report}")


def _parse_ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None


@app.command()
def audit(
    target: Annotated[
        str | None,
        typer.Argument(help="A model factory 'package.module:function', or 'hf:NAME' (needs isotorch[hf])."),
    ] = None,
    primitives: Annotated[
        bool, typer.Option("--primitives", help="Audit every primitive of torch and isotorch.")
    ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON.")] = None,
    markdown_path: Annotated[Path | None, typer.Option("--markdown", help="Also write a Markdown table.")] = None,
    input_shape: Annotated[str | None, typer.Option(help="Input shape for a model factory, e.g. 8,32.")] = None,
    layers: Annotated[int, typer.Option(help="hf: number of layers of the randomly initialised model.")] = 2,
    width: Annotated[int, typer.Option(help="hf: hidden width of the randomly initialised model.")] = 128,
) -> None:
    """Measure which symmetry groups primitives or a whole model respect."""
    from isotorch.audit._cli import run_audit_command

    run_audit_command(
        target=target,
        primitives=primitives,
        json_path=json_path,
        markdown_path=markdown_path,
        input_shape=input_shape,
        layers=layers,
        width=width,
    )
