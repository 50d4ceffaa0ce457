"""Command line: `python -m ablations run GRID ...`, `python -m ablations report RUNS_DIR ...` and
`python -m ablations compare STUDY_A STUDY_B ...`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ablations.reading.across_studies import compare_studies
from ablations.reading.report import build_report
from ablations.reading.rows import ADAMW, FULL_MUON
from ablations.running.grid import load_grid, with_overrides
from ablations.running.runner import next_stage, plan_lines, print_outcomes, run_grid, write_manifest
from ablations.running.slurm import SlurmOptions, manifest_text, sbatch_script, write_slurm
from common.cli import ExitCode, StoppedBySignal, run_main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ablations", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="expand a grid and run it (or write a SLURM array job)")
    run.add_argument("grid", help="grid YAML file, or the name of a shipped grid (e.g. smoke)")
    run.add_argument("overrides", nargs="*", metavar="key=value",
                     help="config overrides for every run (e.g. train.steps=50); the grid's name, and so "
                          "its default --out, gets a hash of them")
    run.add_argument("--launcher", choices=("local", "slurm"), default="local")
    run.add_argument("--dry-run", action="store_true", help="print the plan (and the sbatch script) only")
    run.add_argument("--out", type=Path, help="output directory (default: runs/<grid name>)")
    run.add_argument("--gpus", type=int, help="GPUs to use locally (default: all visible; 0 = CPU)")
    run.add_argument("--gpus-per-run", type=int, default=1,
                     help="local: GPUs per run; >1 launches each run with accelerate launch")
    run.add_argument("--jobs", type=int,
                     help="local CPU: runs side by side, each with its share of the cores (default: 2 on 2 "
                          "cores or more, measured 1.1-1.3x sooner than one at a time; 1: one at a time)")
    run.add_argument("--nodes", type=int, default=2, help="slurm: nodes per run")
    run.add_argument("--gpus-per-node", type=int, default=8, help="slurm: GPUs per node")
    run.add_argument("--cpus-per-task", type=int, default=64, help="slurm: CPUs per node for the run")
    run.add_argument("--partition", help="slurm: partition")
    run.add_argument("--account", help="slurm: account")
    run.add_argument("--time", default="24:00:00", help="slurm: time limit per run")
    run.add_argument("--max-parallel", type=int, help="slurm: at most this many runs at once")
    rep = sub.add_parser("report", help="tables, plots and report.md from a grid's run directories")
    rep.add_argument("runs_dir", type=Path)
    rep.add_argument("--out", type=Path, help="output directory (default: RUNS_DIR/report)")
    rep.add_argument("--iso-loss", type=float, metavar="LOSS",
                     help="target eval loss of the iso-loss analysis (default: the highest final eval loss "
                          "of any run, which every run reaches)")
    cmp = sub.add_parser("compare", help="how each arm's gain over AdamW (and its share of the all-hidden "
                                          "Muon gain) moves between two studies, e.g. two model scales")
    cmp.add_argument("studies", type=Path, nargs=2, metavar="STUDY",
                     help="a report directory with per_seed.csv (e.g. docs/results/study_tiny_v2) or a "
                          "grid's run directory with report/per_seed.csv")
    cmp.add_argument("--labels", nargs=2, metavar=("A", "B"),
                     help="the two studies' names in the tables (default: their directory names)")
    cmp.add_argument("--baseline", default=ADAMW,
                     help="the arm gains are measured from (default: %(default)s)")
    cmp.add_argument("--full", default=FULL_MUON,
                     help="the arm whose gain the shares divide (default: %(default)s)")
    cmp.add_argument("--out", type=Path, help="output directory (default: runs/compare_A_vs_B)")
    return p


def cmd_compare(args: argparse.Namespace) -> int:
    labels = tuple(args.labels or (s.resolve().name for s in args.studies))
    out = args.out or Path("runs") / f"compare_{labels[0]}_vs_{labels[1]}"
    report = compare_studies(*args.studies, out, labels, baseline=args.baseline, full=args.full)
    print(f"wrote {report} (with gains.csv, shares.csv and gains.png next to it)")
    return ExitCode.OK


def cmd_run(args: argparse.Namespace) -> int:
    grid = with_overrides(load_grid(args.grid), args.overrides)
    out = args.out or Path("runs") / grid.name
    print("\n".join(plan_lines(grid, out)))
    if args.launcher == "slurm":
        opts = SlurmOptions(nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                            cpus_per_task=args.cpus_per_task,
                            time=args.time, partition=args.partition, account=args.account,
                            max_parallel=args.max_parallel)
        # A tuned grid is several arrays: the sweep's rounds (each coordinate step or edge extension is
        # planned from the results before it), then (rerun this command) the runs at the chosen values.
        stage = next_stage(grid, out)
        staged = dataclasses.replace(grid, runs=stage.runs)
        if args.dry_run:
            manifest = out / "slurm" / f"{grid.name}.runs"
            print(f"\n# {manifest}:\n{manifest_text(staged, out)}")
            print(f"# {out / 'slurm' / f'{grid.name}.sbatch'}:\n{sbatch_script(staged, out, manifest, opts)}")
            return 0
        write_manifest(grid, out, stage)
        script, manifest = write_slurm(staged, out, opts)
        then = ("Once it has finished, run this command again: for the sweep's next round, or the grid's "
                "runs at the chosen values.\n"
                if stage.name == "tuning" else f"Then:  python -m ablations report {out}")
        print(f"\nwrote {script} and {manifest} ({len(staged.runs)} array tasks: the {stage.name} stage).\n"
              f"Submit from the repository root:  sbatch {script}\n{then}")
        return 0
    if args.dry_run:
        return 0
    try:
        outcomes = run_grid(grid, out, num_gpus=args.gpus, gpus_per_run=args.gpus_per_run, jobs=args.jobs)
    except KeyboardInterrupt:  # Ctrl-C reached the running train.py processes too: they checkpointed
        raise StoppedBySignal("stopped: rerun the same command to resume the unfinished runs") from None
    print_outcomes(outcomes, out.resolve())
    if any(o.status == "failed" for o in outcomes):
        return ExitCode.USER_ERROR  # each failed run's own error is in its log, named above
    return ExitCode.STOPPED if any(o.status == "interrupted" for o in outcomes) else ExitCode.OK


def cmd_report(args: argparse.Namespace) -> int:
    report = build_report(args.runs_dir, args.out, iso_loss=args.iso_loss)
    print(f"wrote {report} (with table.md, table.csv and the plots next to it)")
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    """Exit codes: common.cli.ExitCode, as train.py's (a grid with a failed run exits 1)."""
    args = parser().parse_args(argv)
    commands = {"run": cmd_run, "report": cmd_report, "compare": cmd_compare}
    return run_main(lambda: commands[args.command](args))

if __name__ == "__main__":
    sys.exit(main())
