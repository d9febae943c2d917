"""Small GPT-2-style language models for the transformer studies: build, train, evaluate (private).

:func:`gpt2` builds Hugging Face's ``GPT2LMHeadModel`` from a tiny ``GPT2Config`` with random weights (no download;
eager attention, no dropout, seeded), optionally with every MLP activation swapped for a primitive family's
(``family="isotropic"`` puts :class:`~isotorch.nn.IsoTanh` on the 4d hidden units of each block, the rest of the
model unchanged), so an elementwise/isotropic pair differs only there. :func:`language_of` is a study's
:class:`~isotorch.studies._text.MarkovLanguage`; :class:`LMStep` is one optimiser update on batch t of it (the
``step`` of ``ctx.train``) and :func:`lm_evaluation` the held-out loss to log (its ``evaluate``); :func:`train_lm`
runs the steps outside a study. :func:`lm_loss` is the loss: mean over predicted tokens of
−log softmax(logits)[next token], in nats (:func:`next_token_loss` from logits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from isotorch._util import check_finite, check_int, json_safe
from isotorch.studies._config import check_positive

if TYPE_CHECKING:
    from isotorch.studies._text import MarkovLanguage

__all__ = [
    "LMStep",
    "LMTrainResult",
    "check_lm_config",
    "evaluate_lm",
    "gpt2",
    "language_of",
    "lm_evaluation",
    "lm_loss",
    "next_token_loss",
    "train_lm",
]


def gpt2(
    vocab_size: int,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 128,
    family: str | None = None,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A ``transformers.GPT2LMHeadModel`` with random weights from a small config.

    Args:
        vocab_size: number of tokens.
        n_layer, n_embd, n_head, n_positions: the ``GPT2Config`` sizes. Defaults: 2, 64, 4, 128.
        family: ``None`` keeps GPT-2's GELU; a family name from :func:`isotorch.families.get` (``"isotropic"``,
            ``"elementwise"``, ``"block:4"``, ...) replaces each block's ``mlp.act`` by the family's activation on
            the 4·n_embd hidden units. Default: ``None``.
        tie_word_embeddings: share ``lm_head.weight`` with ``wte.weight`` (GPT-2's default). Default: ``True``.
        seed: seeds the initialisation (the global RNG is left as it was). Default: 0.
        dtype: parameter dtype. Default: ``torch.float32``.

    Raises:
        ImportError: ``transformers`` is not installed (``pip install isotorch[hf]``).

    Examples:
        >>> import torch
        >>> model = gpt2(16, n_layer=1, n_embd=8, n_head=2, n_positions=8, family="isotropic")
        >>> type(model.transformer.h[0].mlp.act).__name__, model(torch.zeros(1, 4, dtype=torch.long)).logits.shape
        ('IsoTanh', torch.Size([1, 4, 16]))
    """
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as err:  # pragma: no cover - CI installs the hf extra
        raise ImportError("gpt2() needs the transformers package: pip install 'isotorch[hf]'") from err
    for name, value in (("vocab_size", vocab_size), ("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head)):
        check_int(value, name, minimum=1)
    check_int(n_positions, "n_positions", minimum=2)
    if n_embd % n_head:
        raise ValueError(f"n_embd must be divisible by n_head, got n_embd={n_embd}, n_head={n_head}")
    config = GPT2Config(  # type: ignore[call-arg]  # attn_implementation goes through PretrainedConfig's kwargs
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=tie_word_embeddings,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    if family is not None:
        from isotorch.families import get

        fam = get(family)
        for block in model.transformer.h:
            mlp = block.mlp
            assert isinstance(mlp, nn.Module)
            mlp.act = fam.activation(4 * n_embd, -1)
    return model.to(dtype).eval()  # type: ignore[arg-type]  # transformers' wrapper of .to hides its signature


def _logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    out = model(tokens) if not hasattr(model, "config") else model(input_ids=tokens)
    return out.logits if hasattr(out, "logits") else out


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Causal language-model loss in nats: mean over b, t ≥ 1 of −log softmax(model(tokens)[b, t−1])[tokens[b, t]].

    ``model`` maps int64 (B, T) tokens to logits (B, T, V), directly or as a Hugging Face output's ``.logits``.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be an int64 tensor of shape (B, T) with T >= 2, got {tokens!r:.80}")
    return next_token_loss(_logits(model, tokens), tokens, dtype=torch.float32)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Causal language-model loss of ``logits`` (B, T, V) of ``tokens`` (B, T): the mean over b, t ≥ 1 of
    −log softmax(logits[b, t−1])[tokens[b, t]] in nats, computed in ``dtype`` (default float64).

    Examples:
        >>> tokens = torch.tensor([[0, 1, 1]])
        >>> logits = torch.zeros(1, 3, 2)  # uniform over two tokens: log 2 per prediction
        >>> import math
        >>> round(float(next_token_loss(logits, tokens)), 6), round(math.log(2), 6)
        (0.693147, 0.693147)
    """
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).to(dtype), tokens[:, 1:].flatten())


@dataclass(frozen=True)
class LMTrainResult:
    """What :func:`train_lm` did.

    Attributes:
        steps: optimiser steps taken.
        losses: training loss at each step (nats per token).
        settings: batch size, sequence length, learning rate, weight decay, data seed.
    """

    steps: int
    losses: tuple[float, ...]
    settings: dict

    def to_dict(self) -> dict:
        """JSON-ready dictionary (non-finite losses as ``None``)."""
        return json_safe({"steps": self.steps, "losses": self.losses, "settings": self.settings})


def check_lm_config(config, *, ints: tuple[str, ...] = ()) -> None:
    """The checks shared by the language-model studies' configs (from their ``__post_init__``): ``vocab_size`` in
    [2, 256]; ``n_layer``, ``n_embd``, ``n_head``, ``batch_size``, ``steps``, ``eval_seqs`` and the fields in ``ints``
    positive; ``n_embd`` divisible by ``n_head``; ``seq_len`` ≥ 4. A ``ValueError`` names the first bad field.

    Examples:
        >>> from types import SimpleNamespace
        >>> sizes = dict(vocab_size=8, n_layer=1, n_embd=16, n_head=2, batch_size=4, steps=1, eval_seqs=2, seq_len=8)
        >>> check_lm_config(SimpleNamespace(**sizes))
        >>> check_lm_config(SimpleNamespace(**{**sizes, "n_head": 3}))
        Traceback (most recent call last):
        ...
        ValueError: n_embd must be divisible by n_head, got n_embd=16, n_head=3
    """
    if not 2 <= config.vocab_size <= 256:
        raise ValueError(f"vocab_size must be an int in [2, 256], got {config.vocab_size!r}")
    check_positive(config, ints=("n_layer", "n_embd", "n_head", "batch_size", "steps", "eval_seqs", *ints))
    if config.n_embd % config.n_head:
        raise ValueError(f"n_embd must be divisible by n_head, got n_embd={config.n_embd}, n_head={config.n_head}")
    if config.seq_len < 4:
        raise ValueError(f"seq_len must be an int >= 4, got {config.seq_len!r}")


def language_of(config) -> MarkovLanguage:
    """The study's language: ``markov_language(config.vocab_size, sharpness=config.sharpness)`` drawn from a generator
    seeded with ``config.language_seed`` (one language for every seed of a run)."""
    from isotorch.studies._text import markov_language

    gen = torch.Generator().manual_seed(config.language_seed)
    return markov_language(config.vocab_size, sharpness=config.sharpness, generator=gen)


class LMStep:
    """One optimiser update on language-model batch ``t``: the ``step`` of :meth:`StudyContext.train`, as a callable.

    ``step(t)`` puts the model in training mode (an evaluation switches it to ``eval``), takes :meth:`batch` ``t``
    to the model's device, computes :func:`lm_loss`, zeroes the gradients, back-propagates, steps ``opt`` and
    returns the loss. Batch t is drawn from a generator seeded with 1 000 003·(data_seed + 1) + t: a function of
    (data_seed, t) alone, so a resumed run sees the batches it would have seen and models given one ``data_seed``
    see the same batches.

    Args:
        model: maps (B, T) tokens to logits (e.g. from :func:`gpt2`).
        opt: the optimiser of ``model``'s parameters.
        language: a source with ``sample(batch_size, seq_len, generator=)`` (e.g. a ``MarkovLanguage``).
        batch_size: sequences per batch.
        seq_len: tokens per sequence.
        data_seed: selects the batches.

    Examples:
        >>> from isotorch.studies._text import markov_language
        >>> lang = markov_language(8, generator=torch.Generator().manual_seed(0))
        >>> model = gpt2(8, n_layer=1, n_embd=8, n_head=2, n_positions=8)
        >>> step = LMStep(model, torch.optim.AdamW(model.parameters(), lr=1e-2), lang, batch_size=4, seq_len=8,
        ...               data_seed=0)
        >>> bool((step.batch(3) == step.batch(3)).all()), bool((step.batch(3) == step.batch(4)).all())
        (True, False)
        >>> first = float(step(0)); last = [float(step(t)) for t in range(1, 30)][-1]
        >>> last < first
        True
    """

    def __init__(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        language,
        *,
        batch_size: int,
        seq_len: int,
        data_seed: int,
    ):
        self.model, self.opt, self.language = model, opt, language
        self.batch_size, self.seq_len, self.data_seed = batch_size, seq_len, data_seed

    def batch(self, t: int) -> torch.Tensor:
        """Training batch ``t``: int64 (batch_size, seq_len) tokens, on the CPU."""
        gen = torch.Generator().manual_seed(1_000_003 * (self.data_seed + 1) + t)
        return self.language.sample(self.batch_size, self.seq_len, generator=gen)

    def __call__(self, t: int) -> torch.Tensor:
        self.model.train()
        device = next(self.model.parameters()).device
        loss = lm_loss(self.model, self.batch(t).to(device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()


def lm_evaluation(model: nn.Module, tokens: torch.Tensor) -> Callable[[int], dict[str, float]]:
    """The ``evaluate`` of an LM's ``ctx.train``: ``{"eval_loss": mean of evaluate_lm(model, tokens)}`` (nats)."""

    def evaluate(t: int) -> dict[str, float]:
        device = next(model.parameters()).device
        return {"eval_loss": float(evaluate_lm(model, tokens.to(device)).mean())}

    return evaluate


def train_lm(
    model: nn.Module,
    language,
    *,
    steps: int,
    batch_size: int = 32,
    seq_len: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    data_seed: int = 0,
) -> LMTrainResult:
    """Train ``model`` in place for ``steps`` :class:`LMStep` updates with AdamW, outside a study.

    Args:
        model: maps (B, T) tokens to logits (e.g. from :func:`gpt2`).
        language: a source with ``sample(batch_size, seq_len, generator=)`` (e.g. a ``MarkovLanguage``).
        steps: optimiser steps (one fresh batch each).
        batch_size: sequences per batch. Default: 32.
        seq_len: tokens per sequence. Default: 64.
        lr: AdamW's learning rate (β = (0.9, 0.999)). Default: 3e-3.
        weight_decay: AdamW's weight decay. Default: 0.
        data_seed: selects the batches (:meth:`LMStep.batch`). Default: 0.
    """
    steps = check_int(steps, "steps", minimum=0)
    check_finite(lr, "lr", minimum=0, strict=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    step = LMStep(model, opt, language, batch_size=batch_size, seq_len=seq_len, data_seed=data_seed)
    was_training = model.training
    try:
        losses = [float(step(t)) for t in range(steps)]
    finally:
        model.train(was_training)
    settings = {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "lr": lr,
        "weight_decay": weight_decay,
        "data_seed": data_seed,
    }
    return LMTrainResult(steps, tuple(losses), settings)


@torch.no_grad()
def evaluate_lm(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Per-sequence mean causal-LM loss (nats) of ``model`` on ``tokens`` (N, T), float64 (N,), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for chunk in tokens.split(batch_size):
            logits = _logits(model, chunk)[:, :-1].double()
            nll = -torch.log_softmax(logits, -1).gather(-1, chunk[:, 1:].unsqueeze(-1)).squeeze(-1)
            out.append(nll.mean(1))
        return torch.cat(out)
    finally:
        model.train(was_training)
