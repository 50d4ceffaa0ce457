"""Parts: the train step, eager and compiled, muonlab vs transformers' Llama (benchmarks.bench_train).

Each mode is its own part, and within a part each optimizer's rows are saved as soon as they are
measured (Muon first: the targets are judged on it), so a compile that runs out of time keeps the
eager figures and the rows finished before it.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.gpu_check.context import Context, part, target
from benchmarks.gpu_check.modes import Mode

TARGET_MFU = 0.45  # issue 14: gpt2-160m, T=1024, bf16, compiled, Muon on hidden matrices
MOONSHOT_TOKENS_PER_S = 550_000
TARGET_VS_LLAMA = 1.3
OPTIMS = ("muon", "adamw")  # the judged one first


def judged_mode(mode: Mode) -> str:
    """The mode the targets are judged in: compiled where the check compiles."""
    return "compiled" if mode.compile else "eager"


def muonlab_muon(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """The row the targets are judged on: muonlab, Muon + AdamW, in `mode`."""
    return next((r for r in rows if (r["model"], r["optim"], r["mode"]) == ("muonlab", "muon", mode)), None)


def rows_of(ctx: Context, part: str) -> list[dict[str, Any]]:
    """The rows a train-step part of this check recorded (also partial ones; none if it did not run)."""
    return ((ctx.record(part) or {}).get("results") or {}).get("rows") or []


def judged_step_row(ctx: Context) -> dict[str, Any] | None:
    """The train step the Muon share is judged against: the compiled one where it was measured (whole
    or partial), else the eager one; None when neither part ran."""
    compiled = muonlab_muon(rows_of(ctx, "train_step_compiled"), "compiled")
    return compiled or muonlab_muon(rows_of(ctx, "train_step_eager"), "eager")


def attention_of(rows: list[dict[str, Any]], mode: str) -> dict[str, list[str]]:
    """Which SDPA kernel each model ran in `mode`."""
    return {r["model"]: r["attention"] for r in rows if r["mode"] == mode and r["optim"] == OPTIMS[0]}


def results(ctx: Context, rows: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """The part's results from the rows measured so far."""
    m = ctx.mode
    out: dict[str, Any] = {"rows": rows, "mode": mode, "attention": attention_of(rows, mode)}
    ours = muonlab_muon(rows, mode)
    if ours is None:
        return {**out, "key": "no Muon row yet"}
    mfu = ours["mfu"]
    attention = "; ".join(f"{model} {', '.join(ops) or 'none seen'}"
                          for model, ops in out["attention"].items())
    out["judged"] = {k: ours[k] for k in ("mode", "ms_per_step", "tokens_per_s", "mfu", "ratio_vs_llama")}
    out["key"] = (f"{mode} Muon step {ours['tokens_per_s']:,.0f} tok/s, MFU "
                  f"{'n/a' if mfu is None else f'{mfu:.1%}'}, {ours['ratio_vs_llama']:.2f}x Llama; "
                  f"attention: {attention}")
    if mode == judged_mode(m):
        out["targets"] = [target("MFU", mfu, TARGET_MFU, True, m),
                          target("tokens/s (moonshot)", ours["tokens_per_s"], MOONSHOT_TOKENS_PER_S, True, m),
                          target("vs Llama tokens/s", ours["ratio_vs_llama"], TARGET_VS_LLAMA, True, m)]
    return out


def measure(ctx: Context, mode: str) -> dict[str, Any]:
    from benchmarks import bench_train

    m = ctx.mode
    rows: list[dict[str, Any]] = []
    for optim in OPTIMS:
        raw = ctx.work / f"bench_train_{mode}_{optim}.json"
        bench_train.main(["--presets", m.preset, "--batch", str(m.batch), "--seq", str(m.seq), "--dtype",
                          m.dtype, "--steps", str(m.bench_steps), "--device", m.device, "--modes", mode,
                          "--optims", optim, "--no-memory", "--out", str(raw)])
        rows += json.loads(raw.read_text())["rows"]
        ctx.save_partial(results(ctx, rows, mode))
    return results(ctx, rows, mode)


@part("train step, eager (GPU: gpt2-160m, T=1024, bf16): tokens/s, MFU, vs Llama, attention kernels")
def train_step_eager(ctx: Context) -> dict[str, Any]:
    return measure(ctx, "eager")


@part("train step, compiled: tokens/s, MFU, vs Llama (eager ratio beside it), attention kernels")
def train_step_compiled(ctx: Context) -> dict[str, Any]:
    if not ctx.mode.compile:
        return {"status": "not run", "key": f"not run: the {ctx.mode.name} mode does not compile"}
    out = measure(ctx, "compiled")
    eager = muonlab_muon(rows_of(ctx, "train_step_eager"), "eager")
    if eager is not None and "judged" in out:
        out["eager_ratio_vs_llama"] = eager["ratio_vs_llama"]
        out["key"] += f" (eager: {eager['ratio_vs_llama']:.2f}x Llama)"
    return out
