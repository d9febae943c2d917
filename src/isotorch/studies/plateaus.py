"""Study ``plateaus``: loss plateaus, jumps and symmetry breaking against the initialisation scale (REFERENCE 6.4).

A student MLP (``depth`` linear layers, tanh or isotropic tanh between them, weights ~ N(0, scale²/fan_in), zero
biases) learns a teacher (rank-r linear, or r tanh units) by full-batch gradient descent (or Adam) from each scale
in ``scales``. Logged at log-spaced steps: train and test loss; for each hidden layer l, the singular values of the
stacked matrix Θ_l = [W_l | b_l | W_{l+1}ᵀ] (σ_k(Θ_l) measures how far the layer is from the states fixed by a
rotation of k hidden directions: the layer is O(n−k+1)-symmetric iff σ_k = 0), its numerical rank, and the minimum
pairwise neuron distance min_{i<j} ‖θ_i − θ_j‖/√2 (distance to the nearest permutation-symmetric state; via
:func:`isotorch.probes.neuron_distances`); the numerical rank of every weight matrix.

**Detector** (:func:`detect_plateaus`). On the curve (t_i, L_i), t ≥ 1, the slope g = −d log L / d log t is taken by
finite differences (3-point smoothed). A *jump* is a maximal run of points with g ≥ ``jump_slope`` (default 1) over
which the loss falls by at least ``min_drop`` (default 3×); its step is the argmax of g in the run. A *plateau* is a
maximal run with g < ``plateau_slope`` (default 0.1) spanning at least ``min_span`` (default 3×) in t; the one that
reaches the last step is the *final* plateau (converged or stuck), the others precede jumps.

**Symmetry-breaking events.** For each hidden layer and k = 1 … ``n_singular``, the first logged step at which
σ_k(Θ_l) ≥ ``threshold``·σ_k(Θ_l) at step 0 (default 3×; REFERENCE 4.5 suggests 10×, which init scale 0.1 never
reaches): a direction of the hidden layer leaves the neighbourhood of the symmetric (low-rank) state. A jump is
*matched* when an event of the first hidden layer lies within a factor ``match_window`` (default 2) of its step.
The weight rank at a jump is the numerical rank (τ = ``rank_tol``) of every weight matrix at the end of the jump.

**Escape step.** The first logged step at which the training loss is below half its value at step 0 (the end of
the first plateau; defined for every run, unlike the first detected jump).

**Claims and verdicts** (``Plateaus.claims``; one value per seed, paired by seed, t-interval over seeds):

- *plateaus lengthen as the init shrinks* (Saxe et al. 2014; position paper Fig. 2): log₁₀ escape step at the
  smaller scale of ``escape_pair`` minus at the larger, claimed > 0;
- *large inits generalise worse* (position paper Fig. 2): log₁₀ final test loss at the larger scale of
  ``generalisation_pair`` minus at the smaller, claimed > 0;
- *jumps coincide with symmetry-breaking events* (position paper; REFERENCE 6.4): the fraction of the jumps at the
  scales ≤ ``small_scale`` that are matched to an event of the first hidden layer, minus ½ (claimed > 0: most jumps
  are matched). A seed without a jump at those scales gives no value.

No learning-rate sweep: every run uses the same optimiser and learning rate, because the claims compare
initialisation scales of one family, not families.

Expectations (literature, qualitative): plateaus lengthen as the init shrinks; jumps coincide with events, each
adding one rank; large inits reach a low training loss but a worse test loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from isotorch.studies._config import check_positive
from isotorch.studies._data import teacher_student
from isotorch.studies._figures import cmap, save_figure, subplots
from isotorch.studies._models import SupervisedStep, mlp, scale_hint
from isotorch.studies._registry import Study, register
from isotorch.studies._stats import Figure, Findings, number
from isotorch.studies._verdicts import Claim, Verdict, inconclusive, paired_verdict, verdict_from_values

__all__ = ["Detection", "Plateaus", "PlateausConfig", "detect_plateaus"]


@dataclass(frozen=True)
class PlateausConfig:
    """Settings of the ``plateaus`` study (see the module docstring)."""

    scales: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    teacher: str = "linear"
    teacher_rank: int = 3
    dim: int = 16
    width: int = 32
    depth: int = 3
    family: str = "elementwise"
    optimiser: str = "gd"
    lr: float = 0.05
    steps: int = 20000
    n_train: int = 256
    n_test: int = 1024
    log_points: int = 120
    n_singular: int = 6
    threshold: float = 3.0
    rank_tol: float = 0.05
    jump_slope: float = 1.0
    plateau_slope: float = 0.1
    min_drop: float = 3.0
    min_span: float = 3.0
    match_window: float = 2.0
    escape_pair: tuple[float, float] = (0.01, 0.1)
    generalisation_pair: tuple[float, float] = (0.1, 100.0)
    small_scale: float = 0.1

    def __post_init__(self):
        if not self.scales or any(not (s > 0 and math.isfinite(s)) for s in self.scales):
            raise ValueError(f"scales must be positive finite floats, got {self.scales!r}")
        for name in ("escape_pair", "generalisation_pair"):
            pair = getattr(self, name)
            if len(pair) != 2 or not pair[0] < pair[1] or any(p not in self.scales for p in pair):
                raise ValueError(f"{name} must be two increasing scales from scales={self.scales!r}, got {pair!r}")
        check_positive(self, floats=("small_scale",))
        if self.teacher not in ("linear", "tanh"):
            raise ValueError(f"teacher must be 'linear' or 'tanh', got {self.teacher!r}")
        if self.optimiser not in ("gd", "adam"):
            raise ValueError(f"optimiser must be 'gd' or 'adam', got {self.optimiser!r}")
        if self.family not in ("elementwise", "isotropic"):
            raise ValueError(f"family must be 'elementwise' or 'isotropic', got {self.family!r}")
        check_positive(
            self, ints=("teacher_rank", "dim", "width", "steps", "n_train", "n_test", "log_points", "n_singular")
        )
        if self.depth < 2:
            raise ValueError(f"depth must be at least 2 (one hidden layer), got {self.depth}")
        if self.teacher_rank > self.dim:
            raise ValueError(f"teacher_rank must be at most dim={self.dim}, got {self.teacher_rank}")
        for name in ("lr", "threshold", "rank_tol", "jump_slope", "plateau_slope", "min_drop", "min_span"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Detection:
    """Plateaus and jumps of one loss curve (see :func:`detect_plateaus`).

    Attributes:
        jumps: per jump, ``{"step", "start", "end", "drop", "slope"}`` (steps are logged steps).
        plateaus: per plateau, ``{"start", "end", "loss", "final"}``.
    """

    jumps: tuple[dict[str, float], ...]
    plateaus: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"jumps": [dict(j) for j in self.jumps], "plateaus": [dict(p) for p in self.plateaus]}


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive index ranges of the maximal runs of True."""
    out, start = [], None
    for i, flag in enumerate(mask):
        if flag and start is None:
            start = i
        if not flag and start is not None:
            out.append((start, i - 1))
            start = None
    if start is not None:
        out.append((start, len(mask) - 1))
    return out


