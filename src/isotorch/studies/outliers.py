"""Study ``outliers``: outlier channels of a small GPT-2's residual stream, and rotating them away (REFERENCE §8.2–8.3).

Per seed and variant, a GPT-2-style model (Hugging Face ``GPT2LMHeadModel`` from a small config, random init, no
download; :func:`isotorch.studies._lm.gpt2`) is trained on a locally generated language (a random second-order Markov
chain, :func:`isotorch.studies._text.markov_language`; one language for the whole run, seeded by ``language_seed``)
with the causal LM loss. The variants of a seed share the initial weights of every layer they have in common and
see the same batches. Variants, i.e. the primitives that act on the residual stream's basis "where the model allows":

- ``elementwise``: GPT-2 as it is: GELU on the MLP's 4d hidden units, LayerNorm with a per-channel gain and bias on
  the stream, AdamW (per-coordinate second moments);
- ``isotropic``: :class:`~isotorch.nn.IsoTanh` on the MLP's hidden units (``families.get("isotropic")``), a gain-free
  RMSNorm on the stream (O(d)-equivariant; REFERENCE §2.3) and :class:`~isotorch.optim.IsoAdam` (one second moment
  per tensor: a rotation-equivariant update);
- ``isotropic_adamw``: the isotropic primitives trained with AdamW (separates the optimiser's part).

"Where the model allows": the stream's basis is touched only by the norms (their gains), the MLP activation (on the
hidden units, which the down projection writes into the stream) and the optimiser. The embeddings (a lookup of
stream vectors), the attention softmax (over tokens, not channels) and the head split (a block structure of the q/k/v
space, not of the stream) have no basis on the stream to swap. ChiNorm, the isotropic family's default normaliser,
is not used: its batch statistic couples all tokens of a training batch (future tokens included).

After training, in float64, on held-out token sequences:

1. **outliers of the residual stream** (:func:`isotorch.probes.outliers`) at every norm's input (the stream before
   each ``ln_1``, ``ln_2`` and ``ln_f``): per-token max|h|/rms(h), per-channel Pearson kurtosis, the fraction of
   outlier channels (rms > ``outlier_threshold`` × the median channel rms); and the **basis alignment** of the
   final stream (:func:`isotorch.probes.alignment_score`: signed 4-fold statistic A, + for mass on the axes, with
   its Haar-random-basis null);
2. **fold and rotate** (:func:`isotorch.params.fold_norms`, then :func:`isotorch.params.transform` of the stream site
   of :func:`isotorch.params.symmetries`): conditions ``original``, ``folded`` (gain-free norms, mean-free stream),
   and folded + rotated by ``hadamard`` (randomised Hadamard, QuaRot; where d has a Hadamard matrix), ``haar`` (a
   Haar-random orthogonal matrix) and ``learned`` (:func:`isotorch.params.learn_rotation`: SpinQuant-style Cayley
   descent of the per-token int4 error of the norm outputs on a *calibration* batch, initialised at the Hadamard
   rotation or at Haar where d has none; the other measurements use different, held-out sequences);
3. per condition: simulated symmetric round-to-nearest quantise–dequantise error ‖x − Q_b(x)‖²/‖x‖²
   (:func:`isotorch.probes.fake_quantise`) of the **activations** that the stream's readers quantise (the norm
   outputs, per-token scales), of the stream itself, and of every weight (per output channel;
   :func:`isotorch.probes.weight_quantisation`); the LM-loss increase when the readers' inputs (c_attn, c_fc,
   lm_head) are quantised per token (A4/A8), or every weight per output channel (W4); and max|Δlogits| against the
   original model (the function must be unchanged: float64 round-off).

Claims (verdicts paired by seed over ≥ 2 seeds; REFERENCE §9): rotation lowers the int4 activation error (folded vs
Hadamard-rotated; QuaRot) and the int4 loss increase; the learned rotation beats Hadamard and Hadamard beats Haar on
held-out tokens (SpinQuant); the elementwise model has heavier-tailed stream channels and a more basis-aligned stream
than the isotropic one (Isotropic Deep Learning; Elhage et al. 2023 attribute the privileged basis to Adam).
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
from isotorch.studies._verdicts import Claim, inconclusive, paired_verdict

__all__ = ["CONDITIONS", "VARIANTS", "Outliers", "OutliersConfig", "analyse_model", "build_model"]

#: variant → (MLP activation family, stream norm, optimiser)
VARIANTS: dict[str, tuple[str | None, str, str]] = {
    "elementwise": (None, "layer_norm", "adamw"),
    "isotropic": ("isotropic", "rms_norm", "iso_adam"),
    "isotropic_adamw": ("isotropic", "rms_norm", "adamw"),
}
_DESCRIPTIONS = {
    "elementwise": "GELU, LayerNorm, AdamW",
    "isotropic": "IsoTanh, gain-free RMSNorm, IsoAdam",
    "isotropic_adamw": "IsoTanh, gain-free RMSNorm, AdamW",
}
#: the fold/rotation conditions, in order
CONDITIONS = ("original", "folded", "hadamard", "haar", "learned")


@dataclass(frozen=True)
class OutliersConfig:
    """Settings of the ``outliers`` study (see the module docstring)."""

    variants: tuple[str, ...] = ("elementwise", "isotropic")
    vocab_size: int = 16
    sharpness: float = 2.0
    language_seed: int = 0
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    seq_len: int = 64
    batch_size: int = 32
    steps: int = 800
    lr: float = 3e-3
    lr_iso_adam: float = 3e-3
    weight_decay: float = 0.0
    eval_seqs: int = 64
    calib_seqs: int = 32
    learn_steps: int = 100
    learn_lr: float = 1e-2
    align_samples: int = 2000
    n_bootstrap: int = 200
    n_null: int = 19
    outlier_threshold: float = 5.0

    def __post_init__(self):
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be a non-empty tuple of distinct names, got {self.variants!r}")
        for name in self.variants:
            if name not in VARIANTS:
                raise ValueError(f"variants: {name!r} is not one of {', '.join(VARIANTS)}")
        check_lm_config(self, ints=("calib_seqs",))
        for name in ("learn_steps", "n_null"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative int, got {getattr(self, name)!r}")
        if self.align_samples < 10 or self.n_bootstrap < 2:
            raise ValueError("align_samples must be >= 10 and n_bootstrap >= 2")
        check_positive(self, floats=("sharpness", "lr", "lr_iso_adam", "learn_lr", "outlier_threshold"))
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a non-negative float, got {self.weight_decay!r}")


def build_model(config: OutliersConfig, variant: str, seed: int) -> nn.Module:
    """The variant's GPT-2 (float32, eval mode); every variant of a seed has the same initial linear weights."""
    family, norm, _ = VARIANTS[variant]
    model = gpt2(
        config.vocab_size,
        n_layer=config.n_layer,
        n_embd=config.n_embd,
        n_head=config.n_head,
        n_positions=config.seq_len,
        family=family,
        seed=seed,
    )
    if norm == "rms_norm":
        d = config.n_embd
        stack: Any = model.transformer  # transformers' GPT-2 stack: blocks h with ln_1 and ln_2, then ln_f
        for block in stack.h:
            block.ln_1 = nn.RMSNorm(d, eps=block.ln_1.eps, elementwise_affine=False)
            block.ln_2 = nn.RMSNorm(d, eps=block.ln_2.eps, elementwise_affine=False)
        stack.ln_f = nn.RMSNorm(d, eps=stack.ln_f.eps, elementwise_affine=False)
    return model


