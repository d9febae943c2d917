"""Private helpers shared by every isotorch module: generators, argument checks and strict JSON.

One place for the rules that hold everywhere (DESIGN): ``generator=None`` means torch's global RNG, bad input gets
a one-line error naming the argument, and results serialise to strict JSON (no bare NaN or infinity).
"""

from __future__ import annotations

import torch

__all__ = ["as_generator", "check_generator", "draw_seed"]


def check_generator(generator: object, name: str = "generator") -> torch.Generator | None:
    """Return ``generator`` if it is a ``torch.Generator`` or ``None`` (torch's global RNG); raise otherwise."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    raise TypeError(
        f"{name} must be a torch.Generator or None (the global RNG), got {type(generator).__name__}; "
        "for a fixed seed pass torch.Generator().manual_seed(seed)"
    )


def as_generator(generator: object, name: str = "generator") -> torch.Generator:
    """A CPU-usable ``torch.Generator``: the one given, or for ``None`` a fresh one seeded from torch's global RNG.

    Code that needs a generator object (to spawn streams, or to reuse one stream in several places) calls this; a
    ``None`` then still follows ``torch.manual_seed`` and advances the global RNG by one draw.
    """
    generator = check_generator(generator, name)
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(draw_seed(None))


def draw_seed(generator: object, name: str = "generator") -> int:
    """One int seed in [0, 2⁶²) drawn from ``generator`` (``None``: torch's global RNG) to seed equal streams."""
    generator = check_generator(generator, name)
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64, generator=generator))
