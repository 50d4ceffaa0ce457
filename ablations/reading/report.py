"""`python -m ablations report RUNS_DIR`: table.md, table.csv, PNG plots and report.md from run directories.

Only the files train.py writes are read (its config, metrics log and summary, through RunDir) plus
the runner's grid.json for paper references: wandb is never needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ablations.metric_names import EVAL_LOSS
from ablations.reading import plots
from ablations.reading.rows import ADAMW, FULL_MUON, Row, RunData, aggregate, load_runs, read_manifest
from ablations.reading.sections import analyses
from ablations.reading.stats import Stat
from ablations.reading.tables import PValue, Table, markdown, md_cell, write_table
from ablations.running.grid import EVAL_EVERY_KEY, STEPS_KEY
from common.errors import MissingFileError
from common.rundir import RunDir
from metrics import names


def _p(row: Row, vs: str) -> PValue | None:
    test = (row.vs_adamw if vs == "adamw" else row.vs_muon).get(EVAL_LOSS)
    return None if test is None else PValue(test.p)


def _tests(row: Row) -> str | None:
    kinds = {t.test for t in (row.vs_adamw.get(EVAL_LOSS), row.vs_muon.get(EVAL_LOSS)) if t}
    return " / ".join(sorted(kinds)) or None


def _tuned(row: Row) -> str | None:
    return " ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in row.tuned.items()) or None

# table.csv columns: (header, value of a row). Missing values are empty cells.
CSV_COLUMNS: list[tuple[str, Callable[[Row], object]]] = [
    ("run", lambda r: r.group),
    ("routing", lambda r: r.routing),
    ("ffn_type", lambda r: r.ffn_type),
    ("seeds", lambda r: " ".join(map(str, r.seeds))),
    ("eval_loss", lambda r: r.eval_loss and r.eval_loss.mean),
    ("eval_loss_std", lambda r: r.eval_loss and r.eval_loss.std),
    ("n_seeds", lambda r: r.eval_loss and r.eval_loss.n),
    ("ci95_low", lambda r: r.eval_loss and r.eval_loss.ci95_low),
    ("ci95_high", lambda r: r.eval_loss and r.eval_loss.ci95_high),
    ("p_vs_adamw", lambda r: _p(r, "adamw")),
    ("p_vs_muon", lambda r: _p(r, "muon")),
    ("test", _tests),
    ("delta_vs_adamw", lambda r: r.delta_vs_adamw),
    ("share_recovered", lambda r: r.share_recovered),
    ("share_ci95_low", lambda r: r.share_ci95 and r.share_ci95[0]),
    ("share_ci95_high", lambda r: r.share_ci95 and r.share_ci95[1]),
    ("share_ci_method", lambda r: r.share_ci_method),
    ("tail_loss", lambda r: r.tail_loss and r.tail_loss.mean),
    ("tail_gap", lambda r: r.tail_gap and r.tail_gap.mean),
    ("qa_tail_fta", lambda r: r.qa_tail_fta and r.qa_tail_fta.mean),
    ("qa_tail_fta_std", lambda r: r.qa_tail_fta and r.qa_tail_fta.std),
    ("paper_eval_loss", lambda r: r.paper_ref.get("eval_loss")),
    ("paper_qa_tail_fta", lambda r: r.paper_ref.get("qa_tail_fta")),
    ("steps", lambda r: r.steps),
    ("tuned", _tuned),
]


def write_csv(rows: list[Row], path: Path) -> Path:
    return write_table(([name for name, _ in CSV_COLUMNS], [[get(row) for _, get in CSV_COLUMNS]
                                                           for row in rows]), path)


def _pm(stat: Stat | None, digits: int = 4) -> str:
    if stat is None:
        return ""
    return f"{stat.mean:.{digits}f}" + ("" if stat.std is None else f" ± {stat.std:.{digits}f}")


def _ci(stat: Stat | None) -> str:
    return "" if stat is None or stat.ci95_low is None else f"[{stat.ci95_low:.4f}, {stat.ci95_high:.4f}]"


def _num(value: float | None, fmt: str) -> str:
    if value is None:
        return ""
    text = format(value, fmt)
    # a value that rounds to zero is shown without its sign ("0%", not "-0%")
    return text[1:] if text[0] in "+-" and not any(c in "123456789" for c in text) and fmt[0] != "+" else text


# table.md columns: (header, cell); a column empty in every row is left out (e.g. QA outside bios grids).
MD_COLUMNS: list[tuple[str, Callable[[Row], str]]] = [
    ("run", lambda r: r.group),
    ("routing", lambda r: r.routing),
    ("FFN", lambda r: r.ffn_type),
    ("seeds", lambda r: ",".join(map(str, r.seeds))),
    ("eval loss", lambda r: _pm(r.eval_loss)),
    ("Δ vs AdamW", lambda r: _num(r.delta_vs_adamw, "+.4f")),
    ("share of Muon gain", lambda r: _num(r.share_recovered, ".0%")),
    ("share 95% CI", lambda r: r.share_ci95 and f"[{_num(r.share_ci95[0], '.0%')}, "
                               f"{_num(r.share_ci95[1], '.0%')}]" or ""),
    ("loss 95% CI", lambda r: _ci(r.eval_loss)),
    ("p vs AdamW", lambda r: md_cell(_p(r, "adamw"))),
    ("p vs Muon", lambda r: md_cell(_p(r, "muon"))),
    ("tail loss", lambda r: _pm(r.tail_loss)),
    ("tail − head gap", lambda r: _pm(r.tail_gap)),
    ("QA tail FTA", lambda r: _pm(r.qa_tail_fta, 3)),
    ("paper loss", lambda r: _num(r.paper_ref.get("eval_loss"), ".4f")),
    ("paper tail FTA", lambda r: _num(r.paper_ref.get("qa_tail_fta"), ".3f")),
    ("steps", lambda r: str(r.steps) if r.longer else ""),
    ("tuned", lambda r: _tuned(r) or ""),
]


def _md_table(rows: list[Row]) -> Table:
    """table.md's columns and cells (analysis_tables.markdown leaves out the columns empty in every row)."""
    return [name for name, _ in MD_COLUMNS], [[get(row) for _, get in MD_COLUMNS] for row in rows]


