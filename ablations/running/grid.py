"""Grid files: a base config plus axes and/or explicit runs, expanded into named runs.

A grid YAML has these top-level keys (all dotted config keys, as on the train.py command line)::

    name: smoke                      # optional, default: the file's stem
    description: ...                 # optional free text, copied into the report
    base: configs/smoke.yaml         # optional, relative to the repository root
    overrides: {optim.adamw_lr: 0.01}  # optional, applied to every run
    runs:                            # optional explicit list; each entry is a dict of overrides
      - {optim.muon: none, label: adamw, paper_ref: {eval_loss: 3.9242}}
    axes:                            # optional; product with `runs`
      optim.adamw_lr: [0.01, 0.003]  # a dotted key: its values
      ffn:                           # no dot: a bundle; each value sets several keys, named by its label
        - {label: gelu, model.ffn_type: gelu}
        - {label: swiglu, model.ffn_type: swiglu, model.ffn_hidden: 2048}
    seeds: [0, 1, 2]                 # optional; an axis on train.seed
    exclude:                         # optional; drop runs matching every key of an entry
      - {optim.muon: ffn_gate, model.ffn_type: gelu}
    analysis: {iso_loss: [4.9, 4.7]} # optional; pre-registered iso-loss targets of the report
    budgets: [1, 2, 4]               # optional; every run also at 2x and 4x train.steps (named _x2, _x4)
    cooldowns: {at: [100, 200], length: 0.2}  # optional; annealed branches of every final run (wsd)
    tune:                            # optional; tune every arm (run without its seed) first
      keys: {optim.adamw_lr: [3e-3, 1e-2, 3e-2], optim.muon_lr: [3e-3, 1e-2]}
      seeds: [100]                   # disjoint from `seeds` unless reuse_tuning_seeds: true
      method: coordinate             # optional; one key at a time (default) or grid (the product)
      extend_edges: true             # optional; try beyond a best value at a sweep edge (default)
      metric: final/eval_loss        # optional; the run summary's loss to minimize

Each run is named from the settings that distinguish it (e.g. ``muon-vo+ffn_swiglu_s0``).
docs/ablations.md describes the format in full.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ablations.metric_names import DEFAULT_MARGINS, EVAL_LOSS
from ablations.running.cooldowns import Cooldowns
from common.errors import UserError
from optim.config import OptimConfig
from optim.routing import routing_label
from training.config import RunConfig, TrainSection, load_config
from training.identity import flatten_config

REPO_ROOT = Path(__file__).resolve().parents[2]
GRIDS_DIR = REPO_ROOT / "ablations" / "grids"
TOP_LEVEL_KEYS = ("name", "description", "base", "overrides", "runs", "axes", "seeds", "exclude", "tune",
                  "equivalence_margin", "analysis", "budgets", "cooldowns")
ANALYSIS_KEYS = ("iso_loss",)
RUN_META_KEYS = ("label", "paper_ref")
# What a paper_ref may name: the final eval loss, or the QA first-token accuracy on the rarest group.
PAPER_REF_KEYS = ("eval_loss", "qa_tail_fta")
# Keys the runner sets itself for every run; a grid setting them would be silently overwritten.
RUNNER_KEYS = ("run.dir", "run.name", "train.resume", "logging.wandb_group", "logging.wandb_tags")
SEED_KEY = "train.seed"
MUON_KEY, BASE_KEY, ROUTE_KEY, FFN_KEY = "optim.muon", "optim.base", "optim.route", "model.ffn_type"
ROUTING_KEYS = (MUON_KEY, BASE_KEY, ROUTE_KEY)
# train.py's defaults (the schema's) for the keys that name a run.
DEFAULTS = {key: getattr(OptimConfig(), key.removeprefix("optim.")) for key in ROUTING_KEYS}
STEPS_KEY, EVAL_EVERY_KEY = "train.steps", "train.eval_every"
_MISSING = object()


class GridError(UserError):
    """A grid file that cannot be expanded; the message says what to fix."""


@dataclass(frozen=True)
class Run:
    """One training run of a grid: its name and the dotted overrides on top of the base config."""

    name: str
    overrides: dict[str, Any]
    seed: int | None = None
    paper_ref: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    arm: str | None = None  # set on tuned runs: the grid run (without seed) whose values they try
    branch_of: str | None = None  # a cooldown branch: the final run it branches from (cooldowns.py)
    branch_at: int | None = None  # ... at this step of it

    @property
    def group(self) -> str:
        """The arm of a tuned run, else the run's name without its seed token: seeds share it."""
        if self.arm is not None:
            return self.arm
        return self.name if self.seed is None else self.name.removesuffix(f"_s{self.seed}")


