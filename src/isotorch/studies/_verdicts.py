"""Claims a study tests and the verdicts it reaches on them (``verdicts.json``; REFERENCE §9).

A :class:`Claim` is a signed effect: a statistic (described in words) whose sign the source paper predicts
(``direction`` +1 or −1). A :class:`Verdict` is the claim with its estimate, the 95% confidence interval, the seeds
and one of three words:

- ``"supported"`` when the interval excludes 0 on the claimed side (beyond ``claim.threshold``),
- ``"contradicted"`` when it excludes 0 on the other side,
- ``"inconclusive"`` otherwise, and whenever fewer than two seeds gave a finite value (the note says why).

Over seeds the interval is a t-interval (``scipy.stats``): x̄ ± t₀.₉₇₅(n−1)·s/√n of one value per seed; a
difference between two conditions is paired by seed (:func:`paired_verdict`), so the seed-to-seed variation that
both conditions share cancels.

Examples:
    >>> claim = Claim("lower-loss", "isotropic nets reach a lower loss", "position paper", "loss(elem) - loss(iso)")
    >>> v = paired_verdict(claim, {0: 0.30, 1: 0.32, 2: 0.35}, {0: 0.20, 1: 0.21, 2: 0.26})
    >>> v.verdict, round(v.estimate, 3)
    ('supported', 0.1)
    >>> verdict_from_values(claim, {0: 0.1}).verdict
    'inconclusive'
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isotorch._util import check_choice, dumps, json_float, json_safe
from isotorch.studies._stats import number

__all__ = [
    "VERDICTS",
    "Claim",
    "Verdict",
    "check_verdicts",
    "decide",
    "format_verdicts",
    "inconclusive",
    "paired_verdict",
    "read_verdicts",
    "verdict_from_correlations",
    "verdict_from_interval",
    "verdict_from_values",
    "verdict_table",
    "write_verdicts",
]

#: The three verdicts, in the order a report lists them.
VERDICTS = ("supported", "contradicted", "inconclusive")


@dataclass(frozen=True)
class Claim:
    """A claim a study tests: a statistic whose sign the source predicts.

    Attributes:
        name: short identifier, unique within the study (e.g. ``"elementwise-more-aligned"``).
        text: the claim in one sentence, as a reader of the paper would state it.
        source: where the claim comes from (paper, section or figure).
        statistic: the signed statistic whose sign is tested, in words (e.g. ``"A(elementwise) − A(isotropic),
            paired by seed"``).
        direction: the claimed sign of the statistic, +1 or −1.
        threshold: the effect size (≥ 0, in the statistic's units) the interval must exceed on the claimed side to
            support the claim. Default 0.
    """

    name: str
    text: str
    source: str
    statistic: str
    direction: int = 1
    threshold: float = 0.0

    def __post_init__(self):
        for field in ("name", "text", "source", "statistic"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Claim.{field} must be a non-empty string, got {value!r}")
        if self.direction not in (1, -1) or isinstance(self.direction, bool):
            raise ValueError(f"Claim.direction must be +1 or -1, got {self.direction!r}")
        if not (isinstance(self.threshold, int | float) and math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"Claim.threshold must be a finite number >= 0, got {self.threshold!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "claim": self.name,
            "text": self.text,
            "source": self.source,
            "statistic": self.statistic,
            "direction": self.direction,
            "threshold": float(self.threshold),
        }


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict: estimate, 95% interval, the seeds behind it and supported/contradicted/inconclusive.

    Attributes:
        claim: the claim.
        estimate: the statistic's estimate (NaN when there is none).
        ci95: ``(lo, hi)`` of the 95% confidence interval (NaN ends when unknown).
        seeds: the seeds whose values entered the estimate.
        n: the number of values behind the estimate (for a paired design, the number of pairs).
        verdict: ``"supported"``, ``"contradicted"`` or ``"inconclusive"``.
        note: how the interval was made, and for an inconclusive verdict why (and what scale would decide).
        values: the per-seed values, in the order of ``seeds`` (empty when the interval is not over seeds).
    """

    claim: Claim
    estimate: float
    ci95: tuple[float, float]
    seeds: tuple[int, ...]
    n: int
    verdict: str
    note: str = ""
    values: tuple[float, ...] = ()

    def __post_init__(self):
        if not isinstance(self.claim, Claim):
            raise TypeError(f"Verdict.claim must be a Claim, got {type(self.claim).__name__}")
        check_choice(self.verdict, "Verdict.verdict", tuple(VERDICTS))
        if len(self.ci95) != 2:
            raise ValueError(f"Verdict.ci95 must be a (lo, hi) pair, got {self.ci95!r}")

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON dict (NaN and inf become None): the claim's fields, then the verdict's."""
        return {
            **self.claim.to_dict(),
            "estimate": json_float(self.estimate),
            "ci95": json_safe([float(self.ci95[0]), float(self.ci95[1])]),
            "seeds": [int(s) for s in self.seeds],
            "n": int(self.n),
            "values": json_safe([float(v) for v in self.values]),
            "verdict": self.verdict,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """Inverse of :meth:`to_dict`."""
        claim = Claim(
            data["claim"],
            data["text"],
            data["source"],
            data["statistic"],
            int(data.get("direction", 1)),
            float(data.get("threshold", 0.0)),
        )
        lo, hi = data["ci95"]
        return cls(
            claim,
            number(data["estimate"]),
            (number(lo), number(hi)),
            tuple(int(s) for s in data["seeds"]),
            int(data["n"]),
            data["verdict"],
            data.get("note", ""),
            tuple(number(v) for v in data.get("values", ())),
        )

    def interval_text(self) -> str:
        """``estimate [lo, hi]`` in 3 significant digits (``n/a`` without an estimate)."""
        if not math.isfinite(self.estimate):
            return "n/a"
        lo, hi = self.ci95
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return f"{self.estimate:.3g} [no interval]"
        return f"{self.estimate:.3g} [{lo:.3g}, {hi:.3g}]"


def decide(claim: Claim, lo: float, hi: float) -> str:
    """The verdict word for a 95% interval ``[lo, hi]`` of the claim's statistic (REFERENCE §9).

    Examples:
        >>> c = Claim("c", "x is positive", "paper", "x")
        >>> decide(c, 0.1, 0.5), decide(c, -0.5, -0.1), decide(c, -0.1, 0.5)
        ('supported', 'contradicted', 'inconclusive')
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if lo > hi:
        raise ValueError(f"the interval must have lo <= hi, got [{lo}, {hi}]")
    signed = sorted((claim.direction * lo, claim.direction * hi))
    if signed[0] > claim.threshold:
        return "supported"
    if signed[1] < 0:
        return "contradicted"
    return "inconclusive"


def inconclusive(claim: Claim, reason: str, *, seeds: Iterable[int] = (), estimate: float = float("nan")) -> Verdict:
    """An inconclusive verdict with its reason (e.g. too few seeds, or the run did not reach the regime)."""
    seeds = tuple(int(s) for s in seeds)
    nan = float("nan")
    return Verdict(claim, float(estimate), (nan, nan), seeds, 0, "inconclusive", reason)


def verdict_from_interval(
    claim: Claim,
    estimate: float,
    ci95: tuple[float, float],
    *,
    seeds: Iterable[int],
    n: int,
    note: str,
    values: Sequence[float] = (),
) -> Verdict:
    """A verdict from an interval made elsewhere (a bootstrap, a regression); ``note`` must say how it was made."""
    if not isinstance(note, str) or not note.strip():
        raise ValueError("note must say how the interval was made (a non-empty string)")
    lo, hi = float(ci95[0]), float(ci95[1])
    word = decide(claim, lo, hi)
    return Verdict(claim, float(estimate), (lo, hi), tuple(int(s) for s in seeds), int(n), word, note, tuple(values))


def _by_seed(values: Mapping[int, float] | Sequence[float], name: str) -> dict[int, float]:
    if isinstance(values, Mapping):
        return {int(k): float(v) for k, v in values.items()}
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must map seed -> value (or be a sequence of values), got {type(values).__name__}")
    return {i: float(v) for i, v in enumerate(values)}


def verdict_from_values(
    claim: Claim, values: Mapping[int, float] | Sequence[float], *, note: str = "", min_seeds: int = 2
) -> Verdict:
    """The verdict on the mean of one value per seed, with its t-based 95% interval over seeds.

    Args:
        claim: the claim; its statistic is the per-seed value.
        values: ``{seed: value}`` (a plain sequence is taken as seeds 0, 1, …). Non-finite values are left out
            and counted in the note.
        note: added to the verdict's note.
        min_seeds: fewest finite values for an interval (default 2); fewer gives an inconclusive verdict.
    """
    from scipy import stats

    by_seed = _by_seed(values, "values")
    finite = {s: v for s, v in by_seed.items() if math.isfinite(v)}
    dropped = len(by_seed) - len(finite)
    parts = [note] if note else []
    if dropped:
        parts.append(f"{dropped} seed(s) gave no finite value and were left out")
    seeds, vals = tuple(finite), tuple(finite.values())
    n = len(vals)
    if n < max(2, min_seeds):
        mean = math.fsum(vals) / n if n else float("nan")
        reason = f"only {n} seed(s) with a value: an interval over seeds needs at least {max(2, min_seeds)}"
        return Verdict(claim, mean, (float("nan"),) * 2, seeds, n, "inconclusive", "; ".join([*parts, reason]), vals)
    mean = math.fsum(vals) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    parts.insert(0, f"t-interval over {n} seeds")
    lo, hi = mean - half, mean + half
    word = decide(claim, lo, hi)
    if word == "inconclusive":
        parts.append(_seeds_to_decide(mean, sd, n, claim.threshold if claim.direction * mean > 0 else 0.0))
    return Verdict(claim, mean, (lo, hi), seeds, n, word, "; ".join(parts), vals)


def verdict_from_correlations(
    claim: Claim,
    values: Mapping[int, float] | Sequence[float],
    *,
    points: int,
    note: str = "",
    min_seeds: int = 2,
) -> Verdict:
    """The verdict on one rank correlation per seed (Spearman's ρ over ``points`` pairs), with a Fisher-z interval.

    A correlation is bounded, so a t-interval of the raw values can leave [−1, 1] (three seeds at 0.99, 0.95 and
    0.6 give an upper end of 1.4). Instead the t-interval over seeds is taken of z = atanh(ρ) and mapped back with
    tanh, so both ends stay in (−1, 1); the estimate is tanh of the mean z (it lies inside the interval). Spearman's
    ρ over m points moves in steps of 12/(m(m²−1)); ρ = ±1 (atanh = ±∞) is counted a tenth of a step from the
    bound, ±(1 − 1.2/(m(m²−1))) (for m = 5: ±0.99). That fraction was chosen by a coverage simulation (bivariate
    normal pairs, m = 5 and 10, 3 and 5 seeds, population correlation 0 to 0.97): intervals cover the mean of the
    per-seed statistic in ≥ 90% of runs up to ρ = 0.9 (a half step under-covered at m = 5, ρ = 0.9: 0.86–0.88).

    Args:
        claim: the claim; its statistic is the per-seed correlation.
        values: ``{seed: ρ}`` (a plain sequence is taken as seeds 0, 1, …), each in [−1, 1]; non-finite values are
            left out and counted in the note.
        points: the number of pairs m behind each correlation (≥ 3).
        note: added to the verdict's note.
        min_seeds: fewest finite values for an interval (default 2).

    Examples:
        >>> c = Claim("falls", "y falls with k", "paper", "Spearman ρ of k with y", direction=-1)
        >>> v = verdict_from_correlations(c, {0: -1.0, 1: -1.0, 2: -0.9}, points=5)
        >>> v.verdict, -1 < v.ci95[0] < v.ci95[1] < 0
        ('supported', True)
    """
    if not isinstance(points, int) or isinstance(points, bool) or points < 3:
        raise ValueError(f"points must be an int >= 3 (pairs behind each correlation), got {points!r}")
    by_seed = _by_seed(values, "values")
    bad = {s: v for s, v in by_seed.items() if math.isfinite(v) and not -1.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"values must be correlations in [-1, 1], got {bad}")
    bound = 1.0 - 1.2 / (points * (points * points - 1))
    z = {s: math.atanh(max(-bound, min(bound, v))) if math.isfinite(v) else v for s, v in by_seed.items()}
    on_z = verdict_from_values(claim, z, min_seeds=min_seeds)
    finite = {s: by_seed[s] for s in on_z.seeds}
    parts = [f"Fisher z: t-interval of atanh ρ over {len(finite)} seed(s), mapped back with tanh"]
    parts += [p for p in on_z.note.split("; ") if p and not p.startswith("t-interval over")]
    if any(abs(v) == 1.0 for v in finite.values()):
        parts.append(f"ρ = ±1 counted as ±{bound:.4g} (a tenth of a Spearman step over {points} points)")
    if note:
        parts.insert(1, note)
    lo, hi = (math.tanh(e) if math.isfinite(e) else e for e in on_z.ci95)
    estimate = math.tanh(on_z.estimate) if math.isfinite(on_z.estimate) else on_z.estimate
    word = decide(claim, lo, hi) if on_z.n >= max(2, min_seeds) else "inconclusive"
    return Verdict(claim, estimate, (lo, hi), on_z.seeds, on_z.n, word, "; ".join(parts), tuple(finite.values()))


def _seeds_to_decide(mean: float, sd: float, n: int, threshold: float) -> str:
    """What number of seeds would make the interval exclude ``threshold`` (0 on the contradicted side), if the mean
    and spread stayed as observed."""
    from scipy import stats

    gap = abs(mean) - threshold
    if sd == 0 or gap <= 0 or gap < 0.05 * sd:
        return "the observed effect is about zero: more seeds would narrow the interval around it, not decide"
    import numpy as np

    m = np.arange(n + 1, 10_001)
    decides = np.flatnonzero(stats.t.ppf(0.975, m - 1) * sd / np.sqrt(m) < gap)
    if len(decides):
        return f"at the observed mean and spread, about {int(m[decides[0]])} seeds would decide"
    return "at the observed mean and spread, more than 10000 seeds would be needed"


def paired_verdict(
    claim: Claim,
    a: Mapping[int, float] | Sequence[float],
    b: Mapping[int, float] | Sequence[float],
    *,
    note: str = "",
    min_seeds: int = 2,
) -> Verdict:
    """The verdict on the mean difference a − b, paired by seed, with its t-based 95% interval over seeds.

    Only the seeds present (with finite values) in both ``a`` and ``b`` are used; the claim's statistic should
    read as ``something(a) − something(b)``.
    """
    a_by, b_by = _by_seed(a, "a"), _by_seed(b, "b")
    common = [s for s in a_by if s in b_by]
    unpaired = len(set(a_by) ^ set(b_by))
    diffs = {s: a_by[s] - b_by[s] for s in common}
    parts = ["paired by seed"]
    if note:
        parts.append(note)
    if unpaired:
        parts.append(f"{unpaired} seed(s) without a pair were left out")
    return verdict_from_values(claim, diffs, note="; ".join(parts), min_seeds=min_seeds)


def check_verdicts(study_name: str, claims: Sequence[Claim], verdicts: Sequence[Verdict]) -> list[Verdict]:
    """Check that ``verdicts`` give exactly one verdict per declared claim (in the claims' order) and return them.

    Raises:
        ValueError: a declared claim without a verdict, a verdict on an undeclared claim, or two on one claim.
    """
    verdicts = list(verdicts)
    for v in verdicts:
        if not isinstance(v, Verdict):
            raise TypeError(f"study {study_name!r}: verdicts() must return Verdict objects, got {type(v).__name__}")
    names = [v.claim.name for v in verdicts]
    declared = [c.name for c in claims]
    twice = sorted({n for n in names if names.count(n) > 1})
    unknown = [n for n in names if n not in declared]
    missing = [n for n in declared if n not in names]
    if twice or unknown or missing:
        problems = []
        if missing:
            problems.append(f"no verdict on declared claim(s) {missing} (return an inconclusive verdict with a reason)")
        if unknown:
            problems.append(f"verdict(s) on undeclared claim(s) {unknown} (add them to the study's claims)")
        if twice:
            problems.append(f"more than one verdict on {twice}")
        raise ValueError(f"study {study_name!r}: " + "; ".join(problems))
    order = {n: i for i, n in enumerate(declared)}
    return sorted(verdicts, key=lambda v: order[v.claim.name])


def write_verdicts(out: str | Path, verdicts: Sequence[Verdict]) -> Path:
    """Write ``out/verdicts.json`` (strict JSON, one entry per claim) atomically and return its path."""
    from isotorch.studies._checkpoint import write_text_atomic

    path = Path(out) / "verdicts.json"
    text = dumps([v.to_dict() for v in verdicts], indent=2) + "\n"
    write_text_atomic(path, text)
    return path


def read_verdicts(out: str | Path) -> list[Verdict] | None:
    """The verdicts stored in ``out/verdicts.json``, or None when the file does not exist."""
    path = Path(out) / "verdicts.json"
    if not path.exists():
        return None
    return [Verdict.from_dict(d) for d in json.loads(path.read_text())]


def verdict_table(verdicts: Sequence[Verdict], *, title: str = "verdicts on the claims this study tests"):
    """A ``rich`` table of the verdicts that reads at 80 columns: claim and statistic, verdict, estimate [95% CI],
    number of seeds (the sources and notes are in ``verdicts.json`` and the report)."""
    from rich.markup import escape
    from rich.table import Table

    styles = {"supported": "green", "contradicted": "red", "inconclusive": "yellow"}
    table = Table(title=title, show_lines=True)
    table.add_column("claim (statistic)", ratio=3, overflow="fold")
    table.add_column("verdict", no_wrap=True)
    table.add_column("estimate [95% CI]", overflow="fold", ratio=1)
    table.add_column("seeds", justify="right", no_wrap=True)
    for v in verdicts:
        table.add_row(
            f"{escape(v.claim.text)}\n[dim]{escape(v.claim.statistic)}[/dim]",
            f"[{styles[v.verdict]}]{v.verdict}[/{styles[v.verdict]}]",
            v.interval_text(),
            str(len(v.seeds)),
        )
    return table


def format_verdicts(verdicts: Sequence[Verdict], *, width: int = 80) -> str:
    """The verdict table as plain text of at most ``width`` columns (for logs and tests), notes underneath."""
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(verdict_table(verdicts))
    for v in verdicts:
        if v.note:
            console.print(f"{v.claim.name}: {v.note}", overflow="fold", markup=False, highlight=False)
    return console.export_text()
