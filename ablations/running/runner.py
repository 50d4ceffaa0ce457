"""Run every run of a grid with train.py: sequentially on CPU, one run per GPU, or several GPUs per run.

Each run writes to <out>/<name>/ (train.py's run directory), its stdout/stderr go to
<out>/logs/<name>.log, and <out>/grid.json records the grid (names, overrides, paper references,
the tuning sweep's runs) for the report. A run whose status (`RunDir.status`) is complete or
diverged (DONE_STATUSES) is skipped; any other is started with train.resume=auto, so an interrupted
run continues from its newest checkpoint. Two runners on one grid share the work: a run whose lock another
process holds (train.py holds it while training) is skipped as 'held', so no run is trained twice.
A grid with `tune:` runs its sweep first (each coordinate step or edge extension is planned from the
results before it), and each arm's seeds at its chosen values as soon as that arm's sweep has finished
(ablations/running/tuning.py); what to start is replanned whenever a run ends (`runnable`).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from ablations.metric_names import EVAL_LOSS
from ablations.running.grid import (
    REPO_ROOT,
    Grid,
    Run,
    branch_runs,
    config_diff,
    format_value,
    override_items,
)
from ablations.running.tuning import ArmTuning, Sweep, arms, final_runs, grid_sweep, swept_keys
from common.console import console as make_console
from common.errors import UserError
from common.lock import holder
from common.rundir import DONE_STATUSES, RunDir

DEFAULT_TRAIN_CMD = (sys.executable, "train.py")


class LaunchError(UserError):
    """Launcher settings that do not fit this machine; the message says what to change."""


@dataclass
class Outcome:
    """How one run of the grid ended: 'done', 'skipped' (already finished), 'interrupted' (stopped by a
    signal after a checkpoint: the next run of the grid resumes it), 'diverged' (non-finite loss: an
    outcome of a learning-rate sweep, not rerun), 'held' (another process, e.g. a second runner on
    the grid, is training it) or 'failed'."""

    name: str
    status: str
    returncode: int | None
    log: Path
    seconds: float


def wandb_tags(run: Run) -> list[str]:
    """Tags shared with wandb so runs can be filtered by routing, FFN type and seed."""
    tags = [run.labels["routing"], f"ffn-{run.labels['ffn_type']}"]
    if "seed" in run.labels:
        tags.append(f"seed-{run.labels['seed']}")
    return tags


def resume_arg(run: Run, out: Path) -> str:
    """auto; for a cooldown branch not yet started, its parent's checkpoint at the branch point."""
    if run.branch_of is None or RunDir(out / run.name).latest_checkpoint() is not None:
        return "auto"
    return str(RunDir(out / run.branch_of).checkpoint(run.branch_at))


def train_args(grid: Grid, run: Run, out: Path) -> list[str]:
    """train.py's arguments for one run (after the train command itself)."""
    args = ["--config", grid.base] if grid.base else []
    args += override_items(run)
    args += [
        f"run.dir={out / run.name}",
        f"run.name={run.name}",
        f"train.resume={resume_arg(run, out)}",
        f"logging.wandb_group={grid.name}",
        f"logging.wandb_tags={format_value(wandb_tags(run))}",
    ]
    return args


@dataclass(frozen=True)
class Stage:
    """What a grid runs next: its tuning sweep's pending runs, or its runs (at each arm's chosen values
    once tuned)."""

    name: str  # "tuning" or "grid"
    runs: list[Run]
    tunings: list[ArmTuning] | None = None  # the sweep's outcome, once it has finished
    swept: tuple[Run, ...] = ()  # every sweep run planned so far


def next_stage(grid: Grid, out: Path) -> Stage:
    """The tuning sweep's unfinished runs while it has any, else the grid's runs."""
    return stage_of(grid, grid_sweep(grid, out) if grid.tune else None)


def stage_of(grid: Grid, sweep: Sweep | None) -> Stage:
    """`next_stage` from the grid's sweep as replayed (None without `tune:`)."""
    if sweep is None:
        return Stage("grid", grid.runs)
    if sweep.tunings is None:
        return Stage("tuning", sweep.pending, swept=tuple(sweep.runs))
    chosen = {t.arm: t.chosen for t in sweep.tunings}
    return Stage("grid", final_runs(grid, chosen), sweep.tunings, tuple(sweep.runs))


def cooldown_stage(grid: Grid, finals: list[Run], out: Path) -> Stage:
    """The cooldown branches of the final runs that have finished (a branch starts from its parent's
    checkpoint); empty for a grid without `cooldowns:`."""
    done = [r for r in finals if RunDir(out / r.name).is_finished()]
    return Stage("cooldown", branch_runs(grid, done))


