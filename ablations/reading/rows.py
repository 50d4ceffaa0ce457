"""Read a grid's run directories (config, metrics log and summary, through RunDir) and aggregate seeds.

Runs are grouped by their setting (training.identity.setting_key: the keys that change what a run
computes, without the seed, read with the schema defaults applied), so the seeds of one setting form
one row, whichever version of train.py wrote them. Each row is compared with the AdamW row
(optim.muon=none, optim.base=adamw) and the full-Muon row (optim.muon=hidden) of its family: the
rows that differ from it only in routing, in optim keys an AdamW run does not read (Muon's
variants, another optimizer's settings), in the tuned keys (each arm runs at its own chosen values)
and in train.steps. The references are the family's rows at its most common step count (ties: the
fewest steps), so an arm trained k times longer is compared with the AdamW of the normal budget.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ablations.metric_names import EVAL_LOSS, FINAL_METRICS, QA_TAIL, TAIL_GAP, TAIL_LOSS
from ablations.reading.stats import Comparison, Stat, compare, share_ci
from ablations.running.grid import FFN_KEY, ROUTING_KEYS, SEED_KEY, STEPS_KEY
from common.errors import MissingFileError
from common.rundir import RunDir
from optim.config import ADAMW_RUN_KEYS
from training.config import RunConfig, load_config
from training.identity import flatten_config, identity_keys, run_label, setting_key

# The reference rows: AdamW everywhere, and Muon on all hidden matrices (the paper's "full Muon").
ADAMW, FULL_MUON = "adamw", "muon-hidden"


@dataclass
class RunData:
    """One run directory, read."""

    name: str
    path: Path
    config: dict[str, Any]  # config.yaml as written, flattened to dotted keys
    summary: dict[str, Any] | None  # None: the run has not completed
    history: dict[str, list[tuple[int, float]]]  # metric -> [(step, value)] sorted by step
    group: str
    paper_ref: dict[str, float] = field(default_factory=dict)
    diverged: bool = False
    role: str = "final"  # "tuning": a sweep run that is not one of the table's runs; "cooldown": a branch
    resolved: RunConfig = field(default_factory=RunConfig)  # config.yaml with the schema defaults
    branch_of: str | None = None  # a cooldown branch: the final run it branched from

    @property
    def seed(self) -> int:
        return int(self.config.get(SEED_KEY, 0))

    @property
    def steps(self) -> int:
        return int(self.config.get(STEPS_KEY, 0))

    @property
    def routing(self) -> str:
        return run_label(self.resolved)

    @property
    def ffn_type(self) -> str:
        return str(self.config.get(FFN_KEY) or "preset")


@dataclass
class Row:
    """One setting of the grid: its completed seeds and the aggregated final metrics."""

    group: str
    routing: str
    ffn_type: str
    runs: list[RunData]
    paper_ref: dict[str, float]
    finals: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> seed -> final value
    delta_vs_adamw: float | None = None
    share_recovered: float | None = None
    share_ci95: tuple[float, float] | None = None
    share_ci_method: str | None = None  # "fieller" or "bootstrap" (ablations.reading.stats.share_ci)
    vs_adamw: dict[str, Comparison] = field(default_factory=dict)  # metric -> test against the AdamW row
    vs_muon: dict[str, Comparison] = field(default_factory=dict)  # ... against the full-Muon row
    tuned: dict[str, object] = field(default_factory=dict)  # the arm's chosen values of a tuned grid
    longer: bool = False  # trained for more steps than the family's references
    family: str = ""  # rows of one family differ only in routing, tuned values, steps, non-AdamW keys
    lineage: str = ""  # rows of one lineage differ only in tuned values and steps (a budget ladder)
    adamw: Row | None = None  # the family's AdamW reference row (possibly this row)
    full_muon: Row | None = None  # the family's full-Muon reference row

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs)

    @property
    def steps(self) -> int:
        return self.runs[0].steps

    def stat(self, metric: str) -> Stat | None:
        return Stat.of(list(self.finals.get(metric, {}).values()))

    @property
    def eval_loss(self) -> Stat | None:
        return self.stat(EVAL_LOSS)

    @property
    def tail_loss(self) -> Stat | None:
        return self.stat(TAIL_LOSS)

    @property
    def tail_gap(self) -> Stat | None:
        return self.stat(TAIL_GAP)

    @property
    def qa_tail_fta(self) -> Stat | None:
        return self.stat(QA_TAIL)


def read_history(run: RunDir) -> dict[str, list[tuple[int, float]]]:
    """A run's metrics log as metric -> [(step, value)]; a later line for a step wins (resumed runs)."""
    by_key: dict[str, dict[int, float]] = {}
    for event in run.events():
        step = event.get("step")
        for key, value in event.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                by_key.setdefault(key, {})[step] = float(value)
    return {k: sorted(v.items()) for k, v in by_key.items()}


def read_manifest(runs_dir: Path) -> dict[str, Any]:
    """The runner's grid.json (an empty mapping for run directories made by hand)."""
    path = runs_dir / "grid.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _entries(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """grid.json's runs by name: the sweep's (role "tuning"), the table's (role "final") and their cooldown
    branches (role "cooldown")."""
    entries = {r["name"]: {**r, "role": "tuning"} for r in manifest.get("tuning_runs", [])}
    entries |= {r["name"]: {**r, "role": "final"} for r in manifest.get("runs", [])}
    return entries | {r["name"]: {**r, "role": "cooldown"} for r in manifest.get("cooldown_runs", [])}


def run_dirs(runs_dir: Path) -> list[Path]:
    """The run directories under runs_dir (or runs_dir itself if it is one), in the grid's order."""
    if RunDir(runs_dir).exists():
        return [runs_dir]
    order = list(_entries(read_manifest(runs_dir)))
    found = [p for p in runs_dir.iterdir() if RunDir(p).exists()] if runs_dir.is_dir() else []
    return sorted(found, key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))


