"""Coordinate and grid tuning with edge extension, checked by hand on a toy objective, and run end to end
by the runner over rounds (with a stand-in for train.py) and replayed by the report."""

from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from ablations.reading.report import build_report
from ablations.running.grid import Run, Tune, load_grid
from ablations.running.runner import run_grid
from ablations.running.tuning import beyond, grid_sweep, tune_arm
from tests.test_tuning import finish
from tests.toy_train import toy_loss

ARM = Run(name="muon-hidden", overrides={"optim.muon": "hidden"})
ADAMW, MUON = "optim.adamw_lr", "optim.muon_lr"


def toy(run: Run) -> float:
    return toy_loss(run.overrides[ADAMW], run.overrides.get(MUON), run.overrides["train.seed"])


def swept(tune: Tune) -> tuple[list[Run], dict]:
    """Every run the sweep plans, with a toy loss for each, and its outcome."""
    planned, tuning = tune_arm(ARM, list(tune.keys), tune, toy)
    assert tuning is not None
    return planned, tuning


def test_beyond_steps_past_an_edge_at_the_sweeps_ratio():
    assert beyond([1e-3, 3e-3, 1e-2], 1e-2) == pytest.approx(0.0333)
    assert beyond([1e-3, 3e-3, 1e-2], 1e-3) == pytest.approx(0.000333)  # 1e-3 / (3e-3 / 1e-3)
    assert beyond([8, 16], 16) == 32 and isinstance(beyond([8, 16], 16), int)
    assert beyond(["quintic", "polar_express"], "quintic") is None  # not a number: not extended
    assert beyond([0.0, 0.1], 0.0) is None  # no ratio from zero


def test_coordinate_tuning_on_a_toy_objective_by_hand():
    tune = Tune(keys={ADAMW: [1e-3, 3e-3, 1e-2], MUON: [3e-3, 1e-2, 3e-2]}, seeds=[100, 101])
    planned, tuning = swept(tune)
    # Step 1, tied (muon_lr at its default, adamw_lr): loss 3 + (x + 2.5)^2 + 2 (x + 1.7)^2 at x = log10
    # lr: 1.87 at 1e-3, 0.437 at 3e-3, 0.43 at 1e-2 (the best, at the edge) -> tried at 1e-4/3e-3 = 0.0333:
    # 1.146, worse, so 1e-2 is no longer at an edge.
    # Step 2, muon_lr with adamw_lr = 1e-2: 0.25 + 2 (y + 1.7)^2: best 3e-2 (edge) -> 0.09: worse.
    assert tuning.chosen == {ADAMW: 1e-2, MUON: 3e-2} and tuning.edges == []
    assert [s.number for s in tuning.steps] == [1, 2]
    assert tuning.steps[0].tried == {ADAMW: [1e-3, 3e-3, 1e-2, 0.0333]}
    assert tuning.steps[1].tried == {MUON: [3e-3, 1e-2, 3e-2, 0.09]}
    assert [s.extensions for s in tuning.steps] == [{ADAMW: 1}, {MUON: 1}]
    names = [r.name for r in planned if r.seed == 100]
    assert names == ["muon-hidden_adamw_lr-0.001_s100", "muon-hidden_adamw_lr-0.003_s100",
                     "muon-hidden_adamw_lr-0.01_s100", "muon-hidden_adamw_lr-0.0333_s100",
                     "muon-hidden_adamw_lr-0.01_muon_lr-0.003_s100",
                     "muon-hidden_adamw_lr-0.01_muon_lr-0.01_s100",
                     "muon-hidden_adamw_lr-0.01_muon_lr-0.03_s100",
                     "muon-hidden_adamw_lr-0.01_muon_lr-0.09_s100"]
    best = tuning.steps[1].best
    assert best.losses == pytest.approx([toy_loss(1e-2, 3e-2, 100), toy_loss(1e-2, 3e-2, 101)])
    assert best.loss == pytest.approx((best.losses[0] + best.losses[1]) / 2)  # ranked by the seeds' mean


