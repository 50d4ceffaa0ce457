"""Ablation statistics: scipy-backed intervals and tests, tuning sweeps, iso-loss and steps-to-target."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from scipy import stats as scipy_stats

from ablations.__main__ import main
from ablations.reading.curves import NO_BRACKET, NOT_REACHED, REACHED, first_crossing, value_at
from ablations.reading.matched_loss import EVAL, TRAIN, iso_loss, longer_adamw, overall_loss, steps_to_target
from ablations.reading.rows import aggregate, load_runs
from ablations.reading.stats import PAIRED, WELCH, Stat, compare, share_interval
from ablations.reading.tables import final_pair_tests, iso_pair_tests, pairs_table, study_adjusted
from ablations.running.grid import GridError, load_grid, with_overrides
from ablations.running.runner import next_stage, runnable
from ablations.running.tuning import final_runs, grid_sweep
from common.rundir import RunDir
from tests.test_train import ROOT, base_args, corpus  # noqa: F401  (fixtures)

# ---------------------------------------------------------------- statistics


def test_t_interval_matches_the_textbook_formula():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    stat = Stat.of(values)
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975, 4} * s / sqrt(n)
    assert (stat.mean, stat.n) == (3.0, 5)
    assert stat.std == pytest.approx(math.sqrt(2.5))
    assert (stat.ci95_low, stat.ci95_high) == pytest.approx((3.0 - half, 3.0 + half))
    one = Stat.of([2.0])
    assert (one.std, one.ci95_low, one.ci95_high) == (None, None, None)


def test_welch_and_paired_tests_match_their_formulas_and_scipy():
    a = {0: 3.10, 1: 3.25, 2: 3.05}
    b = {0: 3.00, 1: 3.20, 2: 2.90}
    # same seeds: paired t on the differences
    d = [a[s] - b[s] for s in a]
    t = Stat.of(d).mean / (Stat.of(d).std / math.sqrt(3))
    paired = compare(a, b)
    assert paired.test == PAIRED
    assert paired.p == pytest.approx(2 * scipy_stats.t.sf(abs(t), 2))
    assert paired.p == pytest.approx(scipy_stats.ttest_rel(list(a.values()), list(b.values())).pvalue)
    # different seeds: Welch's t with Welch–Satterthwaite degrees of freedom
    c = {3: 3.00, 4: 3.20, 5: 2.90, 6: 2.95}
    va, vc = Stat.of(list(a.values())).std ** 2 / 3, Stat.of(list(c.values())).std ** 2 / 4
    t = (Stat.of(list(a.values())).mean - Stat.of(list(c.values())).mean) / math.sqrt(va + vc)
    df = (va + vc) ** 2 / (va ** 2 / 2 + vc ** 2 / 3)
    welch = compare(a, c)
    assert welch.test == WELCH
    assert welch.p == pytest.approx(2 * scipy_stats.t.sf(abs(t), df))
    assert compare(a, {0: 1.0}) is None  # one seed: no test


def test_share_interval_brackets_the_estimate():
    adamw, full = {0: 4.0, 1: 4.2, 2: 4.1}, {0: 3.5, 1: 3.7, 2: 3.6}
    run = {0: 3.7, 1: 3.95, 2: 3.8}
    low, high = share_interval(adamw, run, full)
    point = (4.1 - run_mean(run)) / (4.1 - 3.6)
    assert low <= point <= high and high - low < 0.5
    assert share_interval(adamw, {0: 3.7}, full) is None


def run_mean(values: dict[int, float]) -> float:
    return sum(values.values()) / len(values)


# ---------------------------------------------------------------- interpolation

SERIES = [(0, 8.0), (50, 6.0), (100, 5.0), (150, 4.6)]


def test_first_crossing_interpolates_between_the_evals_around_it():
    crossing = first_crossing(SERIES, 5.5)
    assert crossing.status == REACHED and crossing.bracket == (50, 100)
    assert crossing.step == pytest.approx(75.0)  # 6.0 -> 5.0 over 50 steps: 5.5 at the middle
    assert first_crossing(SERIES, 5.0).step == pytest.approx(100.0)
    assert first_crossing(SERIES, 4.0).status == NOT_REACHED  # never extrapolated
    assert first_crossing(SERIES, 9.0).status == NO_BRACKET  # below it already at the first eval
    assert value_at([(0, 1.0), (100, 3.0)], 25) == pytest.approx(1.5)
    assert value_at([(0, 1.0), (100, 3.0)], 120) is None


def synthetic(root: Path, name: str, muon: str, seed: int, losses: list[float], tails: list[float],
              steps: int = 150) -> None:
    """A finished run whose eval loss and tail loss are logged at steps 0, 50, 100, 150 (or to `steps`)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(
        f"model: {{preset: tiny}}\noptim: {{muon: '{muon}', base: adamw}}\n"
        f"train: {{steps: {steps}, seed: {seed}}}\nrun: {{name: {name}}}\n")
    points = list(range(0, steps + 1, 50))
    events = [{"step": s, "eval/loss": v, "eval/tail/tail_loss": t, "train/loss": v + 0.1}
              for s, v, t in zip(points, losses, tails, strict=True)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    summary = {"final/eval_loss": losses[-1], "final/train_loss": losses[-1] + 0.1,
               "eval/tail/tail_loss": tails[-1]}
    (d / "summary.json").write_text(json.dumps(summary))


def test_iso_loss_and_steps_to_target_by_hand(tmp_path):
    # AdamW ends at 5.0 (mean of 5.1 and 4.9); Muon gets there sooner. Seed 1 of "qk" never reaches it.
    synthetic(tmp_path, "adamw_s0", "none", 0, [8.0, 6.0, 5.5, 5.1], [10.0, 9.0, 8.5, 8.1])
    synthetic(tmp_path, "adamw_s1", "none", 1, [8.0, 6.0, 5.3, 4.9], [10.0, 9.0, 8.3, 7.9])
    synthetic(tmp_path, "muon-hidden_s0", "hidden", 0, [8.0, 5.0, 4.6, 4.4], [10.0, 7.0, 6.6, 6.4])
    synthetic(tmp_path, "muon-hidden_s1", "hidden", 1, [8.0, 5.2, 4.6, 4.4], [10.0, 7.2, 6.6, 6.4])
    synthetic(tmp_path, "muon-qk_s0", "qk", 0, [8.0, 6.0, 5.0, 4.95], [10.0, 9.0, 8.0, 7.95])
    synthetic(tmp_path, "muon-qk_s1", "qk", 1, [8.0, 6.0, 5.6, 5.4], [10.0, 9.0, 8.6, 8.4])
    rows = {r.group: r for r in aggregate(load_runs(tmp_path))}
    assert overall_loss(list(rows.values())) is EVAL

    steps = {s.arm.row.group: s for s in steps_to_target(list(rows.values()), EVAL)}
    # muon-hidden: seed 0 reaches 5.0 exactly at step 50; seed 1 at 50 + 50 * 0.2/0.6 = 66.67
    assert steps["muon-hidden"].arm.steps.mean == pytest.approx((50 + 50 + 50 / 3) / 2)
    assert steps["muon-hidden"].speedup == pytest.approx(150 / ((50 + 50 + 50 / 3) / 2))
    qk = steps["muon-qk"].arm
    assert [r.crossing.status for r in qk.runs] == [REACHED, NOT_REACHED]
    assert qk.steps.mean == pytest.approx(100.0) and qk.status() == "1/2 reached (1 not reached)"

    # iso-loss target: the highest final loss of any run, 5.4 (muon-qk seed 1)
    arms = {a.row.group: a for a in iso_loss(list(rows.values()), EVAL)}
    assert {a.target for a in arms.values()} == {5.4}
    adamw = arms["adamw"]
    # adamw s0: 6.0 -> 5.5 over steps 50..100 reaches 5.4 between 100 and 150: step 100 + 50 * 0.1/0.4
    s0 = 100 + 50 * 0.1 / 0.4
    s1 = 50 + 50 * 0.6 / 0.7
    assert [r.crossing.step for r in adamw.runs] == pytest.approx([s0, s1])
    tail_s0 = 8.5 + (s0 - 100) / 50 * (8.1 - 8.5)
    tail_s1 = 9.0 + (s1 - 50) / 50 * (8.3 - 9.0)
    assert adamw.values("eval/tail/tail_loss") == pytest.approx({0: tail_s0, 1: tail_s1})
    assert iso_loss(list(rows.values()), EVAL, target=3.0)[0].status() == "0/2 reached (2 not reached)"


def test_longer_adamw_is_read_at_the_muon_arms_final_loss(tmp_path):
    synthetic(tmp_path, "adamw_s0", "none", 0, [8.0, 6.0, 5.5, 5.1], [10.0, 9.0, 8.5, 8.1])
    synthetic(tmp_path, "muon-hidden_s0", "hidden", 0, [8.0, 5.0, 4.6, 4.4], [10.0, 7.0, 6.6, 6.4])
    synthetic(tmp_path, "adamw-2x_s0", "none", 0, [8.0, 6.0, 5.5, 5.0, 4.6, 4.4, 4.2],
              [10.0, 9.0, 8.5, 8.0, 7.6, 7.4, 7.2], steps=300)
    rows = aggregate(load_runs(tmp_path))
    by_group = {r.group: r for r in rows}
    assert by_group["adamw-2x"].longer and not by_group["adamw"].longer
    assert by_group["adamw-2x"].delta_vs_adamw == pytest.approx(4.2 - 5.1)  # against the 150-step AdamW
    (result,) = longer_adamw(rows, EVAL)
    assert result.muon.group == "muon-hidden" and result.longer.target == 4.4
    assert result.longer.steps.mean == pytest.approx(250.0)
    assert result.longer.values("eval/tail/tail_loss") == {0: pytest.approx(7.4)}  # vs Muon's 6.4


def test_training_loss_is_the_overall_loss_without_an_eval_loss(tmp_path):
    synthetic(tmp_path, "adamw_s0", "none", 0, [8.0, 6.0, 5.5, 5.1], [10.0, 9.0, 8.5, 8.1])
    for line_file in tmp_path.glob("*/metrics.jsonl"):
        events = [json.loads(x) for x in line_file.read_text().splitlines()]
        line_file.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "eval/loss"}) + "\n"
                                     for e in events))
    rows = aggregate(load_runs(tmp_path))
    assert overall_loss(rows) is TRAIN
    (arm,) = iso_loss(rows, TRAIN)
    # the highest final training loss as read at targets: the centred mean of the last 3 windows (issue 20)
    assert arm.target == pytest.approx((6.1 + 5.6 + 5.2) / 3)


