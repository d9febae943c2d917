"""Study ``demo`` (the main job, ``isotorch demo``): a matched elementwise/isotropic pair on scikit-learn's digits.

Per seed, two MLPs Linear(64, w) → tanh → LayerNorm → Linear(w, w) → tanh → Linear(w, 10) are drawn (``a`` and
``b``, independent initialisations), and each is converted to the isotropic family (:func:`isotorch.convert`:
IsoTanh, ChiNorm), so that the elementwise and isotropic models of a seed share their architecture, their initial
weights and their minibatches, and differ only in their primitives. All four are trained with Adam, each family at
its own best learning rate among ``lrs``: a sweep at the run's budget, scored on a held-out part of the training
set (:func:`isotorch.studies._models.select_lr`; the chosen rates are reported). Measured on model ``a`` of each
family:

- test accuracy and loss, and the training loss on the whole training set;
- the hidden-layer parameter symmetry the primitives induce: a Haar-random rotation of the first hidden site,
  applied by the one parameter-symmetry engine (:func:`isotorch.params.symmetries` and
  :func:`isotorch.params.transform`, unchecked so that the elementwise model may change), and the relative change
  of the output; about 1e-7 in float32 for the isotropic model and order 1 for the elementwise one;
- the last hidden representation: its signed, ε-free basis alignment A in the standard basis (+ for mass on the
  axes, − on the diagonals, 0 for any rotation-invariant law) and, as the null, its mean in Haar-random bases
  (:func:`isotorch.probes.alignment_score`), its mean SRM curve and its effective rank;
- linear mode connectivity of ``a`` and ``b``: the test-loss barrier before and after aligning ``b`` to ``a`` by
  the family's parameter symmetry (:func:`isotorch.params.align`: permutations and sign flips for elementwise,
  rotations for isotropic).

The claims (one verdict each, paired by seed): a hidden rotation is a parameter symmetry of the isotropic model
and not of the elementwise one; elementwise tanh leaves more basis alignment in the representation than isotropic
tanh; aligning by the parameter symmetry lowers the barrier, for each family.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from isotorch import families, groups, params, probes
from isotorch.studies._data import load_digits
from isotorch.studies._figures import save_figure, subplots
from isotorch.studies._models import SupervisedStep, select_lr
from isotorch.studies._registry import Study, register
from isotorch.studies._stats import Figure, Findings, number
from isotorch.studies._verdicts import Claim, paired_verdict, verdict_from_values

__all__ = ["FAMILIES", "Demo", "DemoConfig", "base_model", "hidden_rotation_change"]

FAMILIES = ("elementwise", "isotropic")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo (every field is recorded in ``config.json`` and the report)."""

    epochs: int = 30
    width: int = 64
    batch_size: int = 64
    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    test_fraction: float = 0.2
    n_bootstrap: int = 200

    def __post_init__(self):
        for name in ("epochs", "width", "batch_size", "n_bootstrap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.lrs or any(not (0 < lr < 10) for lr in self.lrs) or len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"lrs must be distinct learning rates in (0, 10), got {self.lrs!r}")
        if not (0 < self.test_fraction < 1):
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")


def base_model(width: int) -> nn.Sequential:
    """The elementwise MLP of the demo (64 → width → width → 10), drawn from torch's global RNG."""
    return nn.Sequential(
        nn.Linear(64, width),
        nn.Tanh(),
        nn.LayerNorm(width),
        nn.Linear(width, width),
        nn.Tanh(),
        nn.Linear(width, 10),
    )


def hidden_rotation_change(model: nn.Module, x: torch.Tensor, *, generator: torch.Generator | None = None) -> float:
    """Relative output change ‖f'(x) − f(x)‖/‖f(x)‖ when the first hidden site of ``model`` is rotated by a
    Haar-random Q, applied by :func:`isotorch.params.transform` (unchecked) on the sites that
    :func:`isotorch.params.symmetries` finds. About 1e-7 in float32 when O(n) is the site's parameter symmetry.

    Examples:
        >>> torch.manual_seed(0) is not None
        True
        >>> iso = families.convert(base_model(8), "isotropic")
        >>> hidden_rotation_change(iso, torch.randn(16, 64)) < 1e-5
        True
        >>> hidden_rotation_change(base_model(8), torch.randn(16, 64)) > 1e-2
        True
    """
    model = model.eval()
    syms = params.symmetries(model, x)
    hidden = [s for s in syms.sites if s.kind == "hidden"]
    if not hidden:
        raise ValueError("model has no hidden site to rotate (params.symmetries found none)")
    site = hidden[0]
    q = groups.get("orthogonal").sample(site.size, generator=generator, dtype=torch.float64)
    element = params.Element(syms, {site.name: q.to(next(model.parameters()).dtype)})
    rotated = params.transform(model, element, check=False, check_group=False).eval()
    with torch.no_grad():
        a, b = model(x), rotated(x)
    return float((a - b).norm() / a.norm())


def _last_hidden(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The output of the last primitive before the classifier: the representation the probes measure."""
    model.eval()
    with torch.no_grad():
        return model[:-1](x)


def _representation(hidden: torch.Tensor, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Signed 4-fold basis alignment A of ``hidden`` in the standard basis with its Haar-random-basis null, the
    basis privilege |A − null mean|, the mean SRM curve and the effective rank."""
    score = probes.alignment_score(
        hidden, n_bootstrap=n_bootstrap, n_null=19, generator=torch.Generator().manual_seed(seed), nan_policy="omit"
    )
    null = score.null_mean if score.null_mean is not None else math.nan
    spot = probes.srm(hidden)
    return {
        "alignment": score.value,
        "alignment_null": null,
        "alignment_p": score.p_value if score.p_value is not None else math.nan,
        "privilege": abs(score.value - null),
        "effective_rank": probes.effective_rank(hidden - hidden.mean(0)),
        "srm": spot.mean.tolist(),
        "srm_baseline": spot.baseline,
    }


@register("demo")
class Demo(Study):
    """The main job: a matched elementwise/isotropic MLP pair on digits, its symmetries, probes and connectivity."""

    Config = DemoConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"epochs": 2, "width": 16, "n_bootstrap": 20, "lrs": (3e-3, 1e-2)},
    }
    claims = (
        Claim(
            "rotation-symmetry",
            "A rotation of a hidden layer is a parameter symmetry of the isotropic MLP and not of the elementwise one",
            "Isotropic Deep Learning position paper; REFERENCE §1.3",
            "log10 of the output change under a Haar rotation of the first hidden site: elementwise − isotropic",
            direction=1,
            threshold=3.0,
        ),
        Claim(
            "elementwise-more-aligned",
            "Elementwise tanh organises the learned representation by the neuron basis more than isotropic tanh",
            "Bird et al., Spotlight Resonance Method (arXiv 2505.13471); position paper",
            "|A − Haar-null mean| of the signed 4-fold alignment A of the last hidden layer: elementwise − isotropic",
        ),
        Claim(
            "lmc-elementwise",
            "Aligning two independently trained elementwise MLPs by their permutation symmetry lowers the barrier",
            "Ainsworth et al., Git Re-Basin (ICLR 2023)",
            "test-loss barrier before − after weight matching",
        ),
        Claim(
            "lmc-isotropic",
            "Aligning two independently trained isotropic MLPs by rotations lowers the barrier",
            "position paper (O(n) parameter symmetry); orthogonal Procrustes, REFERENCE §5.5",
            "test-loss barrier before − after orthogonal alignment",
        ),
    )

    def run(self, ctx) -> dict[str, Any]:
        cfg = ctx.config
        data = load_digits(test_fraction=cfg.test_fraction, generator=torch.Generator().manual_seed(0))
        x, y, x_test, y_test = data
        n = len(x)
        per_epoch = math.ceil(n / cfg.batch_size)
        steps = cfg.epochs * per_epoch
        log_steps = [e * per_epoch for e in range(cfg.epochs + 1)]
        bases = {"a": base_model(cfg.width), "b": base_model(cfg.width)}  # the runner seeded the global RNG
        finals: dict[str, Any] = {}
        trained: dict[str, dict[str, nn.Sequential]] = {}
        for family in FAMILIES:
            trained[family] = {}

            def build(family=family, base=bases["a"]):
                return copy.deepcopy(base) if family == "elementwise" else families.convert(base, family)

            lr = cfg.lrs[0]
            if len(cfg.lrs) > 1:  # each family at its own best learning rate, at the budget of the real run
                lr, sweep = select_lr(
                    ctx, f"{family}/sweep", build, cfg.lrs, x, y, steps=steps, batch_size=cfg.batch_size
                )
                ctx.log(0, run=f"{family}/sweep", lr=lr, val_loss={f"{k:g}": v for k, v in sweep.items()})
            finals[f"{family}/lr"] = lr
            for copy_name, base in bases.items():
                model = build(base=base)
                opt = torch.optim.Adam(model.parameters(), lr=lr)

                # the same batches for both families (keyed by the copy); the evaluation switches to eval mode
                step = SupervisedStep(ctx, model, opt, x, y, batch_size=cfg.batch_size, key=copy_name, train_mode=True)

                def evaluate(count, model=model):
                    model.eval()
                    logits = model(x_test)
                    return {
                        "epoch": count // per_epoch,
                        "test_accuracy": (logits.argmax(1) == y_test).float().mean(),
                        "test_loss": nn.functional.cross_entropy(logits, y_test),
                    }

                ctx.train(
                    f"{family}/{copy_name}",
                    step,
                    steps,
                    state={"model": model, "opt": opt},
                    evaluate=evaluate,
                    log_steps=log_steps,
                )
                trained[family][copy_name] = model.eval()

            model = trained[family]["a"]
            with torch.no_grad():
                logits = model(x_test)
                finals[f"{family}/test_accuracy"] = float((logits.argmax(1) == y_test).float().mean())
                finals[f"{family}/test_loss"] = float(nn.functional.cross_entropy(logits, y_test))
                finals[f"{family}/train_loss"] = float(nn.functional.cross_entropy(model(x), y))
            rotation = torch.Generator().manual_seed(ctx.seed)
            finals[f"{family}/rotation_change"] = hidden_rotation_change(model, x_test, generator=rotation)
            rep = _representation(_last_hidden(model, x_test), cfg.n_bootstrap, ctx.seed)
            ctx.log(0, run=f"{family}/srm", srm=rep.pop("srm"), baseline=rep.pop("srm_baseline"))
            finals.update({f"{family}/{k}": v for k, v in rep.items()})

            # a fixed site order, so the aligned barrier depends on the two models alone
            order = torch.Generator().manual_seed(0)
            aligned = params.align(model, trained[family]["b"], method="weights", x=x[:256], generator=order).model
            before = params.barrier(model, trained[family]["b"], nn.functional.cross_entropy, (x_test, y_test), 11)
            after = params.barrier(model, aligned, nn.functional.cross_entropy, (x_test, y_test), 11)
            ctx.log(
                0,
                run=f"{family}/lmc",
                alphas=list(before.alphas),
                loss_before=list(before.losses),
                loss_after=list(after.losses),
            )
            finals[f"{family}/barrier_before"] = before.barrier
            finals[f"{family}/barrier_after"] = after.barrier
            ctx.save_model(family, model, x_test[:64])
        return finals

    # ------------------------------------------------------------------------------------------- over seeds
    def _by_seed(self, data, key: str) -> dict[int, float]:
        return {s: number(f[key]) for s, f in data.finals.items() if f.get(key) is not None}

    def summarise(self, data) -> list[Findings]:
        rows = {}
        for family in FAMILIES:
            values = {}
            for key, label, scale in METRICS:
                values[label] = [v * scale for v in self._by_seed(data, f"{family}/{key}").values()]
            rows[family] = values
        return [
            Findings.from_values(
                "matched elementwise/isotropic MLPs on digits",
                rows,
                caption=(
                    "mean ± 95% CI over seeds. Output change: ‖f(x) − f'(x)‖/‖f(x)‖ after a Haar rotation of the "
                    "first hidden site (params.transform). Basis alignment A (isotorch.probes, signed 4-fold moment) "
                    "of the last hidden layer in the standard basis, and its mean in Haar-random bases (the null). "
                    "Barrier: max over λ of the "
                    "test loss on the linear path between two independently trained models, minus the endpoints' "
                    "mean, before and after aligning them by their parameter symmetry."
                ),
            )
        ]

    def verdicts(self, data) -> list:
        claims = {c.name: c for c in self.claims}
        log_change = {
            family: {s: math.log10(max(v, 1e-30)) for s, v in self._by_seed(data, f"{family}/rotation_change").items()}
            for family in FAMILIES
        }
        out = [
            paired_verdict(claims["rotation-symmetry"], log_change["elementwise"], log_change["isotropic"]),
            paired_verdict(
                claims["elementwise-more-aligned"],
                self._by_seed(data, "elementwise/privilege"),
                self._by_seed(data, "isotropic/privilege"),
            ),
        ]
        for family in FAMILIES:
            before = self._by_seed(data, f"{family}/barrier_before")
            after = self._by_seed(data, f"{family}/barrier_after")
            diffs = {s: before[s] - after[s] for s in before if s in after}
            out.append(verdict_from_values(claims[f"lmc-{family}"], diffs, note="one pair of models per seed"))
        return out

    def figures(self, data, out: Path) -> list[Figure]:
        figures: list[Figure] = []

        colours = {"elementwise": "tab:orange", "isotropic": "tab:blue"}

        fig, ax = subplots(figsize=(6, 4), dpi=120)
        for family in FAMILIES:
            curves = []
            for seed in data.seeds:
                rows = [r for r in data.select(seed=seed, run=f"{family}/a") if "test_accuracy" in r]
                curves.append([100 * r["test_accuracy"] for r in rows])
            curves = [c for c in curves if c]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            arr = np.array([c[:length] for c in curves])
            epochs = np.arange(length)
            lrs = sorted({f"{f[f'{family}/lr']:g}" for f in data.finals.values() if f.get(f"{family}/lr")})
            label = f"{family}, lr {'/'.join(lrs)} (mean; band: min–max of {len(arr)} seeds)"
            ax.plot(epochs, arr.mean(0), color=colours[family], label=label)
            ax.fill_between(epochs, arr.min(0), arr.max(0), color=colours[family], alpha=0.2)
        _finish(ax, "test accuracy by family", "epoch", "test accuracy (%)")
        figures.append(save_figure(fig, out, "accuracy.png", "test accuracy of model a per epoch, by family"))

        fig, ax = subplots(figsize=(6, 4), dpi=120)
        baseline = None
        for family in FAMILIES:
            curves = [r["srm"] for r in data.select(run=f"{family}/srm")]
            if curves:
                mean = np.mean(curves, axis=0)
                ax.plot(np.linspace(0, 2 * np.pi, len(mean), endpoint=False), mean, color=colours[family], label=family)
                baseline = data.select(run=f"{family}/srm")[0]["baseline"]
        if baseline is not None:
            ax.axhline(baseline, color="k", ls="--", lw=1, label="isotropic reference")
        ax.set_xticks(np.arange(5) * np.pi / 2, ["0", "π/2", "π", "3π/2", "2π"])
        _finish(ax, "SRM, last hidden layer", "spotlight angle θ", "fraction inside the spotlight")
        figures.append(
            save_figure(
                fig,
                out,
                "srm.png",
                "spotlight resonance of the last hidden layer in the standard basis (mean over planes and seeds): "
                "peaks at multiples of π/2 mean neuron-aligned features, a flat curve at the reference means isotropy",
            )
        )

        fig, ax = subplots(figsize=(6, 4), dpi=120)
        for family in FAMILIES:
            rows = data.select(run=f"{family}/lmc")
            if not rows:
                continue
            alphas = rows[0]["alphas"]
            ax.plot(alphas, np.mean([r["loss_before"] for r in rows], 0), ":", color=colours[family])
            ax.plot(alphas, np.mean([r["loss_after"] for r in rows], 0), "-", color=colours[family])
            ax.plot([], [], ":", color=colours[family], label=f"{family}, unaligned")
            ax.plot([], [], "-", color=colours[family], label=f"{family}, aligned")
        _finish(ax, "linear mode connectivity", "interpolation λ", "test loss (mean over seeds)")
        figures.append(
            save_figure(
                fig,
                out,
                "lmc.png",
                "test loss along the linear path between two independently trained models of a seed, before and "
                "after aligning them by their parameter symmetry (permutations for elementwise, rotations for "
                "isotropic); mean over seeds",
            )
        )
        return figures


def _finish(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


#: (key, label, scale) of the per-seed results in the findings table.
METRICS = (
    ("lr", "learning rate (swept)", 1.0),
    ("test_accuracy", "test accuracy (%)", 100.0),
    ("test_loss", "test loss", 1.0),
    ("train_loss", "train loss", 1.0),
    ("rotation_change", "output change under a hidden rotation", 1.0),
    ("alignment", "basis alignment A (+ axes, − diagonals)", 1.0),
    ("alignment_null", "A in Haar-random bases (null)", 1.0),
    ("effective_rank", "effective rank", 1.0),
    ("barrier_before", "barrier, unaligned", 1.0),
    ("barrier_after", "barrier, aligned", 1.0),
)