def choice_lines(tunings: list[ArmTuning]) -> list[str]:
    """Each arm's chosen values, then the 'widen the sweep' warnings."""
    lines = [f"  {t.arm}: " + " ".join(f"{k}={format_value(v)}" for k, v in t.chosen.items())
             for t in tunings]
    return lines + [f"  warning: {w}" for t in tunings for w in t.warnings()]


def _state(run_dir: RunDir) -> str:
    """The plan's word for a run: what the runner will do with it (a run with a checkpoint resumes)."""
    status = run_dir.status()
    if status in DONE_STATUSES:
        return "finished" if status == "complete" else status
    if status == "stopped" or run_dir.latest_checkpoint() is not None:
        return "interrupted, will resume"
    return "to run"


def plan_lines(grid: Grid, out: Path) -> list[str]:
    """The plan: one line per run with its routing, FFN type, status and config diff from the base."""
    stage = next_stage(grid, out)
    runs = list(stage.swept) if grid.tune else stage.runs
    lines = [f"grid {grid.name}: {len(grid.runs)} runs -> {out}  (base: {grid.base or 'train.py defaults'})"]
    if grid.tune:
        sweep = ", ".join(f"{k} {v}" for k, v in grid.tune.keys.items())
        how = "one key at a time" if grid.tune.method == "coordinate" else "every combination"
        edges = ", extended past a best value at an edge" if grid.tune.extend_edges else ""
        lines.append(f"tuning sweep first ({how}{edges}): {len(runs)} runs planned so far, {sweep}, "
                     f"seeds {grid.tune.seeds}")
    width = max(len(r.name) for r in runs)
    for run in runs:
        state = _state(RunDir(out / run.name))
        diff = " ".join(f"{k}={format_value(v)}" for k, v in config_diff(grid, run).items())
        lines.append(f"  {run.name:<{width}}  routing={run.labels['routing']:<16} "
                     f"ffn={run.labels['ffn_type']:<7} [{state}]  {diff}")
    if grid.tune and stage.tunings is None:
        lines.append(f"then further sweep runs as the results decide, and the grid's {len(grid.runs)} runs "
                     "at each arm's chosen values (once the sweep has finished)")
    elif grid.tune:
        swept = {r.name for r in runs}
        lines += ["chosen values:", *choice_lines(stage.tunings), "then the grid's runs:"]
        lines += [f"  {r.name} [{_state(RunDir(out / r.name))}]"
                  + (" (a tuning run)" if r.name in swept else "") for r in stage.runs]
    return lines


def write_manifest(grid: Grid, out: Path, stage: Stage) -> Path:
    """<out>/grid.json: what the report needs to know about the grid beyond the run directories.

    `runs` are the runs the report's table shows: the grid's runs, or for a tuned grid its runs at
    the chosen values (empty until the sweep has finished); `tuning_runs` are the sweep's so far and
    `tuning_arms` each arm with its swept keys, from which the report replays the sweep.
    """
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "name": grid.name,
        "path": str(grid.path),
        "base": grid.base,
        "description": grid.description,
        "overrides": grid.overrides,
        "equivalence_margin": grid.equivalence_margin,
        "analysis": grid.analysis,
        "runs": [] if stage.name == "tuning" else [{**asdict(r), "group": r.group} for r in stage.runs],
        "cooldown_runs": [] if stage.name == "tuning" else [
            {**asdict(r), "group": r.group} for r in branch_runs(grid, stage.runs)],
    }
    if grid.tune is not None:
        manifest["tune"] = asdict(grid.tune)
        manifest["tuning_runs"] = [{**asdict(r), "group": r.group} for r in stage.swept]
        manifest["tuning_arms"] = [{**asdict(arm), "keys": swept_keys(grid, arm)} for arm in arms(grid)]
    path = out / "grid.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def accelerate_cmd(num_processes: int, port: int) -> list[str]:
    """`accelerate launch` over several GPUs of this machine for one run (each slot on its own port)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(num_processes), "--main_process_port", str(port), "train.py"]


def gpu_slots(num_gpus: int, gpus_per_run: int) -> list[list[int]]:
    """Split the machine's GPUs into slots of gpus_per_run; no GPU -> one CPU slot."""
    if gpus_per_run < 1:
        raise LaunchError(f"--gpus-per-run must be >= 1, got {gpus_per_run}")
    if num_gpus == 0:
        return [[]]
    if gpus_per_run > num_gpus:
        raise LaunchError(f"--gpus-per-run {gpus_per_run} exceeds the {num_gpus} GPUs of this machine")
    return [list(range(i, i + gpus_per_run)) for i in range(0, num_gpus - gpus_per_run + 1, gpus_per_run)]