# ---------------------------------------------------------------- tuning


def tuned_grid(tmp_path: Path, tune: str, runs: str = "[{optim.muon: none}, {optim.muon: hidden}]") -> Path:
    """A grid over seeds 0 and 1 whose sweep uses seed 0 too (`reuse_tuning_seeds: true`), so that a sweep
    run is also a final run."""
    path = tmp_path / "tuned.yaml"
    section = yaml.safe_load(tune)
    if isinstance(section, dict):
        section["reuse_tuning_seeds"] = True
    path.write_text(f"name: tuned\nruns: {runs}\nseeds: [0, 1]\ntune: {json.dumps(section)}\n")
    return path


def finish(out: Path, name: str, loss: float | None, diverged: bool = False) -> None:
    run = RunDir(out / name)
    run.path.mkdir(parents=True, exist_ok=True)
    if diverged:
        run.divergence_marker.write_text("{}")
    elif loss is not None:
        run.summary.write_text(json.dumps({"final/eval_loss": loss}))


def test_tuning_runs_are_named_by_their_values_and_shared_with_the_final_runs(tmp_path):
    grid = load_grid(tuned_grid(tmp_path, "{keys: {optim.adamw_lr: [0.001, 0.01]}, seeds: [0]}"))
    names = [r.name for r in grid_sweep(grid, tmp_path / "out").runs]
    assert names == ["adamw_adamw_lr-0.001_s0", "adamw_adamw_lr-0.01_s0",
                     "muon-hidden_adamw_lr-0.001_s0", "muon-hidden_adamw_lr-0.01_s0"]
    final = final_runs(grid, {"adamw": {"optim.adamw_lr": 0.01}, "muon-hidden": {"optim.adamw_lr": 0.001}})
    assert [r.name for r in final] == ["adamw_adamw_lr-0.01_s0", "adamw_adamw_lr-0.01_s1",
                                       "muon-hidden_adamw_lr-0.001_s0", "muon-hidden_adamw_lr-0.001_s1"]
    assert final[1].overrides == {"optim.muon": "none", "train.seed": 1, "optim.adamw_lr": 0.01}
    assert {r.group for r in final} == {"adamw", "muon-hidden"}