def loss_slope(steps: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """g = −d log L / d log t at each point (t ≥ 1), by finite differences, 3-point smoothed."""
    logt, logl = np.log(steps.astype(np.float64)), np.log(np.maximum(losses, 1e-300))
    g = -np.gradient(logl, logt) if len(steps) > 1 else np.zeros(len(steps))
    if len(g) >= 3:
        g = np.convolve(np.pad(g, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    return g


def detect_plateaus(
    steps,
    losses,
    *,
    jump_slope: float = 1.0,
    plateau_slope: float = 0.1,
    min_drop: float = 3.0,
    min_span: float = 3.0,
) -> Detection:
    """Detect plateaus and jumps on a loss curve from the slope g = −d log L / d log t (points with t ≥ 1).

    A jump is a maximal run with g ≥ ``jump_slope`` over which L falls by ≥ ``min_drop``×; a plateau a maximal run
    with g < ``plateau_slope`` spanning ≥ ``min_span``× in t (``final`` if it reaches the last point).

    Args:
        steps: logged steps (increasing). losses: the loss at each (positive).
        jump_slope, plateau_slope, min_drop, min_span: see above (defaults 1.0, 0.1, 3.0, 3.0).

    Examples:
        >>> t = np.unique(np.geomspace(1, 1e4, 200).astype(int))
        >>> loss = 1.0 / (1 + np.exp(8 * (np.log10(t) - 2))) + 1e-3   # one drop near t = 100
        >>> d = detect_plateaus(t, loss)
        >>> [round(math.log10(j["step"])) for j in d.jumps], [p["final"] for p in d.plateaus]
        ([2], [False, True])
    """
    steps = np.asarray(steps, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if steps.shape != losses.shape or steps.ndim != 1:
        raise ValueError(f"steps and losses must be 1-D of equal length, got {steps.shape} and {losses.shape}")
    keep = steps >= 1
    t, loss = steps[keep], losses[keep]
    if len(t) < 3:
        return Detection((), ())
    g = loss_slope(t, loss)
    jumps = []
    for a, b in _runs(g >= jump_slope):
        before, after = loss[max(a - 1, 0)], loss[min(b + 1, len(t) - 1)]
        drop = before / after if after > 0 else math.inf
        if drop >= min_drop:
            peak = a + int(np.argmax(g[a : b + 1]))
            jumps.append(
                {
                    "step": int(t[peak]),
                    "start": int(t[a]),
                    "end": int(t[b]),
                    "drop": float(drop),
                    "slope": float(g[peak]),
                }
            )
    plateaus = []
    for a, b in _runs(g < plateau_slope):
        if t[b] / t[a] >= min_span:
            plateaus.append(
                {
                    "start": int(t[a]),
                    "end": int(t[b]),
                    "loss": float(np.median(loss[a : b + 1])),
                    "final": b == len(t) - 1,
                }
            )
    return Detection(tuple(jumps), tuple(plateaus))


def _student(config: PlateausConfig, scale: float) -> nn.Sequential:
    def init(linear: nn.Module) -> None:
        assert isinstance(linear, nn.Linear)
        linear.weight.normal_(0.0, scale / math.sqrt(linear.in_features))
        linear.bias.zero_()

    model = mlp([config.dim, *[config.width] * (config.depth - 1), config.dim], init=init)
    if config.family != "elementwise":
        from isotorch import families

        model = families.convert(model, config.family)
    return model


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _measure(model: nn.Module, config: PlateausConfig) -> dict[str, Any]:
    """Singular values and ranks of the hidden layers' stacked matrices, neuron distances and weight ranks."""
    from isotorch.probes import neuron_distances

    linears = _linears(model)
    values: dict[str, Any] = {}
    for l in range(len(linears) - 1):
        w1, b1, w2 = linears[l].weight, linears[l].bias, linears[l + 1].weight
        nd = neuron_distances(w1, b1, w2, rtol=config.rank_tol)
        s = nd.singular_values
        values[f"sv{l}"] = list(s[: config.n_singular])
        values[f"theta_rank{l}"] = sum(v > config.rank_tol * s[0] for v in s) if s[0] > 0 else 0
        values[f"neuron_distance{l}"] = nd.min_distance
    for l, linear in enumerate(linears):
        s = torch.linalg.svdvals(linear.weight.detach().double())
        values[f"weight_rank{l}"] = int((s > config.rank_tol * s[0]).sum()) if float(s[0]) > 0 else 0
    return values


def _without_step(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "step"}


def _log_steps(steps: int, points: int) -> list[int]:
    return sorted({0, *np.unique(np.geomspace(1, steps, points).round().astype(int)).tolist()})


def _events(records: list[dict[str, Any]], layer: int, config: PlateausConfig) -> list[dict[str, Any]]:
    key = f"sv{layer}"
    rows = [r for r in records if key in r]
    if not rows:
        return []
    initial = rows[0][key]
    events = []
    for k, s0 in enumerate(initial):
        for r in rows[1:]:
            if r[key][k] >= config.threshold * s0:
                events.append({"layer": layer, "k": k + 1, "step": r["step"], "ratio": r[key][k] / s0})
                break
    return events


@register("plateaus")
class Plateaus(Study):
    """Teacher–student loss plateaus and jumps vs initialisation scale, with symmetry-breaking events."""

    Config = PlateausConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "scales": (0.1, 1.0),
            "dim": 6,
            "width": 8,
            "teacher_rank": 2,
            "steps": 300,
            "n_train": 64,
            "n_test": 64,
            "log_points": 30,
            "lr": 0.1,
            "escape_pair": (0.1, 1.0),
            "generalisation_pair": (0.1, 1.0),
        },
        # REFERENCE 6.4's recipe at its upper sizes: d = 50, width 100, 5×10⁴ full-batch steps
        "paper": {"dim": 50, "width": 100, "n_train": 1000, "n_test": 2000, "steps": 50_000, "log_points": 200},
    }
    claims = (
        Claim(
            "plateaus-lengthen-as-init-shrinks",
            "Loss plateaus lengthen as the initialisation scale shrinks",
            "Saxe et al. 2014 (escape time ∝ init^-(L-2)); position paper Fig. 2",
            "log10 escape step(smaller scale) - log10 escape step(larger scale) of escape_pair, paired by seed",
        ),
        Claim(
            "large-init-generalises-worse",
            "Large initialisations generalise worse (higher final test loss)",
            "position paper Fig. 2 (inits 10-100 leave the test loss at O(1))",
            "log10 test loss(larger scale) - log10 test loss(smaller scale) of generalisation_pair, paired by seed",
        ),
        Claim(
            "jumps-coincide-with-symmetry-breaking",
            "Loss jumps coincide with symmetry-breaking events of the hidden layer",
            "position paper (via REFERENCE 6.4: jumps coincide with Δ crossings)",
            "fraction of the jumps at scales <= small_scale matched to a layer-0 event, minus 1/2, per seed",
        ),
    )

    def run(self, ctx) -> dict[str, Any]:
        config: PlateausConfig = ctx.config
        data = teacher_student(
            config.n_train,
            config.n_test,
            dim=config.dim,
            teacher=config.teacher,
            rank=config.teacher_rank,
            generator=torch.Generator().manual_seed(10_000 + ctx.seed),
        )
        x, y, x_test, y_test = (t.to(ctx.device) for t in data)
        log_steps = _log_steps(config.steps, config.log_points)
        finals: dict[str, Any] = {}
        for scale in config.scales:
            model = _student(config, scale).to(ctx.device)
            opt: torch.optim.Optimizer
            if config.optimiser == "gd":
                opt = torch.optim.SGD(model.parameters(), lr=config.lr)
            else:
                opt = torch.optim.Adam(model.parameters(), lr=config.lr)

            step = SupervisedStep(ctx, model, opt, x, y, loss_fn=nn.functional.mse_loss)  # full batch

            def evaluate(t, model=model):
                return {
                    "train_loss": nn.functional.mse_loss(model(x), y),
                    "test_loss": nn.functional.mse_loss(model(x_test), y_test),
                    **_measure(model, config),
                }

            key = f"scale={scale:g}"
            ctx.train(
                key, step, config.steps, state={"model": model, "opt": opt}, evaluate=evaluate, log_steps=log_steps
            )
            ctx.save_model(key, model, x_test[:16])
            finals.update(self._analyse(ctx, key, config))
        return finals

    def _analyse(self, ctx, key: str, config: PlateausConfig) -> dict[str, Any]:
        """Detect plateaus, jumps and events of one training run from its records; log them and return finals."""
        records = [r for r in ctx.records(run=key) if "train_loss" in r]
        steps = np.array([r["step"] for r in records])
        losses = np.array([r["train_loss"] for r in records])
        found = detect_plateaus(
            steps,
            losses,
            jump_slope=config.jump_slope,
            plateau_slope=config.plateau_slope,
            min_drop=config.min_drop,
            min_span=config.min_span,
        )
        events = [e for layer in range(config.depth - 1) for e in _events(records, layer, config)]
        by_step = {r["step"]: r for r in records}
        matched = 0
        for jump in found.jumps:
            at_end = by_step[jump["end"]]
            ranks = [at_end[f"weight_rank{l}"] for l in range(config.depth)]
            near = [
                e
                for e in events
                if e["layer"] == 0 and 1 / config.match_window <= e["step"] / jump["step"] <= config.match_window
            ]
            matched += bool(near)
            ctx.log(jump["step"], run=key, event="jump", weight_ranks=ranks, matched=bool(near), **_without_step(jump))
        for plateau in found.plateaus:
            ctx.log(plateau["start"], run=key, event="plateau", **plateau)
        for event in events:
            ctx.log(event["step"], run=key, event="symmetry_break", **_without_step(event))
        last = records[-1]
        half = 0.5 * records[0]["train_loss"]
        escape = next((r["step"] for r in records if r["train_loss"] < half), float("nan"))
        n_plateaus = sum(not p["final"] for p in found.plateaus)
        return {
            f"{key}/train_loss": last["train_loss"],
            f"{key}/test_loss": last["test_loss"],
            f"{key}/jumps": len(found.jumps),
            f"{key}/plateaus": n_plateaus,
            f"{key}/first_jump": found.jumps[0]["step"] if found.jumps else float("nan"),
            f"{key}/escape_step": escape,
            f"{key}/matched": matched,
            f"{key}/events": sum(e["layer"] == 0 for e in events),
            f"{key}/matched_fraction": matched / len(found.jumps) if found.jumps else float("nan"),
            f"{key}/weight_rank0": last["weight_rank0"],
        }

    def verdicts(self, data) -> list[Verdict]:
        config: PlateausConfig = data.config

        def per_seed(scale: float, name: str) -> dict[int, float]:
            key = f"scale={scale:g}/{name}"
            return {s: number(f[key]) for s, f in data.finals.items() if key in f}

        def log10(values: dict[int, float]) -> dict[int, float]:
            return {s: math.log10(v) if v > 0 else float("nan") for s, v in values.items()}

        small, large = config.escape_pair
        escape = paired_verdict(
            self.claims[0],
            log10(per_seed(small, "escape_step")),
            log10(per_seed(large, "escape_step")),
            note=f"escape: first logged step with train loss < ½ its initial value; scales {small:g} vs "
            f"{large:g}; a run that never escaped within {config.steps} steps has no value (more steps decide)",
        )
        small, large = config.generalisation_pair
        general = paired_verdict(
            self.claims[1],
            log10(per_seed(large, "test_loss")),
            log10(per_seed(small, "test_loss")),
            note=f"final test loss after {config.steps} steps, scales {large:g} vs {small:g}",
        )
        fractions = {}
        for s in data.seeds:
            jumps = sum(per_seed(sc, "jumps").get(s, 0.0) for sc in config.scales if sc <= config.small_scale)
            matched = sum(per_seed(sc, "matched").get(s, 0.0) for sc in config.scales if sc <= config.small_scale)
            fractions[s] = matched / jumps - 0.5 if jumps else float("nan")
        if not any(math.isfinite(v) for v in fractions.values()):
            matching = inconclusive(
                self.claims[2],
                f"no jump was detected at the scales <= {config.small_scale:g} in any seed; longer training "
                "(more steps) or smaller scales would decide",
                seeds=data.seeds,
            )
        else:
            matching = verdict_from_values(
                self.claims[2],
                fractions,
                note=f"a jump is matched when a layer-0 event lies within {config.match_window:g}x of its step",
            )
        return [
            scale_hint(escape, "more seeds, or more steps so that every run escapes, would decide"),
            scale_hint(general, "more seeds, or more steps so that both scales converge, would decide"),
            scale_hint(matching, "more seeds, or more jumps (smaller scales, more steps), would decide"),
        ]

    def summarise(self, data) -> list[Findings]:
        config: PlateausConfig = data.config
        columns = {
            "train_loss": "final train loss",
            "test_loss": "final test loss",
            "jumps": "jumps",
            "plateaus": "plateaus before a jump",
            "first_jump": "first jump (step)",
            "escape_step": "escape step (loss < ½ initial)",
            "events": "symmetry-breaking events (layer 0)",
            "matched_fraction": "jumps matched to an event",
            "weight_rank0": f"final rank of W₀ (τ={config.rank_tol:g})",
        }
        values = {}
        for scale in config.scales:
            key = f"scale={scale:g}"
            values[key] = {
                label: [number(f[f"{key}/{name}"]) for f in data.finals.values() if f"{key}/{name}" in f]
                for name, label in columns.items()
            }
        caption = (
            f"{config.teacher} teacher of rank {config.teacher_rank}, student depth {config.depth} width "
            f"{config.width} ({config.family}), {config.optimiser} lr {config.lr:g}, {config.steps} full-batch steps. "
            f"A jump: −dlogL/dlogt ≥ {config.jump_slope:g} with a loss drop ≥ {config.min_drop:g}×; an event: σ_k of "
            f"[W₀ | b₀ | W₁ᵀ] grows ≥ {config.threshold:g}× its initial value; matched: an event within "
            f"{config.match_window:g}× of the jump's step. 'n/a' where no seed had a jump."
        )
        return [Findings.from_values("plateaus and jumps by initialisation scale", values, caption=caption)]

    def figures(self, data, out: Path) -> list[Figure]:
        figures: list[Figure] = []

        config: PlateausConfig = data.config
        seed = data.seeds[0]
        colours = cmap("viridis", len(config.scales))
        fig, (ax, ax_slope) = subplots(2, 1, figsize=(7, 7), sharex=True, height_ratios=(2, 1))
        for colour, scale in zip(colours, config.scales, strict=True):
            key = f"scale={scale:g}"
            for s in data.seeds:
                t, loss = data.series("train_loss", seed=s, run=key)
                keep = t >= 1
                ax.loglog(
                    t[keep],
                    loss[keep],
                    color=colour,
                    lw=1.5 if s == seed else 0.6,
                    alpha=1 if s == seed else 0.4,
                    label=f"init scale {scale:g}" if s == seed else None,
                )
                if s == seed:
                    tt, test = data.series("test_loss", seed=s, run=key)
                    ax.loglog(tt[tt >= 1], test[tt >= 1], color=colour, lw=1, ls="--", alpha=0.7)
                    ax_slope.semilogx(t[keep], loss_slope(t[keep], loss[keep]), color=colour, lw=1)
                for jump in data.select(seed=s, run=key, event="jump"):
                    y = np.interp(jump["step"], t[keep], loss[keep])
                    ax.plot(jump["step"], y, "o", mfc="none", color=colour, ms=7)
        ax_slope.axhline(config.jump_slope, color="k", lw=0.8, ls=":", label=f"jump threshold {config.jump_slope:g}")
        ax_slope.axhline(
            config.plateau_slope, color="grey", lw=0.8, ls=":", label=f"plateau threshold {config.plateau_slope:g}"
        )
        ax.set_ylabel("loss (solid: train, dashed: test)")
        ax.set_title(f"teacher–student ({config.teacher}, rank {config.teacher_rank}): loss by init scale")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
        ax_slope.set_xlabel("step")
        ax_slope.set_ylabel("−d log L / d log t")
        ax_slope.legend(fontsize=8)
        ax_slope.grid(alpha=0.3)
        figures.append(
            save_figure(
                fig,
                out,
                "loss_curves.png",
                f"Top: train (solid) and test (dashed) loss against step, log-log, one colour per init scale (seed "
                f"{seed} bold, other seeds thin); circles mark detected jumps. Bottom: the detector's slope "
                "−dlogL/dlogt with the jump and plateau thresholds.",
            )
        )

        n = len(config.scales)
        fig, axes = subplots(1, n, figsize=(3.2 * n, 3.4), sharey=True, squeeze=False)
        for ax, scale in zip(axes[0], config.scales, strict=True):
            key = f"scale={scale:g}"
            rows = [r for r in data.select(seed=seed, run=key) if "sv0" in r and r["step"] >= 1]
            first = next((r for r in data.select(seed=seed, run=key) if "sv0" in r), None)
            if first is None or not rows:
                continue
            t = np.array([r["step"] for r in rows])
            sv = np.array([r["sv0"] for r in rows]) / np.maximum(np.array(first["sv0"]), 1e-300)
            for k in range(sv.shape[1]):
                ax.loglog(t, sv[:, k], lw=1, label=f"σ{k + 1}")
            ax.axhline(config.threshold, color="k", ls=":", lw=0.8)
            for jump in data.select(seed=seed, run=key, event="jump"):
                ax.axvline(jump["step"], color="r", lw=0.8, alpha=0.6)
            ax.set_title(f"init scale {scale:g}", fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("σ_k([W₀|b₀|W₁ᵀ]) / its initial value")
        axes[0][0].legend(fontsize=7)
        figures.append(
            save_figure(
                fig,
                out,
                "symmetry_breaking.png",
                f"Seed {seed}: growth of the top singular values σ_k of the first hidden layer's stacked matrix "
                f"[W₀|b₀|W₁ᵀ] relative to initialisation (a symmetry-breaking event is the crossing of the dotted line "
                f"at {config.threshold:g}×); red lines mark detected jumps.",
            )
        )
        return figures
