"""Study ``lmc``: linear mode connectivity and cross-network alignment by symmetry class (REFERENCE 6.6, 6.7, 5.3–5.6).

For each variant, four MLPs (``depth`` hidden layers of ``width`` units, AdamW) are trained side by side from
different initialisations and minibatch orders, seeds derived from the run seed:

- the *LMC pair* A, B on the same inputs: after training, the loss along θ(λ) = (1 − λ)θ_A + λθ_B
  (:func:`isotorch.params.barrier`, 25 points, training data; both conventions, ``max`` and ``linear``) before and
  after aligning B to A (:func:`isotorch.params.align`, weight matching);
- the *universal pair* A′, B′, each fed its own fixed random linear transform x ↦ xT (T ~ N(0, 1/d)) of the input:
  the linear CKA (:func:`isotorch.probes.linear_cka`) between A′'s and B′'s hidden layers at log-spaced epochs,
  against the CKA of their two inputs (the "universal representation" claim: hidden CKA rises above it).

Variants (the architecture randomness — fixed entries, F, θ₀ — is shared by A and B; it is part of the model):

- ``elementwise``: Linear → tanh; aligned by permutation weight matching.
- ``isotropic``: Linear → IsoTanh (:func:`isotorch.convert`); aligned by orthogonal Procrustes weight matching.
- ``w_asym``: :class:`isotorch.params.AsymLinear` → tanh, scaled to each layer's input width (fan_in):
  n_fix = max(1, round(``n_fix_fraction``·fan_in)) fixed entries per row (Lim et al.'s MNIST hidden layers fix 64 of
  512, the default fraction ⅛) of scale κ_l = ``kappa``/√fan_in, the scale of a default initial weight. Lim et al.
  fix N(0, 1) entries (κ = 1) and normalise with LayerNorm; without a normaliser, κ = 1 puts every tanh of this
  net in saturation (√(n_fix)-sized pre-activations) and W-Asym underfits (test accuracy 0.879 vs 0.974 on digits).
- ``sigma_asym``: Linear → :class:`isotorch.params.FiGLU` with F ~ N(0, ``figlu_scale``²/width) (F divided by
  √width, so that the gate sigmoid(Fx) is O(1) and not a fixed random 0/1 mask).
- ``syre``: the elementwise net under :func:`isotorch.params.syre` (offset σ₀ = ``syre_sigma0``, weight decay
  ``syre_weight_decay`` towards θ₀).

``w_asym`` and ``syre`` are "aligned" by permutation weight matching on plain copies with their effective weights
(function-preserving for those copies) to show what matching does to them; ``sigma_asym`` has no permutation
symmetry (FiGLU mixes units), so no function-preserving matching exists and its aligned barrier is n/a.

Learning rates: each variant is trained at its own best learning rate among ``lrs``, chosen per seed by a sweep of
``sweep_epochs`` epochs on 80% of the training set scored by the cross-entropy of the other 20%
(:func:`isotorch.studies._models.select_lr`); the choices are reported.

**Claims and verdicts** (``Lmc.claims``; barrier = max convention on the training set, seeds paired):

- weight matching lowers the elementwise barrier (Ainsworth et al. 2023, Git Re-Basin);
- Lim et al. 2024's ordering, W-Asym unaligned < standard + weight matching < σ-Asym < standard unaligned, as its
  three adjacent comparisons (the ordering is reproduced when all three are supported; the report says so);
- orthogonal (Procrustes) alignment lowers the isotropic barrier (isotorch: the isotropic site's group is O(n));
- cross-network alignment: the last hidden layers of two isotropic nets fed different random linear transforms of
  the input are more similar (linear CKA) than their inputs (position paper Fig. 3).

Expected ordering from the literature (Lim et al. 2024, qualitative, not a target): W-Asym unaligned < standard +
weight matching < σ-Asym < standard unaligned.

**Units.** Every variant of a seed is a unit of its own (``Lmc.configurations``): its own checkpoint and metrics
file, a Ray task with ``--executor ray``.
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
from isotorch.studies._models import SupervisedStep, layer_features, mlp, scale_hint, select_lr, unparametrised
from isotorch.studies._registry import Study, register
from isotorch.studies._stats import Figure, Findings, number
from isotorch.studies._verdicts import Claim, Verdict, inconclusive, paired_verdict

__all__ = ["Lmc", "LmcConfig", "build_mlp", "plain_copy"]

VARIANTS = ("elementwise", "isotropic", "w_asym", "sigma_asym", "syre")
DATASETS = ("digits", "mnist1d", "mnist", "fashion_mnist", "cifar10")
MODELS = ("A", "B", "UA", "UB")


@dataclass(frozen=True)
class LmcConfig:
    """Settings of the ``lmc`` study (see the module docstring)."""

    variants: tuple[str, ...] = VARIANTS
    dataset: str = "digits"
    data_root: str = ""
    n_train: int = 0
    width: int = 128
    depth: int = 3
    epochs: int = 30
    batch_size: int = 64
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    sweep_epochs: int = 10
    weight_decay: float = 0.01
    n_fix_fraction: float = 0.125
    kappa: float = 1.0
    figlu_scale: float = 1.0
    syre_sigma0: float = 0.1
    syre_weight_decay: float = 1.0
    path_steps: int = 25
    log_points: int = 12
    cka_samples: int = 500

    def __post_init__(self):
        if not self.variants or any(v not in VARIANTS for v in self.variants):
            raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {self.variants!r}")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must not repeat, got {self.variants!r}")
        check_choice(self.dataset, "dataset", tuple(DATASETS))
        if self.dataset not in ("digits", "mnist1d") and not self.data_root:
            raise ValueError(f"data_root must name the folder holding the {self.dataset} files, got ''")
        check_positive(self, ints=("width", "depth", "epochs", "batch_size", "sweep_epochs", "log_points"))
        if self.n_train < 0:
            raise ValueError(f"n_train must be ≥ 0 (0: the whole training set), got {self.n_train}")
        if self.path_steps < 3:
            raise ValueError(f"path_steps must be at least 3, got {self.path_steps}")
        if self.cka_samples < 4:
            raise ValueError(f"cka_samples must be at least 4, got {self.cka_samples}")
        if (
            not self.lrs
            or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs)
            or len(set(self.lrs)) != len(self.lrs)
        ):
            raise ValueError(f"lrs must be distinct positive finite floats, got {self.lrs!r}")
        if not 0 < self.n_fix_fraction < 1:
            raise ValueError(f"n_fix_fraction must be in (0, 1), got {self.n_fix_fraction!r}")
        check_positive(self, floats=("kappa", "syre_sigma0", "figlu_scale"))
        for name in ("weight_decay", "syre_weight_decay"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite float ≥ 0, got {value!r}")


def build_mlp(
    variant: str,
    in_features: int,
    num_classes: int,
    *,
    width: int,
    depth: int,
    arch_seed: int,
    init_seed: int,
    n_fix_fraction: float = 0.125,
    kappa: float = 1.0,
    figlu_scale: float = 1.0,
    syre_sigma0: float = 0.1,
) -> tuple[nn.Sequential, list[str]]:
    """An MLP of ``variant`` and the names of its hidden activations.

    The architecture's randomness (AsymLinear masks and fixed entries, FiGLU's F, syre's θ₀) comes from
    ``arch_seed``; the trainable initial weights (U(±1/√fan_in), as ``nn.Linear``) from ``init_seed``. W-Asym
    layers fix max(1, round(``n_fix_fraction``·fan_in)) entries per row at scale ``kappa``/√fan_in; FiGLU's F is
    N(0, ``figlu_scale``²/width).

    Examples:
        >>> a, names = build_mlp("w_asym", 8, 3, width=6, depth=2, arch_seed=0, init_seed=1, n_fix_fraction=0.25)
        >>> b, _ = build_mlp("w_asym", 8, 3, width=6, depth=2, arch_seed=0, init_seed=2, n_fix_fraction=0.25)
        >>> names, bool((a[0].fixed == b[0].fixed).all()), bool((a[0].weight == b[0].weight).all())
        (['1', '3'], True, False)
        >>> a[0].n_fix, round(a[0].kappa, 4), a[2].n_fix
        (2, 0.3536, 2)
    """
    from isotorch.params import AsymLinear, FiGLU

    check_choice(variant, "variant", tuple(VARIANTS))
    arch = torch.Generator().manual_seed(arch_seed)
    init = torch.Generator().manual_seed(init_seed)

    def asym_linear(fan_in: int, fan_out: int) -> nn.Module:
        n_fix = min(max(1, round(n_fix_fraction * fan_in)), fan_in - 1)
        return AsymLinear(fan_in, fan_out, n_fix=n_fix, kappa=kappa / math.sqrt(fan_in), generator=arch)

    def init_weights(linear: nn.Module) -> None:  # U(±1/√fan_in) from the init generator; fixed entries kept
        weight, bias = linear.weight, linear.bias
        assert isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)  # both layer kinds have a bias
        fan_out, fan_in = weight.shape
        bound = 1 / math.sqrt(fan_in)
        weight.copy_((torch.rand(fan_out, fan_in, generator=init) * 2 - 1) * bound)
        bias.copy_((torch.rand(fan_out, generator=init) * 2 - 1) * bound)
        if isinstance(linear, AsymLinear):  # variant "w_asym"
            weight.mul_(linear.mask)

    def figlu(width: int) -> nn.Module:
        act = FiGLU(width, generator=arch)
        with torch.no_grad():
            act.weight.mul_(figlu_scale / math.sqrt(width))
        return act

    net: nn.Module = mlp(
        [in_features, *[width] * depth, num_classes],
        figlu if variant == "sigma_asym" else None,
        linear=asym_linear if variant == "w_asym" else nn.Linear,
        init=init_weights,
    )
    if variant == "isotropic":
        from isotorch import convert

        net = convert(net, "isotropic")
    if variant == "syre":
        from isotorch.params import syre

        net = syre(net, syre_sigma0, "offset", generator=arch)
    assert isinstance(net, nn.Sequential)  # convert and syre keep the container
    return net, [str(2 * i + 1) for i in range(depth)]


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy with plain ``nn.Linear`` layers holding the effective weights (AsymLinear's M ⊙ W + κF, syre's θ + θ₀).

    Same function as ``model``; its hidden sites regain the symmetries of their activations.

    Examples:
        >>> net, _ = build_mlp("syre", 4, 2, width=5, depth=1, arch_seed=0, init_seed=1)
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(plain_copy(net)(x), net(x))
        True
    """
    from isotorch.params import AsymLinear

    new = unparametrised(model)
    for name, module in list(new.named_children()):
        if isinstance(module, AsymLinear):
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(module.effective_weight())
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            setattr(new, name, linear)
    return new