def test_muon_lr_is_swept_only_for_arms_with_muon(tmp_path):
    tune = "{keys: {optim.adamw_lr: [0.001, 0.01], optim.muon_lr: [0.02, 0.05]}, seeds: [0], method: grid}"
    grid = load_grid(tuned_grid(tmp_path, tune))
    runs = grid_sweep(grid, tmp_path / "out").runs
    assert sum(r.group == "adamw" for r in runs) == 2 and sum(r.group == "muon-hidden" for r in runs) == 4
    assert "muon-hidden_adamw_lr-0.001_muon_lr-0.05_s0" in {r.name for r in runs}


def test_selection_lowest_loss_ties_to_the_smaller_value_and_edge_warnings(tmp_path):
    grid = load_grid(tuned_grid(tmp_path, "{keys: {optim.adamw_lr: [0.001, 0.003, 0.01]}, seeds: [0, 1], "
                                          "extend_edges: false}"))
    out = tmp_path / "out"
    losses = {  # (arm, lr) -> (seed 0, seed 1)
        ("adamw", 0.001): (4.0, 4.2), ("adamw", 0.003): (3.9, 4.0), ("adamw", 0.01): (3.8, 4.3),
        ("muon-hidden", 0.001): (3.5, 3.5), ("muon-hidden", 0.003): (3.6, 3.4), ("muon-hidden", 0.01): (9, 9),
    }
    sweep = grid_sweep(grid, out).runs
    for run in sweep:
        finish(out, run.name, losses[(run.group, run.overrides["optim.adamw_lr"])][run.seed])
    tunings = {t.arm: t for t in grid_sweep(grid, out).tunings}
    # adamw: means 4.1, 3.95, 4.05 -> 0.003, inside the sweep
    assert tunings["adamw"].chosen == {"optim.adamw_lr": 0.003} and tunings["adamw"].edges == []
    # muon-hidden: 3.5 at 0.001 and at 0.003 -> the smaller value, at the sweep's edge
    assert tunings["muon-hidden"].chosen == {"optim.adamw_lr": 0.001}
    assert tunings["muon-hidden"].warnings() == [
        "muon-hidden: best optim.adamw_lr=0.001 is at the edge of its sweep [0.001, 0.003, 0.01]; "
        "widen the sweep"]