@dataclass(frozen=True)
class Tune:
    """A grid's `tune:` section: each arm is tuned on `keys` with `seeds` first (one key at a time, or
    their full product), and the grid's own seeds then run at its chosen values (tuning.py)."""

    keys: dict[str, list[Any]]
    seeds: list[int]
    metric: str = EVAL_LOSS  # the run summary's key the sweep minimizes
    # Tuning seeds among the grid's evaluation seeds are an error unless this is set: the run the
    # choice was made on would then be counted in the result it chose (a winner's-curse bias).
    reuse_tuning_seeds: bool = False
    method: str = "coordinate"  # or "grid": the full product of the keys' values (tuning.py)
    extend_edges: bool = True  # a best value at a sweep edge is tried beyond it (tuning.py)


@dataclass(frozen=True)
class Grid:
    """An expanded grid: where it came from, its base config and its runs."""

    name: str
    path: Path
    base: str | None
    base_config: dict[str, Any]
    description: str
    runs: list[Run]
    tune: Tune | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # `run GRID key=value`, as given
    # metric -> equivalence margin of the report's TOST, over metric_names.DEFAULT_MARGINS
    equivalence_margin: dict[str, float] = dataclasses.field(default_factory=dict)
    # the report's pre-registered analyses: {"iso_loss": [target losses]}, declared before any result
    analysis: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    cooldowns: Cooldowns | None = None  # annealed branches of every final run (cooldowns.py)


def label_of(config: dict[str, Any]) -> str:
    """The routing label (optim.routing.routing_label) of a flat config, train.py's defaults filled in."""
    merged = {**DEFAULTS, **config}
    return routing_label(merged[MUON_KEY], merged[BASE_KEY], merged[ROUTE_KEY])


def resolve_grid_path(arg: str | Path) -> Path:
    """A grid file path, or the bare name of a shipped grid ('smoke' -> ablations/grids/smoke.yaml)."""
    path = Path(arg)
    if path.is_file():
        return path
    shipped = GRIDS_DIR / f"{arg}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in GRIDS_DIR.glob("*.yaml")))
    raise GridError(f"grid file {arg} not found; give a YAML path or one of the shipped grids: {names}")


def load_base(base: str | None) -> dict[str, Any]:
    """The base config file (relative to the repository root) flattened to dotted keys."""
    if base is None:
        return {}
    path = REPO_ROOT / base
    if not path.is_file():
        raise GridError(f"base config {base} not found (paths are relative to the repository root "
                        f"{REPO_ROOT})")
    return flatten_config(OmegaConf.to_container(OmegaConf.load(path), resolve=False))


def _token_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_token_value(v) for v in value)
    return str(value)


def _name_tokens(varying: dict[str, Any], merged: dict[str, Any]) -> list[str]:
    """Name tokens for the varying settings: routing first, then FFN type, then the rest in order."""
    tokens = []
    if any(k in varying for k in ROUTING_KEYS):
        tokens.append(label_of(merged))
    if FFN_KEY in varying:
        tokens.append(_token_value(varying[FFN_KEY]))
    for key, value in varying.items():
        if key not in (*ROUTING_KEYS, FFN_KEY, SEED_KEY):
            tokens.append(setting_token(key, value))
    return tokens


