"""The per-family learning-rate sweep (isotorch.studies._lr_sweep)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from isotorch.studies._lr_sweep import lr_sweep


class _Scaled(nn.Module):
    def __init__(self, module: nn.Module, factor: float) -> None:
        super().__init__()
        self.module, self.factor = module, factor

    def forward(self, x):
        return self.factor * self.module(x)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def _regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 5, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1 * torch.randn(256, generator=g)
    return x, y


def _mse(out, target):
    return nn.functional.mse_loss(out.squeeze(-1), target)


def test_a_family_that_needs_larger_steps_gets_a_larger_learning_rate():
    """Scaling a model's output by 0.02 makes every Adam step move the output 50 times less: its best rate must be
    higher than the plain model's, at the same budget (the point of comparing families at their own rates)."""
    x, y = _regression()
    builders = {"plain": lambda seed: nn.Linear(5, 1), "shrunk": lambda seed: _Scaled(nn.Linear(5, 1), 0.02)}
    lrs = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    result = lr_sweep(builders, x, y, lrs=lrs, steps=(30, 120), seeds=(0, 1), batch_size=32, loss_fn=_mse)
    assert result.best["shrunk"] > result.best["plain"]
    assert result.best == result.best_at(120)
    assert all(len(v) == 2 for by_lr in result.losses.values() for by_s in by_lr.values() for v in by_s.values())
    for family in builders:  # a longer budget does not raise the best loss
        best_long = min(result.mean(family, lr, 120) for lr in lrs)
        assert best_long <= min(result.mean(family, lr, 30) for lr in lrs)
    table = result.table()
    assert table.count("*") == 2 * len(result.steps) and "| shrunk | 10 |" in table
    json.dumps(result.to_dict(), allow_nan=False)


def test_seeds_pair_the_families_and_repeat_exactly():
    x, y = _data()
    builders = {"a": lambda seed: nn.Linear(5, 2), "b": lambda seed: nn.Linear(5, 2)}
    first = lr_sweep(builders, x, y, lrs=(1e-2,), steps=10, seeds=(3,), batch_size=16)
    again = lr_sweep(builders, x, y, lrs=(1e-2,), steps=10, seeds=(3,), batch_size=16)
    assert first.losses == again.losses
    assert first.losses["a"] == first.losses["b"]  # same initialisation and minibatches for the same seed


def test_divergence_scores_inf_and_loses():
    x, y = _regression()
    builders = {"m": lambda seed: nn.Linear(5, 1)}
    result = lr_sweep(builders, x, y, lrs=(1e-2, 1e30), steps=5, seeds=(0,), batch_size=16, loss_fn=_mse)
    assert result.losses["m"][1e30][5] == [math.inf] and math.isfinite(result.losses["m"][1e-2][5][0])
    assert result.best["m"] == 1e-2
    assert "diverged" in result.table()
    assert result.to_dict()["losses"]["m"]["1e+30"]["5"] == [None]


def test_bad_input():
    x, y = _data()
    builders = {"m": lambda seed: nn.Linear(5, 2)}
    with pytest.raises(ValueError, match="builders"):
        lr_sweep({}, x, y, lrs=(1e-2,), steps=5)
    with pytest.raises(ValueError, match="lrs"):
        lr_sweep(builders, x, y, lrs=(0.0,), steps=5)
    with pytest.raises(ValueError, match="steps"):
        lr_sweep(builders, x, y, lrs=(1e-2,), steps=0)
    with pytest.raises(ValueError, match="seeds"):
        lr_sweep(builders, x, y, lrs=(1e-2,), steps=5, seeds=(0, 0))
    with pytest.raises(ValueError, match="same first size"):
        lr_sweep(builders, x, y[:3], lrs=(1e-2,), steps=5)
    with pytest.raises(ValueError, match="batch_size"):
        lr_sweep(builders, x, y, lrs=(1e-2,), steps=5, batch_size=0)
    with pytest.raises(ValueError, match="measured budgets"):
        lr_sweep(builders, x, y, lrs=(1e-2,), steps=5, seeds=(0,)).best_at(7)
