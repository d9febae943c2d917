"""Benchmark: align two 2-layer × 64-wide GPT-2s (issue 10 target: under 30 s on 2 CPU threads).

Two GPT-2 language models (Hugging Face ``GPT2LMHeadModel``, random weights from two seeds, no download, float32)
are folded with ``fold_norms`` (the stream's group becomes O(d)) and aligned with ``align``: weight matching over
the residual-stream rotation, the MLP permutations and, per attention, the head permutation jointly with the
per-head query–key and value–output maps; then activation matching on a batch of tokens. Each step is printed with
its wall and CPU time beside one forward pass of the model (the baseline) and as a ratio to it, with the distance
between the two models before and after.

Usage:
    python benchmarks/align.py [--threads 2] [--layers 2] [--width 64] [--tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def _timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    parser.add_argument("--width", type=int, default=64, help="model width (default 64, 4 heads)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sequence (default 32)")
    args = parser.parse_args()
    try:
        import transformers
    except ImportError:
        sys.exit("benchmarks/align.py needs transformers: pip install 'isotorch[hf]'")
    from isotorch.params import align, fold_norms

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s)")
    config = transformers.GPT2Config(
        n_layer=args.layers, n_embd=args.width, n_head=4, vocab_size=64, n_positions=args.tokens
    )
    config._attn_implementation = "eager"
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(transformers.GPT2LMHeadModel(config).eval())
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (1, args.tokens), generator=gen)
    data = torch.randint(0, 64, (64, args.tokens), generator=gen)
    with torch.no_grad():
        models[0](x)  # warm-up
        _, forward, forward_cpu = _timed(lambda: models[0](x))

    (a, b), t_fold, c_fold = _timed(lambda: [fold_norms(m, x) for m in models])
    weights, t_w, c_w = _timed(lambda: align(a, b, x=x))
    acts, t_a, c_a = _timed(lambda: align(a, b, "activations", data=data, x=x))

    print(f"GPT-2 {args.layers}×{args.width} (4 heads), float32, x of shape {tuple(x.shape)}:")
    print(f"  forward (baseline)       {forward:8.4f} s wall, {forward_cpu:7.4f} s CPU")
    rows = [
        ("fold_norms × 2", t_fold, c_fold, ""),
        (
            "align, weights",
            t_w,
            c_w,
            f"distance {weights.distance_before:.2f} -> {weights.distance_after:.2f}, {weights.iterations} rounds",
        ),
        ("align, activations", t_a, c_a, f"distance {acts.distance_before:.2f} -> {acts.distance_after:.2f}"),
    ]
    for name, wall, cpu, note in rows:
        print(f"  {name:24s} {wall:8.2f} s wall, {cpu:7.2f} s CPU ({wall / forward:8.0f}× forward)  {note}")
    total = t_fold + t_w
    print(f"  fold + align (weights)   {total:8.2f} s; target under 30 s: {'ok' if total < 30 else 'MISSED'}")


if __name__ == "__main__":
    main()
