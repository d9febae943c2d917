"""Study ``symmetry_order``: does basis alignment fall as the bottleneck's symmetry group grows? (issue 12, item 9)

The autoencoders of the ``quantisation`` study (x → Linear → tanh → … → Linear → **φ** → Linear → … → x̂) with a
bottleneck of n features, where φ is isotropic tanh within blocks of k features (``block:k``,
:class:`isotorch.nn.BlockIsotropicActivation`), swept over the block sizes k that divide n, from k = 1 (elementwise
tanh, group B_n of signed permutations) to k = n (isotropic tanh, O(n)). The bottleneck's group O(k)^{n/k} ⋊ S_{n/k}
grows continuously with k: its dimension n(k − 1)/2 runs from 0 to n(n − 1)/2. Every k of a seed starts from the same
weights and sees the same minibatches, with Adam at one shared rate ``lr`` (the quantisation study's: the regime of
saturated codes); with ``lrs`` set, each instead trains at the rate a per-seed sweep picks (reconstruction MSE of a
held-out 20% of the training set).

Measured on the trained bottleneck code z (up to ``probe_samples`` inputs), in the standard basis, with the fixed
statistics of :mod:`isotorch.probes` (REFERENCE §9):

- the signed, ε-free 4-fold alignment A (+ mass on the axes, − on the diagonals, 0 for any rotation-invariant law)
  and its Haar-random-basis null; the **basis privilege** |A − null mean|;
- the quantisation Q (angular concentration beyond a Gaussian of the same covariance, 0 for any Gaussian);
- the saturated fraction of the activation's tanh arguments (block norms) and the test reconstruction MSE.

**Thomson direction sets** (``thomson``, default K = 17, 24, 32, 48, 64 for n = 16): the bottleneck
φ(z) = Σ_k tanh(z·v_k)·v_k over K > n Thomson points v_k (:func:`isotorch.directions.thomson`, family
``direction:K``), scored in that direction set (its privileged set). This is a second axis, not a bigger group: a
generic K has a trivial exact group, and the special ones are the simplex (K = n + 1, S_{n+1}) and the cross-polytope
(K = 2n, ±e_i in a rotated frame: elementwise tanh again, B_n); "more directions" means closer to isotropic in
distribution (REFERENCE §2.2). Its claim is that alignment to the direction set falls as K grows.

Per seed, the Spearman rank correlation between k and the privilege (and between k and Q) summarises the trend
in one number; the claims' verdicts use those correlations over seeds (a t-interval of Fisher's z = atanh ρ, mapped
back, so it stays in [−1, 1]). The OLS slope against log₂ k is reported too.

**Units.** Every k and K of a seed is a unit of its own (``SymmetryOrder.configurations``); the per-seed trends are
computed once all of a seed's units have finished (``SymmetryOrder.combine``).
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
from isotorch.studies._figures import save_figure, subplots
from isotorch.studies._models import scale_hint
from isotorch.studies._registry import Study, register
from isotorch.studies._stats import Figure, Findings, number
from isotorch.studies._verdicts import Claim, inconclusive, verdict_from_correlations
from isotorch.studies.quantisation import (
    _check_data,
    _check_learning_rates,
    _code,
    _load,
    _lr_text,
    _privileged,
    _saturation,
    _scores,
    _training,
)

__all__ = ["SymmetryOrder", "SymmetryOrderConfig", "divisors", "trend"]


def divisors(n: int) -> tuple[int, ...]:
    """The block sizes k that divide n, ascending.

    Examples:
        >>> divisors(16)
        (1, 2, 4, 8, 16)
    """
    return tuple(k for k in range(1, n + 1) if n % k == 0)


def trend(k: list[int] | tuple[int, ...], values: list[float]) -> dict[str, float]:
    """Spearman's rank correlation of ``values`` with ``k`` and the OLS slope of ``values`` against log₂ k.

    NaN values are left out; fewer than three points give NaN.

    Examples:
        >>> t = trend([1, 2, 4, 8], [0.9, 0.5, 0.3, 0.1])
        >>> t["spearman"], round(t["slope"], 3)
        (-1.0, -0.26)
    """
    from scipy import stats

    pairs = [(kk, v) for kk, v in zip(k, values, strict=True) if v is not None and math.isfinite(v)]
    if len(pairs) < 3:
        return {"spearman": math.nan, "slope": math.nan}
    ks, vs = np.array([p[0] for p in pairs], dtype=float), np.array([p[1] for p in pairs], dtype=float)
    rho = stats.spearmanr(ks, vs).statistic if np.ptp(vs) > 0 else math.nan
    slope = stats.linregress(np.log2(ks), vs).slope
    return {"spearman": float(rho), "slope": float(slope)}


@dataclass(frozen=True)
class SymmetryOrderConfig:
    """Settings of the ``symmetry_order`` study (see the module docstring)."""

    block_sizes: tuple[int, ...] | None = None
    thomson: tuple[int, ...] = (17, 24, 32, 48, 64)
    dataset: str = "digits"
    data_root: str | None = None
    bottleneck: int = 16
    hidden: tuple[int, ...] = (64,)
    epochs: int = 30
    batch_size: int = 24
    lr: float = 1e-2
    lrs: tuple[float, ...] = ()
    sweep_epochs: int = 5
    probe_samples: int = 2000
    n_bootstrap: int = 200
    n_null: int = 19

    def __post_init__(self):
        if self.bottleneck < 2:
            raise ValueError(f"bottleneck must be an int ≥ 2, got {self.bottleneck!r}")
        if self.block_sizes is not None:
            if len(self.block_sizes) < 3 or len(set(self.block_sizes)) != len(self.block_sizes):
                raise ValueError(f"block_sizes must name at least 3 distinct sizes, got {self.block_sizes!r}")
            bad = [k for k in self.block_sizes if k < 1 or self.bottleneck % k]
            if bad:
                raise ValueError(f"block_sizes must divide bottleneck={self.bottleneck}, got {bad}")
        elif len(divisors(self.bottleneck)) < 3:
            raise ValueError(f"bottleneck={self.bottleneck} has fewer than 3 divisors: nothing to sweep")
        if self.thomson and (
            len(self.thomson) < 3
            or len(set(self.thomson)) != len(self.thomson)
            or any(not isinstance(k, int) or k <= self.bottleneck for k in self.thomson)
        ):
            raise ValueError(
                f"thomson must be empty or name at least 3 distinct numbers of directions K > bottleneck="
                f"{self.bottleneck}, got {self.thomson!r}"
            )
        _check_data(self)
        check_positive(self, ints=("epochs", "batch_size", "probe_samples", "n_bootstrap"))
        if self.n_null < 0:
            raise ValueError(f"n_null must be a non-negative int, got {self.n_null!r}")
        _check_learning_rates(self)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The swept block sizes, ascending (default: every divisor of ``bottleneck``)."""
        return tuple(sorted(self.block_sizes)) if self.block_sizes is not None else divisors(self.bottleneck)


