"""The report's statistics outputs on synthetic run directories: differences with intervals, the
study-wide Benjamini–Hochberg adjustment, equivalence verdicts (TOST), per-seed values, Fieller shares,
censored steps to target, and the grid file's equivalence margins."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from ablations.reading.report import build_report
from ablations.reading.stats import share_fieller, tost
from ablations.running.grid import GridError, load_grid
from tests.test_tuning import synthetic


def three_arms(root: Path) -> None:
    """AdamW, full Muon and Muon on QK over seeds 0-2; QK's seed 2 never reaches AdamW's final loss."""
    synthetic(root, "adamw_s0", "none", 0, [8.0, 6.0, 5.5, 5.10], [10.0, 9.0, 8.5, 8.10])
    synthetic(root, "adamw_s1", "none", 1, [8.0, 6.0, 5.3, 4.90], [10.0, 9.0, 8.3, 7.92])
    synthetic(root, "adamw_s2", "none", 2, [8.0, 6.1, 5.4, 5.02], [10.0, 9.1, 8.4, 8.05])
    synthetic(root, "muon-hidden_s0", "hidden", 0, [8.0, 5.0, 4.6, 4.40], [10.0, 7.0, 6.6, 6.40])
    synthetic(root, "muon-hidden_s1", "hidden", 1, [8.0, 5.2, 4.6, 4.30], [10.0, 7.2, 6.6, 6.50])
    synthetic(root, "muon-hidden_s2", "hidden", 2, [8.0, 5.1, 4.7, 4.38], [10.0, 7.1, 6.7, 6.45])
    synthetic(root, "muon-qk_s0", "qk", 0, [8.0, 6.0, 5.0, 4.95], [10.0, 9.0, 8.0, 8.08])
    synthetic(root, "muon-qk_s1", "qk", 1, [8.0, 6.0, 5.6, 4.99], [10.0, 9.0, 8.6, 7.95])
    synthetic(root, "muon-qk_s2", "qk", 2, [8.0, 6.1, 5.6, 5.15], [10.0, 9.1, 8.6, 8.07])


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def report(tmp_path: Path) -> Path:
    three_arms(tmp_path / "runs")
    (tmp_path / "runs" / "grid.json").write_text(json.dumps(
        {"name": "three", "equivalence_margin": {"final/eval_loss": 0.2}}))
    build_report(tmp_path / "runs", tmp_path / "out")
    return tmp_path / "out"


def finals(metric: str, arm: str) -> list[float]:
    values = {("final/eval_loss", "adamw"): [5.10, 4.90, 5.02],
              ("final/eval_loss", "muon-hidden"): [4.40, 4.30, 4.38],
              ("final/eval_loss", "muon-qk"): [4.95, 4.99, 5.15]}
    return values[(metric, arm)]


def test_pairwise_rows_carry_the_difference_interval_and_the_study_wide_adjustment(report: Path):
    pairwise, iso = read_csv(report / "pairwise.csv"), read_csv(report / "iso_pairwise.csv")
    row = next(r for r in pairwise if r["metric"] == "final/eval_loss" and r["run_b"] == "muon-qk")
    diffs = [a - b for a, b in zip(finals("final/eval_loss", "adamw"), finals("final/eval_loss", "muon-qk"),
                                    strict=True)]
    low, high = scipy_stats.t.interval(0.95, 2, loc=sum(diffs) / 3, scale=scipy_stats.sem(diffs))
    assert (float(row["ci95_low"]), float(row["ci95_high"])) == pytest.approx((low, high), abs=1e-6)
    # one family: every p of both files, adjusted together
    every = pairwise + iso
    adjusted = scipy_stats.false_discovery_control([float(r["p"]) for r in every])
    # (the CSV rounds p to 6 decimals, so the adjustment of the read values agrees to 1e-5)
    assert [float(r["p_bh_study"]) for r in every] == pytest.approx(list(adjusted), abs=1e-5)
    assert iso and all(r["p_bh_study"] for r in iso)


def test_every_pair_not_found_different_gets_a_tost_verdict(report: Path):
    pairwise = read_csv(report / "pairwise.csv")
    equivalence = read_csv(report / "equivalence.csv")
    assert list(equivalence[0]) == ["metric", "arm_a", "arm_b", "diff", "ci95_low", "ci95_high", "margin",
                                    "p_tost", "verdict"]
    not_different = {(r["metric"], r["run_a"], r["run_b"]) for r in pairwise if float(r["p"]) >= 0.05}
    listed = {(r["metric"], r["arm_a"], r["arm_b"]) for r in equivalence if " at " not in r["metric"]}
    assert listed == not_different and not_different
    row = next(r for r in equivalence if (r["metric"], r["arm_b"]) == ("final/eval_loss", "muon-qk"))
    a = dict(enumerate(finals("final/eval_loss", "adamw")))
    q = dict(enumerate(finals("final/eval_loss", "muon-qk")))
    p = tost(a, q, 0.2)  # the grid's margin for this metric, not the default 0.02
    assert float(row["margin"]) == 0.2 and float(row["p_tost"]) == pytest.approx(p, abs=1e-6)
    assert row["verdict"] == ("equivalent within ±0.2" if p < 0.05 else "inconclusive")
    text = (report / "report.md").read_text()
    assert "### Equivalence of the pairs not found different" in text and row["verdict"] in text


def test_per_seed_values_and_the_fieller_share(report: Path):
    per_seed = read_csv(report / "per_seed.csv")
    losses = {(r["arm"], int(r["seed"])): float(r["value"]) for r in per_seed
              if r["metric"] == "final/eval_loss"}
    assert losses == pytest.approx({(arm, s): v for arm in ("adamw", "muon-hidden", "muon-qk")
                                    for s, v in enumerate(finals("final/eval_loss", arm))})
    assert any(r["metric"].startswith("steps to ") for r in per_seed)
    assert any(" at " in r["metric"] for r in per_seed)
    table = {r["run"]: r for r in read_csv(report / "table.csv")}
    qk = table["muon-qk"]
    expected = share_fieller(*(dict(enumerate(finals("final/eval_loss", a)))
                               for a in ("adamw", "muon-qk", "muon-hidden")))
    assert qk["share_ci_method"] == "fieller"
    assert (float(qk["share_ci95_low"]), float(qk["share_ci95_high"])) == pytest.approx(expected, abs=1e-6)


def test_an_arm_some_seeds_never_bring_to_the_target_shows_a_lower_bound(report: Path):
    steps = {r["arm"]: r for r in read_csv(report / "steps_to_target.csv")}
    qk = steps["muon-qk"]  # seed 2 ends at 5.15, above AdamW's mean final loss 5.007
    assert qk["n_reached"] == "2" and qk["speedup_vs_adamw"] == "" and qk["ci95_low"] == ""
    reached = [float(r["value"]) for r in read_csv(report / "per_seed.csv")
               if r["arm"] == "muon-qk" and r["metric"].startswith("steps to ")]
    assert float(qk["steps"]) == pytest.approx((sum(reached) + 150) / 3)  # the third seed at its budget
    assert f"≥ {float(qk['steps']):.1f} (2 of 3 seeds)" in (report / "report.md").read_text()


@pytest.mark.parametrize("margin", ["{final/eval_los: 0.02}", "{final/eval_loss: -1}", "[0.02]"])
def test_bad_equivalence_margins_are_one_error_naming_the_key(tmp_path: Path, margin: str):
    path = tmp_path / "g.yaml"
    path.write_text(f"name: g\nruns: [{{optim.muon: none}}]\nequivalence_margin: {margin}\n")
    with pytest.raises(GridError, match="equivalence_margin must map metrics among final/eval_loss"):
        load_grid(path)


def test_the_grid_margins_reach_grid_json(tmp_path: Path):
    from ablations.__main__ import main

    path = tmp_path / "g.yaml"
    path.write_text("name: g\nruns: [{optim.muon: none}]\nequivalence_margin: {eval/tail/tail_loss: 0.1}\n")
    assert main(["run", str(path), "--launcher", "slurm", "--out", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert manifest["equivalence_margin"] == {"eval/tail/tail_loss": 0.1}
