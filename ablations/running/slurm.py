"""A SLURM array job for a grid: one array task per run, each a multi-node torchrun launch.

The script and a manifest (one line per run: its name and train.py arguments, shell-quoted) are
written to <out>/slurm/. Array task i reads line i+1 of the manifest, skips the run if its status
(`RunDir.status`, read by `python -m training.runs --status`) is complete or diverged, as the local
runner does, and otherwise launches train.py on all nodes of the task with torchrun's c10d
rendezvous on the task's first node; train.resume=auto makes a resubmitted array continue
interrupted runs, and a task whose run stopped on a signal requeues itself. Paths are relative to
the repository root: submit from there.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ablations.running.grid import Grid
from ablations.running.runner import train_args
from common.rundir import DONE_STATUSES


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of one array task (one run)."""

    nodes: int = 2
    gpus_per_node: int = 8
    cpus_per_task: int = 64
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    max_parallel: int | None = None  # the array's %N throttle: at most N runs at once


def manifest_text(grid: Grid, out: Path) -> str:
    """One line per run: the run's name followed by its train.py arguments, shell-quoted."""
    return "".join(shlex.join([run.name, *train_args(grid, run, out)]) + "\n" for run in grid.runs)


def status_line(run_dir: str) -> str:
    """Bash that prints the status (RunDir.status) of `run_dir`, a shell word such as "$OUT/$RUN_NAME"."""
    return f'"$(python -m training.runs --status {run_dir})"'


def sbatch_script(grid: Grid, out: Path, manifest: Path, opts: SlurmOptions) -> str:
    """The sbatch array script for the grid (out and manifest paths relative to the repository root)."""
    throttle = f"%{opts.max_parallel}" if opts.max_parallel else ""
    directives = [
        f"--job-name={grid.name}",
        f"--array=0-{len(grid.runs) - 1}{throttle}",
        f"--nodes={opts.nodes}",
        "--ntasks-per-node=1",  # one torchrun per node; it starts the node's GPU processes
        f"--gpus-per-node={opts.gpus_per_node}",
        f"--cpus-per-task={opts.cpus_per_task}",
        f"--time={opts.time}",
        f"--output={out}/logs/%x_%A_%a.log",
        # SIGTERM to the job steps 2 minutes before the time limit (and on preemption): train.py stops
        # after its step with a checkpoint; the task is then requeued and resumes.
        "--signal=TERM@120",
        "--requeue",
    ]
    if opts.partition:
        directives.append(f"--partition={opts.partition}")
    if opts.account:
        directives.append(f"--account={opts.account}")
    header = "\n".join(f"#SBATCH {d}" for d in directives)
    return f"""#!/bin/bash
# Grid {grid.name}: {len(grid.runs)} runs, {opts.nodes} node(s) x {opts.gpus_per_node} GPU(s) each.
# Submit from the repository root: sbatch {out}/slurm/{grid.name}.sbatch
{header}
set -euo pipefail
cd "$SLURM_SUBMIT_DIR"
OUT={shlex.quote(str(out))}
MANIFEST={shlex.quote(str(manifest))}

# This task's run: line SLURM_ARRAY_TASK_ID+1 of the manifest = run name, then train.py arguments.
eval "set -- $(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$MANIFEST")"
RUN_NAME=$1
shift
STATUS={status_line('"$OUT/$RUN_NAME"')}
case "$STATUS" in
    {"|".join(DONE_STATUSES)})
        echo "run $RUN_NAME already finished ($STATUS); skipping"
        exit 0 ;;
esac

# Rendezvous on the first node of this task; the port varies per task so tasks sharing a node don't clash.
# (An array, not `| head -n 1`: under pipefail head's early exit can kill the job with SIGPIPE.)
NODES=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
MASTER_ADDR=${{NODES[0]}}
MASTER_PORT=$((29500 + SLURM_ARRAY_TASK_ID % 1000))
export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-8}}
echo "run $RUN_NAME on $SLURM_JOB_NODELIST (rendezvous $MASTER_ADDR:$MASTER_PORT)"

rc=0
srun --kill-on-bad-exit=1 torchrun --nnodes {opts.nodes} --nproc_per_node {opts.gpus_per_node} \\
    --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \\
    train.py "$@" || rc=$?
if [ {status_line('"$OUT/$RUN_NAME"')} = stopped ]; then
    echo "run $RUN_NAME stopped by a signal after a checkpoint; requeueing it to resume"
    scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
fi
exit $rc
"""


def write_slurm(grid: Grid, out: Path, opts: SlurmOptions) -> tuple[Path, Path]:
    """Write <out>/slurm/<grid>.sbatch and its runs manifest; returns (script, manifest)."""
    folder = out / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / f"{grid.name}.runs"
    manifest.write_text(manifest_text(grid, out))
    script = folder / f"{grid.name}.sbatch"
    script.write_text(sbatch_script(grid, out, manifest, opts))
    return script, manifest
