"""RunDir.status (the one run-status classification) and `python -m training.runs`, on fabricated run
directories (no training)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from common.files import write_json, write_text
from common.lock import hold
from common.rundir import RunDir
from training.config import config_yaml, load_config
from training.runs import main


def make_run(path: Path, *overrides: str, events: list[dict] = (), marker: str | None = None,
             age_s: float = 0.0) -> RunDir:
    """A run directory as train.py leaves it: config.yaml, metrics.jsonl and, if given, a marker."""
    run = RunDir(path)
    path.mkdir(parents=True)
    write_text(run.config, config_yaml(load_config(overrides=list(overrides))))
    write_text(run.metrics, "".join(json.dumps(e) + "\n" for e in events))
    if marker:
        write_json(path / marker, {"step": 1})
    stamp = time.time() - age_s
    for p in (run.config, run.metrics):
        os.utime(p, (stamp, stamp))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    make_run(root / "done", "train.steps=30", "optim.muon=none", marker="summary.json", age_s=7200,
             events=[{"step": 0, "eval/loss": 8.3}, {"step": 30, "eval/loss": 4.5}])
    make_run(root / "live", "optim.adamw_lr=0.01",
             events=[{"step": 0, "eval/loss": 8.3}, {"step": 120, "train/loss": 5.0}])
    make_run(root / "dead", "optim.adamw_lr=0.01", "optim.muon_lr=0.02",
             events=[{"step": 50, "train/loss": 5.1}], age_s=660)
    make_run(root / "grid" / "stopped", events=[{"step": 40, "eval/loss": 5.5}], marker="stopped.json",
             age_s=90)
    make_run(root / "nan", marker="diverged.json", age_s=30, events=[{"step": 7, "train/loss": 9.0}])
    (root / "leftover").mkdir()  # what --dry-run used to leave: routing.json only
    write_json(root / "leftover" / "routing.json", [])
    return root


def test_status_classifies_every_state(runs: Path):
    live = RunDir(runs / "live")
    with hold(live.lock, str(live.path)):  # as train.py holds it while it trains
        status = {name: RunDir(runs / name).status() for name in ("done", "live", "dead", "grid/stopped",
                                                                  "nan", "leftover")}
    assert status == {"done": "complete", "live": "running", "dead": "failed", "grid/stopped": "stopped",
                      "nan": "diverged", "leftover": "missing"}
    assert RunDir(runs / "absent").status() == "missing"
    # the lock is freed when its process ends: a run left without a marker has failed
    assert live.status() == "failed"


def test_a_live_holder_is_running_before_its_config_or_over_an_earlier_attempts_marker(runs: Path, capsys):
    """train.py takes the lock before it writes config.yaml and removes the markers later: running."""
    for name in ("not-yet", "nan", "grid/stopped"):
        run = RunDir(runs / name)
        with hold(run.lock, str(run.path)):
            assert run.status() == "running"
            assert main(["--status", str(run.path)]) == 0
            assert capsys.readouterr().out == "running\n"
    assert main(["--status", str(runs / "done")]) == 0 and capsys.readouterr().out == "complete\n"


def test_listing_json_has_every_run_and_field(runs: Path, capsys):
    assert main([str(runs), "--json", "--sort", "name"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["dead", "done", "grid/stopped", "leftover", "live", "nan"]
    done = rows["done"]
    assert (done["status"], done["steps_done"], done["steps_total"], done["routing"], done["lr"],
            done["eval_loss"]) == ("complete", 30, 30, "adamw", "0.003", 4.5)
    assert rows["dead"]["lr"] == "0.01/0.02" and rows["dead"]["routing"] == "muon-hidden"
    assert rows["live"]["eval_loss"] == 8.3 and rows["live"]["steps_done"] == 120
    assert rows["leftover"]["status"] == "missing" and rows["leftover"]["steps_total"] is None
    assert rows["done"]["age_s"] == pytest.approx(7200, abs=60)


@pytest.mark.parametrize(("key", "order"), [
    ("age", ["live", "nan", "grid/stopped", "dead", "done"]),  # newest first
    ("loss", ["done", "grid/stopped", "live"]),  # lowest latest eval loss first, runs without one last
    ("steps", ["live", "dead", "grid/stopped", "done", "nan"]),
])
def test_listing_sorts(runs: Path, capsys, key: str, order: list[str]):
    assert main([str(runs), "--sort", key]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [n for n in names if n in order] == order


def test_listing_table_and_errors(runs: Path, tmp_path: Path, capsys):
    assert main([str(runs), "--sort", "name"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "status", "steps", "routing", "lr", "eval", "loss", "age"]
    assert lines[3].split() == ["done", "complete", "30/30", "adamw", "0.003", "4.5000", "2h"]
    assert main([str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.startswith(f"error: no directory {tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 0 and "no runs under" in capsys.readouterr().out


def test_no_runs_directory_yet_is_not_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh clone: runs/ does not exist before the first run
    assert main([]) == 0 and capsys.readouterr().out.strip() == "no runs under runs"
