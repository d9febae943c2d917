"""Tests for the ``isotorch audit`` command (isotorch.audit._cli) through typer's CliRunner."""

import json
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from isotorch.audit import _table, primitive_table
from isotorch.cli import app

runner = CliRunner()


@pytest.fixture
def small_table(monkeypatch):
    table = primitive_table(isotorch_primitives=False, training=False, kinds=["activation"])
    monkeypatch.setattr(_table, "primitive_table", lambda **kwargs: table)
    return table


def test_primitives_prints_and_writes_json_and_markdown(small_table, tmp_path):
    json_path, md_path = tmp_path / "out" / "audit.json", tmp_path / "audit.md"
    result = runner.invoke(app, ["audit", "--primitives", "--json", str(json_path), "--markdown", str(md_path)])
    assert result.exit_code == 0, result.output
    assert "Symmetry audit of primitives" in result.output
    assert md_path.read_text(encoding="utf-8") == small_table.to_markdown()
    assert json.loads(json_path.read_text(encoding="utf-8"))["rows"][0]["name"] == "tanh"


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "audit_cli_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def mlp():
                return nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 4))

            def broken():
                raise ValueError("no model today")

            def not_a_model():
                return 42
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    yield "audit_cli_models"
    sys.modules.pop("audit_cli_models", None)


def test_factory_target(factory_module, tmp_path):
    md_path, json_path = tmp_path / "model.md", tmp_path / "model.json"
    result = runner.invoke(
        app,
        [
            "audit",
            f"{factory_module}:mlp",
            "--input-shape",
            "8,32",
            "--markdown",
            str(md_path),
            "--json",
            str(json_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Symmetry audit of Sequential" in result.output and "1/1 free sites verified" in result.output
    assert "| 1 | Tanh | -1 | 16 | B_n |" in md_path.read_text(encoding="utf-8")
    assert json.loads(json_path.read_text(encoding="utf-8"))["summary"]["G1"]["common"] == ["signed_permutation"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["audit_cli_models:nope", "--input-shape", "8,32"], "has no attribute 'nope'"),
        (["audit_cli_models:broken", "--input-shape", "8,32"], "raised ValueError: no model today"),
        (["audit_cli_models:not_a_model", "--input-shape", "8,32"], "not an nn.Module"),
        (["no_such_module_xyz:f", "--input-shape", "8,32"], "cannot import module 'no_such_module_xyz'"),
        (["audit_cli_models", "--input-shape", "8,32"], "package.module:factory"),
        (["audit_cli_models:mlp"], "--input-shape is required"),
        (["audit_cli_models:mlp", "--input-shape", "8,a"], "comma-separated positive integers"),
        (["audit_cli_models:mlp", "--input-shape", "8,31"], "does --input-shape match the model?"),
        (["hf:nonexistent"], "unknown hf model 'nonexistent'"),
        ([], "--primitives"),
        (["audit_cli_models:mlp", "--primitives"], "not both"),
    ],
)
def test_user_errors_are_one_line_without_traceback(factory_module, args, message):
    result = runner.invoke(app, ["audit", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_hf_without_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    result = runner.invoke(app, ["audit", "hf:gpt2"])
    assert result.exit_code == 2
    assert "pip install 'isotorch[hf]'" in result.output


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
def test_hf_models_from_a_config(name):
    pytest.importorskip("transformers")
    result = runner.invoke(app, ["audit", f"hf:{name}", "--layers", "1", "--width", "64", "--input-shape", "1,8"])
    assert result.exit_code == 0, result.output
    assert "G1  every primitive site holds: S_n" in result.output
