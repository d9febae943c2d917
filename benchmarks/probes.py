"""Time the representation probes: SRM against a per-plane, per-angle evaluation, and streamed neural collapse.

1. SRM over 200,000 × 32 activations, standard basis (496 planes, 100 angles). Ours (closed-form arcs and a
   difference array, O(N·P)) side by side with two evaluations of the same formula at every sample, plane and angle:
   (a) the straightforward loop over planes and angles, vectorised over samples (as in the issue), and (b) the same
   evaluation vectorised over samples × planes × angles in chunks (``srm(method="dense")``, a stronger baseline).
   The baselines run on a subset of planes and are extrapolated to all 496 (printed as such); their counts on that
   subset are checked to be identical to ours. Targets: ≥ 20× faster than (a), < 10 s, peak memory < 1 GB.
2. SRM over 1,000,000 × 64 (2,016 planes), ours alone. Target: < 60 s on 2 cores.
3. Neural collapse over 1,000,000 × 512 features with 100 classes streamed in batches: NC1–NC3 from
   ``ClassMoments`` (one pass) and NC4 from ``NearestCentreAgreement`` (a second pass). Target: < 30 s on 2 cores.
   Only the probe work is timed; generating the synthetic batches is timed separately.
4. The scalar scores over 20,000 × 16 activations with their defaults (BCa bootstrap of 1,000 resamples over
   samples, Haar null of 99 bases for alignment and 19 for quantisation; 120 planes). Target: < 30 s each on an
   unloaded machine (on an oversubscribed one, OpenMP contention makes it several times slower).

Peak memory is the growth of the resident set (``ru_maxrss`` after the call minus the resident size before it) in a
fresh subprocess per measurement, so torch's allocations are seen. The machine is shared, so timings carry noise.

Usage:
    python benchmarks/probes.py [--small] [--baseline-planes 16] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def activations(n_rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed, partly basis-aligned float32 activations (a cubed Gaussian), generated without temporaries."""
    x = torch.randn(n_rows, dim, generator=torch.Generator().manual_seed(seed))
    return x.pow_(3)


def loop_baseline(x: torch.Tensor, planes: torch.Tensor, epsilon: float, angles: int) -> torch.Tensor:
    """The straightforward evaluation: for each plane and each angle, count â·s(θ) ≥ ε over all samples."""
    a = x.double()
    a = a / a.norm(dim=1, keepdim=True)
    theta = torch.arange(angles, dtype=torch.float64) * (2 * math.pi / angles)
    counts = torch.zeros(planes.shape[0], angles, dtype=torch.long)
    for k, (i, j) in enumerate(planes.tolist()):
        p, q = a[:, i], a[:, j]
        for t in range(angles):
            counts[k, t] = int((p * math.cos(theta[t]) - q * math.sin(theta[t]) >= epsilon).sum())
    return counts


