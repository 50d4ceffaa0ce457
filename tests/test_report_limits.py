"""Reports that know their limits: the header says what was run, a shorter grid keeps its eval
cadence, sparse evals are warned about, plots frame all their data; the grid's output in a pipe."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from ablations.reading import plots
from ablations.reading.report import build_report
from ablations.running.grid import load_grid, with_overrides
from ablations.running.runner import Outcome, plan_lines, print_outcomes
from common.console import console
from common.rundir import RunDir


def fake_run(root: Path, name: str, muon: str, seed: int, final: float, evals: list[int],
             steps: int = 100) -> None:
    """A finished run directory: eval loss from 8.33 at step 0 falling to `final`, with tail losses."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(
        f"model: {{preset: tiny, ffn_type: swiglu}}\noptim: {{muon: '{muon}', base: adamw, adamw_lr: 0.01}}\n"
        f"train: {{steps: {steps}, eval_every: {evals[1] - evals[0]}, seed: {seed}, resume: auto}}\n"
        f"run: {{name: {name}, dir: {d}}}\n")
    events = []
    for s in evals:
        loss = 8.33 + (final - 8.33) * (s / steps) ** 0.5
        events.append({"step": s, "eval/loss": loss, "eval/tail/tail_loss": loss + 3.0, "eval/tail/gap": 2.0})
    (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (d / "summary.json").write_text(json.dumps({"final/eval_loss": final, "eval/tail/tail_loss": final + 3,
                                                "eval/tail/gap": 2.0}))


def make_grid(root: Path, evals: list[int], overrides: dict | None = None) -> Path:
    for seed in (0, 1):
        fake_run(root, f"adamw_s{seed}", "none", seed, 4.9 + seed / 100, evals)
        fake_run(root, f"muon_s{seed}", "hidden", seed, 4.4 + seed / 100, evals)
    (root / "grid.json").write_text(json.dumps({"name": "smoke+abc", "description": "300 steps of 16x128",
                                                "overrides": overrides or {}}))
    return root


def test_header_states_what_was_run_and_the_overrides(tmp_path):
    runs = make_grid(tmp_path / "runs", [0, 25, 50, 75, 100], {"train.steps": 100})
    text = build_report(runs).read_text()
    assert ("As run: 100 steps, an eval every 25 steps, 5 evals per run. Overrides of every run: "
            "`train.steps=100` (each run's `train.eval_every` scaled with `train.steps`).") in text


def test_too_few_evals_are_warned_and_counted(tmp_path):
    sparse = build_report(make_grid(tmp_path / "sparse", [0, 100])).read_text()
    assert ("**Warning: too few evals for the analyses below.** 4 run(s) log the eval loss only 2 times"
            in sparse)
    with (tmp_path / "sparse" / "report" / "steps_to_target.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["n_evals"] for r in rows} == {"2"} and {r["eval_bracket_steps"] for r in rows} == {"100"}
    dense = build_report(make_grid(tmp_path / "dense", list(range(0, 101, 10)))).read_text()
    assert "too few evals" not in dense


def test_plots_frame_all_their_data(tmp_path, monkeypatch):
    seen = {}
    save = plots._save

    def record(fig, path, rect=(0, 0, 1, 1)):
        # lines in data coordinates (axvline/axhline span the axes in axes coordinates)
        seen[path.name] = [(ax.get_xlim(), ax.get_ylim(), [line for line in ax.get_lines()
                                                           if line.get_transform() == ax.transData])
                           for ax in fig.axes]
        return save(fig, path, rect)

    monkeypatch.setattr(plots, "_save", record)
    build_report(make_grid(tmp_path / "runs", [0, 20, 40, 60, 80, 100]))
    assert {"loss_curves.png", "iso_loss.png", "final_loss.png"} <= set(seen)
    assert all(lines for _, _, lines in seen["iso_loss.png"] + seen["loss_curves.png"])
    for name, axes in seen.items():
        for xlim, ylim, lines in axes:
            for line in lines:
                xs, ys = line.get_xdata(), line.get_ydata()
                for x, y in zip(xs, ys, strict=True):
                    assert min(xlim) <= x <= max(xlim), (name, x, xlim)
                    assert min(ylim) <= y <= max(ylim), (name, y, ylim)
    (iso_xlim, _, _), = seen["iso_loss.png"][:1]
    assert max(iso_xlim) >= 8.33  # the step-0 points are inside the frame


def test_overriding_steps_scales_the_eval_cadence():
    grid = load_grid("smoke")  # 300 steps, an eval every 50
    short = with_overrides(grid, ["train.steps=60"])
    assert {r.overrides["train.eval_every"] for r in short.runs} == {10}
    assert short.overrides == {"train.steps": 60}
    # a new directory: not the one the same override had before its cadence was scaled
    unscaled = hashlib.sha256(json.dumps({"train.steps": 60}, sort_keys=True).encode()).hexdigest()[:6]
    assert short.name.startswith("smoke+") and short.name != f"smoke+{unscaled}"
    kept = with_overrides(grid, ["train.steps=60", "train.eval_every=30"])
    assert {r.overrides["train.eval_every"] for r in kept.runs} == {30}


def test_plan_says_a_stopped_run_will_resume(tmp_path):
    grid = load_grid("smoke")
    out = tmp_path / "out"
    stopped = RunDir(out / grid.runs[0].name)
    stopped.path.mkdir(parents=True)
    stopped.config.write_text("{}")
    stopped.stop_marker.write_text("{}")
    lines = plan_lines(grid, out)
    assert "[interrupted, will resume]" in next(line for line in lines if grid.runs[0].name in line)
    assert "[to run]" in next(line for line in lines if grid.runs[1].name in line)


def test_results_table_in_a_pipe_keeps_long_lines_and_names_the_logs(tmp_path, capsys):
    out = tmp_path / ("a-very-long-directory-name-" * 4) / "grid"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "adamw.log").write_text("...")
    outcomes = [Outcome("adamw", "done", 0, out / "logs" / "adamw.log", 12.0),
                Outcome("muon", "skipped", None, out / "logs" / "muon.log", 0.0)]
    print_outcomes(outcomes, out, console())  # stdout is captured: not a terminal
    text = capsys.readouterr().out
    assert f"report: python -m ablations report {out}" in text  # one line, copy-pasteable
    assert "logs/adamw.log" in next(line for line in text.splitlines() if "adamw" in line)


@pytest.fixture(autouse=True)
def _no_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: False, raising=False)


