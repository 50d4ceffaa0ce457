"""Part: peak memory of each train-step contender (Muon + AdamW), each in a fresh process."""

from __future__ import annotations

from typing import Any

from benchmarks.gpu_check.context import Context, part


@part("peak memory of each train-step contender (Muon + AdamW), each in a fresh process")
def train_memory(ctx: Context) -> dict[str, Any]:
    from benchmarks.bench_train import MODELS, Variant, bench_config, probe_memory
    from benchmarks.common import format_bytes, run_in_fresh_process

    m = ctx.mode
    cfg, note = bench_config(m.preset, m.seq)
    rows: list[dict[str, Any]] = []
    for compiled in (False, True) if m.compile else (False,):
        for model in MODELS:
            v = Variant(model, "muon", compiled)
            peak = run_in_fresh_process(probe_memory, cfg, v, m.batch, m.seq, m.dtype, m.device)
            rows.append({"model": model, "mode": v.mode, "optim": v.optim, "peak_memory_bytes": peak})
            ctx.save_partial({"rows": rows, "note": note})
    key = "; ".join(f"{r['model']} {r['mode']} {format_bytes(r['peak_memory_bytes'])}" for r in rows)
    return {"rows": rows, "note": note, "key": key}
