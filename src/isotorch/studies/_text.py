"""A language generated locally: a random second-order Markov chain with an exactly known entropy rate (private).

Transformer studies need text without a download. :func:`markov_language` draws a second-order chain over a
vocabulary of V tokens,

    P(x_t = c | x_{t-2} = a, x_{t-1} = b) = softmax_c(β·g_{abc}),   g_{abc} ~ N(0, 1) iid,

so every transition has positive probability (the pair chain is irreducible and aperiodic) and the sharpness β sets
how predictable the text is. Sequences start from the stationary distribution π of the pair chain
(a, b) → (b, c), so every position is stationary. Then, for any predictor q that sees only the past,

    E[−log q(x_t | x_{<t})] ≥ H(x_t | x_{<t}) = H(x_t | x_{t-1}, x_{t-2}) = h      (t ≥ 2),
    h = −Σ_{a,b} π(a, b) Σ_c P(c | a, b) log P(c | a, b),                         (entropy rate, nats/token)

and H(x_1 | x_0) = H(π) − H(π₁) ≥ h for the first prediction (π₁ the marginal of one token). The expected causal
language-model loss over a sequence of length T is therefore bounded below by
(H(x_1 | x_0) + (T − 2)·h)/(T − 1), which the source itself attains (:meth:`MarkovLanguage.log_loss`).
π is found by power iteration on the pair chain (float64, to round-off).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from isotorch._util import check_finite, check_int

__all__ = ["MarkovLanguage", "markov_language"]

_MAX_VOCAB = 256  # the transition table holds V³ float64 numbers (128 MiB at V = 256)


def _entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats along ``dim`` (0·log 0 = 0)."""
    return -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(dim)


