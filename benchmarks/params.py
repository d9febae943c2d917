"""Weight matching: isotorch.params.align against the `rebasin` package (PyPI) on the same model pairs.

Two independently initialised 784-w-w-w-10 ReLU MLPs (float32) are weight-matched at each width w, by
``isotorch.params.align(a, b, method="weights")`` and by ``rebasin.PermutationCoordinateDescent``, in the same run.
Both results are scored with the same objective, Σ_params ⟨θ_A, θ_B'⟩ (the weight-matching objective, REFERENCE
§5.3), and checked to compute B's function. Targets: our objective ≥ theirs on every pair, our time ≤ 0.5× theirs,
and w = 4096 in under 60 s.

`rebasin` is not an isotorch dependency: it is in the ``bench`` extra, which ``make bench`` installs
(``pip install -e '.[bench]'``). Where it cannot be imported or fails, its column says ``not run`` and the output
gives the reason.

A second part times ``symmetries`` + ``sample_element`` + ``transform`` (verified) on HF GPT-2 small (12 layers ×
768, 12 heads, random init, no download) against the model's own forward pass on the same input, and prints the
peak resident memory. Target: under 60 s on 2 CPU threads. It needs ``transformers`` (the hf extra); without it the
part is skipped with a message.

Usage:
    python benchmarks/params.py [--widths 512 2048 4096] [--seed 0] [--no-rebasin] [--gpt2-only | --no-gpt2]
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import time

import torch
from torch import nn

from isotorch.params import align, sample_element, symmetries, transform


def mlp(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(784, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


def objective(a: nn.Module, b: nn.Module) -> float:
    sb = b.state_dict()
    return float(sum((v.double() * sb[k].double()).sum() for k, v in a.state_dict().items()))


def same_function(b: nn.Module, aligned: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.allclose(b(x), aligned(x), rtol=1e-4, atol=1e-5)


def run_ours(a, b, x):
    start = time.perf_counter()
    result = align(a, b, method="weights", x=x, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start, result.model, result.iterations


def run_rebasin(a, b, x):
    from rebasin import PermutationCoordinateDescent

    b = copy.deepcopy(b)
    torch.manual_seed(0)
    start = time.perf_counter()
    pcd = PermutationCoordinateDescent(a, b, x)
    pcd.rebasin()
    return time.perf_counter() - start, b


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpt2_small() -> None:
    """symmetries + transform of GPT-2 small, against the model's forward time."""
    try:
        import transformers
    except ImportError as err:
        print(f"transformers is not importable ({err}); the GPT-2 part is skipped (pip install 'isotorch[hf]')")
        return
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12)  # GPT-2 small, random weights
    model = transformers.GPT2LMHeadModel(config).eval()
    x = torch.randint(0, config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)  # warm-up
        start = time.perf_counter()
        model(x)
        forward = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    syms = symmetries(model, x)
    t_sym = time.perf_counter() - start
    start = time.perf_counter()
    element = sample_element(syms, torch.Generator().manual_seed(0), dtype=torch.float32)
    new = transform(model, element)  # verified on x (float32 tolerance)
    t_transform = time.perf_counter() - start
    total = t_sym + t_transform
    cpu = time.process_time() - cpu  # on a shared machine the wall time also counts other processes
    free = len(syms.free)
    print(f"GPT-2 small ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters), x of shape (1, 32):")
    print(f"  sites {len(syms)} ({free} free), traced by {syms.method}")
    print(
        f"  forward {forward:.3f} s; symmetries {t_sym:.2f} s ({t_sym / forward:.0f}× forward); sample+transform "
        f"{t_transform:.2f} s ({t_transform / forward:.0f}× forward); total {total:.2f} s wall, {cpu:.1f} s CPU "
        f"({torch.get_num_threads()} threads)"
    )
    print(f"  peak resident memory {peak_memory_mb():.0f} MiB")
    print(f"  target: under 60 s: {'ok' if total < 60 else 'MISSED'}")
    del new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-rebasin", action="store_true", help="skip the rebasin baseline")
    parser.add_argument("--gpt2-only", action="store_true", help="only the GPT-2 small part")
    parser.add_argument("--no-gpt2", action="store_true", help="skip the GPT-2 small part")
    args = parser.parse_args()
    if args.gpt2_only:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        gpt2_small()
        return

    have_rebasin = not args.no_rebasin
    if args.no_rebasin:
        print("rebasin column: not run (--no-rebasin)")
    if have_rebasin:
        try:
            import rebasin  # noqa: F401
        except ImportError as err:
            print(f"rebasin column: not run, rebasin is not importable ({err}); make bench installs it")
            have_rebasin = False

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    header = (
        f"{'w':>6} {'ours s':>8} {'rebasin s':>10} {'ratio':>6} {'ours obj':>14} {'rebasin obj':>14} "
        f"{'ours≥':>6} {'iters':>5}"
    )
    print(header)
    rows = []
    for w in args.widths:
        a, b = mlp(w, args.seed), mlp(w, args.seed + 1)
        x = torch.randn(4, 784, generator=torch.Generator().manual_seed(args.seed))
        t_ours, ours, iters = run_ours(a, b, x)
        obj_ours = objective(a, ours)
        assert same_function(b, ours, x), "isotorch changed the function"
        t_theirs = obj_theirs = None
        if have_rebasin:
            try:
                t_theirs, theirs = run_rebasin(a, b, x)
            except Exception as err:  # a peer that breaks is reported, not allowed to hide our numbers
                print(f"rebasin column: not run, rebasin failed at w={w} ({type(err).__name__}: {err})")
                have_rebasin = False
        if have_rebasin:
            obj_theirs = objective(a, theirs)
            if not same_function(b, theirs, x):
                print(f"  note: rebasin's result at w={w} computes a different function")
        ratio = f"{t_ours / t_theirs:6.2f}" if t_theirs else "   n/a"
        better = (
            ("yes" if obj_ours >= obj_theirs - 1e-6 * abs(obj_theirs) else "NO") if obj_theirs is not None else "n/a"
        )
        theirs_t = f"{t_theirs:10.2f}" if t_theirs else f"{'not run':>10}"
        theirs_o = f"{obj_theirs:14.4f}" if obj_theirs is not None else f"{'not run':>14}"
        print(f"{w:>6} {t_ours:8.2f} {theirs_t} {ratio} {obj_ours:14.4f} {theirs_o} {better:>6} {iters:>5}", flush=True)
        rows.append((w, t_ours, t_theirs, obj_ours, obj_theirs))
    print()
    print("targets: our objective ≥ rebasin's on every pair; our time ≤ 0.5× rebasin's; w = 4096 in < 60 s")
    for w, t_ours, t_theirs, obj_ours, obj_theirs in rows:
        checks = []
        if obj_theirs is not None:
            checks.append(f"objective {'ok' if obj_ours >= obj_theirs - 1e-6 * abs(obj_theirs) else 'MISSED'}")
            checks.append(f"time ratio {'ok' if t_ours <= 0.5 * t_theirs else 'MISSED'}")
        if w == 4096:
            checks.append(f"under 60 s {'ok' if t_ours < 60 else 'MISSED'}")
        print(f"  w={w}: " + (", ".join(checks) or "no baseline"))
    if not args.no_gpt2:
        print()
        gpt2_small()


if __name__ == "__main__":
    main()
