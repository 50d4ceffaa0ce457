"""The GPU check: every measurement a short GPU window needs, as one offline script (issue 14).

    bash benchmarks/gpu_check.sh [--out DIR] [--parts a,b] [--budget S]      # on a CUDA machine
    python -m benchmarks.gpu_check --cpu-smoke --out DIR                     # the same, reduced, on CPU

Each part runs in its own process: a fresh CUDA context, a hard timeout (the part's own, cut to what
is left of the total budget), a crash that stays in its part; torch is imported only by the parts
that use it, so the others start fast. Each writes `<out>/<part>.json` ({"part", "ok", "seconds",
"error", "message", "results"}) and the run goes on past a failure. At the end a table and
`<out>/summary.json` (environment, parts, targets); the exit code is 1 if any part failed. Nothing
needs the network: the real runs train on the synthetic biographies (data/bios.py), generated on the
spot. Parts, in order:

1. gpu_tests     pytest tests/test_gpu.py (bf16, compile, flash attention, NS on CUDA; skipped on CPU)
2. train_step    gpt2-160m, T=1024, bf16: train-step tokens/s and MFU, muonlab vs transformers' Llama,
                 eager and compiled (benchmarks.bench_train), and which SDPA kernel the model ran
3. muon_step     the Muon step's share of the train step; bf16 Newton–Schulz time per bucket
4. loss_chunks   the fused loss's chunk size swept at vocabulary 50304
5. real_run      `accelerate launch --num_processes 1 train.py` on bios, bf16, compiled, 200 steps:
                 the loss falls; perf/tokens_per_s and perf/mfu from metrics.jsonl
6. stop_resume   the same run (train.py directly) stopped with SIGTERM, then rerun: it must resume
                 the reference curve (or "graceful stop not available" if train.py dies of it)
7. train_memory  peak memory of each train-step contender of part 2, each in a fresh process

`--cpu-smoke` runs the same parts on CPU with tiny sizes and no compile (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check"
TARGET_MFU = 0.45  # issue 14: gpt2-160m, T=1024, bf16, compiled, Muon on hidden matrices
MOONSHOT_TOKENS_PER_S = 550_000
TARGET_MUON_SHARE = 0.03
TARGET_VS_LLAMA = 1.3
MIN_PART_S = 10.0  # a part is not started with less of the budget left
LOG_TAIL = 3000


@dataclass(frozen=True)
class Mode:
    """Sizes and limits of one way of running the check (GPU, or the CPU smoke)."""

    name: str
    device: str
    preset: str
    batch: int
    seq: int
    dtype: str
    compile: bool
    bench_steps: int  # timed steps (train step) or rounds (Muon share, NS buckets, loss chunks)
    chunk_sizes: tuple[int, ...]
    chunk_shape: tuple[int, int, int]  # rows (tokens), d_model, vocabulary of the loss sweep
    run_overrides: tuple[str, ...]  # train.py overrides of the real run, beyond configs/bios.yaml
    log_every: int  # the real run's train.log_every
    budget_s: float
    timeouts: dict[str, float] = field(default_factory=dict)  # per part; absent: CPU_TIMEOUT_S
    env: dict[str, str] = field(default_factory=dict)  # for every subprocess


# Both real runs: no evaluation but the one at the end, a checkpoint only at the end (or the stop).
RUN_COMMON = ("train.eval_every=0", "train.checkpoint_every=0", "metrics.qa_every=0",
              "metrics.spectra_every=0")
GPU = Mode(
    name="gpu", device="cuda", preset="gpt2-160m", batch=16, seq=1024, dtype="bf16", compile=True,
    bench_steps=20, chunk_sizes=(128, 256, 512, 1024, 2048, 4096, 8192), chunk_shape=(16384, 768, 50304),
    run_overrides=(*RUN_COMMON, "model.preset=gpt2-160m", "model.ffn_type=gelu", "optim.adamw_lr=3e-3",
                   "train.steps=200", "train.batch_size=16", "train.seq_len=1024", "train.precision=bf16",
                   "train.compile=true"),
    log_every=10, budget_s=480.0,
    timeouts={"gpu_tests": 100, "train_step": 150, "muon_step": 60, "loss_chunks": 45, "real_run": 150,
              "stop_resume": 150, "train_memory": 120},
)
CPU_SMOKE = Mode(
    name="cpu-smoke", device="cpu", preset="tiny", batch=2, seq=32, dtype="fp32", compile=False,
    bench_steps=2, chunk_sizes=(64, 256), chunk_shape=(512, 64, 2048),
    run_overrides=(*RUN_COMMON, "model.d_model=64", "model.n_layers=2", "model.n_heads=2",
                   "model.n_kv_heads=2", "model.ffn_hidden=128", "data.vocab_size=512",
                   "data.bios.n_people=32", "data.bios.n_groups=2", "data.bios.max_exposures=8",
                   "train.steps=20", "train.batch_size=8", "train.seq_len=64", "train.precision=fp32",
                   "train.compile=false"),
    log_every=2, budget_s=600.0,
    env={"OMP_NUM_THREADS": "1"},  # on 2 busy cores, more threads than free cores only spin
)
CPU_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Context:
    """What a part gets: the mode, where to write, a scratch directory shared by the parts, its deadline."""

    mode: Mode
    out: Path
    work: Path
    deadline: float  # time.time() by which the part must be done
    train_args: tuple[str, ...] = ()

    def remaining(self) -> float:
        """Seconds left to this part, for the timeouts of its own subprocesses (a margin kept)."""
        return max(1.0, self.deadline - time.time() - 3.0)

    def device(self) -> Any:
        import torch

        return torch.device(self.mode.device)


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[[Context], dict[str, Any]]
    what: str


PARTS: dict[str, Part] = {}


def part(what: str) -> Callable[[Callable[[Context], dict[str, Any]]], Callable[[Context], dict[str, Any]]]:
    """Register a part (in definition order); its function returns a JSON-able dict of results."""

    def register(fn: Callable[[Context], dict[str, Any]]) -> Callable[[Context], dict[str, Any]]:
        PARTS[fn.__name__] = Part(fn.__name__, fn, what)
        return fn

    return register


def target(name: str, value: float | None, threshold: float, higher: bool, mode: Mode) -> dict[str, Any]:
    """A target of the issue: met is None where it does not apply (no value, or not on a GPU)."""
    met = None
    if value is not None and mode.device == "cuda":
        met = value >= threshold if higher else value <= threshold
    return {"name": name, "value": value, "target": threshold, "higher_is_better": higher, "met": met}


def child_env(mode: Mode) -> dict[str, str]:
    """The environment of every subprocess: offline, no wandb, no progress bars in the logs."""
    return {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", **mode.env}


def run_logged(ctx: Context, cmd: Sequence[str], log: Path) -> int:
    """Run cmd from the repository root within the part's time, its output in `log`; its exit code."""
    with log.open("w") as f:
        return subprocess.run(list(cmd), cwd=ROOT, env=child_env(ctx.mode), stdout=f,
                              stderr=subprocess.STDOUT, timeout=ctx.remaining()).returncode


