"""Training throughput (samples/s) of isotropic models against the same elementwise models, side by side.

Each elementwise model is a plain torch model; its isotropic twin is ``isotorch.convert(model, "isotropic")`` (same
weights; Tanh → IsoTanh, LayerNorm → ChiNorm, BatchNorm → IsoBatchNorm, MaxPool2d → NormMaxPool2d). Cases:

- ``mlp``:      784-1024-1024-10 tanh MLP, batch 256;
- ``mlp_norm``: the same with a LayerNorm (no affine) before each tanh (→ ChiNorm);
- ``cnn``:      3×32×32 input, three 3×3 conv blocks (32, 64, 128 channels; BatchNorm, tanh, 2×2 max-pool after the
  first two), global average pool, linear head; batch 128.

A training step is forward, cross-entropy, backward and an Adam update. For each case the variants (elementwise
and isotropic, eager and, with ``--compile``, ``torch.compile``d) are timed in one process with interleaved
repetitions (the order rotates every repetition), each repetition timing ``--steps`` consecutive steps; the
reported throughput is batch / median step time. The ratio isotropic / elementwise (target ≥ 0.9) is printed per
case and mode. ``--profile`` prints ``torch.profiler``'s table of the isotropic model's top operators per case.

Run ``python benchmarks/train.py`` (``--small`` for a quick run, ``--repeats N``, ``--steps K``, ``--compile``,
``--threads T``, ``--device cuda``, ``--profile``). CPU timings on a shared machine are noisy: compare the ratios of
one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import isotorch

TARGET = 0.9


def mlp(sizes: tuple[int, ...], norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes[:-1]):
        layers.append(nn.Linear(a, b))
        if norm:
            layers.append(nn.LayerNorm(b, elementwise_affine=False))
        layers.append(nn.Tanh())
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def cnn(channels: tuple[int, ...], classes: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for i, c in enumerate(channels):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.Tanh()]
        if i < len(channels) - 1:
            layers.append(nn.MaxPool2d(2))
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes)]
    return nn.Sequential(*layers)


def cases(small: bool) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]]:
    """name → (model factory, input shape per sample, batch size)."""
    if small:
        return {
            "mlp": (lambda: mlp((784, 256, 256, 10), False), (784,), 64),
            "mlp_norm": (lambda: mlp((784, 256, 256, 10), True), (784,), 64),
            "cnn": (lambda: cnn((16, 32, 64)), (3, 32, 32), 32),
        }
    return {
        "mlp": (lambda: mlp((784, 1024, 1024, 10), False), (784,), 256),
        "mlp_norm": (lambda: mlp((784, 1024, 1024, 10), True), (784,), 256),
        "cnn": (lambda: cnn((32, 64, 128)), (3, 32, 32), 128),
    }


@dataclass(frozen=True)
class Measurement:
    """Median step time (ms) and throughput (samples/s) of one case, mode and family."""

    case: str
    mode: str
    family: str
    median_ms: float
    samples_per_s: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run_case(name: str, factory, shape, batch, *, repeats, steps, compile, device, profile) -> list[Measurement]:
    torch.manual_seed(0)
    base = factory().to(device)
    models = {"elementwise": base, "isotropic": isotorch.convert(base, "isotropic").to(device)}
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((batch, *shape), generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    variants: dict[tuple[str, str], Callable[[], None]] = {}
    for family, model in models.items():
        variants[("eager", family)] = _trainer(model, x, y)
        if compile:
            variants[("compiled", family)] = _trainer(torch.compile(_copy(model), dynamic=False), x, y)
    for fn in variants.values():  # warm up (and compile)
        for _ in range(3):
            fn()
    _sync(device)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    keys = list(variants)
    for rep in range(repeats):
        for key in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                variants[key]()
            _sync(device)
            times[key].append((time.perf_counter() - start) / steps)
    if profile:
        _profile(name, variants[("eager", "isotropic")], variants[("eager", "elementwise")], device)
    out = []
    for (mode, family), ts in times.items():
        median = statistics.median(ts)
        out.append(Measurement(name, mode, family, 1e3 * median, batch / median))
    return out


def _copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def _profile(name: str, iso_step, elem_step, device: torch.device) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for label, fn in (("isotropic", iso_step), ("elementwise", elem_step)):
        with profile(activities=activities) as prof:
            for _ in range(5):
                fn()
            _sync(device)
        print(f"\n--- profile: {name} / {label} (5 steps, sorted by {sort}) ---")
        print(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=40))


def report(results: list[Measurement]) -> list[tuple]:
    by = {(m.case, m.mode, m.family): m for m in results}
    rows = []
    for case, mode in dict.fromkeys((m.case, m.mode) for m in results):
        e, i = by[(case, mode, "elementwise")], by[(case, mode, "isotropic")]
        ratio = i.samples_per_s / e.samples_per_s
        rows.append((case, mode, e.samples_per_s, i.samples_per_s, e.median_ms, i.median_ms, ratio, ratio >= TARGET))
    return rows


def main(argv: list[str] | None = None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small models and batches (quick run)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 15; small 7)")
    parser.add_argument("--steps", type=int, default=None, help="steps per repetition (default 3; small 2)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default=None, help="comma-separated subset of mlp,mlp_norm,cnn")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of each case")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats = args.repeats or (7 if args.small else 15)
    steps = args.steps or (2 if args.small else 3)
    chosen = cases(args.small)
    if args.cases:
        unknown = set(args.cases.split(",")) - set(chosen)
        if unknown:
            parser.error(f"--cases: unknown {sorted(unknown)}; choose from {', '.join(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.cases.split(",")}
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, repeats {repeats} × "
        f"{steps} steps, {'small' if args.small else 'full'} sizes"
    )
    results = []
    for name, (factory, shape, batch) in chosen.items():
        results += run_case(
            name,
            factory,
            shape,
            batch,
            repeats=repeats,
            steps=steps,
            compile=args.compile,
            device=device,
            profile=args.profile,
        )
    rows = report(results)
    print(f"\n{'case':10} {'mode':9} {'elem samp/s':>12} {'iso samp/s':>12} {'elem ms':>9} {'iso ms':>9} ratio")
    for case, mode, e, i, em, im, ratio, ok in rows:
        verdict = "ok" if ok else f"below {TARGET}"
        print(f"{case:10} {mode:9} {e:12.0f} {i:12.0f} {em:9.2f} {im:9.2f} {ratio:5.2f} ({verdict})")
    return rows


if __name__ == "__main__":
    main()
