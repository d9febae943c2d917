"""Small models shared by the isotorch.params tests."""

import torch
import torch.nn.functional as F
from torch import nn

import isotorch as it


def mlp(act=nn.ReLU, widths=(5, 16, 16, 3), dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(dtype)


def iso_mlp(widths=(5, 16, 16, 3), dtype=torch.float64, seed=0):
    return mlp(it.nn.IsoTanh, widths, dtype, seed)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        x = self.pool(torch.tanh(self.c2(x)))
        x = torch.flatten(x, 1)
        return self.fc2(F.gelu(self.fc1(x)))


class ResMLP(nn.Module):
    def __init__(self, d=8, h=12, norm="layer"):
        super().__init__()
        self.inp = nn.Linear(4, d)

        def make_norm():
            if norm == "layer":
                return nn.LayerNorm(d)
            if norm == "rms":
                return nn.RMSNorm(d, elementwise_affine=False)
            return nn.Identity()

        self.blocks = nn.ModuleList(
            [nn.Sequential(make_norm(), nn.Linear(d, h), nn.ReLU(), nn.Linear(h, d)) for _ in range(2)]
        )
        self.out = nn.Linear(d, 3)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return self.out(x)


class Block(nn.Module):
    def __init__(self, d=8, heads=2, affine=False):
        super().__init__()
        self.n1 = nn.RMSNorm(d, elementwise_affine=affine)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.n2 = nn.RMSNorm(d, elementwise_affine=affine)
        self.up = nn.Linear(d, 16)
        self.down = nn.Linear(16, d)

    def forward(self, x):
        h = self.n1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.down(F.gelu(self.up(self.n2(x))))


class Transformer(nn.Module):
    def __init__(self, vocab=11, d=8, length=5, heads=2, affine=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.1)
        self.blocks = nn.Sequential(Block(d, heads, affine), Block(d, heads, affine))
        self.norm = nn.RMSNorm(d, elementwise_affine=affine)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        x = self.emb(idx) + self.pos
        x = self.blocks(x)
        return self.head(self.norm(x))


def tokens(batch=3, length=5, vocab=11, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