def _moved_fraction(result) -> float:
    """Mean fraction of hidden units that a permutation alignment moved (NaN for rotations / no site)."""
    fractions = []
    for matrix in result.element.matrices.values():
        if matrix.ndim == 1:
            fractions.append(float((matrix != torch.arange(len(matrix))).float().mean()))
    return float(np.mean(fractions)) if fractions else float("nan")


@register("lmc")
class Lmc(Study):
    """Loss barriers before/after alignment and cross-network CKA, for elementwise, isotropic and asymmetric nets."""

    Config = LmcConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "n_train": 256,
            "width": 12,
            "depth": 2,
            "epochs": 3,
            "batch_size": 128,
            "lrs": (1e-3, 1e-2),
            "sweep_epochs": 1,
            "path_steps": 5,
            "log_points": 3,
            "cka_samples": 100,
        },
        # REFERENCE 5.8/6.6: Lim et al.'s MNIST protocol (3×512, AdamW lr 1e-3, wd 0.03, batch 64, 25 epochs)
        "paper": {
            "dataset": "mnist",
            "width": 512,
            "depth": 3,
            "epochs": 25,
            "batch_size": 64,
            "lrs": (1e-3,),
            "weight_decay": 0.03,
            "cka_samples": 2000,
        },
    }
    claims = (
        Claim(
            "weight-matching-lowers-barrier",
            "Permutation weight matching lowers the loss barrier between two elementwise (tanh) nets",
            "Ainsworth et al. 2023 (Git Re-Basin)",
            "barrier(elementwise, unaligned) - barrier(elementwise, matched), paired by seed",
        ),
        Claim(
            "lim-wasym-below-matched-standard",
            "W-Asym nets have a lower unaligned barrier than standard nets after weight matching",
            "Lim et al. 2024 (ordering, first step)",
            "barrier(elementwise, matched) - barrier(w_asym, unaligned), paired by seed",
        ),
        Claim(
            "lim-matched-standard-below-sigma-asym",
            "Standard nets after weight matching have a lower barrier than σ-Asym nets",
            "Lim et al. 2024 (ordering, second step)",
            "barrier(sigma_asym, unaligned) - barrier(elementwise, matched), paired by seed",
        ),
        Claim(
            "lim-sigma-asym-below-standard",
            "σ-Asym nets have a lower barrier than unaligned standard nets",
            "Lim et al. 2024 (ordering, third step)",
            "barrier(elementwise, unaligned) - barrier(sigma_asym, unaligned), paired by seed",
        ),
        Claim(
            "procrustes-lowers-isotropic-barrier",
            "Orthogonal (Procrustes) alignment lowers the loss barrier between two isotropic nets",
            "isotorch (the isotropic site's group is O(n), REFERENCE 5.5)",
            "barrier(isotropic, unaligned) - barrier(isotropic, aligned), paired by seed",
        ),
        Claim(
            "universal-representation",
            "Isotropic nets fed different random linear transforms of the input converge to similar last-layer "
            "representations (CKA above that of their inputs)",
            "position paper Fig. 3",
            "linear CKA(last hidden layers, universal pair) - CKA(their inputs), isotropic, per seed",
        ),
    )

    def configurations(self, config: LmcConfig) -> list[str]:
        """Every variant draws its architecture and weights from its own seeds: a unit per seed and variant."""
        return list(config.variants)

    def run(self, ctx) -> dict[str, Any]:
        config: LmcConfig = ctx.config
        x, y, x_test, y_test = study_split(config)
        if config.n_train:
            x, y = x[: config.n_train], y[: config.n_train]
        x, y, x_test, y_test = (t.to(ctx.device) for t in (x, y, x_test, y_test))
        d, num_classes = x.shape[1], int(y.max()) + 1
        g = torch.Generator().manual_seed(70_000 + ctx.seed)
        transforms = {m: torch.randn(d, d, generator=g).div(math.sqrt(d)).to(ctx.device) for m in ("UA", "UB")}
        probe = x_test[: config.cka_samples]
        inputs = {"A": probe, "B": probe, "UA": probe @ transforms["UA"], "UB": probe @ transforms["UB"]}
        from isotorch.probes import linear_cka

        input_cka = linear_cka(inputs["UA"].double(), inputs["UB"].double())
        per_epoch = math.ceil(len(x) / config.batch_size)
        log_steps = sorted(
            {0, *(per_epoch * np.unique(np.geomspace(1, config.epochs, config.log_points).round().astype(int)))}
        )
        log_steps = [int(s) for s in log_steps]
        finals: dict[str, Any] = {}
        for v_index, variant in enumerate(config.variants):
            if ctx.configuration is not None and variant != ctx.configuration:
                continue

            def make(m_index: int, variant: str = variant, v_index: int = v_index) -> tuple[nn.Module, list[str]]:
                net, names = build_mlp(
                    variant,
                    d,
                    num_classes,
                    width=config.width,
                    depth=config.depth,
                    arch_seed=1000 * ctx.seed + v_index,
                    init_seed=10_000 + 1000 * ctx.seed + 10 * v_index + m_index,
                    n_fix_fraction=config.n_fix_fraction,
                    kappa=config.kappa,
                    figlu_scale=config.figlu_scale,
                    syre_sigma0=config.syre_sigma0,
                )
                return net.to(ctx.device), names

            wd = config.syre_weight_decay if variant == "syre" else config.weight_decay
            scores: dict[float, float] = {}
            lr = config.lrs[0]

            def first_model(make=make) -> nn.Module:
                return make(0)[0]

            if len(config.lrs) > 1:
                lr, scores = select_lr(
                    ctx,
                    f"sweep/{variant}",
                    first_model,
                    config.lrs,
                    x,
                    y,
                    steps=config.sweep_epochs * math.ceil(0.8 * len(x) / config.batch_size),
                    batch_size=config.batch_size,
                    weight_decay=wd,
                )
            finals[f"{variant}/lr"] = lr
            ctx.log(0, run=variant, event="lr_sweep", lr=lr, scores={f"{k:g}": v for k, v in scores.items()})
            nets: dict[str, nn.Module] = {}
            opts: dict[str, torch.optim.Optimizer] = {}
            names: list[str] = []
            for m_index, m in enumerate(MODELS):
                nets[m], names = make(m_index)
                opts[m] = torch.optim.AdamW(nets[m].parameters(), lr=lr, weight_decay=wd)

            maps = {m: (lambda batch, u=u: batch @ u) for m, u in transforms.items()}  # UA, UB see x·U
            updates = [
                SupervisedStep(ctx, nets[m], opts[m], x, y, batch_size=config.batch_size, key=m, input_map=maps.get(m))
                for m in MODELS
            ]

            def step(t, updates=updates):  # update t of each net in turn; their mean loss
                return sum(update(t) for update in updates) / len(MODELS)

            def evaluate(t, nets=nets, names=names):
                values: dict[str, Any] = {"epoch": t // per_epoch, "input_cka": input_cka}
                for m in ("A", "B"):
                    out = nets[m](x_test)
                    values[f"test_loss_{m}"] = nn.functional.cross_entropy(out, y_test)
                    values[f"test_acc_{m}"] = (out.argmax(1) == y_test).float().mean()
                feats = {m: layer_features(nets[m], inputs[m], names) for m in MODELS}
                for l, name in enumerate(names):
                    values[f"cka_{l}"] = linear_cka(feats["A"][name].double(), feats["B"][name].double())
                    values[f"cka_universal_{l}"] = linear_cka(feats["UA"][name].double(), feats["UB"][name].double())
                return values

            state = {**{f"model_{m}": nets[m] for m in MODELS}, **{f"opt_{m}": opts[m] for m in MODELS}}
            ctx.train(variant, step, config.epochs * per_epoch, state=state, evaluate=evaluate, log_steps=log_steps)
            ctx.save_model(variant, plain_copy(nets["A"]).eval(), x_test[:16])
            finals.update(self._barriers(ctx, variant, nets["A"], nets["B"], (x, y, x_test, y_test), config))
            last = [r for r in ctx.records(run=variant) if "cka_0" in r][-1]
            finals[f"{variant}/input_cka"] = input_cka
            for l in range(config.depth):
                finals[f"{variant}/cka_{l}"] = last[f"cka_{l}"]
                finals[f"{variant}/cka_universal_{l}"] = last[f"cka_universal_{l}"]
        return finals

    @staticmethod
    def _barriers(ctx, variant, a, b, data, config) -> dict[str, Any]:
        from isotorch.params import align, barrier

        x, y, x_test, y_test = data
        loss_fn = nn.functional.cross_entropy
        a, b = a.eval(), b.eval()
        before = barrier(a, b, loss_fn, (x, y), steps=config.path_steps)
        after, moved, distance = None, float("nan"), (float("nan"), float("nan"))
        if variant != "sigma_asym":
            if variant == "isotropic":
                ref, result = a, align(a, b, x=x[:64], generator=torch.Generator().manual_seed(ctx.seed))
            else:  # permutation matching; asymmetric/syre nets via plain copies of their effective weights
                ref = plain_copy(a)
                result = align(
                    ref, plain_copy(b), x=x[:64], group="permutation", generator=torch.Generator().manual_seed(ctx.seed)
                )
                moved = _moved_fraction(result)
            distance = (result.distance_before, result.distance_after)
            after = barrier(ref, result.model, loss_fn, (x, y), steps=config.path_steps)
        for kind, res in (("before", before), ("after", after)):
            if res is not None:
                ctx.log(0, run=variant, event="path", kind=kind, **res.to_dict())
        nan = float("nan")
        with torch.no_grad():
            test_acc = [float((m(x_test).argmax(1) == y_test).float().mean()) for m in (a, b)]
        return {
            f"{variant}/test_acc": float(np.mean(test_acc)),
            f"{variant}/barrier_before": before.barrier,
            f"{variant}/barrier_linear_before": before.barrier_linear,
            f"{variant}/acc_barrier_before": before.accuracy_barrier,
            f"{variant}/barrier_after": after.barrier if after else nan,
            f"{variant}/barrier_linear_after": after.barrier_linear if after else nan,
            f"{variant}/acc_barrier_after": after.accuracy_barrier if after else nan,
            f"{variant}/moved_fraction": moved,
            f"{variant}/distance_before": distance[0],
            f"{variant}/distance_after": distance[1],
        }

    def verdicts(self, data) -> list[Verdict]:
        config: LmcConfig = data.config

        def per_seed(variant: str, name: str) -> dict[int, float]:
            key = f"{variant}/{name}"
            return {s: number(f[key]) for s, f in data.finals.items() if key in f}

        setting = f"barrier: max convention, training set, {config.path_steps} points, after {config.epochs} epochs"
        needs = [
            ("elementwise",),
            ("elementwise", "w_asym"),
            ("elementwise", "sigma_asym"),
            ("elementwise", "sigma_asym"),
            ("isotropic",),
            ("isotropic",),
        ]
        pairs = [
            (("elementwise", "barrier_before"), ("elementwise", "barrier_after")),
            (("elementwise", "barrier_after"), ("w_asym", "barrier_before")),
            (("sigma_asym", "barrier_before"), ("elementwise", "barrier_after")),
            (("elementwise", "barrier_before"), ("sigma_asym", "barrier_before")),
            (("isotropic", "barrier_before"), ("isotropic", "barrier_after")),
        ]
        out = []
        for claim, need, pair in zip(self.claims, needs, [*pairs, None], strict=True):
            missing = [v for v in need if v not in config.variants]
            if missing:
                out.append(
                    inconclusive(claim, f"needs the variant(s) {missing}, absent from this run", seeds=data.seeds)
                )
            elif pair is None:
                last = f"cka_universal_{config.depth - 1}"
                cka, base = per_seed("isotropic", last), per_seed("isotropic", "input_cka")
                out.append(paired_verdict(claim, cka, base, note=f"linear CKA on {config.cka_samples} test inputs"))
            else:
                out.append(paired_verdict(claim, per_seed(*pair[0]), per_seed(*pair[1]), note=setting))
        hint = "more seeds, or Lim et al.'s scale (3×512 MLPs on MNIST for 25 epochs: the `paper` preset), would decide"
        return [scale_hint(v, hint) for v in out]

    @staticmethod
    def lim_ordering(verdicts: list[Verdict]) -> str:
        """One sentence: whether Lim et al.'s ordering was reproduced (all three comparisons supported)."""
        steps = [v for v in verdicts if v.claim.name.startswith("lim-")]
        words = ", ".join(f"{v.claim.name.removeprefix('lim-')}: {v.verdict}" for v in steps)
        if steps and all(v.verdict == "supported" for v in steps):
            return f"Lim et al.'s ordering W-Asym < standard+matching < σ-Asym < standard WAS reproduced ({words})."
        if any(v.verdict == "contradicted" for v in steps):
            return f"Lim et al.'s ordering was NOT reproduced: at least one step is contradicted ({words})."
        return f"Lim et al.'s ordering was neither reproduced nor refuted at this scale ({words})."

    def summarise(self, data) -> list[Findings]:
        config: LmcConfig = data.config

        def values(variant, name):
            return [number(f[f"{variant}/{name}"]) for f in data.finals.values() if f"{variant}/{name}" in f]

        columns = {
            "barrier_before": "barrier (max) unaligned",
            "barrier_after": "barrier (max) aligned",
            "barrier_linear_before": "barrier (linear) unaligned",
            "barrier_linear_after": "barrier (linear) aligned",
            "acc_barrier_before": "accuracy barrier % unaligned",
            "acc_barrier_after": "accuracy barrier % aligned",
            "moved_fraction": "units moved by matching",
            "test_acc": "test accuracy (A, B mean)",
            "lr": "learning rate (sweep)",
        }
        barriers = {v: {label: values(v, k) for k, label in columns.items()} for v in config.variants}
        cka = {
            v: {
                "input CKA (universal pair)": values(v, "input_cka"),
                **{f"CKA layer {l} (universal pair)": values(v, f"cka_universal_{l}") for l in range(config.depth)},
                **{f"CKA layer {l} (same input)": values(v, f"cka_{l}") for l in range(config.depth)},
            }
            for v in config.variants
        }
        setting = (
            f"MLP {config.depth}×{config.width} on {config.dataset}, AdamW at each variant's best learning rate "
            f"among {', '.join(f'{lr:g}' for lr in config.lrs)} (per seed: {config.sweep_epochs}-epoch sweep, "
            f"scored on a held-out 20% of the training set), weight decay {config.weight_decay:g} (syre: "
            f"{config.syre_weight_decay:g} towards θ₀, σ₀ = {config.syre_sigma0:g}), {config.epochs} epochs; W-Asym "
            f"n_fix = round({config.n_fix_fraction:g}·fan_in), κ = {config.kappa:g}/√fan_in; FiGLU F ~ N(0, "
            f"{config.figlu_scale:g}²/width)."
        )
        ordering = self.lim_ordering(self.verdicts(data))
        return [
            Findings.from_values(
                "loss barriers before and after alignment",
                barriers,
                caption=f"{ordering} {setting} Cross-entropy on the training set along {config.path_steps} points "
                "of the linear path A → B. max: max_λ L(λ) − ½(L_A + L_B); linear: max_λ [L(λ) − ((1−λ)L_A + λL_B)]. "
                "Aligned: permutation weight matching (elementwise; W-Asym and syre on plain copies of their "
                "effective weights), orthogonal Procrustes weight matching (isotropic); σ-Asym: n/a (no symmetry).",
            ),
            Findings.from_values(
                "representation alignment at the end of training",
                cka,
                caption=f"{setting} Linear CKA between A's and B's hidden layers on {config.cka_samples} test "
                "inputs; universal pair: each net sees its own random linear transform of the input, whose CKA is "
                "the baseline.",
            ),
        ]

    def figures(self, data, out: Path) -> list[Figure]:
        figures: list[Figure] = []

        config: LmcConfig = data.config
        seed = data.seeds[0]
        n = len(config.variants)
        fig, axes = subplots(1, n, figsize=(3.0 * n, 3.2), sharey=True, squeeze=False)
        for ax, variant in zip(axes[0], config.variants, strict=True):
            for s in data.seeds:
                for kind, colour in (("before", "C3"), ("after", "C0")):
                    rows = data.select(seed=s, run=variant, event="path", kind=kind)
                    if rows:
                        ax.plot(
                            rows[-1]["alphas"],
                            rows[-1]["losses"],
                            color=colour,
                            lw=1.5 if s == seed else 0.6,
                            alpha=1 if s == seed else 0.5,
                            label=("unaligned" if kind == "before" else "aligned") if s == seed else None,
                        )
            ax.set_title(variant, fontsize=9)
            ax.set_xlabel("λ")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("training loss at (1−λ)θ_A + λθ_B")
        axes[0][0].legend(fontsize=8)
        figures.append(
            save_figure(
                fig,
                out,
                "paths.png",
                "Training loss along the linear path from A (λ = 0) to B (λ = 1), unaligned (red) and after "
                f"alignment (blue), one panel per variant; seed {seed} bold, other seeds thin.",
            )
        )

        fig, ax = subplots(figsize=(7, 3.8))
        width = 0.38
        for j, (kind, colour) in enumerate((("before", "C3"), ("after", "C0"))):
            for i, variant in enumerate(config.variants):
                vals = np.array([f.get(f"{variant}/barrier_{kind}", np.nan) for f in data.finals.values()], float)
                if np.all(np.isnan(vals)):
                    continue
                xpos = i + (j - 0.5) * width
                ax.bar(
                    xpos,
                    np.nanmean(vals),
                    width,
                    color=colour,
                    alpha=0.7,
                    label=("unaligned" if kind == "before" else "aligned") if i == 0 else None,
                )
                ax.plot([xpos] * len(vals), vals, "k.", ms=4)
        ax.set_xticks(range(n))
        ax.set_xticklabels(config.variants)
        ax.set_ylabel("loss barrier (max convention)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        figures.append(
            save_figure(
                fig,
                out,
                "barriers.png",
                "Loss barrier (max convention) per variant, unaligned (red) and aligned (blue); bars: mean over "
                "seeds, dots: seeds. σ-Asym has no aligned bar (no symmetry to align over).",
            )
        )

        fig, axes = subplots(1, n, figsize=(3.0 * n, 3.2), sharey=True, squeeze=False)
        colours = cmap("viridis", config.depth)
        for ax, variant in zip(axes[0], config.variants, strict=True):
            for s in data.seeds:
                rows = [r for r in data.select(seed=s, run=variant) if "cka_0" in r]
                if not rows:
                    continue
                epochs = [r["epoch"] for r in rows]
                kw = {"lw": 1.5 if s == seed else 0.6, "alpha": 1 if s == seed else 0.5}
                for l in range(config.depth):
                    ax.plot(
                        epochs,
                        [r[f"cka_universal_{l}"] for r in rows],
                        color=colours[l],
                        label=f"layer {l}" if s == seed else None,
                        **kw,
                    )
                ax.plot(epochs, [r["input_cka"] for r in rows], "k--", label="input" if s == seed else None, **kw)
            ax.set_xscale("symlog", linthresh=1)
            ax.set_title(variant, fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("linear CKA(A′, B′)")
        axes[0][0].legend(fontsize=7)
        figures.append(
            save_figure(
                fig,
                out,
                "cka.png",
                "Linear CKA between the hidden layers of two nets that each see their own random linear transform "
                "of the input (colour: depth) against epoch, with the CKA of the two inputs (dashed).",
            )
        )
        return figures
