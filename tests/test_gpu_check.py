"""benchmarks/gpu_check.sh rehearsed on CPU (`--cpu-smoke`), as on an offline GPU node: omegaconf, wandb
and datasets cannot be imported except from the wheelhouse, and pip has no index. Every part runs and
is recorded, a failing one and one past the budget too, and everything comes back in two files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check.harness import PARTS, parse_args, read_archive, spawn_part
from benchmarks.gpu_check.modes import CPU_SMOKE

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
HIDDEN = ("omegaconf", "wandb", "datasets")  # what the validated GPU node lacks

# An import hook (via sitecustomize, so every process of the check has it): the path finder no longer
# sees the hidden packages except in the folders of MUONLAB_HIDE_ALLOW, where gpu_check.sh installs the
# wheelhouse. Elsewhere they are absent exactly as on the node: importlib.util.find_spec gives None
# (accelerate and transformers probe wandb that way), and importing them raises ModuleNotFoundError.
HIDING_SITECUSTOMIZE = '''
import importlib.machinery, os, sys

class HidingPathFinder(importlib.machinery.PathFinder):
    hidden = set(os.environ["MUONLAB_HIDE"].split(","))
    allowed = [p for p in os.environ.get("MUONLAB_HIDE_ALLOW", "").split(os.pathsep) if p]

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if path is None and name in cls.hidden:
            return importlib.machinery.PathFinder.find_spec(name, cls.allowed)
        return importlib.machinery.PathFinder.find_spec(name, path, target)

sys.meta_path[:] = [HidingPathFinder if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
'''


@pytest.fixture(scope="module")
def node_env(tmp_path_factory) -> dict[str, str]:
    """The environment of an offline node without omegaconf, wandb and datasets, and a wheelhouse."""
    root = tmp_path_factory.mktemp("node")
    wheels, site, hook = root / "whl", root / "site", root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HIDING_SITECUSTOMIZE)
    # the one step that needs a package index, as on a networked machine
    subprocess.run(["bash", "benchmarks/wheelhouse.sh", "--dir", str(wheels)], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHON": sys.executable}, capture_output=True)
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(hook), "MUONLAB_HIDE": ",".join(HIDDEN),
            "MUONLAB_HIDE_ALLOW": str(site), "MUONLAB_WHEELHOUSE": str(wheels),
            "MUONLAB_WHEEL_TARGET": str(site), "PIP_NO_INDEX": "1"}


def gpu_check(out: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    cmd = ["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--out", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, env=env)


def record(out: Path, part: str) -> dict:
    return json.loads(read_archive(out)[f"gpu_check/{part}.json"])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, node_env) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_check")
    return out, gpu_check(out, node_env)


def test_the_hook_hides_the_packages_the_node_lacks(node_env):
    for name in HIDDEN:
        probe = f"import importlib.util; assert importlib.util.find_spec({name!r}) is None; import {name}"
        proc = subprocess.run([sys.executable, "-c", probe], env=node_env, capture_output=True, text=True)
        assert proc.returncode == 1 and f"ModuleNotFoundError: No module named '{name}'" in proc.stderr, name


def test_the_check_installs_omegaconf_from_the_wheelhouse_and_needs_no_wandb_or_datasets(smoke, node_env):
    out, proc = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    first_lines = proc.stdout.splitlines()[:20]
    assert any(line.startswith("package omegaconf 2.4.0: wheelhouse (omegaconf-2.4.0-py3-none-any.whl")
               for line in first_lines), first_lines
    assert any(line.startswith("package torch ") and line.endswith("the node's") for line in first_lines)
    assert (Path(node_env["MUONLAB_WHEEL_TARGET"]) / "omegaconf").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert "omegaconf 2.4.0: wheelhouse" in summary["environment"]["package_sources"]


def test_two_files_come_back_and_every_part_runs_and_is_recorded(smoke):
    out, proc = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.tar.gz", "summary.json"]
    for part in PARTS:
        rec = record(out, part)
        assert rec["part"] == part and rec["ok"] and rec["error"] is None and rec["seconds"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(read_archive(out)["gpu_check/summary.json"])
    assert summary["ok"] and summary["complete"] and summary["mode"] == "cpu-smoke"
    assert list(summary["parts"]) == list(PARTS)
    assert summary["environment"]["torch"] and summary["environment"]["attention_ops"]
    table = proc.stdout[proc.stdout.index("GPU check (cpu-smoke)"):]
    assert "key figures" in table and all(part in table for part in PARTS)


def test_the_parts_measure_what_they_say(smoke):
    out, _ = smoke
    tests = record(out, "gpu_tests")["results"]
    assert tests["tests"] > 0 and tests["skipped"] == tests["tests"]  # no CUDA: every GPU test skips
    step = record(out, "train_step_eager")["results"]
    assert {(r["model"], r["optim"]) for r in step["rows"]} == {
        (m, o) for m in ("muonlab", "llama") for o in ("adamw", "muon")}
    assert all(t["met"] is None for t in step["targets"])  # GPU targets are not judged on CPU
    assert set(step["attention"]) == {"muonlab", "llama"} and all(step["attention"].values())
    # the CPU smoke never compiles
    assert record(out, "train_step_compiled")["results"]["status"] == "not run"
    muon = record(out, "muon_step")["results"]
    assert muon["buckets"] and muon["judged_step_ms"] == step["judged"]["ms_per_step"]
    assert 0 < muon["flop_bound"] < 1 and muon["share_vs_flop_bound"] == pytest.approx(
        muon["muon_share_judged"] / muon["flop_bound"])
    chunks = record(out, "loss_chunks")["results"]
    assert chunks["default_chunk_rows"] == 256 and {row["chunk_rows"] for row in chunks["sweep"]} >= {
        "256", "unfused"}
    run = record(out, "real_run")["results"]
    assert run["loss_last"] < run["loss_first"] and run["tokens_per_s"] > 0 and run["mfu"] is None
    assert run["params"] > 0
    assert "gpu_check/real_run.metrics.jsonl" in read_archive(out)
    assert record(out, "stop_resume")["results"]["status"] in (
        "resumed", "graceful stop not available", "not exercised")
    assert all(row["peak_memory_bytes"] > 0 for row in record(out, "train_memory")["results"]["rows"])


def test_a_failing_part_is_recorded_and_the_next_still_runs(tmp_path, node_env):
    proc = gpu_check(tmp_path, node_env, "--parts", "real_run,loss_chunks", "--train-arg",
                     "train.no_such_key=1")
    assert proc.returncode == 1
    failed = record(tmp_path, "real_run")
    assert not failed["ok"] and "no_such_key" in failed["error"] and failed["results"] == {}
    assert record(tmp_path, "loss_chunks")["ok"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not summary["ok"] and list(summary["parts"]) == ["real_run", "loss_chunks"]
    assert "no_such_key" in summary["parts"]["real_run"]["error"]  # the telling line, not a traceback
    assert "FAILED" in proc.stdout


def test_a_part_past_the_budget_is_recorded_as_not_run(tmp_path, node_env):
    proc = gpu_check(tmp_path, node_env, "--parts", "loss_chunks", "--budget", "5")
    assert proc.returncode == 1
    assert "budget was spent" in record(tmp_path, "loss_chunks")["error"]


def test_a_part_out_of_time_keeps_what_it_saved(tmp_path):
    """A part killed at its limit keeps what it had saved with Context.save_partial, marked partial."""
    records = tmp_path / "records"
    records.mkdir()
    (records / "gpu_tests.partial.json").write_text(json.dumps({"rows": [{"measured": 1}]}))
    # 0.5 s: the part's process cannot even import pytest in that time
    rec = spawn_part(CPU_SMOKE, records, "gpu_tests", 0.5, ["--work", str(tmp_path), "--cpu-smoke"])
    assert not rec["ok"] and rec["message"].startswith("timed out after")
    assert rec["results"] == {"rows": [{"measured": 1}], "partial": True}
    assert json.loads((records / "gpu_tests.json").read_text()) == rec


def test_the_script_uses_python3_where_python_is_absent(tmp_path):
    """As on the node: only `python3` on PATH (and no PYTHON set)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"} | {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("package torch ") and "usage: python -m benchmarks.gpu_check" in proc.stdout


def test_unknown_parts_are_a_usage_error():
    with pytest.raises(SystemExit):
        parse_args(["--parts", "gpu_tests,nope"])
