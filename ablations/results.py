"""Read a grid's run directories (config.yaml, metrics.jsonl, summary.json) and aggregate seeds.

Runs are grouped by their resolved config minus seed, run name/dir and logging settings, so the
seeds of one setting form one row. Each row is compared with the AdamW row (optim.muon=none,
optim.base=adamw) and the full-Muon row (optim.muon=hidden) that differ from it only in routing.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ablations.grid import BASE_KEY, FFN_KEY, MUON_KEY, SEED_KEY, flatten, routing_label
from common.errors import MissingFileError
from common.rundir import RunDir

# Config keys that do not change what a run computes (or that distinguish seeds of one setting).
_IGNORED_PREFIXES = ("run.", "logging.")
_IGNORED_KEYS = (SEED_KEY, "train.resume")
# The final metrics the table reports, as named in summary.json.
EVAL_LOSS, TAIL_LOSS, TAIL_GAP = "final/eval_loss", "eval/tail/tail_loss", "eval/tail/gap"
QA_TAIL = "qa/fta/tail"
# The reference rows: AdamW everywhere, and Muon on all hidden matrices (the paper's "full Muon").
ADAMW, FULL_MUON = "adamw", "muon-hidden"


@dataclass
class RunData:
    """One run directory, read."""

    name: str
    path: Path
    config: dict[str, Any]  # flattened to dotted keys
    summary: dict[str, Any] | None  # None: the run has not completed
    history: dict[str, list[tuple[int, float]]]  # metric -> [(step, value)] sorted by step
    group: str
    paper_ref: dict[str, float] = field(default_factory=dict)

    @property
    def routing(self) -> str:
        return routing_label(self.config.get(MUON_KEY, "hidden"), self.config.get(BASE_KEY, "adamw"))

    @property
    def ffn_type(self) -> str:
        return str(self.config.get(FFN_KEY) or "preset")


@dataclass
class Stat:
    """Mean and sample standard deviation over seeds (std None with one seed)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat | None:
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class Row:
    """One setting of the grid: its completed seeds and the aggregated final metrics."""

    group: str
    routing: str
    ffn_type: str
    runs: list[RunData]
    paper_ref: dict[str, float]
    eval_loss: Stat | None = None
    tail_loss: Stat | None = None
    tail_gap: Stat | None = None
    qa_tail_fta: Stat | None = None
    delta_vs_adamw: float | None = None
    share_recovered: float | None = None

    @property
    def seeds(self) -> list[int]:
        return sorted(r.config.get(SEED_KEY, 0) for r in self.runs)


def read_history(run: RunDir) -> dict[str, list[tuple[int, float]]]:
    """A run's metrics.jsonl as metric -> [(step, value)]; a later line for a step wins (resumed runs)."""
    by_key: dict[str, dict[int, float]] = {}
    for event in run.events():
        step = event.get("step")
        for key, value in event.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                by_key.setdefault(key, {})[step] = float(value)
    return {k: sorted(v.items()) for k, v in by_key.items()}


def _grid_manifest(runs_dir: Path) -> dict[str, dict[str, Any]]:
    path = runs_dir / "grid.json"
    if not path.is_file():
        return {}
    return {r["name"]: r for r in json.loads(path.read_text())["runs"]}


def run_dirs(runs_dir: Path) -> list[Path]:
    """The run directories under runs_dir (or runs_dir itself if it is one), in the grid's order."""
    if RunDir(runs_dir).exists():
        return [runs_dir]
    order = list(_grid_manifest(runs_dir))
    found = [p for p in runs_dir.iterdir() if RunDir(p).exists()] if runs_dir.is_dir() else []
    return sorted(found, key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))


def load_run(path: Path, manifest: dict[str, dict[str, Any]]) -> RunData:
    """Read one run directory; `manifest` (grid.json's runs by name) supplies group and paper_ref."""
    run = RunDir(path)
    config = flatten(OmegaConf.to_container(OmegaConf.load(run.config), resolve=True))
    summary = run.read_summary()
    entry = manifest.get(path.name, {})
    seed = config.get(SEED_KEY)
    group = entry.get("group") or re.sub(rf"_s{seed}$", "", path.name)
    return RunData(path.name, path, config, summary, read_history(run), group,
                   dict(entry.get("paper_ref") or {}))


def load_runs(runs_dir: Path) -> list[RunData]:
    """Every run directory under runs_dir; raises FileNotFoundError when there is none."""
    dirs = run_dirs(runs_dir)
    if not dirs:
        raise MissingFileError(f"no run directories (with config.yaml) under {runs_dir}; "
                                "give the --out directory of `python -m ablations run`")
    manifest = _grid_manifest(runs_dir)
    return [load_run(p, manifest) for p in dirs]


def _setting_key(config: dict[str, Any], *, drop_routing: bool) -> str:
    ignored = set(_IGNORED_KEYS) | ({MUON_KEY, BASE_KEY} if drop_routing else set())
    kept = {k: v for k, v in config.items() if k not in ignored and not k.startswith(_IGNORED_PREFIXES)}
    return json.dumps(kept, sort_keys=True, default=str)


def _final(runs: list[RunData], key: str) -> Stat | None:
    values = [r.summary[key] for r in runs if r.summary and isinstance(r.summary.get(key), (int, float))]
    return Stat.of([float(v) for v in values if math.isfinite(v)])


def aggregate(runs: list[RunData]) -> list[Row]:
    """Rows (one per setting, seeds pooled) of the completed runs, with Δ and share of Muon gain."""
    rows: dict[str, Row] = {}
    family: dict[str, str] = {}
    for run in runs:
        if run.summary is None:
            continue
        key = _setting_key(run.config, drop_routing=False)
        if key not in rows:
            rows[key] = Row(run.group, run.routing, run.ffn_type, [], {})
            family[key] = _setting_key(run.config, drop_routing=True)
        rows[key].runs.append(run)
    for row in rows.values():
        row.paper_ref = next((r.paper_ref for r in row.runs if r.paper_ref), {})
        row.eval_loss = _final(row.runs, EVAL_LOSS)
        row.tail_loss = _final(row.runs, TAIL_LOSS)
        row.tail_gap = _final(row.runs, TAIL_GAP)
        row.qa_tail_fta = _final(row.runs, QA_TAIL)
    for key, row in rows.items():
        adamw = _find(rows, family, family[key], ADAMW)
        full = _find(rows, family, family[key], FULL_MUON)
        if adamw and adamw.eval_loss and row.eval_loss:
            row.delta_vs_adamw = row.eval_loss.mean - adamw.eval_loss.mean
            if full and full.eval_loss and full.eval_loss.mean != adamw.eval_loss.mean:
                row.share_recovered = (adamw.eval_loss.mean - row.eval_loss.mean) / (
                    adamw.eval_loss.mean - full.eval_loss.mean)
    return list(rows.values())


def _find(rows: dict[str, Row], family: dict[str, str], fam: str, routing: str) -> Row | None:
    """The row of the same family (same config but for the routing) with the given routing label."""
    return next((row for key, row in rows.items() if family[key] == fam and row.routing == routing), None)
