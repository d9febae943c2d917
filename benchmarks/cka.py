"""Layer similarity: isotorch.probes.compare_layers against the `torch-cka` package (PyPI) on the same models and data.

Two independently initialised 784-w-w-w-w-10 ReLU MLPs (float32) are compared at five layers each (the four hidden
ReLU outputs and the logits), 5 × 5 CKA values, by ``isotorch.probes.compare_layers(debiased=True)`` and by
``torch_cka.CKA(...).compare(loader)``, fed the same DataLoader in the same process.

The two compute different estimators of the same population CKA (tests/probes/test_cka_reference.py proves both
statements below to float64 round-off):
- torch-cka computes minibatch CKA (Nguyen et al. 2021): the unbiased HSIC of every batch's Gram matrices, summed
  over batches, then CKA = Σ HSIC(K, L)/√(Σ HSIC(K, K) · Σ HSIC(L, L)). Its cost grows as batch² · width per
  layer pair and batch (it also forms trace(K @ L) as a batch³ product), in float32.
- ours computes the debiased CKA of one sample: a seeded uniform reservoir of ``samples`` inputs (default 5,000; set
  to the number of inputs to use all of them), in float64 and in feature space (cost samples · width² per pair).
With one batch holding every input and ``samples`` ≥ inputs, the two are the same number.

Part 1 (same estimator): one batch of ``--agreement-inputs`` inputs; times, ratio and the largest
|ours − theirs|; then both libraries on float64 copies (they agree to round-off) and each float32 run's error
against that value. Part 2 (the usual use): ``--inputs`` inputs in batches of ``--batch``; ours with
the default ``samples`` and with every input, torch-cka's minibatch CKA; times, ratios (ours / torch-cka) and the
largest |difference|, which here is the difference between estimators, not an error of either.

torch-cka runs under ``torch.no_grad()`` (its ``compare`` leaves autograd on; we turn it off for it) on
deep copies of the models (its forward hooks are never removed). It is not an isotorch dependency: it is in the
``bench`` extra, which ``make bench`` installs (``pip install -e '.[bench]'``). Where it cannot be imported or
fails, its column says ``not run`` and the output gives the reason.

Wall and CPU seconds are both printed: on a shared machine the wall time also counts other processes. On an
oversubscribed one, torch's default two threads spend most of their time waiting for each other (measured: every
number several times larger); ``--threads 1`` gives steadier numbers there.

Usage:
    python benchmarks/cka.py [--width 256] [--inputs 20000] [--batch 256] [--agreement-inputs 1024] [--threads N]
        [--no-torch-cka]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import platform
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from isotorch.probes import compare_layers

LAYERS = ["1", "3", "5", "7", "8"]  # the four hidden ReLU outputs and the logits, in forward order


def mlp(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(784, width), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def loader(n: int, batch: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 784, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process over all its threads)


def clock() -> Timing:
    return time.perf_counter(), time.process_time()


def since(start: Timing) -> Timing:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def run_ours(a: nn.Module, b: nn.Module, data: DataLoader, samples: int) -> tuple[Timing, torch.Tensor]:
    start = clock()
    generator = torch.Generator().manual_seed(0)
    result = compare_layers(a, b, data, LAYERS, debiased=True, samples=samples, generator=generator)
    return since(start), result.matrix


def run_torch_cka(a: nn.Module, b: nn.Module, data: DataLoader) -> tuple[Timing, torch.Tensor]:
    from torch_cka import CKA

    a, b = copy.deepcopy(a), copy.deepcopy(b)
    start = clock()
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # its per-batch progress bar would bury the table
        cka = CKA(a, b, model1_name="A", model2_name="B", model1_layers=LAYERS, model2_layers=LAYERS)
        cka.compare(data, data)
        matrix = cka.export()["CKA"]
    return since(start), matrix.double()


def float64_reference(a: nn.Module, b: nn.Module, data: DataLoader, peer: bool) -> dict[str, torch.Tensor]:
    """Both libraries on float64 copies of the models and inputs (torch-cka under a float64 default dtype)."""
    a, b = copy.deepcopy(a).double(), copy.deepcopy(b).double()
    x = data.dataset.tensors[0].double()  # type: ignore[attr-defined]
    data = DataLoader(TensorDataset(x), batch_size=data.batch_size)
    out = {"ours": run_ours(a, b, data, samples=len(x))[1]}
    if peer:
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # torch-cka makes its ones/zeros in the default dtype
        try:
            out["torch-cka"] = run_torch_cka(a, b, data)[1]
        except Exception as err:  # reported; the float32 rows above stand
            print(f"   torch-cka in float64: not run, it failed ({type(err).__name__}: {err})")
        finally:
            torch.set_default_dtype(old)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--inputs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256, help="torch-cka's minibatch size (and the loader's)")
    parser.add_argument("--agreement-inputs", type=int, default=1024, help="inputs of part 1 (one batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-torch-cka", action="store_true", help="skip the torch-cka baseline")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    have_peer = not args.no_torch_cka
    if args.no_torch_cka:
        print("torch-cka column: not run (--no-torch-cka)")
    else:
        try:
            import torch_cka  # noqa: F401
        except ImportError as err:
            print(f"torch-cka column: not run, torch_cka is not importable ({err}); make bench installs it")
            have_peer = False

    def peer(a: nn.Module, b: nn.Module, data: DataLoader) -> tuple[Timing, torch.Tensor] | None:
        nonlocal have_peer
        if not have_peer:
            return None
        try:
            return run_torch_cka(a, b, data)
        except Exception as err:  # a peer that breaks is reported, not allowed to hide our numbers
            print(f"torch-cka column: not run, torch-cka failed ({type(err).__name__}: {err})")
            have_peer = False
            return None

    def row(label: str, t_ours: Timing, ours: torch.Tensor, theirs: tuple[Timing, torch.Tensor] | None) -> None:
        start = f"{label:<32} {t_ours[0]:8.2f} {t_ours[1]:8.2f}"
        if theirs is None:
            print(f"{start} {'not run':>12} {'':>8} {'n/a':>6} {'n/a':>6} {'n/a':>10}", flush=True)
            return
        (wall, cpu), m_theirs = theirs
        diff = float((ours - m_theirs).abs().max())
        ratios = f"{t_ours[0] / wall:6.2f} {t_ours[1] / cpu:6.2f}"
        print(f"{start} {wall:12.2f} {cpu:8.2f} {ratios} {diff:10.2e}", flush=True)

    a, b = mlp(args.width, args.seed), mlp(args.width, args.seed + 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"two 784-{args.width}×4-10 ReLU MLPs (float32), layers {LAYERS}: {len(LAYERS)}×{len(LAYERS)} CKA values")
    header = (
        f"{'':<32} {'ours s':>8} {'cpu s':>8} {'torch-cka s':>12} {'cpu s':>8} {'ratio':>6} {'cpu':>6} {'max |Δ|':>10}"
    )

    warm = loader(64, 64, args.seed)  # first calls pay one-off costs (thread pools, lazy imports): not timed
    run_ours(a, b, warm, samples=64)
    peer(a, b, warm)

    n = args.agreement_inputs
    print(f"\n1. same estimator: one batch of {n:,} inputs (Δ: ours − torch-cka)")
    print(header)
    data = loader(n, n, args.seed)
    t_ours, ours = run_ours(a, b, data, samples=n)
    theirs = peer(a, b, data)
    row(f"debiased CKA, {n:,} inputs", t_ours, ours, theirs)
    ref = float64_reference(a, b, data, theirs is not None)
    errors = [f"ours {float((ours - ref['ours']).abs().max()):.1e}"]
    if theirs is not None and "torch-cka" in ref:
        errors.append(f"torch-cka {float((theirs[1] - ref['ours']).abs().max()):.1e}")
        agree = float((ref["torch-cka"] - ref["ours"]).abs().max())
        print(f"   float64 copies of the models and inputs: the two libraries agree to {agree:.1e}")
    print(f"   largest error of the float32 runs against that float64 value: {', '.join(errors)}")
    print("   (ours: float64 CKA of float32 activations; torch-cka: uncentred Gram matrices summed in float32)")

    n, batch = args.inputs, args.batch
    print(f"\n2. {n:,} inputs in batches of {batch}: torch-cka's minibatch CKA over all of them, ours on a sample")
    print("   (Δ: the difference between two estimators of the same CKA, not an error of either)")
    print(header)
    data = loader(n, batch, args.seed)
    theirs = peer(a, b, data)
    for samples in sorted({min(5_000, n), n}):  # our default sample, then every input
        t_ours, ours = run_ours(a, b, data, samples=samples)
        row(f"ours: sample of {samples:,} inputs", t_ours, ours, theirs)
    print(
        "\ns: wall seconds; cpu s: CPU seconds of this process (all threads); ratio, cpu: ours / torch-cka (below 1: "
        "ours is faster). On a shared machine the wall time also counts other processes."
    )


if __name__ == "__main__":
    main()