def test_a_single_run_report_goes_beside_the_run(tmp_path):
    runs = make_grid(tmp_path / "runs", [0, 50, 100])
    before = sorted(p.name for p in (runs / "muon_s0").iterdir())
    report = build_report(runs / "muon_s0")
    assert report == runs / "muon_s0_report" / "report.md"
    assert sorted(p.name for p in (runs / "muon_s0").iterdir()) == before


def test_the_table_legend_describes_only_the_columns_shown(tmp_path):
    text = build_report(make_grid(tmp_path / "runs", [0, 50, 100])).read_text()
    legend = next(line for line in text.splitlines() if line.startswith("*Δ vs AdamW*"))
    assert "*Share of Muon gain*" in legend and "*Tail loss/gap*" in legend
    assert "*Paper*" not in legend and "*Tuned*" not in legend  # no paper reference, no tuning here


def test_layer_plots_have_whole_layer_ticks_and_legends_beside(tmp_path, monkeypatch):
    from metrics import spectra_report
    from metrics.spectra import METRICS

    seen = {}
    monkeypatch.setattr(spectra_report, "_save", lambda fig, path: seen.setdefault("fig", fig) and path)
    metrics = {f"spectra/{g}/layer{i}/{m}": 0.5 + i / 10
               for g in ("v", "o") for i in range(3) for m in METRICS}
    spectra_report.plot_layers(spectra_report.Source("run", None, metrics=metrics), ("v", "o"), tmp_path)
    fig = seen["fig"]
    fig.canvas.draw()
    for ax in fig.axes:
        assert all(float(t).is_integer() for t in ax.get_xticks())
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legends) == 1 and legends[0].get_bbox_to_anchor().x0 >= legends[0].axes.bbox.x1