@dataclass(frozen=True, eq=False)
class MarkovLanguage:
    """A stationary second-order Markov source over ``vocab_size`` tokens.

    Attributes:
        vocab_size: V.
        sharpness: β in the softmax of the transition logits.
        transition: (V, V, V) float64, ``transition[a, b, c] = P(x_t = c | x_{t-2} = a, x_{t-1} = b)``.
        stationary: (V, V) float64, the stationary distribution π(a, b) of two consecutive tokens.
        entropy_rate: h in nats per token.
        first_entropy: H(x_1 | x_0) in nats under π (≥ h).
    """

    vocab_size: int
    sharpness: float
    transition: torch.Tensor
    stationary: torch.Tensor
    entropy_rate: float
    first_entropy: float

    def loss_lower_bound(self, seq_len: int) -> float:
        """Least expected causal-LM loss (nats per predicted token) on sequences of ``seq_len`` tokens.

        (H(x_1 | x_0) + (T − 2)·h)/(T − 1): a model predicting x_1..x_{T−1} from their pasts cannot do better in
        expectation; the source itself attains it.
        """
        t = check_int(seq_len, "seq_len", minimum=2)
        return (self.first_entropy + (t - 2) * self.entropy_rate) / (t - 1)

    def sample(self, batch_size: int, seq_len: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``batch_size`` independent stationary sequences of ``seq_len`` tokens, int64 (batch_size, seq_len).

        Deterministic given ``generator`` (``None``: torch's global RNG).
        """
        b = check_int(batch_size, "batch_size", minimum=1)
        t = check_int(seq_len, "seq_len", minimum=2)
        v = self.vocab_size
        pair_cdf = self.stationary.flatten().cumsum(0)
        first = torch.searchsorted(pair_cdf, torch.rand(b, 1, dtype=torch.float64, generator=generator) * pair_cdf[-1])
        first = first.clamp(max=v * v - 1).squeeze(1)
        out = torch.empty(b, t, dtype=torch.long)
        out[:, 0], out[:, 1] = first // v, first % v
        cdf = self.transition.cumsum(-1)
        u = torch.rand(b, t - 2, dtype=torch.float64, generator=generator)
        for i in range(2, t):
            rows = cdf[out[:, i - 2], out[:, i - 1]]
            nxt = torch.searchsorted(rows, (u[:, i - 2] * rows[:, -1]).unsqueeze(1)).squeeze(1)
            out[:, i] = nxt.clamp(max=v - 1)
        return out

    def batches(
        self, n_batches: int, batch_size: int, seq_len: int, *, generator: torch.Generator | None = None
    ) -> Iterator[torch.Tensor]:
        """Yield ``n_batches`` token batches from :meth:`sample` (one generator draws them all in turn)."""
        for _ in range(check_int(n_batches, "n_batches", minimum=0)):
            yield self.sample(batch_size, seq_len, generator=generator)

    def log_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """The source's own loss −log P(x_t | past) at each predicted position, float64 (B, T − 1).

        Position 1 uses P(x_1 | x_0) = π(x_0, x_1)/π₁(x_0), later positions the transition table: the Bayes-optimal
        predictor, whose mean is the bound of :meth:`loss_lower_bound` in expectation.
        """
        if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.ndim != 2:
            raise ValueError(f"tokens must be an int64 tensor of shape (B, T), got {tokens!r:.80}")
        if tokens.shape[1] < 2:
            raise ValueError(f"tokens must have at least 2 positions (T >= 2), got shape {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"tokens must lie in [0, {self.vocab_size}) (vocab_size), got values out of range")
        marginal = self.stationary.sum(1)
        first = torch.log(self.stationary[tokens[:, 0], tokens[:, 1]] / marginal[tokens[:, 0]])
        rest = torch.log(self.transition[tokens[:, :-2], tokens[:, 1:-1], tokens[:, 2:]])
        return -torch.cat([first.unsqueeze(1), rest], dim=1)

    def to_dict(self) -> dict:
        """JSON-ready summary (the tables themselves are not included)."""
        return {
            "vocab_size": self.vocab_size,
            "sharpness": self.sharpness,
            "entropy_rate": self.entropy_rate,
            "first_entropy": self.first_entropy,
            "max_entropy": math.log(self.vocab_size),
        }

    def __repr__(self) -> str:
        return (
            f"MarkovLanguage(vocab_size={self.vocab_size}, sharpness={self.sharpness:g}, "
            f"entropy_rate={self.entropy_rate:.4f} nats (of {math.log(self.vocab_size):.4f}))"
        )


def _stationary(transition: torch.Tensor, *, tol: float = 1e-14, max_iter: int = 100_000) -> torch.Tensor:
    """Stationary π of the pair chain (a, b) → (b, c): π'(b, c) = Σ_a π(a, b)·P(c | a, b), by power iteration."""
    v = transition.shape[0]
    pi = torch.full((v, v), 1.0 / (v * v), dtype=torch.float64)
    for _ in range(max_iter):
        new = torch.einsum("ab,abc->bc", pi, transition)
        new = new / new.sum()
        if float((new - pi).abs().sum()) < tol:
            return new
        pi = new
    raise RuntimeError(f"the pair chain did not mix in {max_iter} iterations; lower sharpness")  # pragma: no cover


def markov_language(
    vocab_size: int = 32, *, sharpness: float = 2.0, generator: torch.Generator | None = None
) -> MarkovLanguage:
    """Draw a random second-order Markov language (see the module docstring for the formulas).

    Args:
        vocab_size: V, 2 ≤ V ≤ 256. Default: 32.
        sharpness: β > 0; larger → lower entropy rate (β = 0 would be uniform text). Default: 2.0.
        generator: draws the transition logits (``None``: torch's global RNG).

    Examples:
        >>> import torch
        >>> lang = markov_language(8, sharpness=3.0, generator=torch.Generator().manual_seed(0))
        >>> lang.entropy_rate < lang.first_entropy < float(torch.log(torch.tensor(8.0)))
        True
        >>> lang.sample(2, 5, generator=torch.Generator().manual_seed(1)).shape
        torch.Size([2, 5])
    """
    v = check_int(vocab_size, "vocab_size", minimum=2, maximum=_MAX_VOCAB)
    check_finite(sharpness, "sharpness", minimum=0, strict=True)
    logits = torch.randn(v, v, v, dtype=torch.float64, generator=generator)
    transition = torch.softmax(float(sharpness) * logits, dim=-1)
    pi = _stationary(transition)
    rate = float((pi * _entropy(transition)).sum())
    first = float(_entropy(pi.flatten()) - _entropy(pi.sum(1)))
    return MarkovLanguage(v, float(sharpness), transition, pi, rate, first)
