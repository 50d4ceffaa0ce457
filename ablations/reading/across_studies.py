"""`python -m ablations compare STUDY_A STUDY_B`: how each arm's gain over the baseline, and its share of
the full arm's gain, move from one study to another (e.g. from the tiny to the wide model).

Read from each study's per_seed.csv (what `report` writes, and what docs/results commits), so committed
studies compare without their run directories. Within a study an arm and the baseline ran the same seeds
and pair up; across studies nothing pairs (other models, other runs), so the change of a gain is Welch's
over the two studies' estimates (`stats.change`), never a seed-by-seed difference.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ablations.metric_names import DEFAULT_MARGINS, EVAL_LOSS, FINAL_METRICS, TRAIN_LOSS
from ablations.reading import plots
from ablations.reading.rows import ADAMW, FULL_MUON
from ablations.reading.stats import (
    ALPHA,
    DELTA,
    Difference,
    bh_adjusted,
    change,
    delta_share,
    difference,
    fieller_interval,
    share_moments,
)
from ablations.reading.tables import PValue, Table, markdown, write_table
from common.errors import MissingFileError, UserError

PER_SEED = "per_seed.csv"
ANNEALED = " annealed at "  # per_seed.csv's suffix of a tail metric read at matched annealed loss

Values = dict[tuple[str, str], dict[int, float]]  # (arm, metric) -> seed -> value


def per_seed_path(study: Path) -> Path:
    """A study's per_seed.csv: in the directory itself (a report or docs/results/<grid>) or in its
    report/ (a grid's run directory)."""
    for path in (study / PER_SEED, study / "report" / PER_SEED):
        if path.is_file():
            return path
    raise MissingFileError(f"no {PER_SEED} in {study} or {study / 'report'}: "
                           f"run `python -m ablations report {study}` first")


def load_per_seed(study: Path) -> Values:
    values: Values = defaultdict(dict)
    with per_seed_path(study).open() as f:
        for row in csv.DictReader(f):
            values[row["arm"], row["metric"]][int(row["seed"])] = float(row["value"])
    return dict(values)


def compared_metrics(a: Values, b: Values) -> list[str]:
    """The metrics both studies have that compare across them: the final metrics (but the train loss)
    and the tail metrics at the matched annealed losses both read (mid-schedule reads and steps to a
    study's own target do not mean the same thing in another study)."""
    common = {m for _, m in a} & {m for _, m in b}
    finals = [m for m in FINAL_METRICS if m in common and m != TRAIN_LOSS]
    return finals + sorted(m for m in common if ANNEALED in m)


def margin_of(metric: str) -> float | None:
    """The TOST margin of a metric (DEFAULT_MARGINS, by its name before any ' annealed at ...')."""
    return DEFAULT_MARGINS.get(metric.split(ANNEALED)[0])


@dataclass(frozen=True)
class Moved:
    """One arm's gain over the baseline (baseline − arm, paired within a study) in study A, in study B,
    and its change B − A."""

    metric: str
    arm: str
    n_seeds: tuple[int, int]
    a: Difference
    b: Difference

    @property
    def moved(self) -> Difference:
        return change(self.a, self.b)


def gains_moved(a: Values, b: Values, arms: list[str], baseline: str) -> list[Moved]:
    """Each arm's gain on every compared metric that both studies read for it and the baseline."""
    found = []
    for metric in compared_metrics(a, b):
        for arm in arms:
            keys = ((baseline, metric), (arm, metric))
            if not all(k in v for k in keys for v in (a, b)):
                continue  # the arm (or the baseline) never reached this read in one of the studies
            da = difference(a[baseline, metric], a[arm, metric])
            db = difference(b[baseline, metric], b[arm, metric])
            if da is not None and db is not None:
                found.append(Moved(metric, arm, (len(a[arm, metric]), len(b[arm, metric])), da, db))
    return found


def gains_table(moved: list[Moved], labels: tuple[str, str]) -> Table:
    """One row per arm and metric: its gain and 95% interval in each study, the change (B − A) with its
    Welch interval and p, that p BH-adjusted over the table, and the TOST of "no change" at the metric's
    margin (DEFAULT_MARGINS): 'changed', 'no change within ±margin' or 'inconclusive'."""
    la, lb = labels
    header = ["metric", "arm", f"n_seeds_{la}", f"gain_{la}", f"ci95_low_{la}", f"ci95_high_{la}",
              f"n_seeds_{lb}", f"gain_{lb}", f"ci95_low_{lb}", f"ci95_high_{lb}",
              f"change_{lb}_minus_{la}", "change_ci95_low", "change_ci95_high", "p_change", "p_change_bh",
              "test", "margin", "p_tost_no_change", "verdict"]
    adjusted = bh_adjusted([m.moved.p for m in moved])
    body: list[list[object]] = []
    for m, p_bh in zip(moved, adjusted, strict=True):
        margin = margin_of(m.metric)
        p_tost = m.moved.tost(margin) if margin else None
        equivalent = p_tost is not None and p_tost < ALPHA
        verdict = ("changed" if p_bh < ALPHA else
                   f"no change within ±{margin:g}" if equivalent else "inconclusive")
        body.append([m.metric, m.arm, m.n_seeds[0], m.a.diff, *m.a.ci95, m.n_seeds[1], m.b.diff, *m.b.ci95,
                     m.moved.diff, *m.moved.ci95, PValue(m.moved.p), PValue(p_bh),
                     f"{m.a.test} within each study, {m.moved.test} across", margin,
                     None if p_tost is None else PValue(p_tost), verdict])
    return header, body


def shares_table(a: Values, b: Values, arms: list[str], baseline: str, full: str,
                 labels: tuple[str, str]) -> Table:
    """Each arm's share of the full arm's final-loss gain in each study, with Fieller's 95% interval (blank
    where unbounded: that study's full gain is not distinguishable from zero), and the change of the share
    with a delta-method interval where both studies bound it."""
    la, lb = labels
    header = ["arm", f"share_{la}", f"fieller_low_{la}", f"fieller_high_{la}", f"share_{lb}",
              f"fieller_low_{lb}", f"fieller_high_{lb}", f"change_{lb}_minus_{la}", "change_ci95_low",
              "change_ci95_high", "p_change", "test"]
    body: list[list[object]] = []
    for arm in arms:
        settings = [(v[baseline, EVAL_LOSS], v[arm, EVAL_LOSS], v[full, EVAL_LOSS]) for v in (a, b)
                    if all((g, EVAL_LOSS) in v for g in (baseline, arm, full))]
        if arm == full or len(settings) < 2:
            continue
        row: list[object] = [arm]
        moments = [share_moments(*setting) for setting in settings]
        for m in moments:
            row += [m and m.den and m.num / m.den, *(fieller_interval(m) or (None, None))]
        sa, sb = (delta_share(m) for m in moments)
        if sa is None or sb is None:
            row += [None] * 5
        else:
            moved = change(sa, sb)
            row += [moved.diff, *moved.ci95, PValue(moved.p), f"{DELTA}, {moved.test} across"]
        body.append(row)
    return header, body


def compare_studies(study_a: Path, study_b: Path, out: Path, labels: tuple[str, str],
                    baseline: str = ADAMW, full: str = FULL_MUON) -> Path:
    """Write gains.csv, shares.csv, compare.md and gains.png to `out`; returns compare.md's path."""
    if labels[0] == labels[1]:
        raise UserError(f"--labels must name the two studies differently, got {labels[0]!r} twice")
    a, b = load_per_seed(study_a), load_per_seed(study_b)
    for label, values, study in ((labels[0], a, study_a), (labels[1], b, study_b)):
        if (baseline, EVAL_LOSS) not in values:
            have = sorted({arm for arm, _ in values})
            raise UserError(f"study {label} ({study}) has no {baseline!r} arm to measure gains from; "
                            f"its arms: {', '.join(have)} (set --baseline)")
    arms = sorted({arm for arm, _ in a} & {arm for arm, _ in b} - {baseline})
    out.mkdir(parents=True, exist_ok=True)
    moved = gains_moved(a, b, arms, baseline)
    gains, shares = gains_table(moved, labels), shares_table(a, b, arms, baseline, full, labels)
    write_table(gains, out / "gains.csv")
    write_table(shares, out / "shares.csv")
    figure = plots.gains_across_studies(moved, labels, out / "gains.png")
    lines = [f"# {labels[0]} → {labels[1]}: gains over {baseline}", "",
             f"Studies: {labels[0]} = `{study_a}`, {labels[1]} = `{study_b}`; "
             f"arms in both: {', '.join(arms)}.",
             "",
             f"*Gain* = {baseline} − arm (lower is better for every loss, so a positive gain is the arm's "
             "advantage), the paired t interval over the seeds within a study. Across studies nothing pairs: "
             "the *change* is Welch's interval over the two estimates, its p BH-adjusted over the table; "
             "'no change' needs the TOST at the metric's margin, not a non-significant p.", "",
             markdown(gains), "",
             f"## Share of {full}'s final-loss gain", "",
             "Fieller's 95% interval in each study (blank: unbounded, that study's full gain is not "
             "distinguishable from zero); the change's interval is the delta method's, only where both "
             "studies bound the share.", "",
             markdown(shares, drop_empty=False)]
    if figure:
        lines += ["", f"![gains]({figure.name})"]
    path = out / "compare.md"
    path.write_text("\n".join(lines) + "\n")
    return path
