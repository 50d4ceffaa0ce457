"""Cooldown branches (an exact resume with a shorter total), budget ladders, and the report's tail at
matched annealed loss, checked by hand and against scipy."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from ablations.metric_names import EVAL_LOSS, TAIL_LOSS
from ablations.reading.annealed import lineages
from ablations.reading.report import build_report
from ablations.reading.rows import aggregate, load_runs
from ablations.running.cooldowns import Cooldowns
from ablations.running.grid import GridError, load_grid
from ablations.running.runner import run_grid
from common.rundir import RunDir
from optim.schedules import Schedule
from tests.test_train import base_args, corpus, read_metrics, run_train, without_perf  # noqa: F401


def test_a_branch_decays_from_its_branch_point_over_its_length():
    cooldowns = Cooldowns(at=[100, 6], length=0.2)
    assert cooldowns.branch(100) == (125, 0.2)  # 25 steps of decay = 0.2 of 125
    total, fraction = cooldowns.branch(6)
    assert (total, fraction) == (8, 2 / 8)  # round(0.2 * 6 / 0.8) = 2
    parent, branch = Schedule(20, "wsd", 2, 0.1, 0.5), Schedule(total, "wsd", 2, 0.1, fraction)
    assert branch.decay_start == 6
    assert [branch.multiplier(s) for s in range(6)] == [parent.multiplier(s) for s in range(6)]


def grid_yaml(tmp_path: Path, cooldowns: str, extra: dict) -> Path:
    overrides = {"optim.schedule": "wsd", "optim.decay_fraction": 0.5, "optim.warmup_steps": 2,
                 "train.steps": 20, "train.checkpoint_every": 2, "train.keep_checkpoints": 10, **extra}
    path = tmp_path / "g.yaml"
    path.write_text(f"name: g\noverrides: {json.dumps(overrides)}\nruns: [{{optim.muon: none}}]\nseeds: [0]\n"
                    f"cooldowns: {cooldowns}\n")
    return path


@pytest.mark.parametrize("cooldowns, extra, message", [
    ("{at: [6], length: 1.5}", {}, "cooldowns must be {at: [positive steps], length: a fraction in (0, 1)}"),
    ("{at: 6, length: 0.2}", {}, "cooldowns must be"),
    ("{at: [6], length: 0.2}", {"optim.schedule": "cosine"}, "cooldowns need optim.schedule=wsd"),
    ("{at: [12], length: 0.2}", {}, "cooldowns.at [12] is outside the stable phase [2, 10]"),
    ("{at: [5], length: 0.2}", {}, "must be multiples of train.checkpoint_every=2"),
    ("{at: [4], length: 0.2}", {"train.keep_checkpoints": 3}, "set train.keep_checkpoints >= 9"),
    ("{at: [10], length: 0.5}", {}, "cooldowns.at [10]: that branch is the 20-step run itself"),
])
def test_a_cooldown_the_runs_cannot_branch_is_a_grid_error(tmp_path, cooldowns, extra, message):
    with pytest.raises(GridError, match=re.escape(message)):
        load_grid(grid_yaml(tmp_path, cooldowns, extra))


def test_budgets_run_every_arm_at_multiples_of_its_steps(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("name: b\noverrides: {train.steps: 30}\n"
                    "runs: [{optim.muon: none}, {optim.muon: hidden}]\nseeds: [0]\nbudgets: [1, 2]\n")
    runs = {r.name: r.overrides.get("train.steps") for r in load_grid(path).runs}
    assert runs == {"adamw_s0": 30, "adamw_x2_s0": 60, "muon-hidden_s0": 30, "muon-hidden_x2_s0": 60}
    path.write_text("name: b\nruns: [{optim.muon: none}]\nbudgets: [1, 1.5]\noverrides: {train.steps: 5}\n")
    with pytest.raises(GridError, match="budget 1.5 x train.steps=5 is not a whole number"):
        load_grid(path)


@pytest.mark.slow
def test_a_cooldown_branch_is_the_fresh_run_of_its_length(base_args, tmp_path):  # noqa: F811
    """The runner branches the final run at step 6 into an 8-step run decaying over its last 2 steps,
    from the parent's checkpoint: bit for bit the run trained from scratch with those settings."""
    overrides = dict(a.split("=", 1) for a in base_args)
    overrides |= {"optim.schedule": "wsd", "optim.decay_fraction": "0.5", "train.steps": "12",
                  "train.eval_every": "2", "train.checkpoint_every": "2", "train.keep_checkpoints": "8"}
    path = tmp_path / "cd.yaml"
    path.write_text(f"name: cd\noverrides: {json.dumps(overrides)}\nruns: [{{optim.muon: hidden}}]\n"
                    "seeds: [0]\ncooldowns: {at: [6], length: 0.25}\n")
    out = tmp_path / "out"
    outcomes = run_grid(load_grid(path), out, num_gpus=0)
    assert [(o.name, o.status) for o in outcomes] == [
        ("muon-hidden_s0", "done"), ("muon-hidden_s0_cd6", "done")]
    fresh = tmp_path / "fresh"
    args = [f"{k}={v}" for k, v in overrides.items() if k not in ("train.steps", "optim.decay_fraction")]
    run_train([*args, "optim.muon=hidden", "train.seed=0", "train.steps=8", "optim.decay_fraction=0.25",
               f"run.dir={fresh}"])
    branch = read_metrics(out / "muon-hidden_s0_cd6")
    assert branch[0]["step"] > 6  # it started at the branch point
    assert without_perf(branch) == [e for e in without_perf(read_metrics(fresh)) if e["step"] > 6]
    final = RunDir(out / "muon-hidden_s0_cd6").read_summary()[EVAL_LOSS]
    assert final == RunDir(fresh).read_summary()[EVAL_LOSS]
    manifest = json.loads((out / "grid.json").read_text())
    assert [r["branch_of"] for r in manifest["cooldown_runs"]] == ["muon-hidden_s0"]


