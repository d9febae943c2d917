"""Study ``transformer_lmc``: linear mode connectivity between independently trained GPT-2s (REFERENCE §8.3).

Per seed s (one *seed pair*), two GPT-2-style models (Hugging Face ``GPT2LMHeadModel`` from a small config, random
init, no download; :func:`isotorch.studies._lm.gpt2`) are trained from different initialisations (init seeds 2s and
2s + 1) on one locally generated language (a random second-order Markov chain,
:func:`isotorch.studies._text.markov_language`, seeded by ``language_seed``, the same for all pairs) with AdamW on
the causal LM loss. By default the two models also see different batches (each model's batch t is a function of
its own init seed and t: independent training, as in Theus et al.); ``same_data_order=True`` gives both the pair's
batches (then only the initialisation differs).

After training, in float64, on held-out sequences, the loss along the linear path θ(λ) = (1 − λ)θ_A + λθ_B'
(:func:`isotorch.params.barrier`, ``alphas`` evenly spaced λ). The barrier is max_λ [L(λ) − ((1 − λ)L_A + λL_B)]
(the linear-interpolation convention of Frankle et al. and Entezari et al., which Theus et al. use: 0 under exact
linear connectivity even when L_A ≠ L_B); the max convention max_λ L(λ) − ½(L_A + L_B) is reported beside it. For B' =

- ``naive``: B as trained;
- ``permutation``: B aligned to A over permutations alone (:func:`isotorch.params.align` with
  ``group="permutation"``): the residual stream (of an unfolded GPT-2 its group is the permutations anyway: the
  LayerNorm gains are elementwise), the MLP's hidden units, the heads, and the coordinates inside each head's
  query–key and value–output spaces;
- ``folded``: both models folded (:func:`isotorch.params.fold_norms`: gains and biases into the readers, a mean-free
  stream, gain-free norms: the stream's group is O(d)), not aligned: what the fold alone does to the path;
- ``full``: both folded, then B aligned to A with the default groups: an orthogonal map of the residual stream, MLP
  permutations, head permutations solved jointly with orthogonal per-head query–key and value–output maps;
- ``full_gl``: as ``full`` but with invertible (general linear) per-head maps, fitted by least squares on the
  weights (Theus et al.'s per-head maps are invertible; weight matching can only fit them by a regression).

What each symmetry class contributes: the full alignment's element applied class by class, cumulatively, to folded
B: ``stream`` (the stream rotation alone), ``stream+mlp`` (and the MLP permutations), ``stream+mlp+heads`` (and the
head permutations, the per-head maps left out); the last class (per-head maps) completes ``full``. This attributes
one joint solution; it is not a separate optimisation per class. Weight matching (data-free) by default;
``activation_matching=True`` adds ``full_activations`` (stream and MLP matched on activations of training-language
sequences, attention by weights given the matched stream).

Claims (paired by seed pair; t-intervals over pairs; REFERENCE §9): the fully aligned barrier is below the naive one;
it is at most half of it; the full alignment (orthogonal stream, heads with per-head maps) beats permutation-only
alignment.
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

from isotorch.studies._config import check_positive
from isotorch.studies._figures import cmap, save_figure, subplots
from isotorch.studies._lm import LMStep, check_lm_config, gpt2, language_of, lm_evaluation, next_token_loss
from isotorch.studies._registry import Study, register
from isotorch.studies._stats import Figure, Findings, number
from isotorch.studies._verdicts import Claim, paired_verdict, verdict_from_values

__all__ = ["CLASSES", "METHODS", "TransformerLMC", "TransformerLMCConfig", "pair_barriers"]

#: symmetry classes in the order the ablation adds them: (method name, site kinds it adds)
CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stream", ("residual",)),
    ("stream+mlp", ("hidden",)),
    ("stream+mlp+heads", ("heads", "query_group")),
)
#: the interpolation methods, in the order they are reported
METHODS = ("naive", "permutation", "folded", *(name for name, _ in CLASSES), "full", "full_gl", "full_activations")
_DESCRIPTIONS = {
    "naive": "no alignment",
    "permutation": "permutations at every site",
    "folded": "norms folded, no alignment",
    "stream": "folded; stream rotation only",
    "stream+mlp": "folded; stream + MLP permutations",
    "stream+mlp+heads": "folded; stream + MLP + head permutations",
    "full": "folded; stream + MLP + heads + per-head maps",
    "full_gl": "folded; full with invertible per-head maps",
    "full_activations": "folded; full, activation matching",
}


@dataclass(frozen=True)
class TransformerLMCConfig:
    """Settings of the ``transformer_lmc`` study (see the module docstring)."""

    vocab_size: int = 16
    sharpness: float = 2.0
    language_seed: int = 0
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    seq_len: int = 64
    batch_size: int = 32
    steps: int = 500
    lr: float = 3e-3
    same_data_order: bool = False
    eval_seqs: int = 64
    alphas: int = 11
    max_iter: int = 100
    activation_matching: bool = False
    activation_seqs: int = 32

    def __post_init__(self):
        check_lm_config(self, ints=("max_iter", "activation_seqs"))
        if self.alphas < 3 or self.alphas % 2 == 0:
            raise ValueError(f"alphas must be an odd int >= 3 (λ = ½ on the grid), got {self.alphas!r}")
        check_positive(self, floats=("sharpness", "lr"))


class _Logits(nn.Module):
    """A causal LM as a tokens → logits module (what :func:`isotorch.params.barrier` evaluates)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens).logits


