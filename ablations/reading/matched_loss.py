"""Speed or inductive bias? The report's analyses at matched overall loss.

- **Iso-loss**: each arm's tail metrics at the step where its eval loss first reaches a common
  target. If Muon is only faster, its tail at equal overall loss equals AdamW's; if it is biased
  toward the tail, its tail is better there.
- **Steps to target**: the steps each arm needs to reach its family's AdamW final eval loss, and
  the speed-up over AdamW's budget (AdamW's train.steps / the arm's mean steps).
- **Longer AdamW**: an AdamW arm trained k× longer, read at the step where it reaches a Muon
  arm's final loss: does AdamW given more steps catch up on the tail?

Every value at a target is interpolated between two logged evals (ablations/reading/curves.py); a run
that never reaches the target, or is already below it at its first eval, is reported as such. Runs
with fewer than MIN_EVALS logged points make these reads straight lines between a few points: the
report warns (`too_few_evals`).
The overall loss is the eval loss; for runs that log none (data without a validation split, such
as bios) it is the training loss, and the report says so.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

from ablations.metric_names import (
    CURVATURE_NDS,
    EVAL_LOSS,
    HEADLINE,
    QA_MEAN,
    QA_TAIL,
    TAIL_GAP,
    TAIL_LOSS,
    TRAIN_LOSS,
)
from ablations.reading.curves import NO_BRACKET, NOT_REACHED, REACHED, Crossing, first_crossing, value_at
from ablations.reading.rows import Row, RunData
from ablations.reading.stats import Comparison, Stat, compare
from metrics import names


@dataclass(frozen=True)
class OverallLoss:
    """The loss arms are matched on: its logged series and its summary's final value."""

    history: str
    final: str
    label: str

    def series(self, run: RunData) -> list[tuple[int, float]]:
        """The run's overall loss as read at targets. The eval loss as logged. The training loss (data
        without a validation split, such as bios) is the noisy mean of a `train.log_every` window:
        smoothed by a centred mean over TRAIN_SMOOTHING windows, and kept at the steps of the run's
        evals (QA, tail buckets), so that a crossing and the metrics read there share one cadence."""
        raw = run.history.get(self.history, [])
        if self.history == EVAL.history or not raw:
            return raw
        half = TRAIN_SMOOTHING // 2
        values = [v for _, v in raw]
        smoothed = [(step, statistics.fmean(values[max(0, i - half):i + half + 1]))
                    for i, (step, _) in enumerate(raw)]
        evals = {step for key in (QA_MEAN, TAIL_LOSS) for step, _ in run.history.get(key, [])}
        return [(step, v) for step, v in smoothed if step in evals] if evals else smoothed


EVAL, TRAIN = (OverallLoss(names.EVAL_LOSS, EVAL_LOSS, "eval loss"),
               OverallLoss(names.TRAIN_LOSS, TRAIN_LOSS, "training loss"))
# Logged training-loss windows a centred mean smooths over before a training-loss crossing is read.
TRAIN_SMOOTHING = 5


def overall_loss(rows: list[Row]) -> OverallLoss:
    """The eval loss, or the training loss when no run logs an eval loss."""
    return EVAL if any(EVAL.history in r.history for row in rows for r in row.runs) else TRAIN
# The tail metrics read at a target loss: the summary's headline ones, then every bucket and group.
_PER_BUCKET = (names.TAIL_BUCKET, names.QA_GROUP)


def curvature_metrics(logged: set[str] | list[str]) -> list[str]:
    """The per-group normalized directional sharpness keys among `logged`, sorted."""
    return sorted(k for k in logged if re.fullmatch(CURVATURE_NDS, k))


def tested_at_target(logged: set[str] | list[str]) -> list[str]:
    """The metrics among `logged` that are tested between arms at a target loss: the headline tail ones,
    then each group's directional sharpness."""
    return [k for k in HEADLINE if k in logged] + curvature_metrics(logged)


def tail_metrics(runs: list[RunData]) -> list[str]:
    """The metrics read at a target loss that any of `runs` logged over training: the headline tail
    ones, then every bucket and group, then each group's directional sharpness."""
    logged = {k for r in runs for k in r.history}
    per_bucket = sorted((k for k in logged if any(p.fullmatch(k) for p in _PER_BUCKET)),
                        key=lambda k: (k.split("/")[0], int(re.sub(r"\D", "", k.rsplit("/", 1)[1]))))
    return [k for k in HEADLINE if k in logged] + per_bucket + curvature_metrics(logged)


