"""The study runner: configs, registry, output folder, metrics, checkpoints, resume (real SIGKILL), NaN, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from isotorch import studies
from isotorch.studies import NonFiniteLossError, RunData, RunFolderError, StudyInterrupted, _registry, run_study
from isotorch.studies._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from isotorch.studies._config import ConfigError, config_from_dict, config_to_dict, make_config, parse_overrides
from isotorch.studies._registry import Study, UnknownStudyError, get, names, register
from isotorch.studies._stats import mean_ci


@dataclass(frozen=True)
class ToyConfig:
    steps: int = 40
    lr: float = 0.1
    widths: tuple[int, ...] = (4,)
    blow_up_at: int | None = None
    interrupt_at: int | None = None
    noisy: bool = True
    name: str = "toy"

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be positive, got {self.steps}")


@pytest.fixture(autouse=True, scope="module")
def _unregister_toy_study():
    """The toy study lives only as long as this module's tests: other tests loop over the built-in studies."""
    yield
    _registry._REGISTRY.pop("toy-test", None)


@register("toy-test")
class Toy(Study):
    """A tiny regression with minibatches and dropout noise, to test determinism across resume."""

    Config = ToyConfig
    presets: ClassVar[dict] = {"tiny": {"steps": 10}}

    def run(self, ctx):
        cfg = ctx.config
        x = torch.randn(32, 3, generator=ctx.generator)
        y = x.sum(1, keepdim=True)
        finals = {}
        for width in cfg.widths:
            model = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

            def step(t, model=model, opt=opt, width=width):
                if t == cfg.interrupt_at and width == cfg.widths[-1] and ctx.seed == 0:
                    os.kill(os.getpid(), signal.SIGINT)
                idx = ctx.batch_indices(t, 32, 8)
                noise = 0.01 * torch.randn(len(idx), 1, generator=ctx.generator) if cfg.noisy else 0.0
                loss = ((model(x[idx]) - y[idx] - noise) ** 2).mean()
                if cfg.blow_up_at is not None and t >= cfg.blow_up_at:
                    loss = loss * float("nan")
                opt.zero_grad()
                loss.backward()
                opt.step()
                return loss

            result = ctx.train(
                f"width={width}",
                step,
                cfg.steps,
                state={"model": model, "opt": opt},
                evaluate=lambda t, model=model: {"full_loss": ((model(x) - y) ** 2).mean()},
                log_every=5,
            )
            ctx.log(cfg.steps, run=f"width={width}", extra=float(torch.rand(1)))  # global RNG after training
            finals[f"loss{width}"] = result.last["full_loss"]
        return finals


# ------------------------------------------------------------------------------------------------------ configs
def test_parse_overrides_types():
    got = parse_overrides(ToyConfig, ["steps=7", "lr=1e-3", "widths=16,32", "blow_up_at=none", "noisy=no", "name=a=b"])
    assert got == {"steps": 7, "lr": 1e-3, "widths": (16, 32), "blow_up_at": None, "noisy": False, "name": "a=b"}
    assert parse_overrides(ToyConfig, ["blow_up_at=3"]) == {"blow_up_at": 3}
    assert parse_overrides(ToyConfig, ["widths="]) == {"widths": ()}


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'stepz'.*valid keys: blow_up_at, interrupt_at, lr"):
        parse_overrides(ToyConfig, ["stepz=3"])


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("steps=3.5", "steps must be an int"),
        ("lr=fast", "lr must be a float"),
        ("noisy=maybe", "noisy must be a bool"),
        ("widths=1,x", "widths must be an int"),
        ("steps", "key=value"),
    ],
)
def test_bad_values_name_the_key(item, match):
    with pytest.raises(ConfigError, match=match):
        parse_overrides(ToyConfig, [item])


def test_a_bad_config_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="stepz"):
        run_study("toy-test", out, overrides=["stepz=3"], seeds=(0,), progress=False)
    assert not out.exists(), "the folder is created only once the config is valid"