def tail(path: Path, chars: int = LOG_TAIL) -> str:
    """The end of a log file ('' if absent)."""
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def failure(what: str, code: int, log: Path) -> RuntimeError:
    """The error of a subprocess that failed: its telling line first (train.py's one `error:` line, or the
    first exception named), then the end of its log."""
    lines = [line.strip() for line in tail(log, 100_000).splitlines() if line.strip()]
    telling = next((line for line in reversed(lines) if line.startswith("error:")), None) or next(
        (line for line in lines if re.match(r"[\w.]*(Error|Exception)\b", line)), lines[-1] if lines else "")
    return RuntimeError(f"{what} exited with {code}: {telling}\n--- end of {log.name} ---\n{tail(log)}")


# -- 1. pytest tests/test_gpu.py ---------------------------------------------------------------------


@part("pytest tests/test_gpu.py: bf16, compile, flash attention, NS on CUDA")
def gpu_tests(ctx: Context) -> dict[str, Any]:
    junit = ctx.out / "gpu_tests.junit.xml"
    cmd = [sys.executable, "-m", "pytest", "tests/test_gpu.py", "-q", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={junit}"]
    log = ctx.out / "gpu_tests.pytest.log"
    code = run_logged(ctx, cmd, log)
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if code != 0 or counts["tests"] == 0:
        raise failure(f"pytest ({counts})", code, log)
    return {**counts, "returncode": code,
            "key": f"{counts['passed']} passed, {counts['skipped']} skipped of {counts['tests']}"}


# -- 2. train step: muonlab vs transformers' Llama --------------------------------------------------


def attention_ops(ctx: Context) -> list[str]:
    """The SDPA kernels (aten ops) muonlab's model runs in one training forward at the benchmark's shape."""
    import torch

    from benchmarks.bench_train import bench_config, make_batch
    from model import Transformer

    cfg, _ = bench_config(ctx.mode.preset, ctx.mode.seq)
    batch = make_batch(cfg, ctx.mode.batch, ctx.mode.seq, ctx.device())
    model = Transformer(cfg).to(ctx.device())
    activities = [torch.profiler.ProfilerActivity.CPU]
    bf16 = ctx.mode.dtype == "bf16"
    with torch.profiler.profile(activities=activities) as prof, \
            torch.autocast(ctx.mode.device, dtype=torch.bfloat16, enabled=bf16):
        model(batch[:, :-1], batch[:, 1:])
    return sorted({e.key for e in prof.key_averages()
                   if "scaled_dot_product" in e.key and e.key != "aten::scaled_dot_product_attention"})


def compiled_mode(mode: Mode) -> str:
    """The mode the targets are judged in: compiled where the check compiles."""
    return "compiled" if mode.compile else "eager"


def judged_row(mode: Mode, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The train-step row the targets are judged on: muonlab, Muon + AdamW, compiled where compiling."""
    wanted = ("muonlab", "muon", compiled_mode(mode))
    return next(r for r in rows if (r["model"], r["optim"], r["mode"]) == wanted)


def train_step_rows(out: Path) -> list[dict[str, Any]] | None:
    """The train_step part's rows from its JSON, None when that part did not run or failed."""
    path = out / "train_step.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    return record["results"]["rows"] if record.get("ok") else None


@part("train step (GPU: gpt2-160m, T=1024, bf16): tokens/s, MFU, muonlab vs Llama, eager and compiled")
def train_step(ctx: Context) -> dict[str, Any]:
    from benchmarks import bench_train

    m = ctx.mode
    ops = attention_ops(ctx)
    raw = ctx.work / "bench_train.json"
    argv = ["--presets", m.preset, "--batch", str(m.batch), "--seq", str(m.seq), "--dtype", m.dtype,
            "--steps", str(m.bench_steps), "--device", m.device, "--no-memory", "--out", str(raw)]
    bench_train.main([*argv, *(["--compile"] if m.compile else [])])
    rows = json.loads(raw.read_text())["rows"]
    ours = judged_row(m, rows)
    mfu = ours["mfu"]
    return {
        "rows": rows, "note": ours["note"], "attention_ops": ops,
        "flash_attention": any("flash" in op for op in ops),
        "judged": {k: ours[k] for k in ("mode", "ms_per_step", "tokens_per_s", "mfu", "ratio_vs_llama")},
        "targets": [target("MFU", mfu, TARGET_MFU, True, m),
                    target("tokens/s (moonshot)", ours["tokens_per_s"], MOONSHOT_TOKENS_PER_S, True, m),
                    target("vs Llama tokens/s", ours["ratio_vs_llama"], TARGET_VS_LLAMA, True, m)],
        "key": (f"{ours['mode']} Muon step {ours['tokens_per_s']:,.0f} tok/s, MFU "
                f"{'n/a' if mfu is None else f'{mfu:.1%}'}, {ours['ratio_vs_llama']:.2f}x Llama; "
                f"attention {', '.join(op.removeprefix('aten::') for op in ops) or 'n/a'}"),
    }


# -- 3. the Muon step's share and Newton–Schulz per bucket ------------------------------------------


def ns_flops(shape: Sequence[int], steps: int) -> float:
    """FLOPs of `steps` quintic NS iterations on [..., m, n] (Gram matrix on the smaller side)."""
    small, large = sorted(shape[-2:])
    return math.prod(shape[:-2]) * steps * (4 * small * small * large + 2 * small**3)


def ns_buckets(ctx: Context) -> list[dict[str, Any]]:
    """Time each Newton–Schulz call of a real Muon step on the preset's hidden matrices, as Muon makes it
    (same-shape matrices stacked into one bucket, Muon's NS dtype)."""
    from benchmarks.bench_optim import MUON_KW, hidden_matrices
    from benchmarks.common import median, time_interleaved
    from optim import newton_schulz
    from optim.muon import Muon

    orthogonalize = newton_schulz.orthogonalize
    with mock.patch.object(newton_schulz, "orthogonalize", wraps=orthogonalize) as spy:
        Muon(hidden_matrices(ctx.mode.preset, ctx.device()), **MUON_KW).step()
    if not spy.call_args_list:
        raise RuntimeError("the Muon step made no call of optim.newton_schulz.orthogonalize to time")
    calls = []
    for args, kwargs in spy.call_args_list:
        bound = inspect.signature(orthogonalize).bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(bound)
    fns = {str(i): functools.partial(orthogonalize, *b.args, **b.kwargs) for i, b in enumerate(calls)}
    times = time_interleaved(fns, ctx.mode.bench_steps, 1, ctx.device(), desc="NS buckets")
    rows = []
    for i, bound in enumerate(calls):
        G, seconds = bound.arguments["G"], median(times[str(i)])
        dtype = bound.arguments["dtype"] or newton_schulz.default_ns_dtype(G.device)
        rows.append({"shape": list(G.shape), "dtype": str(dtype).removeprefix("torch."), "ms": seconds * 1e3,
                     "tflop_per_s": ns_flops(G.shape, bound.arguments["steps"]) / seconds / 1e12})
    return rows


@part("the Muon step's share of the train step; Newton–Schulz time per bucket (bf16 on GPU)")
def muon_step(ctx: Context) -> dict[str, Any]:
    from benchmarks.bench_optim import bench_share, parse_args
    from training.runtime import keep_freed_memory

    m = ctx.mode
    keep_freed_memory()  # as train.py and the benchmarks do
    args = parse_args(["--preset", m.preset, "--batch", str(m.batch), "--seq", str(m.seq),
                       "--rounds", str(m.bench_steps), "--device", m.device, "--skip-dist"])
    share = bench_share(args)  # an eager train step, Muon timed inside it
    buckets = ns_buckets(ctx)
    ns_ms = sum(b["ms"] for b in buckets)
    # Against the step the targets name (compiled, part 2) when that part ran, else bench_share's eager one.
    rows = train_step_rows(ctx.out)
    step_ms = None if rows is None else judged_row(m, rows)["ms_per_step"]
    judged = share["muon_share"] if step_ms is None else share["ms_muon_step"] / step_ms
    return {
        "share": share, "buckets": buckets, "ns_ms_total": ns_ms, "judged_step_ms": step_ms,
        "muon_share_judged": judged,
        "targets": [target("Muon share of the step", judged, TARGET_MUON_SHARE, False, m)],
        "key": (f"Muon {share['ms_muon_step']:.1f} ms = {judged:.1%} of the "
                f"{'eager' if step_ms is None else compiled_mode(m)} step; NS {ns_ms:.1f} ms in "
                f"{len(buckets)} bucket(s)"),
    }


# -- 4. the fused loss's chunk size --------------------------------------------------------------------


@part("fused head + loss: its chunk size swept (GPU: vocabulary 50304, 16k rows)")
def loss_chunks(ctx: Context) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from benchmarks.common import PeakMemory, median, time_interleaved
    from model.loss import CHUNK_ROWS, linear_cross_entropy

    m, device = ctx.mode, ctx.device()
    rows, d, vocab = m.chunk_shape
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(rows, d, generator=gen).to(device).requires_grad_()
    weight = (torch.randn(vocab, d, generator=gen) * d**-0.5).to(device).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=gen).to(device)
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=m.dtype == "bf16")

    def step(chunk: int | None) -> None:
        """Forward and backward of the loss (chunk None: logits materialized, the unfused reference)."""
        with autocast():
            if chunk is None:
                loss = F.cross_entropy(F.linear(h, weight).float(), targets)
            else:
                loss = linear_cross_entropy(h, weight, targets, chunk_rows=chunk)
        loss.backward()
        h.grad = weight.grad = None

    sizes = sorted({*m.chunk_sizes, CHUNK_ROWS})
    fns = {str(c): functools.partial(step, c) for c in sizes} | {"unfused": functools.partial(step, None)}
    times = time_interleaved(fns, m.bench_steps, 1, device, desc="loss chunks")
    memory = {}
    if device.type == "cuda":  # in-process peaks are exact on CUDA only (PeakMemory's docstring)
        for name, fn in fns.items():
            meter = PeakMemory(device)
            meter.start()
            fn()
            memory[name] = meter.peak()
    ms = {name: median(t) * 1e3 for name, t in times.items()}
    best = min(sizes, key=lambda c: ms[str(c)])
    table = [{"chunk_rows": name, "ms": ms[name], "vs_default": ms[name] / ms[str(CHUNK_ROWS)],
              "peak_memory_bytes": memory.get(name)} for name in fns]
    return {
        "rows": rows, "d_model": d, "vocab": vocab, "dtype": m.dtype, "sweep": table, "best_chunk_rows": best,
        "default_chunk_rows": CHUNK_ROWS, "default_vs_best": ms[str(CHUNK_ROWS)] / ms[str(best)],
        "key": (f"best {best} rows ({ms[str(best)]:.2f} ms); default {CHUNK_ROWS} "
                f"{ms[str(CHUNK_ROWS)] / ms[str(best)]:.2f}x the best; unfused "
                f"{ms['unfused'] / ms[str(best)]:.2f}x"),
    }