def test_selection_waits_for_the_sweep_and_counts_divergence_as_worst(tmp_path):
    grid = load_grid(tuned_grid(tmp_path, "{keys: {optim.adamw_lr: [0.01, 0.1]}, seeds: [0], "
                                          "extend_edges: false}"))
    out = tmp_path / "out"
    sweep = grid_sweep(grid, out).runs
    finish(out, sweep[0].name, 4.0)
    assert grid_sweep(grid, out).tunings is None  # unfinished runs: no choice yet
    assert next_stage(grid, out).name == "tuning"
    finish(out, sweep[1].name, None, diverged=True)
    finish(out, sweep[2].name, None, diverged=True)
    finish(out, sweep[3].name, None, diverged=True)
    with pytest.raises(GridError, match="muon-hidden diverged at every value"):
        grid_sweep(grid, out)
    finish(out, sweep[3].name, 3.0)
    RunDir(out / sweep[3].name).divergence_marker.unlink()
    stage = next_stage(grid, out)
    assert stage.name == "grid" and {t.arm: t.chosen["optim.adamw_lr"] for t in stage.tunings} == {
        "adamw": 0.01, "muon-hidden": 0.1}


def test_an_arm_runs_at_its_chosen_values_while_another_arm_is_still_tuning(tmp_path):
    """The runner starts what `runnable` offers whenever a slot frees: an arm's final runs do not wait for
    the other arms' sweeps (nor for a round of the sweep to end)."""
    grid = load_grid(tuned_grid(tmp_path, "{keys: {optim.adamw_lr: [0.001, 0.01]}, seeds: [0], "
                                          "extend_edges: false}"))
    out = tmp_path / "out"
    finish(out, "adamw_adamw_lr-0.001_s0", 4.0)
    finish(out, "adamw_adamw_lr-0.01_s0", 3.5)
    finish(out, "muon-hidden_adamw_lr-0.001_s0", 3.0)
    runs, tuned, _ = runnable(grid, out)
    assert [r.name for r in runs] == ["muon-hidden_adamw_lr-0.01_s0",  # the sweep's unfinished run first
                                      "adamw_adamw_lr-0.01_s0", "adamw_adamw_lr-0.01_s1"]  # AdamW's finals
    assert [(t.arm, t.chosen) for t in tuned] == [("adamw", {"optim.adamw_lr": 0.01})]
    assert next_stage(grid, out).name == "tuning"  # the report's view: the sweep is not complete yet
    finish(out, "muon-hidden_adamw_lr-0.01_s0", 3.2)
    assert [r.name for r in runnable(grid, out)[0]] == [
        "adamw_adamw_lr-0.01_s0", "adamw_adamw_lr-0.01_s1",
        "muon-hidden_adamw_lr-0.001_s0", "muon-hidden_adamw_lr-0.001_s1"]