def test_grid_tuning_is_the_argmin_of_the_product():
    tune = Tune(keys={ADAMW: [1e-3, 3e-3, 1e-2], MUON: [3e-3, 1e-2, 3e-2]}, seeds=[100], method="grid",
                extend_edges=False)
    planned, tuning = swept(tune)
    product = list(itertools.product(tune.keys[ADAMW], tune.keys[MUON]))
    assert len(planned) == len(product)
    a, m = min(product, key=lambda p: toy_loss(p[0], p[1], 100))
    assert tuning.chosen == {ADAMW: a, MUON: m} == {ADAMW: 3e-3, MUON: 3e-2}
    assert tuning.edges == [MUON]  # 3e-2 is the largest tried, not extended
    assert tuning.warnings() == ["muon-hidden: best optim.muon_lr=0.03 is at the edge of its sweep "
                                 "[0.003, 0.01, 0.03]; widen the sweep"]


def test_an_optimum_beyond_two_extensions_is_still_reported_at_the_edge():
    # tied, the toy's optimum is at x = -1.97: 1e-2 (0.43) beats 1e-3 (1.87) and 0.1 (3.23)
    tune = Tune(keys={ADAMW: [1e-4, 1e-3]}, seeds=[100])
    planned, tuning = swept(tune)
    assert tuning.steps[0].tried == {ADAMW: [1e-4, 1e-3, 1e-2, 0.1]}
    assert tuning.chosen == {ADAMW: 1e-2} and tuning.edges == []  # two extensions found the inside
    tune = Tune(keys={ADAMW: [1e-6, 1e-5]}, seeds=[100])
    planned, tuning = swept(tune)
    assert tuning.steps[0].tried == {ADAMW: [1e-6, 1e-5, 1e-4, 1e-3]} and tuning.edges == [ADAMW]
    assert tuning.warnings() == ["muon-hidden: best optim.adamw_lr=0.001 is at the edge of its sweep "
                                 "[1e-06, 1e-05, 0.0001, 0.001] after 2 extensions; widen the sweep"]


def test_an_unfinished_round_plans_no_further_runs():
    tune = Tune(keys={ADAMW: [1e-3, 3e-3, 1e-2], MUON: [3e-3, 3e-2]}, seeds=[100])
    done = {"muon-hidden_adamw_lr-0.001_s100", "muon-hidden_adamw_lr-0.003_s100"}
    planned, tuning = tune_arm(ARM, list(tune.keys), tune, lambda r: toy(r) if r.name in done else None)
    assert tuning is None and len(planned) == 3  # step 1's three points; step 2 waits for them


def grid_file(tmp_path: Path) -> Path:
    path = tmp_path / "coord.yaml"
    path.write_text("name: coord\nruns: [{optim.muon: none}, {optim.muon: hidden}]\nseeds: [0, 1, 2]\n"
                    "tune: {keys: {optim.adamw_lr: [1.0e-3, 3.0e-3, 1.0e-2], optim.muon_lr: [3.0e-3, 1.0e-2, "
                    "3.0e-2]}, seeds: [100, 101]}\n")
    return path


