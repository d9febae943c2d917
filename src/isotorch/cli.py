"""The ``isotorch`` command: ``demo`` (the main job) and ``audit``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="isotorch: symmetry-principled deep learning.", no_args_is_help=True, add_completion=False)


@app.command()
def demo() -> None:
    """Run the main job."""
    raise typer.Exit(1)


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