@pytest.mark.parametrize("tune, runs, message", [
    ("{keys: {optim.adamw_lr: [0.01]}}", None, "`tune` must be a mapping with `keys`"),
    ("{keys: {optim.adamw_lr: []}, seeds: [0]}", None, "tune.keys.optim.adamw_lr must be a non-empty list"),
    ("{keys: {adamw_lr: [0.01]}, seeds: [0]}", None, "not a dotted config key"),
    ("{keys: {optim.adamw_lr: [0.01]}, seeds: [0], metric: qa/fta/tail}", None, "tune.metric=qa/fta/tail"),
    ("{keys: {optim.adamw_lr: [0.01]}, seeds: [0]}", "[{optim.muon: none, optim.adamw_lr: 0.1}]",
     "optim.adamw_lr is both tuned"),
])
def test_bad_tune_sections_are_grid_errors(tmp_path, tune, runs, message):
    with pytest.raises(GridError, match=message.replace("[", r"\[")):
        load_grid(tuned_grid(tmp_path, tune, *([runs] if runs else [])))


def test_tuning_seeds_among_the_evaluation_seeds_are_an_error_unless_declared(tmp_path):
    path = tmp_path / "overlap.yaml"
    path.write_text("name: g\nruns: [{optim.muon: none}]\nseeds: [0, 1]\n"
                    "tune: {keys: {optim.adamw_lr: [0.01, 0.1]}, seeds: [1, 7]}\n")
    with pytest.raises(GridError, match=r"tune.seeds \[1\] are also evaluation seeds.*reuse_tuning_seeds"):
        load_grid(path)
    path.write_text("name: g\nruns: [{optim.muon: none}]\nseeds: [0, 1]\n"
                    "tune: {keys: {optim.adamw_lr: [0.01, 0.1]}, seeds: [7, 8]}\n")
    grid = load_grid(path)
    assert grid.tune.seeds == [7, 8] and not grid.tune.reuse_tuning_seeds
    swept = grid_sweep(grid, tmp_path / "out").runs
    assert {r.seed for r in swept} == {7, 8}  # disjoint: no sweep run is a final run
    assert not {r.name for r in swept} & {r.name for r in final_runs(
        grid, {"adamw": {"optim.adamw_lr": 0.01}})}


