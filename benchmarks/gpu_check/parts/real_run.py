"""Parts: real runs of train.py on the synthetic biographies (generated on the spot, no network).

real_run: `accelerate launch` train.py (GPU: gpt2-160m, bf16, compiled, 200 steps): the loss falls;
perf/tokens_per_s and perf/mfu from its metrics. stop_resume: the same run stopped with SIGTERM and
rerun: it must resume the reference curve.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from benchmarks.gpu_check.context import ROOT, Context, child_env, failure, part, run_logged, tail
from common.rundir import RunDir
from metrics.names import TRAIN_LOSS


def train_overrides(ctx: Context, run: str) -> list[str]:
    """train.py's arguments for a real run in ctx.work/<run> (all runs share the prepared data)."""
    return ["--config", "configs/bios.yaml", *ctx.mode.run_overrides, f"train.log_every={ctx.mode.log_every}",
            f"data.dir={ctx.work / 'bios'}", f"run.dir={ctx.work / run}", *ctx.train_args]


def logged_losses(run: RunDir) -> dict[int, float]:
    """train/loss by step, as logged so far (a line being written is skipped)."""
    with warnings.catch_warnings():  # RunDir warns of the half-written line a live run may have
        warnings.simplefilter("ignore")
        return {e["step"]: e[TRAIN_LOSS] for e in run.events() if TRAIN_LOSS in e}


def parameter_count(run: RunDir) -> int:
    """The run's parameters, from its routing.json (one row per parameter, with its numel)."""
    return sum(row["numel"] for row in json.loads(run.routing.read_text()))


@part("accelerate launch train.py on bios (GPU: gpt2-160m, bf16, compiled): loss falls, tokens/s, MFU")
def real_run(ctx: Context) -> dict[str, Any]:
    m = ctx.mode
    precision = "bf16" if m.dtype == "bf16" else "no"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", precision, "--dynamo_backend", "no",
           "train.py", *train_overrides(ctx, "full")]
    log = ctx.records / "real_run.train.log"
    code = run_logged(ctx, cmd, log)
    if code != 0:
        raise failure("train.py", code, log)
    run = RunDir(ctx.work / "full")
    shutil.copy(run.metrics, ctx.records / f"real_run.{run.metrics.name}")
    events = [e for e in run.events() if "perf/tokens_per_s" in e]
    loss = logged_losses(run)
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
            raise RuntimeError("perf/mfu is missing from the run's metrics log on a GPU with a known peak")
    params = parameter_count(run)
    return {
        "command": " ".join(cmd), "params": params, "loss_first": first, "loss_last": last,
        "loss_steps": [min(loss), max(loss)], "tokens_per_s": tok_s, "mfu": mfu, "log_events": len(events),
        "key": (f"{params / 1e6:.1f}M parameters: loss {first:.3f} -> {last:.3f} in {max(loss)} steps; "
                f"{tok_s:,.0f} tok/s, MFU {'n/a' if mfu is None else f'{mfu:.1%}'}"),
    }


def stop_when_logged(proc: subprocess.Popen, run: RunDir, step: int, timeout: float) -> bool:
    """SIGTERM to `proc` once its metrics hold a train/loss at `step` or later; False if it ended first."""
    end = time.time() + timeout
    while proc.poll() is None:
        if any(s >= step for s in logged_losses(run)):
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

    reference = logged_losses(RunDir(ctx.work / "full"))
    if not reference:
        raise RuntimeError("needs the real_run part's metrics: run real_run first")
    # train.py itself, not accelerate's single-process launcher: that one neither forwards SIGTERM to
    # train.py nor passes its exit code on. One process either way, so the two runs compute the same.
    cmd = [sys.executable, "train.py", *train_overrides(ctx, "stopped")]
    run, stopped_log = RunDir(ctx.work / "stopped"), ctx.records / "stop_resume.stopped.log"
    signal_step = 2 * ctx.mode.log_every
    with stopped_log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(ctx.mode), stdout=f, stderr=subprocess.STDOUT)
        try:
            signalled = stop_when_logged(proc, run, signal_step, ctx.remaining())
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
    resumed_log = ctx.records / "stop_resume.resumed.log"
    code = run_logged(ctx, cmd, resumed_log)
    if code != 0:
        raise failure("the rerun after the stop", code, resumed_log)
    shutil.copy(run.metrics, ctx.records / f"stop_resume.{run.metrics.name}")
    resumed = logged_losses(run)
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