def markdown_table(rows: list[Row]) -> str:
    return markdown(_md_table(rows))


# How to read a table.md column, for the columns that need it (shown only when the column is).
LEGEND: list[tuple[tuple[str, ...], str]] = [
    (("Δ vs AdamW",), f"*Δ vs AdamW*: final eval loss minus that of the `{ADAMW}` run of the same FFN type "
                      "and settings (negative = better than AdamW)."),
    (("share of Muon gain",), "*Share of Muon gain*: (L_AdamW − L_run) / "
                              f"(L_AdamW − L_{FULL_MUON}), i.e. how much of the improvement of Muon on all "
                              "hidden matrices this routing recovers (100% = all of it)."),
    (("share 95% CI",), "*Share 95% CI*: Fieller's interval of that ratio with fewer than 10 seeds (open "
                        "when the full gain is not distinguishable from 0), else a percentile bootstrap."),
    (("tail loss", "tail − head gap"), "*Tail loss/gap*: loss on the rarest token bucket and its "
                                       "difference from the most frequent bucket."),
    (("paper loss", "paper tail FTA"), "*Paper*: the reference value from arXiv 2509.26030 (160M model, "
                                       "10k steps on FineWeb; tail FTA: rarest of 15 groups), to compare "
                                       "orderings with, not absolute numbers."),
    (("p vs AdamW", "p vs Muon"), "*p*: t-test of the final eval loss against that reference (see "
                                  "Statistics); *(n.s.)*: not significant at 0.05."),
    (("tuned",), "*Tuned*: the arm's chosen values."),
]


def table_legend(rows: list[Row]) -> str:
    """How to read the columns table.md shows (none for a column it leaves out)."""
    header, cells = _md_table(rows)
    shown = {name for i, name in enumerate(header) if any(c[i] for c in cells)}
    return " ".join(text for headers, text in LEGEND if shown & set(headers))


FIGURES = [
    ("loss_curves", "Eval loss curves",
     "Every run's eval loss over steps (right: the second half of training, zoomed); seeds of one "
     "setting share a color, unfinished runs are dotted. "
     "Curves that separate early and stay apart are a real difference; crossing curves near the end "
     "mean the final numbers depend on when training stops."),
    ("final_loss", "Final eval loss by routing",
     "Mean final eval loss per setting (error bar: std over seeds), best at the top. The paper's "
     "ordering at 160M is Muon (all hidden) < VO+FFN < VO+W_out < VO+W_in < QK ≈ AdamW."),
    ("tail_buckets", "Loss by token-frequency bucket",
     "Left: final loss in each token-frequency bucket (0 = most frequent tokens; with the default "
     "metrics.tail_mode=share each bucket holds about the same share of the training tokens). Right: "
     "difference from AdamW with the same FFN type. If Muon's "
     "advantage lives in tail (rare-token) learning, its curve drops further below 0 towards the tail."),
    ("spectra", "Spectral isotropy of W_V, W_O, W_out",
     "Singular-value statistics of the weights over training (mean over layers) for the AdamW and "
     "all-hidden-Muon runs. Muon's weights are expected to be more isotropic: higher normalized SVD "
     "entropy and effective rank, lower top-10 energy and Q75/Q25 ratio."),
    ("qa_fta", "QA first-token accuracy by frequency group",
     "Biography QA: first-token accuracy per person-frequency group at the end (left; 0 = most "
     "frequent people) and on the rarest group over training (right). The paper's finding: all "
     "optimizers learn the frequent people; Muon and VO+FFN also learn the rare ones, AdamW and QK do not."),
]


