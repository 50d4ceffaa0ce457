"""`python -m ablations compare`: gains over AdamW and shares of the Muon gain in two studies, and their
change, against scipy's own tests on the per-seed differences and hand computations."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from scipy import stats

from ablations.__main__ import main
from ablations.reading.across_studies import Values, compare_studies, compared_metrics, load_per_seed
from ablations.reading.stats import DELTA, PAIRED, WELCH, change, difference, share_estimate, share_fieller
from common.errors import MissingFileError, UserError

LOSS, TAIL = "final/eval_loss", "eval/tail/tail_loss"


def _write(study: Path, values: Values) -> Path:
    study.mkdir(parents=True)
    with (study / "per_seed.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "metric", "value"])
        for (arm, metric), seeds in values.items():
            for seed, v in seeds.items():
                w.writerow([arm, seed, metric, f"{v:.6f}"])
    return study


def _noise(seed: int, scale: float) -> float:
    return scale * ((seed * 7919) % 11 - 5) / 5  # fixed, seed-dependent, mean-free-ish


def _study(seeds: range, gains: dict[str, float], scale: float = 0.01) -> Values:
    """AdamW at 4.5 (seed noise shared by every arm, as one seed fixes init and data) and each arm
    `gain` below it with its own small noise; a tail metric twice the loss."""
    values = {}
    for arm, gain in {"adamw": 0.0, **gains}.items():
        loss = {s: 4.5 + _noise(s, 0.03) - gain + (_noise(s + 3 * len(arm), scale) if gain else 0.0)
                for s in seeds}
        values[arm, LOSS] = loss
        values[arm, TAIL] = {s: 2 * v for s, v in loss.items()}
        values[arm, f"{TAIL} at 4.4000"] = {s: 9.0 for s in seeds}  # mid-schedule: not compared
    return values


def test_difference_p_is_scipys_paired_and_welch_test():
    a, b, c = {0: 4.81, 1: 4.79, 2: 4.83}, {0: 4.78, 1: 4.77, 2: 4.82}, {5: 4.7, 6: 4.75, 7: 4.69, 8: 4.72}
    assert difference(a, b).p == pytest.approx(stats.ttest_rel([4.81, 4.79, 4.83], [4.78, 4.77, 4.82]).pvalue)
    assert difference(a, c).p == pytest.approx(
        stats.ttest_ind(list(a.values()), list(c.values()), equal_var=False).pvalue)


def test_change_of_paired_gains_is_welchs_test_on_the_per_seed_differences():
    """Within a study the gain pairs seed by seed; across studies nothing pairs, so the change of the gain
    is Welch's t-test between the two studies' per-seed differences (never a cross-study pairing)."""
    a_base = {0: 4.80, 1: 4.83, 2: 4.79, 3: 4.85, 4: 4.81}
    a_arm = {0: 4.70, 1: 4.75, 2: 4.70, 3: 4.74, 4: 4.72}
    b_base, b_arm = {0: 3.90, 1: 3.95, 2: 3.91}, {0: 3.75, 1: 3.78, 2: 3.72}
    da, db = difference(a_base, a_arm), difference(b_base, b_arm)
    moved = change(da, db)
    diffs_a = [a_base[s] - a_arm[s] for s in a_base]
    diffs_b = [b_base[s] - b_arm[s] for s in b_base]
    welch = stats.ttest_ind(diffs_b, diffs_a, equal_var=False)
    assert (da.test, db.test, moved.test) == (PAIRED, PAIRED, WELCH)
    assert moved.diff == pytest.approx(sum(diffs_b) / 3 - sum(diffs_a) / 5)
    assert moved.diff / moved.se == pytest.approx(welch.statistic)
    assert moved.p == pytest.approx(welch.pvalue)
    assert moved.df == pytest.approx(welch.df)


def test_share_estimate_is_the_delta_method_and_absent_where_fieller_is_unbounded():
    adamw = {0: 4.80, 1: 4.83, 2: 4.79, 3: 4.81}
    full = {0: 4.43, 1: 4.44, 2: 4.42, 3: 4.45}
    run = {0: 4.60, 1: 4.58, 2: 4.63, 3: 4.59}
    est = share_estimate(adamw, run, full)
    n = [adamw[s] - run[s] for s in adamw]
    d = [adamw[s] - full[s] for s in adamw]
    ratio = sum(n) / sum(d)
    z = [ni - ratio * di for ni, di in zip(n, d, strict=True)]  # var(N − ρD) / D² is the delta variance
    assert (est.diff, est.df, est.test) == (pytest.approx(ratio), 3, DELTA)
    assert est.se == pytest.approx(math.sqrt(stats.tvar(z) / 4) / (sum(d) / 4))
    assert share_fieller(adamw, run, full) is not None
    no_gain = {0: 4.81, 1: 4.78, 2: 4.80}
    assert share_fieller(dict(list(adamw.items())[:3]), dict(list(run.items())[:3]), no_gain) is None
    assert share_estimate(dict(list(adamw.items())[:3]), dict(list(run.items())[:3]), no_gain) is None


def test_compare_reads_gains_changes_and_verdicts(tmp_path):
    """Study B doubles muon-hidden's gain and keeps muon-vo+ffn's: the first is 'changed' (BH), the second
    equivalent within the 0.02-nat margin; every number is the stats functions' on the per-seed values."""
    a = _study(range(5), {"muon-hidden": 0.10, "muon-vo+ffn": 0.08}, scale=0.002)
    b = _study(range(3), {"muon-hidden": 0.20, "muon-vo+ffn": 0.08}, scale=0.002)
    b["adamw", f"{TAIL} annealed at 5.0000"] = {0: 8.0, 1: 8.1, 2: 8.05}  # only B read it: not compared
    report = compare_studies(_write(tmp_path / "tiny", a), _write(tmp_path / "wide", b), tmp_path / "out",
                             ("tiny", "wide"))
    assert report.read_text().startswith("# tiny → wide")
    assert (tmp_path / "out" / "gains.png").is_file()
    rows = {(r["metric"], r["arm"]): r for r in csv.DictReader((tmp_path / "out" / "gains.csv").open())}
    assert set(rows) == {(m, arm) for m in (LOSS, TAIL) for arm in ("muon-hidden", "muon-vo+ffn")}
    hidden = rows[LOSS, "muon-hidden"]
    expected = change(difference(a["adamw", LOSS], a["muon-hidden", LOSS]),
                      difference(b["adamw", LOSS], b["muon-hidden", LOSS]))
    assert float(hidden["change_wide_minus_tiny"]) == pytest.approx(expected.diff, abs=1e-5)
    assert float(hidden["p_change"]) == pytest.approx(expected.p, abs=1e-6)
    assert (hidden["n_seeds_tiny"], hidden["n_seeds_wide"]) == ("5", "3")
    assert hidden["verdict"] == "changed"
    assert rows[LOSS, "muon-vo+ffn"]["verdict"] == "no change within ±0.02"
    shares = {r["arm"]: r for r in csv.DictReader((tmp_path / "out" / "shares.csv").open())}
    assert set(shares) == {"muon-vo+ffn"}
    assert float(shares["muon-vo+ffn"]["share_tiny"]) == pytest.approx(0.8, abs=0.05)
    assert float(shares["muon-vo+ffn"]["share_wide"]) == pytest.approx(0.4, abs=0.05)
    assert float(shares["muon-vo+ffn"]["change_ci95_high"]) < 0  # the share fell, with its interval


