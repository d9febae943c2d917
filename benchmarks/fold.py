"""Fold the norms of GPT-2 small and rotate its residual stream by a Hadamard matrix, beside the forward pass.

HF ``GPT2LMHeadModel`` with GPT-2 small's sizes (12 layers × 768, 12 heads, vocabulary 50257; random init, no
download), float32, on an input of shape (1, 32):

1. ``fold_norms(model, x)``: trace the site graph, fold the 25 LayerNorms' gains and biases into their readers,
   centre the writers, untie the head, replace each LayerNorm by a gain-free RMSNorm, and verify the function;
2. ``symmetries(folded, x)`` + ``transform(folded, Element(syms, {stream: hadamard(768)}))`` (verified), where
   768 = 12·64 is a Paley-times-Sylvester Hadamard order.

Each step is printed with its time and its ratio to one forward pass, and the outputs of the rotated model are
compared with the original's. Target (issue 10): fold + rotate under 10 s on 2 CPU threads.

Usage:
    python benchmarks/fold.py [--threads 2] [--tokens 32] [--layers 12]
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
        start = time.perf_counter()
        model(x)
        forward = time.perf_counter() - start

    start = time.perf_counter()
    folded, report = fold_norms(model, x, return_report=True)
    t_fold = time.perf_counter() - start

    start = time.perf_counter()
    syms = symmetries(folded, x)
    stream = syms[report.streams[0]]
    element = Element(syms, {stream.name: hadamard(768, dtype=torch.float32)})
    rotated = transform(folded, element)  # group membership (orthogonal after the fold) and function both checked
    t_rotate = time.perf_counter() - start

    fresh = torch.randint(0, config.vocab_size, (2, args.tokens), generator=torch.Generator().manual_seed(1))
    err, _ = function_error(model, rotated, (fresh,))
    total = t_fold + t_rotate
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"GPT-2 ({args.layers}×768, {n_params:.0f}M parameters, float32), x of shape {tuple(x.shape)}:")
    print(f"  forward           {forward:8.3f} s")
    print(
        f"  fold_norms        {t_fold:8.2f} s ({t_fold / forward:6.0f}× forward): {len(report.norms)} norms, "
        f"untied {[u[0] for u in report.untied]}, fold error {report.error:.1e}"
    )
    print(f"  Hadamard rotation {t_rotate:8.2f} s ({t_rotate / forward:6.0f}× forward), stream group {stream.group!r}")
    print(f"  rotated vs original on a fresh input: relative error {err:.1e}")
    print(f"  fold + rotate     {total:8.2f} s; target under 10 s: {'ok' if total < 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
