"""User studies installed under the entry-point group ``isotorch.studies`` run from the CLI like built-in ones.

A real distribution is made in a temporary folder (a module plus a ``.dist-info`` with ``entry_points.txt``) and put
on ``sys.path``, so ``importlib.metadata`` finds it exactly as it finds a pip-installed package.
"""

import json
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from isotorch.cli import app
from isotorch.studies import _registry

PLUGIN = textwrap.dedent(
    '''
    from dataclasses import dataclass

    import torch

    from isotorch.studies import Study


    @dataclass(frozen=True)
    class CountConfig:
        steps: int = 3


    class CountStudy(Study):
        """Counts to steps: a user's study outside isotorch."""

        Config = CountConfig

        def run(self, ctx):
            return {"total": float(sum(range(ctx.config.steps))), "draw": float(torch.rand(()))}
    '''
)


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install the plugin distribution for this test only (sys.path, a fresh plugin scan, registry restored)."""
    _registry.names()  # register the built-in studies first: the restored registry must hold them (imported once)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_registry, "_plugins_loaded", False)
    monkeypatch.setattr(_registry, "_PLUGINS", {})
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    def install(entries: str) -> None:
        (tmp_path / "my_plugin.py").write_text(PLUGIN)
        info = tmp_path / "my_plugin-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[isotorch.studies]\n{entries}\n")

    yield install
    sys.modules.pop("my_plugin", None)


def _cli(*args):
    return CliRunner().invoke(app, list(args))


def test_an_installed_study_is_listed_and_runs_from_the_cli(tmp_path, installed):
    installed("count = my_plugin:CountStudy\nbroken = my_plugin:DoesNotExist")
    listed = _cli("study", "list")
    assert listed.exit_code == 0, listed.output
    assert "count: Counts to steps" in listed.output and "quantisation" in listed.output
    assert "broken" not in listed.output  # a plugin that fails to load is left out, the rest still work
    out = tmp_path / "run"
    ran = _cli("study", "run", "count", "--out", str(out), "--seeds", "0,1", "--set", "steps=5")
    assert ran.exit_code == 0, ran.output
    results = json.loads((out / "results.json").read_text())
    assert sorted(results) == ["0", "1"] and results["0"]["total"] == 10.0
    assert results["0"]["draw"] != results["1"]["draw"]  # each seed seeded apart
    bad = _cli("study", "run", "broken", "--out", str(tmp_path / "x"))
    assert bad.exit_code == 2
    assert "installed but not usable" in bad.output and "DoesNotExist" in bad.output
    assert not (tmp_path / "x").exists()


def test_without_the_plugin_the_name_is_unknown(tmp_path):
    ran = _cli("study", "run", "count", "--out", str(tmp_path / "run"))
    assert ran.exit_code == 2 and "unknown study 'count'" in ran.output