def finished(root: Path, name: str, muon: str, seed: int, steps: int, loss: float, tail: float,
             entry: dict | None = None) -> dict:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"optim: {{muon: '{muon}', base: adamw}}\n"
                                   f"train: {{steps: {steps}, seed: {seed}}}\n")
    (d / "metrics.jsonl").write_text(json.dumps({"step": steps, "eval/loss": loss, TAIL_LOSS: tail}) + "\n")
    (d / "summary.json").write_text(json.dumps({EVAL_LOSS: loss, TAIL_LOSS: tail}))
    return {"name": name, "group": name.rsplit("_s", 1)[0], **(entry or {})}


# (arm, muon, seed) -> [(final loss, tail loss)] of the final run (steps 100), then its branches
POINTS = {
    ("adamw", "none", 0): [(5.0, 8.0), (5.6, 8.9), (6.2, 9.6)],
    ("adamw", "none", 1): [(5.1, 8.2), (5.7, 9.0), (6.3, 9.9)],
    ("adamw", "none", 2): [(4.9, 7.9), (5.5, 8.8), (6.1, 9.5)],
    ("muon-hidden", "hidden", 0): [(4.4, 6.9), (5.2, 8.0), (5.9, 9.0)],
    ("muon-hidden", "hidden", 1): [(4.5, 7.2), (5.3, 8.1), (6.0, 9.2)],
    ("muon-hidden", "hidden", 2): [(4.3, 6.8), (5.1, 7.9), (5.8, 8.8)],
}


def interpolate(points: list[tuple[float, float]], target: float) -> float:
    ordered = sorted(points)
    (l1, v1), (l2, v2) = next((a, b) for a, b in zip(ordered, ordered[1:], strict=False)
                              if a[0] <= target <= b[0])
    return v1 + (v2 - v1) * (target - l1) / (l2 - l1)


def test_tails_at_matched_annealed_loss_by_hand(tmp_path):
    runs = tmp_path / "runs"
    finals, branches = [], []
    for (arm, muon, seed), points in POINTS.items():
        finals.append(finished(runs, f"{arm}_s{seed}", muon, seed, 100, *points[0]))
        for at, (loss, tail) in zip((40, 70), points[1:], strict=True):
            branches.append(finished(runs, f"{arm}_s{seed}_cd{at}", muon, seed, at + 10, loss, tail,
                                     {"branch_of": f"{arm}_s{seed}", "group": arm}))
    (runs / "grid.json").write_text(json.dumps({"name": "a", "runs": finals, "cooldown_runs": branches,
                                                "analysis": {"iso_loss": [5.4]}}))
    loaded = load_runs(runs)
    rows = aggregate([r for r in loaded if r.role == "final"])
    assert {row.group for row in rows} == {"adamw", "muon-hidden"}  # the branches are not table rows
    found = lineages(rows, [r for r in loaded if r.role == "cooldown"], EVAL_LOSS)
    assert sorted(lin.n_points for lin in found) == [3, 3]

    build_report(runs, tmp_path / "out")
    with (tmp_path / "out" / "annealed.csv").open() as f:
        table = {r["arm"]: r for r in csv.DictReader(f)}
    tails = {arm: [interpolate([(l, t) for l, t in POINTS[(arm, m, s)]], 5.4) for s in range(3)]
             for arm, m in (("adamw", "none"), ("muon-hidden", "hidden"))}
    mean = sum(tails["muon-hidden"]) / 3
    assert float(table["muon-hidden"]["tail_loss"]) == pytest.approx(mean, abs=1e-6)
    muon = table["muon-hidden"]
    assert (muon["target_kind"], muon["n_reached"], muon["n_points"]) == ("pre-registered", "3", "3")
    expected = scipy_stats.ttest_rel(tails["muon-hidden"], tails["adamw"]).pvalue
    assert float(table["muon-hidden"]["p_tail_loss_vs_adamw"]) == pytest.approx(expected, abs=1e-6)
    with (tmp_path / "out" / "annealed_pairwise.csv").open() as f:
        (pair,) = list(csv.DictReader(f))
    assert pair["where"] == "annealed at 5.4000 (pre-registered)"
    diff = (sum(tails["adamw"]) - sum(tails["muon-hidden"])) / 3
    assert float(pair["diff"]) == pytest.approx(diff, abs=1e-6)
    assert "## Tail at matched annealed loss" in (tmp_path / "out" / "report.md").read_text()
