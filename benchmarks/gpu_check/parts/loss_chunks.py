"""Part: the fused head + loss's chunk size swept against the device's default (benchmarks.bench_loss)."""

from __future__ import annotations

from typing import Any

from benchmarks.gpu_check.context import Context, part


@part("fused head + loss: its chunk size swept (GPU: vocabulary 50304, 16k rows) vs the device's default")
def loss_chunks(ctx: Context) -> dict[str, Any]:
    from benchmarks.bench_loss import sweep

    m = ctx.mode
    rows, d, vocab = m.chunk_shape
    return sweep(ctx.device(), rows, d, vocab, m.chunk_sizes, m.dtype, m.bench_steps)