def setting_token(key: str, value: Any) -> str:
    """A setting as a run-name token: the key without its section and the value ('adamw_lr-0.003',
    'sgd.lr-0.1' for optim.sgd.lr)."""
    return f"{key.split('.', 1)[-1]}-{_token_value(value)}"


def join_name(tokens: list[str]) -> str:
    """A run name from its tokens; run names become directory and wandb names, so keep them shell-
    and filesystem-safe."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", "_".join(tokens)).strip("-")


def _check_mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{what} must be a mapping of dotted config keys to values, "
                        f"got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str) or "." not in key:
            raise GridError(f"{what}: key {key!r} is not a dotted config key such as optim.muon")
        if key in RUNNER_KEYS:
            raise GridError(f"{what}: {key} is set by the runner for every run; remove it from the grid")
    return value


@dataclass(frozen=True)
class _Choice:
    """One value of an axis: its overrides and, for a bundle axis, its label (its name token)."""

    overrides: dict[str, Any]
    label: str | None = None


def _axes(raw: Any, seeds: Any) -> dict[str, list[_Choice]]:
    """Parse `axes:` (and `seeds:`). An axis named by a dotted key lists that key's values; an axis
    named without a dot (a bundle) lists mappings of several dotted keys, each with a `label`."""
    if raw is not None and not isinstance(raw, dict):
        raise GridError("`axes` must be a mapping: dotted config key -> list of values")
    axes: dict[str, list[_Choice]] = {}
    for key, values in (raw or {}).items():
        if not isinstance(values, list) or not values:
            raise GridError(f"axes.{key} must be a non-empty list of values")
        if "." in key:
            _check_mapping({key: None}, "axes")
            axes[key] = [_Choice({key: v}) for v in values]
            continue
        axes[key] = []
        for i, value in enumerate(values):
            if not isinstance(value, dict) or "label" not in value:
                raise GridError(f"axes.{key}[{i}]: an axis named without a dot bundles settings; each of its "
                                "values must be a mapping with a `label` and dotted config keys")
            settings = {k: v for k, v in value.items() if k != "label"}
            axes[key].append(_Choice(_check_mapping(settings, f"axes.{key}[{i}]"), str(value["label"])))
    if seeds is not None:
        axes["seeds"] = [_Choice({SEED_KEY: s}) for s in _seed_list(seeds, "seeds")]
    owners = Counter(k for choices in axes.values() for k in {k for c in choices for k in c.overrides})
    twice = sorted(k for k, n in owners.items() if n > 1)
    if twice:
        raise GridError(f"{', '.join(twice)} set by more than one axis (or by an axis and `seeds`); keep one")
    return axes


def _paper_ref(value: Any, where: str, bundle_labels: set[str]) -> dict[str | None, dict[str, float]]:
    """`paper_ref` as {None: ref} (every run of the entry) or {bundle label: ref} (runs with that label)."""
    def ref(mapping: Any) -> dict[str, float] | None:
        ok = isinstance(mapping, dict) and set(mapping) <= set(PAPER_REF_KEYS)
        return {k: float(v) for k, v in mapping.items()} if ok else None

    if value is None:
        return {}
    if ref(value) is not None:
        return {None: ref(value)}
    if isinstance(value, dict) and set(value) <= bundle_labels and all(ref(v) for v in value.values()):
        return {label: ref(v) for label, v in value.items()}
    known = ", ".join(sorted(bundle_labels)) or "none in this grid"
    raise GridError(f"{where}: paper_ref must map {' / '.join(PAPER_REF_KEYS)} to numbers, or labels of a "
                    f"bundle axis ({known}) to such mappings")


def _explicit_runs(raw: Any, bundle_labels: set[str]) -> list[tuple[dict[str, Any], str | None, dict]]:
    """Parse `runs:` into (overrides, label, paper_ref) triples."""
    if raw is None:
        return [({}, None, {})]
    if not isinstance(raw, list):
        raise GridError("`runs` must be a list of mappings (one per run)")
    parsed = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise GridError(f"runs[{i}] must be a mapping of dotted config keys, got {entry!r}")
        overrides = {k: v for k, v in entry.items() if k not in RUN_META_KEYS}
        label = entry.get("label")
        parsed.append((_check_mapping(overrides, f"runs[{i}]"), None if label is None else str(label),
                       _paper_ref(entry.get("paper_ref"), f"runs[{i}]", bundle_labels)))
    return parsed


def _exclude(raw: Any) -> list[dict[str, Any]]:
    """Parse `exclude:`, a list of partial settings; a run matching every key of one is dropped."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise GridError("`exclude` must be a list of mappings of dotted config keys to values")
    entries = [_check_mapping(entry, f"exclude[{i}]") for i, entry in enumerate(raw)]
    if not all(entries):
        raise GridError("`exclude` entries must be non-empty mappings, e.g. {optim.muon: ffn_gate, "
                        "model.ffn_type: gelu}")
    return entries


