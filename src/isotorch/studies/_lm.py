"""Small GPT-2-style language models for the transformer studies: build, train, evaluate (private).

:func:`gpt2` builds Hugging Face's ``GPT2LMHeadModel`` from a tiny ``GPT2Config`` with random weights (no download;
eager attention, no dropout, seeded), optionally with every MLP activation swapped for a primitive family's
(``family="isotropic"`` puts :class:`~isotorch.nn.IsoTanh` on the 4d hidden units of each block, the rest of the
model unchanged), so an elementwise/isotropic pair differs only there. :func:`train_lm` fits it to a
:class:`~isotorch.studies._text.MarkovLanguage` with AdamW on the causal language-model loss, and :func:`lm_loss`
is that loss: mean over predicted tokens of −log softmax(logits)[next token], in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from isotorch._util import check_int

__all__ = ["LMTrainResult", "evaluate_lm", "gpt2", "lm_loss", "train_lm"]


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
    logits = _logits(model, tokens)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())


@dataclass(frozen=True)
class LMTrainResult:
    """What :func:`train_lm` did.

    Attributes:
        steps: optimiser steps taken.
        losses: training loss at each step (nats per token).
        settings: batch size, sequence length, learning rate, weight decay.
    """

    steps: int
    losses: tuple[float, ...]
    settings: dict

    def to_dict(self) -> dict:
        """JSON-ready dictionary (non-finite losses as ``None``)."""
        return {
            "steps": self.steps,
            "losses": [x if math.isfinite(x) else None for x in self.losses],
            "settings": dict(self.settings),
        }


def train_lm(
    model: nn.Module,
    language,
    *,
    steps: int,
    batch_size: int = 32,
    seq_len: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    generator: torch.Generator | None = None,
) -> LMTrainResult:
    """Train ``model`` in place on fresh batches of ``language`` with AdamW on :func:`lm_loss`.

    Args:
        model: maps (B, T) tokens to logits (e.g. from :func:`gpt2`).
        language: a source with ``sample(batch_size, seq_len, generator=)`` (e.g. a ``MarkovLanguage``).
        steps: optimiser steps (one fresh batch each).
        batch_size, seq_len: batch shape. Defaults: 32, 64.
        lr, weight_decay: AdamW settings (β = (0.9, 0.999)). Defaults: 3e-3, 0.
        generator: draws the batches (``None``: torch's global RNG).
    """
    steps = check_int(steps, "steps", minimum=0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr < math.inf):
        raise ValueError(f"lr must be a finite float > 0, got {lr!r}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    was_training = model.training
    model.train()
    losses = []
    device = next(model.parameters()).device
    try:
        for _ in range(steps):
            tokens = language.sample(batch_size, seq_len, generator=generator).to(device)
            loss = lm_loss(model, tokens)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        model.train(was_training)
    settings = {"batch_size": batch_size, "seq_len": seq_len, "lr": lr, "weight_decay": weight_decay}
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