def test_a_tuned_key_cannot_be_overridden_on_the_command_line(tmp_path):
    grid = load_grid(tuned_grid(tmp_path, "{keys: {optim.adamw_lr: [0.01]}, seeds: [0]}"))
    with pytest.raises(GridError, match="optim.adamw_lr is tuned by the grid"):
        with_overrides(grid, ["optim.adamw_lr=0.1"])


# ---------------------------------------------------------------- end to end


@pytest.fixture
def tiny_tuned_grid(tmp_path, base_args) -> Path:  # noqa: F811
    """AdamW and full Muon, each tuned over two learning rates (seed 0), then seeds 0 and 1 at the
    chosen values: 6 real train.py runs of 12 steps (the longer-AdamW analysis is tested above)."""
    overrides = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in base_args}
    overrides.update({"train.steps": "12", "train.eval_every": "3", "train.log_every": "1",
                      "train.checkpoint_every": "6", "optim.warmup_steps": "1"})
    overrides.pop("optim.adamw_lr")
    lines = "".join(f"  {k}: {v}\n" for k, v in overrides.items())
    path = tmp_path / "tiny_tuned.yaml"
    path.write_text(f"name: tiny_tuned\noverrides:\n{lines}"
                    "runs:\n  - optim.muon: none\n  - optim.muon: hidden\nseeds: [0, 1]\n"
                    "tune:\n  keys: {optim.adamw_lr: [0.003, 0.01]}\n  seeds: [0]\n"
                    "  reuse_tuning_seeds: true\n  extend_edges: false\n")
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_tuned_grid_interrupted_rerun_and_reported(tiny_tuned_grid, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "MUONLAB_CACHE": os.environ.get("MUONLAB_CACHE", str(ROOT / ".cache")),
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "ablations", "run", str(tiny_tuned_grid), "--out", str(out), "--gpus", "0",
           "--jobs", "1"]  # one at a time: the first sweep run finishes before the second starts
    # Ctrl-C in a terminal: SIGINT to the whole process group, once the second sweep run is training.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    second = out / "adamw_adamw_lr-0.01_s0" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if second.is_file() and '"train/loss"' in second.read_text():
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, log  # stopped by a signal, resumable: as train.py
    assert (out / "adamw_adamw_lr-0.003_s0" / "summary.json").is_file()
    assert not (out / "adamw_adamw_lr-0.01_s0" / "summary.json").is_file()
    manifest = json.loads((out / "grid.json").read_text())
    assert manifest["runs"] == [] and len(manifest["tuning_runs"]) == 4

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "tuning done; chosen values" in done.stdout + done.stderr
    manifest = json.loads((out / "grid.json").read_text())
    finals = {r["name"]: r for r in manifest["runs"]}
    assert len(finals) == 4 and all(RunDir(out / n).is_finished() for n in finals)
    assert len([p for p in out.iterdir() if RunDir(p).exists()]) == 6  # seed 0 runs were not repeated

    assert main(["report", str(out)]) == 0
    report = out / "report"
    for name in ("table.csv", "tuning.csv", "iso_loss.csv", "steps_to_target.csv", "stats.csv",
                 "pairwise.csv", "tuning.png", "iso_loss.png", "steps_to_target.png", "report.md"):
        assert (report / name).is_file(), name
    tuning = read_csv(report / "tuning.csv")
    assert len(tuning) == 4  # 2 arms x 2 values
    chosen = {row["arm"]: float(row["value"]) for row in tuning if row["chosen"] == "True"}
    for run in finals.values():
        assert run["overrides"]["optim.adamw_lr"] == chosen[run["group"]]
    by_arm: dict[str, float] = {}
    for row in tuning:  # the chosen value is the one with the lowest loss
        if by_arm.get(row["arm"], math.inf) > float(row["eval_loss"]):
            by_arm[row["arm"]] = float(row["eval_loss"])
    assert all(float(r["eval_loss"]) == by_arm[r["arm"]] for r in tuning if r["chosen"] == "True")
    table = {row["run"]: row for row in read_csv(report / "table.csv")}
    assert set(table) == {"adamw", "muon-hidden"}
    assert all(row["n_seeds"] == "2" and row["ci95_low"] and row["test"] for row in table.values())
    assert table["muon-hidden"]["p_vs_adamw"] and not table["adamw"]["p_vs_adamw"]
    adamw_losses = [RunDir(out / n).read_summary()["final/eval_loss"]
                    for n, r in finals.items() if r["group"] == "adamw"]
    assert float(table["adamw"]["eval_loss"]) == pytest.approx(sum(adamw_losses) / 2, abs=1e-6)
    assert {r["arm"] for r in read_csv(report / "iso_loss.csv")} == set(table)
    steps = {r["arm"]: r for r in read_csv(report / "steps_to_target.csv")}
    assert set(steps) == set(table) and steps["adamw"]["target_loss"] == table["adamw"]["eval_loss"]
    text = (report / "report.md").read_text()
    assert "## Tuning" in text and "## Iso-loss" in text and "## Steps to AdamW's final loss" in text


