"""The Ray executor on a 2-CPU local cluster (one cluster for the module: Ray starts slowly)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest
import torch

ray = pytest.importorskip("ray", reason="the Ray executor needs isotorch[distributed]")

from isotorch.studies import StudyInterrupted, _registry, run_study  # noqa: E402
from isotorch.studies._checkpoint import load_checkpoint  # noqa: E402
from isotorch.studies._ray import ExecutorError, speaks_grpc  # noqa: E402
from isotorch.studies._registry import Study, register  # noqa: E402


@dataclass(frozen=True)
class SlowToyConfig:
    steps: int = 30
    widths: tuple[int, ...] = (3, 4)
    sleep: float = 0.0
    die_file: str = ""  # seed 1's worker exits abruptly at update 5 once while this file exists (then removes it)


@register("ray-toy-test")
class SlowToy(Study):
    """Two small regressions per seed (a unit each), optionally slowed down so that a run can be interrupted."""

    Config = SlowToyConfig

    def configurations(self, config):
        return [f"w{width}" for width in config.widths]

    def run(self, ctx):
        cfg = ctx.config
        x = torch.randn(64, 5, generator=ctx.generator)
        y = torch.sin(x).sum(1, keepdim=True)
        finals = {}
        for width in cfg.widths:
            if f"w{width}" != ctx.configuration:
                continue
            model = torch.nn.Sequential(torch.nn.Linear(5, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
            opt = torch.optim.Adam(model.parameters(), lr=0.05)

            def step(t, model=model, opt=opt):
                if cfg.sleep:
                    time.sleep(cfg.sleep)
                if cfg.die_file and ctx.seed == 1 and t == 5 and os.path.exists(cfg.die_file):
                    os.remove(cfg.die_file)
                    os._exit(3)
                idx = ctx.batch_indices(t, 64, 16)
                loss = ((model(x[idx]) - y[idx]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                return loss

            evaluate = lambda t, model=model: {"full": ((model(x) - y) ** 2).mean()}  # noqa: E731
            result = ctx.train(f"w{width}", step, cfg.steps, state={"model": model, "opt": opt}, evaluate=evaluate)
            finals[f"w{width}"] = result.last["full"]
        return finals


@pytest.fixture(scope="module", autouse=True)
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()
    _registry._REGISTRY.pop("ray-toy-test", None)


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for seed in a:
        for key in a[seed]:
            assert a[seed][key] == pytest.approx(b[seed][key], rel=1e-6), (seed, key)


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ray_equals_serial_and_extends_a_run(tmp_path):
    serial = run_study("ray-toy-test", tmp_path / "serial", seeds=(0, 1, 2), progress=False, report=False)
    first = run_study("ray-toy-test", tmp_path / "ray", seeds=(0, 1), executor="ray", progress=False, report=False)
    assert set(first.data.finals) == {0, 1}
    assert sorted(p.name for p in (tmp_path / "ray" / "metrics").iterdir()) == [
        f"seed{s}-w{w}.jsonl" for s in (0, 1) for w in (3, 4)
    ], "a unit per (seed, configuration)"
    stamp = (tmp_path / "ray" / "checkpoints" / "seed0-w3.pt").stat().st_mtime_ns
    extended = run_study(
        "ray-toy-test", tmp_path / "ray", seeds=(0, 1, 2), resume=True, executor="ray", progress=False, report=False
    )
    assert (tmp_path / "ray" / "checkpoints" / "seed0-w3.pt").stat().st_mtime_ns == stamp, "seed 0 was not rerun"
    assert json.loads((tmp_path / "ray" / "config.json").read_text())["seeds"] == [0, 1, 2]
    _close(extended.data.finals, serial.data.finals)
    ours, theirs = _records(tmp_path / "ray"), _records(tmp_path / "serial")
    assert [(r["seed"], r["run"], r["step"]) for r in ours] == [(r["seed"], r["run"], r["step"]) for r in theirs]
    for r, s in zip(ours, theirs, strict=True):
        for key in ("loss", "full"):
            if key in r:
                assert r[key] == pytest.approx(s[key], rel=1e-6)


def test_ray_ctrl_c_keeps_finished_work_and_resume_completes(tmp_path):
    ref = run_study("ray-toy-test", tmp_path / "ref", seeds=(0, 1, 2), progress=False, report=False)
    out = tmp_path / "run"
    overrides = {"sleep": 0.05}  # 60 updates of ≥ 50 ms per seed

    def interrupt_once_training():  # Ctrl-C to this (the driver's) process once a seed has logged a record
        deadline = time.monotonic() + 100
        while time.monotonic() < deadline:
            if any(p.stat().st_size for p in (out / "metrics").glob("seed*.jsonl")):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=interrupt_once_training, daemon=True)
    watcher.start()
    with pytest.raises(StudyInterrupted, match="Resume with --resume"):
        run_study(
            "ray-toy-test", out, seeds=(0, 1, 2), overrides=overrides, executor="ray", progress=False, report=False
        )
    watcher.join()
    states = [load_checkpoint(p) for p in sorted((out / "checkpoints").glob("seed?-w?.pt"))]
    assert states, "the cancelled tasks saved checkpoints"
    assert not all(s["done"] for s in states) or len(states) < 6
    done = run_study(
        "ray-toy-test", out, resume=True, executor="ray", overrides=overrides, progress=False, report=False
    )
    _close(done.data.finals, ref.data.finals)


def test_a_dead_worker_is_one_error_and_resume_completes(tmp_path):
    ref = run_study("ray-toy-test", tmp_path / "ref", seeds=(0, 1), progress=False, report=False)
    flag = tmp_path / "die"
    flag.write_text("")
    overrides = {"die_file": str(flag)}
    out = tmp_path / "run"
    with pytest.raises(ExecutorError, match=r"the Ray task of seed 1 · w[34] failed .*resume with --resume"):
        run_study("ray-toy-test", out, seeds=(0, 1), overrides=overrides, executor="ray", progress=False, report=False)
    assert not flag.exists()
    done = run_study("ray-toy-test", out, resume=True, executor="ray", progress=False, report=False)
    _close(done.data.finals, ref.data.finals)


@pytest.fixture
def http_port():
    """A local port that is open but not Ray's (a plain HTTP server)."""

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_grpc_probe_tells_ray_from_other_servers(http_port):
    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    assert speaks_grpc(host, int(port), timeout=10)
    assert not speaks_grpc("127.0.0.1", http_port, timeout=10)
    with pytest.raises(OSError):
        speaks_grpc("127.0.0.1", 1, timeout=10)


@pytest.mark.parametrize(("kind", "needle"), [("closed", "cannot reach the Ray cluster"), ("http", "is not a Ray")])
def test_unreachable_address_exits_2_with_one_line(tmp_path, http_port, kind, needle):
    address = "127.0.0.1:1" if kind == "closed" else f"127.0.0.1:{http_port}"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "isotorch.studies._cli", "run", "plateaus", "--preset", "tiny", "--out",
         str(tmp_path / "r"), "--executor", "ray", "--ray-address", address, "--no-progress"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and address in lines[0], proc.stderr
    assert time.monotonic() - start < 120
    assert not (tmp_path / "r").exists(), "nothing is written before the cluster is reached"
