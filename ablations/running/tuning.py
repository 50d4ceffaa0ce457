"""Tuning sweeps: each arm of a grid tuned on its own keys, then the grid's seeds at the chosen values.

An arm is a grid run without its seed (a routing, a base optimizer, a step budget...). A key of
`tune.keys` that does not act on an arm is not swept for it: optim.muon_lr without Muon or NorMuon,
optim.<name>.* without optimizer <name> (optim.sgd.lr for an arm with no SGD).

`tune.method`:
- `coordinate` (the default; Marin's "Fantastic Pretraining Optimizers"): one pass over the keys in
  the order of `tune.keys`. Each key is swept with the keys before it fixed at their chosen values
  and the keys after it at their defaults (optim.muon_lr: null is "the same as adamw_lr", so a grid
  listing optim.adamw_lr first starts on the tied setting); its best value is then fixed.
- `grid`: every combination of the keys' values.

Each point runs with every tuning seed and is ranked by the mean of its final `tune.metric` (default
final/eval_loss) over them; a diverged run counts as +inf. **Ties go to the smaller values** (key by
key in the order of `tune.keys`): the more conservative learning rate.

**Edges** (`tune.extend_edges`, default true): when a key's best value is the smallest or largest it
was tried at, the next value beyond it (at the ratio of the two values at that edge, 3 significant
digits) is tried too, up to MAX_EXTENSIONS times per key; a best still at an edge is reported.

**One computation, one run**: a point that trains exactly what an earlier point of the arm's sweep
trained (every other setting equal and every parameter at the same learning rate, ties resolved: e.g.
optim.muon_lr=3e-3 after optim.adamw_lr chose 3e-3, muon_lr's default being "adamw_lr") is not run
again; it is ranked by the earlier point's runs.

The sweep is a pure function of the run directories: which runs come next is recomputed from what has
finished, so an interrupted sweep resumes and two runners (or SLURM rounds) agree. Tuned runs are
named `<arm>_<key>-<value>..._s<seed>`; a tuning run at the chosen values whose seed is an evaluation
seed (only with `tune.reuse_tuning_seeds: true`) is that final run, trained once.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import statistics
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.running.grid import (
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
    run_config,
    setting_token,
)
from common.rundir import RunDir
from optim.registry import is_rate_key, keys_acting_on
from optim.routing import optimizers_used
from training.config import as_dict
from training.identity import flatten_config
from training.rates import config_rates

# Values added beyond a sweep's edge per key, at most: two steps of the sweep's own ratio (e.g. 3e-3 ->
# 1e-3 -> 3e-4 for a half-decade sweep) separate an optimum from a sweep that was just misplaced.
MAX_EXTENSIONS = 2
COORDINATE, GRID = "coordinate", "grid"


@dataclass(frozen=True)
class Trial:
    """One point of an arm's sweep: every tuned value it sets and the ranking loss of each tuning seed."""

    values: dict[str, Any]
    losses: list[float]  # +inf: the run diverged

    @property
    def loss(self) -> float:
        return statistics.fmean(self.losses)


@dataclass(frozen=True)
class Step:
    """One stage of an arm's sweep: the keys it varies (coordinate: one; grid: all), the values each was
    tried at (the sweep's, then any extensions), its trials and the best of them."""

    number: int  # 1-based: the order of the coordinate steps (tuning.csv's `pass`)
    keys: list[str]
    tried: dict[str, list[Any]]
    extensions: dict[str, int]
    trials: list[Trial]
    best: Trial

    def at_edge(self, key: str) -> bool:
        """Whether the best value of `key` is the smallest or largest it was tried at."""
        values = set(self.tried[key])
        return len(values) > 1 and self.best.values[key] in (min(values), max(values))