def _barrier(model_a: nn.Module, model_b: nn.Module, tokens: torch.Tensor, alphas: int) -> dict[str, Any]:
    from isotorch.params import barrier

    r = barrier(_Logits(model_a), _Logits(model_b), next_token_loss, (tokens, tokens), steps=alphas)
    sa = torch.cat([p.detach().flatten() for p in model_a.parameters()])
    sb = torch.cat([p.detach().flatten() for p in model_b.parameters()])
    return {
        "barrier": r.barrier_linear,
        "barrier_max": r.barrier,
        "midpoint": r.midpoint,
        "distance": float((sa - sb).norm()),
        "losses": list(r.losses),
    }


def pair_barriers(
    model_a: nn.Module,
    model_b: nn.Module,
    tokens: torch.Tensor,
    *,
    alphas: int = 11,
    max_iter: int = 100,
    activation_tokens: torch.Tensor | None = None,
) -> dict[str, dict[str, Any]]:
    """The loss along the linear path from A to B under each alignment method (see the module docstring).

    Args:
        model_a, model_b: two trained GPT-2-style causal LMs of one configuration (copied; float64 inside).
        tokens: held-out (N, T) int64 token sequences the loss is measured on.
        alphas: the number of evenly spaced λ in [0, 1] (odd, so λ = ½ is on the grid).
        max_iter: the most coordinate-descent rounds of weight matching.
        activation_tokens: sequences for activation matching (adds ``full_activations``); ``None``: weights only.

    Returns:
        ``{method: {"barrier", "barrier_max", "midpoint", "distance", "losses"}}`` (barrier: the linear
        convention, barrier_max: max_λ L(λ) − ½(L_A + L_B), midpoint: L(½) − ½(L_A + L_B)) in the order of
        :data:`METHODS` (``full_gl`` where the model has per-head maps, ``full_activations`` only with
        ``activation_tokens``); ``"distance"`` is ‖θ_A − θ_B'‖ and ``"losses"`` the loss at each λ.
    """
    from isotorch.params import Element, align, fold_norms, symmetries, transform

    a = copy.deepcopy(model_a).double().eval()
    b = copy.deepcopy(model_b).double().eval()
    x = tokens[:2, : min(16, tokens.shape[1])]
    out: dict[str, dict[str, Any]] = {"naive": _barrier(a, b, tokens, alphas)}
    perm = align(a, b, x=x, group="permutation", max_iter=max_iter, generator=_order())
    out["permutation"] = _barrier(a, perm.model, tokens, alphas)
    out["permutation"]["skipped"] = len(perm.skipped)
    fa, fb = fold_norms(a, x), fold_norms(b, x)
    out["folded"] = _barrier(fa, fb, tokens, alphas)
    syms = symmetries(fa, x)
    full = align(fa, fb, x=x, syms=syms, max_iter=max_iter, generator=_order())
    kinds: set[str] = set()
    for name, added in CLASSES:
        kinds |= set(added)
        part = {n: g for n, g in full.element.matrices.items() if syms[n].kind in kinds}
        out[name] = _barrier(fa, transform(fb, Element(syms, part)), tokens, alphas)
    out["full"] = _barrier(fa, full.model, tokens, alphas)
    out["full"]["groups"] = sorted(set(full.groups.values()))
    per_head = {s.name: "general_linear" for s in syms if s.kind in ("query_key", "value_output") and s.free}
    if per_head:
        gl = align(fa, fb, x=x, syms=syms, group=per_head, max_iter=max_iter, generator=_order())
        out["full_gl"] = _barrier(fa, gl.model, tokens, alphas)
    if activation_tokens is not None:
        act = align(fa, fb, method="activations", data=activation_tokens, x=x, syms=syms, generator=_order())
        out["full_activations"] = _barrier(fa, act.model, tokens, alphas)
    return out


