"""The end of a run: its summary file (`RunDir.summary`) and a short human summary on the terminal."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from common.console import console
from common.files import write_errors, write_json
from common.rundir import RunDir
from metrics.names import FINAL_TRAIN_LOSS, QA_HEAD, QA_TAIL, TAIL_GAP


def write_summary(run: RunDir, summary: dict) -> None:
    """The run's summary (`RunDir.summary`), whose presence marks the run as finished."""
    with write_errors(run.summary):
        write_json(run.summary, summary)


def print_summary(run_dir: Path, summary: dict) -> None:
    table = Table(title=f"run {summary['run']} finished", show_header=False)
    rows = [
        ("run directory", str(run_dir)),
        ("steps / tokens", f"{summary['steps']:,} / {summary['tokens']:,}"),
        ("wall time", f"{summary['wall_time_s']:.1f} s ({summary['tokens_per_s']:,.0f} tokens/s)"),
        ("train loss", _fmt(summary.get(FINAL_TRAIN_LOSS))),
        ("eval loss", f"{_fmt(summary.get('initial/eval_loss'))} -> {_fmt(summary.get('final/eval_loss'))}"),
    ]
    if TAIL_GAP in summary:
        rows.append(("tail - head loss", _fmt(summary[TAIL_GAP])))
    if QA_TAIL in summary:
        rows.append(("QA first-token acc. head / tail",
                     f"{_fmt(summary.get(QA_HEAD))} / {_fmt(summary[QA_TAIL])}"))
    for key, value in rows:
        table.add_row(key, value)
    console().print(table)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
