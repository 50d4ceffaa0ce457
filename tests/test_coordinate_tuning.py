"""Coordinate and grid tuning with edge extension, checked by hand on a toy objective, and run end to end
by the runner over rounds (with a stand-in for train.py) and replayed by the report."""

from __future__ import annotations

import csv
import itertools
import json
import sys
from pathlib import Path

import pytest

from ablations.grid import Run, Tune, load_grid
from ablations.report import build_report
from ablations.runner import run_grid
from ablations.tuning import beyond, grid_sweep, tune_arm
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
    assert len(manifest["tuning_runs"]) == len(sweep.runs) == 2 * (4 + 8)
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