def load_run(path: Path, entries: dict[str, dict[str, Any]]) -> RunData:
    """Read one run directory; `entries` (grid.json's runs by name) supply group, paper_ref and role."""
    run = RunDir(path)
    config = flatten_config(OmegaConf.to_container(OmegaConf.load(run.config), resolve=True))
    summary = run.read_summary()
    entry = entries.get(path.name, {})
    seed = config.get(SEED_KEY)
    group = entry.get("group") or re.sub(rf"_s{seed}$", "", path.name)
    return RunData(path.name, path, config, summary, read_history(run), group,
                   dict(entry.get("paper_ref") or {}), run.status() == "diverged", entry.get("role", "final"),
                   load_config([str(run.config)]), entry.get("branch_of"))


def load_runs(runs_dir: Path) -> list[RunData]:
    """Every run directory under runs_dir; raises MissingFileError when there is none."""
    dirs = run_dirs(runs_dir)
    if not dirs:
        raise MissingFileError(f"no run directories (with config.yaml) under {runs_dir}; "
                                "give the --out directory of `python -m ablations run`")
    entries = _entries(read_manifest(runs_dir))
    return [load_run(p, entries) for p in dirs]


def _family_key(cfg: RunConfig, tuned_keys: tuple[str, ...]) -> str:
    """What rows of one family share: their setting but routing, tuned keys, train.steps and the optim
    keys an AdamW-only run does not read."""
    not_adamw = {k for k in identity_keys(cfg)
                 if k.startswith("optim.") and k.removeprefix("optim.") not in ADAMW_RUN_KEYS}
    return setting_key(cfg, drop={*ROUTING_KEYS, STEPS_KEY, *tuned_keys, *not_adamw})


def _finals(runs: list[RunData], key: str) -> dict[int, float]:
    """seed -> the final value of `key`, over the runs that have a finite one."""
    values = {r.seed: r.summary.get(key) for r in runs if r.summary}
    return {s: float(v) for s, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def aggregate(runs: list[RunData], tuned_keys: tuple[str, ...] = ()) -> list[Row]:
    """Rows (one per setting, seeds pooled) of the completed table runs, with Δ, share of the Muon
    gain and the tests against the AdamW and full-Muon rows of their family."""
    rows: dict[str, Row] = {}
    for run in runs:
        if run.summary is None or run.role != "final":  # the sweep and the branches have their sections
            continue
        key = setting_key(run.resolved)
        if key not in rows:
            rows[key] = Row(run.group, run.routing, run.ffn_type, [], {},
                            family=_family_key(run.resolved, tuned_keys),
                            lineage=setting_key(run.resolved, drop={STEPS_KEY, *tuned_keys}))
        rows[key].runs.append(run)
    for row in rows.values():
        row.paper_ref = next((r.paper_ref for r in row.runs if r.paper_ref), {})
        row.finals = {metric: _finals(row.runs, metric) for metric in FINAL_METRICS}
        # the tuned keys that act on this row (optim.sgd.lr is unset, None, for a row without SGD)
        row.tuned = {k: v for k in tuned_keys if (v := row.runs[0].config.get(k)) is not None}
    base_steps = {}
    for fam in {row.family for row in rows.values()}:
        counts = Counter(row.steps for row in rows.values() if row.family == fam)
        base_steps[fam] = min(counts, key=lambda steps: (-counts[steps], steps))
    for row in rows.values():
        steps = base_steps[row.family]
        row.longer = row.steps > steps
        row.adamw = _find(rows.values(), row.family, ADAMW, steps)
        row.full_muon = _find(rows.values(), row.family, FULL_MUON, steps)
        _compare(row, row.adamw, row.full_muon)
    return list(rows.values())


def _compare(row: Row, adamw: Row | None, full: Row | None) -> None:
    """Δ, share of the Muon gain (with its interval: Fieller's, or a bootstrap with many seeds) and the
    t-tests of `row` against the references of its family."""
    for ref, tests in ((adamw, row.vs_adamw), (full, row.vs_muon)):
        if ref is None or ref is row:
            continue
        for metric in FINAL_METRICS:
            if (result := compare(row.finals[metric], ref.finals[metric])) is not None:
                tests[metric] = result
    if not (adamw and adamw.eval_loss and row.eval_loss):
        return
    row.delta_vs_adamw = row.eval_loss.mean - adamw.eval_loss.mean
    if full and full.eval_loss and full.eval_loss.mean != adamw.eval_loss.mean:
        row.share_recovered = (adamw.eval_loss.mean - row.eval_loss.mean) / (
            adamw.eval_loss.mean - full.eval_loss.mean)
        if row is not adamw and row is not full:
            row.share_ci95, row.share_ci_method = share_ci(adamw.finals[EVAL_LOSS], row.finals[EVAL_LOSS],
                                                           full.finals[EVAL_LOSS])


def _find(rows: Iterable[Row], family: str, routing: str, steps: int) -> Row | None:
    """The family's row with the given routing at the family's reference step count."""
    return next((row for row in rows
                 if row.family == family and row.routing == routing and row.steps == steps), None)
