"""Tuning sweeps: every arm of a grid at every value of its `tune:` keys, then the grid at the best.

An arm is a grid run without its seed (a routing, a base optimizer, a step budget...). The sweep
trains each arm at every combination of the tuned keys' values with the tuning seeds; a key that
does not act on an arm is not swept for it: optim.muon_lr without Muon or NorMuon, optim.<name>.*
without optimizer <name> (optim.sgd.lr for an arm with no SGD). The chosen values are the
combination with the lowest final loss (`tune.metric`, default final/eval_loss), averaged over the
tuning seeds; a run that diverged
(non-finite loss) counts as +inf. **Ties go to the smaller values** (compared key by key in the
order of `tune.keys`): the more conservative learning rate. The grid's seeds then run at each arm's
chosen values. Tuned runs are named `<arm>_<key>-<value>..._s<seed>`, so a tuning run whose values
were chosen and whose seed is among the grid's seeds is the same run as that final run, and is
trained once.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.grid import (
    BASE_KEY,
    DEFAULTS,
    MUON_KEY,
    ROUTE_KEY,
    SEED_KEY,
    Grid,
    GridError,
    Run,
    Tune,
    join_name,
    setting_token,
)
from common.rundir import RunDir
from optim.routing import MUON_FAMILY, OPTIMIZERS, optimizers_used

# Keys that act only on parameters routed to Muon or NorMuon: not swept for arms without them.
MUON_ONLY_KEYS = ("optim.muon_lr",)


@dataclass(frozen=True)
class Trial:
    """One point of an arm's sweep: the values tried and the ranking loss of each tuning seed."""

    values: dict[str, Any]
    losses: list[float]  # +inf: the run diverged

    @property
    def loss(self) -> float:
        return statistics.fmean(self.losses)


@dataclass(frozen=True)
class ArmTuning:
    """An arm's sweep and its outcome: the chosen values, and the keys whose best is at a sweep edge."""

    arm: str
    keys: list[str]
    trials: list[Trial]
    chosen: dict[str, Any]
    edges: list[str]

    def warnings(self, sweep: dict[str, list[Any]]) -> list[str]:
        """'Widen the sweep' warnings for the keys whose best value is the smallest or largest tried."""
        return [f"{self.arm}: best {key}={self.chosen[key]} is at the edge of its sweep "
                f"{sorted(sweep[key])}; widen the sweep" for key in self.edges]


def acts_on(key: str, grid: Grid, arm: Run) -> bool:
    """Whether a tuned key changes this arm: not optim.muon_lr without Muon/NorMuon, not
    optim.<optimizer>.* without that optimizer."""
    config = {**DEFAULTS, **grid.base_config, **arm.overrides}
    used = optimizers_used(config[MUON_KEY], config[BASE_KEY], config[ROUTE_KEY])
    if key in MUON_ONLY_KEYS:
        return bool(used & set(MUON_FAMILY))
    section = key.split(".")
    if len(section) > 2 and section[0] == "optim" and section[1] in OPTIMIZERS:
        return section[1] in used
    return True


def arms(grid: Grid) -> list[Run]:
    """One template run per arm (the first of its seeds), in the grid's order."""
    seen: dict[str, Run] = {}
    for run in grid.runs:
        seen.setdefault(run.group, run)
    return list(seen.values())


def swept_keys(grid: Grid, arm: Run) -> list[str]:
    """The tuned keys that act on this arm, in the order of tune.keys."""
    assert grid.tune is not None
    return [k for k in grid.tune.keys if acts_on(k, grid, arm)]


def at_values(arm: Run, values: dict[str, Any], seed: int | None) -> Run:
    """The arm's run at these tuned values and seed, named `<arm>_<key>-<value>..._s<seed>`."""
    tokens = [arm.group, *(setting_token(k, v) for k, v in values.items())]
    overrides = {**arm.overrides, **values}
    labels = dict(arm.labels)
    if seed is not None:
        tokens.append(f"s{seed}")
        overrides[SEED_KEY] = seed
        labels["seed"] = str(seed)
    return dataclasses.replace(arm, name=join_name(tokens), overrides=overrides, seed=seed, labels=labels,
                               arm=arm.group)


def _combinations(grid: Grid, arm: Run) -> list[dict[str, Any]]:
    keys = swept_keys(grid, arm)
    sweeps = [grid.tune.keys[k] for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*sweeps)]


def tuning_runs(grid: Grid) -> list[Run]:
    """Every arm at every combination of its swept values, with every tuning seed."""
    assert grid.tune is not None
    return [at_values(arm, values, seed) for arm in arms(grid) for values in _combinations(grid, arm)
            for seed in grid.tune.seeds]


def final_runs(grid: Grid, chosen: dict[str, dict[str, Any]]) -> list[Run]:
    """The grid's runs (all its seeds) at each arm's chosen values."""
    return [at_values(run, chosen[run.group], run.seed) for run in grid.runs]


def ranking_loss(run: RunDir, metric: str) -> float | None:
    """What a sweep ranks a run by: its final `metric` (tune.metric), +inf if it diverged, None if
    unfinished. A finished run without the metric is an error: the sweep could not rank it."""
    status = run.status()
    if status == "diverged":
        return math.inf
    if status != "complete":
        return None
    loss = run.read_summary().get(metric)
    if loss is None:
        raise GridError(f"{run.summary} has no {metric} to rank the tuning sweep by; set "
                        "tune.metric to a loss the runs log (final/train_loss for data without a "
                        "validation split, such as bios)")
    return float(loss) if math.isfinite(loss) else math.inf


def select(tuning: list[Run], tune: Tune, runs_dir: Path) -> list[ArmTuning] | None:
    """Each arm's sweep and chosen values, from its tuning runs' directories under `runs_dir`, ranked
    by `ranking_loss`. None while any tuning run is unfinished."""
    sweep = tune.keys
    by_arm: dict[str, dict[tuple, list[float]]] = {}
    keys_of: dict[str, list[str]] = {}
    for run in tuning:
        loss = ranking_loss(RunDir(runs_dir / run.name), tune.metric)
        if loss is None:
            return None
        keys = keys_of.setdefault(run.group, [k for k in sweep if k in run.overrides])
        values = tuple(run.overrides[k] for k in keys)
        by_arm.setdefault(run.group, {}).setdefault(values, []).append(float(loss))
    tunings = []
    for arm, points in by_arm.items():
        keys = keys_of[arm]
        trials = [Trial(dict(zip(keys, values, strict=True)), losses) for values, losses in points.items()]
        # min over (loss, values): equal losses fall to the smaller values, key by key
        best = min(trials, key=lambda t: (t.loss, [t.values[k] for k in keys]))
        if math.isinf(best.loss):
            raise GridError(f"arm {arm} diverged at every value of its sweep ({', '.join(keys)}); "
                            "add smaller values to tune.keys")
        edges = [k for k in keys
                 if len(set(sweep[k])) > 1 and best.values[k] in (min(sweep[k]), max(sweep[k]))]
        tunings.append(ArmTuning(arm, keys, trials, dict(best.values), edges))
    return tunings


def profile(tuning: ArmTuning, key: str) -> list[tuple[Any, float]]:
    """Final loss against one swept key's values: at each value, the best over the other keys."""
    best: dict[Any, float] = {}
    for trial in tuning.trials:
        value = trial.values[key]
        best[value] = min(best.get(value, math.inf), trial.loss)
    return sorted(best.items())
