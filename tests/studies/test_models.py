"""The study kit's supervised step (isotorch.studies._models.SupervisedStep)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from isotorch.studies._models import SupervisedStep


def _ctx():
    """A context whose minibatch t is a permutation's slice, seeded by (t, key): what the step must index by."""

    def batch_indices(t, n, batch_size, *, key=""):
        gen = torch.Generator().manual_seed(1000 * t + len(key))
        return torch.randperm(n, generator=gen)[:batch_size]

    return SimpleNamespace(batch_indices=batch_indices)


def test_input_map_feeds_each_minibatch_through_it():
    """With input_map, update t is the hand-written update on input_map(x[idx]), bit for bit; without, it is not."""
    torch.manual_seed(0)
    x, y, u = torch.randn(32, 5), torch.randint(0, 3, (32,)), torch.randn(5, 5)
    nets = [nn.Linear(5, 3) for _ in range(3)]
    for net in nets[1:]:
        net.load_state_dict(nets[0].state_dict())
    opts = [torch.optim.AdamW(net.parameters(), lr=0.1) for net in nets]
    ctx = _ctx()
    mapped = SupervisedStep(ctx, nets[0], opts[0], x, y, batch_size=8, key="U", input_map=lambda b: b @ u)
    plain = SupervisedStep(ctx, nets[2], opts[2], x, y, batch_size=8, key="U")
    for t in range(4):
        loss = mapped(t)
        idx = ctx.batch_indices(t, len(x), 8, key="U")
        expected = nn.functional.cross_entropy(nets[1](x[idx] @ u), y[idx])
        opts[1].zero_grad()
        expected.backward()
        opts[1].step()
        assert torch.equal(loss, expected.detach())
        assert not torch.equal(plain(t), loss)  # negative control: the unmapped inputs
    for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(nets[0].weight, nets[2].weight)
