"""The report's figures (matplotlib, Agg backend). Each returns the PNG path, or None without data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ablations.reading.annealed import Lineage  # noqa: E402
from ablations.reading.matched_loss import ArmAtTarget, OverallLoss, StepsToTarget  # noqa: E402
from ablations.reading.rows import Row, RunData  # noqa: E402
from ablations.running.tuning import ArmTuning, profile  # noqa: E402
from common.plotting import legend_beside  # noqa: E402
from metrics import names  # noqa: E402
from metrics.names import QA_GROUP, QA_MEAN, QA_TAIL, TAIL_BUCKET, TAIL_GAP, TAIL_LOSS  # noqa: E402

if TYPE_CHECKING:  # across_studies draws with this module: importing it at run time would be circular
    from ablations.reading.across_studies import Moved

SPECTRA_GROUPS = ("v", "o", "ffn_out")
SPECTRA_METRICS = ("svd_entropy", "effective_rank", "top10_energy", "q75_q25")


def colors(rows: list[Row]) -> dict[str, tuple]:
    """One color per row (setting), shared by every figure."""
    cmap = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    return {row.group: cmap(i % cmap.N) for i, row in enumerate(rows)}


def _save(fig: plt.Figure, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loss_curves(runs: list[RunData], rows: list[Row], out: Path) -> Path | None:
    """Eval loss over steps of every run (left) and over the second half of training (right, zoomed:
    the early loss drop would otherwise hide the differences); seeds of one setting share a color."""
    runs = [r for r in runs if r.history.get(names.EVAL_LOSS)]
    if not runs:
        return None
    color = colors(rows)
    last = max(step for r in runs for step, _ in r.history[names.EVAL_LOSS])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labelled = set()
    for run in runs:
        series = run.history[names.EVAL_LOSS]
        label = None if run.group in labelled else run.group
        labelled.add(run.group)
        style = {"color": color.get(run.group, "gray"), "lw": 1.3, "ls": "-" if run.summary else ":"}
        axes[0].plot(*zip(*series, strict=True), **style)
        tail = [(s, v) for s, v in series if s >= last / 2]
        if tail:
            axes[1].plot(*zip(*tail, strict=True), marker="o", ms=2, label=label, **style)
    axes[0].set(xlabel="step", ylabel="eval loss", title="Eval loss (dotted: run not finished)")
    axes[1].set(xlabel="step", ylabel="eval loss", title="Second half of training")
    legend_beside(axes[1])  # one legend for both panels, right of the second
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, out / "loss_curves.png")


def final_loss_bars(rows: list[Row], out: Path) -> Path | None:
    """Final eval loss per setting (mean ± std over seeds), best at the top."""
    color = colors(rows)
    rows = sorted((r for r in rows if r.eval_loss), key=lambda r: r.eval_loss.mean, reverse=True)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    means = [r.eval_loss.mean for r in rows]
    stds = [r.eval_loss.std or 0.0 for r in rows]
    ax.barh([r.group for r in rows], means, xerr=stds, color=[color[r.group] for r in rows])
    span = max(means) - min(means)
    lowest = min(m - sd for m, sd in zip(means, stds, strict=True))  # error bars inside the frame
    ax.set_xlim(lowest - max(span, 1e-3) * 0.6, max(means) + max(stds) + max(span, 1e-3) * 0.3)
    for y, (m, sd) in enumerate(zip(means, stds, strict=True)):
        ax.text(m + sd, y, f" {m:.4f}", va="center", fontsize=7)
    ax.set(xlabel="final eval loss (lower is better)", title="Final eval loss by routing")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out / "final_loss.png")


def _buckets(run: RunData) -> dict[int, float]:
    summary = run.summary or {}
    return {int(m.group(1)): float(v) for k, v in summary.items()
            if (m := TAIL_BUCKET.fullmatch(k)) and isinstance(v, (int, float))}


def tail_buckets(rows: list[Row], out: Path) -> Path | None:
    """Final loss per token-frequency bucket (0 = most frequent) and its difference from AdamW."""
    per_row = {}
    for row in rows:
        buckets: dict[int, list[float]] = {}
        for run in row.runs:
            for b, v in _buckets(run).items():
                buckets.setdefault(b, []).append(v)
        if buckets:
            per_row[row.group] = {b: sum(v) / len(v) for b, v in sorted(buckets.items())}
    if not per_row:
        return None
    adamw = {r.ffn_type: per_row.get(r.group) for r in rows if r.routing == "adamw"}
    color = colors(rows)
    with_delta = any(adamw.values())
    fig, axes = plt.subplots(1, 2 if with_delta else 1, figsize=(12 if with_delta else 7, 4.5), squeeze=False)
    for row in rows:
        curve = per_row.get(row.group)
        if not curve:
            continue
        axes[0, 0].plot(list(curve), list(curve.values()), marker="o", ms=3, color=color[row.group],
                        label=row.group)
        ref = adamw.get(row.ffn_type)
        if with_delta and ref:
            common = [b for b in curve if b in ref]
            axes[0, 1].plot(common, [curve[b] - ref[b] for b in common], marker="o", ms=3,
                            color=color[row.group], label=row.group)
    axes[0, 0].set(xlabel="frequency bucket (0 = most frequent tokens)", ylabel="final eval loss",
                   title="Loss by token-frequency bucket")
    legend_beside(axes[0, -1])
    if with_delta:
        axes[0, 1].axhline(0, color="black", lw=0.8)
        axes[0, 1].set(xlabel="frequency bucket (0 = most frequent tokens)", ylabel="loss - AdamW loss",
                       title="Difference from AdamW (same FFN type); below 0 = better")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, out / "tail_buckets.png")


def spectra(runs: list[RunData], rows: list[Row], out: Path) -> Path | None:
    """Spectral metrics of W_V, W_O, W_out over steps: the AdamW and full-Muon runs (else all runs)."""
    keys = [(g, m) for g in SPECTRA_GROUPS for m in SPECTRA_METRICS
            if any(f"spectra/{g}/{m}" in r.history for r in runs)]
    if not keys:
        return None
    contrast = {r.group for r in rows if r.routing in ("adamw", "muon-hidden")}
    shown = [r for r in runs if r.group in contrast] or runs
    groups = [g for g in SPECTRA_GROUPS if any(k[0] == g for k in keys)]
    metrics = [m for m in SPECTRA_METRICS if any(k[1] == m for k in keys)]
    color = colors(rows)
    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(3.2 * len(metrics), 2.6 * len(groups)),
                             squeeze=False)
    labelled = set()
    for i, g in enumerate(groups):
        for j, m in enumerate(metrics):
            ax = axes[i, j]
            if not any(f"spectra/{g}/{m}" in run.history for run in shown):
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
            for run in shown:
                series = run.history.get(f"spectra/{g}/{m}")
                if series:
                    steps, values = zip(*series, strict=True)
                    label = None if run.group in labelled else run.group
                    labelled.add(run.group)
                    ax.plot(steps, values, color=color.get(run.group, "gray"), lw=1.2, label=label)
            ax.set_title(f"{g}: {m}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(groups) - 1:
                ax.set_xlabel("step")
    fig.legend(loc="lower center", ncol=min(4, max(1, len(labelled))), fontsize=8)
    return _save(fig, out / "spectra.png", rect=(0, 0.06, 1, 1))


def qa_fta(runs: list[RunData], rows: list[Row], out: Path) -> Path | None:
    """QA first-token accuracy by frequency group at the end, and on the rarest group over steps."""
    def groups_of(run: RunData) -> dict[int, float]:
        return {int(m.group(1)): float(v) for k, v in (run.summary or {}).items()
                if (m := QA_GROUP.fullmatch(k)) and isinstance(v, (int, float))}

    finals = {row.group: [groups_of(r) for r in row.runs] for row in rows}
    over_time = [r for r in runs if r.history.get(QA_TAIL)]
    if not any(any(f) for f in finals.values()) and not over_time:
        return None
    color = colors(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in rows:
        per_seed = [f for f in finals[row.group] if f]
        if per_seed:
            js = sorted(per_seed[0])
            axes[0].plot(js, [sum(f.get(j, 0.0) for f in per_seed) / len(per_seed) for j in js], marker="o",
                         ms=3, color=color[row.group], label=row.group)
    axes[0].set(xlabel="frequency group (0 = most frequent people)", ylabel="first-token accuracy",
                title="QA first-token accuracy by frequency group (final)", ylim=(-0.02, 1.02))
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    labelled = set()
    for run in over_time:
        steps, values = zip(*run.history[QA_TAIL], strict=True)
        label = None if run.group in labelled else run.group
        labelled.add(run.group)
        axes[1].plot(steps, values, color=color.get(run.group, "gray"), label=label)
    axes[1].set(xlabel="step", ylabel="first-token accuracy", title="Rarest group over training",
                ylim=(-0.02, 1.02))
    for ax in axes:
        ax.grid(alpha=0.3)
        legend_beside(ax)
    return _save(fig, out / "qa_fta.png")


def tuning_curves(tunings: list[ArmTuning], sweep: dict[str, list], rows: list[Row],
                  out: Path) -> Path | None:
    """Final eval loss against each swept key's values (best over the other keys), one curve per arm;
    the chosen value is starred. Diverged points are drawn at the top edge as crosses."""
    if not tunings:
        return None
    color = colors(rows)
    keys = list(sweep)
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        finite = [loss for t in tunings if key in t.keys for _, loss in profile(t, key)
                  if math.isfinite(loss)]
        top = max(finite) if finite else 1.0
        for t in tunings:
            if key not in t.keys:
                continue
            points = profile(t, key)
            c = color.get(t.arm, "gray")
            ax.plot([v for v, _ in points], [loss if math.isfinite(loss) else top for _, loss in points],
                    marker="o", ms=4, color=c, label=t.arm)
            ax.scatter([v for v, loss in points if not math.isfinite(loss)],
                       [top for _, loss in points if not math.isfinite(loss)], marker="x", s=60, color=c)
            best = dict(points)[t.chosen[key]]
            ax.scatter([t.chosen[key]], [best], marker="*", s=180, color=c, edgecolor="black", zorder=5)
        values = [v for v in sweep[key] if isinstance(v, (int, float))]
        if values and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel="final eval loss (mean over tuning seeds)",
               title=f"Sweep of {key} (star: chosen; x: diverged)")
        ax.grid(alpha=0.3)
        legend_beside(ax)
    return _save(fig, out / "tuning.png")


_ISO_PANELS = ((TAIL_LOSS, "tail-bucket loss"), (TAIL_GAP, "tail − head gap"),
               (QA_TAIL, "QA first-token accuracy, rarest group"),
               (QA_MEAN, "QA first-token accuracy, mean over groups"))


def iso_loss_trajectories(rows: list[Row], arms: list[ArmAtTarget], loss: OverallLoss,
                          out: Path) -> Path | None:
    """Tail metrics against overall eval loss over each run's evals; the x axis runs in the direction of
    training (loss decreasing to the right), the dotted line is the iso-loss target. Every point is in
    the frame, the first evals' large losses included."""
    panels = [(m, label) for m, label in _ISO_PANELS
              if any(m in r.history for row in rows for r in row.runs)]
    return _against_loss(rows, arms, loss, panels, out / "iso_loss.png", log=False)


