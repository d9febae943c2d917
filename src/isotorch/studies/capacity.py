"""Study ``capacity``: accuracy, gradient flow and adaptive capacity of MLPs over width × depth (REFERENCE 6.2, 6.5).

For every width n in ``widths`` and depth D in ``depths`` (D hidden layers of width n), an elementwise MLP
``Linear → [LayerNorm] → Tanh → … → Linear`` is built with torch's default (Kaiming-uniform) initialisation and
converted with :func:`isotorch.convert` to the isotropic family (``Tanh → IsoTanh``, ``LayerNorm → ChiNorm``), so
each elementwise/isotropic pair starts from the *same* weights. The LayerNorm has no affine parameters, so the
pair has the same parameters. The four variants (``variants``): ``tanh``, ``tanh_ln`` (with LayerNorm), ``iso``
and ``iso_chi`` (with ChiNorm). Each is trained with AdamW (decoupled weight decay ``weight_decay``, so each step
shrinks the weights by lr·wd) on minibatches of ``batch_size`` for ``epochs`` epochs of the training set, at its own
best learning rate among ``lrs``: for every (variant, width, depth) and seed, a sweep of ``sweep_epochs`` epochs on
80% of the training set, scored by the cross-entropy on the other 20% (:func:`isotorch.studies._models.select_lr`;
never the test set). The chosen rates are reported. The default depths (2, 8, 16) reach the depths where the claim
is made (the 3rd-party numbers degrade from depth 4–6 on).

Measured:

- **test accuracy** at the end (evaluation mode);
- **gradient through depth**: ‖∂L/∂W_l‖_F of every weight matrix l = 0 … D on a fixed batch of ``grad_batch``
  training samples (cross-entropy only, training mode, on a copy so that no running statistic moves), at
  initialisation and at ``log_points`` points during training; summarised as log₁₀(‖∇W₀‖/‖∇W_D‖) (first layer
  over last; 0 means the gradient reaches the input layer undiminished);
- **adaptive capacity** at the end, averaged over layers: the numerical rank #{s_i > τ s₁} (τ = ``rank_tol``) and
  Roy–Vetterli effective rank of the hidden→hidden weight matrices (depth ≥ 2 only: the input and output matrices
  are capped by the input size and the 10 classes), and for every hidden layer with Θ = [W_l | b_l | W_{l+1}ᵀ]
  (n × (d_in + 1 + d_out)) the number of distinct neurons (single-linkage clusters at Δ_ij ≤ ``neuron_tol``·rms‖θ‖,
  :func:`isotorch.probes.neuron_distances`; the units of a permutation-symmetric site) and the rank of Θ at
  ``rank_tol`` (a rotation-symmetric site's analogue: O(n − k) symmetry ⇔ k non-negligible singular values).
  *Distinct units* is the cluster count for the elementwise variants and the Θ rank for the isotropic ones.

**Claims and verdicts** (``Capacity.claims``; at the widest width, seeds paired; D₀ = the smallest depth, D₁ the
largest):

- *isotropic nets degrade more slowly with depth* (3rd-party CIFAR-10 MLPs, REFERENCE 6.2), without normalisers:
  [acc(iso, D₁) − acc(iso, D₀)] − [acc(tanh, D₁) − acc(tanh, D₀)], claimed > 0;
- the same with normalisers (ChiNorm vs LayerNorm; the 3rd-party LN + tanh peaked higher than iso):
  [acc(iso_chi, D₁) − acc(iso_chi, D₀)] − [acc(tanh_ln, D₁) − acc(tanh_ln, D₀)], claimed > 0.

Expectations (literature, qualitative, REFERENCE 6.2/6.5): isotropic nets degrade more slowly with depth; the
number of distinct neurons and the weight rank saturate as width grows (space quantisation) under weight decay.

**Units.** Every (variant, width, depth) of a seed is a unit of its own (``Capacity.configurations``): its own
checkpoint and metrics file, a Ray task with ``--executor ray``.
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

from isotorch._util import check_choice
from isotorch.studies._data import study_split
from isotorch.studies._figures import ci_band, cmap, save_figure, subplots
from isotorch.studies._models import SupervisedStep, mlp, scale_hint, select_lr
from isotorch.studies._registry import Study, register
from isotorch.studies._stats import Figure, Findings, mean_ci, number
from isotorch.studies._verdicts import Claim, Verdict, inconclusive, paired_verdict

__all__ = ["VARIANTS", "Capacity", "CapacityConfig", "build_mlp", "capacity_measures", "gradient_norms"]

#: variant name → (family, with normaliser, display label)
VARIANTS: dict[str, tuple[str, bool, str]] = {
    "tanh": ("elementwise", False, "tanh"),
    "tanh_ln": ("elementwise", True, "tanh + LayerNorm"),
    "iso": ("isotropic", False, "iso-tanh"),
    "iso_chi": ("isotropic", True, "iso-tanh + ChiNorm"),
}
_DATASETS = ("digits", "mnist1d", "mnist", "fashion_mnist", "cifar10")


@dataclass(frozen=True)
class CapacityConfig:
    """Settings of the ``capacity`` study (see the module docstring)."""

    dataset: str = "digits"
    data_root: str = ""
    max_train: int = 0
    widths: tuple[int, ...] = (64,)
    depths: tuple[int, ...] = (2, 8, 16)
    variants: tuple[str, ...] = ("tanh", "tanh_ln", "iso", "iso_chi")
    epochs: int = 25
    batch_size: int = 64
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    sweep_epochs: int = 8
    weight_decay: float = 0.1
    grad_batch: int = 256
    log_points: int = 6
    rank_tol: float = 0.01
    neuron_tol: float = 0.05

    def __post_init__(self):
        check_choice(self.dataset, "dataset", tuple(_DATASETS))
        if self.dataset not in ("digits", "mnist1d") and not self.data_root:
            raise ValueError(f"data_root must name the folder holding the {self.dataset} files, got ''")
        for name in ("widths", "depths"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values) or len(set(values)) != len(values):
                raise ValueError(f"{name} must be distinct positive ints, got {values!r}")
        if (
            not self.variants
            or any(v not in VARIANTS for v in self.variants)
            or len(set(self.variants)) != len(self.variants)
        ):
            raise ValueError(f"variants must be distinct names from {', '.join(VARIANTS)}, got {self.variants!r}")
        for name in ("epochs", "batch_size", "grad_batch", "log_points", "sweep_epochs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.max_train < 0:
            raise ValueError(f"max_train must be 0 (all) or a positive int, got {self.max_train}")
        if (
            not self.lrs
            or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs)
            or len(set(self.lrs)) != len(self.lrs)
        ):
            raise ValueError(f"lrs must be distinct positive finite floats, got {self.lrs!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be non-negative and finite, got {self.weight_decay!r}")
        for name in ("rank_tol", "neuron_tol"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)!r}")


def build_mlp(d_in: int, width: int, depth: int, d_out: int, variant: str) -> nn.Sequential:
    """The MLP of ``variant`` with ``depth`` hidden layers of ``width`` (torch's default init; global RNG).

    The elementwise model is built first and, for an isotropic variant, converted with :func:`isotorch.convert`
    (weights kept), so the two families drawn from the same RNG state are matched pairs.

    Args:
        d_in, width, depth, d_out: input size, hidden width, number of hidden layers, number of classes.
        variant: one of :data:`VARIANTS`.

    Examples:
        >>> m = build_mlp(8, 4, 2, 3, "iso_chi")
        >>> [type(x).__name__ for x in m]
        ['Linear', 'ChiNorm', 'IsoTanh', 'Linear', 'ChiNorm', 'IsoTanh', 'Linear']
    """
    check_choice(variant, "variant", tuple(VARIANTS))
    family, normalise, _ = VARIANTS[variant]
    norm = (lambda w: nn.LayerNorm(w, elementwise_affine=False)) if normalise else None
    model = mlp([d_in, *[width] * depth, d_out], norm=norm)
    if family != "elementwise":
        from isotorch import families

        model = families.convert(model, family)
    return model


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """‖∂L/∂W_l‖_F of every ``nn.Linear`` weight for the cross-entropy L on (x, y), in training mode, on a copy.

    The copy keeps the model's gradients and running statistics (ChiNorm's estimate) untouched.

    Examples:
        >>> torch.manual_seed(0) and None
        >>> g = gradient_norms(build_mlp(8, 4, 2, 3, "tanh"), torch.randn(16, 8), torch.randint(0, 3, (16,)))
        >>> len(g), all(v > 0 for v in g)
        (3, True)
    """
    clone = copy.deepcopy(model).train()
    for p in clone.parameters():
        p.grad = None
    with torch.enable_grad():
        nn.functional.cross_entropy(clone(x), y).backward()
    norms = []
    for lin in _linears(clone):
        grad = lin.weight.grad
        assert grad is not None  # every layer is on the loss's path
        norms.append(float(grad.norm()))
    return norms


def capacity_measures(model: nn.Module, *, rank_tol: float = 0.01, neuron_tol: float = 0.05) -> dict[str, float]:
    """Weight ranks, distinct neurons and Θ ranks of an MLP's hidden layers (see the module docstring).

    Returns ``weight_rank`` and ``effective_rank`` (means over hidden→hidden weights; NaN if there are none),
    ``n_distinct`` (mean single-linkage cluster count of the hidden units at ``neuron_tol``) and ``theta_rank``
    (mean numerical rank of Θ_l = [W_l | b_l | W_{l+1}ᵀ] at ``rank_tol``), each over hidden layers.

    Args:
        model: an MLP whose ``nn.Linear`` layers, in order, are its weight matrices.
        rank_tol: τ of the numerical ranks (default 0.01). neuron_tol: clustering tolerance (default 0.05).

    Examples:
        >>> torch.manual_seed(0) and None
        >>> m = build_mlp(6, 5, 1, 3, "tanh")
        >>> with torch.no_grad():
        ...     m[0].weight[3], m[0].bias[3], m[2].weight[:, 3] = m[0].weight[0], m[0].bias[0], m[2].weight[:, 0]
        >>> capacity_measures(m)["n_distinct"]
        4.0
    """
    from isotorch.probes import effective_rank, neuron_distances, numerical_rank

    linears = _linears(model)
    ranks, eff, distinct, theta = [], [], [], []
    for lin in linears[1:-1]:
        w = lin.weight.detach().double()
        ranks.append(numerical_rank(w, tol=rank_tol))
        eff.append(effective_rank(w))
    for l in range(len(linears) - 1):
        w1, w2 = linears[l].weight.detach().double(), linears[l + 1].weight.detach().double()
        b1 = None if linears[l].bias is None else linears[l].bias.detach().double()
        nd = neuron_distances(w1, b1, w2, rtol=neuron_tol)
        distinct.append(nd.n_distinct)
        s = list(nd.singular_values)
        theta.append(sum(v > rank_tol * s[0] for v in s) if s and s[0] > 0 else 0)

    def mean(v: list) -> float:
        return float(np.mean(v)) if v else float("nan")

    return {
        "weight_rank": mean(ranks),
        "effective_rank": mean(eff),
        "n_distinct": mean(distinct),
        "theta_rank": mean(theta),
    }


def _load(config: CapacityConfig):
    x, y, x_test, y_test = study_split(config)
    if config.max_train:
        x, y = x[: config.max_train], y[: config.max_train]
    return x, y, x_test, y_test


def _key(variant: str, width: int, depth: int) -> str:
    return f"{variant} w={width} d={depth}"


@register("capacity")
class Capacity(Study):
    """Elementwise vs isotropic tanh MLPs over width × depth: accuracy, gradient through depth, adaptive capacity."""

    Config = CapacityConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "max_train": 400,
            "widths": (8, 16),
            "depths": (1, 2),
            "epochs": 3,
            "batch_size": 128,
            "grad_batch": 64,
            "log_points": 2,
            "lrs": (3e-3, 1e-2),
            "sweep_epochs": 1,
        },
        # REFERENCE 6.2, the author's protocol (AdamW lr 1e-3, wd 1e-3, batch 48, 50 epochs on CIFAR-10) at widths
        # and depths covering the 3rd-party table and beyond
        "paper": {
            "dataset": "cifar10",
            "widths": (24, 128),
            "depths": (1, 2, 4, 6, 8, 16),
            "epochs": 50,
            "batch_size": 48,
            "lrs": (3e-4, 1e-3, 3e-3),
            "sweep_epochs": 5,
            "weight_decay": 1e-3,
        },
    }
    claims = (
        Claim(
            "isotropic-degrades-slower-with-depth",
            "Isotropic tanh MLPs lose less test accuracy with depth than elementwise tanh MLPs (no normaliser)",
            "3rd-party CIFAR-10 MLPs (REFERENCE 6.2)",
            "[acc(iso, deepest) - acc(iso, shallowest)] - [acc(tanh, deepest) - acc(tanh, shallowest)], widest "
            "width, paired by seed",
        ),
        Claim(
            "isotropic-degrades-slower-with-depth-normalised",
            "With normalisers (ChiNorm vs LayerNorm), isotropic MLPs lose less test accuracy with depth",
            "3rd-party CIFAR-10 MLPs (REFERENCE 6.2)",
            "[acc(iso_chi, deepest) - acc(iso_chi, shallowest)] - [acc(tanh_ln, deepest) - acc(tanh_ln, "
            "shallowest)], widest width, paired by seed",
        ),
    )

    def configurations(self, config: CapacityConfig) -> list[str]:
        """Every (variant, width, depth) trains on its own: a unit per seed and configuration (a Ray task each)."""
        return [_key(v, w, d) for d in config.depths for w in config.widths for v in config.variants]

    def run(self, ctx) -> dict[str, Any]:
        config: CapacityConfig = ctx.config
        x, y, x_test, y_test = (t.to(ctx.device) for t in _load(config))
        n_classes = int(y.max()) + 1
        gx, gy = x[: config.grad_batch], y[: config.grad_batch]
        steps_per_epoch = math.ceil(len(x) / config.batch_size)
        steps = config.epochs * steps_per_epoch
        log_steps = sorted({0, steps, *np.unique(np.linspace(0, steps, config.log_points + 1).round().astype(int))})
        finals: dict[str, Any] = {}
        for depth in config.depths:
            for width in config.widths:
                for variant in config.variants:
                    key = _key(variant, width, depth)
                    if ctx.configuration is not None and key != ctx.configuration:
                        continue

                    def make(variant=variant, width=width, depth=depth):
                        # one draw of weights per (seed, width, depth), shared by every variant: matched pairs
                        with torch.random.fork_rng(devices=[]):
                            torch.manual_seed(1_000_003 * ctx.seed + 1_009 * width + depth)
                            return build_mlp(x.shape[1], width, depth, n_classes, variant).to(ctx.device)

                    scores: dict[float, float] = {}
                    lr = config.lrs[0]
                    if len(config.lrs) > 1:
                        lr, scores = select_lr(
                            ctx,
                            f"sweep/{key}",
                            make,
                            config.lrs,
                            x,
                            y,
                            steps=config.sweep_epochs * math.ceil(0.8 * len(x) / config.batch_size),
                            batch_size=config.batch_size,
                            weight_decay=config.weight_decay,
                        )
                    ctx.log(0, run=key, event="lr_sweep", lr=lr, scores={f"{k:g}": v for k, v in scores.items()})
                    model = make()
                    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)

                    step = SupervisedStep(ctx, model, opt, x, y, batch_size=config.batch_size, key="data")

                    def evaluate(count, model=model):
                        model.eval()
                        values: dict[str, Any] = {"test_acc": (model(x_test).argmax(1) == y_test).float().mean()}
                        model.train()
                        values["grad_norms"] = gradient_norms(model, gx, gy)
                        if count in (0, steps):
                            values.update(
                                capacity_measures(model, rank_tol=config.rank_tol, neuron_tol=config.neuron_tol)
                            )
                        return values

                    result = ctx.train(
                        key, step, steps, state={"model": model, "opt": opt}, evaluate=evaluate, log_steps=log_steps
                    )
                    if width == max(config.widths) and depth == max(config.depths):
                        ctx.save_model(key.replace(" ", "_"), model.eval(), x_test[:32])
                    finals.update(self._finals(ctx, key, variant, result.last))
                    finals[f"{key}/lr"] = lr
        return finals

    @staticmethod
    def _finals(ctx, key: str, variant: str, last: dict[str, Any]) -> dict[str, Any]:
        records = [r for r in ctx.records(run=key) if "grad_norms" in r]
        ratios = [math.log10(r["grad_norms"][0] / r["grad_norms"][-1]) for r in records]
        distinct = last["n_distinct"] if VARIANTS[variant][0] == "elementwise" else last["theta_rank"]
        return {
            f"{key}/test_acc": last["test_acc"],
            f"{key}/grad_ratio_init": ratios[0],
            f"{key}/grad_ratio_train": float(np.mean(ratios[1:])) if len(ratios) > 1 else float("nan"),
            f"{key}/weight_rank": last["weight_rank"],
            f"{key}/effective_rank": last["effective_rank"],
            f"{key}/n_distinct": last["n_distinct"],
            f"{key}/theta_rank": last["theta_rank"],
            f"{key}/distinct_units": distinct,
        }

    @staticmethod
    def _values(data, key: str, name: str) -> list[float]:
        return [number(f[f"{key}/{name}"]) for f in data.finals.values() if f"{key}/{name}" in f]

    def verdicts(self, data) -> list[Verdict]:
        config: CapacityConfig = data.config
        wide, shallow, deep = max(config.widths), min(config.depths), max(config.depths)

        def drop(variant: str) -> dict[int, float]:
            a, b = _key(variant, wide, deep) + "/test_acc", _key(variant, wide, shallow) + "/test_acc"
            return {s: number(f[a]) - number(f[b]) for s, f in data.finals.items() if a in f and b in f}

        note = (
            f"test accuracy at depth {deep} minus depth {shallow}, width {wide}, {config.epochs} epochs, each "
            "variant at its own swept learning rate"
        )
        out = []
        for claim, (iso, elem) in zip(self.claims, (("iso", "tanh"), ("iso_chi", "tanh_ln")), strict=True):
            missing = [v for v in (iso, elem) if v not in config.variants]
            if missing:
                out.append(
                    inconclusive(claim, f"needs the variant(s) {missing}, absent from this run", seeds=data.seeds)
                )
            elif shallow == deep:
                out.append(inconclusive(claim, "needs at least two depths", seeds=data.seeds))
            else:
                verdict = paired_verdict(claim, drop(iso), drop(elem), note=note)
                hint = f"more seeds, or depths beyond {deep} (where the drops are larger), would decide"
                out.append(scale_hint(verdict, hint))
        return out

    def summarise(self, data) -> list[Findings]:
        config: CapacityConfig = data.config
        setup = (
            f"{config.dataset}, AdamW at each variant's own best learning rate among "
            f"{', '.join(f'{lr:g}' for lr in config.lrs)} (per seed, width and depth: a {config.sweep_epochs}-epoch "
            f"sweep scored on a held-out 20% of the training set), weight decay {config.weight_decay:g}, batch "
            f"{config.batch_size}, {config.epochs} epochs; mean ± 95% CI over {len(data.seeds)} seed(s)."
        )
        chosen = {
            f"{VARIANTS[v][2]}, w={w}": {f"depth {d}": self._values(data, _key(v, w, d), "lr") for d in config.depths}
            for v in config.variants
            for w in config.widths
        }
        accuracy = {
            f"{VARIANTS[v][2]}, w={w}": {
                f"depth {d}": self._values(data, _key(v, w, d), "test_acc") for d in config.depths
            }
            for v in config.variants
            for w in config.widths
        }
        wide = max(config.widths)
        grads = {
            f"{VARIANTS[v][2]}, d={d}": {
                f"init (w={wide})": self._values(data, _key(v, wide, d), "grad_ratio_init"),
                f"training (w={wide})": self._values(data, _key(v, wide, d), "grad_ratio_train"),
                f"init (w={min(config.widths)})": self._values(data, _key(v, min(config.widths), d), "grad_ratio_init"),
            }
            for v in config.variants
            for d in config.depths
        }
        deep = max(config.depths)
        columns = {
            "weight_rank": f"weight rank (τ={config.rank_tol:g})",
            "effective_rank": "effective rank",
            "distinct_units": "distinct units",
            "n_distinct": f"neuron clusters (τ={config.neuron_tol:g})",
            "theta_rank": f"rank Θ (τ={config.rank_tol:g})",
            "test_acc": "test accuracy",
        }
        capacity = {
            f"{VARIANTS[v][2]}, w={w}": {label: self._values(data, _key(v, w, deep), n) for n, label in columns.items()}
            for v in config.variants
            for w in config.widths
        }
        return [
            Findings.from_values("test accuracy by variant, width and depth", accuracy, caption=setup),
            Findings.from_values(
                "learning rate chosen by the sweep",
                chosen,
                caption="The learning rate each variant was trained at (mean over seeds; each seed sweeps its own). "
                + setup,
            ),
            Findings.from_values(
                "gradient through depth: log₁₀(‖∇W₀‖ / ‖∇W_D‖)",
                grads,
                caption="First layer's over last layer's weight-gradient norm (cross-entropy, fixed batch of "
                f"{config.grad_batch}), at initialisation and averaged over the logged training points; negative: "
                "the gradient shrinks towards the input. " + setup,
            ),
            Findings.from_values(
                f"adaptive capacity against width (depth {deep}, end of training)",
                capacity,
                caption="Weight ranks: means over hidden→hidden matrices (n/a at depth 1). Distinct units: neuron "
                "clusters for the elementwise variants, rank of Θ = [W_l|b_l|W_{l+1}ᵀ] for the isotropic ones "
                "(both measured for all), means over hidden layers. " + setup,
            ),
        ]

    def figures(self, data, out: Path) -> list[Figure]:
        figures: list[Figure] = []

        config: CapacityConfig = data.config
        colours = dict(zip(VARIANTS, ("tab:blue", "tab:cyan", "tab:red", "tab:orange"), strict=True))

        def estimates(key_of, name, xs):
            est = [mean_ci(self._values(data, key_of(x), name)) for x in xs]
            mean = np.array([e.mean for e in est])
            ci = np.array([0.0 if math.isnan(e.ci95) else e.ci95 for e in est])
            return mean, ci

        n = len(config.widths)
        fig, axes = subplots(1, n, figsize=(3.2 * n, 3.4), sharey=True, squeeze=False)
        for ax, w in zip(axes[0], config.widths, strict=True):
            for v in config.variants:
                values = [self._values(data, _key(v, w, d), "test_acc") for d in config.depths]
                # accuracy is bounded: the t-interval's ends are clipped to [0, 1] (a 3-seed interval can pass them)
                ci_band(ax, config.depths, values, colour=colours[v], label=VARIANTS[v][2], clip=(0, 1), seeds=True)
            ax.set_title(f"width {w}", fontsize=9)
            ax.set_xlabel("depth (hidden layers)")
            ax.set_xticks(config.depths)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy")
        axes[0][0].legend(fontsize=7)
        figures.append(
            save_figure(
                fig,
                out,
                "accuracy_vs_depth.png",
                "Test accuracy against depth (hidden layers), one panel per width, one line per variant (the mean); "
                "dots: the seeds; error bars: 95% CI over seeds, clipped to [0, 1].",
            )
        )

        deep = max(config.depths)
        m = len(config.variants)
        fig, axes = subplots(1, m, figsize=(3.2 * m, 3.4), sharey=True, squeeze=False)
        widths_c = cmap("viridis", len(config.widths))
        for ax, v in zip(axes[0], config.variants, strict=True):
            for colour, w in zip(widths_c, config.widths, strict=True):
                rows = [r for r in data.select(run=_key(v, w, deep)) if "grad_norms" in r]
                init = np.array([r["grad_norms"] for r in rows if r["step"] == 0])
                later = np.array([r["grad_norms"] for r in rows if r["step"] > 0])
                layers = np.arange(deep + 1)
                if len(init):
                    ax.semilogy(layers, np.exp(np.log(init).mean(0)), "o-", color=colour, label=f"w={w} at init")
                if len(later):
                    ax.semilogy(
                        layers,
                        np.exp(np.log(later).mean(0)),
                        "s--",
                        color=colour,
                        alpha=0.7,
                        lw=1,
                        label=f"w={w} during training",
                    )
            ax.set_title(VARIANTS[v][2], fontsize=9)
            ax.set_xlabel("layer l (0 = input layer)")
            ax.set_xticks(np.arange(0, deep + 1, max(1, math.ceil((deep + 1) / 9))))
            ax.grid(alpha=0.3, which="both")
        axes[0][0].set_ylabel("‖∂L/∂W_l‖_F")
        axes[0][0].legend(fontsize=7)
        figures.append(
            save_figure(
                fig,
                out,
                "gradient_norms.png",
                f"Depth {deep}: weight-gradient norm of each layer (log scale; geometric mean over seeds), one panel "
                "per variant, one colour per width; circles: at initialisation, squares (dashed): during training "
                "(geometric mean over the logged points).",
            )
        )

        panels = [
            ("weight_rank", f"weight rank (τ={config.rank_tol:g})"),
            ("effective_rank", "effective rank"),
            ("distinct_units", "distinct units"),
        ]
        # against width (at the deepest depth) when several widths ran; with one width, against depth instead (a
        # single point per variant would show nothing)
        by_width = len(config.widths) > 1
        width = config.widths[0]
        xs = config.widths if by_width else config.depths
        fig, axes = subplots(1, 3, figsize=(10, 3.4), squeeze=False)
        for ax, (name, label) in zip(axes[0], panels, strict=True):
            for v in config.variants:
                if by_width:
                    mean, ci = estimates(lambda w, v=v: _key(v, w, deep), name, xs)
                else:
                    mean, ci = estimates(lambda d, v=v: _key(v, width, d), name, xs)
                if np.isfinite(mean).any():
                    ax.errorbar(xs, mean, yerr=ci, marker="o", capsize=3, color=colours[v], label=VARIANTS[v][2])
            if by_width:
                ax.plot(xs, xs, "k:", lw=0.8, label="= width")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log", base=2)
                ax.set_xlabel("width")
            else:
                ax.axhline(width, color="k", ls=":", lw=0.8, label=f"= width ({width})")
                ax.set_xticks(xs)
                ax.set_xlabel("depth (hidden layers)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3, which="both")
        axes[0][0].legend(fontsize=7)
        if by_width:
            capacity_caption = (
                f"Depth {deep}, end of training: numerical and effective rank of the hidden→hidden weights, and "
                "distinct units (neuron clusters for elementwise variants, rank of [W_l|b_l|W_{l+1}ᵀ] for isotropic "
                "ones) against width (log-log; dotted: equal to width). Saturation = the curve flattening below the "
                "dotted line. Error bars: 95% CI over seeds."
            )
        else:
            capacity_caption = (
                f"Width {width} (the run has one width), end of training: numerical and effective rank of the "
                "hidden→hidden weights (mean over layers), and distinct units (neuron clusters for elementwise "
                "variants, rank of [W_l|b_l|W_{l+1}ᵀ] for isotropic ones) against depth; dotted: the width. Run "
                "several widths (--set widths=16,32,64) to see whether they saturate with width. Error bars: 95% CI "
                "over seeds."
            )
        figures.append(save_figure(fig, out, "capacity_vs_width.png", capacity_caption))
        return figures
