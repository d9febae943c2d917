"""Figure helpers for the probe results: matplotlib's object API only (no pyplot, no GUI backend, no windows)."""

from __future__ import annotations

import math


def new_axes(ax=None, *, polar: bool = False, figsize: tuple[float, float] = (6.0, 4.0)):
    """Return (figure, axes): a fresh ``matplotlib.figure.Figure`` with one axes, or the figure holding ``ax``."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot(projection="polar" if polar else None)
    return fig, ax


def set_angle_ticks(ax) -> None:
    """Ticks at multiples of π/4 on [0, 2π), labelled in units of π."""
    ticks = [k * math.pi / 4 for k in range(9)]
    labels = ["0", "π/4", "π/2", "3π/4", "π", "5π/4", "3π/2", "7π/4", "2π"]
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels)
    ax.set_xlim(0, 2 * math.pi)
    ax.set_xlabel("spotlight angle θ")
