"""Tests for isotorch.audit._table: the rows of the primitive table, registry rows, determinism, renderers, and
the staleness of docs/audit.md."""

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

import isotorch as it
from isotorch.audit import PrimitiveTable, _table, primitive_table
from isotorch.nn import _registry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"

EXPECTED_TORCH = {
    "tanh": "B_n",
    "relu": "S_n, (ℝ>0)ⁿ",
    "gelu": "S_n",
    "softmax": "S_n",
    "layer_norm": "O(n)_𝟙",
    "layer_norm (affine)": "S_n",
    "rms_norm": "O(n)",
    "rms_norm (gain)": "S_n",
    "batch_norm (train)": "B_n",
    "batch_norm (eval, affine)": "S_n",
    "group_norm": "{e}",
    "normalize": "O(n)",
    "max_pool2d": "S_n, (ℝ>0)ⁿ",
    "avg_pool2d": "(ℝ>0)ⁿ, O(n)",
    "dropout (train)": "random",
    "dropout (train, fixed mask)": "(ℝ>0)ⁿ",
    "dropout (eval)": "(ℝ>0)ⁿ, O(n)",
}


@pytest.fixture(scope="module")
def torch_table() -> PrimitiveTable:
    return primitive_table(isotorch_primitives=False, training=False)


def test_torch_rows(torch_table):
    summary = {r.name: r.summary() for r in torch_table.rows}
    for name, expected in EXPECTED_TORCH.items():
        assert summary[name] == expected, name
    required = {"silu", "sigmoid", "softplus", "elu", "leaky_relu", "log_softmax"}
    assert required <= set(summary)
    tanh = next(r for r in torch_table.rows if r.name == "tanh")
    assert [tanh.cell(c) for c in _table.COLUMNS] == ["E", "E", "–", "–", "–", "–", "–", "–"]
    dropout = next(r for r in torch_table.rows if r.name == "dropout (train)")
    assert dropout.cell("permutation") == "" and "differ" in dropout.remark()


def test_renderers(torch_table):
    markdown = torch_table.to_markdown()
    assert "| tanh | torch | B_n | E | E | – |" in markdown
    assert "## Normalisers" in markdown and "## Optimisers" not in markdown
    data = json.loads(torch_table.to_json())
    assert data["columns"] == list(_table.COLUMNS) and len(data["rows"]) == len(torch_table.rows)
    console = Console(record=True, width=250)
    console.print(torch_table)
    assert "layer_norm (affine)" in console.export_text()


def test_the_table_is_deterministic_and_leaves_global_state_alone():
    threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    a = primitive_table(isotorch_primitives=False, training=False, kinds=["dropout", "pool"])
    b = primitive_table(isotorch_primitives=False, training=False, kinds=["dropout", "pool"])
    assert a.to_markdown() == b.to_markdown()
    assert [r.result.to_dict() for r in a.rows] == [r.result.to_dict() for r in b.rows]
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)


def test_the_generator_decides_the_table_and_is_not_advanced():
    def table(generator):
        return primitive_table(generator=generator, isotorch_primitives=False, training=False, kinds=["dropout"])

    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    seeded = table(gen)
    assert torch.equal(gen.get_state(), state)
    assert seeded.seed == 0 and "seed 0." in seeded.to_markdown()
    # None is the global RNG: in the same state as the generator, the same table
    torch.manual_seed(0)
    assert [r.result.to_dict() for r in table(None).rows] == [r.result.to_dict() for r in seeded.rows]
    # another state gives other measurements, and a generator that is not freshly seeded has no seed to name
    gen.manual_seed(0)
    torch.randn(3, generator=gen)
    advanced = table(gen)
    assert advanced.seed is None and "seed" not in advanced.to_markdown().split("Feature size")[1].split("\n")[0]
    assert [r.result.to_dict() for r in advanced.rows] != [r.result.to_dict() for r in seeded.rows]
    with pytest.raises(TypeError, match="generator"):
        primitive_table(generator=0)


def test_training_rows_come_from_the_registries():
    table = primitive_table(torch_primitives=False, isotorch_primitives=False, kinds=["optimiser", "regulariser"])
    rows = {r.name: r for r in table.rows}
    assert rows["l1"].summary() == "B_n" and rows["l2"].summary() == "O(n)"
    optimisers = [r for r in table.rows if r.kind == "optimiser"]
    assert optimisers and all(r.agrees is not False for r in optimisers), [r.remark() for r in optimisers]


def test_training_rows_come_from_the_optimiser_and_initialiser_registries():
    table = primitive_table(torch_primitives=False, isotorch_primitives=False)
    summary = {r.name: (r.source, r.summary()) for r in table.rows}
    assert summary["sgd"] == ("isotorch", "O(n)") and summary["adam"] == ("isotorch", "B_n")
    assert summary["orthogonal"] == ("isotorch", "O(n)") and summary["kaiming_uniform"] == ("isotorch", "B_n")


def test_isotorch_rows_compare_declared_and_measured(monkeypatch):
    specs = [
        it.nn.PrimitiveSpec("fake_overclaim", "activation", lambda n: torch.nn.Tanh(), ("orthogonal",)),
        it.nn.PrimitiveSpec("fake_honest", "activation", lambda n: torch.nn.Tanh(), ("signed_permutation",)),
        it.nn.PrimitiveSpec("fake_broken", "activation", lambda n: 1 / 0, ("orthogonal",)),
    ]
    monkeypatch.setattr(_registry, "_PRIMITIVES", {})  # the registry holds only the fakes during this test
    for spec in specs:
        it.nn.register(spec)
    table = primitive_table(torch_primitives=False, training=False)
    rows = {r.name: r for r in table.rows}
    assert rows["fake_overclaim"].agrees is False
    assert "not confirmed for O(n)" in rows["fake_overclaim"].remark()
    assert rows["fake_honest"].agrees is True
    assert rows["fake_broken"].result.status == "failed" and "ZeroDivisionError" in rows["fake_broken"].remark()


def test_bad_kinds():
    with pytest.raises(ValueError, match="kinds"):
        primitive_table(kinds=["activations"])


@pytest.mark.slow
def test_docs_audit_md_is_not_stale():
    expected = primitive_table(generator=torch.Generator().manual_seed(0)).to_markdown()
    assert DOCS.exists(), "docs/audit.md is missing: run `isotorch audit --primitives --markdown docs/audit.md`"
    assert DOCS.read_text(encoding="utf-8") == expected, (
        "docs/audit.md is stale: regenerate it with `isotorch audit --primitives --markdown docs/audit.md`"
    )
