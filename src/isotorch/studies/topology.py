"""Study ``topology``: isotropic MLPs that grow and prune their own units during training (REFERENCE 5.9, 6.2).

An MLP x → Linear → φ → … → Linear → logits (hidden widths ``hidden`` at the start) is trained on a dataset
(digits; ``dataset="mnist1d"``/``"mnist"``) with cross-entropy and AdamW in ``segments`` of ``surgery_every``
updates. Between segments the network may change shape; each segment is its own ``ctx.train`` loop (fixed shapes,
key ``"{arm}/seg{i}"``), so that checkpoint/resume stays exact: on resume the finished segments are restored one by
one and the surgeries between them are recomputed (they are deterministic), which rebuilds every shape before the
next segment's state is loaded.

**The optimiser state is reset at every segment boundary, in every arm alike** (the fixed arm too, so the arms
differ only in the surgery). It is not carried through the surgery: pruning first diagonalises the producer by an
SVD rotation, and AdamW's second moment (an elementwise average of squared gradients) has no exact image under a
rotation (:func:`isotorch.params.transform` refuses it); only the first moment and plain momentum would rotate
exactly. Resetting is the one rule that treats grow, prune and no-op segments the same way.

Each family trains at its own learning rate: per seed, :func:`isotorch.studies._models.select_lr` sweeps ``lrs``
for ``sweep_steps`` updates on the starting architecture (isotropic tanh for ``adaptive``/``fixed``, tanh for
``elementwise``), scored on a held-out 20% of the training set. Arms:

- ``adaptive`` (φ = isotropic tanh): at each boundary, for each hidden site, the producer W_l is diagonalised
  (:func:`isotorch.params.svd_diagonalise`) and its *scaffold* units (singular value ≤ ``threshold``) counted. Fewer
  than ``scaffold``: grow the difference (:func:`isotorch.params.grow`: zero rows, consumer columns
  ~ ``grow_scale``·N(0, 1), exact); more: prune the excess smallest (:func:`isotorch.params.prune`: the removed
  biases go into the activation's intrinsic length and the consumer bias; the change of the consumer
  pre-activation is bounded by ‖W_c‖₂·σ_max·‖x‖ + ‖W*‖₂·(σ_max·‖x‖ + ‖b*‖) per sample). Widths stay within
  [``min_width``, ``max_width``].
- ``fixed`` (isotropic tanh): the same segments, no surgery.
- ``elementwise`` (tanh; the control): follows the adaptive arm's widths: it grows as many units when that arm
  grows (zero rows: exact, tanh(0) = 0), and when that arm prunes it removes the units of smallest weight norm
  ‖(W_l[i], b_l[i], W_{l+1}[:, i])‖, which does not preserve the function.

Logged at every surgery (``event="surgery"``): the action, the width before/after, the test accuracy before and
after, the largest change of any test logit (must be ~0 for grow), and for prune the measured change of the
consumer's pre-activation with its bound. Logged every ``log_every`` updates: the global step, test accuracy,
widths, the singular values of each hidden producer and the scaffold count.

**Claims and verdicts** (``Topology.claims``; one value per seed, t-interval over seeds):

- *neurogenesis is exact* (Bird's code, REFERENCE 5.9: logits change ≲ 1e-4 in fp32): −4 − log₁₀ max |Δlogit| over
  the adaptive arm's grows, claimed > 0;
- *pruning scaffold units is nearly free* (3rd-party, REFERENCE 6.2: 50% pruning costs < 0.1% accuracy): 0.001 −
  the largest test-accuracy drop at an adaptive prune, claimed > 0;
- *SVD pruning of isotropic nets hurts less than magnitude pruning of tanh nets* (3rd-party, REFERENCE 6.2: a
  scaffold unit is inert in iso nets but not under tanh): largest drop (elementwise) − largest drop (adaptive),
  paired by seed, claimed > 0.

A seed whose adaptive arm never grew (or pruned) gives no value for the claims that need one.
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
from isotorch.studies._figures import save_figure, subplots
from isotorch.studies._models import SupervisedStep, mlp, scale_hint, select_lr, uniform_init
from isotorch.studies._registry import Study, register
from isotorch.studies._stats import Figure, Findings, number
from isotorch.studies._verdicts import Claim, Verdict, inconclusive, paired_verdict, verdict_from_values

__all__ = ["Topology", "TopologyConfig", "adaptation", "build_mlp", "prune_by_norm"]

_DATASETS = ("digits", "mnist1d", "mnist", "fashion_mnist")
_ARMS = ("adaptive", "fixed", "elementwise")


@dataclass(frozen=True)
class TopologyConfig:
    """Settings of the ``topology`` study (see the module docstring)."""

    arms: tuple[str, ...] = ("adaptive", "fixed", "elementwise")
    dataset: str = "digits"
    data_root: str | None = None
    hidden: tuple[int, ...] = (16, 16)
    steps: int = 4000
    surgery_every: int = 250
    batch_size: int = 32
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    sweep_steps: int = 1000
    weight_decay: float = 0.1
    threshold: float = 0.1
    scaffold: int = 2
    min_width: int = 4
    max_width: int = 128
    grow_scale: float = 0.01
    log_every: int = 50

    def __post_init__(self):
        if not self.arms or len(set(self.arms)) != len(self.arms) or any(a not in _ARMS for a in self.arms):
            raise ValueError(f"arms must be distinct names from {_ARMS}, got {self.arms!r}")
        if "elementwise" in self.arms and (
            "adaptive" not in self.arms or self.arms.index("adaptive") > self.arms.index("elementwise")
        ):
            raise ValueError(
                f"arms: 'elementwise' follows the adaptive arm's widths, so 'adaptive' must precede it, "
                f"got {self.arms!r}"
            )
        check_choice(self.dataset, "dataset", tuple(_DATASETS))
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {self.hidden!r}")
        check_positive(
            self, ints=("steps", "surgery_every", "batch_size", "log_every", "min_width", "max_width", "sweep_steps")
        )
        if self.scaffold < 0:
            raise ValueError(f"scaffold must be a non-negative int, got {self.scaffold!r}")
        if self.min_width <= self.scaffold:
            raise ValueError(f"min_width must exceed scaffold={self.scaffold}, got {self.min_width!r}")
        if not self.min_width <= min(self.hidden) <= max(self.hidden) <= self.max_width:
            raise ValueError(
                f"hidden widths {self.hidden!r} must lie in [min_width={self.min_width}, max_width={self.max_width}]"
            )
        if (
            not self.lrs
            or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs)
            or len(set(self.lrs)) != len(self.lrs)
        ):
            raise ValueError(f"lrs must be distinct positive finite floats, got {self.lrs!r}")
        check_positive(self, floats=("threshold", "grow_scale"))
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a non-negative finite float, got {self.weight_decay!r}")


def build_mlp(
    n_in: int, hidden: tuple[int, ...], n_out: int, *, isotropic: bool, generator: torch.Generator | None = None
) -> nn.Sequential:
    """Linear → φ → … → Linear, φ = isotropic tanh (``isotropic``) or tanh; PyTorch's default init from ``generator``.

    The hidden sites are named by their producers' indices, ``"0"``, ``"2"``, … (:func:`isotorch.params.symmetries`).

    Examples:
        >>> build_mlp(4, (3,), 2, isotropic=True, generator=torch.Generator().manual_seed(0))
        Sequential(
          (0): Linear(in_features=4, out_features=3, bias=True)
          (1): IsoTanh(dim=-1)
          (2): Linear(in_features=3, out_features=2, bias=True)
        )
    """
    from isotorch.nn import IsoTanh

    activation = (lambda _: IsoTanh()) if isotropic else None
    return mlp([n_in, *hidden, n_out], activation, init=uniform_init(generator))


def adaptation(singular_values, *, threshold: float, scaffold: int, min_width: int, max_width: int) -> int:
    """Units to add (> 0) or remove (< 0) so that ``scaffold`` units have singular value ≤ ``threshold``.

    Clipped so that the width stays within [``min_width``, ``max_width``].

    Examples:
        >>> adaptation([3.0, 1.0, 0.5], threshold=0.1, scaffold=2, min_width=2, max_width=8)
        2
        >>> adaptation([3.0, 1.0, 0.05, 0.01, 0.0], threshold=0.1, scaffold=2, min_width=2, max_width=8)
        -1
        >>> adaptation([3.0, 1.0], threshold=0.1, scaffold=2, min_width=2, max_width=3)
        1
    """
    width = len(singular_values)
    small = sum(float(s) <= threshold for s in singular_values)
    change = scaffold - small
    return max(min(change, max_width - width), min_width - width)


def prune_by_norm(model: nn.Sequential, producer: int, k: int) -> tuple[nn.Sequential, list[float]]:
    """Remove the ``k`` units of smallest norm ‖(W_l[i], b_l[i], W_{l+1}[:, i])‖ after ``model[producer]``.

    Not function-preserving for elementwise activations (the removed units' outputs are simply dropped).

    Returns:
        The new model and the removed units' norms.

    Examples:
        >>> m = build_mlp(4, (5,), 2, isotropic=False, generator=torch.Generator().manual_seed(0))
        >>> new, norms = prune_by_norm(m, 0, 2)
        >>> new[0].out_features, new[2].in_features, len(norms)
        (3, 3, 2)
    """
    import copy

    first, second = model[producer], model[producer + 2]
    assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)  # the unit's producer and consumer
    first_bias, second_bias = first.bias, second.bias
    assert isinstance(first_bias, torch.Tensor) and isinstance(second_bias, torch.Tensor)  # build_mlp's biases
    norms = (
        first.weight.detach().pow(2).sum(1) + first_bias.detach().pow(2) + second.weight.detach().pow(2).sum(0)
    ).sqrt()
    order = torch.argsort(norms, stable=True)
    keep = torch.sort(order[k:]).values
    new = copy.deepcopy(model)
    a = nn.Linear(first.in_features, len(keep), dtype=first.weight.dtype)
    b = nn.Linear(len(keep), second.out_features, dtype=second.weight.dtype)
    with torch.no_grad():
        a.weight.copy_(first.weight[keep])
        a.bias.copy_(first_bias[keep])
        b.weight.copy_(second.weight[:, keep])
        b.bias.copy_(second_bias)
    new[producer], new[producer + 2] = a, b
    return new, [float(v) for v in norms[order[:k]]]


def _producers(model: nn.Sequential) -> list[int]:
    linears = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    return linears[:-1]


def _singular_values(model: nn.Sequential, producer: int) -> list[float]:
    layer = model[producer]
    assert isinstance(layer, nn.Linear)  # see _producers
    w = layer.weight.detach().to(torch.float64)
    s = torch.linalg.svdvals(w)
    pad = w.shape[0] - len(s)  # more units than inputs: the extra singular values are 0
    return [*s.tolist(), *([0.0] * pad)]


@register("topology")
class Topology(Study):
    """Isotropic MLPs that grow and prune units (SVD surgery) vs fixed width vs a magnitude-pruned tanh control."""

    Config = TopologyConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "hidden": (6,),
            "steps": 120,
            "surgery_every": 30,
            "batch_size": 64,
            "lrs": (3e-3, 1e-2),
            "sweep_steps": 30,
            "min_width": 3,
            "max_width": 16,
            "log_every": 15,
        },
        # REFERENCE 5.9/6.2: MNIST, a wider start and a longer run (the author's code adapts widths on MNIST/CIFAR)
        "paper": {"dataset": "mnist", "hidden": (64, 64), "steps": 30_000, "surgery_every": 500, "batch_size": 48},
    }
    claims = (
        Claim(
            "grow-is-exact",
            "Neurogenesis (a zero producer row, a small consumer column) leaves the function unchanged",
            "Bird's code (REFERENCE 5.9: logits change <~ 1e-4 in fp32)",
            "-4 - log10(max |Δlogit| over the adaptive arm's grows), per seed",
        ),
        Claim(
            "scaffold-prune-is-nearly-free",
            "Pruning scaffold units (smallest singular values) of an isotropic net costs < 0.1 points of accuracy",
            "3rd-party (REFERENCE 6.2: 50% pruning costs < 0.1% accuracy)",
            "0.001 - max test-accuracy drop at an adaptive prune, per seed",
        ),
        Claim(
            "svd-prune-beats-magnitude-prune",
            "SVD pruning of isotropic nets hurts accuracy less than magnitude pruning of tanh nets",
            "3rd-party (REFERENCE 6.2: a scaffold unit is inert in iso nets but not under tanh)",
            "max accuracy drop at a prune (elementwise) - (adaptive), paired by seed",
        ),
    )

    def run(self, ctx) -> dict[str, Any]:
        from isotorch.params import grow, prune, symmetries

        config: TopologyConfig = ctx.config
        x, y, x_test, y_test = (t.to(ctx.device) for t in study_split(config))
        n_classes = int(max(y.max(), y_test.max())) + 1
        n_segments = math.ceil(config.steps / config.surgery_every)
        plan: dict[tuple[int, int], int] = {}  # (segment, producer) → units added (+) or removed (−) by "adaptive"
        finals: dict[str, Any] = {}

        def accuracy(model):
            with torch.no_grad():
                return float((model(x_test).argmax(1) == y_test).float().mean())

        def logits(model):
            with torch.no_grad():
                return model(x_test).to(torch.float64)

        chosen: dict[bool, float] = {}
        for arm in config.arms:
            isotropic = arm != "elementwise"

            def make(isotropic=isotropic):
                gen = torch.Generator().manual_seed(ctx.seed)
                return build_mlp(x.shape[1], config.hidden, n_classes, isotropic=isotropic, generator=gen).to(
                    ctx.device
                )

            if isotropic not in chosen:
                scores: dict[float, float] = {}
                lr = config.lrs[0]
                if len(config.lrs) > 1:
                    family = "isotropic" if isotropic else "elementwise"
                    lr, scores = select_lr(
                        ctx,
                        f"sweep/{family}",
                        make,
                        config.lrs,
                        x,
                        y,
                        steps=config.sweep_steps,
                        batch_size=config.batch_size,
                        weight_decay=config.weight_decay,
                    )
                chosen[isotropic] = lr
                ctx.log(0, run=arm, event="lr_sweep", lr=lr, scores={f"{k:g}": v for k, v in scores.items()})
            lr = chosen[isotropic]
            model = make()
            offset = 0
            surgeries = []
            for segment in range(n_segments):
                steps = min(config.surgery_every, config.steps - offset)
                opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)

                step = SupervisedStep(ctx, model, opt, x, y, batch_size=config.batch_size, offset=offset)

                def evaluate(t, model=model, offset=offset):
                    values: dict[str, Any] = {"global_step": offset + t, "test_acc": accuracy(model)}
                    for p in _producers(model):
                        sv = _singular_values(model, p)
                        values[f"width{p}"] = len(sv)
                        values[f"sv{p}"] = sv
                        values[f"scaffold{p}"] = sum(s <= config.threshold for s in sv)
                    return values

                log_steps = [*range(0, steps, config.log_every), steps]
                ctx.train(
                    f"{arm}/seg{segment}",
                    step,
                    steps,
                    state={"model": model, "opt": opt},
                    evaluate=evaluate,
                    log_steps=log_steps,
                )
                offset += steps
                if offset >= config.steps or arm == "fixed":
                    continue
                for p in _producers(model):
                    before_logits, before_acc, width = logits(model), accuracy(model), model[p].out_features
                    if arm == "adaptive":
                        change = adaptation(
                            _singular_values(model, p),
                            threshold=config.threshold,
                            scaffold=config.scaffold,
                            min_width=config.min_width,
                            max_width=config.max_width,
                        )
                        plan[segment, p] = change
                    else:
                        change = plan.get((segment, p), 0)
                    if change == 0:
                        continue
                    record: dict[str, Any] = {}
                    if change > 0:
                        gen = torch.Generator().manual_seed(1_000_003 * ctx.seed + 1009 * segment + p)
                        model = grow(model, str(p), change, x=x_test, scale=config.grow_scale, generator=gen)
                        action = "grow"
                    elif arm == "adaptive":
                        result = prune(model, str(p), -change, syms=symmetries(model, x_test))
                        model = result.model
                        record = {
                            "removed": list(result.removed),
                            "bound": result.bound,
                            "change": result.change,
                            "removed_bias": result.removed_bias,
                        }
                        action = "prune"
                    else:
                        model, norms = prune_by_norm(model, p, -change)
                        record = {"removed_norms": norms}
                        action = "prune"
                    after = logits(model)
                    entry = {
                        "action": action,
                        "site": p,
                        "k": abs(change),
                        "width_before": width,
                        "width_after": model[p].out_features,
                        "acc_before": before_acc,
                        "acc_after": accuracy(model),
                        "max_logit_change": float((after - before_logits).abs().max()),
                        **record,
                    }
                    surgeries.append(entry)
                    ctx.log(offset, run=f"{arm}/seg{segment}", event="surgery", arm=arm, **entry)
            ctx.save_model(arm, model, x_test[:32])
            finals.update(self._finals(arm, model, accuracy(model), surgeries))
            finals[f"{arm}/lr"] = lr
        return finals

    @staticmethod
    def _finals(arm: str, model: nn.Sequential, acc: float, surgeries: list[dict[str, Any]]) -> dict[str, Any]:
        grows = [s for s in surgeries if s["action"] == "grow"]
        prunes = [s for s in surgeries if s["action"] == "prune"]
        nan = float("nan")
        widths = [model[p].out_features for p in _producers(model)]
        return {
            f"{arm}/test_acc": acc,
            f"{arm}/width": sum(widths),
            f"{arm}/widths": widths,
            f"{arm}/grows": len(grows),
            f"{arm}/prunes": len(prunes),
            f"{arm}/grow_max_logit_change": max((s["max_logit_change"] for s in grows), default=nan),
            f"{arm}/prune_max_logit_change": max((s["max_logit_change"] for s in prunes), default=nan),
            f"{arm}/prune_max_acc_drop": max((s["acc_before"] - s["acc_after"] for s in prunes), default=nan),
            f"{arm}/prune_change_over_bound": max(
                (s["change"] / s["bound"] if s["bound"] > 0 else 0.0 for s in prunes if "bound" in s), default=nan
            ),
        }

    def verdicts(self, data) -> list[Verdict]:
        config: TopologyConfig = data.config

        def per_seed(arm: str, name: str) -> dict[int, float]:
            key = f"{arm}/{name}"
            return {s: number(f[key]) for s, f in data.finals.items() if key in f}

        never = (
            "{n} seed(s) had no {what} in the adaptive arm; longer training (steps) or more weight decay (which "
            "creates scaffold units to prune) would decide"
        )
        out = []
        if "adaptive" not in config.arms:
            reason = "needs the 'adaptive' arm"
            return [inconclusive(c, reason, seeds=data.seeds) for c in self.claims]
        grows = {s: -4 - math.log10(max(v, 1e-12)) for s, v in per_seed("adaptive", "grow_max_logit_change").items()}
        missing = sum(not math.isfinite(v) for v in grows.values())
        out.append(
            verdict_from_values(
                self.claims[0],
                grows,
                note=never.format(n=missing, what="grow") if missing else "largest |Δlogit| of any test logit",
            )
        )
        drops = per_seed("adaptive", "prune_max_acc_drop")
        missing = sum(not math.isfinite(v) for v in drops.values())
        extra = never.format(n=missing, what="prune") if missing else "largest test-accuracy drop at one prune"
        out.append(verdict_from_values(self.claims[1], {s: 0.001 - v for s, v in drops.items()}, note=extra))
        if "elementwise" not in config.arms:
            out.append(inconclusive(self.claims[2], "needs the 'elementwise' arm", seeds=data.seeds))
        else:
            out.append(paired_verdict(self.claims[2], per_seed("elementwise", "prune_max_acc_drop"), drops, note=extra))
        return [scale_hint(v, "more seeds, or a longer run with more surgeries, would decide") for v in out]

    def summarise(self, data) -> list[Findings]:
        config: TopologyConfig = data.config
        columns = {
            "width": "final total width",
            "test_acc": "final test accuracy",
            "grows": "grow surgeries",
            "prunes": "prune surgeries",
            "grow_max_logit_change": "max |Δlogit| at a grow",
            "prune_max_logit_change": "max |Δlogit| at a prune",
            "prune_max_acc_drop": "max accuracy drop at a prune",
            "prune_change_over_bound": "max Δpre-activation / bound (prune)",
            "lr": "learning rate (sweep)",
        }
        values = {
            arm: {
                label: [number(f[f"{arm}/{name}"]) for f in data.finals.values() if f"{arm}/{name}" in f]
                for name, label in columns.items()
            }
            for arm in config.arms
        }
        caption = (
            f"{config.dataset}, MLP with hidden widths {list(config.hidden)} at the start, AdamW at each family's "
            f"best learning rate among {', '.join(f'{lr:g}' for lr in config.lrs)} (per seed, a "
            f"{config.sweep_steps}-update sweep scored on a held-out 20% of the training set), wd "
            f"{config.weight_decay:g}, batch {config.batch_size}, {config.steps} updates in segments of "
            f"{config.surgery_every}. The optimiser state is RESET at every segment boundary in every arm (AdamW's "
            "second moment cannot be rotated exactly through the SVD that pruning applies). adaptive: keep "
            f"{config.scaffold} "
            f"scaffold units (σ ≤ {config.threshold:g}) per hidden site; elementwise: tanh net that follows the "
            "adaptive widths, pruned by smallest weight norm. |Δlogit| is the largest change of any test logit at "
            "one surgery; the bound is prune's bound on the consumer pre-activation change. 'n/a': no such surgery."
        )
        return [Findings.from_values("growing and pruning during training", values, caption=caption)]

    def figures(self, data, out: Path) -> list[Figure]:
        figures: list[Figure] = []

        config: TopologyConfig = data.config
        seed = data.seeds[0]
        colours = {arm: f"C{i}" for i, arm in enumerate(config.arms)}
        producers = [2 * i for i in range(len(config.hidden))]

        def rows(arm, s):
            out_rows = [r for r in data.select(seed=s) if str(r.get("run", "")).startswith(f"{arm}/seg")]
            return [r for r in out_rows if "global_step" in r]

        fig, (ax_w, ax_a) = subplots(1, 2, figsize=(12, 4))
        for arm in config.arms:
            for s in data.seeds:
                rs = rows(arm, s)
                if not rs:
                    continue
                t = [r["global_step"] for r in rs]
                kw = {"color": colours[arm], "lw": 1.5 if s == seed else 0.6, "alpha": 1 if s == seed else 0.5}
                for j, p in enumerate(producers):
                    if arm == "elementwise" and "adaptive" in config.arms:
                        break  # same widths as the adaptive arm by construction
                    ax_w.step(
                        t,
                        [r[f"width{p}"] for r in rs],
                        where="post",
                        ls=("-", "--", ":", "-.")[j % 4],
                        label=f"{arm} (hidden layer {j + 1})" if s == seed else None,
                        **kw,
                    )
                ax_a.plot(t, [r["test_acc"] for r in rs], label=arm if s == seed else None, **kw)
            for ev in data.select(seed=seed, event="surgery", arm=arm, action="prune"):
                ax_a.plot(ev["step"], ev["acc_after"], "v", color=colours[arm], ms=5)
        ax_w.set_xlabel("step")
        ax_w.set_ylabel("hidden width")
        ax_w.legend(fontsize=7)
        ax_w.grid(alpha=0.3)
        ax_a.set_xlabel("step")
        ax_a.set_ylabel("test accuracy")
        ax_a.legend(fontsize=8)
        ax_a.grid(alpha=0.3)
        figures.append(
            save_figure(
                fig,
                out,
                "width_accuracy.png",
                f"Left: width of each hidden layer against step (solid: first, dashed: second), one colour per "
                f"arm (seed {seed} bold, other seeds thin; the elementwise control has the adaptive arm's widths). "
                "Right: test accuracy against step; triangles: accuracy right after a prune (for the elementwise "
                "control the drop is not prevented by the surgery).",
            )
        )

        arms = [a for a in config.arms if a != "elementwise"] or list(config.arms)
        fig, axes = subplots(
            len(producers),
            len(arms),
            figsize=(5 * len(arms), 3.3 * len(producers)),
            dpi=110,
            squeeze=False,
            sharey="row",
        )
        for j, p in enumerate(producers):
            for ax, arm in zip(axes[j], arms, strict=True):
                for r in rows(arm, seed):
                    sv = np.maximum(np.array(r[f"sv{p}"]), 1e-4)
                    ax.plot([r["global_step"]] * len(sv), sv, ".", color=colours[arm], ms=2, alpha=0.6)
                ax.axhline(config.threshold, color="k", ls=":", lw=0.8)
                ax.set_yscale("log")
                ax.set_title(f"{arm}, hidden layer {j + 1}", fontsize=9)
                ax.set_xlabel("step")
                ax.grid(alpha=0.3)
            axes[j][0].set_ylabel("singular values of W (floored at 1e-4)")
        figures.append(
            save_figure(
                fig,
                out,
                "singular_values.png",
                f"Seed {seed}: singular values of each hidden layer's producer W_l over training (one dot per unit and "
                f"log step); dotted: the scaffold threshold {config.threshold:g}. Units at the bottom (floored at "
                "1e-4) are freshly grown or unused.",
            )
        )
        return figures
