"""``isotorch study run|report|list``: the typer app ``study_app`` mounted by :mod:`isotorch.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["study_app"]

study_app = typer.Typer(help="Run reproducible studies and write their reports.", no_args_is_help=True)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise typer.BadParameter("--seeds must name at least one seed")
    return seeds


@study_app.command("run")
def run_command(
    name: Annotated[str, typer.Argument(help="Study name (see `isotorch study list`).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (must be new or empty unless --resume).")],
    seeds: Annotated[
        str | None, typer.Option(help="Comma-separated seeds (default 0; resume: the stored ones).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override key=value (repeatable).")] = None,
    preset: Annotated[str | None, typer.Option(help="A named preset of the study, e.g. tiny.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run stored in --out.")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Updates between checkpoints.")] = 500,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also log to TensorBoard.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run a study over seeds; write metrics, checkpoints, figures, findings and report.html."""
    from rich.console import Console

    from isotorch.studies._checkpoint import CheckpointError
    from isotorch.studies._config import ConfigError
    from isotorch.studies._registry import UnknownStudyError
    from isotorch.studies._runner import NonFiniteLossError, RunFolderError, StudyInterrupted, run_study

    console = Console(stderr=True)
    try:
        result = run_study(
            name,
            out,
            seeds=_seeds(seeds) if seeds is not None else None,
            preset=preset,
            overrides=list(set_ or []),
            resume=resume,
            progress=progress,
            checkpoint_every=checkpoint_every,
            tensorboard=tensorboard,
        )
    except StudyInterrupted as exc:
        console.print(f"[yellow]{exc}[/yellow]")
        raise typer.Exit(130) from None
    except (UnknownStudyError, ConfigError, RunFolderError, CheckpointError, NonFiniteLossError, ImportError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    _print_findings(result.findings)
    typer.echo(f"report: {result.report}")


def _print_findings(findings) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for f in findings:
        table = Table(title=f.title)
        table.add_column("")
        for column in f.columns:
            table.add_column(column)
        for row, cells in f.rows.items():
            table.add_row(row, *(str(cells[c]) if c in cells else "" for c in f.columns))
        console.print(table)


@study_app.command("report")
def report_command(out: Annotated[Path, typer.Argument(help="A study run folder.")]) -> None:
    """(Re)write report.html of a run folder."""
    from isotorch.studies._registry import UnknownStudyError
    from isotorch.studies._report import write_report
    from isotorch.studies._runner import RunFolderError

    try:
        path = write_report(out)
    except (RunFolderError, UnknownStudyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"report: {path}")


@study_app.command("list")
def list_command() -> None:
    """List the registered studies, their presets and config fields."""
    import dataclasses

    from isotorch.studies._registry import get, names

    for name in names():
        study = get(name)
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(study.Config))
        presets = ", ".join(study.presets) or "none"
        typer.echo(f"{name}: {study.description}\n  presets: {presets}\n  config: {fields}")


if __name__ == "__main__":  # python -m isotorch.studies._cli run NAME --out DIR ...
    study_app()
