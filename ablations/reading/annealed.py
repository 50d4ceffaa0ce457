"""Matched loss between fully annealed models: speed told apart from bias without the schedule confound.

A read at a target loss mid-run (matched_loss.py) compares arms at different phases of their
schedules. Here every point is a model that finished its schedule: a final run, each of its cooldown
branches (ablations/running/cooldowns.py) and the final runs of the same setting at other budgets
(`budgets:`).
Per arm (a lineage: rows that differ only in steps and tuned values) and seed, the tail metrics are
interpolated linearly in the final loss between the two annealed points around a target (never
extrapolated); arms are then compared there over seeds like any other metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ablations.metric_names import HEADLINE
from ablations.reading.rows import Row, RunData

Point = tuple[float, dict[str, float]]  # (final loss, the final tail metrics)


@dataclass
class Lineage:
    """An arm's annealed points per seed; `label` is its row at the fewest steps."""

    label: str
    family: str
    rows: list[Row]
    points: dict[int, list[Point]] = field(default_factory=dict)  # seed -> points sorted by loss
    adamw: Lineage | None = None  # the family's AdamW lineage (possibly this one)

    def at(self, target: float, metric: str) -> dict[int, float]:
        """seed -> `metric` interpolated at final loss `target`, over the seeds whose points bracket it."""
        values = {}
        for seed, points in self.points.items():
            known = [(loss, m[metric]) for loss, m in points if metric in m]
            for (l1, v1), (l2, v2) in zip(known, known[1:], strict=False):
                if l1 <= target <= l2:
                    values[seed] = v1 if l2 == l1 else v1 + (v2 - v1) * (target - l1) / (l2 - l1)
                    break
        return values

    @property
    def n_points(self) -> int:
        """The fewest annealed points of a seed."""
        return min((len(p) for p in self.points.values()), default=0)

    def span(self) -> tuple[float, float] | None:
        """The loss range every seed's points cover (None if they share none)."""
        if not self.points:
            return None
        low = max(p[0][0] for p in self.points.values())
        high = min(p[-1][0] for p in self.points.values())
        return (low, high) if low <= high else None


def _point(run: RunData, loss_key: str) -> Point | None:
    summary = run.summary or {}
    loss = summary.get(loss_key)
    if not isinstance(loss, int | float):
        return None
    return float(loss), {m: float(summary[m]) for m in HEADLINE if isinstance(summary.get(m), int | float)}


def lineages(rows: list[Row], branches: list[RunData], loss_key: str) -> list[Lineage]:
    """Every lineage of the rows with its annealed points: each final run's, its branches' and those of
    the lineage's other budgets. Only lineages with a seed of two points or more can be read."""
    by_run = {run.name: run for run in branches if run.summary is not None}
    children: dict[str, list[RunData]] = {}
    for run in by_run.values():
        children.setdefault(run.branch_of or "", []).append(run)
    found: dict[str, Lineage] = {}
    for row in sorted(rows, key=lambda r: r.steps):
        lineage = found.setdefault(row.lineage, Lineage(row.group, row.family, []))
        lineage.rows.append(row)
        for run in row.runs:
            for member in (run, *children.get(run.name, [])):
                if (point := _point(member, loss_key)) is not None:
                    lineage.points.setdefault(run.seed, []).append(point)
    for lineage in found.values():
        lineage.points = {s: sorted(p, key=lambda x: x[0]) for s, p in lineage.points.items()}
    for lineage in found.values():
        ref = lineage.rows[0].adamw
        lineage.adamw = next((o for o in found.values() if ref is not None and ref in o.rows), None)
    return [lin for lin in found.values() if lin.n_points >= 2]


def default_target(family: list[Lineage]) -> float | None:
    """The middle of the loss range that every seed of every lineage of a family covers, if any."""
    spans = [lin.span() for lin in family]
    if not spans or any(s is None for s in spans):
        return None
    low, high = max(s[0] for s in spans), min(s[1] for s in spans)
    return (low + high) / 2 if low <= high else None


# How a target was chosen when the grid registers none (ablations/reading/matched_loss.py names the others).
ANNEALED_DEFAULT = "default (the middle of the range every seed's annealed points cover)"


@dataclass(frozen=True)
class AnnealedRead:
    """A lineage read at one target final loss (`kind`: how the target was chosen)."""

    lineage: Lineage
    target: float
    kind: str

    def values(self, metric: str) -> dict[int, float]:
        return self.lineage.at(self.target, metric)

    @property
    def n_reached(self) -> int:
        """Seeds whose annealed points bracket the target (their points are sorted by loss)."""
        return sum(points[0][0] <= self.target <= points[-1][0] for points in self.lineage.points.values())


def annealed_reads(found: list[Lineage], targets: list[tuple[float | None, str]]) -> list[AnnealedRead]:
    """Every lineage at every target: the given ones (registered or exploratory), else per family the
    default target (none when the family's seeds share no loss range)."""
    families: dict[str, list[Lineage]] = {}
    for lin in found:
        families.setdefault(lin.family, []).append(lin)
    reads = []
    for family in families.values():
        given = [(t, kind) for t, kind in targets if t is not None]
        default = default_target(family)
        chosen = given or ([(default, ANNEALED_DEFAULT)] if default is not None else [])
        reads += [AnnealedRead(lin, t, kind) for t, kind in chosen for lin in family]
    return reads
