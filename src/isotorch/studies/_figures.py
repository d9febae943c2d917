"""The studies' figure helper (private): a new figure, mean ± 95% CI bands over seeds, an atomic PNG save.

A study's :meth:`~isotorch.studies.Study.figures` opens each figure with :func:`subplots` (matplotlib's
non-interactive backend, the studies' default size and resolution), draws on the axes it gets back, and hands the
figure to :func:`save_figure`, which lays it out, writes the PNG into the run folder atomically (a temporary file
renamed into place, so a killed run never leaves half an image), closes it and returns the
:class:`~isotorch.studies._stats.Figure` record (file name and caption) that the report shows.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from isotorch.studies._checkpoint import write_bytes_atomic
from isotorch.studies._stats import Figure, mean_ci

__all__ = ["ci_band", "cmap", "save_figure", "subplots"]


def subplots(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], dpi: int = 110, **kwargs: Any
) -> tuple[Any, Any]:
    """A new matplotlib figure and its axes on the Agg backend (``plt.subplots`` with the studies' resolution).

    Args:
        nrows: rows of the grid of axes (e.g. one row per seed).
        ncols: columns of the grid of axes (e.g. one column per family).
        figsize: the figure size in inches.
        dpi: the resolution (default 110, the studies' figures).
        **kwargs: passed to ``plt.subplots`` (``squeeze=False`` for a 2-D array of axes, ``sharey``, ...).

    Returns:
        ``(figure, axes)`` as ``plt.subplots`` returns them.

    Examples:
        >>> fig, axes = subplots(1, 2, figsize=(4, 2), squeeze=False)
        >>> axes.shape
        (1, 2)
        >>> import matplotlib.pyplot as plt; plt.close(fig)
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=figsize, dpi=dpi, **kwargs)


def cmap(name: str, n: int) -> np.ndarray:
    """``n`` colours spread over matplotlib's colour map ``name`` (``viridis`` from 0 to 0.9; ``tab10`` in order)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if name == "viridis":
        return plt.get_cmap(name)(np.linspace(0, 0.9, n))
    return np.array([plt.get_cmap(name)(i) for i in range(n)])


def save_figure(fig, out: str | Path, name: str, caption: str, *, tight: bool = True) -> Figure:
    """Lay out ``fig`` (unless ``tight=False``), write it to ``out/name`` atomically, close it; the report's record.

    Examples:
        >>> import tempfile
        >>> fig, ax = subplots(figsize=(2, 2))
        >>> _ = ax.plot([0, 1], [1, 0])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     record = save_figure(fig, folder, "line.png", "a falling line")
        ...     size = (Path(folder) / "line.png").stat().st_size
        ...     leftovers = [p.name for p in Path(folder).iterdir() if p.name != "line.png"]
        >>> record.path, size > 1000, leftovers
        ('line.png', True, [])
    """
    import matplotlib.pyplot as plt

    if not name.endswith(".png") or "/" in name or "\\" in name:
        raise ValueError(f"name must be a plain file name ending in .png, got {name!r}")
    buffer = io.BytesIO()
    try:
        if tight:
            fig.tight_layout()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    write_bytes_atomic(Path(out) / name, buffer.getvalue())
    return Figure(name, caption)


def ci_band(
    ax: Any,
    xs: Sequence[float],
    values: Iterable[Iterable[float]],
    *,
    colour: Any = None,
    label: str | None = None,
    clip: tuple[float, float] | None = None,
    seeds: bool = False,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the mean over seeds at each x with 95% CI error bars (:func:`~isotorch.studies._stats.mean_ci`).

    Args:
        ax: the matplotlib axes.
        xs: the x positions.
        values: for each x, the per-seed values (non-finite ones are ignored by ``mean_ci``).
        colour: the line's colour.
        label: the line's legend label.
        clip: bounds of the quantity (e.g. ``(0, 1)`` for an accuracy): the interval's ends are clipped to them.
        seeds: also draw each seed's value as a faint dot.
        **kwargs: passed to ``ax.errorbar`` (default ``marker="o", capsize=3``).

    Returns:
        The means and the CI half-widths (0 where one seed leaves it undefined).

    Examples:
        >>> fig, ax = subplots(figsize=(2, 2))
        >>> mean, ci = ci_band(ax, [1, 2], [[1.0, 3.0], [2.0, 2.0]])
        >>> mean.tolist(), round(float(ci[0]), 2), float(ci[1])
        ([2.0, 2.0], 12.71, 0.0)
        >>> import matplotlib.pyplot as plt; plt.close(fig)
    """
    per_x = [list(v) for v in values]
    est = [mean_ci(v) for v in per_x]
    mean = np.array([e.mean for e in est])
    ci = np.array([0.0 if math.isnan(e.ci95) else e.ci95 for e in est])
    yerr: np.ndarray = ci
    if clip is not None:
        yerr = np.abs(np.stack([np.clip(mean - ci, *clip), np.clip(mean + ci, *clip)]) - mean)
    kwargs.setdefault("marker", "o")
    kwargs.setdefault("capsize", 3)
    ax.errorbar(xs, mean, yerr=yerr, color=colour, label=label, **kwargs)
    if seeds:
        for x, v in zip(xs, per_x, strict=True):
            finite = [s for s in v if math.isfinite(s)]
            ax.plot([x] * len(finite), finite, ".", color=colour, ms=3, alpha=0.5)
    return mean, ci