def test_the_runner_tunes_in_rounds_and_the_report_replays_the_sweep(tmp_path):
    grid, out = load_grid(grid_file(tmp_path)), tmp_path / "out"
    outcomes = run_grid(grid, out, num_gpus=0, train_cmd=[sys.executable, "-m", "tests.toy_train"])
    assert all(o.status == "done" for o in outcomes)
    sweep = grid_sweep(grid, out)
    chosen = {t.arm: t.chosen for t in sweep.tunings}
    # AdamW has no Muon: only adamw_lr is swept: 3 + (x + 2.5)^2 + 2 (x + 1.7)^2 (tied, the toy's Muon
    # term included) is the same objective as step 1 above.
    assert chosen == {"adamw": {ADAMW: 1e-2}, "muon-hidden": {ADAMW: 1e-2, MUON: 3e-2}}
    manifest = json.loads((out / "grid.json").read_text())
    assert [r["name"] for r in manifest["runs"]] == [
        f"{arm}_{values}_s{seed}" for arm, values in (("adamw", "adamw_lr-0.01"),
                                                     ("muon-hidden", "adamw_lr-0.01_muon_lr-0.03"))
        for seed in (0, 1, 2)]
    # muon-hidden's muon_lr=1e-2 at adamw_lr=1e-2 trains what its tied point (muon_lr: null) trained:
    # ranked by that point's runs, not run again (4 + 3 of step 2's 4 points)
    assert len(manifest["tuning_runs"]) == len(sweep.runs) == 2 * (4 + 4 + 3)
    assert "muon-hidden_adamw_lr-0.01_muon_lr-0.01_s100" not in {o.name for o in outcomes}
    assert {o.name for o in outcomes} == {r.name for r in sweep.runs} | {r["name"] for r in manifest["runs"]}

    build_report(out)
    with (out / "report" / "tuning.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["arm", "key", "value", "eval_loss", "chosen", "method", "pass", "edge",
                             "n_seeds", "metric"]
    muon = [r for r in rows if r["arm"] == "muon-hidden" and r["key"] == MUON]
    assert [float(r["value"]) for r in muon] == [3e-3, 1e-2, 3e-2, 0.09]
    assert {(r["method"], r["pass"], r["edge"], r["n_seeds"]) for r in muon} == {
        ("coordinate", "2", "False", "2")}
    best = next(r for r in muon if r["chosen"] == "True")
    expected = (toy_loss(1e-2, 3e-2, 100) + toy_loss(1e-2, 3e-2, 101)) / 2
    assert float(best["eval_loss"]) == pytest.approx(expected)
    assert "one key at a time" in (out / "report" / "report.md").read_text()


