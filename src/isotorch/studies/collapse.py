"""Study ``collapse``: neural collapse layer by layer, with and without syre (REFERENCE 6.3, 4.4, 4.3, 5.8).

A classifier (an MLP of ``depth`` hidden layers of ``width`` tanh units on digits by default; a small CNN for the
MNIST/CIFAR files) is trained with AdamW (weight decay γ = ``weight_decay``) for ``epochs`` epochs, well past zero
training error, once per variant:

- ``elementwise``: tanh; plain weight decay γ‖W‖² (towards 0).
- ``isotropic``: the same network converted with ``isotorch.convert(model, "isotropic")`` (IsoTanh).
- ``elementwise+syre`` / ``isotropic+syre``: the same network under :func:`isotorch.params.syre` (kind
  ``"offset"``, σ₀ = ``syre_sigma0``), so that the same decoupled weight decay is γ‖W − θ₀‖², towards a frozen
  random point θ₀ (the loss loses its permutation/sign/rotation symmetries).

At log-spaced epochs, NC1 = Tr(Σ_W Σ_B⁺)/C of every hidden layer's training features (:func:`neural_collapse`;
convolutional features are averaged over space) is logged, with NC2 (simplex-ETF error of the class means) and
NC3/NC4 for the last hidden layer against the classifier; the training error is logged every epoch, and the first
epoch at which it reaches 0 is recorded. At the end: the rank profile (:func:`rank_profile`, numerical rank with
τ = ``rank_tol`` and effective rank of the centred features) through depth on held-out inputs.

Strength of syre. The defaults are σ₀ = 1 (the offset scale κ = 1 of the 3rd-party reference implementation,
REFERENCE 5.8; the paper's σ₀ is unverified) and γ = 1 for both variants, so that lr·γ·steps ≫ 1: the decay reaches
its fixed point (0, or θ₀) during training and the regulariser, not the initialisation, decides where the weights
end. At the old defaults (σ₀ = 0.1, γ = 0.1) the two variants were indistinguishable. The offset's scale is absolute
(not divided by √fan_in), as in the reference, so a tanh net under syre is pulled towards a point whose
pre-activations are O(√width): its test error is reported and tested as a claim of its own.

**Claims and verdicts** (``Collapse.claims``; the last hidden layer's NC1 of the training features at the end,
seeds paired):

- *syre prevents neural collapse* (Ziyin et al. 2025, syre; REFERENCE 6.3): log₁₀ NC1(elementwise+syre) −
  log₁₀ NC1(elementwise), claimed > 0;
- *NC1 keeps falling in the terminal phase* (Papyan et al. 2020): for plain training, log₁₀ NC1 at the end − log₁₀
  NC1 at the first logged epoch with zero training error, claimed < 0 (no value for a seed that never reached zero
  training error);
- *collapse is strongest in the last layer* (REFERENCE 6.3: NC1 → 0 in the last layers): for plain training,
  log₁₀ NC1(last hidden layer) − log₁₀ NC1(first hidden layer), claimed < 0;
- *syre costs at most 2 points of test error* (syre is presented as removing symmetries without hurting the
  task): 0.02 − (test error(syre) − test error(plain)), claimed > 0.

Both variants use the same optimiser, learning rate and γ (a regulariser is compared, not a family), so no
learning-rate sweep is made.

Expectation (literature, qualitative; never a target): in plain training NC1 falls steadily on a log scale and
reaches ~0 in the last layers; with syre it does not.

**Units.** Every variant of a seed is a unit of its own (``Collapse.configurations``): its own checkpoint and
metrics file, a Ray task with ``--executor ray``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from isotorch._util import check_choice
from isotorch.studies._config import check_positive
from isotorch.studies._data import study_split
from isotorch.studies._figures import cmap, save_figure, subplots
from isotorch.studies._models import SupervisedStep, layer_features, mlp, scale_hint, unparametrised
from isotorch.studies._registry import Study, register
from isotorch.studies._stats import Figure, Findings, number
from isotorch.studies._verdicts import Claim, Verdict, inconclusive, paired_verdict, verdict_from_values

__all__ = ["Collapse", "CollapseConfig", "build_classifier", "layer_features", "unparametrised"]

VARIANTS = ("elementwise", "isotropic", "elementwise+syre", "isotropic+syre")
DATASETS = ("digits", "mnist1d", "mnist", "fashion_mnist", "cifar10")
IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10")


@dataclass(frozen=True)
class CollapseConfig:
    """Settings of the ``collapse`` study (see the module docstring)."""

    variants: tuple[str, ...] = ("elementwise", "elementwise+syre")
    dataset: str = "digits"
    data_root: str = ""
    n_train: int = 0
    model: str = "mlp"
    width: int = 64
    depth: int = 4
    epochs: int = 200
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1.0
    syre_sigma0: float = 1.0
    log_points: int = 14
    probe_samples: int = 2000
    rank_tol: float = 1e-3

    def __post_init__(self):
        if not self.variants or any(v not in VARIANTS for v in self.variants):
            raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {self.variants!r}")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must not repeat, got {self.variants!r}")
        check_choice(self.dataset, "dataset", tuple(DATASETS))
        if self.model not in ("mlp", "cnn"):
            raise ValueError(f"model must be 'mlp' or 'cnn', got {self.model!r}")
        if self.model == "cnn" and self.dataset not in IMAGE_DATASETS:
            raise ValueError(f"model='cnn' needs an image dataset {IMAGE_DATASETS}, got dataset={self.dataset!r}")
        if self.dataset in IMAGE_DATASETS and not self.data_root:
            raise ValueError(f"data_root must name the folder holding the {self.dataset} files, got ''")
        check_positive(self, ints=("width", "depth", "epochs", "batch_size", "log_points", "probe_samples"))
        if self.n_train < 0:
            raise ValueError(f"n_train must be ≥ 0 (0: the whole training set), got {self.n_train}")
        check_positive(self, floats=("lr", "syre_sigma0", "rank_tol"))
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a finite float ≥ 0, got {self.weight_decay!r}")


def build_classifier(
    input_shape: tuple[int, ...], num_classes: int, *, model: str = "mlp", width: int = 64, depth: int = 4
) -> tuple[nn.Sequential, list[str]]:
    """A tanh classifier and the names of its hidden layers' outputs (the activations), in depth order.

    ``"mlp"``: flatten, then ``depth`` × (Linear(width), Tanh), then Linear(num_classes). ``"cnn"``: two blocks of
    Conv3×3 → Tanh → AvgPool2 (``width``/2 and ``width`` channels), flatten, ``depth − 2`` (at least 1) ×
    (Linear(width), Tanh), Linear(num_classes).

    Examples:
        >>> net, names = build_classifier((64,), 10, width=8, depth=2)
        >>> net(torch.randn(3, 64)).shape, names
        (torch.Size([3, 10]), ['2', '4'])
    """
    layers: list[nn.Module] = [nn.Flatten()]
    if model == "mlp":
        features = int(np.prod(input_shape))
        fc = depth
    else:
        channels, height, _ = input_shape
        half = max(width // 2, 1)
        layers = [
            nn.Conv2d(channels, half, 3, padding=1),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(half, width, 3, padding=1),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Flatten(),
        ]
        features = width * (height // 4) * (input_shape[2] // 4)
        fc = max(depth - 2, 1)
    net = nn.Sequential(*layers, *mlp([features, *[width] * fc, num_classes]))
    names = [name for name, m in net.named_children() if isinstance(m, nn.Tanh)]
    return net, names


def _log_epochs(epochs: int, points: int) -> list[int]:
    return sorted({0, *np.unique(np.geomspace(1, epochs, points).round().astype(int)).tolist()})


@register("collapse")
class Collapse(Study):
    """Neural collapse (NC1–NC4) per layer and rank through depth, with and without syre."""

    Config = CollapseConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"width": 16, "depth": 2, "epochs": 6, "batch_size": 256, "log_points": 4, "probe_samples": 300},
        # REFERENCE 6.3: a CNN on CIFAR-10 trained far past zero training error (Papyan et al.: 350 epochs)
        "paper": {
            "dataset": "cifar10",
            "model": "cnn",
            "width": 128,
            "depth": 4,
            "epochs": 350,
            "log_points": 20,
            "probe_samples": 5000,
        },
    }
    claims = (
        Claim(
            "syre-prevents-collapse",
            "syre prevents neural collapse of the last hidden layer",
            "Ziyin et al. 2025 (syre), via REFERENCE 6.3",
            "log10 NC1(last layer, elementwise+syre) - log10 NC1(last layer, elementwise), paired by seed",
        ),
        Claim(
            "nc1-falls-in-terminal-phase",
            "In plain training NC1 keeps falling after zero training error (terminal phase)",
            "Papyan et al. 2020",
            "log10 NC1(last layer) at the end - at the first logged epoch with zero train error (elementwise)",
            direction=-1,
        ),
        Claim(
            "collapse-strongest-in-last-layer",
            "In plain training NC1 is lower in the last hidden layer than in the first",
            "REFERENCE 6.3 (NC1 -> 0 in the last layers); Papyan et al. 2020",
            "log10 NC1(last hidden layer) - log10 NC1(first hidden layer), elementwise, per seed",
            direction=-1,
        ),
        Claim(
            "syre-keeps-test-error",
            "syre costs at most 2 points of test error",
            "Ziyin et al. 2025 (syre removes symmetries as a drop-in regulariser)",
            "0.02 - (test error(elementwise+syre) - test error(elementwise)), paired by seed",
        ),
    )

    def configurations(self, config: CollapseConfig) -> list[str]:
        """Every variant starts from its own reseeded weights: a unit per seed and variant (a Ray task each)."""
        return list(config.variants)

    def run(self, ctx) -> dict[str, Any]:
        config: CollapseConfig = ctx.config
        split = study_split(config, flatten=config.model == "mlp")
        x, y, x_test, y_test = split
        if config.n_train:
            x, y = x[: config.n_train], y[: config.n_train]
        x, y, x_test, y_test = (t.to(ctx.device) for t in (x, y, x_test, y_test))
        num_classes = int(y.max()) + 1
        probe = torch.arange(min(len(x), config.probe_samples), device=x.device)
        per_epoch = math.ceil(len(x) / config.batch_size)
        nc_epochs = set(_log_epochs(config.epochs, config.log_points))
        finals: dict[str, Any] = {}
        for variant in config.variants:
            if ctx.configuration is not None and variant != ctx.configuration:
                continue
            family = variant.split("+")[0]
            torch.manual_seed(ctx.seed)  # the same initial weights for every variant of a seed
            net: nn.Module
            net, names = build_classifier(
                tuple(x.shape[1:]), num_classes, model=config.model, width=config.width, depth=config.depth
            )
            if family == "isotropic":
                from isotorch import convert

                net = convert(net, "isotropic")
            if variant.endswith("+syre"):
                from isotorch.params import syre

                offsets = torch.Generator().manual_seed(50_000 + ctx.seed)
                net = syre(net, config.syre_sigma0, "offset", generator=offsets)
            net = net.to(ctx.device)
            assert isinstance(net, nn.Sequential)  # convert and syre keep the container
            head = net[len(net) - 1]
            opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)

            step = SupervisedStep(ctx, net, opt, x, y, batch_size=config.batch_size, key=variant)

            def evaluate(t, net=net, names=names, head=head):
                epoch = t // per_epoch
                out = net(x)
                values: dict[str, Any] = {
                    "epoch": epoch,
                    "train_loss": nn.functional.cross_entropy(out, y),
                    "train_error": (out.argmax(1) != y).float().mean(),
                    "test_error": (net(x_test).argmax(1) != y_test).float().mean(),
                }
                if epoch in nc_epochs:
                    values.update(self._collapse(net, names, head, x[probe], y[probe], num_classes))
                return values

            log_steps = [e * per_epoch for e in range(config.epochs + 1)]
            ctx.train(
                variant,
                step,
                config.epochs * per_epoch,
                state={"model": net, "opt": opt},
                evaluate=evaluate,
                log_steps=log_steps,
            )
            plain = unparametrised(net).eval()
            ctx.save_model(variant.replace("+", "-"), plain, x_test[:16])
            finals.update(self._finish(ctx, variant, plain, names, x_test, config))
        return finals

    @staticmethod
    def _collapse(net, names, head, x, y, num_classes) -> dict[str, Any]:
        from isotorch.probes import neural_collapse

        feats = layer_features(net, x, names)
        values: dict[str, Any] = {}
        for l, name in enumerate(names):
            last = l == len(names) - 1
            result = neural_collapse(
                feats[name].double(), y, classifier=head if last else None, num_classes=num_classes
            )
            values[f"nc1_{l}"] = result.nc1
            values[f"nc2_{l}"] = result.nc2
            if last:
                values["nc3"] = result.nc3
                values["nc4"] = result.nc4
                values["nc2_classifier"] = result.nc2_classifier
        return values

    @staticmethod
    def _finish(ctx, variant, plain, names, x_test, config) -> dict[str, Any]:
        from isotorch.probes import rank_profile

        records = [r for r in ctx.records(run=variant) if "train_error" in r]
        zero = next((r["epoch"] for r in records if r["train_error"] == 0), float("nan"))
        last_nc = [r for r in records if "nc1_0" in r][-1]
        last = records[-1]
        probes = x_test[: config.probe_samples]
        profile = rank_profile(
            plain, [probes], names, tol=config.rank_tol, features="pool" if config.model == "cnn" else "flatten"
        )
        ctx.log(last["step"], run=variant, event="rank_profile", **profile.to_dict())
        last_layer = f"nc1_{len(names) - 1}"
        at_zero = next((r for r in records if last_layer in r and r["epoch"] >= zero), None)
        out = {
            f"{variant}/zero_error_epoch": zero,
            f"{variant}/nc1_at_zero_error": at_zero[last_layer] if at_zero is not None else float("nan"),
            f"{variant}/train_error": last["train_error"],
            f"{variant}/test_error": last["test_error"],
            f"{variant}/nc2": last_nc[f"nc2_{len(names) - 1}"],
            f"{variant}/nc3": last_nc["nc3"],
            f"{variant}/nc4": last_nc["nc4"],
        }
        for l in range(len(names)):
            out[f"{variant}/nc1_{l}"] = last_nc[f"nc1_{l}"]
            out[f"{variant}/rank_{l}"] = profile.numerical_rank[l]
            out[f"{variant}/effective_rank_{l}"] = profile.effective_rank[l]
        return out

    @staticmethod
    def _n_layers(data) -> int:
        first = data.finals[data.seeds[0]]
        prefix = f"{data.config.variants[0]}/nc1_"
        return sum(1 for k in first if k.startswith(prefix) and k.removeprefix(prefix).isdigit())

    def verdicts(self, data) -> list[Verdict]:
        config: CollapseConfig = data.config
        n = self._n_layers(data)
        plain, syred = "elementwise", "elementwise+syre"

        def per_seed(variant: str, name: str, log: bool = True) -> dict[int, float]:
            key = f"{variant}/{name}"
            out = {s: number(f[key]) for s, f in data.finals.items() if key in f}
            return {s: math.log10(v) if v > 0 else float("nan") for s, v in out.items()} if log else out

        missing = [v for v in (plain, syred) if v not in config.variants]
        setting = f"γ = {config.weight_decay:g}, σ₀ = {config.syre_sigma0:g}, {config.epochs} epochs"
        if missing:
            reason = f"needs the variants {plain!r} and {syred!r}; this run lacks {missing}"
            syre_v = inconclusive(self.claims[0], reason, seeds=data.seeds)
            cost_v = inconclusive(self.claims[3], reason, seeds=data.seeds)
        else:
            syre_v = paired_verdict(
                self.claims[0], per_seed(syred, f"nc1_{n - 1}"), per_seed(plain, f"nc1_{n - 1}"), note=setting
            )
            errors = per_seed(syred, "test_error", log=False)
            base = per_seed(plain, "test_error", log=False)
            cost_v = verdict_from_values(
                self.claims[3],
                {s: 0.02 - (errors[s] - base[s]) for s in errors if s in base},
                note=f"paired by seed; {setting}",
            )
        if plain not in config.variants:
            reason = f"needs the variant {plain!r}"
            return [syre_v, inconclusive(self.claims[1], reason), inconclusive(self.claims[2], reason), cost_v]
        end, at_zero = per_seed(plain, f"nc1_{n - 1}"), per_seed(plain, "nc1_at_zero_error")
        terminal = paired_verdict(
            self.claims[1],
            end,
            at_zero,
            note=f"a seed that never reached zero training error in {config.epochs} epochs has no value (more "
            "epochs decide)",
        )
        if n < 2:
            depth_v = inconclusive(self.claims[2], "needs at least two hidden layers (depth >= 2)", seeds=data.seeds)
        else:
            depth_v = paired_verdict(self.claims[2], end, per_seed(plain, "nc1_0"), note=setting)
        hint = "more seeds, or a longer terminal phase (more epochs), would decide"
        return [scale_hint(v, hint) for v in (syre_v, terminal, depth_v, cost_v)]

    def summarise(self, data) -> list[Findings]:
        config: CollapseConfig = data.config
        n = self._n_layers(data)

        def values(variant, name):
            return [number(f[f"{variant}/{name}"]) for f in data.finals.values() if f"{variant}/{name}" in f]

        nc = {
            v: {
                **{f"NC1 layer {l}": values(v, f"nc1_{l}") for l in range(n)},
                "NC2 (last)": values(v, "nc2"),
                "NC3": values(v, "nc3"),
                "NC4": values(v, "nc4"),
            }
            for v in config.variants
        }
        training = {
            v: {
                "epoch of zero train error": values(v, "zero_error_epoch"),
                "NC1 (last layer) at zero train error": values(v, "nc1_at_zero_error"),
                "final train error": values(v, "train_error"),
                "final test error": values(v, "test_error"),
                **{f"rank layer {l}": values(v, f"rank_{l}") for l in range(n)},
                **{f"eff. rank layer {l}": values(v, f"effective_rank_{l}") for l in range(n)},
            }
            for v in config.variants
        }
        setting = (
            f"{config.model} (width {config.width}, depth {config.depth}, tanh) on {config.dataset}, AdamW lr "
            f"{config.lr:g}, weight decay {config.weight_decay:g} (towards 0, or towards θ₀ ~ N(0, "
            f"{config.syre_sigma0:g}²) under syre), {config.epochs} epochs."
        )
        return [
            Findings.from_values(
                "neural collapse at the end of training",
                nc,
                caption=f"{setting} NC1 = Tr(Σ_W Σ_B⁺)/C of each hidden layer's training features (layer 0 is the "
                "first); NC2 = simplex-ETF error of the last hidden layer's class means; NC3/NC4 against the "
                "classifier. Mean ± 95% CI over seeds.",
            ),
            Findings.from_values(
                "training and rank through depth",
                training,
                caption=f"{setting} Epoch of zero training error: first epoch with every training sample right "
                f"('n/a' if never). Ranks of the centred held-out features (numerical: τ = {config.rank_tol:g}).",
            ),
        ]

    def figures(self, data, out: Path) -> list[Figure]:
        figures: list[Figure] = []

        config: CollapseConfig = data.config
        n = self._n_layers(data)
        colours = cmap("viridis", n)
        styles = ["-", "--", ":", "-."]
        fig, ax = subplots(figsize=(7, 4.5))
        for style, variant in zip(styles, config.variants, strict=False):
            for colour, l in zip(colours, range(n), strict=True):
                for s in data.seeds:
                    rows = [r for r in data.select(seed=s, run=variant) if f"nc1_{l}" in r and r["epoch"] >= 1]
                    if not rows:
                        continue
                    ax.loglog(
                        [r["epoch"] for r in rows],
                        [max(r[f"nc1_{l}"], 1e-12) for r in rows],
                        ls=style,
                        color=colour,
                        lw=1.5 if s == data.seeds[0] else 0.6,
                        alpha=1 if s == data.seeds[0] else 0.4,
                        label=f"{variant}, layer {l}" if s == data.seeds[0] else None,
                    )
        ax.set_xlabel("epoch")
        ax.set_ylabel("NC1 = Tr(Σ_W Σ_B⁺)/C")
        ax.set_title("within-class variability collapse per layer")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
        figures.append(
            save_figure(
                fig,
                out,
                "nc1.png",
                f"NC1 of each hidden layer (colour: depth) against epoch, log-log, one line style per variant "
                f"({', '.join(config.variants)}); seed {data.seeds[0]} bold, other seeds thin.",
            )
        )

        metrics = [("nc2", "NC2 (ETF error, last layer)"), ("nc4", "NC4 (classifier ≠ nearest centre)")]
        fig, axes = subplots(1, 2, figsize=(8, 3.6))
        for ax, (name, label) in zip(axes, metrics, strict=True):
            means, errs = [], []
            for variant in config.variants:
                vals = np.array([f[f"{variant}/{name}"] for f in data.finals.values()], dtype=float)
                means.append(np.nanmean(vals))
                errs.append(np.nanstd(vals))
                ax.plot([len(means) - 1] * len(vals), vals, "k.", ms=4)
            ax.bar(range(len(means)), means, yerr=errs, color="C0", alpha=0.6, capsize=3)
            ax.set_xticks(range(len(means)))
            ax.set_xticklabels(config.variants, rotation=20, fontsize=8)
            ax.set_title(label, fontsize=9)
            ax.grid(alpha=0.3, axis="y")
        figures.append(
            save_figure(
                fig,
                out,
                "nc2_nc4.png",
                "NC2 (simplex-ETF error of the last hidden layer's class means) and NC4 (fraction of training "
                "samples where the classifier and the nearest class mean disagree) at the end; bars: mean (± std), "
                "dots: seeds.",
            )
        )

        fig, ax = subplots(figsize=(6, 4))
        for i, variant in enumerate(config.variants):
            for s in data.seeds:
                rows = data.select(seed=s, run=variant, event="rank_profile")
                if not rows:
                    continue
                prof = rows[-1]
                kw: dict[str, Any] = {"color": f"C{i}", "lw": 1.5 if s == data.seeds[0] else 0.6}
                legend = variant if s == data.seeds[0] else None
                ax.plot(range(len(prof["layers"])), prof["numerical_rank"], "o-", label=legend, **kw)
                ax.plot(range(len(prof["layers"])), prof["effective_rank"], "s--", **kw)
        ax.set_xticks(range(self._n_layers(data)))
        ax.set_xlabel("hidden layer (0 = first)")
        ax.set_ylabel("rank of centred features")
        ax.set_title(f"rank through depth (o numerical τ={config.rank_tol:g}, □ effective)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        figures.append(
            save_figure(
                fig,
                out,
                "rank_depth.png",
                "Numerical (circles) and effective (squares) rank of the centred held-out features of each hidden "
                "layer after training, per variant.",
            )
        )
        return figures
