"""The ``isotorch`` command (in progress)."""

import typer

app = typer.Typer(help="isotorch: symmetry-principled deep learning.", no_args_is_help=True)


@app.command()
def demo() -> None:
    """Run the main job."""
    raise typer.Exit(1)