def test_compared_metrics_leave_out_mid_schedule_reads_and_study_only_targets(tmp_path):
    a = _study(range(3), {"muon-hidden": 0.1})
    b = _study(range(3), {"muon-hidden": 0.1})
    for v, targets in ((a, ("5.0000", "4.6000")), (b, ("5.0000", "4.4000"))):
        for t in targets:
            v["adamw", f"{TAIL} annealed at {t}"] = {0: 1.0, 1: 1.1, 2: 1.2}
    va, vb = load_per_seed(_write(tmp_path / "a", a)), load_per_seed(_write(tmp_path / "b", b))
    assert compared_metrics(va, vb) == [LOSS, TAIL, f"{TAIL} annealed at 5.0000"]


def test_compare_errors_name_the_fix(tmp_path, capsys):
    a = _write(tmp_path / "a", _study(range(3), {"muon-hidden": 0.1}))
    with pytest.raises(MissingFileError, match="ablations report"):
        compare_studies(a, tmp_path / "absent", tmp_path / "out", ("a", "b"))
    with pytest.raises(UserError, match="--baseline"):
        compare_studies(a, a, tmp_path / "out", ("a", "b"), baseline="sgd")
    with pytest.raises(UserError, match="--labels"):
        compare_studies(a, a, tmp_path / "out", ("a", "a"))
    assert main(["compare", str(a), str(tmp_path / "absent")]) == 1
    assert not (tmp_path / "out").exists()


def test_compare_cli_reads_a_grids_report_directory(tmp_path, capsys):
    runs = tmp_path / "runs" / "grid_b"
    _write(runs / "report", _study(range(3), {"muon-hidden": 0.2}))
    a = _write(tmp_path / "a", _study(range(3), {"muon-hidden": 0.1}))
    assert main(["compare", str(a), str(runs), "--labels", "small", "big", "--out", str(tmp_path / "o")]) == 0
    assert "muon-hidden" in (tmp_path / "o" / "gains.csv").read_text()
    assert "wrote" in capsys.readouterr().out
