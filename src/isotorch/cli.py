"""The ``isotorch`` command: ``demo`` (the main job), ``audit`` and ``study``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from isotorch.studies._cli import parse_seeds, study_app

app = typer.Typer(help="isotorch: symmetry-principled deep learning.", no_args_is_help=True, add_completion=False)
app.add_typer(study_app, name="study")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder for metrics, figures and report.html.")] = Path("runs/demo"),
    seeds: Annotated[str, typer.Option(help="Comma-separated distinct seeds (at least 2 for intervals).")] = "0,1,2",
    epochs: Annotated[int, typer.Option(help="Training epochs per model.")] = 30,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run stored in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (CUDA when available).")] = "cpu",
    bf16: Annotated[bool, typer.Option("--bf16", help="bf16 autocast (CUDA only).")] = False,
) -> None:
    """The main job: train a matched elementwise/isotropic pair on digits, measure, reach verdicts, write a report.

    It runs the registered study ``demo`` (checkpoints, --resume); an existing non-empty --out needs --resume.
    """
    import torch
    from rich.console import Console

    from isotorch.studies import NonFiniteLossError, RunFolderError, StudyInterrupted, run_study
    from isotorch.studies._checkpoint import CheckpointError
    from isotorch.studies._config import ConfigError
    from isotorch.studies._verdicts import verdict_table

    console = Console()
    try:
        seed_list = parse_seeds(seeds)  # the same rules as `isotorch study run --seeds`
    except ValueError as exc:
        _fail(console, str(exc))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo's models are tiny: one thread avoids synchronisation overhead
    try:
        result = run_study(
            "demo",
            out,
            seeds=None if resume else seed_list,
            overrides=None if resume else {"epochs": epochs},
            resume=resume,
            progress=progress,
            device=device,
            autocast=bf16,
        )
    except StudyInterrupted as exc:
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        message = f"stopped at once (second Ctrl-C); each seed keeps its last checkpoint in {out}"
        console.print(f"{message}. Resume with --resume.", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except (ConfigError, RunFolderError, CheckpointError, NonFiniteLossError, ValueError) as exc:
        _fail(console, str(exc))
    finally:
        torch.set_num_threads(threads)
    for findings in result.findings:
        console.print(_findings_table(findings))
    console.print(verdict_table(result.verdicts))
    console.print(f"report: {result.report}")


def _fail(console, message: str):
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _findings_table(findings):
    from rich.table import Table

    table = Table(title=findings.title)
    table.add_column("metric", overflow="fold")
    rows = list(findings.rows)
    for row in rows:
        table.add_column(row, justify="right", overflow="fold")
    for column in findings.columns:
        table.add_row(column, *(str(findings.rows[r][column]) if column in findings.rows[r] else "" for r in rows))
    return table


@app.command()
def audit(
    target: Annotated[
        str | None,
        typer.Argument(help="A model factory 'package.module:function', or 'hf:NAME' (needs isotorch\\[hf])."),
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