def _order() -> torch.Generator:
    """The fixed generator of align's random site order: the same for every pair, so a pair's barriers depend on
    its two models alone (not on how many draws the unit made before)."""
    return torch.Generator().manual_seed(0)


_SOURCE = "Theus et al., Generalized Linear Mode Connectivity for Transformers (NeurIPS 2025); REFERENCE §8.3"
_CLAIMS = (
    Claim(
        "aligned-below-naive",
        "Aligning one independently trained transformer to another by its parameter symmetries lowers the loss "
        "barrier on the linear path between them",
        _SOURCE,
        "barrier (nats, linear convention): naive − full alignment, paired by seed pair",
    ),
    Claim(
        "aligned-half-naive",
        "The fully aligned barrier is at most half the naive barrier (the issue's target at 2 layers × 64)",
        _SOURCE,
        "naive barrier / 2 − full-alignment barrier (nats, linear convention), per seed pair",
    ),
    Claim(
        "full-beats-permutation",
        "Alignment over the transformer's full symmetry group (orthogonal residual stream after folding the norms, "
        "heads with per-head maps) gives a lower barrier than alignment over permutations alone",
        _SOURCE,
        "barrier (nats, linear convention): permutation-only − full alignment, paired by seed pair",
    ),
)


@register("transformer_lmc")
class TransformerLMC(Study):
    """Loss barriers between independently trained GPT-2s: naive, permutation-only, full (folded, rotated) alignment."""

    Config = TransformerLMCConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "vocab_size": 8,
            "n_layer": 1,
            "n_embd": 16,
            "n_head": 2,
            "seq_len": 16,
            "batch_size": 8,
            "steps": 40,
            "eval_seqs": 16,
            "alphas": 5,
            "max_iter": 20,
            "activation_matching": True,
            "activation_seqs": 8,
        },
        # Theus et al.'s GPT-2 scale is beyond a CPU: a wider, deeper model trained longer (for a GPU)
        "paper": {
            "vocab_size": 128,
            "n_layer": 4,
            "n_embd": 256,
            "n_head": 8,
            "seq_len": 128,
            "batch_size": 64,
            "steps": 20000,
            "eval_seqs": 256,
            "alphas": 21,
            "activation_matching": True,
            "activation_seqs": 128,
        },
    }
    claims = _CLAIMS

    def run(self, ctx) -> dict[str, Any]:
        config: TransformerLMCConfig = ctx.config
        language = language_of(config)
        gen = torch.Generator().manual_seed(31337 + ctx.seed)
        eval_tokens = language.sample(config.eval_seqs, config.seq_len, generator=gen)
        act_tokens = language.sample(config.activation_seqs, config.seq_len, generator=gen)
        finals: dict[str, Any] = {"loss_bound": language.loss_lower_bound(config.seq_len)}
        models = []
        for which, init_seed in (("a", 2 * ctx.seed), ("b", 2 * ctx.seed + 1)):
            model = gpt2(
                config.vocab_size,
                n_layer=config.n_layer,
                n_embd=config.n_embd,
                n_head=config.n_head,
                n_positions=config.seq_len,
                seed=init_seed,
            ).to(ctx.device)
            opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
            data_seed = ctx.seed if config.same_data_order else init_seed
            step = LMStep(
                model, opt, language, batch_size=config.batch_size, seq_len=config.seq_len, data_seed=data_seed
            )
            ctx.train(
                f"model={which}",
                step,
                config.steps,
                state={"model": model, "opt": opt},
                evaluate=lm_evaluation(model, eval_tokens),
                log_every=max(1, config.steps // 10),
            )
            models.append(model.eval().cpu())
        result = pair_barriers(
            models[0],
            models[1],
            eval_tokens,
            alphas=config.alphas,
            max_iter=config.max_iter,
            activation_tokens=act_tokens if config.activation_matching else None,
        )
        finals["loss_a"] = result["naive"]["losses"][0]
        finals["loss_b"] = result["naive"]["losses"][-1]
        for method, values in result.items():
            ctx.log(config.steps, run="pair", event="path", method=method, **values)
            for key in ("barrier", "barrier_max", "midpoint", "distance"):
                finals[f"{method}/{key}"] = values[key]
        finals["permutation/skipped_sites"] = result["permutation"]["skipped"]
        return finals

    # ------------------------------------------------------------------------------------------------------------

    def _methods(self, data) -> list[str]:
        first: dict[str, Any] = next(iter(data.finals.values()), {})
        return [m for m in METHODS if f"{m}/barrier" in first]

    def summarise(self, data) -> list[Findings]:
        config: TransformerLMCConfig = data.config

        def column(key: str) -> list[float]:
            return [number(f[key]) for f in data.finals.values() if f.get(key) is not None]

        naive = {s: f["naive/barrier"] for s, f in data.finals.items()}
        rows = {}
        for m in self._methods(data):
            rows[f"{m} ({_DESCRIPTIONS[m]})"] = {
                "barrier (nats)": column(f"{m}/barrier"),
                "barrier / naive": [f[f"{m}/barrier"] / naive[s] for s, f in data.finals.items() if naive[s] > 0],
                "barrier, max conv. (nats)": column(f"{m}/barrier_max"),
                "midpoint (nats)": column(f"{m}/midpoint"),
                "‖θ_A − θ_B'‖": column(f"{m}/distance"),
            }
        order = "the same batches" if config.same_data_order else "different batches (each its own data order)"
        bound, ends = column("loss_bound"), column("loss_a") + column("loss_b")
        table = Findings.from_values(
            "loss barriers on the linear path between two GPT-2s, by alignment",
            rows,
            caption=(
                f"Pairs of GPT-2 {config.n_layer} × {config.n_embd} ({config.n_head} heads), trained from different "
                f"initialisations on {order}, {config.steps} AdamW steps (lr {config.lr:g}, batch "
                f"{config.batch_size} × {config.seq_len} tokens) on a second-order Markov language of "
                f"{config.vocab_size} tokens (end-point loss {np.mean(ends):.3f} nats; the language's bound "
                f"{np.mean(bound):.3f}, uniform {math.log(config.vocab_size):.3f}). Barrier = max over "
                f"{config.alphas} λ of L(λ) − ((1−λ)L_A + λL_B) on {config.eval_seqs} held-out sequences, float64; "
                "max convention: max_λ L(λ) − ½(L_A + L_B). Rows stream … stream+mlp+heads apply the full "
                "(weight-matching) solution class by class. Mean ± 95% CI over seed pairs."
            ),
        )
        return [table]

    def verdicts(self, data) -> list:
        claims = {c.name: c for c in self.claims}

        def per_seed(key: str) -> dict[int, float]:
            return {s: float(f.get(key, math.nan)) for s, f in data.finals.items()}

        naive, full, perm = per_seed("naive/barrier"), per_seed("full/barrier"), per_seed("permutation/barrier")
        ratio = [full[s] / naive[s] for s in naive if naive[s] > 0]
        note = (
            f"full barrier {np.mean(list(full.values())):.3g} nats = {100 * np.mean(ratio):.0f}% of naive "
            f"({np.mean(list(naive.values())):.3g})"
            if ratio
            else ""
        )
        return [
            paired_verdict(claims["aligned-below-naive"], naive, full, note=note),
            verdict_from_values(
                claims["aligned-half-naive"], {s: naive[s] / 2 - full[s] for s in naive}, note="paired by seed pair"
            ),
            paired_verdict(claims["full-beats-permutation"], perm, full),
        ]

    def figures(self, data, out: Path) -> list[Figure]:
        figures: list[Figure] = []

        from isotorch.studies._stats import mean_ci

        config: TransformerLMCConfig = data.config
        methods = self._methods(data)
        colours = dict(zip(METHODS, cmap("tab10", len(METHODS)), strict=True))
        lambdas = np.linspace(0.0, 1.0, config.alphas)

        # 1. the excess loss along λ per method (above the line between the end points): mean and range over pairs
        fig, ax = subplots(figsize=(7.5, 4.2))
        for m in methods:
            curves = []
            for s in data.seeds:
                rows = data.select(seed=s, event="path", method=m)
                if rows:
                    curves.append(rows[-1]["losses"])
            if not curves:
                continue
            c = np.asarray(curves, dtype=float)
            c = c - ((1 - lambdas) * c[:, :1] + lambdas * c[:, -1:])
            ax.plot(lambdas, c.mean(0), color=colours[m], marker=".", lw=1.5, label=m)
            ax.fill_between(lambdas, c.min(0), c.max(0), color=colours[m], alpha=0.12, lw=0)
        ax.axhline(0.0, color="0.3", lw=0.8)
        ax.set_xlabel("λ  (θ = (1 − λ)·θ_A + λ·θ_B')")
        ax.set_ylabel("L(λ) − ((1−λ)L_A + λL_B)  (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        n = len(data.seeds)
        figures.append(
            save_figure(
                fig,
                out,
                "barrier_curves.png",
                f"Held-out LM loss along the linear path from model A (λ = 0) to model B' (λ = 1) above the straight "
                f"line between the end points (its maximum is the barrier), per alignment method; line: mean over "
                f"{n} seed pairs, band: their range. naive: B as trained; permutation: B "
                "aligned over permutations; folded: both norm-folded, not aligned; stream, stream+mlp, "
                "stream+mlp+heads: the full solution applied class by class; full: orthogonal stream, MLP "
                "permutations, heads with orthogonal per-head maps.",
            )
        )

        # 2. barrier per method: mean ± 95% CI over seed pairs, each pair a dot
        fig, ax = subplots(figsize=(8, 3.8))
        for i, m in enumerate(methods):
            values = [number(f[f"{m}/barrier"]) for f in data.finals.values()]
            est = mean_ci(values)
            err = est.ci95 if math.isfinite(est.ci95) else 0.0
            ax.bar(i, est.mean, 0.7, yerr=err, color=colours[m], capsize=3)
            ax.plot(np.full(len(values), i), values, "k.", ms=4)
        ax.axhline(0.0, color="0.3", lw=0.8)
        ax.set_xticks(np.arange(len(methods)), methods, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("loss barrier (nats)")
        ax.grid(alpha=0.3, axis="y")
        figures.append(
            save_figure(
                fig,
                out,
                "barriers.png",
                f"Loss barrier max_λ [L(λ) − ((1−λ)L_A + λL_B)] per method; bars: mean over {n} seed pairs, "
                "whiskers: 95% t-interval, dots: the pairs. 0 is linear mode connectivity.",
            )
        )
        return figures
