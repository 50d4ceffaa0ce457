"""The report's statistics, tuning and matched-loss tables, each built once and written twice: as
CSV (full precision, for other tools) and as markdown (rounded, p-values marked "n.s." at 0.05)."""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from ablations.metric_names import FINAL_METRICS, HEADLINE
from ablations.reading.annealed import AnnealedRead
from ablations.reading.matched_loss import (
    DEFAULT_TARGET,
    ArmAtTarget,
    LongerVsMuon,
    StepsToTarget,
    column,
    tested_at_target,
)
from ablations.reading.rows import Row
from ablations.reading.stats import ALPHA, Comparison, Difference, bh_adjusted, compare, difference
from ablations.running.tuning import ArmTuning, profile


class PValue(float):
    """A p-value: markdown shows it with 'n.s.' when it is not significant at ALPHA."""


class AtLeast(float):
    """A lower bound of a mean over seeds, some of which never got there: markdown shows
    '≥ N (k of n seeds)'."""

    def __new__(cls, value: float, reached: int, seeds: int) -> AtLeast:
        bound = super().__new__(cls, value)
        bound.reached, bound.seeds = reached, seeds
        return bound


Cell = object
Table = tuple[list[str], list[list[Cell]]]


def _p(test: Comparison | None) -> PValue | None:
    return None if test is None else PValue(test.p)


def csv_cell(value: Cell) -> str:
    if value is None:
        return ""
    return f"{value + 0.0:.6f}" if isinstance(value, float) else str(value)  # + 0.0: no "-0.000000"


def md_cell(value: Cell) -> str:
    if isinstance(value, AtLeast):
        return f"≥ {value:.1f} ({value.reached} of {value.seeds} seeds)"
    if isinstance(value, PValue):
        return f"{value:.3f}" + ("" if value < ALPHA else " (n.s.)")
    if isinstance(value, float) and math.isfinite(value):
        return f"{value + 0.0:.4f}" if abs(value) < 10 else f"{value:.1f}"  # losses, then steps
    return csv_cell(value)


def write_table(table: Table, path: Path) -> Path:
    header, rows = table
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([csv_cell(c) for c in row] for row in rows)
    return path


