"""Nothing lost under faults: two processes on a run, two runners on a grid, damaged checkpoints and
data shards, full disks, cut metrics lines, divergence, and SIGKILL at random moments.

Runs are train.py forked from a preloaded server (tests/fault_runs.py), which also injects the
faults; each run is compared with an uninterrupted one, bit for bit.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import fault_runs
import pytest
from safetensors.torch import load_file
from test_ablations import synthetic_run
from test_train import ROOT, base_args, corpus, read_metrics, without_perf  # noqa: F401  (fixtures)

from ablations.reading.report import build_report
from ablations.reading.rows import read_history
from ablations.running.grid import load_grid
from ablations.running.runner import run_grid
from common.checksums import record_files
from common.errors import UserError
from common.lock import holder
from common.rundir import CHECKPOINT_MARKER, RunDir
from data.loader import TokenLoader
from training.checkpoint import checkpoint_problem, prune_checkpoints

pytestmark = pytest.mark.slow


def train(args: list[str], run: Path, fault: tuple | None = None,
          logs: Path | None = None) -> tuple[int, str]:
    """(exit code, log) of train.py `args` on `run`, in a forked child with `fault` injected; the log
    goes to `logs` (default: beside the run)."""
    log = (logs or run.parent) / f"{run.name}.{time.monotonic_ns()}.log"
    return fault_runs.run([*args, f"run.dir={run}"], log, fault), log.read_text()


def error_line(log: str) -> str:
    """The run's one `error:` line (no traceback); in a log file it follows the progress bar's last
    state on the same line, and the bar may print once more after it."""
    assert "Traceback" not in log, log[-3000:]
    errors = [line[line.index("error:"):] for line in log.splitlines() if "error:" in line]
    assert len(errors) == 1, log[-3000:]
    return errors[0]


def assert_same_run(run: Path, reference: Path, step: int = 20, context: object = "") -> None:
    """The same metrics.jsonl (perf fields aside) and the same final weights, bit for bit."""
    assert without_perf(read_metrics(run)) == without_perf(read_metrics(reference)), context
    ref, got = (load_file(r / "checkpoints" / f"step_{step}" / "model.safetensors") for r in (reference, run))
    assert ref.keys() == got.keys() and all((ref[k] == got[k]).all() for k in ref), context


@pytest.fixture(scope="module")
def reference(base_args, tmp_path_factory) -> Path:  # noqa: F811
    """The uninterrupted run: 20 steps, checkpoints at 10 and 20, train loss every 5, eval every 10."""
    run = tmp_path_factory.mktemp("faults") / "reference"
    rc, log = train(base_args, run)
    assert rc == 0, log[-3000:]
    return run


def unfinished_copy(reference: Path, dest: Path) -> Path:
    """`reference` as if killed after writing its step-20 checkpoint, before summary.json."""
    shutil.copytree(reference, dest)
    (dest / "summary.json").unlink()
    return dest


# -- 1. two processes on one run directory ------------------------------------------------------


def hold_in_another_process(lock: Path) -> subprocess.Popen:
    """A live process (not a child of this one) holding `lock` until it is killed."""
    code = ("import sys, time; from common.lock import hold\nwith hold(sys.argv[1], 'x'):\n"
            "    print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_start_is_refused_and_a_dead_holders_lock_is_taken_over(base_args, reference, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    other = hold_in_another_process(RunDir(run).lock)
    try:
        rc, log = train(base_args, run)
        assert rc == 1
        line = error_line(log)
        assert line.startswith(f"error: {run} is in use by pid {other.pid} on host {socket.gethostname()}")
        assert not run.exists()  # refused before it wrote anything
    finally:
        other.kill()  # SIGKILL: the lock file stays, naming a dead process
        other.wait()
    assert str(other.pid) in RunDir(run).lock.read_text()
    rc, log = train(base_args, run)
    assert rc == 0, log[-3000:]
    assert_same_run(run, reference)


def test_the_same_command_twice_at_once_trains_once(base_args, reference, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    go = tmp_path / "go"  # the first run waits at its second metrics line until this exists
    first = fault_runs.start([*base_args, f"run.dir={run}"], tmp_path / "first.log",
                             ("stall", "metrics", 2, go))
    while (who := holder(RunDir(run).lock)) is None:
        assert first.exitcode is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.05)
    assert who == f"pid {first.pid} on host {socket.gethostname()}"
    rc, log = train(base_args, run)
    assert rc == 1 and f"in use by pid {first.pid}" in error_line(log)
    go.touch()
    first.join()
    assert first.exitcode == 0
    assert_same_run(run, reference)


# -- 2. two grid runners on one grid ------------------------------------------------------------

FAKE_TRAIN = """
    import os, sys, time
    from pathlib import Path
    from common.lock import LockHeld, hold
    from common.rundir import RunDir
    kv = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    run = RunDir(Path(kv["run.dir"]))
    try:
        with hold(run.lock, str(run.path)):  # as train.py does: lock, then look
            if run.is_finished():
                sys.exit(print(f"{run.path} is complete"))
            run.path.mkdir(parents=True, exist_ok=True)
            with open(run.path / "trained_by", "a") as f:
                f.write(f"{os.getppid()}\\n")  # the runner that started it
            time.sleep(1.5)
            run.summary.write_text("{}")
    except LockHeld as err:
        sys.exit(f"error: {err}")
