"""Units per (seed, configuration): folder layout, the same data as whole-seed units, resume mid-unit, extending
seeds, refusing old-layout folders and changed configurations, combine."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass

import pytest
import torch

from isotorch.studies import RunFolderError, StudyInterrupted, _registry, run_study
from isotorch.studies._checkpoint import load_checkpoint
from isotorch.studies._registry import Study, register
from isotorch.studies._run_folder import file_name


@dataclass(frozen=True)
class UnitsConfig:
    steps: int = 30
    widths: tuple[int, ...] = (3, 4, 5)
    interrupt: str = ""  # "seed:width:update": Ctrl-C at that update of that unit (once per process)
    clash: bool = False  # every configuration returns the same key with its own value (a combine error)


_FIRED: set[str] = set()


class _Regressions(Study):
    """A small regression per width; weights and noise are seeded per (seed, width), so widths are independent."""

    Config = UnitsConfig

    def run(self, ctx):
        cfg = ctx.config
        x = torch.randn(32, 3, generator=ctx.generator)
        y = torch.sin(x).sum(1, keepdim=True)
        finals = {}
        for width in cfg.widths:
            name = f"width={width}"
            if ctx.configuration is not None and ctx.configuration != name:
                continue
            ctx.generator.manual_seed(1_000 * ctx.seed + width)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1_000 * ctx.seed + width)
                model = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
            opt = torch.optim.Adam(model.parameters(), lr=0.05)

            def step(t, model=model, opt=opt, width=width):
                if cfg.interrupt == f"{ctx.seed}:{width}:{t}" and cfg.interrupt not in _FIRED:
                    _FIRED.add(cfg.interrupt)
                    os.kill(os.getpid(), signal.SIGINT)
                idx = ctx.batch_indices(t, 32, 8)
                noise = 0.01 * torch.randn(len(idx), 1, generator=ctx.generator)
                loss = ((model(x[idx]) - y[idx] - noise) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                return loss

            evaluate = lambda t, model=model: {"full": ((model(x) - y) ** 2).mean()}  # noqa: E731
            result = ctx.train(
                name, step, cfg.steps, state={"model": model, "opt": opt}, evaluate=evaluate, log_every=5
            )
            ctx.log(cfg.steps, run=name, event="final", n_records=len(ctx.records(run=name)))
            finals[f"{name}/full"] = result.last["full"]
            if cfg.clash:
                finals["shared"] = width
        return finals


@register("units-whole-test")
class WholeSeeds(_Regressions):
    """The regressions with one unit per seed (no configurations declared)."""


@register("units-test")
class Configured(_Regressions):
    """The regressions with a unit per (seed, width)."""

    def configurations(self, config):
        return [f"width={w}" for w in config.widths]


@pytest.fixture(autouse=True, scope="module")
def _unregister():
    yield
    for name in ("units-whole-test", "units-test", "units-bad-test"):
        _registry._REGISTRY.pop(name, None)


def _run(name, out, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("report", False)
    return run_study(name, out, **kwargs)


def test_a_unit_per_seed_and_configuration_gives_the_whole_seeds_data(tmp_path):
    whole = _run("units-whole-test", tmp_path / "whole", seeds=(0, 1))
    units = _run("units-test", tmp_path / "units", seeds=(0, 1))
    stems = [f"seed{s}-width={w}" for s in (0, 1) for w in (3, 4, 5)]
    assert sorted(p.name for p in (tmp_path / "units" / "metrics").iterdir()) == sorted(f"{s}.jsonl" for s in stems)
    for stem in stems:
        state = load_checkpoint(tmp_path / "units" / "checkpoints" / f"{stem}.pt")
        assert state["done"] and state["configuration"] == stem.split("-", 1)[1]
        assert len(state["final"]) == 1, "each unit ran only its own configuration"
    assert sorted(p.name for p in (tmp_path / "whole" / "metrics").iterdir()) == ["seed0.jsonl", "seed1.jsonl"]
    meta = json.loads((tmp_path / "units" / "config.json").read_text())
    assert meta["configurations"] == ["width=3", "width=4", "width=5"] and meta["layout"] == 2
    # what the analysis reads is the same as with whole seeds: per-seed results and records, in the same order
    assert (tmp_path / "units" / "results.json").read_text() == (tmp_path / "whole" / "results.json").read_text()
    assert (tmp_path / "units" / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()
    assert units.data.finals == whole.data.finals and set(units.data.finals[1]) == {
        f"width={w}/full" for w in (3, 4, 5)
    }
    # each unit's metrics file holds only its own configuration's records (7 logged + the final one)
    for stem in stems:
        lines = (tmp_path / "units" / "metrics" / f"{stem}.jsonl").read_text().splitlines()
        assert {json.loads(line)["run"] for line in lines} == {stem.split("-", 1)[1]} and len(lines) == 8
    assert [r["n_records"] for r in units.data.records if r.get("event") == "final"] == [7] * 6


def test_ctrl_c_mid_unit_keeps_finished_units_and_resume_matches(tmp_path):
    ref = _run("units-test", tmp_path / "ref", seeds=(0, 1))
    out = tmp_path / "run"
    with pytest.raises(StudyInterrupted, match=r"update 13 of run 'width=4' \(seed 1\)"):
        _run("units-test", out, seeds=(0, 1), overrides={"interrupt": "1:4:12"}, checkpoint_every=5)
    checkpoints = out / "checkpoints"
    assert load_checkpoint(checkpoints / "seed1-width=4.pt")["current"]["step"] == 13
    assert load_checkpoint(checkpoints / "seed1-width=3.pt")["done"]
    assert not (checkpoints / "seed1-width=5.pt").exists()
    # seed 0 finished and is booked; seed 1 (two of three units done) is not in the results yet
    assert list(json.loads((out / "results.json").read_text())) == ["0"]
    assert {json.loads(line)["seed"] for line in (out / "metrics.jsonl").read_text().splitlines()} == {0}
    stamp = (checkpoints / "seed1-width=3.pt").stat().st_mtime_ns
    with (out / "metrics" / "seed1-width=4.jsonl").open("a") as handle:  # written after the checkpoint, then killed
        handle.write('{"seed": 1, "run": "garbage", "step": 99}\n{"partial": ')
    done = _run("units-test", out, resume=True, overrides={"interrupt": "1:4:12"})
    assert (checkpoints / "seed1-width=3.pt").stat().st_mtime_ns == stamp, "a finished unit is not rerun"
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()
    assert done.data.finals == ref.data.finals


def test_resume_adds_seeds_and_keeps_finished_units(tmp_path):
    ref = _run("units-test", tmp_path / "ref", seeds=(0, 2))
    out = tmp_path / "run"
    _run("units-test", out, seeds=(0,))
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("seed0-*.pt")}
    extended = _run("units-test", out, seeds=(0, 2), resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("seed0-*.pt")} == stamps
    assert len(list((out / "metrics").glob("seed2-*.jsonl"))) == 3
    assert extended.data.finals == ref.data.finals
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()


def test_old_layout_and_changed_configurations_are_refused_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from isotorch.studies._cli import study_app

    out = tmp_path / "run"
    _run("units-test", out, seeds=(0,), overrides={"steps": 5})
    meta = json.loads((out / "config.json").read_text())

    old = dict(meta)
    del old["layout"], old["configurations"]  # what the whole-seed version wrote
    (out / "config.json").write_text(json.dumps(old))
    with pytest.raises(RunFolderError, match=r"written by an older isotorch .* new folder"):
        _run("units-test", out, resume=True)
    result = CliRunner().invoke(study_app, ["run", "units-test", "--out", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 2 and "older isotorch" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output

    (out / "config.json").write_text(json.dumps({**meta, "configurations": ["width=3", "width=9"]}))
    with pytest.raises(RunFolderError, match=r"now has configurations \['width=3', 'width=4', 'width=5'\]"):
        _run("units-test", out, resume=True)
    (out / "config.json").write_text(json.dumps(meta))  # the control: the intact folder resumes
    assert _run("units-test", out, resume=True).data.finals.keys() == {0}


def test_combine_refuses_a_key_with_two_values_and_bad_names_write_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"result 'shared' is returned by configurations 'width=3' and 'width=4'"):
        _run("units-test", tmp_path / "clash", seeds=(0,), overrides={"steps": 3, "clash": True})

    @register("units-bad-test")
    class Bad(_Regressions):
        def configurations(self, config):
            return ["a b", "a:b"]

    with pytest.raises(ValueError, match=r"clashing file names \['a_b', 'a_b'\]"):
        _run("units-bad-test", tmp_path / "bad", seeds=(0,))
    assert not (tmp_path / "bad").exists()
    assert file_name("variant=block:4") == "variant=block_4" and file_name("tanh w=8 d=1") == "tanh_w=8_d=1"


@pytest.mark.slow
def test_sigkill_mid_unit_then_resume_equals_uninterrupted(tmp_path):
    """A real SIGKILL of `study run capacity` while one (seed, configuration) unit is half-way (its learning-rate
    sweep finished, its main loop not), resumed with --resume: the same records, results and models."""
    import subprocess
    import sys
    import time

    args = ["capacity", "--preset", "tiny", "--seeds", "0", "--set", "depths=1", "--checkpoint-every", "2"]
    cmd = [sys.executable, "-m", "isotorch.studies._cli", "run", *args, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref, out = tmp_path / "ref", tmp_path / "killed"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1)
    try:
        run_study("capacity", ref, seeds=(0,), preset="tiny", overrides={"depths": (1,)}, progress=False)
    finally:
        torch.set_num_threads(threads)

    proc = subprocess.Popen([*cmd, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    unit = out / "checkpoints" / "seed0-tanh_ln_w=16_d=1.pt"  # the 6th of its 8 units
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        state = load_checkpoint(unit) if unit.exists() else None  # replaced atomically: never torn
        if state is not None and not state["done"] and state.get("current") and state.get("completed"):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed mid-unit"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not load_checkpoint(unit)["done"]
    assert not (out / "results.json").exists() or json.loads((out / "results.json").read_text()) == {}

    done = subprocess.run(
        [*cmd[:5], "--out", str(out), "--resume", "--no-progress"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    assert json.loads((out / "results.json").read_text()) == json.loads((ref / "results.json").read_text())
    for model in (ref / "models").iterdir():
        a = torch.load(model, weights_only=False)["model"].state_dict()
        b = torch.load(out / "models" / model.name, weights_only=False)["model"].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