def test_acceptance_a_coordinate_tuned_grid_reproduces_scipy_from_its_run_directories(tmp_path):
    """A tuned grid with method: coordinate, two rate keys and disjoint tuning seeds: from its run
    directories alone, its choices, intervals, TOST verdicts and Fieller shares are scipy's."""
    path = tmp_path / "accept.yaml"
    path.write_text("name: accept\nruns: [{optim.muon: none}, {optim.muon: hidden}, {optim.muon: vo}, "
                    "{optim.muon: qk}]\nseeds: [0, 1, 2]\n"
                    "tune: {keys: {optim.adamw_lr: [1.0e-3, 3.0e-3, 1.0e-2], optim.muon_lr: [3.0e-3, 1.0e-2, "
                    "3.0e-2]}, seeds: [100, 101], method: coordinate}\n")
    grid, out = load_grid(path), tmp_path / "out"
    assert all(o.status == "done" for o in run_grid(grid, out, num_gpus=0, jobs=1,
                                                     train_cmd=[sys.executable, "-m", "tests.toy_train"]))
    build_report(out)
    report = out / "report"

    def final(name: str) -> float:
        return json.loads((out / name / "summary.json").read_text())["final/eval_loss"]

    # the choices: in each coordinate step, the value whose tuning runs have the lowest mean final loss
    manifest = json.loads((out / "grid.json").read_text())
    with (report / "tuning.csv").open() as f:
        tuning = list(csv.DictReader(f))
    keys = [ADAMW, MUON]
    chosen_adamw = {r["arm"]: float(r["value"]) for r in tuning if (r["chosen"], r["key"]) == ("True", ADAMW)}
    for row in (r for r in tuning if r["chosen"] == "True"):
        later = keys[keys.index(row["key"]) + 1:]
        losses: dict[float, list[float]] = {}
        for run in manifest["tuning_runs"]:  # the runs of this key's step, read from their directories
            overrides = run["overrides"]
            if run["group"] != row["arm"] or set(later) & set(overrides):
                continue
            if row["key"] in overrides:
                value = overrides[row["key"]]
            elif row["key"] == MUON and overrides[ADAMW] == chosen_adamw[row["arm"]]:
                value = overrides[ADAMW]  # the tied run (muon_lr: null) is the point muon_lr = adamw_lr
            else:
                continue
            losses.setdefault(value, []).append(final(run["name"]))
        means = {v: statistics.fmean(x) for v, x in losses.items()}
        assert {len(x) for x in losses.values()} == {2}  # both tuning seeds
        assert float(row["value"]) == min(means, key=means.get)
        step = {float(r["value"]): float(r["eval_loss"]) for r in tuning
                if (r["arm"], r["key"]) == (row["arm"], row["key"])}
        assert step == pytest.approx(means, abs=1e-6)
    assert {r["n_seeds"] for r in tuning} == {"2"}
    assert not {r["name"] for r in manifest["tuning_runs"]} & {r["name"] for r in manifest["runs"]}

    finals = {arm: [final(r["name"]) for r in manifest["runs"] if r["group"] == arm]
              for arm in ("adamw", "muon-hidden", "muon-vo", "muon-qk")}
    with (report / "table.csv").open() as f:
        table = {r["run"]: r for r in csv.DictReader(f)}
    for arm, losses in finals.items():  # the t interval of each arm's mean
        low, high = scipy_stats.t.interval(0.95, 2, loc=statistics.fmean(losses),
                                           scale=scipy_stats.sem(losses))
        shown = (float(table[arm]["ci95_low"]), float(table[arm]["ci95_high"]))
        assert shown == pytest.approx((low, high), abs=1e-5)
    # the Fieller share of the all-hidden gain: each bound solves (N - rho D)^2 / var(N - rho D) = t^2
    n = [a - v for a, v in zip(finals["adamw"], finals["muon-vo"], strict=True)]
    d = [a - h for a, h in zip(finals["adamw"], finals["muon-hidden"], strict=True)]
    assert table["muon-vo"]["share_ci_method"] == "fieller"
    for bound in ("share_ci95_low", "share_ci95_high"):
        z = [ni - float(table["muon-vo"][bound]) * di for ni, di in zip(n, d, strict=True)]
        assert statistics.fmean(z) ** 2 / (scipy_stats.tvar(z) / 3) == pytest.approx(
            scipy_stats.t.ppf(0.975, 2) ** 2, rel=1e-3)
    # pairwise differences and the TOST verdict of the pair not found different (VO vs QK)
    with (report / "pairwise.csv").open() as f:
        pair = next(r for r in csv.DictReader(f)
                    if (r["metric"], r["run_a"], r["run_b"]) == ("final/eval_loss", "muon-vo", "muon-qk"))
    diffs = [a - q for a, q in zip(finals["muon-vo"], finals["muon-qk"], strict=True)]
    low, high = scipy_stats.t.interval(0.95, 2, loc=statistics.fmean(diffs), scale=scipy_stats.sem(diffs))
    assert (float(pair["ci95_low"]), float(pair["ci95_high"])) == pytest.approx((low, high), abs=1e-5)
    expected = scipy_stats.ttest_rel(finals["muon-vo"], finals["muon-qk"]).pvalue
    assert float(pair["p"]) == pytest.approx(expected, abs=1e-6)
    with (report / "equivalence.csv").open() as f:
        verdict = next(r for r in csv.DictReader(f)
                       if (r["metric"], r["arm_a"], r["arm_b"]) == ("final/eval_loss", "muon-vo", "muon-qk"))
    p_tost = max(scipy_stats.ttest_1samp(diffs, -0.02, alternative="greater").pvalue,
                 scipy_stats.ttest_1samp(diffs, 0.02, alternative="less").pvalue)
    assert float(verdict["p_tost"]) == pytest.approx(p_tost, abs=1e-6)
    assert verdict["verdict"] == ("equivalent within ±0.02" if p_tost < 0.05 else "inconclusive")