def column(metric: str) -> str:
    """A metric as a CSV column name: 'eval/tail/loss_b3' -> 'loss_b3', 'qa/fta/g2' -> 'qa_fta_g2'."""
    short = {TAIL_LOSS: "tail_loss", TAIL_GAP: "tail_gap", QA_TAIL: "qa_tail_fta", QA_MEAN: "qa_mean_fta"}
    return short.get(metric) or metric.removeprefix(names.TAIL_FAMILY).replace("/", "_")


# Below this many evals a run's loss curve is a few straight segments: a crossing read from it is
# interpolated over a fifth of training or more, and says little about when the target was reached.
MIN_EVALS = 6


def too_few_evals(runs: list[RunData], loss: OverallLoss) -> dict[str, int]:
    """The runs with fewer than MIN_EVALS points of the overall loss: name -> how many they have."""
    counts = {r.name: len(loss.series(r)) for r in runs}
    return {name: n for name, n in counts.items() if n < MIN_EVALS}


@dataclass(frozen=True)
class RunAtTarget:
    """One run at a target loss: where it crossed, and its tail metrics interpolated there."""

    run: RunData
    crossing: Crossing
    metrics: dict[str, float]  # metric -> value at the crossing (absent: not logged around it)


@dataclass(frozen=True)
class ArmAtTarget:
    """An arm's seeds at a target loss."""

    row: Row
    target: float
    runs: list[RunAtTarget]
    n_evals: int = 0  # the fewest logged points of the overall loss among the seeds: what a read rests on

    @property
    def reached(self) -> list[RunAtTarget]:
        return [r for r in self.runs if r.crossing.status == REACHED]

    @property
    def steps(self) -> Stat | None:
        return Stat.of([r.crossing.step for r in self.reached])

    def steps_at_least(self) -> float | None:
        """When some seeds never reach the target: the mean steps with each of those counted at its whole
        budget, a lower bound of the arm's mean (None when every seed reaches it, or none is counted)."""
        counted = [r for r in self.runs if r.crossing.status in (REACHED, NOT_REACHED)]
        if all(r.crossing.status == REACHED for r in counted) or not counted:
            return None
        return statistics.fmean(r.crossing.step if r.crossing.status == REACHED else r.run.steps
                                for r in counted)

    def values(self, metric: str) -> dict[int, float]:
        """seed -> the metric at the target, over the seeds that reached it."""
        return {r.run.seed: r.metrics[metric] for r in self.reached if metric in r.metrics}

    def status(self) -> str:
        """'reached' by every seed, else how many did and why the others did not."""
        if len(self.reached) == len(self.runs):
            return REACHED
        missing = [r.crossing.status for r in self.runs if r.crossing.status != REACHED]
        why = ", ".join(f"{missing.count(s)} {s}" for s in (NOT_REACHED, NO_BRACKET) if s in missing)
        return f"{len(self.reached)}/{len(self.runs)} reached ({why})"

    def bracket(self) -> int | None:
        """The widest step interval between the two evals a seed's crossing was interpolated in."""
        widths = [r.crossing.bracket[1] - r.crossing.bracket[0] for r in self.reached]
        return max(widths) if widths else None


def at_target(row: Row, loss: OverallLoss, target: float, metrics: list[str]) -> ArmAtTarget:
    """Each of the row's runs at `target`: its crossing step and tail metrics interpolated there."""
    runs = []
    for run in row.runs:
        crossing = first_crossing(loss.series(run), target)
        values = {}
        if crossing.status == REACHED:
            for metric in metrics:
                value = value_at(run.history.get(metric, []), crossing.step)
                if value is not None:
                    values[metric] = value
        runs.append(RunAtTarget(run, crossing, values))
    n_evals = min((len(loss.series(run)) for run in row.runs), default=0)
    return ArmAtTarget(row, target, runs, n_evals)


def _families(rows: list[Row]) -> dict[str, list[Row]]:
    families: dict[str, list[Row]] = {}
    for row in rows:
        families.setdefault(row.family, []).append(row)
    return families