@dataclass(frozen=True)
class ArmTuning:
    """An arm's sweep and its outcome: the steps, the chosen values and the keys still at a sweep edge."""

    arm: str
    method: str
    steps: list[Step]
    n_seeds: int

    @property
    def keys(self) -> list[str]:
        return [k for step in self.steps for k in step.keys]

    @property
    def chosen(self) -> dict[str, Any]:
        return {k: step.best.values[k] for step in self.steps for k in step.keys}

    @property
    def edges(self) -> list[str]:
        return [k for step in self.steps for k in step.keys if step.at_edge(k)]

    def step_of(self, key: str) -> Step:
        return next(step for step in self.steps if key in step.keys)

    def warnings(self) -> list[str]:
        """'Widen the sweep' warnings for the keys whose best value is still at an edge of those tried."""
        lines = []
        for key in self.edges:
            step = self.step_of(key)
            extended = step.extensions[key]
            after = f" after {extended} extension{'s' * (extended > 1)}" if extended else ""
            lines.append(f"{self.arm}: best {key}={self.chosen[key]} is at the edge of its sweep "
                         f"{sorted(set(step.tried[key]))}{after}; widen the sweep")
        return lines


@dataclass(frozen=True)
class Sweep:
    """A grid's sweep so far: every run it has planned, those not finished, each arm's outcome (None for an
    arm with unfinished runs) and, once none is pending, every arm's outcome."""

    runs: list[Run]
    pending: list[Run]
    by_arm: list[ArmTuning | None]

    @property
    def tunings(self) -> list[ArmTuning] | None:
        return None if self.pending else [t for t in self.by_arm if t is not None]


def acts_on(key: str, grid: Grid, arm: Run) -> bool:
    """Whether a tuned key changes this arm: an optimizer's own keys (optim.registry: optim.muon_lr,
    optim.<name>.*, ...) only where the arm uses that optimizer."""
    config = {**DEFAULTS, **grid.base_config, **arm.overrides}
    return keys_acting_on(optimizers_used(config[MUON_KEY], config[BASE_KEY], config[ROUTE_KEY]))(key)


def arm_of(run: Run, tuned: tuple[str, ...] | list[str] = ()) -> Run:
    """The arm a run belongs to, as a template: named by its group, without its seed and without the
    `tuned` values a sweep run set."""
    drop = {SEED_KEY, *tuned}
    return dataclasses.replace(run, name=run.group, seed=None, arm=None,
                               overrides={k: v for k, v in run.overrides.items() if k not in drop},
                               labels={k: v for k, v in run.labels.items() if k != "seed"})


def arms(grid: Grid) -> list[Run]:
    """One template run per arm (the first of its seeds), in the grid's order."""
    seen: dict[str, Run] = {}
    for run in grid.runs:
        seen.setdefault(run.group, arm_of(run))
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


def beyond(tried: list[Any], best: Any) -> Any | None:
    """The next value past the edge `best` of the values tried, at the ratio of the two values at that
    edge (3 significant digits; an int stays an int); None for a value that is not a positive number."""
    values = sorted(set(tried))
    if len(values) < 2 or isinstance(best, bool) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values):
        return None
    nxt = values[0] ** 2 / values[1] if best == values[0] else values[-1] ** 2 / values[-2]
    nxt = float(f"{nxt:.3g}")
    if all(isinstance(v, int) for v in values):
        nxt = round(nxt)
    return None if nxt in values or nxt <= 0 else nxt


LossOf = Callable[[Run], float | None]  # a run's ranking loss; None while it is unfinished
# What a point of an arm's sweep (its tuned values) trains: equal for two points that are the same run.
Computation = Callable[[dict[str, Any]], Hashable]


def computation(base: str | None, run: Run) -> Hashable:
    """What a run trains: its config (base file and overrides) with the learning-rate keys replaced by
    each parameter's resolved rate (optim.build.parameter_rates)."""
    return _computation(base, json.dumps(run.overrides, sort_keys=True))


@functools.lru_cache(maxsize=4096)  # a sweep is replayed after every run: each point is resolved once
def _computation(base: str | None, overrides: str) -> Hashable:
    cfg = run_config(base, Run(name="", overrides=json.loads(overrides)))
    settings = sorted((k, repr(v)) for k, v in flatten_config(as_dict(cfg)).items() if not is_rate_key(k))
    return tuple(settings), tuple(sorted(config_rates(cfg).items()))