def test_the_report_replays_an_older_grid_json_without_tuning_arms(tmp_path):
    """A grid.json from before `tune.method` (no tuning_arms, no method, no extend_edges) replays as the
    full product, never extended: each arm rebuilt from its first sweep run without its tuned values."""
    from ablations.reading.sections import recorded_sweep
    from ablations.running.runner import next_stage, write_manifest

    path = tmp_path / "old.yaml"
    path.write_text("name: old\nruns: [{optim.muon: none}, {optim.muon: hidden}]\nseeds: [0]\n"
                    "tune: {keys: {optim.adamw_lr: [1.0e-3, 1.0e-2], optim.muon_lr: [1.0e-2, 3.0e-2]}, "
                    "seeds: [100], method: grid, extend_edges: false}\n")
    grid, out = load_grid(path), tmp_path / "out"
    for run in grid_sweep(grid, out).runs:
        (out / run.name).mkdir(parents=True)
        (out / run.name / "summary.json").write_text(json.dumps({"final/eval_loss": toy(run)}))
    write_manifest(grid, out, next_stage(grid, out))
    manifest = json.loads((out / "grid.json").read_text())
    _, current = recorded_sweep(manifest, out)
    old = {k: v for k, v in manifest.items() if k != "tuning_arms"}
    old["tune"] = {k: v for k, v in manifest["tune"].items() if k not in ("method", "extend_edges")}
    _, replayed = recorded_sweep(old, out)
    assert [(t.arm, t.chosen, t.method) for t in replayed] == [(t.arm, t.chosen, t.method) for t in current]
    assert {t.arm: t.chosen for t in replayed} == {"adamw": {ADAMW: 1e-2},
                                                   "muon-hidden": {ADAMW: 1e-3, MUON: 3e-2}}


def test_a_point_that_trains_what_an_earlier_point_trained_is_not_run_again(tmp_path):
    """muon_lr and embed_lr default to adamw_lr: set to the adamw_lr chosen, they train the tied point's
    model (optim.build.parameter_rates), which ranks them; any other value is a run of its own."""
    path = tmp_path / "tied.yaml"
    path.write_text("name: tied\nruns: [{optim.muon: hidden}]\nseeds: [0]\n"
                    "tune: {keys: {optim.adamw_lr: [1.0e-3, 1.0e-2], optim.muon_lr: [1.0e-3, 1.0e-2], "
                    "optim.embed_lr: [1.0e-3, 1.0e-2]}, seeds: [100], extend_edges: false}\n")
    grid, out = load_grid(path), tmp_path / "out"

    def loss(overrides: dict) -> float:  # best at adamw 1e-2 (tied), then muon 1e-3, embed 1e-2
        lr = overrides[ADAMW]
        muon, embed = overrides.get(MUON, lr), overrides.get("optim.embed_lr", lr)
        return 3 + (math.log10(lr) + 2) ** 2 + (math.log10(muon) + 3) ** 2 + (math.log10(embed) + 2) ** 2

    while (sweep := grid_sweep(grid, out)).tunings is None:
        for run in sweep.pending:
            finish(out, run.name, loss(run.overrides))
    assert [r.name for r in sweep.runs] == [
        "muon-hidden_adamw_lr-0.001_s100", "muon-hidden_adamw_lr-0.01_s100",
        "muon-hidden_adamw_lr-0.01_muon_lr-0.001_s100",  # muon_lr=0.01: the run above
        "muon-hidden_adamw_lr-0.01_muon_lr-0.001_embed_lr-0.001_s100"]  # embed_lr=0.01: the one above
    (tuning,) = sweep.tunings
    assert tuning.chosen == {ADAMW: 1e-2, MUON: 1e-3, "optim.embed_lr": 1e-2}
    muon_step = {t.values[MUON]: t.loss for t in tuning.step_of(MUON).trials}
    assert muon_step == {1e-3: 3.0, 1e-2: 4.0}  # 1e-2 ranked by the tied run's loss