def markdown(table: Table, drop_empty: bool = True) -> str:
    """A markdown table; columns empty in every row are left out (e.g. QA columns outside bios)."""
    header, rows = table
    cells = [[md_cell(c) for c in row] for row in rows]
    keep = [i for i in range(len(header)) if not drop_empty or any(c[i] for c in cells)]
    lines = ["| " + " | ".join(header[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(c[i] for i in keep) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def stats_table(rows: list[Row]) -> Table:
    """stats.csv: every row × final metric: n, mean, std, 95% t interval, tests against the references."""
    header = ["run", "metric", "n_seeds", "mean", "std", "ci95_low", "ci95_high",
              "p_vs_adamw", "test_vs_adamw", "p_vs_muon", "test_vs_muon"]
    body = []
    for row in rows:
        for metric in FINAL_METRICS:
            stat = row.stat(metric)
            if stat is None:
                continue
            a, m = row.vs_adamw.get(metric), row.vs_muon.get(metric)
            body.append([row.group, metric, stat.n, stat.mean, stat.std, stat.ci95_low, stat.ci95_high,
                         _p(a), a and a.test, _p(m), m and m.test])
    return header, body


# A setting for the pairwise tests: its name, its family and metric -> seed -> value.
Compared = tuple[str, str, dict[str, dict[int, float]]]


@dataclass(frozen=True)
class PairTest:
    """Two settings of a family compared on one metric (`where`: "final", or the iso-loss target)."""

    metric: str
    where: str
    run_a: str
    run_b: str
    a: dict[int, float]
    b: dict[int, float]
    test: Comparison
    diff: Difference


def pair_tests(items: list[Compared], metrics: tuple[str, ...] | list[str], where: str) -> list[PairTest]:
    """Every two items of a family, for each metric both have over >= 2 seeds (paired or Welch t-test)."""
    found = []
    for metric in metrics:
        for i, (name_a, family_a, a) in enumerate(items):
            for name_b, family_b, b in items[i + 1:]:
                va, vb = a.get(metric, {}), b.get(metric, {})
                test = family_a == family_b and compare(va, vb)
                if test:
                    found.append(PairTest(metric, where, name_a, name_b, va, vb, test, difference(va, vb)))
    return found


def study_adjusted(tests: list[PairTest]) -> list[float]:
    """Benjamini–Hochberg over the study's whole family of pair tests (every metric, pair and target
    at once; scipy.stats.false_discovery_control), in the order of `tests`."""
    return bh_adjusted([t.test.p for t in tests])


def pairs_table(tests: list[PairTest], study: list[float]) -> Table:
    """pairwise.csv / iso_pairwise.csv: each test's means, their difference with its 95% t interval, p,
    its Benjamini–Hochberg adjustment over the pairs of that metric at that point (*p_bh*) and over the
    whole study (*p_bh_study*: `study`, one per test), and the point (*where*: final, or a target)."""
    header = ["metric", "run_a", "run_b", "mean_a", "mean_b", "diff", "ci95_low", "ci95_high", "p", "p_bh",
              "p_bh_study", "test", "where"]
    per_metric: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(tests):
        per_metric.setdefault((t.metric, t.where), []).append(i)
    p_bh = {}
    for indices in per_metric.values():
        adjusted = bh_adjusted([tests[i].test.p for i in indices])
        p_bh.update(zip(indices, adjusted, strict=True))
    body = []
    for i, t in enumerate(tests):
        ma, mb = statistics.fmean(t.a.values()), statistics.fmean(t.b.values())
        low, high = t.diff.ci95
        body.append([t.metric, t.run_a, t.run_b, ma, mb, ma - mb, low, high, PValue(t.test.p),
                     PValue(p_bh[i]), PValue(study[i]), t.test.test, t.where])
    return header, body


def final_pair_tests(rows: list[Row]) -> list[PairTest]:
    """The t-tests between every two settings of a family, on each final metric."""
    return pair_tests([(r.group, r.family, r.finals) for r in rows], FINAL_METRICS, "final")


def iso_pair_tests(arms: list[ArmAtTarget], metrics: list[str], kind: str = "") -> list[PairTest]:
    """The same tests on the tail metrics and each group's directional sharpness at one iso-loss target
    (seeds that reach it); `kind` says how the target was chosen (pre-registered, exploratory, ...)."""
    headline = tested_at_target(metrics)
    where = f"at {arms[0].target:.4f}" + (f" ({kind})" if kind else "") if arms else ""
    return pair_tests([(a.row.group, a.row.family, {m: a.values(m) for m in headline}) for a in arms],
                      headline, where)


def equivalence_table(tests: list[PairTest], margins: dict[str, float]) -> Table:
    """equivalence.csv: every pair not significantly different (p >= ALPHA), with its TOST p within the
    metric's margin and the verdict: "equivalent within ±m" (TOST p < ALPHA) or "inconclusive"."""
    header = ["metric", "arm_a", "arm_b", "diff", "ci95_low", "ci95_high", "margin", "p_tost", "verdict"]
    body = []
    for t in tests:
        if t.test.significant or t.metric not in margins:
            continue
        margin = margins[t.metric]
        p = t.diff.tost(margin)
        low, high = t.diff.ci95
        verdict = f"equivalent within ±{margin:g}" if p < ALPHA else "inconclusive"
        metric = t.metric if t.where == "final" else f"{t.metric} {t.where}"
        body.append([metric, t.run_a, t.run_b, t.diff.diff, low, high, margin, PValue(p), verdict])
    return header, body


def per_seed_table(rows: list[Row], arms: list[ArmAtTarget], steps: list[StepsToTarget],
                   reads: list[AnnealedRead]) -> Table:
    """per_seed.csv: every value the tables pool over seeds: each setting's final metrics, each arm's
    metrics at the iso-loss targets, its steps to AdamW's final loss (seeds that reach them) and its
    tail metrics at matched annealed loss."""
    header = ["arm", "seed", "metric", "value"]
    body: list[list[Cell]] = [[r.group, seed, m, v] for r in rows for m in FINAL_METRICS
                              for seed, v in sorted(r.finals.get(m, {}).items())]
    body += [[a.row.group, run.run.seed, f"{m} at {a.target:.4f}", v] for a in arms for run in a.reached
             for m, v in sorted(run.metrics.items())]
    body += [[s.arm.row.group, run.run.seed, f"steps to {s.arm.target:.4f}", float(run.crossing.step)]
             for s in steps for run in s.arm.reached]
    body += [[r.lineage.label, seed, f"{m} annealed at {r.target:.4f}", v] for r in reads for m in HEADLINE
             for seed, v in sorted(r.values(m).items())]
    return header, body


def annealed_pair_tests(reads: list[AnnealedRead]) -> list[PairTest]:
    """Every two arms of a family at each matched annealed loss, on the headline tail metrics."""
    tests = []
    for target, kind in dict.fromkeys((r.target, r.kind) for r in reads):
        items = [(r.lineage.label, r.lineage.family, {m: r.values(m) for m in HEADLINE})
                 for r in reads if r.target == target]
        tests += pair_tests(items, HEADLINE, f"annealed at {target:.4f} ({kind})")
    return tests


def annealed_table(reads: list[AnnealedRead]) -> Table:
    """annealed.csv: each arm at each target final loss of fully annealed models: the seeds whose points
    bracket it, the fewest points of a seed, and the tail metrics there (mean over those seeds, with the
    t-test against the family's AdamW at the same target)."""
    metrics = [m for m in HEADLINE if any(r.values(m) for r in reads)]
    header = ["arm", "target_loss", "target_kind", "n_seeds", "n_reached", "n_points"]
    header += [c for m in metrics for c in (column(m), f"p_{column(m)}_vs_adamw")]
    body = []
    for r in reads:
        ref = next((o for o in reads if o.lineage is r.lineage.adamw and o.target == r.target), None)
        cells = [r.lineage.label, r.target, r.kind, len(r.lineage.points), r.n_reached, r.lineage.n_points]
        for m in metrics:
            test = compare(r.values(m), ref.values(m)) if ref is not None and ref is not r else None
            cells += [_mean(r.values(m)), _p(test)]
        body.append(cells)
    return header, body


def tuning_table(tunings: list[ArmTuning], metric: str) -> Table:
    """tuning.csv: one row per arm and value a key was tried at, its final loss (`metric`, named in the
    last column; mean over the `n_seeds` tuning seeds, best over the other keys varied with it), whether
    it was chosen, the tuning `method`, the coordinate step (`pass`, 1-based; 1 for grid) that swept
    the key, and whether the chosen value is still at an edge of those tried (`edge`)."""
    header = ["arm", "key", "value", "eval_loss", "chosen", "method", "pass", "edge", "n_seeds", "metric"]
    body = [[t.arm, key, value, loss, value == t.chosen[key], t.method, t.step_of(key).number,
             t.step_of(key).at_edge(key), t.n_seeds, metric]
            for t in tunings for key in t.keys for value, loss in profile(t, key)]
    return header, body


def iso_table(arms: list[ArmAtTarget], tests: dict[int, dict[str, Comparison]], metrics: list[str],
              kinds: dict[float, str]) -> Table:
    """iso_loss.csv: each arm at each target loss (`kinds`: how each target was chosen): the step, and
    the tail metrics there (mean over the seeds that reached it; the headline metrics and each group's
    directional sharpness with their p-value against AdamW there)."""
    header = ["arm", "target_loss", "target_kind", "step_at_target", "step_ci95_low", "step_ci95_high",
              "n_seeds", "n_reached", "eval_bracket_steps", "n_evals", "status"]
    headline = tested_at_target(metrics)
    header += [c for m in headline for c in (column(m), f"p_{column(m)}_vs_adamw")]
    header += [column(m) for m in metrics if m not in headline]
    body = []
    for i, arm in enumerate(arms):
        steps = arm.steps
        cells = [arm.row.group, arm.target, kinds.get(arm.target, DEFAULT_TARGET), steps and steps.mean,
                 steps and steps.ci95_low, steps and steps.ci95_high, len(arm.runs), len(arm.reached),
                 arm.bracket(), arm.n_evals, arm.status()]
        for m in headline:
            cells += [_mean(arm.values(m)), _p(tests.get(i, {}).get(m))]
        cells += [_mean(arm.values(m)) for m in metrics if m not in headline]
        body.append(cells)
    return header, body


def steps_table(results: list[StepsToTarget]) -> Table:
    """steps_to_target.csv: steps to the family's AdamW final loss (mean, 95% t interval over seeds).

    An arm that some seeds never bring there gets the lower bound '≥ N (k of n seeds)' (those seeds
    counted at their whole budget), no interval and no speed-up: a mean over the seeds that made it
    would flatter it."""
    header = ["arm", "target_loss", "steps", "ci95_low", "ci95_high", "speedup_vs_adamw", "n_seeds",
              "n_reached", "eval_bracket_steps", "n_evals", "status"]
    body = []
    for r in results:
        steps, bound = r.arm.steps, r.arm.steps_at_least()
        shown = [AtLeast(bound, len(r.arm.reached), len(r.arm.runs)), None, None] if bound is not None else [
            steps and steps.mean, steps and steps.ci95_low, steps and steps.ci95_high]
        body.append([r.arm.row.group, r.arm.target, *shown, r.speedup, len(r.arm.runs), len(r.arm.reached),
                     r.arm.bracket(), r.arm.n_evals, r.arm.status()])
    return header, body


def longer_table(results: list[LongerVsMuon]) -> Table:
    """longer_adamw.csv: a longer AdamW at a Muon arm's final loss vs that Muon arm's final metrics."""
    header = ["longer_arm", "muon_arm", "target_loss", "step_at_target", "status"]
    for m in HEADLINE:
        header += [f"{column(m)}_longer", f"{column(m)}_muon", f"p_{column(m)}"]
    body = []
    for r in results:
        steps = r.longer.steps
        cells = [r.longer.row.group, r.muon.group, r.longer.target, steps and steps.mean, r.longer.status()]
        for m in HEADLINE:
            cells += [_mean(r.longer.values(m)), _mean(r.muon.finals.get(m, {})), _p(r.tests.get(m))]
        body.append(cells)
    return header, body


def _mean(values: dict[int, float]) -> float | None:
    return statistics.fmean(values.values()) if values else None