def worker(task: str, n_rows: int, dim: int, extra: dict) -> dict:
    """Run one measurement in this (fresh) process and return timings and memory."""
    from isotorch.probes import srm

    torch.set_num_threads(extra["threads"])
    x = activations(n_rows, dim)
    before = resident_mb()
    out: dict = {"task": task, "n_rows": n_rows, "dim": dim, "threads": torch.get_num_threads()}
    if task == "srm":
        srm(x[:1000])  # warm-up (thread pool, kernels)
        start = time.perf_counter()
        r = srm(x)
        out["seconds"] = time.perf_counter() - start
        out["planes"] = r.curves.shape[0]
        out["peak_growth_mb"] = peak_mb() - before
        out["epsilon"] = r.epsilon
        out["mean_range"] = [float(r.mean.min()), float(r.mean.max())]
    elif task == "baselines":
        subset = extra["planes"]
        ours = srm(x, max_planes=subset, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        ours = srm(x, max_planes=subset, generator=torch.Generator().manual_seed(0))
        out["ours_subset_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        dense = srm(x, max_planes=subset, generator=torch.Generator().manual_seed(0), method="dense")
        out["dense_subset_seconds"] = time.perf_counter() - start
        out["dense_identical"] = bool(torch.equal(ours.curves, dense.curves))
        loop_planes = ours.planes[: extra["loop_planes"]]
        start = time.perf_counter()
        loop = loop_baseline(x, loop_planes, ours.epsilon, 100)
        out["loop_subset_seconds"] = time.perf_counter() - start
        out["loop_planes"] = loop_planes.shape[0]
        counts = (ours.curves[: loop_planes.shape[0]] * ours.n_samples).round().long()
        out["loop_identical"] = bool(torch.equal(counts, loop))
        out["subset_planes"] = ours.curves.shape[0]
    elif task == "scores":
        from isotorch.probes import alignment_score, quantisation_score

        for name, fn in (("alignment", alignment_score), ("quantisation", quantisation_score)):
            start = time.perf_counter()
            r = fn(x, generator=torch.Generator().manual_seed(0))
            out[f"{name}_seconds"] = time.perf_counter() - start
            out[name] = [r.value, r.ci_low, r.ci_high, r.p_value]
        out["peak_growth_mb"] = peak_mb() - before
    elif task == "collapse":
        out.update(collapse_benchmark(n_rows, dim, extra["classes"], extra["batch"]))
        out["peak_growth_mb"] = peak_mb() - before
    return out


def collapse_benchmark(n_rows: int, dim: int, num_classes: int, batch: int) -> dict:
    from isotorch.probes import ClassMoments, NearestCentreAgreement, neural_collapse_from_stats

    g = torch.Generator().manual_seed(1)
    means = 3 * torch.randn(num_classes, dim, generator=g)
    head = torch.nn.Linear(dim, num_classes)

    def batches():
        gen = torch.Generator().manual_seed(2)
        for start in range(0, n_rows, batch):
            m = min(batch, n_rows - start)
            y = torch.randint(0, num_classes, (m,), generator=gen)
            x = torch.randn(m, dim, generator=gen).add_(means[y])
            yield x, y

    start = time.perf_counter()
    for _ in batches():
        pass
    generate = time.perf_counter() - start

    timings = {}
    for label, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        stats, probe = ClassMoments(num_classes, matmul_dtype=dtype), 0.0
        for x, y in batches():
            t = time.perf_counter()
            stats.update(x, y)
            probe += time.perf_counter() - t
        t = time.perf_counter()
        result = neural_collapse_from_stats(stats, head)
        timings[label] = (probe + time.perf_counter() - t, result.nc1)
    first_pass = timings["float64"][0]
    agreement, second = NearestCentreAgreement(stats.means, head), 0.0
    for x, y in batches():
        t = time.perf_counter()
        agreement.update(x, y)
        second += time.perf_counter() - t
    result = neural_collapse_from_stats(stats, head, nc4=agreement)
    return {
        "generate_seconds_per_pass": generate,
        "nc1_nc3_seconds": first_pass,
        "nc1_nc3_seconds_float32": timings["float32"][0],
        "nc1_float32_relative_difference": abs(timings["float32"][1] - timings["float64"][1]) / timings["float64"][1],
        "nc4_seconds": second,
        "seconds": first_pass + second,
        "nc1": result.nc1,
        "nc2": result.nc2,
        "nc4": result.nc4,
        "ncc_error": result.ncc_error,
    }


def run_worker(task: str, n_rows: int, dim: int, extra: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps({"task": task, "n_rows": n_rows, "dim": dim, **extra})]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {task} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="quick run at 1/10 (SRM) and 1/10 (NC) of the sizes")
    parser.add_argument("--baseline-planes", type=int, default=32, help="planes timed for the dense baseline")
    parser.add_argument("--loop-planes", type=int, default=4, help="planes timed for the loop baseline")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker(spec.pop("task"), spec.pop("n_rows"), spec.pop("dim"), spec)))
        return

    scale = 10 if args.small else 1
    threads = {"threads": args.threads}
    print(
        f"isotorch probes benchmark ({'small' if args.small else 'full'} sizes, {args.threads} threads, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )

    n1 = 200_000 // scale
    ours = run_worker("srm", n1, 32, threads)
    base = run_worker("baselines", n1, 32, {**threads, "planes": args.baseline_planes, "loop_planes": args.loop_planes})
    planes = ours["planes"]
    loop_full = base["loop_subset_seconds"] * planes / base["loop_planes"]
    dense_full = base["dense_subset_seconds"] * planes / base["subset_planes"]
    print(f"\n1. SRM {n1:,} × 32, standard basis ({planes} planes, 100 angles, ε = {ours['epsilon']:.4f})")
    print(
        f"   ours (arcs)                          {ours['seconds']:8.2f} s   "
        f"peak memory +{ours['peak_growth_mb']:.0f} MB"
    )
    print(
        f"   loop over planes × angles            {loop_full:8.2f} s   (timed on {base['loop_planes']} planes, "
        f"extrapolated; identical counts: {base['loop_identical']})   ratio {loop_full / ours['seconds']:6.1f}×"
    )
    print(
        f"   vectorised samples × planes × angles {dense_full:8.2f} s   (timed on {base['subset_planes']} planes, "
        f"extrapolated; identical counts: {base['dense_identical']})   ratio {dense_full / ours['seconds']:6.1f}×"
    )
    print("   targets: ≥ 20× the loop, < 10 s, < 1 GB")

    n2 = 1_000_000 // scale
    big = run_worker("srm", n2, 64, threads)
    print(
        f"\n2. SRM {n2:,} × 64 ({big['planes']} planes, 100 angles): ours {big['seconds']:.2f} s, "
        f"peak memory +{big['peak_growth_mb']:.0f} MB   (target < 60 s)"
    )

    n3 = 1_000_000 // scale
    nc = run_worker("collapse", n3, 512, {**threads, "classes": 100, "batch": 8192})
    print(
        f"\n3. Neural collapse {n3:,} × 512, 100 classes, batches of 8192: NC1–NC3 pass {nc['nc1_nc3_seconds']:.2f} s, "
        f"NC4 pass {nc['nc4_seconds']:.2f} s, total {nc['seconds']:.2f} s (target < 30 s); "
        f"generating the data took {nc['generate_seconds_per_pass']:.2f} s per pass (not counted); "
        f"peak memory +{nc['peak_growth_mb']:.0f} MB"
    )
    print(
        f"   with matmul_dtype=float32 the NC1–NC3 pass takes {nc['nc1_nc3_seconds_float32']:.2f} s "
        f"(NC1 differs by {nc['nc1_float32_relative_difference']:.1e} relative)"
    )
    print(f"   NC1 = {nc['nc1']:.4g}, NC2 = {nc['nc2']:.4g}, NC4 = {nc['nc4']:.4g}, NCC error = {nc['ncc_error']:.4g}")

    n4 = 20_000 // scale
    sc = run_worker("scores", n4, 16, threads)
    for name in ("alignment", "quantisation"):
        value, low, high, p = sc[name]
        print(
            f"\n4. {name}_score {n4:,} × 16 (defaults): {sc[name + '_seconds']:.2f} s (target < 30 s); "
            f"value {value:.4f}, 95% CI [{low:.4f}, {high:.4f}], Haar p = {p:.3f}"
        )
    print(f"   peak memory +{sc['peak_growth_mb']:.0f} MB")


if __name__ == "__main__":
    main()