# -- 5. and 6. real runs of train.py --------------------------------------------------------------------


def train_overrides(ctx: Context, run: str) -> list[str]:
    """train.py's arguments for a real run in ctx.work/<run> (all runs share the prepared data)."""
    return ["--config", "configs/bios.yaml", *ctx.mode.run_overrides, f"train.log_every={ctx.mode.log_every}",
            f"data.dir={ctx.work / 'bios'}", f"run.dir={ctx.work / run}", *ctx.train_args]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The events of a metrics.jsonl (a line being written is skipped)."""
    events = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def losses(events: list[dict[str, Any]]) -> dict[int, float]:
    return {e["step"]: e["train/loss"] for e in events if "train/loss" in e}


@part("accelerate launch train.py on bios (GPU: gpt2-160m, bf16, compiled): loss falls, tokens/s, MFU")
def real_run(ctx: Context) -> dict[str, Any]:
    m = ctx.mode
    precision = "bf16" if m.dtype == "bf16" else "no"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", precision, "--dynamo_backend", "no",
           "train.py", *train_overrides(ctx, "full")]
    log = ctx.out / "real_run.train.log"
    code = run_logged(ctx, cmd, log)
    if code != 0:
        raise failure("train.py", code, log)
    metrics = ctx.work / "full" / "metrics.jsonl"
    shutil.copy(metrics, ctx.out / "real_run.metrics.jsonl")
    events = [e for e in read_metrics(metrics) if "perf/tokens_per_s" in e]
    loss = losses(events)
    first, last = loss[min(loss)], loss[max(loss)]
    steady = events[1:] or events  # the first window holds compilation and warm-up

    def med(key: str) -> float | None:
        values = [e[key] for e in steady if key in e]
        return statistics.median(values) if values else None

    tok_s, mfu = med("perf/tokens_per_s"), med("perf/mfu")
    if not last < first:
        raise RuntimeError(f"the loss did not fall: {first:.4f} at step {min(loss)}, "
                           f"{last:.4f} at step {max(loss)}")
    if m.device == "cuda" and mfu is None:
        import torch

        from metrics.throughput import peak_flops

        if peak_flops(torch.cuda.get_device_name()) is not None:
            raise RuntimeError("perf/mfu is missing from metrics.jsonl on a GPU with a known peak")
    return {
        "command": " ".join(cmd), "loss_first": first, "loss_last": last,
        "loss_steps": [min(loss), max(loss)],
        "tokens_per_s": tok_s, "mfu": mfu, "log_events": len(events),
        "key": (f"loss {first:.3f} -> {last:.3f} in {max(loss)} steps; {tok_s:,.0f} tok/s, MFU "
                f"{'n/a' if mfu is None else f'{mfu:.1%}'}"),
    }


def stop_when_logged(proc: subprocess.Popen, metrics: Path, step: int, timeout: float) -> bool:
    """SIGTERM to `proc` once its metrics.jsonl holds a train/loss at `step` or later; False if `proc`
    ended first."""
    end = time.time() + timeout
    while proc.poll() is None:
        if any(s >= step for s in losses(read_metrics(metrics))):
            proc.send_signal(signal.SIGTERM)
            return True
        if time.time() > end:
            raise TimeoutError(f"no train/loss at step >= {step} within {timeout:.0f} s")
        time.sleep(0.05)
    return False


def compare_losses(reference: dict[int, float], resumed: dict[int, float], steps: Sequence[int]) -> float:
    """The largest relative difference of train/loss at `steps`."""
    return max((abs(resumed[s] - reference[s]) / abs(reference[s]) for s in steps), default=0.0)


@part("SIGTERM the same run, rerun it: it resumes the reference run's loss curve")
def stop_resume(ctx: Context) -> dict[str, Any]:
    from training.stop import STOPPED_EXIT_CODE

    reference = losses(read_metrics(ctx.out / "real_run.metrics.jsonl"))
    if not reference:
        raise RuntimeError("needs the real_run part's metrics: run real_run first")
    # train.py itself, not accelerate's single-process launcher: that one neither forwards SIGTERM to
    # train.py nor passes its exit code on. One process either way, so the two runs compute the same.
    cmd = [sys.executable, "train.py", *train_overrides(ctx, "stopped")]
    metrics, stopped_log = ctx.work / "stopped" / "metrics.jsonl", ctx.out / "stop_resume.stopped.log"
    signal_step = 2 * ctx.mode.log_every
    with stopped_log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(ctx.mode), stdout=f, stderr=subprocess.STDOUT)
        try:
            signalled = stop_when_logged(proc, metrics, signal_step, ctx.remaining())
            code = proc.wait(timeout=ctx.remaining())
        finally:
            if proc.poll() is None:
                proc.kill()
    result: dict[str, Any] = {"command": " ".join(cmd), "signal_after_step": signal_step, "exit_code": code}
    if not signalled or code == 0:
        return {**result, "status": "not exercised", "key": "not exercised: the run ended before SIGTERM"}
    if code == -signal.SIGTERM:
        return {**result, "status": "graceful stop not available",
                "key": "graceful stop not available: train.py died of SIGTERM (not a failure)"}
    found = re.search(r"stopped at step (\d+)", tail(stopped_log, 100_000))  # maybe after a progress bar
    if code != STOPPED_EXIT_CODE or not found:
        raise failure(f"train.py, sent SIGTERM (expected exit {STOPPED_EXIT_CODE}, 'stopped at step N'),",
                      code, stopped_log)
    stopped_at = int(found.group(1))
    resumed_log = ctx.out / "stop_resume.resumed.log"
    code = run_logged(ctx, cmd, resumed_log)
    if code != 0:
        raise failure("the rerun after the stop", code, resumed_log)
    shutil.copy(metrics, ctx.out / "stop_resume.metrics.jsonl")
    resumed = losses(read_metrics(metrics))
    common = sorted(set(reference) & set(resumed))
    # The checkpoint keeps the open logging window, so every log step after the stop must match.
    after = [s for s in common if s > stopped_at]
    before = [s for s in common if s <= stopped_at]
    # fp32 on CPU is bitwise deterministic; bf16 on CUDA is not (atomics in backward): 2% of the loss.
    tolerance = 2e-2 if ctx.mode.device == "cuda" else 1e-6
    worst = compare_losses(reference, resumed, after)
    result.update(status="resumed", stopped_at=stopped_at, steps_compared=after, max_rel_diff_after=worst,
                  max_rel_diff_before=compare_losses(reference, resumed, before), tolerance=tolerance)
    if not after:
        raise RuntimeError(f"stopped at step {stopped_at}: no logged step after it to compare")
    if worst > tolerance:
        raise RuntimeError(f"the resumed run's train/loss differs from the reference by {worst:.2e} "
                           f"(relative; tolerance {tolerance:.0e}) at steps {after}")
    return {**result, "key": (f"stopped at step {stopped_at} (exit {STOPPED_EXIT_CODE}), resumed; train/loss "
                              f"max rel. diff {worst:.1e} over {len(after)} log steps")}


# -- 7. peak memory -----------------------------------------------------------------------------------------


@part("peak memory of each train-step contender (Muon + AdamW), each in a fresh process")
def train_memory(ctx: Context) -> dict[str, Any]:
    from benchmarks.bench_train import MODELS, Variant, bench_config, probe_memory
    from benchmarks.common import format_bytes, run_in_fresh_process

    m = ctx.mode
    cfg, note = bench_config(m.preset, m.seq)
    rows = []
    for compiled in (False, True) if m.compile else (False,):
        for model in MODELS:
            v = Variant(model, "muon", compiled)
            peak = run_in_fresh_process(probe_memory, cfg, v, m.batch, m.seq, m.dtype, m.device)
            rows.append({"model": model, "mode": v.mode, "optim": v.optim, "peak_memory_bytes": peak})
    key = "; ".join(f"{r['model']} {r['mode']} {format_bytes(r['peak_memory_bytes'])}" for r in rows)
    return {"rows": rows, "note": note, "key": key}


# -- the driver ---------------------------------------------------------------------------------------------


def run_part(ctx: Context, name: str) -> int:
    """In the part's own process: run it, write <out>/<name>.json either way; 0 if it succeeded."""
    start = time.time()
    record: dict[str, Any] = {"part": name, "what": PARTS[name].what, "mode": ctx.mode.name}
    try:
        record.update(ok=True, error=None, message=None, results=PARTS[name].run(ctx))
    except Exception as err:  # every failure is recorded; the driver goes on with the next part
        message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        record.update(ok=False, error=traceback.format_exc(), message=message, results={})
    record["seconds"] = time.time() - start
    write_record(ctx.out, record)
    return 0 if record["ok"] else 1