def tune_arm(arm: Run, keys: list[str], tune: Tune, loss_of: LossOf,
             computation_of: Computation = lambda values: repr(sorted(values.items()))
             ) -> tuple[list[Run], ArmTuning | None]:
    """An arm's sweep as far as its finished runs take it: (every run planned so far, the outcome or None
    while a planned run is unfinished). A point whose `computation_of` equals an earlier point's is
    ranked by that point's runs (the default: only by equal values)."""
    stages = [[k] for k in keys] if tune.method == COORDINATE else [list(keys)]
    chosen: dict[str, Any] = {}
    planned: list[Run] = []
    steps: list[Step] = []
    first_point: dict[Hashable, dict[str, Any]] = {}  # each computation's first point: the one run
    for number, step_keys in enumerate(stages, start=1):
        tried = {k: list(tune.keys[k]) for k in step_keys}
        extensions = dict.fromkeys(step_keys, 0)
        while True:
            points = [{**chosen, **dict(zip(step_keys, combo, strict=True))}
                      for combo in itertools.product(*(tried[k] for k in step_keys))]
            runs = [[at_values(arm, first_point.setdefault(computation_of(point), point), seed)
                     for seed in tune.seeds] for point in points]
            planned += [r for seed_runs in runs for r in seed_runs if r not in planned]
            losses = [[loss_of(r) for r in seed_runs] for seed_runs in runs]
            if any(loss is None for point_losses in losses for loss in point_losses):
                return planned, None
            trials = [Trial(point, point_losses) for point, point_losses in zip(points, losses, strict=True)]
            # min over (loss, values): equal losses fall to the smaller values, key by key
            best = min(trials, key=lambda t: (t.loss, [t.values[k] for k in step_keys]))
            if math.isinf(best.loss):
                raise GridError(f"arm {arm.group} diverged at every value of its sweep "
                                f"({', '.join(step_keys)}); add smaller values to tune.keys")
            step = Step(number, step_keys, tried, extensions, trials, best)
            grow = {k: beyond(tried[k], best.values[k]) for k in step_keys
                    if tune.extend_edges and extensions[k] < MAX_EXTENSIONS and step.at_edge(k)}
            grow = {k: v for k, v in grow.items() if v is not None}
            if not grow:
                break
            tried = {k: tried[k] + ([grow[k]] if k in grow else []) for k in step_keys}
            extensions = {k: extensions[k] + (k in grow) for k in step_keys}
        chosen.update({k: best.values[k] for k in step_keys})
        steps.append(step)
    return planned, ArmTuning(arm.group, tune.method, steps, len(tune.seeds))


def sweep_of(arm_keys: list[tuple[Run, list[str]]], tune: Tune, runs_dir: Path, base: str | None) -> Sweep:
    """The sweep of these arms (each with its swept keys) from the run directories under `runs_dir`, for a
    grid with this base config file (Grid.base)."""
    finished: dict[str, float] = {}  # each finished run's directory is read once per replay

    def loss_of(run: Run) -> float | None:
        if run.name not in finished:
            loss = ranking_loss(RunDir(runs_dir / run.name), tune.metric)
            if loss is None:
                return None
            finished[run.name] = loss
        return finished[run.name]

    runs, tunings = [], []
    for arm, keys in arm_keys:
        planned, tuning = tune_arm(arm, keys, tune, loss_of,
                                   lambda values, arm=arm: computation(base, at_values(arm, values, None)))
        runs += planned
        tunings.append(tuning)
    pending = [r for r in runs if loss_of(r) is None]
    return Sweep(runs, pending, tunings)


def grid_sweep(grid: Grid, runs_dir: Path) -> Sweep:
    """The grid's sweep from its run directories under `runs_dir`."""
    assert grid.tune is not None
    return sweep_of([(arm, swept_keys(grid, arm)) for arm in arms(grid)], grid.tune, runs_dir, grid.base)


def final_runs(grid: Grid, chosen: dict[str, dict[str, Any]]) -> list[Run]:
    """The grid's runs (all its seeds) at each arm's chosen values, for the arms in `chosen`."""
    return [at_values(run, chosen[run.group], run.seed) for run in grid.runs if run.group in chosen]


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


def profile(tuning: ArmTuning, key: str) -> list[tuple[Any, float]]:
    """Final loss against one swept key's values, in its step: at each value, the best over the other
    keys varied with it (grid)."""
    best: dict[Any, float] = {}
    for trial in tuning.step_of(key).trials:
        value = trial.values[key]
        best[value] = min(best.get(value, math.inf), trial.loss)
    return sorted(best.items())