# How an iso-loss target was chosen: declared in the grid file before any result (`analysis: {iso_loss:
# [...]}`), given on the report's command line after seeing results, or the family's default.
PREREGISTERED, EXPLORATORY = "pre-registered", "exploratory"
DEFAULT_TARGET = "default (the family's highest final loss)"


def iso_targets(registered: list[float], given: float | None) -> list[tuple[float | None, str]]:
    """The targets the report reads at, each with how it was chosen: the pre-registered ones, then one
    given on the command line (exploratory unless it is one of them); else the default (None)."""
    targets: list[tuple[float | None, str]] = [(t, PREREGISTERED) for t in registered]
    if given is not None and given not in registered:
        targets.append((given, EXPLORATORY))
    return targets or [(None, DEFAULT_TARGET)]


def iso_loss(rows: list[Row], loss: OverallLoss, target: float | None = None) -> list[ArmAtTarget]:
    """Every row at a common target loss: `target`, or per family the highest final loss of its runs
    (every run reaches it, at the latest at its last logged value)."""
    results = []
    for family in _families(rows).values():
        runs = [r for row in family for r in row.runs if loss.series(r)]
        if not runs:
            continue
        goal = target if target is not None else max(loss.series(r)[-1][1] for r in runs)
        metrics = tail_metrics(runs)
        results += [at_target(row, loss, goal, metrics) for row in family]
    return results


@dataclass(frozen=True)
class StepsToTarget:
    """An arm's steps to its family's AdamW final eval loss, and its speed-up over AdamW's budget."""

    arm: ArmAtTarget
    adamw_steps: int

    @property
    def speedup(self) -> float | None:
        """AdamW's budget over the arm's mean steps; None when a seed does not reach the target."""
        steps = self.arm.steps
        if steps is None or steps.mean <= 0 or self.arm.steps_at_least() is not None:
            return None
        return self.adamw_steps / steps.mean


def steps_to_target(rows: list[Row], loss: OverallLoss) -> list[StepsToTarget]:
    """Each row with an AdamW reference: the steps it needs to reach that reference's mean final loss."""
    results = []
    for row in rows:
        ref = row.adamw and row.adamw.stat(loss.final)
        if ref is not None:
            results.append(StepsToTarget(at_target(row, loss, ref.mean, []), row.adamw.steps))
    return results


@dataclass(frozen=True)
class LongerVsMuon:
    """A longer-trained AdamW arm at a Muon arm's final loss, next to that Muon arm's final metrics."""

    longer: ArmAtTarget
    muon: Row
    tests: dict[str, Comparison]  # metric -> longer AdamW at the target vs Muon at its end


def longer_adamw(rows: list[Row], loss: OverallLoss) -> list[LongerVsMuon]:
    """Every longer AdamW row against every Muon row of normal length in its family."""
    results = []
    for family in _families(rows).values():
        metrics = tail_metrics([r for row in family for r in row.runs])
        for longer in (r for r in family if r.longer and r.routing == "adamw"):
            for muon in (r for r in family if not r.longer and r.routing.startswith("muon")):
                final = muon.stat(loss.final)
                if final is None:
                    continue
                arm = at_target(longer, loss, final.mean, metrics)
                tests = {m: c for m in HEADLINE
                         if (c := compare(arm.values(m), muon.finals.get(m, {}))) is not None}
                results.append(LongerVsMuon(arm, muon, tests))
    return results


def iso_tests(arms: list[ArmAtTarget]) -> dict[int, dict[str, Comparison]]:
    """For each arm (by index), the t-tests of its headline tail metrics at its target against the
    AdamW arm of its family at the same target."""
    by_row = {(id(a.row), a.target): a for a in arms}
    tests: dict[int, dict[str, Comparison]] = {}
    for i, arm in enumerate(arms):
        ref = by_row.get((id(arm.row.adamw), arm.target)) if arm.row.adamw is not None else None
        if ref is None or ref is arm:
            continue
        tested = tested_at_target({m for r in arm.reached for m in r.metrics})
        tests[i] = {m: c for m in tested if (c := compare(arm.values(m), ref.values(m))) is not None}
    return tests

