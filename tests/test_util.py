"""Tests for isotorch._util: the one private module for generators, argument checks and strict JSON."""

import pytest
import torch

from isotorch._util import as_generator, check_generator, draw_seed


def test_check_generator_passes_generators_and_none_and_refuses_ints():
    g = torch.Generator()
    assert check_generator(g) is g
    assert check_generator(None) is None
    for bad in (5, 1.5, True, "0"):
        with pytest.raises(TypeError, match=r"^rng must be a torch\.Generator or None"):
            check_generator(bad, "rng")


def test_as_generator_none_follows_the_global_rng():
    g = torch.Generator()
    assert as_generator(g) is g
    torch.manual_seed(3)
    a = torch.randn(4, generator=as_generator(None))
    torch.manual_seed(3)
    assert torch.equal(torch.randn(4, generator=as_generator(None)), a)
    # negative control: without reseeding, the next draw differs
    assert not torch.equal(torch.randn(4, generator=as_generator(None)), a)
    with pytest.raises(TypeError, match="generator must be"):
        as_generator(5)


def test_draw_seed_is_reproducible_from_a_generator():
    a, b = draw_seed(torch.Generator().manual_seed(1)), draw_seed(torch.Generator().manual_seed(1))
    assert a == b and 0 <= a < 2**62
    assert draw_seed(torch.Generator().manual_seed(2)) != a
