"""Statistics over seeds: mean ± t-based 95% confidence interval, findings tables, and figure records.

For n values with mean x̄ and sample standard deviation s (ddof = 1), the 95% interval is
x̄ ± t₀.₉₇₅(n − 1)·s/√n; with one value the half-width is reported as NaN (unknown), never as 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from isotorch._util import json_float, json_safe

__all__ = ["Estimate", "Figure", "Findings", "mean_ci"]


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with the half-width of its 95% confidence interval.

    Attributes:
        mean: the mean of the finite values (NaN if none).
        ci95: t-based half-width (NaN for fewer than two finite values).
        n: number of finite values used.
        values: every value given (non-finite ones included, for the record).
    """

    mean: float
    ci95: float
    n: int
    values: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN/inf become None)."""
        return {
            "mean": json_float(self.mean),
            "ci95": json_float(self.ci95),
            "n": self.n,
            "values": json_safe(list(self.values)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Estimate:
        values = tuple(number(v) for v in data.get("values", ()))
        return cls(number(data.get("mean")), number(data.get("ci95")), int(data.get("n", 0)), values)

    def __str__(self) -> str:
        if math.isnan(self.mean):
            return "n/a"
        if math.isnan(self.ci95):
            return f"{self.mean:.4g}"
        return f"{self.mean:.4g} ± {self.ci95:.2g}"


def number(value: Any) -> float:
    """A number read back from a run's JSON as a float: ``None`` (how NaN and ±inf are stored) becomes NaN.

    Examples:
        >>> number(None), number(2)
        (nan, 2.0)
    """
    return math.nan if value is None else float(value)


def mean_ci(values: Iterable[float]) -> Estimate:
    """Mean and t-based 95% confidence half-width of the finite values.

    Examples:
        >>> e = mean_ci([1.0, 2.0, 3.0])
        >>> e.mean, round(e.ci95, 4), e.n
        (2.0, 2.4841, 3)
        >>> mean_ci([0.003, 0.003, 0.003]).ci95
        0.0
    """
    raw = tuple(float(v) for v in values)
    finite = [v for v in raw if math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Estimate(float("nan"), float("nan"), 0, raw)
    mean = math.fsum(finite) / n
    if n < 2:
        return Estimate(mean, float("nan"), 1, raw)
    from scipy import stats

    if min(finite) == max(finite):  # identical values: exactly no spread (the mean's rounding would show ± 1e-18)
        return Estimate(finite[0], 0.0, n, raw)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1))
    return Estimate(mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n), n, raw)


@dataclass(frozen=True)
class Findings:
    """A findings table: one row per condition, one column per metric, each cell an :class:`Estimate` over seeds.

    Attributes:
        title: table title.
        columns: metric names, in display order.
        rows: ``{row label: {metric: Estimate}}``.
        caption: what the table shows and how to read it.
    """

    title: str
    columns: tuple[str, ...]
    rows: Mapping[str, Mapping[str, Estimate]]
    caption: str = ""

    @classmethod
    def from_values(
        cls, title: str, values: Mapping[str, Mapping[str, Sequence[float]]], *, caption: str = ""
    ) -> Findings:
        """Build from per-seed values: ``{row: {metric: [value per seed]}}``.

        Examples:
            >>> f = Findings.from_values("loss", {"small init": {"final loss": [0.1, 0.2]}})
            >>> str(f.rows["small init"]["final loss"]).startswith("0.15 ±")
            True
        """
        columns: list[str] = []
        for metrics in values.values():
            columns.extend(k for k in metrics if k not in columns)
        rows = {row: {k: mean_ci(v) for k, v in metrics.items()} for row, metrics in values.items()}
        return cls(title, tuple(columns), rows, caption)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "title": self.title,
            "columns": list(self.columns),
            "rows": {r: {k: e.to_dict() for k, e in m.items()} for r, m in self.rows.items()},
            "caption": self.caption,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Findings:
        rows = {r: {k: Estimate.from_dict(e) for k, e in m.items()} for r, m in data["rows"].items()}
        return cls(data["title"], tuple(data["columns"]), rows, data.get("caption", ""))


@dataclass(frozen=True)
class Figure:
    """A figure written by a study: its file name (relative to the run folder) and a caption."""

    path: str
    caption: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"path": self.path, "caption": self.caption, **dict(self.extra)}