def _seed_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) for s in value):
        raise GridError(f"`{where}` must be a non-empty list of integers, e.g. {where}: [0, 1, 2]")
    return value


def _tune(raw: Any, runs: list[Run]) -> Tune | None:
    """Parse `tune:`; a tuned key may not also be set by the grid's runs (the sweep would override it),
    and the tuning seeds must be disjoint from the grid's unless `reuse_tuning_seeds: true`."""
    if raw is None:
        return None
    allowed = {"keys", "seeds", "metric", "reuse_tuning_seeds", "method", "extend_edges"}
    if not isinstance(raw, dict) or not {"keys", "seeds"} <= set(raw) <= allowed:
        raise GridError("`tune` must be a mapping with `keys` (dotted key -> list of values), `seeds` and "
                        "optionally `metric` (a key of the runs' summary to minimize, default "
                        "final/eval_loss), `method` (coordinate or grid), `extend_edges` and "
                        "`reuse_tuning_seeds`, e.g. tune: {keys: {optim.adamw_lr: [3e-3, 1e-2]}, "
                        "seeds: [100]}")
    keys = _check_mapping(raw["keys"], "tune.keys")
    if not keys:
        raise GridError("tune.keys is empty; name at least one key to sweep, e.g. optim.adamw_lr")
    for key, values in keys.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"tune.keys.{key} must be a non-empty list of values")
        if key == SEED_KEY:
            raise GridError(f"tune.keys: {SEED_KEY} is not a hyperparameter; list seeds in tune.seeds")
    for run in runs:
        clash = sorted(set(keys) & set(run.overrides))
        if clash:
            raise GridError(f"{', '.join(clash)} is both tuned (tune.keys) and set for run {run.name} "
                            "(runs/axes/overrides); remove one")
    metric = str(raw.get("metric", Tune.metric))
    if not metric.startswith(("final/", "eval/", "qa/")) or "loss" not in metric:
        raise GridError(f"tune.metric={metric} is not a final loss of the runs' summary; use final/eval_loss "
                        "(default) or final/train_loss (data without a validation split, e.g. bios)")
    seeds, reuse = _seed_list(raw["seeds"], "tune.seeds"), raw.get("reuse_tuning_seeds", False)
    method, extend = raw.get("method", Tune.method), raw.get("extend_edges", Tune.extend_edges)
    for key, value in (("reuse_tuning_seeds", reuse), ("extend_edges", extend)):
        if not isinstance(value, bool):
            raise GridError(f"tune.{key} must be true or false, got {value!r}")
    if method not in ("coordinate", "grid"):
        raise GridError(f"tune.method={method!r} is unknown; use coordinate (one key at a time, the default) "
                        "or grid (every combination)")
    shared = sorted(set(seeds) & {r.seed for r in runs if r.seed is not None})
    if shared and not reuse:
        raise GridError(f"tune.seeds {shared} are also evaluation seeds of the grid: the runs the rates are "
                        "chosen on would be counted in the results; use tuning seeds outside the grid's "
                        "`seeds` (e.g. tune.seeds: [100]) or set tune.reuse_tuning_seeds: true")
    return Tune(keys={k: list(v) for k, v in keys.items()}, seeds=seeds, metric=metric,
                reuse_tuning_seeds=reuse, method=method, extend_edges=extend)