def cpu_jobs(jobs: int | None) -> int:
    """Local CPU runs side by side: `jobs`, else 2 on a machine with 2 cores or more. Two single-threaded
    runs finished a batch 1.1-1.3x sooner than one two-threaded run at a time on 2 cores
    (benchmarks/README.md, bench_jobs)."""
    if jobs is not None and jobs < 1:
        raise LaunchError(f"--jobs must be >= 1, got {jobs}")
    return jobs if jobs is not None else min(2, os.cpu_count() or 1)


def thread_env(jobs: int) -> dict[str, str]:
    """Each of `jobs` side-by-side CPU runs gets its share of the cores (unless OMP_NUM_THREADS is set)."""
    if jobs == 1 or "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}


def detect_gpus() -> int:
    """Number of CUDA devices visible here (torch imported only when a grid actually runs)."""
    import torch

    return torch.cuda.device_count()


def exit_reason(returncode: int | None) -> str:
    """Why a run counts as failed, from its exit status (negative: killed by that signal)."""
    if returncode is not None and returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}" if returncode else "exit code 0 but the run is not complete"


def _taken(run: Run, out: Path) -> Outcome | None:
    """The outcome of a run that another process finished or is training (two runners on one grid share
    it this way: each run is trained by the one whose train.py holds its lock), else None."""
    run_dir, log = RunDir(out / run.name), out / "logs" / f"{run.name}.log"
    status = run_dir.status()
    if status == "complete":
        return Outcome(run.name, "skipped", None, log, 0.0)
    if status == "running":
        tqdm.write(f"run {run.name} is held by {holder(run_dir.lock) or 'another process'}: skipped here, "
                   "not trained twice")
        return Outcome(run.name, "held", None, log, 0.0)
    return None


def ended_as(run_dir: RunDir, returncode: int) -> str:
    """The outcome of a run this runner started, from its status: done, diverged, interrupted (stopped.json,
    not the exit code: a launcher such as torchrun replaces train.py's code 75), held (refused: another
    process trains it), skipped (another process finished it) or failed."""
    status = run_dir.status()
    if status == "complete":
        return "done" if returncode == 0 else "skipped"
    return {"diverged": "diverged", "stopped": "interrupted", "running": "held"}.get(status, "failed")


