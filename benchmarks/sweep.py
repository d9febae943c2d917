"""A study's units one after another (serial executor) against the same units as Ray tasks on a 2-CPU local cluster.

Runs ``--study`` (default ``capacity``, preset ``tiny`` with ``--set epochs=24 max_train=800`` unless other ``--set``
overrides are given: 4 variants × 2 widths × 2 depths = 16 configurations per seed, each a unit of its own) for
``--seeds`` (default 0,1,2) twice into temporary run folders: ``executor="serial"`` in this process
(with ``--serial-threads`` torch threads, default 1, like each Ray task), then ``executor="ray"`` on a local cluster
started with ``ray.init(num_cpus=--cpus)`` (default 2; one CPU and one torch thread per task). Before the Ray run is
timed, the cluster is started and one warm-up task per CPU imports isotorch in its worker (the serial run's process
has imported it too, and runs one untimed seed of the preset first); both start-up times are printed, and the
speed-up with them included. Prints both wall times, the speed-up serial / Ray (goal ≥ 1.6×) and the largest
relative difference between the two runs' per-seed results and logged values (must be ≤ 1e-6).

A unit is a (seed, configuration) pair for a study that declares its configurations (capacity, quantisation,
symmetry_order, collapse, lmc) and a whole seed otherwise. With whole seeds as units, k seeds on c CPUs take ⌈k/c⌉
rounds, so 3 seeds on 2 CPUs can be at most 1.5× faster than a one-thread serial run (``--study plateaus --set
steps=1500`` shows it); with 48 configuration units the bound is close to c×, less the imbalance of the last round
and Ray's per-task overhead. CPU timings on a shared machine are noisy: note the load average printed at the start.

The serial and Ray runs alternate ``--repeats`` times (default 3) and the median speed-up is reported: on a shared
(virtual) machine single timings vary by ±50% from run to run.

Run ``python benchmarks/sweep.py`` (``--study``, ``--preset``, ``--set k=v``, ``--seeds``, ``--cpus``,
``--repeats``, ``--serial-threads``). Needs ``isotorch[distributed]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from isotorch.studies._runner import run_study

GOAL = 1.6
TOLERANCE = 1e-6


def _max_relative_difference(a: Path, b: Path) -> float:
    """Largest |x − y| / max(|x|, |y|, 1e-12) over results.json's numbers and metrics.jsonl's numbers."""
    worst = 0.0

    def walk(x, y):
        nonlocal worst
        if isinstance(x, dict):
            assert x.keys() == y.keys(), (sorted(x), sorted(y))
            for k in x:
                walk(x[k], y[k])
        elif isinstance(x, list):
            assert len(x) == len(y)
            for u, v in zip(x, y, strict=True):
                walk(u, v)
        elif isinstance(x, int | float) and not isinstance(x, bool):
            if math.isnan(x) and math.isnan(y):
                return
            worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-12))
        else:
            assert x == y, (x, y)

    walk(json.loads((a / "results.json").read_text()), json.loads((b / "results.json").read_text()))
    lines_a = (a / "metrics.jsonl").read_text().splitlines()
    lines_b = (b / "metrics.jsonl").read_text().splitlines()
    assert len(lines_a) == len(lines_b), (len(lines_a), len(lines_b))
    for la, lb in zip(lines_a, lines_b, strict=True):
        walk(json.loads(la), json.loads(lb))
    return worst


def _warm_up(study: str) -> int:
    """A Ray task that imports isotorch and the study in its worker; returns the worker's pid."""
    import time

    from isotorch.studies._registry import get

    get(study)
    time.sleep(0.5)  # hold the worker so that the next warm-up task starts another one
    return os.getpid()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="capacity")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config key=value")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="serial/Ray pairs; the median speed-up is reported")
    parser.add_argument("--serial-threads", type=int, default=1, help="torch threads of the serial run (0: default)")
    args = parser.parse_args()
    if not args.overrides and args.preset == "tiny":
        args.overrides = {"plateaus": ["steps=1500"], "capacity": ["epochs=24", "max_train=800"]}.get(args.study, [])
    seeds = tuple(int(s) for s in args.seeds.split(","))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    warm_up = ray.remote(num_cpus=1)(_warm_up)

    if args.serial_threads > 0:
        torch.set_num_threads(args.serial_threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{args.study} preset={args.preset} {' '.join(args.overrides)} seeds={list(seeds)}; {os.cpu_count()} CPUs, "
        f"load average {load:.1f}; serial uses {torch.get_num_threads()} torch thread(s), Ray {args.cpus} CPUs × 1"
    )
    common = {"seeds": seeds, "preset": args.preset, "overrides": args.overrides, "progress": False, "report": False}
    serial_times, ray_times, differences = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        # untimed: one seed of the preset in this process, so that the timed serial runs (like the Ray workers after
        # their warm-up) do not pay for first imports (matplotlib, scipy, the dataset loaders) and caches
        start = time.perf_counter()
        run_study(args.study, Path(tmp) / "warm", **{**common, "seeds": seeds[:1], "overrides": []})
        driver_warm = time.perf_counter() - start

        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        startup = time.perf_counter() - start
        start = time.perf_counter()
        workers = set(ray.get([warm_up.remote(args.study) for _ in range(args.cpus)]))
        warm = time.perf_counter() - start
        try:
            for repeat in range(args.repeats):  # serial and Ray alternate, so that a slow spell hits both
                serial_out, ray_out = Path(tmp) / f"serial{repeat}", Path(tmp) / f"ray{repeat}"
                start = time.perf_counter()
                run_study(args.study, serial_out, **common)
                serial_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                run_study(args.study, ray_out, executor="ray", **common)
                ray_times.append(time.perf_counter() - start)
                differences.append(_max_relative_difference(serial_out, ray_out))
                print(
                    f"  repeat {repeat + 1}: serial {serial_times[-1]:6.1f} s, ray {ray_times[-1]:6.1f} s, "
                    f"speed-up {serial_times[-1] / ray_times[-1]:.2f}×",
                    flush=True,
                )
        finally:
            ray.shutdown()

    from isotorch.studies._registry import get
    from isotorch.studies._runner import _configurations, _resolve

    study = get(args.study)
    units = len(seeds) * max(1, len(_configurations(study, _resolve(study, args.preset, args.overrides))))
    rounds = math.ceil(units / args.cpus)
    serial, parallel = statistics.median(serial_times), statistics.median(ray_times)
    speedup = statistics.median(a / b for a, b in zip(serial_times, ray_times, strict=True))
    print(f"serial            {serial:8.1f} s   (median; after an untimed {driver_warm:.1f} s warm-up run of one seed)")
    print(
        f"ray ({args.cpus} CPUs)      {parallel:8.1f} s   (median; + {startup:.1f} s cluster start-up once, "
        f"{warm:.1f} s importing isotorch in {len(workers)} worker(s))"
    )
    print(
        f"speed-up serial/ray: {speedup:.2f}× (median of {args.repeats}) over {units} units (goal ≥ {GOAL}×; equal "
        f"units would bound it by {units}/{rounds} = {units / rounds:.2f}× against a one-core serial run); "
        f"with the start-ups in one run: {serial / (parallel + startup + warm):.2f}×"
    )
    difference = max(differences)
    verdict = "same results" if difference <= TOLERANCE else "RESULTS DIFFER"
    print(f"max relative difference of results and logged values: {difference:.2e} ({verdict}, tolerance {TOLERANCE})")


if __name__ == "__main__":
    main()
