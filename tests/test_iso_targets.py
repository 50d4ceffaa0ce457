"""Pre-registered iso-loss targets: declared in the grid file, read by the report, and told apart from a
target given only on the report's command line (exploratory)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from ablations.reading.matched_loss import EVAL, iso_loss
from ablations.reading.report import build_report
from ablations.reading.rows import aggregate, load_runs
from ablations.running.grid import GridError, load_grid
from tests.test_tuning import two_seed_adamw_and_muon


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_the_report_reads_at_the_registered_targets_and_marks_a_command_line_one_exploratory(tmp_path):
    runs = tmp_path / "runs"
    two_seed_adamw_and_muon(runs)
    (runs / "grid.json").write_text(json.dumps({"name": "g", "analysis": {"iso_loss": [5.4, 5.2]}}))
    build_report(runs, tmp_path / "out", iso_loss=5.3)
    iso = rows_of(tmp_path / "out" / "iso_loss.csv")
    assert [(r["arm"], float(r["target_loss"]), r["target_kind"]) for r in iso] == [
        ("adamw", 5.4, "pre-registered"), ("muon-hidden", 5.4, "pre-registered"),
        ("adamw", 5.2, "pre-registered"), ("muon-hidden", 5.2, "pre-registered"),
        ("adamw", 5.3, "exploratory"), ("muon-hidden", 5.3, "exploratory")]
    rows = aggregate(load_runs(runs))
    for target in (5.4, 5.2, 5.3):
        adamw, muon = iso_loss(rows, EVAL, target)
        a, m = adamw.values("eval/tail/tail_loss"), muon.values("eval/tail/tail_loss")
        pair = next(r for r in rows_of(tmp_path / "out" / "iso_pairwise.csv")
                    if r["where"].startswith(f"at {target:.4f}") and r["metric"] == "eval/tail/tail_loss")
        expected = scipy_stats.ttest_rel(list(a.values()), list(m.values())).pvalue
        assert float(pair["p"]) == pytest.approx(expected, abs=1e-6)
        kind = "exploratory" if target == 5.3 else "pre-registered"
        assert pair["where"] == f"at {target:.4f} ({kind})"
    text = (tmp_path / "out" / "report.md").read_text()
    assert "5.4 (pre-registered), 5.2 (pre-registered), 5.3 (exploratory)" in text


def test_a_registered_target_given_again_on_the_command_line_stays_registered(tmp_path):
    runs = tmp_path / "runs"
    two_seed_adamw_and_muon(runs)
    (runs / "grid.json").write_text(json.dumps({"name": "g", "analysis": {"iso_loss": [5.4]}}))
    build_report(runs, tmp_path / "out", iso_loss=5.4)
    assert {r["target_kind"] for r in rows_of(tmp_path / "out" / "iso_loss.csv")} == {"pre-registered"}


@pytest.mark.parametrize("analysis", ["{iso_loss: 4.9}", "{iso_loss: []}", "{iso_loss: [-1]}",
                                      "{iso: [4.9]}", "[4.9]"])
def test_a_bad_analysis_section_is_a_grid_error(tmp_path, analysis):
    path = tmp_path / "g.yaml"
    path.write_text(f"name: g\nruns: [{{optim.muon: none}}]\nanalysis: {analysis}\n")
    with pytest.raises(GridError, match=r"analysis must map iso_loss to a non-empty list"):
        load_grid(path)
    path.write_text("name: g\nruns: [{optim.muon: none}]\nanalysis: {iso_loss: [4.9, 4.7]}\n")
    assert load_grid(path).analysis == {"iso_loss": [4.9, 4.7]}


def test_directional_sharpness_is_read_and_tested_at_the_targets(tmp_path):
    runs = tmp_path / "runs"
    two_seed_adamw_and_muon(runs)
    nds = {"adamw_s0": [9.0, 7.0, 6.0, 5.5], "adamw_s1": [9.0, 7.2, 6.1, 5.4],
           "muon-hidden_s0": [8.0, 5.0, 4.0, 3.8], "muon-hidden_s1": [8.0, 5.3, 4.4, 3.9]}
    for name, values in nds.items():
        with (runs / name / "metrics.jsonl").open("a") as f:
            f.writelines(json.dumps({"step": s, "curvature/vo/nds": v}) + "\n"
                         for s, v in zip((0, 50, 100, 150), values, strict=True))
    (runs / "grid.json").write_text(json.dumps({"name": "g", "analysis": {"iso_loss": [5.4]}}))
    build_report(runs, tmp_path / "out")
    iso = {r["arm"]: r for r in rows_of(tmp_path / "out" / "iso_loss.csv")}
    adamw, muon = iso_loss(aggregate(load_runs(runs)), EVAL, 5.4)
    a, m = adamw.values("curvature/vo/nds"), muon.values("curvature/vo/nds")
    assert len(a) == len(m) == 2
    assert float(iso["muon-hidden"]["curvature_vo_nds"]) == pytest.approx(sum(m.values()) / 2, abs=1e-6)
    expected = scipy_stats.ttest_rel([m[0], m[1]], [a[0], a[1]]).pvalue
    assert float(iso["muon-hidden"]["p_curvature_vo_nds_vs_adamw"]) == pytest.approx(expected, abs=1e-6)
    # ... and among the study's pair tests, so that it is adjusted with the rest of the family.
    pair = [r for r in rows_of(tmp_path / "out" / "iso_pairwise.csv") if r["metric"] == "curvature/vo/nds"]
    assert len(pair) == 1 and float(pair[0]["p"]) == pytest.approx(expected, abs=1e-3)
    assert pair[0]["p_bh_study"] != "" and pair[0]["where"] == "at 5.4000 (pre-registered)"
    assert (tmp_path / "out" / "sharpness.png").stat().st_size > 1000
    assert "(sharpness.png)" in (tmp_path / "out" / "report.md").read_text()
    per_seed = rows_of(tmp_path / "out" / "per_seed.csv")
    assert {(r["arm"], r["seed"]) for r in per_seed if r["metric"] == "curvature/vo/nds at 5.4000"} == {
        ("adamw", "0"), ("adamw", "1"), ("muon-hidden", "0"), ("muon-hidden", "1")}


def test_a_training_loss_match_is_smoothed_and_read_at_the_eval_cadence(tmp_path):
    """bios-like runs: a noisy training loss every 10 steps, QA every 50; the crossing is read on the
    centred 5-window mean at the QA steps, so loss and QA share one cadence."""
    from ablations.reading.matched_loss import TRAIN, TRAIN_SMOOTHING

    d = tmp_path / "adamw_s0"
    d.mkdir()
    (d / "config.yaml").write_text("optim: {muon: none}\ntrain: {steps: 100, seed: 0}\n")
    train = [(s, 3.0 - 0.02 * s + (0.3 if s % 20 else -0.3)) for s in range(0, 101, 10)]
    qa = [(s, 0.004 * s) for s in range(0, 101, 50)]
    events = [{"step": s, "train/loss": v} for s, v in train] + [{"step": s, "qa/fta/mean": v} for s, v in qa]
    (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (d / "summary.json").write_text(json.dumps({"final/train_loss": train[-1][1]}))
    (run,) = aggregate(load_runs(tmp_path))[0].runs
    values = [v for _, v in train]
    smoothed = {s: sum(values[max(0, i - 2):i + 3]) / len(values[max(0, i - 2):i + 3])
                for i, (s, _) in enumerate(train)}
    assert TRAIN_SMOOTHING == 5
    assert TRAIN.series(run) == pytest.approx([(s, smoothed[s]) for s, _ in qa])
    (arm,) = iso_loss(aggregate(load_runs(tmp_path)), TRAIN, 2.0)
    # 2.0 lies between the smoothed losses at steps 50 and 100: linear there, and QA read at that step
    (l1, l2) = smoothed[50], smoothed[100]
    step = 50 + 50 * (l1 - 2.0) / (l1 - l2)
    assert arm.reached[0].crossing.step == pytest.approx(step)
    assert arm.values("qa/fta/mean")[0] == pytest.approx(0.004 * step)