def test_make_config_validation_and_roundtrip():
    with pytest.raises(ConfigError, match="steps must be positive"):
        make_config(ToyConfig, overrides=["steps=0"])
    cfg = make_config(ToyConfig, preset={"steps": 5}, overrides={"widths": "2,3"})
    assert cfg == ToyConfig(steps=5, widths=(2, 3))
    assert config_from_dict(ToyConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg


def test_registry():
    assert "plateaus" in names() and "toy-test" in names()
    assert isinstance(get("plateaus"), Study)
    with pytest.raises(UnknownStudyError, match=r"unknown study 'nope'; registered studies: .*plateaus"):
        get("nope")
    with pytest.raises(TypeError, match="frozen"):

        @register("bad-test")
        class Bad(Study):
            @dataclass
            class Config:
                a: int = 1


def test_mean_ci():
    e = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert e.n == 3 and e.mean == 2.0 and abs(e.ci95 - 2.4841) < 1e-3
    single = mean_ci([5.0])
    assert single.mean == 5.0 and single.ci95 != single.ci95  # NaN: unknown, not 0


# ------------------------------------------------------------------------------------------------------ runner
def test_run_writes_folder_and_is_deterministic(tmp_path):
    a = run_study("toy-test", tmp_path / "a", seeds=(0, 1), progress=False, checkpoint_every=7)
    run_study("toy-test", tmp_path / "b", seeds=(0, 1), progress=False, checkpoint_every=1000)
    for name in ("config.json", "metrics.jsonl", "results.json", "findings.json", "report.html"):
        assert (tmp_path / "a" / name).exists(), name
    meta = json.loads((tmp_path / "a" / "config.json").read_text())
    assert meta["config"]["steps"] == 40 and meta["seeds"] == [0, 1]
    assert {"python", "torch", "numpy", "platform", "torch_threads"} <= set(meta["environment"])
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    records = a.data.records
    assert records[0] == {"seed": 0, "run": "width=4", "step": 0, "full_loss": records[0]["full_loss"]}
    assert [r["step"] for r in a.data.select(seed=1, run="width=4") if "loss" in r] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert a.data.finals[0] != a.data.finals[1]  # seeds differ


def test_existing_folder_and_unwritable(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="exists and is not empty; pass --resume"):
        run_study("toy-test", out, seeds=(0,), progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(RunFolderError, match="cannot resume"):
        run_study("toy-test", out, progress=False, resume=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="not a folder"):
        run_study("toy-test", tmp_path / "file", seeds=(0,), progress=False)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(RunFolderError, match="not writable"):
                run_study("toy-test", locked / "sub", seeds=(0,), progress=False)
        finally:
            locked.chmod(0o700)


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(
        NonFiniteLossError, match=r"loss became nan at update 23 of run 'width=4' \(seed 0\).*update 20"
    ):
        run_study("toy-test", out, seeds=(0,), progress=False, overrides={"blow_up_at": 23}, checkpoint_every=10)
    state = load_checkpoint(out / "checkpoints" / "seed0.pt")
    assert state["current"]["step"] == 20
    assert all(torch.isfinite(v).all() for v in state["current"]["state"]["model"].values())


def test_corrupted_checkpoint_is_named_and_kept(tmp_path):
    out = tmp_path / "run"
    run_study("toy-test", out, seeds=(0,), progress=False, preset="tiny", report=False)
    path = out / "checkpoints" / "seed0.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"seed0\.pt is corrupted"):
        run_study("toy-test", out, progress=False, resume=True)
    assert path.read_bytes() == b"not a checkpoint"


def test_atomic_save_leaves_no_temp_files(tmp_path):
    save_checkpoint({"format": "isotorch-study-checkpoint", "x": 1}, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt")["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_resume_with_other_config_is_an_error(tmp_path):
    out = tmp_path / "run"
    run_study("toy-test", out, seeds=(0,), progress=False, preset="tiny", report=False)
    with pytest.raises(ConfigError, match="different config"):
        run_study("toy-test", out, progress=False, resume=True, overrides=["steps=11"])
    with pytest.raises(ConfigError, match="distinct; 3 appear"):
        run_study("toy-test", out, progress=False, resume=True, seeds=(3, 3))


def test_ctrl_c_checkpoints_then_resume_matches(tmp_path):
    run_study("toy-test", tmp_path / "ref", seeds=(0,), progress=False, overrides={"widths": (3, 4)}, report=False)
    out = tmp_path / "int"
    overrides = {"widths": (3, 4), "interrupt_at": 17}
    with pytest.raises(StudyInterrupted, match="interrupted at update 18 of run 'width=4'"):
        run_study("toy-test", out, seeds=(0,), progress=False, overrides=overrides, report=False)
    assert load_checkpoint(out / "checkpoints" / "seed0.pt")["current"]["step"] == 18
    # resuming runs the same config; the SIGINT trigger fires only at t == 17, which is already done
    run_study("toy-test", out, progress=False, resume=True, report=False)
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()


def test_resume_after_a_finished_loop_replays_without_duplicates(tmp_path):
    """Truncate-and-replay: kill state simulated by restoring an early checkpoint of a two-loop, two-seed run."""
    ref = tmp_path / "ref"
    run_study("toy-test", ref, seeds=(0, 1), progress=False, overrides={"widths": (3, 4)}, report=False)
    out = tmp_path / "run"
    overrides = {"widths": (3, 4), "interrupt_at": 31}
    with pytest.raises(StudyInterrupted):
        run_study("toy-test", out, seeds=(0, 1), progress=False, overrides=overrides, report=False, checkpoint_every=5)
    with (out / "metrics" / "seed0.jsonl").open("a") as handle:  # lines written after the checkpoint, then killed
        handle.write('{"seed": 0, "run": "garbage", "step": 99}\n{"partial": ')
    run_study("toy-test", out, progress=False, resume=True, report=False)
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    assert json.loads((out / "results.json").read_text()) == json.loads((ref / "results.json").read_text())


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """A real SIGKILL of a subprocess mid-run (after a checkpoint exists), resumed with --resume."""
    args = ["plateaus", "--preset", "tiny", "--seeds", "0,1", "--checkpoint-every", "20", "--no-progress"]
    cmd = [sys.executable, "-m", "isotorch.studies._cli", "run", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([*cmd, "--out", str(ref)], check=True, env=env, capture_output=True, timeout=120)

    proc = subprocess.Popen([*cmd, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "seed0.pt"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists() and load_checkpoint(ckpt).get("completed"):  # mid-way: the first loop has finished
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()

    done = subprocess.run(
        [*cmd[:5], "--out", str(out), "--resume", "--no-progress"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    assert json.loads((out / "results.json").read_text()) == json.loads((ref / "results.json").read_text())
    for model in (ref / "models").iterdir():
        a = torch.load(model, weights_only=False)["model"].state_dict()
        b = torch.load(out / "models" / model.name, weights_only=False)["model"].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_errors(tmp_path):
    from typer.testing import CliRunner

    from isotorch.studies._cli import study_app

    runner = CliRunner()
    result = runner.invoke(study_app, ["run", "plateaus", "--out", str(tmp_path / "x"), "--set", "bogus=1"])
    assert result.exit_code == 2 and "valid keys" in result.output
    result = runner.invoke(study_app, ["run", "nope", "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "registered studies" in result.output
    result = runner.invoke(study_app, ["list"])
    assert result.exit_code == 0 and "plateaus" in result.output and "tiny" in result.output


def test_run_data_series(tmp_path):
    run_study("toy-test", tmp_path / "r", seeds=(0,), progress=False, preset="tiny", report=False)
    data = RunData.load(tmp_path / "r")
    steps, values = data.series("full_loss", seed=0, run="width=4")
    assert steps.tolist() == [0, 5, 10] and values.shape == (3,)
    assert data.runs() == ["width=4"]
    assert isinstance(studies, object)