def _margins(raw: Any, path: Path) -> dict[str, float]:
    """`equivalence_margin:` a mapping of final metrics to positive numbers (in the metric's units)."""
    if raw is None:
        return {}
    bad = not isinstance(raw, dict) or any(
        k not in DEFAULT_MARGINS or isinstance(v, bool) or not isinstance(v, int | float) or v <= 0
        for k, v in raw.items())
    if bad:
        raise GridError(f"{path}: equivalence_margin must map metrics among {', '.join(DEFAULT_MARGINS)} to "
                        f"positive numbers (e.g. final/eval_loss: 0.02), got {raw!r}")
    return {k: float(v) for k, v in raw.items()}


def _analysis(raw: Any, path: Path) -> dict[str, list[float]]:
    """`analysis:` the report's pre-registered reads: `iso_loss`, a list of target losses."""
    if raw is None:
        return {}
    def positive(x: Any) -> bool:
        return not isinstance(x, bool) and isinstance(x, int | float) and x > 0

    bad = not isinstance(raw, dict) or set(raw) - set(ANALYSIS_KEYS) or any(
        not isinstance(v, list) or not v or not all(map(positive, v)) for v in raw.values())
    if bad:
        raise GridError(f"{path}: analysis must map {', '.join(ANALYSIS_KEYS)} to a non-empty list of "
                        f"positive target losses, e.g. analysis: {{iso_loss: [4.9, 4.7]}}, got {raw!r}")
    return {k: [float(x) for x in v] for k, v in raw.items()}


def _budgets(raw: Any, runs: list[Run], base: dict[str, Any], path: Path) -> list[Run]:
    """`budgets:` every run at each multiple of its train.steps, with its whole schedule; a multiple
    other than 1 is named `_x<b>` before the seed."""
    if raw is None:
        return runs
    if not isinstance(raw, list) or not raw or len(set(raw)) < len(raw) or any(
            isinstance(b, bool) or not isinstance(b, int | float) or b <= 0 for b in raw):
        raise GridError(f"{path}: budgets must be a list of distinct positive multiples of train.steps, "
                        f"e.g. budgets: [1, 2, 4], got {raw!r}")
    out = []
    for run in runs:
        steps = {**base, **run.overrides}.get(STEPS_KEY, TrainSection.steps)
        for b in raw:
            if b == 1:
                out.append(run)
                continue
            if steps * b != int(steps * b):
                raise GridError(f"{path}: budget {b} x train.steps={steps} is not a whole number of steps")
            tokens = [run.group, f"x{b:g}", *([] if run.seed is None else [f"s{run.seed}"])]
            out.append(dataclasses.replace(run, name=join_name(tokens),
                                           overrides={**run.overrides, STEPS_KEY: int(steps * b)}))
    return out


def resolved(base: dict[str, Any], run: Run) -> dict[str, Any]:
    """A run's flat config with train.py's defaults filled in."""
    return {**flatten_config(dataclasses.asdict(RunConfig())), **base, **run.overrides}