def two_seed_adamw_and_muon(root: Path) -> None:
    """AdamW and full Muon, seeds 0 and 1, whose seed-to-seed differences are not constant."""
    synthetic(root, "adamw_s0", "none", 0, [8.0, 6.0, 5.5, 5.1], [10.0, 9.0, 8.5, 8.1])
    synthetic(root, "adamw_s1", "none", 1, [8.0, 6.0, 5.3, 4.9], [10.0, 9.0, 8.3, 7.9])
    synthetic(root, "muon-hidden_s0", "hidden", 0, [8.0, 5.0, 4.6, 4.4], [10.0, 7.0, 6.6, 6.4])
    synthetic(root, "muon-hidden_s1", "hidden", 1, [8.0, 5.2, 4.6, 4.3], [10.0, 7.2, 6.6, 6.5])


def test_pairwise_tests_within_a_family_with_benjamini_hochberg(tmp_path):
    two_seed_adamw_and_muon(tmp_path)
    synthetic(tmp_path, "muon-qk_s0", "qk", 0, [8.0, 6.0, 5.0, 4.95], [10.0, 9.0, 8.0, 7.95])
    synthetic(tmp_path, "muon-qk_s1", "qk", 1, [8.0, 6.0, 5.6, 5.4], [10.0, 9.0, 8.6, 8.4])
    tests = final_pair_tests(aggregate(load_runs(tmp_path)))
    header, body = pairs_table(tests, study_adjusted(tests))
    loss = [dict(zip(header, r, strict=True)) for r in body if r[0] == "final/eval_loss"]
    assert [(r["run_a"], r["run_b"]) for r in loss] == [
        ("adamw", "muon-hidden"), ("adamw", "muon-qk"), ("muon-hidden", "muon-qk")]
    raw = [scipy_stats.ttest_rel([5.1, 4.9], b).pvalue for b in ([4.4, 4.3], [4.95, 5.4])]
    raw.append(scipy_stats.ttest_rel([4.4, 4.3], [4.95, 5.4]).pvalue)
    assert [r["p"] for r in loss] == pytest.approx(raw)
    assert [r["p_bh"] for r in loss] == pytest.approx(list(scipy_stats.false_discovery_control(raw)))
    assert loss[0]["diff"] == pytest.approx(5.0 - 4.35)


