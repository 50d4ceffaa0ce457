"""The fused head + loss's chunk size (model/loss.py): forward + backward time per chunk size, and the
unfused reference (logits materialized, F.cross_entropy), timed interleaved; peak memory on CUDA.

    python -m benchmarks.bench_loss [--rows N] [--d D] [--vocab V] [--chunks 128,256,...] [--dtype fp32|bf16]
        [--rounds N] [--device cpu|cuda] [--out FILE]

The GPU check's loss_chunks part runs the same sweep at gpt2-160m's shape (16k rows x 768 x 50304, bf16).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import (
    PeakMemory,
    default_device,
    describe_environment,
    environment,
    format_bytes,
    median,
    print_table,
    time_interleaved,
    write_results,
)
from model.loss import default_chunk_rows, linear_cross_entropy


def sweep(device: torch.device, rows: int, d: int, vocab: int, chunk_sizes: Sequence[int], dtype: str,
          rounds: int) -> dict[str, Any]:
    """Median ms of forward + backward per chunk size (and "unfused"), against the device's default."""
    default = default_chunk_rows(device, vocab)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(rows, d, generator=gen).to(device).requires_grad_()
    weight = (torch.randn(vocab, d, generator=gen) * d**-0.5).to(device).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=gen).to(device)
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step(chunk: int | None) -> None:
        """Forward and backward of the loss (chunk None: logits materialized, the unfused reference)."""
        with autocast():
            if chunk is None:
                loss = F.cross_entropy(F.linear(h, weight).float(), targets)
            else:
                loss = linear_cross_entropy(h, weight, targets, chunk_rows=chunk)
        loss.backward()
        h.grad = weight.grad = None

    sizes = sorted({*chunk_sizes, default})
    fns = {str(c): functools.partial(step, c) for c in sizes} | {"unfused": functools.partial(step, None)}
    times = time_interleaved(fns, rounds, 1, device, desc="loss chunks")
    memory = {}
    if device.type == "cuda":  # in-process peaks are exact on CUDA only (PeakMemory's docstring)
        for name, fn in fns.items():
            meter = PeakMemory(device)
            meter.start()
            fn()
            memory[name] = meter.peak()
    ms = {name: median(t) * 1e3 for name, t in times.items()}
    best = min(sizes, key=lambda c: ms[str(c)])
    table = [{"chunk_rows": name, "ms": ms[name], "vs_default": ms[name] / ms[str(default)],
              "peak_memory_bytes": memory.get(name)} for name in fns]
    return {
        "rows": rows, "d_model": d, "vocab": vocab, "dtype": dtype, "sweep": table, "best_chunk_rows": best,
        "default_chunk_rows": default, "default_vs_best": ms[str(default)] / ms[str(best)],
        "key": (f"best {best} rows ({ms[str(best)]:.2f} ms); default {default} "
                f"{ms[str(default)] / ms[str(best)]:.2f}x the best; unfused "
                f"{ms['unfused'] / ms[str(best)]:.2f}x"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_loss",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048, help="tokens (rows of hidden states)")
    parser.add_argument("--d", type=int, default=768, help="hidden size")
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--chunks", default="64,128,256,512,1024,2048", help="comma list of chunk sizes")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--out", help="JSON output (default benchmarks/results/bench_loss_<device>.json)")
    args = parser.parse_args(argv)
    try:
        chunks = [int(c) for c in args.chunks.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--chunks must be a comma list of integers, got {args.chunks!r}")
    if min([args.rows, args.d, args.vocab, args.rounds, *chunks]) < 1:
        parser.error("--rows, --d, --vocab, --rounds and every --chunks size must be positive")
    device = torch.device(args.device) if args.device else default_device()
    env = environment(device)
    result = sweep(device, args.rows, args.d, args.vocab, chunks, args.dtype, args.rounds)
    path = write_results("bench_loss", {"environment": env, **result}, args.out)
    print_table(f"fused head + loss, {args.rows} x {args.d} x vocab {args.vocab}, {args.dtype} — "
                f"{describe_environment(env)}", ["chunk rows", "ms", "vs default", "peak mem"],
                [[r["chunk_rows"], f"{r['ms']:.2f}", f"{r['vs_default']:.2f}x",
                  format_bytes(r["peak_memory_bytes"])] for r in result["sweep"]])
    print(result["key"])
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