"""

RUNNER = """
    import json, sys
    from pathlib import Path
    from ablations.running.grid import load_grid
    from ablations.running.runner import run_grid
    outcomes = run_grid(load_grid(sys.argv[1]), Path(sys.argv[2]), num_gpus=0,
                        train_cmd=[sys.executable, sys.argv[3]])
    print(json.dumps({o.name: o.status for o in outcomes}))
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def tiny_grid(tmp_path: Path) -> Path:
    base = write(tmp_path / "base.yaml", "model: {preset: tiny}\n")
    runs = "[{optim.muon: none}, {optim.muon: hidden}, {optim.muon: vo}, {optim.muon: qk}]"
    return write(tmp_path / "g.yaml", f"name: g\nbase: {base}\nruns: {runs}\n")


def test_two_runners_on_one_grid_share_the_work(tiny_grid, tmp_path):
    out, fake = tmp_path / "out", write(tmp_path / "fake.py", FAKE_TRAIN)
    runner = write(tmp_path / "runner.py", RUNNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    procs = [subprocess.Popen([sys.executable, str(runner), str(tiny_grid), str(out), str(fake)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    statuses = [json.loads(stdout.splitlines()[-1]) for stdout, _ in results]
    trained_by = {name: (out / name / "trained_by").read_text().split()
                  for name in ["adamw", "muon-hidden", "muon-vo", "muon-qk"]}
    assert all(len(runners) == 1 for runners in trained_by.values()), trained_by  # each trained once
    assert {r for runners in trained_by.values() for r in runners} == {str(p.pid) for p in procs}  # by both
    assert all(set(s.values()) <= {"done", "held", "skipped"} for s in statuses), statuses


def test_runner_skips_a_run_held_by_a_live_process(tiny_grid, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # for the fake train.py
    out, fake = tmp_path / "out", write(tmp_path / "fake.py", FAKE_TRAIN)
    other = hold_in_another_process(RunDir(out / "muon-vo").lock)
    try:
        outcomes = run_grid(load_grid(tiny_grid), out, num_gpus=0, train_cmd=[sys.executable, str(fake)])
    finally:
        other.kill()
        other.wait()
    assert [(o.name, o.status) for o in outcomes] == [
        ("adamw", "done"), ("muon-hidden", "done"), ("muon-vo", "held"), ("muon-qk", "done")]
    assert not (out / "muon-vo").exists()
    assert f"run muon-vo is held by pid {other.pid} on host {socket.gethostname()}" in capsys.readouterr().out


# -- 3. damaged checkpoints ---------------------------------------------------------------------


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": lambda c: os.truncate(c / "model.safetensors", 1000),
    "missing optimizer": lambda c: (c / "custom_checkpoint_0.pkl").unlink(),
    "flipped bytes": lambda c: flip_bytes(c / "model.safetensors"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(base_args, reference, tmp_path,  # noqa: F811
                                                                    damage):
    run = unfinished_copy(reference, tmp_path / "run")
    DAMAGE[damage](run / "checkpoints" / "step_20")
    rc, log = train(base_args, run)
    assert rc == 0, log[-3000:]
    warnings = [line for line in log.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{run}/checkpoints/step_20 fails verification" in warnings[0]
    assert "resuming from step_10" in warnings[0]
    assert_same_run(run, reference)  # exactly as from step 10


def test_checkpoints_without_checksums_resume_unverified(base_args, reference, tmp_path):  # noqa: F811
    """Checkpoints written before checksums were recorded: accepted as they are."""
    run = unfinished_copy(reference, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "step_20")
    marker = run / "checkpoints" / "step_10" / CHECKPOINT_MARKER
    old = {k: v for k, v in json.loads(marker.read_text()).items() if k != "files"}
    marker.write_text(json.dumps(old))
    assert checkpoint_problem(marker.parent) is None
    rc, log = train(base_args, run)
    assert rc == 0 and "resuming" in log, log[-3000:]
    assert_same_run(run, reference)


def test_when_every_checkpoint_is_damaged_nothing_is_deleted(base_args, reference, tmp_path):  # noqa: F811
    run = unfinished_copy(reference, tmp_path / "run")
    for step in (10, 20):
        flip_bytes(run / "checkpoints" / f"step_{step}" / "model.safetensors")
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    rc, log = train(base_args, run)
    assert rc == 1
    line = error_line(log)
    assert line.startswith(f"error: every checkpoint of {run} fails verification") and "move" in line
    named = run / "checkpoints" / "step_10"
    rc, log = train([*base_args, f"train.resume={named}"], run)  # a damaged checkpoint named explicitly
    assert rc == 1
    assert error_line(log).startswith(f"error: train.resume={named}: the checkpoint fails verification")
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


def fake_checkpoint(run: RunDir, step: int) -> Path:
    ckpt = run.checkpoint(step)
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(os.urandom(64))
    (ckpt / CHECKPOINT_MARKER).write_text(json.dumps({"step": step, "files": record_files(ckpt)}))
    return ckpt


def test_keep_last_n_counts_only_checkpoints_that_verify(tmp_path):
    run = RunDir(tmp_path / "run")
    for step in (10, 20, 30):
        fake_checkpoint(run, step)
    os.truncate(run.checkpoint(30) / "model.safetensors", 10)  # the newest is damaged
    prune_checkpoints(run, keep=2)
    assert [p.name for p in run.checkpoints()] == ["step_10", "step_20", "step_30"]  # step_30 is no good one
    prune_checkpoints(run, keep=1)  # step_20 is good: older ones go; the damaged step_30 stays
    assert [p.name for p in run.checkpoints()] == ["step_20", "step_30"]
    fake_checkpoint(run, 40)
    prune_checkpoints(run, keep=1)  # a good one newer than step_30 exists now
    assert [p.name for p in run.checkpoints()] == ["step_40"]


# -- 4. full disk -------------------------------------------------------------------------------

# the write that fails: the step-20 checkpoint's first torch.save (optimizer state), the step-15
# train/loss append (the 5th line), summary.json
FULL_DISK = {"checkpoint": (3, "checkpoints/step_20"), "metrics": (5, "metrics.jsonl"),
             "summary": (1, "summary.json")}


@pytest.mark.parametrize("target", FULL_DISK)
def test_a_full_disk_keeps_the_last_checkpoint_and_the_rerun_resumes(base_args, reference, tmp_path,  # noqa: F811
                                                                     target):
    nth, path = FULL_DISK[target]
    run = tmp_path / "run"
    rc, log = train(base_args, run, fault=("enospc", target, nth))
    assert rc == 1
    assert error_line(log).startswith(f"error: cannot write {run / path} (")
    assert not (run / "summary.json").exists()
    assert not list((run / "checkpoints").glob(".tmp_*"))  # the half-written checkpoint is gone
    kept = run / "checkpoints" / "step_10"
    assert checkpoint_problem(kept) is None
    assert (kept / "model.safetensors").read_bytes() == (
        reference / "checkpoints" / "step_10" / "model.safetensors").read_bytes()
    rc, log = train(base_args, run)  # "space freed"
    assert rc == 0 and "resuming" in log, log[-3000:]
    assert_same_run(run, reference)


@pytest.fixture
def small_filesystem(tmp_path: Path):
    """mount(size) -> a tmpfs of `size` bytes under tmp_path (root only; skipped where mounting is not
    allowed, e.g. an unprivileged CI container). Unmounted at the end."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


def test_a_real_full_disk_during_a_checkpoint(base_args, reference, small_filesystem, tmp_path):  # noqa: F811
    """The kernel's ENOSPC on a tmpfs that holds the run up to half of its step-20 checkpoint."""
    step_20 = sum(f.stat().st_size for f in (reference / "checkpoints" / "step_20").iterdir())
    whole = sum(f.stat().st_size for f in reference.rglob("*") if f.is_file() and f.name != "summary.json")
    fs = small_filesystem(whole - step_20 // 2)
    run = fs / "run"
    rc, log = train(base_args, run, logs=tmp_path)
    assert rc == 1
    assert error_line(log).startswith(f"error: cannot write {run}/checkpoints/step_20 (")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_10"]  # the half-written one removed
    assert checkpoint_problem(run / "checkpoints" / "step_10") is None
    subprocess.run(["mount", "-o", "remount,size=64m", str(fs)], check=True)  # space freed
    rc, log = train(base_args, run, logs=tmp_path)
    assert rc == 0 and "resuming" in log, log[-3000:]
    assert_same_run(run, reference)


# -- 5. a cut last line in metrics.jsonl ----------------------------------------------------------


def test_a_cut_metrics_line_is_tolerated_and_rewritten_once(base_args, reference, tmp_path):  # noqa: F811
    run = unfinished_copy(reference, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "step_20")  # killed while appending after step 20's checkpoint...
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    with pytest.warns(UserWarning, match="not JSON"):  # the report reads what is whole
        history = read_history(RunDir(run))
    assert [s for s, _ in history["train/loss"]] == [5, 10, 15, 20]
    from training.evaluate import main as evaluate

    assert evaluate([str(run / "checkpoints" / "step_10")]) == 0
    rc, log = train(base_args, run)
    assert rc == 0, log[-3000:]
    assert_same_run(run, reference)  # the cut line rewritten, nothing twice


# -- 6. divergence -------------------------------------------------------------------------------

ABSURD = ["optim.adamw_lr=1e30", "optim.muon_lr=1e30", "optim.grad_clip=0", "optim.warmup_steps=0"]


def test_divergence_stops_at_the_first_non_finite_loss_and_keeps_the_last_good_checkpoint(
        base_args, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    rc, log = train([*base_args, *ABSURD, "train.log_every=1", "train.checkpoint_every=1"], run)
    assert rc == 1
    step = json.loads((run / "diverged.json").read_text())["step"]
    losses = [e["train/loss"] for e in read_metrics(run) if "train/loss" in e]
    assert len(losses) == step - 1 and all(math.isfinite(x) for x in losses)  # every step before it logged
    good = run / "checkpoints" / f"step_{step - 1}"
    assert error_line(log) == (f"error: training loss is nan at step {step}; last good checkpoint: {good}. "
                               "Lower optim.adamw_lr/optim.muon_lr or set optim.grad_clip, then rerun "
                               "(train.resume=auto)")
    assert RunDir(run).latest_checkpoint() == good and checkpoint_problem(good) is None
    assert not (run / "summary.json").exists()


def test_a_tuning_sweep_counts_a_diverged_run_as_the_worst_value(base_args, tmp_path):  # noqa: F811
    """A real grid: the sweep's absurd learning rate diverges, the runner marks it, the other value wins."""
    overrides = dict(a.split("=", 1) for a in base_args if not a.startswith("optim.adamw_lr"))
    overrides |= {"optim.grad_clip": 0, "optim.warmup_steps": 0, "train.steps": 10, "train.eval_every": 5}
    grid = load_grid(write(tmp_path / "g.yaml", f"""
        name: g
        overrides: {json.dumps(overrides)}
        runs: [{{optim.muon: none}}]
        seeds: [0]
        tune: {{keys: {{optim.adamw_lr: [1.0e-2, 1.0e+30]}}, seeds: [0], reuse_tuning_seeds: true,
               extend_edges: false}}
    """))
    out = tmp_path / "out"
    outcomes = run_grid(grid, out, num_gpus=0)
    good, absurd = (o.name for o in outcomes)  # the grid's run at the chosen value is the sweep's
    assert [o.status for o in outcomes] == ["done", "diverged"]
    assert RunDir(out / absurd).diverged() and not RunDir(out / absurd).is_finished()
    manifest = json.loads((out / "grid.json").read_text())
    assert [r["name"] for r in manifest["runs"]] == [good]  # chosen: the value that did not diverge
    build_report(out)
    with (out / "report" / "tuning.csv").open() as f:
        rows = {float(row["value"]): row for row in csv.DictReader(f)}
    assert rows[1e30]["eval_loss"] == "inf" and rows[1e30]["chosen"] == "False"  # ranked, as the worst
    assert float(rows[1e-2]["eval_loss"]) < 10 and rows[1e-2]["chosen"] == "True"


def test_the_report_lists_a_diverged_run_without_pooling_it(tmp_path):
    runs = tmp_path / "runs"
    synthetic_run(runs, "adamw_s0", "none", "swiglu", 0, 4.0)
    synthetic_run(runs, "adamw_s1", "none", "swiglu", 1, 4.2)
    synthetic_run(runs, "adamw_s2", "none", "swiglu", 2, None)
    (runs / "adamw_s2" / "diverged.json").write_text(json.dumps({"step": 50, "loss": "nan"}))
    report = build_report(runs).read_text()
    assert "## Diverged runs" in report and "`adamw_s2`" in report.split("## Diverged runs")[1]
    assert "## Unfinished runs" not in report
    with (runs / "report" / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["n_seeds"] == "2", rows  # seeds 0 and 1; not the diverged one


# -- 7. damaged data shards -----------------------------------------------------------------------


def damaged_copy(base_args: list[str], dest: Path, damage) -> Path:  # noqa: F811
    """A copy of the prepared dataset with `damage` done to its first training shard."""
    data_dir = Path(next(a.split("=", 1)[1] for a in base_args if a.startswith("data.dir=")))
    shutil.copytree(data_dir, dest)
    damage(dest / json.loads((dest / "meta.json").read_text())["shards"][0]["file"])
    return dest


@pytest.mark.parametrize("damage", [flip_bytes, lambda p: os.truncate(p, p.stat().st_size - 2)],
                         ids=["flipped bytes", "truncated"])
def test_a_damaged_shard_is_named_with_the_command_that_prepares_it_again(base_args, reference,  # noqa: F811
                                                                         tmp_path, damage):
    data = damaged_copy(base_args, tmp_path / "ds", damage)
    meta = json.loads((data / "meta.json").read_text())
    with pytest.raises(UserError) as err:
        TokenLoader(data, "train", seq_len=32, batch_size=8)
    message = str(err.value)
    assert f"{data}: shard {meta['shards'][0]['file']} " in message
    source = meta["settings"]["source"]
    assert f"rm -r {data} && python -m data.prepare --source '{source}' --out {data}" in message
    assert "--vocab-size 512 --val-tokens 8192" in message
    # through train.py: one error line, before anything is trained
    rc, log = train([*base_args, f"data.dir={data}"], tmp_path / "run")
    assert rc == 1 and error_line(log) == f"error: {message}"


def test_shards_without_checksums_load_unverified(base_args, reference, tmp_path):  # noqa: F811
    data = damaged_copy(base_args, tmp_path / "ds", flip_bytes)
    meta = json.loads((data / "meta.json").read_text())
    for entry in meta["shards"] + meta["val_shards"]:
        del entry["sha256"]  # as a manifest written before checksums were recorded
    (data / "meta.json").write_text(json.dumps(meta))
    assert TokenLoader(data, "train", seq_len=32, batch_size=8).batch(0).shape == (8, 33)


# -- 8. SIGKILL at random moments ------------------------------------------------------------------

# MUONLAB_CRASH_TRIALS=200 for a longer run (about 30 s per 20 trials on the 2-core CPU); the seed makes the
# kill points reproducible (the kills by time vary with the machine's speed).
CRASH_TRIALS = int(os.environ.get("MUONLAB_CRASH_TRIALS", "20"))
CRASH_SEED = int(os.environ.get("MUONLAB_CRASH_SEED", "0"))


def test_sigkill_at_random_moments_then_resume_ends_exactly_like_an_uninterrupted_run(
        base_args, reference, tmp_path):  # noqa: F811  (`reference`: the data is prepared before the timing)
    """8 steps, a checkpoint every 2 (2 kept), a metrics line every step: each trial kills the run once
    or twice, at a random write (half a metrics line, a half-written checkpoint file, a checkpoint
    with its marker not yet in place or not yet renamed, an old checkpoint half deleted) or at a
    random time, then resumes it; the result must be the uninterrupted run's, bit for bit."""
    args = [*base_args, "train.steps=8", "train.checkpoint_every=2", "train.log_every=1",
            "train.eval_every=4"]
    uninterrupted, occurrences = tmp_path / "uninterrupted", tmp_path / "occurrences.json"
    seconds = fault_runs.timed([*args, f"run.dir={uninterrupted}"], tmp_path / "uninterrupted.log",
                               occurrences)
    counts = {p: n for p, n in json.loads(occurrences.read_text()).items() if p in fault_runs.KILL_POINTS}
    assert set(counts) == set(fault_runs.KILL_POINTS), counts  # every kill point occurs in the run
    rng = random.Random(CRASH_SEED)
    landed: Counter[str] = Counter()  # kills that struck, by point (a kill may come after the run ended)
    trials_killed = 0
    for trial in range(CRASH_TRIALS):
        run, what, killed_here = tmp_path / f"trial{trial}", [], False
        for attempt in range(rng.choice([1, 2])):
            log = tmp_path / f"trial{trial}.{attempt}.log"
            if rng.random() < 0.3:
                at = rng.uniform(0.0, seconds)
                rc = fault_runs.run_killed_after([*args, f"run.dir={run}"], log, at)
                what.append(f"after {at:.2f} s")
                point = "time"
            else:
                point = rng.choice(sorted(counts))
                fault = ("kill", point, rng.randint(1, counts[point]))
                rc = fault_runs.run([*args, f"run.dir={run}"], log, fault)
                what.append(f"{point} #{fault[2]}")
            assert rc in (0, -9), (what, log.read_text()[-3000:])
            landed[point] += rc == -9
            killed_here = killed_here or rc == -9
        trials_killed += killed_here
        rc = fault_runs.run([*args, f"run.dir={run}"], tmp_path / f"trial{trial}.log")
        assert rc == 0, (what, (tmp_path / f"trial{trial}.log").read_text()[-3000:])
        assert_same_run(run, uninterrupted, step=8, context=(trial, what))
        shutil.rmtree(run)
    print(f"{CRASH_TRIALS} trials, {sum(landed.values())} kills landed: {dict(landed)}")
    assert trials_killed >= CRASH_TRIALS * 3 // 4, landed  # not a test of runs that were never killed
