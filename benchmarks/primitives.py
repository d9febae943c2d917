"""Side-by-side cost of the isotropic activation against ``torch.tanh``: time and memory, eager and compiled.

For each case, forward + backward of ``iso_tanh`` and of ``torch.tanh`` on the same input, measured in one process
with interleaved repetitions (the order rotates every repetition) and reported as medians:

- ``mlp``:  a (4096, 1024) batch, feature axis ``dim=-1``;
- ``conv``: a (64, 256, 32, 32) feature map, feature axis ``dim=1`` (the channels at each site).

Ratios are printed against the targets: eager iso ≤ 1.2 × eager tanh; compiled iso ≤ 0.8 × compiled tanh; memory
≤ tanh's. Memory on CPU is the number of bytes saved for backward (summed over the distinct tensors packed by
``torch.autograd.graph.saved_tensors_hooks``; deterministic), on CUDA the peak allocated during a step above the
memory in use before it. The isotropic activation saves its input plus one scalar per vector, so its memory target
is tanh's bytes plus that scalar: a ratio ≤ 1 + 1/n.

Run ``python benchmarks/primitives.py`` (``--small`` for a quick run, ``--repeats N``, ``--no-compile``,
``--threads T``, ``--device cuda``). CPU timings on a shared machine are noisy: compare the ratios of one run, not
absolute times across runs.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from isotorch.functional import iso_tanh

CASES = {
    # name: (full shape, small shape, feature axis)
    "mlp": ((4096, 1024), (512, 256), -1),
    "conv": ((64, 256, 32, 32), (8, 64, 16, 16), 1),
}
TARGETS = {"eager": 1.2, "compiled": 0.8}


@dataclass(frozen=True)
class Measurement:
    """Median step time (ms) over the repetitions, and memory (bytes) of one forward + backward step."""

    case: str
    mode: str
    fn: str
    median_ms: float
    memory_bytes: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(fn: Callable, x: torch.Tensor, grad: torch.Tensor) -> None:
    y = fn(x)
    y.backward(grad)
    x.grad = None


def _saved_bytes(fn: Callable, x: torch.Tensor, grad: torch.Tensor) -> int:
    """Bytes of the distinct tensors saved for backward during one forward pass."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[(t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    y.backward(grad)
    x.grad = None
    return sum(seen.values())


def _peak_bytes(fn: Callable, x: torch.Tensor, grad: torch.Tensor) -> int:
    """CUDA: peak memory allocated during one step, above what was allocated before it."""
    _sync(x.device)
    base = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    _step(fn, x, grad)
    _sync(x.device)
    return torch.cuda.max_memory_allocated(x.device) - base


def run_case(case: str, shape: tuple, dim: int, *, repeats: int, compile: bool, device: torch.device) -> list:
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(device)
    iso = functools.partial(iso_tanh, dim=dim)
    variants: dict[tuple[str, str], Callable] = {("eager", "tanh"): torch.tanh, ("eager", "iso_tanh"): iso}
    if compile:
        variants[("compiled", "tanh")] = torch.compile(torch.tanh, fullgraph=True, dynamic=False)
        variants[("compiled", "iso_tanh")] = torch.compile(iso, fullgraph=True, dynamic=False)
    for fn in variants.values():  # warm up (and compile)
        for _ in range(2):
            _step(fn, x, grad)
    memory = {
        key: (_peak_bytes if device.type == "cuda" else _saved_bytes)(fn, x, grad) for key, fn in variants.items()
    }
    times: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    keys = list(variants)
    for rep in range(repeats):
        for key in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
            _sync(device)
            start = time.perf_counter()
            _step(variants[key], x, grad)
            _sync(device)
            times[key].append(time.perf_counter() - start)
    return [
        Measurement(case, mode, fn, 1e3 * statistics.median(times[(mode, fn)]), memory[(mode, fn)])
        for mode, fn in variants
    ]


def _rows(results: list[Measurement], cases: dict) -> list[tuple]:
    by = {(m.case, m.mode, m.fn): m for m in results}
    rows = []
    for case, (shape, dim) in cases.items():
        n = shape[dim]
        for mode in ("eager", "compiled"):
            tanh, iso = by.get((case, mode, "tanh")), by.get((case, mode, "iso_tanh"))
            if tanh is None or iso is None:
                continue
            t_ratio = iso.median_ms / tanh.median_ms
            m_ratio = iso.memory_bytes / max(tanh.memory_bytes, 1)
            m_target = 1.0 + 1.0 / n
            rows.append(
                (
                    f"{case} {tuple(shape)} dim={dim}",
                    mode,
                    f"{tanh.median_ms:.2f}",
                    f"{iso.median_ms:.2f}",
                    f"{t_ratio:.2f}",
                    f"≤ {TARGETS[mode]:.1f}",
                    "ok" if t_ratio <= TARGETS[mode] else "MISS",
                    f"{tanh.memory_bytes / 2**20:.2f}",
                    f"{iso.memory_bytes / 2**20:.2f}",
                    f"{m_ratio:.4f}",
                    f"≤ {m_target:.4f}",
                    "ok" if m_ratio <= m_target + 1e-12 else "MISS",
                )
            )
    return rows


HEADER = (
    "case",
    "mode",
    "tanh ms",
    "iso ms",
    "time ratio",
    "target",
    "",
    "tanh MiB",
    "iso MiB",
    "mem ratio",
    "target (1+1/n)",
    "",
)


def _print(rows: list[tuple], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain table
        widths = [max(len(str(r[i])) for r in [HEADER, *rows]) for i in range(len(HEADER))]
        print(title)
        for r in [HEADER, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title)
    for h in HEADER:
        table.add_column(h, justify="left" if h in ("case", "mode") else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> list[Measurement]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="small shapes, for a quick run")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 15; 5 small)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else (5 if args.small else 15)
    if repeats < 1:
        parser.error("--repeats must be ≥ 1")
    device = torch.device(args.device)
    cases = {name: ((small if args.small else full), dim) for name, (full, small, dim) in CASES.items()}
    results: list[Measurement] = []
    for name, (shape, dim) in cases.items():
        results += run_case(name, shape, dim, repeats=repeats, compile=not args.no_compile, device=device)
    memory = "peak allocated (CUDA)" if device.type == "cuda" else "bytes saved for backward"
    title = (
        f"iso_tanh vs torch.tanh, forward+backward, median of {repeats} interleaved repetitions "
        f"(torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; memory = {memory})"
    )
    _print(_rows(results, cases), title)
    return results


if __name__ == "__main__":
    main()
