"""benchmarks.gpu_check in its CPU smoke mode: every part runs and is recorded, a failing one too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import PARTS, parse_args

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def gpu_check(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = ["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--out", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "PYTHON": sys.executable})


def record(out: Path, part: str) -> dict:
    return json.loads((out / f"{part}.json").read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_check")
    return out, gpu_check(out)


def test_every_part_runs_and_is_recorded(smoke):
    out, proc = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for part in PARTS:
        rec = record(out, part)
        assert rec["part"] == part and rec["ok"] and rec["error"] is None and rec["seconds"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["mode"] == "cpu-smoke" and list(summary["parts"]) == list(PARTS)
    assert summary["environment"]["torch"] and summary["environment"]["attention_ops"]
    table = proc.stdout[proc.stdout.index("GPU check (cpu-smoke)"):]
    assert "key figures" in table and all(part in table for part in PARTS)


def test_the_parts_measure_what_they_say(smoke):
    out, _ = smoke
    tests = record(out, "gpu_tests")["results"]
    assert tests["tests"] > 0 and tests["skipped"] == tests["tests"]  # no CUDA: every GPU test skips
    step = record(out, "train_step")["results"]
    assert {(r["model"], r["optim"]) for r in step["rows"]} == {
        (m, o) for m in ("muonlab", "llama") for o in ("adamw", "muon")}
    assert all(t["met"] is None for t in step["targets"])  # GPU targets are not judged on CPU
    muon = record(out, "muon_step")["results"]
    assert muon["buckets"] and muon["judged_step_ms"] == step["judged"]["ms_per_step"]
    chunks = record(out, "loss_chunks")["results"]
    assert {row["chunk_rows"] for row in chunks["sweep"]} >= {"256", "unfused"}
    run = record(out, "real_run")["results"]
    assert run["loss_last"] < run["loss_first"] and run["tokens_per_s"] > 0 and run["mfu"] is None
    assert (out / "real_run.metrics.jsonl").is_file()
    assert record(out, "stop_resume")["results"]["status"] in (
        "resumed", "graceful stop not available", "not exercised")
    assert all(row["peak_memory_bytes"] > 0 for row in record(out, "train_memory")["results"]["rows"])


def test_a_failing_part_is_recorded_and_the_next_still_runs(tmp_path):
    proc = gpu_check(tmp_path, "--parts", "real_run,loss_chunks", "--train-arg", "train.no_such_key=1")
    assert proc.returncode == 1
    failed = record(tmp_path, "real_run")
    assert not failed["ok"] and "no_such_key" in failed["error"] and failed["results"] == {}
    assert record(tmp_path, "loss_chunks")["ok"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not summary["ok"] and list(summary["parts"]) == ["real_run", "loss_chunks"]
    assert "no_such_key" in summary["parts"]["real_run"]["error"]  # the telling line, not a traceback
    assert "FAILED" in proc.stdout


def test_a_part_past_the_budget_is_recorded_as_not_run(tmp_path):
    proc = gpu_check(tmp_path, "--parts", "loss_chunks", "--budget", "5")
    assert proc.returncode == 1
    assert "budget was spent" in record(tmp_path, "loss_chunks")["error"]


def test_unknown_parts_are_a_usage_error():
    with pytest.raises(SystemExit):
        parse_args(["--parts", "gpu_tests,nope"])
