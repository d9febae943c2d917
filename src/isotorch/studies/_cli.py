"""``isotorch study run|report|list``: the typer app ``study_app`` mounted by :mod:`isotorch.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["study_app"]

study_app = typer.Typer(help="Run reproducible studies and write their reports.", no_args_is_help=True)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _exit(message: object, code: int = 2) -> typer.Exit:
    """Print ``error: message`` as one plain line on stderr (no rich markup: ``[hf]`` stays) and return the exit."""
    typer.echo(f"error: {_one_line(message)}" if code == 2 else _one_line(message), err=True)
    return typer.Exit(code)


def parse_seeds(text: str, option: str = "--seeds") -> tuple[int, ...]:
    """``"0,1,2"`` as distinct non-negative ints; a ``ValueError`` naming ``option`` otherwise.

    Examples:
        >>> parse_seeds("0, 1,2")
        (0, 1, 2)
    """
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError(f"{option} must name at least one seed")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(
            f"{option} must be distinct; {', '.join(map(str, repeated))} appear more than once in {text!r}"
        )
    if any(s < 0 for s in seeds):
        raise ValueError(f"{option} must be non-negative, got {text!r}")
    return seeds


@study_app.command("run")
def run_command(
    name: Annotated[str, typer.Argument(help="Study name (see `isotorch study list`).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (must be new or empty unless --resume).")],
    seeds: Annotated[
        str | None,
        typer.Option(help="Comma-separated distinct seeds (default 0,1,2; with --resume: seeds to add to the run)."),
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override key=value (repeatable).")] = None,
    preset: Annotated[str | None, typer.Option(help="A named preset of the study, e.g. tiny.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue (or extend) the run stored in --out.")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Updates between checkpoints (positive).")] = 500,
    executor: Annotated[
        str, typer.Option(help="serial (one unit after another) or ray (each unit, seed × configuration, a Ray task).")
    ] = "serial",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster HOST:PORT to join (default: a local cluster).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (CUDA when available).")] = "cpu",
    bf16: Annotated[bool, typer.Option("--bf16", help="bf16 autocast (CUDA only).")] = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also log to TensorBoard.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run a study over seeds; write metrics, checkpoints, figures, findings and report.html."""
    from isotorch.studies import NonFiniteLossError, RunFolderError, StudyInterrupted, run_study
    from isotorch.studies._checkpoint import CheckpointError
    from isotorch.studies._config import ConfigError
    from isotorch.studies._ray import ExecutorError
    from isotorch.studies._registry import UnknownStudyError

    try:
        parsed = parse_seeds(seeds) if seeds is not None else None
        if checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be a positive number of updates, got {checkpoint_every}")
        result = run_study(
            name,
            out,
            seeds=parsed,
            preset=preset,
            overrides=list(set_ or []),
            resume=resume,
            progress=progress,
            checkpoint_every=checkpoint_every,
            tensorboard=tensorboard,
            device=device,
            autocast=bf16,
            executor=executor,
            ray_address=ray_address,
        )
    except StudyInterrupted as exc:
        raise _exit(exc, 130) from None
    except KeyboardInterrupt:
        raise _exit(
            f"stopped at once (second Ctrl-C); each unit keeps its last checkpoint in {out / 'checkpoints'}. "
            "Resume with --resume.",
            130,
        ) from None
    except (
        UnknownStudyError,
        ConfigError,
        RunFolderError,
        CheckpointError,
        NonFiniteLossError,
        ExecutorError,
        ImportError,
        ValueError,
    ) as exc:
        raise _exit(exc) from None
    print_findings(result.findings)
    if result.verdicts:
        from rich.console import Console

        from isotorch.studies._verdicts import verdict_table

        Console().print(verdict_table(result.verdicts))
    typer.echo(f"report: {result.report}")


def print_findings(findings, console=None) -> None:
    """Print findings tables that stay readable in narrow terminals (80 columns).

    A table that fits is printed as is (no cell is cut); one that does not is printed long: one line per
    (row, metric) with the row's name on its first line.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for f in findings:
        cells = [[str(cells.get(c, "")) for c in f.columns] for cells in f.rows.values()]
        widths = [max([len(str(r)) for r in f.rows] + [0])]
        widths += [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(f.columns)]
        if sum(w + 3 for w in widths) + 1 <= console.width:
            table = Table(title=f.title, caption=getattr(f, "caption", None) or None)
            table.add_column("", no_wrap=True)
            for column in f.columns:
                table.add_column(column, no_wrap=True, justify="right")
            for row, values in zip(f.rows, cells, strict=True):
                table.add_row(str(row), *values)
        else:
            table = Table(title=f.title, caption=getattr(f, "caption", None) or None)
            table.add_column("", no_wrap=True)
            table.add_column("metric", overflow="fold")
            table.add_column("value", no_wrap=True, justify="right")
            for row, values in zip(f.rows, cells, strict=True):
                for i, (column, value) in enumerate(zip(f.columns, values, strict=True)):
                    table.add_row(str(row) if i == 0 else "", column, value, end_section=i == len(values) - 1)
        console.print(table)


@study_app.command("report")
def report_command(out: Annotated[Path, typer.Argument(help="A study run folder.")]) -> None:
    """(Re)write report.html of a run folder."""
    from isotorch.studies import RunFolderError
    from isotorch.studies._checkpoint import CheckpointError
    from isotorch.studies._config import ConfigError
    from isotorch.studies._registry import UnknownStudyError
    from isotorch.studies._report import write_report

    try:
        path = write_report(out)
    except (RunFolderError, UnknownStudyError, ConfigError, CheckpointError) as exc:
        raise _exit(exc) from None
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