def _runs(cfg: SymmetryOrderConfig) -> list[tuple[str, str]]:
    """(key, family) of every block size k and Thomson set K, in the order they are reported."""
    return [(f"k={k}", f"block:{k}") for k in cfg.sizes] + [(f"K={k}", f"direction:{k}") for k in cfg.thomson]


def _trends(cfg: SymmetryOrderConfig, finals: dict[str, Any]) -> dict[str, Any]:
    """A seed's Spearman correlations and slopes of privilege and Q against k (and K), from its per-k results."""
    out: dict[str, Any] = {}
    for metric in ("privilege", "quant"):
        t = trend(list(cfg.sizes), [finals[f"k={k}/{metric}"] for k in cfg.sizes])
        out[f"{metric}/spearman"] = t["spearman"]
        out[f"{metric}/slope"] = t["slope"]
        if cfg.thomson:
            ks = sorted(cfg.thomson)
            t = trend(ks, [finals[f"K={k}/{metric}"] for k in ks])
            out[f"thomson_{metric}/spearman"] = t["spearman"]
            out[f"thomson_{metric}/slope"] = t["slope"]
    return out


@register("symmetry_order")
class SymmetryOrder(Study):
    """Bottleneck block size k from 1 (elementwise) to n (isotropic): basis alignment against the group's size."""

    Config = SymmetryOrderConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "bottleneck": 4,
            "hidden": (16,),
            "epochs": 2,
            "batch_size": 64,
            "probe_samples": 400,
            "n_bootstrap": 20,
            "n_null": 5,
            "thomson": (5, 6, 8),
            "lrs": (3e-3, 3e-2),
            "sweep_epochs": 1,
        },
        # the quantisation study's paper scale (REFERENCE §6.1: MNIST, 16-d bottleneck, batch 24, 100 epochs)
        "paper": {
            "dataset": "mnist",
            "bottleneck": 16,
            "hidden": (256, 64),
            "epochs": 100,
            "batch_size": 24,
            "lr": 1e-3,
            "probe_samples": 5000,
            "n_bootstrap": 1000,
            "n_null": 39,
            "thomson": (17, 32, 64),
        },
    }
    claims = (
        Claim(
            "alignment-falls-with-group",
            "Basis alignment falls as the symmetry group of the bottleneck grows (block size k from 1 to n)",
            "Isotropic Deep Learning position paper (taxonomy by symmetry); issue 12 item 9",
            "per-seed Spearman correlation of k with the basis privilege |A − Haar-null mean|",
            direction=-1,
        ),
        Claim(
            "quantisation-falls-with-group",
            "Quantisation of the bottleneck code falls as its symmetry group grows",
            "Bird et al., arXiv 2507.12070 (anisotropic bottlenecks quantise); REFERENCE §6.1",
            "per-seed Spearman correlation of k with the quantisation Q",
            direction=-1,
        ),
        Claim(
            "direction-alignment-falls-with-K",
            "With more Thomson directions K the code is less organised by its direction set (closer to isotropic)",
            "REFERENCE §2.2 (derived); Bird et al. used K = 17, 32, 64 Thomson directions (arXiv 2507.12070)",
            "per-seed Spearman correlation of K with |A − Haar-null mean| measured in the K directions",
            direction=-1,
        ),
    )

    def configurations(self, config: SymmetryOrderConfig) -> list[str]:
        """Every block size k and Thomson set K trains on its own: a unit per seed and configuration."""
        return [key for key, _ in _runs(config)]

    def combine(self, config: SymmetryOrderConfig, seed: int, finals) -> dict[str, Any]:
        """The union of the configurations' results, plus the per-seed trends over k (and K)."""
        out = super().combine(config, seed, finals)
        out.update(_trends(config, out))
        return out

    def run(self, ctx) -> dict[str, Any]:
        cfg: SymmetryOrderConfig = ctx.config
        x_train, x_test = _load(cfg)
        x_train, x_test = x_train.to(ctx.device), x_test.to(ctx.device)
        probe = torch.cat([x_train, x_test])[: cfg.probe_samples]
        per_epoch = math.ceil(len(x_train) / cfg.batch_size)
        steps = cfg.epochs * per_epoch
        finals: dict[str, Any] = {}
        for key, variant in _runs(cfg):
            if ctx.configuration is not None and key != ctx.configuration:
                continue

            model, opt, step, lr = _training(ctx, cfg, variant, x_train, f"sweep/{key}")

            def evaluate(t, model=model):
                return {"epoch": t / per_epoch, "test_mse": nn.functional.mse_loss(model(x_test), x_test)}

            result = ctx.train(
                key, step, steps, state={"model": model, "opt": opt}, evaluate=evaluate, log_every=per_epoch
            )
            model.eval()
            with torch.no_grad():
                code = _code(model, probe).double()
            scores = _scores(code, _privileged(model, variant), ctx.seed, cfg.n_bootstrap, cfg.n_null)
            align, null = scores["align"], scores.get("align_null")
            privilege = abs(align - null) if null is not None and math.isfinite(align) else math.nan
            saturation = _saturation(model, variant, probe)
            ctx.log(steps, run=key, event="final", privilege=privilege, saturation=saturation, **scores)
            finals[f"{key}/test_mse"] = result.last["test_mse"]
            finals[f"{key}/lr"] = lr
            finals[f"{key}/align"] = align
            finals[f"{key}/align_null"] = null
            finals[f"{key}/privilege"] = privilege
            finals[f"{key}/quant"] = scores["quant"]
            finals[f"{key}/saturation"] = saturation
        if ctx.configuration is None:  # the whole seed in one call
            finals.update(_trends(cfg, finals))
        return finals

    # ------------------------------------------------------------------------------------------- over seeds
    def summarise(self, data) -> list[Findings]:
        cfg: SymmetryOrderConfig = data.config
        labels = {
            "privilege": "privilege |A − null|",
            "align": "alignment A (signed)",
            "quant": "quantisation Q",
            "saturation": "saturated fraction",
            "test_mse": "test MSE",
            "lr": "learning rate (sweep)",
        }
        rows = {}
        n = cfg.bottleneck
        for k in cfg.sizes:
            name = f"k={k} (group dim {n * (k - 1) // 2})"
            rows[name] = {
                label: [number(f.get(f"k={k}/{metric}")) for f in data.finals.values()]
                for metric, label in labels.items()
            }
        for k in sorted(cfg.thomson):
            rows[f"K={k} Thomson directions"] = {
                label: [number(f.get(f"K={k}/{metric}")) for f in data.finals.values()]
                for metric, label in labels.items()
            }
        trends = {
            labels[metric]: {
                "Spearman ρ with k": [number(f.get(f"{metric}/spearman")) for f in data.finals.values()],
                "slope per doubling of k": [number(f.get(f"{metric}/slope")) for f in data.finals.values()],
            }
            for metric in ("privilege", "quant")
        }
        for metric in ("privilege", "quant") if cfg.thomson else ():
            trends[f"{labels[metric]}, Thomson K"] = {
                "Spearman ρ with k": [number(f.get(f"thomson_{metric}/spearman")) for f in data.finals.values()],
                "slope per doubling of k": [number(f.get(f"thomson_{metric}/slope")) for f in data.finals.values()],
            }
        caption = (
            f"{cfg.dataset} autoencoders, hidden {list(cfg.hidden)}, {n}-d bottleneck of isotropic tanh in blocks of k "
            f"(k = 1: elementwise tanh; k = {n}: isotropic), {_lr_text(cfg)}, batch {cfg.batch_size}, "
            f"{cfg.epochs} epochs; scores of the code on {cfg.probe_samples} inputs (max), in the standard basis. "
            "Group dim: n(k − 1)/2, the dimension of O(k)^{n/k}. K Thomson directions: tanh over K > n directions, "
            "scored in those directions (the quantisation Q on a random n(n − 1)/2 of their planes). Mean ± 95% CI "
            "over seeds."
        )
        return [
            Findings.from_values("basis alignment and quantisation by block size", rows, caption=caption),
            Findings.from_values(
                "trend with the block size (and with K), per seed",
                trends,
                caption="Spearman rank correlation with k (or K) and OLS slope against log₂ k (or log₂ K), per seed; "
                "mean ± 95% CI.",
            ),
        ]

    def verdicts(self, data) -> list:
        cfg: SymmetryOrderConfig = data.config
        claims = {c.name: c for c in self.claims}
        if cfg.thomson:
            thomson = verdict_from_correlations(
                claims["direction-alignment-falls-with-K"],
                {s: number(f.get("thomson_privilege/spearman")) for s, f in data.finals.items()},
                points=len(cfg.thomson),
                note=f"K = {sorted(cfg.thomson)} Thomson directions in {cfg.bottleneck} dimensions, each set its own "
                "basis",
            )
        else:
            thomson = inconclusive(
                claims["direction-alignment-falls-with-K"], "the run swept no Thomson K (thomson=())", seeds=data.seeds
            )
        if len(cfg.sizes) < 3:
            return [inconclusive(c, "fewer than 3 block sizes: no trend") for c in self.claims[:2]] + [thomson]
        note = f"block sizes {list(cfg.sizes)} of a {cfg.bottleneck}-d bottleneck, standard basis; {_lr_text(cfg)}"
        hint = (
            "more seeds (--seeds 0,1,2,3,4,5) would decide at this scale; the paper preset (MNIST, 100 epochs, "
            "--set data_root=...) is the quantisation paper's setting"
        )
        verdicts = [
            verdict_from_correlations(
                claims["alignment-falls-with-group"],
                {s: number(f.get("privilege/spearman")) for s, f in data.finals.items()},
                points=len(cfg.sizes),
                note=note,
            ),
            verdict_from_correlations(
                claims["quantisation-falls-with-group"],
                {s: number(f.get("quant/spearman")) for s, f in data.finals.items()},
                points=len(cfg.sizes),
                note=note,
            ),
            thomson,
        ]
        return [scale_hint(v, hint) if v.n >= 2 else v for v in verdicts]

    def figures(self, data, out: Path) -> list[Figure]:
        figures: list[Figure] = []

        cfg: SymmetryOrderConfig = data.config
        series = [("k", np.array(cfg.sizes), "block size k (1: elementwise … n: isotropic)", "tab:blue")]
        if cfg.thomson:
            series.append(("K", np.array(sorted(cfg.thomson)), "K Thomson directions (scored in them)", "tab:orange"))
        fig, axes = subplots(len(series), 3, figsize=(13, 3.8 * len(series)), squeeze=False)
        panels = (("privilege", "basis privilege |A − null|"), ("quant", "quantisation Q"), ("test_mse", "test MSE"))
        for row_axes, (prefix, ks, xlabel, colour) in zip(axes, series, strict=True):
            for ax, (metric, label) in zip(row_axes, panels, strict=True):
                per_seed = np.array(
                    [[number(f.get(f"{prefix}={k}/{metric}")) for k in ks] for f in data.finals.values()]
                )
                for row in per_seed:
                    ax.plot(ks, row, color="0.6", lw=0.8, marker="o", ms=3)
                if len(per_seed):
                    ax.plot(ks, np.nanmean(per_seed, 0), color=colour, lw=2, marker="o", label="mean over seeds")
                if metric == "privilege":
                    nulls = np.array(
                        [[number(f.get(f"{prefix}={k}/align_null")) for k in ks] for f in data.finals.values()]
                    )
                    if len(nulls):
                        ax.plot(ks, np.abs(np.nanmean(nulls, 0)), "k:", lw=1, label="|null mean| (Haar bases)")
                ax.set_xscale("log", base=2)
                ax.set_xticks(ks, [str(k) for k in ks])
                ax.minorticks_off()
                ax.set_xlabel(xlabel)
                ax.set_ylabel(label)
                ax.grid(alpha=0.3)
            row_axes[0].legend(fontsize=8)
        thomson = (
            " Bottom row: the same against the number K of Thomson directions of a direction-set bottleneck, scored "
            "in its own directions (K = 2n is the cross-polytope: elementwise tanh in a rotated frame)."
            if cfg.thomson
            else ""
        )
        figures.append(
            save_figure(
                fig,
                out,
                "order_sweep.png",
                "Basis privilege |A − null mean| (left), quantisation Q (middle) and test reconstruction MSE (right) "
                "of the bottleneck code against the block size k of its isotropic-tanh blocks (log scale): grey one "
                "line per seed, coloured the mean; dotted: the alignment's Haar-random-basis null." + thomson,
            )
        )
        return figures