def sharpness_trajectories(rows: list[Row], arms: list[ArmAtTarget], loss: OverallLoss, metrics: list[str],
                           out: Path) -> Path | None:
    """Each group's normalized directional sharpness of the last update (`metrics`: the logged
    curvature/<group>/nds keys) against overall eval loss, as the iso-loss figure draws the tail: the
    read at the targets (`iso_loss.csv`) is where each curve crosses the dotted lines. Log scale: the
    optimizers' values differ by orders of magnitude (symmetric log where a non-convex direction gives a
    negative value)."""
    panels = [(m, f"{m.split('/')[1]}: uᵀHu / ‖u‖²") for m in metrics]
    return _against_loss(rows, arms, loss, panels, out / "sharpness.png", log=True, columns=4)


def _against_loss(rows: list[Row], arms: list[ArmAtTarget], loss: OverallLoss, panels: list[tuple[str, str]],
                  path: Path, log: bool, columns: int | None = None) -> Path | None:
    """One panel per (metric, label): the metric against overall loss over each run's evals (x reversed,
    so training goes right; dotted: the targets); seeds of a setting share a color; every point framed."""
    if not panels:
        return None
    color = colors(rows)
    targets = sorted({a.target for a in arms})
    ncols = min(columns or len(panels), len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols + 1.5, 4.5 * nrows), squeeze=False)
    for ax, (metric, label) in zip(axes.flat, panels, strict=False):
        labelled = set()
        curves = []
        for row in rows:
            for run in row.runs:
                overall = dict(run.history.get(loss.history, []))
                points = [(overall[s], v) for s, v in run.history.get(metric, []) if s in overall]
                if points:
                    curves.append((row, points))
        for row, points in curves:
            ax.plot(*zip(*points, strict=True), marker="o", ms=2, lw=1.1,
                    color=color.get(row.group, "gray"), ls="--" if row.longer else "-",
                    label=None if row.group in labelled else row.group)
            labelled.add(row.group)
        for target in targets:
            ax.axvline(target, color="black", ls=":", lw=1)
        xs = [x for _, points in curves for x, _ in points] + targets
        pad = 0.02 * (max(xs) - min(xs) or 1.0)
        ax.set_xlim(max(xs) + pad, min(xs) - pad)  # reversed: training goes right
        ys = [y for _, points in curves for _, y in points]
        if log and ys and min(ys) > 0:
            ax.set_yscale("log")
        elif log and ys:  # a non-convex direction gives a negative value: linear below the smallest |y|
            ax.set_yscale("symlog", linthresh=min(abs(y) for y in ys if y) or 1.0)
            ax.set_ylim(min(ys) * 1.5, max(max(ys) * 1.5, 0))  # min(ys) <= 0 here
        ax.set(xlabel=f"overall {loss.label} (training goes right)", ylabel=label,
               title=f"{label} vs overall loss")
        ax.grid(alpha=0.3)
        legend_beside(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return _save(fig, path)


def steps_to_target_bars(results: list[StepsToTarget], loss: OverallLoss, out: Path) -> Path | None:
    """Steps to the AdamW final loss per arm (mean, 95% t interval over the seeds that reach it)."""
    shown = [r for r in results if r.arm.steps is not None]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 1.5))
    labels = [r.arm.row.group for r in shown]
    stats = [r.arm.steps for r in shown]
    means = [s.mean for s in stats]
    # one seed has no interval: a zero-length error bar
    errors = [[s.mean - (s.ci95_low if s.ci95_low is not None else s.mean) for s in stats],
              [(s.ci95_high if s.ci95_high is not None else s.mean) - s.mean for s in stats]]
    ax.barh(labels, means, xerr=errors, color="tab:blue", alpha=0.7)
    for y, r in enumerate(shown):
        note = f" {r.speedup:.2f}x" if r.speedup else ""
        ax.text(r.arm.steps.mean, y, note + f"  ({len(r.arm.reached)}/{len(r.arm.runs)} seeds)",
                va="center", fontsize=7)
    for budget in {r.adamw_steps for r in shown}:
        ax.axvline(budget, color="black", ls=":", lw=1)
    ax.set(xlabel=f"steps to reach AdamW's final {loss.label} (dotted: AdamW's budget)",
           title="Steps to target (label: speed-up over AdamW)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out / "steps_to_target.png")


def annealed_curves(lineages: list[Lineage], targets: list[float], loss: OverallLoss, rows: list[Row],
                    out: Path) -> Path | None:
    """Each headline tail metric against the final loss of fully annealed models (final runs, cooldown
    branches, other budgets), one line per arm and seed; dotted: the targets the arms are read at."""
    panels = [(m, label) for m, label in _ISO_PANELS
              if any(m in p for lin in lineages for pts in lin.points.values() for _, p in pts)]
    if not panels:
        return None
    color = colors(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 1.5, 4.5), squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels, strict=True):
        for lin in lineages:
            for i, points in enumerate(lin.points.values()):
                known = [(x, m[metric]) for x, m in points if metric in m]
                if known:
                    ax.plot(*zip(*known, strict=True), marker="o", ms=3, lw=1,
                            color=color.get(lin.label, "gray"), label=lin.label if i == 0 else None)
        for target in targets:
            ax.axvline(target, color="black", ls=":", lw=1)
        ax.invert_xaxis()  # lower loss to the right, as training goes
        ax.set(xlabel=f"final {loss.label} of an annealed model", ylabel=label, title=f"{label}, annealed")
        ax.grid(alpha=0.3)
        legend_beside(ax)
    return _save(fig, out / "annealed.png")


def gains_across_studies(moved: list[Moved], labels: tuple[str, str], path: Path) -> Path | None:
    """One panel per compared metric: each arm's gain over the baseline in study A and in study B, with
    its 95% interval (the gains table's)."""
    metrics = list(dict.fromkeys(m.metric for m in moved))
    if not metrics:
        return None
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 0.5 * max(
        sum(m.metric == metric for m in moved) for metric in metrics) * rows + 2.5 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        shown = [m for m in moved if m.metric == metric]
        for k, (label, color) in enumerate(zip(labels, ("tab:blue", "tab:orange"), strict=True)):
            estimates = [m.a if k == 0 else m.b for m in shown]
            ys = [i + (0.2 if k == 0 else -0.2) for i in range(len(shown))]
            errors = [[e.diff - e.ci95[0] for e in estimates], [e.ci95[1] - e.diff for e in estimates]]
            ax.errorbar([e.diff for e in estimates], ys, xerr=errors, fmt="o", color=color, capsize=3,
                        label=label)
        ax.set_yticks(range(len(shown)), [m.arm for m in shown])
        ax.axvline(0, color="black", lw=1)
        ax.set(xlabel="gain over the baseline (baseline − arm)", title=metric)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    return _save(fig, path)