def test_optimizer_settings_are_swept_only_for_arms_using_that_optimizer(tmp_path):
    runs = '[{optim.muon: none}, {optim.route: "vo,ffn:sgd default:adamw"}, {optim.route: "vo:normuon"}]'
    grid = load_grid(tuned_grid(tmp_path, "{keys: {optim.adamw_lr: [0.001, 0.01], optim.sgd.lr: [0.1, 1.0], "
                                          "optim.muon_lr: [0.02, 0.05]}, seeds: [0], method: grid}", runs))
    swept = grid_sweep(grid, tmp_path / "out").runs
    by_arm: dict[str, int] = {}
    for run in swept:
        by_arm[run.group] = by_arm.get(run.group, 0) + 1
    assert by_arm == {"adamw": 2, "sgd-vo+ffn": 4, "normuon-vo": 4}
    assert "sgd-vo+ffn_adamw_lr-0.01_sgd.lr-0.1_s0" in {r.name for r in swept}


def test_slurm_writes_the_sweep_then_the_final_runs(tmp_path, capsys):
    path = tuned_grid(tmp_path, "{keys: {optim.adamw_lr: [0.001, 0.01]}, seeds: [0], extend_edges: false}")
    out = tmp_path / "out"
    assert main(["run", str(path), "--launcher", "slurm", "--out", str(out)]) == 0
    assert "the tuning stage" in capsys.readouterr().out
    manifest = out / "slurm" / "tuned.runs"
    names = [line.split()[0] for line in manifest.read_text().splitlines()]
    assert names == [r.name for r in grid_sweep(load_grid(path), out).runs]
    assert json.loads((out / "grid.json").read_text())["runs"] == []
    for name, loss in zip(names, (4.0, 3.9, 3.5, 3.6), strict=True):
        finish(out, name, loss)
    assert main(["run", str(path), "--launcher", "slurm", "--out", str(out)]) == 0
    assert "the grid stage" in capsys.readouterr().out
    assert [line.split()[0] for line in manifest.read_text().splitlines()] == [
        "adamw_adamw_lr-0.01_s0", "adamw_adamw_lr-0.01_s1",
        "muon-hidden_adamw_lr-0.001_s0", "muon-hidden_adamw_lr-0.001_s1"]
    assert len(json.loads((out / "grid.json").read_text())["runs"]) == 4


def test_iso_pairwise_tests_compare_the_arms_at_the_target(tmp_path):
    two_seed_adamw_and_muon(tmp_path)
    arms = iso_loss(aggregate(load_runs(tmp_path)), EVAL, target=5.4)
    tests = iso_pair_tests(arms, ["eval/tail/tail_loss"])
    header, body = pairs_table(tests, study_adjusted(tests))
    (row,) = [dict(zip(header, r, strict=True)) for r in body]
    a, m = arms[0].values("eval/tail/tail_loss"), arms[1].values("eval/tail/tail_loss")
    assert (row["run_a"], row["run_b"]) == ("adamw", "muon-hidden")
    assert row["p"] == pytest.approx(scipy_stats.ttest_rel([a[0], a[1]], [m[0], m[1]]).pvalue)
    assert row["diff"] == pytest.approx((a[0] + a[1] - m[0] - m[1]) / 2)
