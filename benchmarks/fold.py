"""Fold the norms of GPT-2 small and rotate its residual stream by a Hadamard matrix, beside the forward pass.

HF ``GPT2LMHeadModel`` with GPT-2 small's sizes (12 layers × 768, 12 heads, vocabulary 50257; random init, no
download), float32, on an input of shape (1, 32):

1. ``fold_norms(model, x)``: trace the site graph, fold the 25 LayerNorms' gains and biases into their readers,
   centre the writers, untie the head, replace each LayerNorm by a gain-free RMSNorm, and verify the function;
2. ``symmetries(folded, x)`` + ``transform(folded, Element(syms, {stream: hadamard(768)}))`` (verified), where
   768 = 12·64 is a Paley-times-Sylvester Hadamard order. ``transform`` recognises the Hadamard element (an O(n²)
   look at its entries) and applies it with the fast Hadamard transform (``params._rotations._hadamard_apply``:
   one small matmul per Kronecker factor) instead of a dense 768 × 768 product on every weight.

Each step is printed with its wall and CPU time and its ratio to one forward pass, and the outputs of the rotated
model are compared with the original's. ``--compare-dense`` times the same rotation once more with the fast path
switched off (every element applied as a dense matrix). Target (issue 10): fold + rotate under 10 s on 2 CPU
threads.

Usage:
    python benchmarks/fold.py [--threads 2] [--tokens 32] [--layers 12] [--compare-dense]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens in the example input (default 32)")
    parser.add_argument("--layers", type=int, default=12, help="transformer blocks (default 12, GPT-2 small)")
    parser.add_argument("--compare-dense", action="store_true", help="also time the rotation without the fast path")
    args = parser.parse_args()
    try:
        import transformers
    except ImportError as err:
        print(f"transformers is not importable ({err}); nothing to benchmark (pip install 'isotorch[hf]')")
        return
    from isotorch.params import Element, fold_norms, hadamard, symmetries, transform
    from isotorch.params._transform import function_error

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.processor() or 'cpu'}, "
        f"{args.threads} thread(s)"
    )
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=args.layers, n_embd=768, n_head=12)  # GPT-2 small, random weights
    model = transformers.GPT2LMHeadModel(config).eval()
    x = torch.randint(0, config.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        model(x)
        forward, forward_cpu = time.perf_counter() - start, time.process_time() - cpu

    start, cpu = time.perf_counter(), time.process_time()
    folded, report = fold_norms(model, x, return_report=True)
    t_fold, c_fold = time.perf_counter() - start, time.process_time() - cpu

    def rotate():
        syms = symmetries(folded, x)
        stream = syms[report.streams[0]]
        element = Element(syms, {stream.name: hadamard(768, dtype=torch.float32)})
        return stream, transform(folded, element)  # group membership (orthogonal after the fold) and function checked

    start, cpu = time.perf_counter(), time.process_time()
    stream, rotated = rotate()
    t_rotate, c_rotate = time.perf_counter() - start, time.process_time() - cpu

    fresh = torch.randint(0, config.vocab_size, (2, args.tokens), generator=torch.Generator().manual_seed(1))
    err, _ = function_error(model, rotated, (fresh,))
    total, total_cpu = t_fold + t_rotate, c_fold + c_rotate
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"GPT-2 ({args.layers}×768, {n_params:.0f}M parameters, float32), x of shape {tuple(x.shape)}:")
    print(f"  forward           {forward:8.3f} s wall, {forward_cpu:7.3f} s CPU")
    print(
        f"  fold_norms        {t_fold:8.2f} s wall, {c_fold:7.2f} s CPU ({t_fold / forward:5.1f}× forward): "
        f"{len(report.norms)} norms, untied {[u[0] for u in report.untied]}, fold error {report.error:.1e}"
    )
    print(
        f"  Hadamard rotation {t_rotate:8.2f} s wall, {c_rotate:7.2f} s CPU ({t_rotate / forward:5.1f}× forward), "
        f"stream group {stream.group!r}"
    )
    print(f"  rotated vs original on a fresh input: relative error {err:.1e}")
    print(
        f"  fold + rotate     {total:8.2f} s wall, {total_cpu:7.2f} s CPU = {total / forward:.1f}× forward; "
        f"target under 10 s: {'ok' if total < 10 else 'MISSED'}"
    )
    if args.compare_dense:
        from isotorch.params import _transform

        fast = _transform._plan_of
        _transform._plan_of = lambda g: fast(g) if fast(g).kind != "hadamard" else _transform._Plan("dense")
        try:
            start, cpu = time.perf_counter(), time.process_time()
            rotate()
            t_dense, c_dense = time.perf_counter() - start, time.process_time() - cpu
        finally:
            _transform._plan_of = fast
        print(
            f"  rotation, dense matrix (no fast path) {t_dense:8.2f} s wall, {c_dense:7.2f} s CPU "
            f"({t_dense / forward:5.1f}× forward; fast path {t_dense / t_rotate:.1f}× faster)"
        )


if __name__ == "__main__":
    main()
