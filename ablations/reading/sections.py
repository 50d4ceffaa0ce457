"""The report's statistics, tuning and "speed or inductive bias" sections: their CSV files, plots
and markdown (ablations/reading/report.py places them after the main table)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ablations.metric_names import DEFAULT_MARGINS, EVAL_LOSS, QA_MEAN, QA_TAIL, TAIL_LOSS, TRAIN_LOSS
from ablations.reading import plots
from ablations.reading.annealed import AnnealedRead, Lineage, annealed_reads, lineages
from ablations.reading.matched_loss import (
    MIN_EVALS,
    TRAIN,
    TRAIN_SMOOTHING,
    ArmAtTarget,
    OverallLoss,
    StepsToTarget,
    curvature_metrics,
    iso_loss,
    iso_targets,
    iso_tests,
    longer_adamw,
    overall_loss,
    steps_to_target,
    tail_metrics,
    too_few_evals,
)
from ablations.reading.rows import Row, RunData
from ablations.reading.stats import ALPHA, BOOTSTRAP_MIN_SEEDS, BOOTSTRAP_RESAMPLES
from ablations.reading.tables import (
    Table,
    annealed_pair_tests,
    annealed_table,
    equivalence_table,
    final_pair_tests,
    iso_pair_tests,
    iso_table,
    longer_table,
    markdown,
    pairs_table,
    per_seed_table,
    stats_table,
    steps_table,
    study_adjusted,
    tuning_table,
    write_table,
)
from ablations.running.grid import Run, Tune
from ablations.running.tuning import MAX_EXTENSIONS, ArmTuning, arm_of, sweep_of


def _image(path: Path | None, out: Path, title: str) -> str:
    return "" if path is None else f"![{title}]({path.relative_to(out).as_posix()})\n"


def statistics_section(rows: list[Row], pairs: Table, equivalence: Table, margins: dict[str, float],
                       n_tests: int, out: Path) -> list[str]:
    table = stats_table(rows)
    write_table(table, out / "stats.csv")
    if not any(stat_n > 1 for _, _, stat_n, *_ in table[1]):
        return []
    shown = (EVAL_LOSS, TAIL_LOSS, QA_TAIL, QA_MEAN, TRAIN_LOSS)
    headline = (pairs[0], [r for r in pairs[1] if r[0] in shown])
    parts = ["## Statistics over seeds\n", markdown(table),
             f"\nFor every setting with at least 2 seeds: mean, sample std and the 95% Student-t interval "
             "of the mean. *p vs AdamW / Muon*: two-sided t-test against the AdamW / full-Muon row of the "
             "same family — a **paired** t-test when both ran the same seeds (a seed fixes the "
             "initialization and the data order, so seed-matched runs share that noise), else **Welch's** "
             f"t-test; *(n.s.)*: not significant at {ALPHA}. The share of the Muon gain's interval is "
             f"Fieller's (the ratios the t-tests of the two gains cannot reject; none where the full gain "
             f"is not distinguishable from 0) with fewer than {BOOTSTRAP_MIN_SEEDS} seeds, else a "
             f"percentile bootstrap over seeds ({BOOTSTRAP_RESAMPLES} resamples; *share_ci_method*). A "
             "non-significant difference is not evidence of no difference: see the equivalence tests.\n",
             "### Every pair of settings\n",
             "Final eval (or training) loss, tail-bucket loss and QA accuracy (all final metrics: "
             "`pairwise.csv`): the same t-tests between every two settings of a family, with the "
             "difference's 95% interval; *p_bh*: Benjamini–Hochberg adjusted over the pairs of a metric; "
             f"*p_bh_study*: adjusted over the study's whole family of {n_tests} tests (every metric, pair "
             "and target, the iso-loss pairs included): read claims across the study on this one.\n",
             markdown(headline) if headline[1] else "No pair has 2 or more seeds on both sides.\n"]
    if equivalence[1]:
        listed = ", ".join(f"{m} ±{v:g}" for m, v in margins.items())
        parts += ["### Equivalence of the pairs not found different\n",
                  "A pair whose difference is not significant is not thereby equal. Each such pair gets two "
                  "one-sided t-tests (TOST) against an equivalence margin (`equivalence_margin:` in the grid "
                  f"file; here {listed}): *equivalent within ±m* when TOST p < {ALPHA} (the 90% interval of "
                  "the difference lies inside ±m), else *inconclusive* (`equivalence.csv`).\n",
                  markdown(equivalence)]
    return parts


# A grid.json from before `tune.method` and `tune.extend_edges`: its sweep was the full product of the
# keys' values, never extended.
V1_TUNE = {"method": "grid", "extend_edges": False}


def _run_of(entry: dict[str, Any]) -> Run:
    names = {f.name for f in dataclasses.fields(Run)}
    return Run(**{k: v for k, v in entry.items() if k in names})


def recorded_sweep(manifest: dict[str, Any], runs_dir: Path) -> tuple[Tune, list[ArmTuning] | None]:
    """The grid's tuning settings and its sweep's outcome (None while unfinished), replayed from the
    arms grid.json records and the run directories."""
    tune = Tune(**{**V1_TUNE, **manifest["tune"]})
    if "tuning_arms" in manifest:
        arm_keys = [(_run_of(entry), entry["keys"]) for entry in manifest["tuning_arms"]]
    else:  # older grid.json: each arm from its first sweep run, without its tuned values and seed
        firsts: dict[str, Run] = {}
        for entry in manifest.get("tuning_runs", []):
            firsts.setdefault(entry["group"], _run_of(entry))
        arm_keys = [(arm_of(run, list(tune.keys)), [k for k in tune.keys if k in run.overrides])
                    for run in firsts.values()]
    return tune, sweep_of(arm_keys, tune, runs_dir, manifest.get("base")).tunings


def tuning_section(runs_dir: Path, manifest: dict[str, Any], rows: list[Row], out: Path) -> list[str]:
    """tuning.csv, tuning.png and their section, for a grid with `tune:`."""
    if "tune" not in manifest:
        return []
    tune, tunings = recorded_sweep(manifest, runs_dir)
    if tunings is None:
        return ["## Tuning\n", "The tuning sweep has unfinished runs: rerun the grid to finish it.\n"]
    sweep, metric = tune.keys, tune.metric
    write_table(tuning_table(tunings, metric), out / "tuning.csv")
    chosen = "\n".join(f"- `{t.arm}`: " + ", ".join(f"{k} = {v}" for k, v in t.chosen.items())
                       for t in tunings)
    warnings = [w for t in tunings for w in t.warnings()]
    how = ("one key at a time (coordinate descent, one pass in the order listed: each key swept with the "
           "keys before it at their chosen values and those after it at their defaults)"
           if tune.method == "coordinate" else "at every combination of the values")
    extend = (" A best value at the edge of the values tried was tried beyond it, at the sweep's ratio, "
              f"up to {MAX_EXTENSIONS} times per key." if tune.extend_edges else "")
    parts = ["## Tuning\n",
             f"Each arm was tuned on {', '.join(f'`{k}` {v}' for k, v in sweep.items())} {how}, with "
             f"seed(s) {tune.seeds}; each point ranks by its mean `{metric}` over those seeds (a diverged "
             f"run counts as +inf; ties go to the smaller value).{extend} "
             + ("The tuning seeds are also evaluation seeds (`tune.reuse_tuning_seeds: true`): each arm's "
                "sweep run at the chosen values is reused as a result, which biases each arm's mean in its "
                "favour. " if tune.reuse_tuning_seeds else "The tuning seeds are disjoint from the "
                "evaluation seeds: no result was chosen on. ")
             + "Chosen:\n",
             chosen + "\n"]
    if warnings:
        parts.append("**Warning**: " + "; ".join(warnings) + ".\n")
    parts.append(_image(plots.tuning_curves(tunings, sweep, rows, out), out, "Tuning sweep"))
    return parts


def matched_loss_sections(rows: list[Row], loss: OverallLoss, arms: list[ArmAtTarget], metrics: list[str],
                          iso_pairs: Table, steps: list[StepsToTarget], out: Path,
                          targets: list[tuple[float | None, str]]) -> list[str]:
    """iso_loss.csv, steps_to_target.csv and longer_adamw.csv, with their plots and sections."""
    parts = [] if loss is not TRAIN else [
        "*These runs log no eval loss (data without a validation split, such as bios): the analyses "
        "below match arms on the training loss (the mean of each `train.log_every` window), smoothed by a "
        f"centred mean over {TRAIN_SMOOTHING} windows and read at the steps of the runs' evals, the "
        "cadence of the QA and tail metrics it is matched with.*\n"]
    sparse = too_few_evals([r for row in rows for r in row.runs], loss)
    if sparse:
        counts = sorted(set(sparse.values()))
        parts.append(
            f"**Warning: too few evals for the analyses below.** {len(sparse)} run(s) log the {loss.label} "
            f"only {'/'.join(map(str, counts))} times (fewer than {MIN_EVALS}; e.g. "
            f"`{next(iter(sparse))}`): each read at a target loss is interpolated linearly between evals "
            "far apart (*eval_bracket_steps*, *n_evals*), so the steps and tail values there are rough. "
            "Rerun with a smaller `train.eval_every` for reads you can rely on.\n")
    kinds = {t: kind for t, kind in targets if t is not None}
    iso = iso_table(arms, iso_tests(arms), metrics, kinds)
    write_table(iso, out / "iso_loss.csv")
    if arms:
        listed = ", ".join(f"{t} ({kind})" for t, kind in kinds.items())
        which = f"each target ({listed})" if kinds else (
            f"the highest final {loss.label} of any run of the family, which every run reaches")
        provenance = ("A *pre-registered* target was declared in the grid file "
                      "(`analysis: {iso_loss: [...]}`) before any result; an *exploratory* one was given "
                      "on the report's command line after the results were seen: its p-values are "
                      "descriptive only. "
                      if kinds else "")
        parts += ["## Iso-loss: the tail at matched overall loss\n",
                  f"Each arm's tail metrics at the step where its {loss.label} first reaches {which}, "
                  "interpolated linearly between the two evals around that step (*eval_bracket_steps*: "
                  "the widest such interval; *n_evals*: the fewest evals of a seed; a run already below "
                  "the target at its first eval, or that never reaches it, is reported, not "
                  "extrapolated). If an arm is only faster, its tail here is AdamW's within noise (only "
                  "an *equivalent* verdict in `equivalence.csv` says so); if it is biased toward the tail, "
                  "its tail loss is lower (and QA tail accuracy higher) at the same overall loss. p: t-test "
                  f"against AdamW at the same target. {provenance}\n", markdown(iso),
                  "Between every two arms at the target (paired or Welch t-test, Benjamini–Hochberg "
                  "adjusted per metric and over the study; `iso_pairwise.csv`):\n",
                  markdown(iso_pairs) if iso_pairs[1] else "No two arms have 2 seeds or more there.\n",
                  _image(plots.iso_loss_trajectories(rows, arms, loss, out), out, "Iso-loss trajectories")]
        sharpness = curvature_metrics(metrics)
        if sharpness:
            parts += ["*curvature_<group>_nds*: the normalized directional sharpness uᵀHu/‖u‖² of each "
                      "group's last update u on a fixed validation batch (`metrics.curvature_every`), read "
                      "at the targets like the tail: lower means the update runs along flatter directions "
                      "of the loss, the curvature account of Muon's advantage (arXiv 2606.04662). Its pair "
                      "tests are in `iso_pairwise.csv`, inside the study-wide adjustment.\n",
                      _image(plots.sharpness_trajectories(rows, arms, loss, sharpness, out), out,
                             "Directional sharpness against overall loss")]
    steps_tab = steps_table(steps)
    write_table(steps_tab, out / "steps_to_target.csv")
    if steps:
        parts += ["## Steps to AdamW's final loss\n",
                  f"The steps each arm needs to reach its family's AdamW mean final {loss.label} "
                  "(interpolated between evals; mean and 95% t interval over the seeds; where some seeds "
                  "never reach it, *≥ N (k of n seeds)*: a lower bound with those seeds counted at their "
                  "whole budget, and no speed-up); *speedup_vs_adamw* "
                  "= AdamW's step budget / that mean. Caveat: the arms reach the target at different "
                  "points of their learning-rate schedules.\n", markdown(steps_tab),
                  _image(plots.steps_to_target_bars(steps, loss, out), out, "Steps to target")]
    longer = longer_adamw(rows, loss)
    if longer:
        longer_tab = longer_table(longer)
        write_table(longer_tab, out / "longer_adamw.csv")
        parts += ["## Longer AdamW against Muon at matched loss\n",
                  f"The AdamW arm trained for more steps, read where its {loss.label} first reaches each "
                  "Muon arm's mean final loss (*_longer*), next to that Muon arm's final tail metrics "
                  "(*_muon*); p: t-test between the two. If AdamW given more steps matches Muon's tail at "
                  "the same overall loss, Muon's tail advantage is speed; if not, it is a bias.\n",
                  markdown(longer_tab)]
    return parts


def annealed_section(reads: list[AnnealedRead], pairs: Table, found: list[Lineage], loss: OverallLoss,
                     rows: list[Row], out: Path) -> list[str]:
    """annealed.csv, annealed_pairwise.csv and annealed.png, for arms with annealed points to read."""
    if not reads:
        return []
    table = annealed_table(reads)
    write_table(table, out / "annealed.csv")
    return ["## Tail at matched annealed loss\n",
            "Every point here is a model that finished its schedule: each final run, its cooldown branches "
            "(`cooldowns:`, decayed from its stable phase) and the same setting's runs at other budgets "
            f"(`budgets:`). Per arm and seed the tail metrics are interpolated linearly in the final "
            f"{loss.label} between the two annealed points around each target (never extrapolated; "
            "*n_reached*: the seeds whose points bracket it, *n_points*: the fewest points of a seed). "
            "Unlike the iso-loss reads above, no arm is read mid-decay: if an arm is only faster, its tail "
            "here is AdamW's within noise (only an *equivalent* verdict in `equivalence.csv` says so). "
            "p: t-test against AdamW at the same target.\n", markdown(table),
            "Between every two arms (Benjamini–Hochberg per metric and target, and over the study; "
            "`annealed_pairwise.csv`):\n",
            markdown(pairs) if pairs[1] else "No two arms have 2 seeds or more there.\n",
            _image(plots.annealed_curves(found, sorted({r.target for r in reads}), loss, rows, out), out,
                   "Tail against annealed loss")]


def analyses(runs_dir: Path, rows: list[Row], manifest: dict[str, Any], out: Path,
             iso_target: float | None, branches: list[RunData]) -> list[str]:
    """Write the statistics, tuning and matched-loss files under `out`; return their report sections.

    The pair tests of the final metrics, at the iso-loss targets and at matched annealed loss form one
    family for the study-wide Benjamini–Hochberg adjustment and the equivalence tests.
    """
    loss = overall_loss(rows)
    targets = iso_targets(manifest.get("analysis", {}).get("iso_loss", []), iso_target)
    metrics = tail_metrics([r for row in rows for r in row.runs])
    arms, at_target = [], []
    for target, kind in targets:
        at = iso_loss(rows, loss, target)
        arms += at
        at_target += iso_pair_tests(at, metrics, "" if target is None else kind)
    found = lineages(rows, branches, loss.final)
    reads = annealed_reads(found, targets)
    annealed = annealed_pair_tests(reads)
    steps = steps_to_target(rows, loss)
    finals = final_pair_tests(rows)
    study = study_adjusted(finals + at_target + annealed)
    n_final, n_iso = len(finals), len(at_target)
    pairs = pairs_table(finals, study[:n_final])
    iso_pairs = pairs_table(at_target, study[n_final:n_final + n_iso])
    annealed_pairs = pairs_table(annealed, study[n_final + n_iso:])
    write_table(pairs, out / "pairwise.csv")
    write_table(iso_pairs, out / "iso_pairwise.csv")
    if reads:
        write_table(annealed_pairs, out / "annealed_pairwise.csv")
    margins = {**DEFAULT_MARGINS, **manifest.get("equivalence_margin", {})}
    equivalence = equivalence_table(finals + at_target + annealed, margins)
    write_table(equivalence, out / "equivalence.csv")
    write_table(per_seed_table(rows, arms, steps, reads), out / "per_seed.csv")
    return (statistics_section(rows, pairs, equivalence, margins, len(study), out)
            + tuning_section(runs_dir, manifest, rows, out)
            + matched_loss_sections(rows, loss, arms, metrics, iso_pairs, steps, out, targets)
            + annealed_section(reads, annealed_pairs, found, loss, rows, out))