def _cooldowns(raw: Any, runs: list[Run], base: dict[str, Any], path: Path) -> Cooldowns | None:
    """`cooldowns: {at: [steps], length: F}`, checked against every run it branches."""
    if raw is None:
        return None
    ok = (isinstance(raw, dict) and set(raw) == {"at", "length"} and isinstance(raw["at"], list)
          and raw["at"] and all(isinstance(a, int) and not isinstance(a, bool) and a > 0 for a in raw["at"])
          and isinstance(raw["length"], int | float) and 0 < raw["length"] < 1)
    if not ok:
        raise GridError(f"{path}: cooldowns must be {{at: [positive steps], length: a fraction in (0, 1)}}, "
                        f"e.g. cooldowns: {{at: [100, 200], length: 0.2}}, got {raw!r}")
    cooldowns = Cooldowns(sorted(set(raw["at"])), float(raw["length"]))
    for run in runs:
        if (problem := cooldowns.problem(resolved(base, run))) is not None:
            raise GridError(f"{path}: run {run.name}: {problem}")
    return cooldowns


def branch_runs(grid: Grid, finals: list[Run]) -> list[Run]:
    """Each final run's cooldown branches, named `<run>_cd<at>`."""
    if grid.cooldowns is None:
        return []
    return [dataclasses.replace(run, name=join_name([run.name, f"cd{at}"]),
                                overrides={**run.overrides, **grid.cooldowns.overrides(at)},
                                branch_of=run.name, branch_at=at)
            for run in finals for at in grid.cooldowns.at]


