"""Time the symmetry audit: the full primitive table, and audit_model on a 12-layer, width-768 transformer.

The transformer is GPT-2 built from a transformers config with random weights (nothing downloaded) when
transformers is installed, else a pure-torch nn.TransformerEncoder of the same size. The audit's time is printed
side by side with one forward pass of the same model, so that its overhead reads as a ratio.

Targets: the table in < 10 s and the transformer audit (GPT-2 small size: 12 layers × 768, random init) in < 60 s
on 2 CPU threads. The peak resident memory of the process is printed after each step.

Usage:
    python benchmarks/audit.py [--layers 12] [--width 768] [--batch 8] [--seq 32] [--repeats 3] [--threads 2]
        [--no-table]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch
from torch import nn

from isotorch.audit import audit_model, primitive_table


def build_transformer(layers: int, width: int, batch: int, seq: int):
    """(model, input, description): GPT-2 from a config if transformers is installed, else nn.TransformerEncoder."""
    heads = max(1, width // 64)
    torch.manual_seed(0)
    try:
        import transformers
    except ImportError:
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.1, activation=nn.GELU(), batch_first=True, norm_first=True
        )
        model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
        x = torch.randn(batch, seq, width, generator=torch.Generator().manual_seed(0))
        return model, x, f"nn.TransformerEncoder ({layers} layers, width {width})"
    config = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=max(seq, 128))
    model = transformers.GPT2Model(config).eval()
    x = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    return model, x, f"transformers GPT2Model ({layers} layers, width {width})"


def peak_memory_mb() -> float:
    """The peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="forward passes to time (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--no-table", action="store_true", help="skip the primitive table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    if not args.no_table:
        seconds, table = timed(primitive_table)
        print(f"primitive table     {seconds:8.2f} s   {len(table.rows)} rows   (target < 10 s)")
        print(f"peak memory         {peak_memory_mb():8.0f} MiB")

    model, x, description = build_transformer(args.layers, args.width, args.batch, args.seq)
    print(f"model               {description}, input {tuple(x.shape)}")
    print(f"peak memory         {peak_memory_mb():8.0f} MiB after building it")
    with torch.no_grad():
        model(x)  # warm-up
        forward, _ = timed(lambda: model(x), args.repeats)
    cpu = time.process_time()
    seconds, report = timed(lambda: audit_model(model, x))
    cpu = time.process_time() - cpu
    print(f"one forward pass    {forward:8.3f} s")
    print(f"audit_model         {seconds:8.2f} s   ({seconds / forward:.0f}× a forward pass; target < 60 s)")
    print(
        f"                    {cpu:8.2f} s of CPU time on {args.threads} threads "
        "(on a busy machine, wall time on an idle one is about CPU time / threads)"
    )
    free = [c for c in report.chains if c.status == "free"]
    verified = sum(c.verified for c in free)
    print(
        f"                    {len(report.sites)} primitive sites, {len(report.rows)} rows, site graph by "
        f"{report.method}; G2 {verified}/{len(free)} free sites verified, {len(report.chains) - len(free)} frozen or "
        "broken"
    )
    print(f"peak memory         {peak_memory_mb():8.0f} MiB after the audit")


if __name__ == "__main__":
    main()