def _run_one(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with log.open("a") as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return rc, time.time() - start


def run_grid(grid: Grid, out: Path, *, num_gpus: int | None = None, gpus_per_run: int = 1,
             train_cmd: Sequence[str] | None = None, jobs: int | None = None) -> list[Outcome]:
    """Run the grid's unfinished runs, up to one per GPU slot at a time (on a CPU, `jobs` at a time:
    cpu_jobs); never stops on a failure.

    A tuned grid runs its sweep first; each arm's runs at its chosen values start as soon as that arm's
    sweep has finished (a sweep run that is also a final run is not run twice), and each final run's
    cooldown branches as soon as it has. What to start is replanned whenever a run ends, so a slot never
    waits for a round of the sweep or another arm while there is work it could do.
    """
    out = out.resolve()
    slots = gpu_slots(detect_gpus() if num_gpus is None else num_gpus, gpus_per_run)
    if slots == [[]]:  # no GPU: CPU runs side by side
        slots = [[] for _ in range(cpu_jobs(jobs))]
    elif jobs is not None:
        raise LaunchError("--jobs sets how many CPU runs go side by side; on GPUs each run takes a slot of "
                          "--gpus-per-run GPUs")
    outcomes = _run_runnable(grid, out, slots, train_cmd)
    stage = next_stage(grid, out)
    write_manifest(grid, out, stage)
    if grid.tune is not None and stage.tunings is None:
        tqdm.write("the tuning sweep has unfinished runs: an arm's runs start once its sweep is complete; "
                   "rerun the same command to finish it")
    return outcomes


def runnable(grid: Grid, out: Path) -> tuple[list[Run], list[ArmTuning], Stage]:
    """What the grid can start now, in order (finished runs included): the sweep's unfinished runs, the
    runs at the chosen values of each arm whose sweep has finished (every run without `tune:`) and the
    cooldown branches of the final runs that have finished; with the arms tuned so far and `next_stage`
    (for the manifest), all from one replay of the sweep."""
    if grid.tune is None:
        return [*grid.runs, *cooldown_stage(grid, grid.runs, out).runs], [], stage_of(grid, None)
    sweep = grid_sweep(grid, out)
    tuned = [t for t in sweep.by_arm if t is not None]
    finals = final_runs(grid, {t.arm: t.chosen for t in tuned})
    return [*sweep.pending, *finals, *cooldown_stage(grid, finals, out).runs], tuned, stage_of(grid, sweep)


def _run_runnable(grid: Grid, out: Path, slots: list[list[int]],
                  train_cmd: Sequence[str] | None) -> list[Outcome]:
    """Run what `runnable` offers over the slots, replanning whenever a run ends, until nothing is left
    to start; one outcome per run handled (a finished run: skipped), in the order they were handled."""
    free: queue.Queue[int] = queue.Queue()
    for i in range(len(slots)):
        free.put(i)
    outcomes: dict[str, Outcome] = {}
    handled: list[str] = []
    running: set[str] = set()
    announced: set[str] = set()
    bar = tqdm(total=0, desc=f"grid {grid.name}", unit="run")

    def postfix() -> None:
        counts = {s: sum(o.status == s for o in outcomes.values())
                  for s in ("done", "failed", "diverged", "skipped", "held")}
        bar.set_postfix(**counts, running=",".join(sorted(running)) or "-")

    def work(run: Run) -> None:
        slot = free.get()
        if (taken := _taken(run, out)) is not None:  # another runner on this grid took it meanwhile
            outcomes[run.name] = taken
            free.put(slot)
            bar.update(1)
            postfix()
            return
        gpus = slots[slot]
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        else:
            env.update(thread_env(len(slots)))
        if train_cmd is not None:
            cmd = list(train_cmd)
        elif len(gpus) > 1:
            cmd = accelerate_cmd(len(gpus), 29500 + slot)
        else:
            cmd = list(DEFAULT_TRAIN_CMD)
        log = out / "logs" / f"{run.name}.log"
        running.add(run.name)
        postfix()
        try:
            rc, seconds = _run_one(cmd + train_args(grid, run, out), env, log)
        finally:
            running.discard(run.name)
            free.put(slot)
        status = ended_as(RunDir(out / run.name), rc)
        outcomes[run.name] = Outcome(run.name, status, rc, log, seconds)
        if status == "failed":
            why = exit_reason(rc)
            bar.write(f"run {run.name} failed ({why}); log: {log}")
        bar.update(1)
        postfix()

    def start_what_can_start(futures: set[Future]) -> None:
        runs, tuned, stage = runnable(grid, out)
        write_manifest(grid, out, stage)
        for tuning in (t for t in tuned if t.arm not in announced):
            announced.add(tuning.arm)
            bar.write("tuning done; chosen values:\n" + "\n".join(choice_lines([tuning])))
        bar.total = len(set(handled) | {r.name for r in runs})
        bar.refresh()
        for run in runs:
            if run.name in outcomes or run.name in handled:
                continue
            status = RunDir(out / run.name).status()
            if status in DONE_STATUSES:
                handled.append(run.name)
                outcomes[run.name] = Outcome(run.name, "skipped" if status == "complete" else status, None,
                                             out / "logs" / f"{run.name}.log", 0.0)
                bar.update(1)
            elif len(futures) < len(slots):
                handled.append(run.name)
                futures.add(pool.submit(work, run))
        postfix()

    pool = ThreadPoolExecutor(max_workers=len(slots))
    futures: set[Future] = set()
    try:
        start_what_can_start(futures)
        while futures:
            done, futures = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
            start_what_can_start(futures)
    except KeyboardInterrupt:
        # Ctrl-C also reached the running train.py processes; start no further runs.
        bar.write("interrupted: rerun the same command to resume the unfinished runs")
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return [outcomes[name] for name in handled]


def _log_cell(outcome: Outcome, out: Path) -> str:
    """The run's log, relative to the grid's directory (a skipped run has none from this command)."""
    if not outcome.log.is_file():
        return ""
    return str(outcome.log.relative_to(out)) if outcome.log.is_relative_to(out) else str(outcome.log)


def print_outcomes(outcomes: list[Outcome], out: Path, console: Console | None = None) -> None:
    """The closing summary: one row per run (status, time, final eval loss, log) and the totals."""
    console = console or make_console()
    table = Table(title=f"grid results ({out})")
    for col in ("run", "status", "time", "final eval loss"):
        table.add_column(col)
    table.add_column("log", overflow="fold")
    for o in outcomes:
        summary = RunDir(out / o.name).read_summary()
        loss = summary.get(EVAL_LOSS) if summary else None
        status = o.status if o.status != "failed" else f"failed ({exit_reason(o.returncode)})"
        table.add_row(o.name, status, f"{o.seconds:.0f} s" if o.seconds else "-",
                      "-" if loss is None else f"{loss:.4f}", _log_cell(o, out))
    console.print(table)
    counts = {s: sum(o.status == s for o in outcomes)
              for s in ("done", "skipped", "interrupted", "diverged", "held", "failed")}
    console.print(f"{counts['done']} done, {counts['skipped']} skipped (already finished), "
                  f"{counts['interrupted']} interrupted (rerun to resume), {counts['diverged']} diverged, "
                  f"{counts['held']} held by another process, {counts['failed']} failed; "
                  f"report: python -m ablations report {out}")