def expand(spec: dict[str, Any], path: Path) -> Grid:
    """Expand a parsed grid mapping into its runs (explicit runs x product of the axes)."""
    unknown = sorted(set(spec) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise GridError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; "
                        f"valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    if spec.get("runs") is None and spec.get("axes") is None and spec.get("seeds") is None:
        raise GridError(f"{path}: the grid has no runs; add `runs:` and/or `axes:`")
    name = join_name([str(spec.get("name") or path.stem)])
    base = spec.get("base")
    base_flat = load_base(base)
    common = _check_mapping(spec.get("overrides"), "overrides")
    axes = _axes(spec.get("axes"), spec.get("seeds"))
    exclude = _exclude(spec.get("exclude"))
    excluded = [0] * len(exclude)  # runs each exclude entry dropped: one that drops none is a typo
    axis_keys = {k for choices in axes.values() for c in choices for k in c.overrides}
    bundle_labels = {c.label for choices in axes.values() for c in choices if c.label}
    runs = []
    for entry, label, refs in _explicit_runs(spec.get("runs"), bundle_labels):
        clash = sorted(set(entry) & axis_keys)
        if clash:
            raise GridError(f"{path}: {', '.join(clash)} set both in a run entry and by an axis; keep one")
        for combo in itertools.product(*axes.values()):
            from_axes = {k: v for c in combo for k, v in c.overrides.items()}
            scalar = {k: v for c in combo if c.label is None for k, v in c.overrides.items()}
            bundles = [c.label for c in combo if c.label]
            overrides = {**common, **entry, **from_axes}
            hits = [i for i, ex in enumerate(exclude) if all(overrides.get(k, _MISSING) == v
                                                              for k, v in ex.items())]
            for i in hits:
                excluded[i] += 1
            if hits:
                continue
            merged = {**DEFAULTS, **base_flat, **overrides}
            tokens = [label, *_name_tokens(scalar, merged)] if label else _name_tokens(
                {**entry, **scalar}, merged)
            seed = from_axes.get(SEED_KEY)
            tokens += bundles + ([] if seed is None else [f"s{seed}"])
            labels = {"routing": label_of(merged),
                      "ffn_type": str(merged.get(FFN_KEY) or "preset")}
            if seed is not None:
                labels["seed"] = str(seed)
            paper_ref = next((refs[b] for b in bundles if b in refs), refs.get(None, {}))
            runs.append(Run(name=join_name(tokens) or "base",
                            overrides=overrides,
                            seed=seed, paper_ref=paper_ref, labels=labels))
    runs = _budgets(spec.get("budgets"), runs, base_flat, path)
    unused = [exclude[i] for i, n in enumerate(excluded) if n == 0]
    if unused:
        raise GridError(f"{path}: exclude entry {unused[0]} matches no run; check its keys and values")
    if not runs:
        raise GridError(f"{path}: the grid expands to no runs")
    duplicates = sorted(n for n, c in Counter(r.name for r in runs).items() if c > 1)
    if duplicates:
        raise GridError(f"{path}: several runs would be named {', '.join(duplicates)}; "
                        "give those run entries distinct `label:`s")
    return Grid(name=name, path=path, base=base, base_config=base_flat,
                description=str(spec.get("description") or ""), runs=runs, tune=_tune(spec.get("tune"), runs),
                equivalence_margin=_margins(spec.get("equivalence_margin"), path),
                analysis=_analysis(spec.get("analysis"), path),
                cooldowns=_cooldowns(spec.get("cooldowns"), runs, base_flat, path))


def load_grid(arg: str | Path) -> Grid:
    """Load and expand a grid file (a path or the name of a shipped grid)."""
    path = resolve_grid_path(arg)
    try:
        spec = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # OmegaConf raises several YAML/grammar error types
        raise GridError(f"{path}: not a readable YAML grid ({err})") from err
    if not isinstance(spec, dict):
        raise GridError(f"{path}: a grid file must be a YAML mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    return expand(spec, path)


def with_overrides(grid: Grid, items: list[str]) -> Grid:
    """The grid with dotted `key=value` overrides applied to every run (over the grid's own values).

    Its name gets a short hash of the overrides, so its runs land in their own directory. Overriding
    `train.steps` scales each run's `train.eval_every` with it (unless that is overridden too), so a
    shorter grid keeps its number of evals and its curves and interpolated analyses their resolution.
    """
    if not items:
        return grid
    load_config(overrides=items)  # validates the keys and values now, before any run
    extra = flatten_config(OmegaConf.to_container(OmegaConf.from_dotlist(items)))
    tuned = sorted(set(extra) & set(grid.tune.keys if grid.tune else ()))
    if tuned:
        raise GridError(f"{', '.join(tuned)} is tuned by the grid (tune.keys); edit the sweep in the grid "
                        "file instead of overriding it")
    scaled = STEPS_KEY in extra and EVAL_EVERY_KEY not in extra
    # The scaled cadence is part of what the runs compute: a grid run with the same overrides before
    # the scaling existed keeps its own directory (its finished runs are not in conflict with these).
    named = {**extra, EVAL_EVERY_KEY: "scaled"} if scaled else extra
    tag = hashlib.sha256(json.dumps(named, sort_keys=True, default=str).encode()).hexdigest()[:6]

    def overridden(run: Run) -> Run:
        merged = {**run.overrides, **extra}
        if scaled:
            own = {**grid.base_config, **run.overrides}
            steps = own.get(STEPS_KEY, TrainSection.steps)
            every = own.get(EVAL_EVERY_KEY, TrainSection.eval_every)
            merged[EVAL_EVERY_KEY] = max(1, round(every * extra[STEPS_KEY] / steps))
        return dataclasses.replace(run, overrides=merged)

    return dataclasses.replace(grid, name=f"{grid.name}+{tag}", runs=[overridden(r) for r in grid.runs],
                               overrides=extra)


def format_value(value: Any) -> str:
    """A value as train.py's dotted override syntax (OmegaConf dotlist) expects it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def override_items(run: Run) -> list[str]:
    """The run's overrides as train.py's `key=value` arguments."""
    return [f"{k}={format_value(v)}" for k, v in run.overrides.items()]


def run_config(base: str | None, run: Run) -> RunConfig:
    """The config train.py loads for a run of a grid with this base file (Grid.base)."""
    return load_config([str(REPO_ROOT / base)] if base else [], override_items(run))


def config_diff(grid: Grid, run: Run) -> dict[str, Any]:
    """The run's overrides that change the base config's value (what the plan shows)."""
    return {k: v for k, v in run.overrides.items() if grid.base_config.get(k, _MISSING) != v}
