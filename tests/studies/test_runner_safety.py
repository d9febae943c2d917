"""Runner safety: checksummed checkpoints, NaN handling, finished loops in their own files, extending a run, devices,
and one-line errors for bad input (exit 2, nothing written)."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

from isotorch.cli import app
from isotorch.studies import NonFiniteLossError, RunFolderError, StudyInterrupted, _registry, run_study
from isotorch.studies._checkpoint import CheckpointError, load_checkpoint
from isotorch.studies._cli import print_findings, study_app
from isotorch.studies._registry import Study, register
from isotorch.studies._stats import Findings


@dataclass(frozen=True)
class SgdConfig:
    steps: int = 40
    lr: float = 0.05
    loops: int = 2
    sleep: float = 0.0
    interrupt_at: int | None = None


@register("sgd-safety-test")
class Sgd(Study):
    """Linear regression by full-batch SGD: a large lr diverges geometrically (to inf, then NaN)."""

    Config = SgdConfig

    def run(self, ctx):
        cfg = ctx.config
        x = torch.randn(32, 4, generator=ctx.generator) * 2
        y = x @ torch.randn(4, 1, generator=ctx.generator)
        xd, yd = x.to(ctx.device), y.to(ctx.device)
        finals = {}
        for loop in range(cfg.loops):
            model = torch.nn.Linear(4, 1).to(ctx.device)
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)

            def step(t, model=model, opt=opt, loop=loop):
                if cfg.sleep:
                    time.sleep(cfg.sleep)
                if t == cfg.interrupt_at and loop == cfg.loops - 1:
                    os.kill(os.getpid(), signal.SIGINT)
                loss = ((model(xd) - yd) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                return loss

            evaluate = lambda t, model=model: {"mse": ((model(xd) - yd) ** 2).mean()}  # noqa: E731
            result = ctx.train(f"loop{loop}", step, cfg.steps, state={"model": model, "opt": opt}, evaluate=evaluate)
            finals[f"mse{loop}"] = float(result.last["mse"])
        return finals


@pytest.fixture(autouse=True, scope="module")
def _unregister():
    yield
    _registry._REGISTRY.pop("sgd-safety-test", None)


def _run(out, **kwargs):
    if not kwargs.get("resume"):
        kwargs.setdefault("seeds", (0,))
    return run_study("sgd-safety-test", out, progress=False, report=False, **kwargs)


# ------------------------------------------------------------------------------------------------- checkpoints
def test_random_byte_flips_never_load(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(StudyInterrupted):
        _run(out, overrides={"interrupt_at": 17}, checkpoint_every=5)
    path = out / "checkpoints" / "seed0.pt"
    good = path.read_bytes()
    assert load_checkpoint(path)["current"]["step"] == 18
    rng = random.Random(0)
    for _ in range(60):
        data = bytearray(good)
        where = rng.randrange(len(data))
        data[where] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=r"seed0\.pt"):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"seed0\.pt is corrupted.*left in place"):
        _run(out, resume=True)
    assert path.read_bytes() == bytes(data), "the corrupted file is kept as it was"
    path.write_bytes(good)
    _run(out, resume=True)


def test_finished_loops_live_in_their_own_files(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(StudyInterrupted):
        _run(out, overrides={"loops": 3, "interrupt_at": 30}, checkpoint_every=10)
    index = load_checkpoint(out / "checkpoints" / "seed0.pt")
    assert set(index["completed"]) == {"loop0", "loop1"}
    for key, entry in index["completed"].items():
        assert "state" not in entry
        assert load_checkpoint(out / "checkpoints" / entry["file"])["key"] == key
    loop0 = out / "checkpoints" / index["completed"]["loop0"]["file"]
    stamp = loop0.stat().st_mtime_ns
    _run(out, resume=True)
    assert loop0.stat().st_mtime_ns == stamp, "a finished loop is written once"


def test_divergence_keeps_the_last_state_with_a_finite_loss(tmp_path):
    """lr = 8 diverges geometrically; the checkpoint kept is one whose loss is finite, and the message names it."""
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError) as info:
        _run(out, overrides={"lr": 8.0, "steps": 400, "loops": 1}, checkpoint_every=5)
    message = str(info.value)
    bad = int(message.split("at update ")[1].split()[0])
    state = load_checkpoint(out / "checkpoints" / "seed0.pt")["current"]
    assert f"at update {state['step']}, is kept" in message and state["step"] <= bad
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    model.load_state_dict(state["state"]["model"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g) * 2
    y = x @ torch.randn(4, 1, generator=g)
    assert torch.isfinite(((model(x) - y) ** 2).mean()), "the kept state has a finite loss"


# ------------------------------------------------------------------------------------------------- extend a run
def test_resume_with_more_seeds_adds_them(tmp_path):
    ref = _run(tmp_path / "ref", seeds=(0, 1, 2))
    out = tmp_path / "run"
    _run(out, seeds=(0, 1))
    stamp = (out / "checkpoints" / "seed1.pt").stat().st_mtime_ns
    extended = _run(out, seeds=(0, 1, 2), resume=True)
    assert (out / "checkpoints" / "seed1.pt").stat().st_mtime_ns == stamp
    assert extended.data.seeds == (0, 1, 2)
    assert extended.data.finals == ref.data.finals
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()


# ------------------------------------------------------------------------------------------------- devices
def test_cuda_without_cuda_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    result = CliRunner().invoke(study_app, ["run", "sgd-safety-test", "--out", str(tmp_path / "r"), "--device", "cuda"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
    result = CliRunner().invoke(study_app, ["run", "sgd-safety-test", "--out", str(tmp_path / "r"), "--bf16"])
    assert result.exit_code == 2 and "needs a CUDA device" in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_with_and_without_bf16(tmp_path):
    cpu = _run(tmp_path / "cpu", device="cpu")
    cuda = _run(tmp_path / "cuda", device="cuda")
    bf16 = _run(tmp_path / "bf16", device="auto", autocast=True)
    for key, value in cpu.data.finals[0].items():
        assert cuda.data.finals[0][key] == pytest.approx(value, rel=1e-3)
        assert bf16.data.finals[0][key] == pytest.approx(value, rel=0.1, abs=1e-2)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["runner"]["autocast"] == "bf16"


# ------------------------------------------------------------------------------------------------- bad input
def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--seeds", "0,0"], ["--seeds must be distinct", "0"]),
        (["--checkpoint-every", "0"], ["--checkpoint-every must be a positive"]),
        (["--preset", "a[b]"], ["unknown preset 'a[b]'"]),
        (["--executor", "dask"], ["executor must be one of serial, ray"]),
        (["--ray-address", "1.2.3.4:5"], ["needs executor='ray'"]),
        (["--device", "tpu"], ["device must be cpu, cuda, cuda:N or auto"]),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(tmp_path, args, needles):
    out = tmp_path / "r"
    _one_line_error(CliRunner().invoke(study_app, ["run", "sgd-safety-test", "--out", str(out), *args]), *needles)
    assert not out.exists()


def test_missing_dataset_files_are_refused_before_writing(tmp_path):
    out = tmp_path / "r"
    runner = CliRunner()
    base = ["run", "capacity", "--preset", "tiny", "--out", str(out), "--set", "dataset=mnist"]
    _one_line_error(runner.invoke(study_app, base), "data_root")
    assert not out.exists()
    missing = tmp_path / "nowhere"
    _one_line_error(runner.invoke(study_app, [*base, "--set", f"data_root={missing}"]), "does not exist", str(missing))
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(runner.invoke(study_app, [*base, "--set", f"data_root={empty}"]), "not found under")
    (empty / "train-images-idx3-ubyte").write_bytes(b"PNG not idx")
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (empty / name).write_bytes(b"")
    _one_line_error(runner.invoke(study_app, [*base, "--set", f"data_root={empty}"]), "not an idx file")
    assert not out.exists()


def test_tensorboard_hint_keeps_its_brackets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = CliRunner().invoke(study_app, ["run", "sgd-safety-test", "--out", str(tmp_path / "r"), "--tensorboard"])
    _one_line_error(result, "pip install 'isotorch[tensorboard]'")


def test_out_under_a_file_or_unwritable(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="is a file"):
        _run(tmp_path / "file" / "sub")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "file" / "sub"), "--seeds", "0"])
    _one_line_error(result, "is a file")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            result = CliRunner().invoke(app, ["demo", "--out", str(locked / "sub"), "--seeds", "0"])
            _one_line_error(result, "not writable")
        finally:
            locked.chmod(0o700)


def test_report_of_a_malformed_metrics_line(tmp_path):
    out = tmp_path / "run"
    _run(out)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[3] = lines[3][:20]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    _one_line_error(CliRunner().invoke(study_app, ["report", str(out)]), "metrics.jsonl line 4 is not valid JSON")


def test_second_ctrl_c_stops_at_once_with_one_line(tmp_path):
    out = tmp_path / "run"
    code = (
        "import sys; sys.argv[0] = 'isotorch'; import tests.studies.test_runner_safety; "
        "from isotorch.studies._cli import study_app; study_app()"
    )
    args = ["run", "sgd-safety-test", "--out", str(out), "--set", "sleep=0.5", "--set", "steps=100", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    deadline = time.monotonic() + 60
    metrics = out / "metrics" / "seed0.jsonl"
    while time.monotonic() < deadline and not (metrics.exists() and metrics.stat().st_size):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.strip().splitlines() if "Ctrl-C:" not in line]  # the first Ctrl-C's notice
    assert len(lines) == 1 and "stopped at once (second Ctrl-C)" in lines[0], err


def test_tables_stay_readable_at_80_columns():
    from rich.console import Console

    columns = [f"metric number {i} (unit)" for i in range(8)]
    rows = {name: {c: [0.123456, 0.2, 0.3] for c in columns} for name in ("elementwise", "isotropic")}
    console = Console(width=80, record=True, file=io.StringIO())
    print_findings([Findings.from_values("collapse", rows)], console=console)
    text = console.export_text()
    assert "elementwise" in text and "isotropic" in text and "…" not in text
    assert all(c in text for c in columns)
    assert max(len(line) for line in text.splitlines()) <= 80


def test_demo_device_and_seed_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--seeds", "0,0"])
    _one_line_error(result, "--seeds must be distinct")
    if not torch.cuda.is_available():
        _one_line_error(runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--device", "cuda"]), "CUDA")
    _one_line_error(runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--device", "cpu", "--bf16"]), "bf16")
    assert not (tmp_path / "d").exists()


def test_help_keeps_bracketed_extras():
    result = CliRunner().invoke(app, ["audit", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "isotorch[hf]" in result.output