def as_run(runs: list[RunData], overrides: dict[str, Any]) -> str:
    """What the runs did, from their configs and logs (the grid's description may predate an override):
    steps, eval cadence, evals per run, and the overrides given to `python -m ablations run`."""
    if not runs:
        return ""

    def span(values: set[int]) -> str:
        return "/".join(map(str, sorted(values)))

    steps = span({r.steps for r in runs})
    every = span({int(r.config[EVAL_EVERY_KEY]) for r in runs if EVAL_EVERY_KEY in r.config})
    evals = span({len(r.history.get(names.EVAL_LOSS, [])) for r in runs})
    cadence = f", an eval every {every} steps" if every else ""
    text = f"As run: {steps} steps{cadence}, {evals} evals per run."
    if overrides:
        text += " Overrides of every run: " + ", ".join(f"`{k}={v}`" for k, v in overrides.items())
        if STEPS_KEY in overrides and EVAL_EVERY_KEY not in overrides:
            text += f" (each run's `{EVAL_EVERY_KEY}` scaled with `{STEPS_KEY}`)"
        text += "."
    return text + "\n"


def report_markdown(runs_dir: Path, runs: list[RunData], rows: list[Row], images: dict[str, Path],
                    out: Path, grid: dict, sections: list[str]) -> str:
    """report.md: what was run, the table, the figures with how to read them, the analyses
    (`sections`), diverged and unfinished runs."""
    title = grid.get("name") or runs_dir.name
    done = sum(r.summary is not None for r in runs)
    parts = [f"# Ablation report: {title}\n",
             f"{grid['description'].strip()}\n" if grid.get("description") else "",
             as_run(runs, grid.get("overrides", {})),
             f"Runs directory `{runs_dir}`: {len(runs)} runs, {done} finished, {len(rows)} settings "
             "(seeds pooled: mean ± std). Regenerate with `python -m ablations report "
             f"{runs_dir}`.\n",
             "## Results\n",
             markdown_table(rows) if rows else "No run has finished yet.\n",
             f"\n{table_legend(rows)}\n" if rows else ""]
    for key, heading, how_to_read in FIGURES:
        if key in images:
            parts += [f"## {heading}\n", f"![{heading}]({images[key].relative_to(out).as_posix()})\n",
                      f"{how_to_read}\n"]
    parts += sections
    diverged = [r.name for r in runs if r.summary is None and r.diverged]
    if diverged:
        parts += ["## Diverged runs\n",
                  "Stopped on a non-finite training loss (diverged.json; the grid does not rerun them); "
                  "in no row or statistic: " + ", ".join(f"`{n}`" for n in diverged) + "\n"]
    unfinished = [r.name for r in runs if r.summary is None and not r.diverged]
    if unfinished:
        parts += ["## Unfinished runs\n",
                  "No summary yet (still running, failed or interrupted; rerunning the grid "
                  "resumes them): " + ", ".join(f"`{n}`" for n in unfinished) + "\n"]
    return "\n".join(p for p in parts if p)


def default_out(runs_dir: Path) -> Path:
    """RUNS_DIR/report, or for a single run directory <run>_report beside it: a run is never written to."""
    return runs_dir.with_name(f"{runs_dir.name}_report") if RunDir(runs_dir).exists() else runs_dir / "report"


def build_report(runs_dir: Path, out: Path | None = None, iso_loss: float | None = None) -> Path:
    """Write the tables, plots and report.md for the runs under runs_dir; returns report.md's path.

    `iso_loss`: the target loss of the iso-loss analysis (default: the highest final loss of a family).
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise MissingFileError(f"runs directory {runs_dir} does not exist; give the --out directory of "
                               "`python -m ablations run`")
    out = Path(out) if out else default_out(runs_dir)
    manifest = read_manifest(runs_dir)
    every = load_runs(runs_dir)
    runs = [r for r in every if r.role == "final"]  # the sweep and the cooldown branches have their sections
    rows = aggregate(runs, tuple(manifest.get("tune", {}).get("keys", ())))
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "table.csv")
    (out / "table.md").write_text(markdown_table(rows))
    figures = {
        "loss_curves": plots.loss_curves(runs, rows, out),
        "final_loss": plots.final_loss_bars(rows, out),
        "tail_buckets": plots.tail_buckets(rows, out),
        "spectra": plots.spectra(runs, rows, out),
        "qa_fta": plots.qa_fta(runs, rows, out),
    }
    images = {k: p for k, p in figures.items() if p is not None}
    sections = analyses(runs_dir, rows, manifest, out, iso_loss, [r for r in every if r.role == "cooldown"])
    report = out / "report.md"
    report.write_text(report_markdown(runs_dir, runs, rows, images, out, manifest, sections))
    return report
