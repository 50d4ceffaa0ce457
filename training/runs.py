"""`python -m training.runs [DIR]`: the runs under DIR (default runs/), one line each.

Status (`RunDir.status`), steps done/total, routing label, learning rate, the latest eval loss and the
age of the last write; `--sort` orders them, `--json` prints the same as JSON for scripts;
`--status RUN_DIR` prints that one run's status word alone (the grid's sbatch script reads it). Every
directory holding a config.yaml (a started run) or a routing.json is listed, at any depth (a grid's
runs are under runs/<grid>/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from common.cli import ExitCode, run_main
from common.errors import MissingFileError, UserError
from common.rundir import RUN_STATUSES, RunDir
from common.text_table import text_table
from metrics.names import EVAL_LOSS
from training.config import load_config
from training.identity import run_label

SORT_KEYS = ("age", "name", "status", "steps", "loss")


@dataclass(frozen=True)
class RunRow:
    """One run directory as the listing shows it (None: not known, e.g. no eval logged yet)."""

    name: str  # the path relative to the listed directory
    path: str
    status: str
    steps_done: int
    steps_total: int | None
    routing: str | None
    lr: str | None
    eval_loss: float | None
    age_s: float  # since the run last wrote its config or a metric


def read_row(run: RunDir, root: Path, now: float) -> RunRow:
    """The listing's row of one run directory, from its files."""
    cfg: dict[str, Any] = OmegaConf.to_container(OmegaConf.load(run.config)) if run.exists() else {}
    optim, train = cfg.get("optim", {}), cfg.get("train", {})
    try:
        routing = run_label(load_config([str(run.config)])) if optim else None
    except UserError:  # a config this version cannot read: the rest of the row still helps
        routing = None
    lr = None
    if "adamw_lr" in optim:
        muon_lr = optim.get("muon_lr")
        lr = f"{optim['adamw_lr']:g}" + ("" if muon_lr in (None, optim["adamw_lr"]) else f"/{muon_lr:g}")
    events = list(run.events())
    evals = [e[EVAL_LOSS] for e in events if EVAL_LOSS in e]
    written = run.modified() or run.path.stat().st_mtime  # a directory with only routing.json: its own
    return RunRow(
        name=str(run.path.relative_to(root)), path=str(run.path), status=run.status(),
        steps_done=max((e["step"] for e in events), default=0), steps_total=train.get("steps"),
        routing=routing, lr=lr, eval_loss=evals[-1] if evals else None,
        age_s=now - written)


def find_runs(root: Path) -> list[RunDir]:
    """The run directories under `root` (itself included): those holding config.yaml or routing.json."""
    found = {p.parent for name in ("config.yaml", "routing.json") for p in root.rglob(name)}
    return [RunDir(p) for p in sorted(found)]


def sort_rows(rows: list[RunRow], key: str) -> list[RunRow]:
    """Newest first (age), by name, by status, most steps first, lowest loss first (unknown last)."""
    orders = {
        "age": lambda r: r.age_s,
        "name": lambda r: r.name,
        "status": lambda r: (r.status, r.name),
        "steps": lambda r: -r.steps_done,
        "loss": lambda r: (r.eval_loss is None, r.eval_loss or 0.0),
    }
    return sorted(rows, key=orders[key])


def format_age(seconds: float) -> str:
    """45s, 12m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def format_rows(rows: list[RunRow]) -> str:
    table = [("run", "status", "steps", "routing", "lr", "eval loss", "age")]
    table += [(r.name, r.status, f"{r.steps_done}/{'?' if r.steps_total is None else r.steps_total}",
               r.routing or "-", r.lr or "-", "-" if r.eval_loss is None else f"{r.eval_loss:.4f}",
               format_age(r.age_s)) for r in rows]
    return "\n".join(text_table(table, right={2, 5, 6}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.runs",
                                     description="List runs: status, steps, routing, lr, eval loss, age.")
    parser.add_argument("dir", nargs="?", help="the directory of the runs (default: runs)")
    parser.add_argument("--sort", choices=SORT_KEYS, default="age",
                        help="age (newest first, the default), name, status, steps (most first), "
                             "loss (lowest first)")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    parser.add_argument("--status", action="store_true",
                        help="print only the status of the run directory DIR (one of "
                             f"{', '.join(RUN_STATUSES)})")
    args = parser.parse_args(argv)
    if args.status:
        if args.dir is None:
            parser.error("--status needs the run directory DIR")
        print(RunDir(Path(args.dir)).status())
        return ExitCode.OK
    return run_main(lambda: _list(Path(args.dir or "runs"), args.sort, args.json, default=args.dir is None))


def _list(root: Path, sort: str, as_json: bool, default: bool = False) -> int:
    if not root.is_dir() and not default:  # the default runs/ is simply not there before the first run
        raise MissingFileError(f"no directory {root}; pass the directory of the runs (default: runs)")
    now = time.time()
    rows = sort_rows([read_row(run, root, now) for run in find_runs(root)], sort) if root.is_dir() else []
    if as_json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    elif rows:
        print(format_rows(rows))
    else:
        print(f"no runs under {root}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