def write_record(out: Path, record: dict[str, Any]) -> None:
    from benchmarks.common import write_results

    write_results(record["part"], record, out / f"{record['part']}.json")


def spawn_part(mode: Mode, out: Path, name: str, timeout: float, argv_tail: Sequence[str]) -> dict[str, Any]:
    """Run one part in a child process in its own session; kill the whole session at the end (a timed-out
    part's trainers and compile workers too). Returns the part's record, written by it or for it."""
    path, log = out / f"{name}.json", out / f"{name}.log"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--run-part", name, "--deadline",
           str(time.time() + timeout), *argv_tail]
    start = time.time()
    error = None
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(mode), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s (the part's limit or the rest of the budget)"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if error is None and path.is_file():
        return json.loads(path.read_text())
    error = error or f"the part's process exited with code {proc.returncode} without writing {path.name}"
    return failed(mode, out, name, f"{error}\n--- end of {log.name} ---\n{tail(log)}", time.time() - start)


def failed(mode: Mode, out: Path, name: str, error: str, seconds: float) -> dict[str, Any]:
    """Write and return the record of a part that could not write its own."""
    record = {"part": name, "what": PARTS[name].what, "mode": mode.name, "ok": False, "error": error,
              "message": error.splitlines()[0], "results": {}, "seconds": seconds}
    write_record(out, record)
    return record


def environment(mode: Mode, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """benchmarks.common's environment record, plus the attention kernel part 2 saw."""
    import torch

    from benchmarks.common import environment as common_environment

    env = common_environment(torch.device(mode.device))
    env["cudnn"] = torch.backends.cudnn.version() if mode.device == "cuda" else None
    step = records.get("train_step", {}).get("results", {})
    env["attention_ops"], env["flash_attention"] = step.get("attention_ops"), step.get("flash_attention")
    return env


def format_targets(targets: list[dict[str, Any]]) -> str:
    def one(t: dict[str, Any]) -> str:
        sign = ">=" if t["higher_is_better"] else "<="
        met = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        return f"{t['name']} {sign} {t['target']:g}: {met}"

    return "; ".join(one(t) for t in targets)


def summarize(mode: Mode, records: dict[str, dict[str, Any]], seconds: float, out: Path) -> dict[str, Any]:
    """Write <out>/summary.json and print the table; returns the summary."""
    from benchmarks.common import print_table, write_results

    parts = {}
    for name, rec in records.items():
        res = rec.get("results") or {}
        parts[name] = {"ok": rec["ok"], "seconds": rec["seconds"], "key": res.get("key"),
                       "targets": res.get("targets", []), "error": rec.get("message")}
    summary = {
        "mode": mode.name, "ok": all(p["ok"] for p in parts.values()), "seconds": seconds,
        "budget_s": mode.budget_s, "environment": environment(mode, records), "parts": parts,
        "targets": [t for p in parts.values() for t in p["targets"]],
    }
    write_results("summary", summary, out / "summary.json")
    print_table(
        f"GPU check ({mode.name}) on {summary['environment']['device_name']}, {seconds:.0f} s; "
        f"results in {out}",
        ["part", "ok", "s", "key figures", "targets"],
        [[name, "yes" if p["ok"] else "FAILED", f"{p['seconds']:.0f}",
          p["key"] if p["ok"] else (p["error"] or "")[:200], format_targets(p["targets"])]
         for name, p in parts.items()],
    )
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", help=f"results folder (default $OUT, else {DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="the reduced CPU mode: tiny sizes, no compile")
    parser.add_argument("--parts", help=f"comma list, run in this order (default: {', '.join(PARTS)})")
    parser.add_argument("--budget", type=float,
                        help="total seconds (GPU 480, CPU smoke 600); parts past it fail")
    parser.add_argument("--train-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra train.py override for the real runs (repeatable)")
    parser.add_argument("--work", help="scratch folder for the real runs (default: a temporary one, removed)")
    parser.add_argument("--run-part", choices=list(PARTS), help=argparse.SUPPRESS)  # the child's own part
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    given = args.parts
    args.parts = list(PARTS) if given is None else [p.strip() for p in given.split(",") if p.strip()]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown or not args.parts:
        parser.error(f"--parts: unknown part(s) {', '.join(unknown) or '(none given)'}; choose from "
                     f"{', '.join(PARTS)}")
    if args.budget is not None and args.budget <= 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mode = CPU_SMOKE if args.cpu_smoke else GPU
    out = Path(args.out or os.environ.get("OUT") or DEFAULT_OUT).resolve()
    if args.run_part:
        ctx = Context(mode, out, Path(args.work), args.deadline, tuple(args.train_arg))
        return run_part(ctx, args.run_part)
    import torch

    if mode.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run the reduced CPU check with --cpu-smoke", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget or mode.budget_s
    work = Path(args.work or tempfile.mkdtemp(prefix="muonlab_gpu_check_")).resolve()
    argv_tail = ["--out", str(out), "--work", str(work), *(["--cpu-smoke"] if args.cpu_smoke else []),
                 *(a for arg in args.train_arg for a in ("--train-arg", arg))]
    start = time.time()
    records = {}
    try:
        for name in args.parts:
            left = start + budget - time.time()
            if left < MIN_PART_S:
                records[name] = failed(mode, out, name, f"not run: the {budget:.0f} s budget was spent", 0.0)
                continue
            print(f"[{time.time() - start:5.0f} s] {name}: {PARTS[name].what} ...", flush=True)
            timeout = min(mode.timeouts.get(name, CPU_TIMEOUT_S), left)
            records[name] = spawn_part(mode, out, name, timeout, argv_tail)
            rec = records[name]
            status = (rec.get("results") or {}).get("key") if rec["ok"] else "FAILED, see " + f"{name}.json"
            print(f"[{time.time() - start:5.0f} s] {name}: {status}", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(mode, records, time.time() - start, out)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