def _optimiser(config: OutliersConfig, variant: str, model: nn.Module) -> torch.optim.Optimizer:
    if VARIANTS[variant][2] == "iso_adam":
        from isotorch.optim import IsoAdam

        return IsoAdam(model.parameters(), lr=config.lr_iso_adam, weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _stream_site(syms):
    streams = [s for s in syms if s.kind == "residual"]
    if len(streams) != 1:
        raise RuntimeError(f"expected one residual stream site, found {[s.name for s in streams]}")
    return streams[0]


@torch.no_grad()
def _capture(model: nn.Module, tokens: torch.Tensor, norms: list[str]):
    """(logits, {norm: stream input (N, d)}, {norm: norm output (N, d)}) on ``tokens``."""
    inputs, outputs, hooks = {}, {}, []
    modules = dict(model.named_modules())
    for name in norms:

        def hook(module, args, out, name=name):
            inputs[name] = args[0].detach().flatten(0, -2)
            outputs[name] = out.detach().flatten(0, -2)

        hooks.append(modules[name].register_forward_hook(hook))
    try:
        logits = model(input_ids=tokens).logits
    finally:
        for h in hooks:
            h.remove()
    return logits, inputs, outputs


@torch.no_grad()
def _loss_with_quantised_inputs(model: nn.Module, tokens: torch.Tensor, readers: list[str], bits: int) -> float:
    from isotorch.probes import fake_quantise

    modules = dict(model.named_modules())
    hooks = [
        modules[r].register_forward_pre_hook(lambda m, args: (fake_quantise(args[0], bits, dim=-1), *args[1:]))
        for r in readers
    ]
    try:
        return float(next_token_loss(model(input_ids=tokens).logits, tokens))
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def _loss_with_quantised_weights(model: nn.Module, tokens: torch.Tensor, bits: int) -> float:
    from isotorch.probes import fake_quantise
    from isotorch.probes._outliers import _input_axis

    twin = copy.deepcopy(model)
    seen = set()
    for module in twin.modules():
        axis = _input_axis(module)
        w = getattr(module, "weight", None)
        if axis is None or not isinstance(w, torch.Tensor) or w.ndim != 2 or id(w) in seen:
            continue
        seen.add(id(w))
        w.copy_(fake_quantise(w, bits, dim=axis))
    return float(next_token_loss(twin(input_ids=tokens).logits, tokens))


def _pooled_error(mats: list[torch.Tensor], bits: int) -> float:
    """Σ‖x − Q_b(x)‖² / Σ‖x‖² over the points (per-token scales)."""
    from isotorch.probes import fake_quantise

    num = sum(float((x - fake_quantise(x, bits, dim=-1)).pow(2).sum()) for x in mats)
    den = sum(float(x.pow(2).sum()) for x in mats)
    return num / den


def _finite_max(values: torch.Tensor) -> float:
    """The largest finite value (a rotated mean-free stream has one constant channel: the 𝟙 direction)."""
    return float(values[torch.isfinite(values)].max())


def _measure(model, tokens, norms, readers, reference_logits) -> dict[str, Any]:
    """Quantisation errors, loss increases and the function check of one condition."""
    from isotorch.probes import channel_kurtosis, max_rms_ratio, weight_quantisation

    logits, streams, acts = _capture(model, tokens, norms)
    kurtosis = torch.cat([channel_kurtosis(h) for h in streams.values()])
    loss = float(next_token_loss(logits, tokens))
    weights = weight_quantisation(model, bits=(8, 4))
    final = acts[norms[-1]]
    return {
        "loss": loss,
        "act_err8": _pooled_error(list(acts.values()), 8),
        "act_err4": _pooled_error(list(acts.values()), 4),
        "stream_err4": _pooled_error(list(streams.values()), 4),
        "weight_err8": weights.total[8],
        "weight_err4": weights.total[4],
        "dloss_a8": _loss_with_quantised_inputs(model, tokens, readers, 8) - loss,
        "dloss_a4": _loss_with_quantised_inputs(model, tokens, readers, 4) - loss,
        "dloss_w4": _loss_with_quantised_weights(model, tokens, 4) - loss,
        "stream_log10_max_kurtosis": float(
            np.mean([math.log10(_finite_max(channel_kurtosis(h))) for h in streams.values()])
        ),
        "act_max_rms": float(torch.cat([max_rms_ratio(a, -1) for a in acts.values()]).nanmean()),
        "max_dlogits": float((logits - reference_logits).abs().max()),
        "rel_dlogits": float((logits - reference_logits).norm() / reference_logits.norm()),
        # for the figures: each channel's max |h| over tokens of the final norm's output, over its overall rms
        "channel_absmax": (final.abs().amax(0) / final.pow(2).mean().sqrt()).tolist(),
        "kurtosis": kurtosis[torch.isfinite(kurtosis)].tolist(),
    }


def analyse_model(
    model: nn.Module,
    eval_tokens: torch.Tensor,
    calib_tokens: torch.Tensor,
    *,
    seed: int,
    learn_steps: int = 100,
    learn_lr: float = 1e-2,
    align_samples: int = 2000,
    n_bootstrap: int = 200,
    n_null: int = 19,
    outlier_threshold: float = 5.0,
) -> dict[str, Any]:
    """Outliers, alignment, fold and rotations of a trained GPT-2 (see the module docstring), all in float64.

    Returns ``{"outliers": {...}, "conditions": {condition: {...}}, "rotations": {...}}``; a condition that the
    model does not allow (Hadamard for a d without a Hadamard matrix) is ``None``. Each rotation Q is applied to
    the stream as h ↦ h·Q (the element Qᵀ of the stream site: writers W_out ← QᵀW_out, readers W_in ← W_in·Q).
    """
    from isotorch import groups
    from isotorch.params import Element, fold_norms, learn_rotation, random_hadamard, symmetries, transform
    from isotorch.probes import alignment_score, outliers

    model = copy.deepcopy(model).double().eval()
    gen = torch.Generator().manual_seed(7919 + seed)
    folded, report = fold_norms(model, eval_tokens[:2, :16], return_report=True)
    syms = symmetries(folded, eval_tokens[:2, :16])
    stream = _stream_site(syms)
    d = stream.size
    norms = [n.name for n in stream.norms]
    readers = list(dict.fromkeys(r for n in stream.norms for r in n.readers))
    reference, streams, _ = _capture(model, eval_tokens, norms)

    # 1. outliers and alignment of the trained model's stream
    stats = [outliers(streams[n], threshold=outlier_threshold) for n in norms]
    kurt = [k for s in stats for k in s.channel_kurtosis if k is not None]
    max_kurt = [k for s in stats if (k := s.max_kurtosis) is not None]
    if len(max_kurt) != len(stats):
        raise RuntimeError("a norm of the trained model reads a stream whose channels are all constant")
    final = streams[norms[-1]]
    rows = torch.randperm(final.shape[0], generator=gen)[:align_samples]
    align = alignment_score(
        final[rows], n_bootstrap=n_bootstrap, n_null=n_null, generator=torch.Generator().manual_seed(seed)
    )
    out_stats = {
        "token_max_rms": float(np.mean([s.token_max_rms_mean for s in stats])),
        "max_kurtosis": float(np.mean(max_kurt)),
        "log10_max_kurtosis": float(np.mean([math.log10(k) for k in max_kurt])),
        "outlier_fraction": float(np.mean([len(s.outlier_channels) / d for s in stats])),
        "kurtosis": kurt,
        "align": align.value,
        "align_lo": align.ci_low,
        "align_hi": align.ci_high,
        "align_null": align.null_mean,
        "align_null_sd": align.null_sd,
        "align_p": align.p_value,
        "align_higher_order": align.components["higher_order"]["value"],
    }

    # 2. rotations of the folded stream
    rotations: dict[str, torch.Tensor | None] = {}
    try:
        rotations["hadamard"] = random_hadamard(d, generator=gen)
    except ValueError:
        rotations["hadamard"] = None  # no Hadamard matrix of this size
    haar = groups.get("orthogonal").sample(d, generator=gen, dtype=torch.float64)
    rotations["haar"] = haar
    _, _, calib_acts = _capture(folded, calib_tokens, norms)
    calib = torch.cat(list(calib_acts.values()))
    hadamard = rotations["hadamard"]
    init = hadamard if hadamard is not None else haar
    learned = learn_rotation(calib, bits=4, init=init, steps=learn_steps, lr=learn_lr, generator=gen)
    rotations["learned"] = learned.matrix

    conditions: dict[str, dict[str, Any] | None] = {
        "original": _measure(model, eval_tokens, norms, readers, reference),
        "folded": _measure(folded, eval_tokens, norms, readers, reference),
    }
    for name, q in rotations.items():
        if q is None:
            conditions[name] = None
            continue
        rotated = transform(folded, Element(syms, {stream.name: q.T.contiguous()}))
        conditions[name] = _measure(rotated, eval_tokens, norms, readers, reference)
    return {
        "outliers": out_stats,
        "conditions": conditions,
        "rotations": {
            "d": d,
            "hadamard": rotations["hadamard"] is not None,
            "learned_calib_error": learned.error,
            "learned_init_error": learned.initial_error,
            "fold": report.to_dict(),
        },
    }


_CLAIMS = (
    Claim(
        "rotation-lowers-int4-error",
        "Rotating the folded residual stream by a randomised Hadamard matrix lowers the int4 per-token quantisation "
        "error of the activations the stream's readers quantise",
        "QuaRot (Ashkboos et al. 2024), SliceGPT; REFERENCE §8.3",
        "log10 int4 error of the norm outputs: folded − Hadamard-rotated, elementwise model, held-out tokens",
    ),
    Claim(
        "rotation-lowers-int4-loss",
        "Rotating the folded stream by a randomised Hadamard matrix lowers the LM-loss increase under int4 "
        "per-token quantisation of the readers' inputs",
        "QuaRot (Ashkboos et al. 2024); REFERENCE §8.3",
        "LM-loss increase with A4 reader inputs (nats): folded − Hadamard-rotated, elementwise model",
    ),
    Claim(
        "learned-beats-hadamard",
        "A rotation learned on a calibration batch (Cayley descent) quantises held-out activations better than the "
        "randomised Hadamard rotation it starts from",
        "SpinQuant (Liu et al. 2024); REFERENCE §8.3",
        "log10 int4 activation error: Hadamard − learned, elementwise model, held-out tokens",
    ),
    Claim(
        "hadamard-beats-haar",
        "A randomised Hadamard rotation quantises better than a Haar-random rotation",
        "SpinQuant (Liu et al. 2024), QuaRot; REFERENCE §8.3",
        "log10 int4 activation error: Haar − Hadamard, elementwise model, held-out tokens",
    ),
    Claim(
        "elementwise-more-outliers",
        "The residual stream of the elementwise model has heavier-tailed (outlier) channels than that of the "
        "isotropic model",
        "Isotropic Deep Learning (Bird); Elhage et al. 2023 (privileged basis from Adam); REFERENCE §1.1, §8.3",
        "log10 of the largest channel kurtosis, mean over the stream's norm inputs: elementwise − isotropic",
    ),
    Claim(
        "elementwise-more-aligned",
        "The residual stream of the elementwise model is more organised by the channel basis than that of the "
        "isotropic model",
        "Isotropic Deep Learning (Bird); REFERENCE §1.1, §9",
        "|A − Haar-null mean| of the signed 4-fold alignment A of the final stream: elementwise − isotropic",
    ),
)


def _plain_condition(values: dict[str, Any] | None) -> dict[str, Any] | None:
    if values is None:
        return None
    return {k: v for k, v in values.items() if not isinstance(v, list)}


@register("outliers")
class Outliers(Study):
    """Outlier channels of a small GPT-2's residual stream; fold, rotate (Hadamard, Haar, learned), quantise."""

    Config = OutliersConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "vocab_size": 8,
            "n_layer": 1,
            "n_embd": 16,
            "n_head": 2,
            "seq_len": 16,
            "batch_size": 8,
            "steps": 30,
            "eval_seqs": 16,
            "calib_seqs": 8,
            "learn_steps": 5,
            "align_samples": 200,
            "n_bootstrap": 20,
            "n_null": 4,
        },
        # for a GPU: a 4 × 256 model (d = 256 has a Hadamard matrix), longer sequences and training, all variants
        "paper": {
            "variants": ("elementwise", "isotropic", "isotropic_adamw"),
            "vocab_size": 128,
            "n_layer": 4,
            "n_embd": 256,
            "n_head": 8,
            "seq_len": 128,
            "batch_size": 64,
            "steps": 20000,
            "eval_seqs": 256,
            "calib_seqs": 128,
            "learn_steps": 500,
            "align_samples": 5000,
            "n_bootstrap": 1000,
            "n_null": 99,
        },
    }
    claims = _CLAIMS

    def run(self, ctx) -> dict[str, Any]:
        config: OutliersConfig = ctx.config
        language = language_of(config)
        gen = torch.Generator().manual_seed(31337 + ctx.seed)
        eval_tokens = language.sample(config.eval_seqs, config.seq_len, generator=gen)
        calib_tokens = language.sample(config.calib_seqs, config.seq_len, generator=gen)
        finals: dict[str, Any] = {"loss_bound": language.loss_lower_bound(config.seq_len)}
        for variant in config.variants:
            model = build_model(config, variant, ctx.seed).to(ctx.device)
            opt = _optimiser(config, variant, model)
            # the variants of a seed see the same batches
            step = LMStep(
                model, opt, language, batch_size=config.batch_size, seq_len=config.seq_len, data_seed=ctx.seed
            )
            key = f"variant={variant}"
            ctx.train(
                key,
                step,
                config.steps,
                state={"model": model, "opt": opt},
                evaluate=lm_evaluation(model, eval_tokens),
                log_every=max(1, config.steps // 10),
            )
            model.eval()
            result = analyse_model(
                model.cpu(),
                eval_tokens,
                calib_tokens,
                seed=ctx.seed,
                learn_steps=config.learn_steps,
                learn_lr=config.learn_lr,
                align_samples=config.align_samples,
                n_bootstrap=config.n_bootstrap,
                n_null=config.n_null,
                outlier_threshold=config.outlier_threshold,
            )
            stats = result["outliers"]
            ctx.log(config.steps, run=key, event="outliers", **stats)
            for cond, values in result["conditions"].items():
                if values is not None:
                    ctx.log(config.steps, run=key, event="condition", condition=cond, **values)
            ctx.log(config.steps, run=key, event="rotations", **result["rotations"])
            finals[f"{key}/eval_loss"] = result["conditions"]["original"]["loss"]
            for name, value in stats.items():
                if not isinstance(value, list):
                    finals[f"{key}/{name}"] = value
            for cond, values in result["conditions"].items():
                for name, value in (_plain_condition(values) or {}).items():
                    finals[f"{key}/{cond}/{name}"] = value
                if values is None:
                    finals[f"{key}/{cond}/act_err4"] = None
            finals[f"{key}/learned_calib_error"] = result["rotations"]["learned_calib_error"]
            finals[f"{key}/learned_init_error"] = result["rotations"]["learned_init_error"]
        return finals

    # ------------------------------------------------------------------------------------------------------------

    def summarise(self, data) -> list[Findings]:
        config: OutliersConfig = data.config

        def column(key: str) -> list[float]:
            return [number(f[key]) for f in data.finals.values() if f.get(key) is not None]

        stream_cols = {
            "eval_loss": "held-out LM loss (nats)",
            "token_max_rms": "token max|h|/rms(h)",
            "max_kurtosis": "largest channel kurtosis",
            "outlier_fraction": "outlier channels (fraction)",
            "align": "alignment A (signed)",
            "align_null": "A in Haar bases (null)",
            "align_higher_order": "A, higher-order part",
        }
        rows = {
            f"{v} ({_DESCRIPTIONS[v]})": {label: column(f"variant={v}/{k}") for k, label in stream_cols.items()}
            for v in config.variants
        }
        bound = column("loss_bound")
        stream = Findings.from_values(
            "residual-stream outliers and basis alignment by variant",
            rows,
            caption=(
                f"GPT-2 {config.n_layer} × {config.n_embd} ({config.n_head} heads), trained {config.steps} steps "
                f"(batch {config.batch_size} × {config.seq_len} tokens; AdamW lr {config.lr:g}, IsoAdam lr "
                f"{config.lr_iso_adam:g}) on a second-order Markov language of {config.vocab_size} tokens (loss "
                f"bound {np.mean(bound) if bound else float('nan'):.3f} nats, uniform "
                f"{math.log(config.vocab_size):.3f}). Stream = the input of every norm (before ln_1, ln_2, ln_f; "
                f"mean over them), {config.eval_seqs} held-out sequences; outlier channel: rms > "
                f"{config.outlier_threshold:g} × median. A of the final stream (before ln_f), "
                f"{config.align_samples} tokens. Mean ± 95% CI over seeds."
            ),
        )
        cond_cols = {
            "act_err4": "int4 error, norm outputs",
            "act_err8": "int8 error, norm outputs",
            "stream_err4": "int4 error, stream",
            "weight_err4": "int4 error, weights",
            "weight_err8": "int8 error, weights",
            "dloss_a4": "Δloss A4 (nats)",
            "dloss_w4": "Δloss W4 (nats)",
            "act_max_rms": "token max/rms, norm outputs",
            "max_dlogits": "max |Δlogits| vs original",
        }
        rows = {}
        for v in config.variants:
            for cond in CONDITIONS:
                key = f"variant={v}/{cond}"
                if not column(f"{key}/act_err4"):
                    continue
                rows[f"{v}: {cond}"] = {label: column(f"{key}/{k}") for k, label in cond_cols.items()}
        quant = Findings.from_values(
            "quantisation before and after fold + rotation (function unchanged)",
            rows,
            caption=(
                "Simulated symmetric round-to-nearest quantise–dequantise, relative squared error ‖x − Q(x)‖²/‖x‖²: "
                "activations per token (the norms' outputs, which the readers c_attn, c_fc and lm_head quantise; "
                "and the stream, the norms' inputs), weights per output channel (every Linear, Conv1D and "
                "Embedding). Δloss: LM-loss increase when the readers' inputs are quantised per token (A4) or all "
                "weights per output channel (W4). Conditions: original; folded (fold_norms: gain-free RMSNorm, "
                "mean-free stream); folded + rotated by a randomised Hadamard, a Haar-random or a learned rotation "
                f"(Cayley descent, {config.learn_steps} steps on {config.calib_seqs} calibration sequences). All on "
                "held-out sequences, float64; max |Δlogits| is the function check. Mean ± 95% CI over seeds."
            ),
        )
        return [stream, quant]

    def verdicts(self, data) -> list:
        config: OutliersConfig = data.config
        claims = {c.name: c for c in self.claims}

        def per_seed(key: str, fn=float) -> dict[int, float]:
            out = {}
            for seed, f in data.finals.items():
                value = f.get(key)
                out[seed] = math.nan if value is None else fn(value)
            return out

        def log_err(variant: str, cond: str) -> dict[int, float]:
            return per_seed(f"variant={variant}/{cond}/act_err4", lambda v: math.log10(v) if v > 0 else math.nan)

        def privilege(variant: str) -> dict[int, float]:
            out = {}
            for seed, f in data.finals.items():
                a, null = f.get(f"variant={variant}/align"), f.get(f"variant={variant}/align_null")
                out[seed] = math.nan if a is None else abs(a - (null or 0.0))
            return out

        verdicts = []
        rotation_claims = ("rotation-lowers-int4-error", "rotation-lowers-int4-loss", "learned-beats-hadamard")
        has_hadamard = all(f.get("variant=elementwise/hadamard/act_err4") is not None for f in data.finals.values())
        for name in (*rotation_claims, "hadamard-beats-haar"):
            claim = claims[name]
            if "elementwise" not in config.variants:
                verdicts.append(inconclusive(claim, "the run has no elementwise variant"))
            elif not has_hadamard:
                verdicts.append(inconclusive(claim, f"d = {config.n_embd} has no Hadamard matrix here"))
            elif name == "rotation-lowers-int4-error":
                verdicts.append(
                    paired_verdict(claim, log_err("elementwise", "folded"), log_err("elementwise", "hadamard"))
                )
            elif name == "rotation-lowers-int4-loss":
                key = "variant=elementwise/{}/dloss_a4"
                verdicts.append(paired_verdict(claim, per_seed(key.format("folded")), per_seed(key.format("hadamard"))))
            elif name == "learned-beats-hadamard":
                verdicts.append(
                    paired_verdict(claim, log_err("elementwise", "hadamard"), log_err("elementwise", "learned"))
                )
            else:
                verdicts.append(
                    paired_verdict(claim, log_err("elementwise", "haar"), log_err("elementwise", "hadamard"))
                )
        if not {"elementwise", "isotropic"} <= set(config.variants):
            for name in ("elementwise-more-outliers", "elementwise-more-aligned"):
                verdicts.append(inconclusive(claims[name], "the run lacks the elementwise or the isotropic variant"))
            return verdicts
        fraction = {
            v: float(np.mean([f.get(f"variant={v}/outlier_fraction", math.nan) for f in data.finals.values()]))
            for v in ("elementwise", "isotropic")
        }
        note = (
            f"outlier channels (rms > {config.outlier_threshold:g}× median): elementwise "
            f"{100 * fraction['elementwise']:.1f}%, isotropic {100 * fraction['isotropic']:.1f}% of d"
        )
        verdicts.append(
            paired_verdict(
                claims["elementwise-more-outliers"],
                per_seed("variant=elementwise/log10_max_kurtosis"),
                per_seed("variant=isotropic/log10_max_kurtosis"),
                note=note,
            )
        )
        verdicts.append(
            paired_verdict(claims["elementwise-more-aligned"], privilege("elementwise"), privilege("isotropic"))
        )
        return verdicts

    def figures(self, data, out: Path) -> list[Figure]:
        figures: list[Figure] = []

        config: OutliersConfig = data.config
        seed = data.seeds[0]
        variants = list(config.variants)
        colours = dict(zip(CONDITIONS, cmap("tab10", len(CONDITIONS)), strict=True))

        def condition(variant: str, cond: str, s: int = seed) -> dict | None:
            rows = data.select(seed=s, run=f"variant={variant}", event="condition", condition=cond)
            return rows[-1] if rows else None

        # 1. per-channel max|h| / rms of the final norm's output, before and after rotation
        fig, axes = subplots(len(variants), 1, figsize=(8, 2.6 * len(variants)), squeeze=False)
        for ax, variant in zip(axes[:, 0], variants, strict=True):
            for cond, style in (("folded", "-"), ("hadamard", "-"), ("learned", "-")):
                row = condition(variant, cond)
                if row is None:
                    continue
                absmax = np.asarray(row["channel_absmax"], dtype=float)
                ax.plot(np.arange(len(absmax)), absmax, style, color=colours[cond], lw=1, marker=".", ms=3, label=cond)
            ax.set_title(f"{variant} ({_DESCRIPTIONS[variant]}), seed {seed}", fontsize=9)
            ax.set_ylabel("max|h_j| / rms(h)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=3)
        axes[-1, 0].set_xlabel("channel j of the final norm's output (input of lm_head)")
        figures.append(
            save_figure(
                fig,
                out,
                "channel_max_rms.png",
                f"Seed {seed}: each channel's largest magnitude over the held-out tokens, divided by the rms of all "
                "entries, at the final norm's output (what lm_head quantises), after folding (the basis the model "
                "trained in) and after the randomised Hadamard and the learned rotations of the stream. Outlier "
                "channels are spikes; a rotation that spreads them flattens the profile. A channel at 0 after the "
                "Hadamard rotation is the direction of 𝟙/√d (the folded stream is mean-free; H's first column is "
                "constant).",
            )
        )

        # 2. int4 activation error per condition, mean ± CI over seeds
        from isotorch.studies._stats import mean_ci

        fig, axes = subplots(1, 2, figsize=(11, 3.8))
        width = 0.8 / len(CONDITIONS)
        for ax, metric, label in (
            (axes[0], "act_err4", "int4 error of the norm outputs (per token)"),
            (axes[1], "weight_err4", "int4 error of the weights (per output channel)"),
        ):
            for i, cond in enumerate(CONDITIONS):
                means, errs = [], []
                for variant in variants:
                    values = [
                        number(f[f"variant={variant}/{cond}/{metric}"])
                        for f in data.finals.values()
                        if f.get(f"variant={variant}/{cond}/{metric}") is not None
                    ]
                    estimate = mean_ci(values)
                    means.append(estimate.mean if values else math.nan)
                    errs.append(estimate.ci95 if values and math.isfinite(estimate.ci95) else 0.0)
                x = np.arange(len(variants)) + (i - (len(CONDITIONS) - 1) / 2) * width
                ax.bar(x, means, width, yerr=errs, color=colours[cond], label=cond, capsize=2)
            ax.set_xticks(np.arange(len(variants)), variants)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3, axis="y")
        axes[0].legend(fontsize=7)
        figures.append(
            save_figure(
                fig,
                out,
                "quantisation_error.png",
                "Relative squared int4 quantise–dequantise error of the activations the stream's readers quantise "
                "(left) and of the weights (right), per variant and condition (original, folded, folded + Hadamard, "
                "Haar or learned rotation); bars: mean over seeds, whiskers: 95% t-interval over seeds. The function "
                "is the same in every condition of a variant.",
            )
        )

        # 3. kurtosis histograms of the stream channels: folded vs rotated
        fig, axes = subplots(1, len(variants), figsize=(5 * len(variants), 3.4), squeeze=False)
        for ax, variant in zip(axes[0], variants, strict=True):
            pooled = {}
            for cond in ("folded", "hadamard", "learned"):
                values = []
                for s in data.seeds:
                    row = condition(variant, cond, s)
                    if row is not None:
                        values += [k for k in row["kurtosis"] if k is not None]
                if values:
                    pooled[cond] = np.log10(np.asarray(values, dtype=float))
            if pooled:
                lo = min(v.min() for v in pooled.values())
                hi = max(v.max() for v in pooled.values())
                bins = np.linspace(lo, hi + 1e-9, 30)
                for cond, logs in pooled.items():
                    ax.hist(logs, bins=bins, histtype="step", lw=1.5, color=colours[cond], label=cond)
            ax.axvline(math.log10(3.0), color="0.3", ls=":", lw=1, label="Gaussian (3)")
            ax.set_title(f"{variant}", fontsize=9)
            ax.set_xlabel("log10 channel kurtosis of the stream")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("channels (all norm inputs, all seeds)")
        figures.append(
            save_figure(
                fig,
                out,
                "kurtosis.png",
                "Histogram of the Pearson kurtosis of every stream channel (the inputs of all norms, all seeds, "
                "held-out tokens; log10 scale) after folding and after the Hadamard and learned rotations; dotted: "
                "a Gaussian channel (3). Outlier channels sit in the right tail.",
            )
        )
        return figures
