"""Local grid throughput on a CPU: train.py runs one at a time (torch's threads each) against several side
by side (cores / jobs threads each), the wall time of the whole batch of runs.

    python -m benchmarks.bench_jobs [--runs 4] [--jobs 2] [--steps 100] [--out FILE]

Each run is the default `tiny` Shakespeare config at another seed for `--steps` steps (evals every
half, no checkpoints or spectra), as a small grid's runs are. The runs' final eval losses are recorded
for both schedules: the thread count changes the order of float reductions, so they may differ in the
last digits.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.common import environment, print_table, write_results
from common.rundir import RunDir
from metrics.names import FINAL_EVAL_LOSS

ROOT = Path(__file__).resolve().parents[1]


def run_batch(seeds: list[int], jobs: int, steps: int, work: Path) -> tuple[float, dict[int, dict]]:
    """Train one run per seed, `jobs` at a time; the batch's wall seconds and each run's summary."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "TQDM_DISABLE": "1", **({"OMP_NUM_THREADS": str(threads)} if jobs > 1 else {})}
    args = [f"train.steps={steps}", f"train.eval_every={max(1, steps // 2)}", "train.checkpoint_every=0",
            "metrics.spectra_every=0"]
    start, pending, running = time.perf_counter(), list(seeds), []
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            cmd = [sys.executable, "train.py", *args, f"train.seed={seed}", f"run.dir={work / f's{seed}'}"]
            running.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        running[0].wait()
        if running[0].returncode != 0:
            raise RuntimeError(f"train.py exited with {running[0].returncode}: {' '.join(running[0].args)}")
        running.pop(0)
    wall = time.perf_counter() - start
    return wall, {s: RunDir(work / f"s{s}").read_summary() for s in seeds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_jobs",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side in the second schedule")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", help="JSON output (default benchmarks/results/bench_jobs_cpu.json)")
    args = parser.parse_args(argv)
    if min(args.runs, args.jobs, args.steps) < 1 or args.jobs < 2:
        parser.error("--runs and --steps must be positive and --jobs at least 2")
    seeds = list(range(args.runs))
    rows = []
    with tempfile.TemporaryDirectory(prefix="muonlab_bench_jobs_") as tmp:
        for jobs in (1, args.jobs):
            wall, summaries = run_batch(seeds, jobs, args.steps, Path(tmp) / f"jobs{jobs}")
            rows.append({"jobs": jobs, "wall_s": wall, "eval_loss": {s: summaries[s][FINAL_EVAL_LOSS]
                                                                     for s in seeds}})
    ratio = rows[0]["wall_s"] / rows[1]["wall_s"]
    path = write_results("bench_jobs", {"environment": environment(torch.device("cpu")), "runs": args.runs,
                                        "steps": args.steps, "rows": rows, "speedup": ratio}, args.out)
    print_table(f"{args.runs} runs of {args.steps} steps", ["jobs", "wall s", "final eval losses"],
                [[r["jobs"], f"{r['wall_s']:.1f}", " ".join(f"{v:.4f}" for v in r["eval_loss"].values())]
                 for r in rows])
    print(f"{args.jobs} side by side: {ratio:.2f}x the throughput of one at a time; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
