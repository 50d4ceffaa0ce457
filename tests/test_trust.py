"""Runs you can trust: no silent overwrite, exact extension, graceful stop and exact resume, visible
processes, evaluation of any checkpoint, self-contained run directories, the CLI, wandb read back."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import (  # noqa: F401  (fixtures)
    LAUNCHERS,
    ROOT,
    base_args,
    corpus,
    final_weights,
    read_metrics,
    run_train,
    without_perf,
)

from common.errors import UserError
from training.config import load_config
from training.identity import run_dir
from training.stop import STOPPED_EXIT_CODE

pytestmark = pytest.mark.slow


def snapshot(run: Path) -> dict[str, bytes]:
    """The bytes of the files a finished run must keep."""
    return {name: (run / name).read_bytes() for name in ("config.yaml", "summary.json", "metrics.jsonl")}


@pytest.fixture(scope="module")
def finished(base_args, tmp_path_factory) -> Path:  # noqa: F811
    run = tmp_path_factory.mktemp("runs") / "finished"
    run_train([*base_args, f"run.dir={run}"])
    return run


def test_rerunning_a_finished_run_leaves_it_untouched(finished, base_args):  # noqa: F811
    before = snapshot(finished)
    proc = run_train([*base_args, f"run.dir={finished}"])
    assert "is complete" in proc.stdout
    assert snapshot(finished) == before


def test_a_finished_run_is_complete_in_the_listing(finished, capsys):
    from common.rundir import RunDir
    from training.runs import main

    assert RunDir(finished).status() == "complete"
    assert main([str(finished.parent), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert (row["status"], row["steps_done"], row["steps_total"]) == ("complete", 20, 20)


def test_progress_bar_shows_the_eval_loss_and_a_pipe_keeps_lines_whole(base_args, tmp_path):  # noqa: F811
    run = tmp_path / ("a-long-directory-name-" * 5) / "run"
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | {
        "MUONLAB_CACHE": os.environ.get("MUONLAB_CACHE", str(ROOT / ".cache")), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "train.py", *base_args, "train.steps=10", f"run.dir={run}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"eval=\d+\.\d{3}", proc.stderr)  # the latest eval loss, in the progress bar
    assert any(str(run) in line for line in proc.stdout.splitlines())  # the summary table, not wrapped


def test_other_steps_is_a_conflict_that_names_extend_to(finished, base_args):  # noqa: F811
    before = snapshot(finished)
    proc = run_train([*base_args, "train.steps=30", f"run.dir={finished}"], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and "train.steps (20 -> 30)" in line and "train.extend_to=30" in line
    assert snapshot(finished) == before


def test_cosine_run_cannot_be_extended(finished, base_args):  # noqa: F811
    before = snapshot(finished)
    proc = run_train([*base_args, "train.extend_to=30", f"run.dir={finished}"], check=False)
    assert proc.returncode == 1
    assert "cannot extend" in proc.stderr and "cosine" in proc.stderr
    assert snapshot(finished) == before


def test_constant_schedule_extends_exactly(base_args, tmp_path):  # noqa: F811
    constant = [*base_args, "optim.schedule=constant"]
    extended, direct = tmp_path / "extended", tmp_path / "direct"
    run_train([*constant, f"run.dir={extended}"])
    proc = run_train([*constant, "train.extend_to=30", f"run.dir={extended}"])
    assert "extending from step_20" in proc.stdout
    run_train([*constant, "train.steps=30", f"run.dir={direct}"])
    assert without_perf(read_metrics(extended)) == without_perf(read_metrics(direct))
    for name, tensor in final_weights(direct, 30).items():
        assert torch.equal(final_weights(extended, 30)[name], tensor), name
    assert json.loads((extended / "summary.json").read_text())["steps"] == 30
    # the same extension command again: complete, nothing to do
    assert "is complete" in run_train([*constant, "train.extend_to=30", f"run.dir={extended}"]).stdout
    # the original command remembers the extension: complete, exit 0, nothing touched
    before = snapshot(extended)
    proc = run_train([*constant, f"run.dir={extended}"])
    assert "is complete (extended to 30)" in proc.stdout
    assert snapshot(extended) == before
    assert json.loads((extended / "extensions.json").read_text()) == [
        {"from_steps": 20, "to_steps": 30, "checkpoint": "step_20"}]
    # an extension not yet finished: the original command says how to resume it
    (extended / "summary.json").unlink()
    proc = run_train([*constant, f"run.dir={extended}"], check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {extended} is being extended from 20 to 30 steps; to resume the extension, add "
        "train.extend_to=30")


def test_derived_run_directories_differ_with_the_config():
    a, b = load_config(), load_config(overrides=["optim.adamw_lr=0.01"])
    assert run_dir(a) != run_dir(b)
    assert run_dir(a) == run_dir(load_config(overrides=["logging.wandb=true", "train.log_every=3"]))
    assert run_dir(a).name.startswith("tiny_muon-hidden_s0-")


def stop_midway(args: list[str], run: Path, sig: int, launcher: str = "python"
                ) -> subprocess.CompletedProcess:
    """Start train.py, send `sig` once step 10 is logged, and wait for it to exit."""
    env = {**os.environ, "MUONLAB_CACHE": os.environ.get("MUONLAB_CACHE", str(ROOT / ".cache")),
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([*LAUNCHERS[launcher], "train.py", *args, f"run.dir={run}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and any(e.get("step", 0) >= 10 and "train/loss" in e
                                                     for e in read_metrics(run)):
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def long_args(base_args) -> list[str]:  # noqa: F811
    """40 steps, checkpoints only at the end: a stop is the only way to get one midway."""
    return [*base_args, "train.steps=40", "train.checkpoint_every=0", "train.eval_every=20"]


@pytest.fixture(scope="module")
def long_reference(long_args, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "long"
    run_train([*long_args, f"run.dir={run}"])
    return run


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_with_a_checkpoint_and_resumes_exactly(long_args, long_reference, tmp_path, sig):
    run = tmp_path / "stopped"
    proc = stop_midway(long_args, run, sig)
    assert proc.returncode == STOPPED_EXIT_CODE, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    stop = json.loads((run / "stopped.json").read_text())
    assert 10 <= stop["step"] < 40 and stop["signal"] == sig
    assert f"stopped at step {stop['step']}; checkpoint " in proc.stderr
    assert (run / "checkpoints" / f"step_{stop['step']}" / "loop_state.json").is_file()
    assert not (run / "summary.json").exists()
    run_train([*long_args, f"run.dir={run}"])
    assert not (run / "stopped.json").exists()
    assert without_perf(read_metrics(run)) == without_perf(read_metrics(long_reference))
    for name, tensor in final_weights(long_reference, 40).items():
        assert torch.equal(final_weights(run, 40)[name], tensor), name


def test_sigterm_stops_two_processes_and_they_resume(long_args, long_reference, tmp_path):
    run = tmp_path / "stopped2"
    proc = stop_midway(long_args, run, signal.SIGTERM, launcher="torchrun")
    assert proc.returncode != 0
    stop = json.loads((run / "stopped.json").read_text())
    assert (run / "checkpoints" / f"step_{stop['step']}" / "loop_state.json").is_file()
    window = json.loads((run / "checkpoints" / f"step_{stop['step']}" / "loop_state.json").read_text())
    assert len(window.get("window", {"loss_sums": [0, 0]})["loss_sums"]) == 2  # one sum per rank
    proc = run_train([*long_args, f"run.dir={run}"], launcher="torchrun")
    assert "2 processes (DDP) on cpu" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["mode"] == "DDP"
    ref = {(e["step"], k): v for e in read_metrics(long_reference) for k, v in e.items() if k == "train/loss"}
    got = {(e["step"], k): v for e in read_metrics(run) for k, v in e.items() if k == "train/loss"}
    assert got.keys() == ref.keys()
    for key in ref:  # 2 ranks sum their losses in another order: float32 noise only
        assert got[key] == pytest.approx(ref[key], rel=1e-4), key


def test_summary_after_resuming_at_the_last_step_is_finite(finished, tmp_path, base_args):  # noqa: F811
    run = tmp_path / "crashed_at_the_end"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()  # as if killed between the last checkpoint and the summary
    proc = run_train([*base_args, f"run.dir={run}"])
    assert "1 process (single) on cpu" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    old = json.loads((finished / "summary.json").read_text())
    assert summary["final/train_loss"] == old["final/train_loss"]
    assert summary["final/eval_loss"] == old["final/eval_loss"] and summary["tokens_per_s"] > 0


def test_evaluate_matches_the_logged_eval(finished):
    from training.evaluate import evaluate_checkpoint

    out = evaluate_checkpoint(finished / "checkpoints" / "step_10")
    logged = next(e for e in read_metrics(finished) if e["step"] == 10 and "eval/loss" in e)
    assert out["step"] == 10
    for key in ("eval/loss", "eval/tail/loss_b0", "eval/tail/gap", "spectra/v/svd_entropy"):
        assert out["metrics"][key] == pytest.approx(logged[key], rel=1e-6), key
    assert json.loads((finished / "evals" / "step_10.json").read_text())["metrics"] == out["metrics"]


def test_evaluate_never_overwrites(finished, base_args, capsys):  # noqa: F811
    from training.evaluate import evaluate_checkpoint, main

    ckpt = finished / "checkpoints" / "step_20"
    small = evaluate_checkpoint(ckpt, tokens=2048)
    assert small["written"] == str(finished / "evals" / "step_20_tokens2048.json") and "already" not in small
    written = Path(small["written"]).read_bytes()
    assert json.loads(written)["eval_tokens"] == 2048
    assert evaluate_checkpoint(ckpt, tokens=2048)["already"]  # the same budget: not recomputed
    assert main([str(ckpt), "--tokens", "2048"]) == 0
    assert "already evaluated (same checkpoint, token budget and data)" in capsys.readouterr().out
    assert Path(small["written"]).read_bytes() == written
    default = evaluate_checkpoint(ckpt, tokens=4096)  # the run's own train.eval_tokens: the plain name
    assert default["written"] == str(finished / "evals" / "step_20.json")
    assert default["metrics"]["eval/loss"] != small["metrics"]["eval/loss"]
    data_dir = next(a for a in base_args if a.startswith("data.dir=")).split("=", 1)[1]
    other = evaluate_checkpoint(ckpt, data_dir=data_dir)
    assert re.fullmatch(r"step_20_data-ds-[0-9a-f]{8}\.json", Path(other["written"]).name)
    assert other["data"]["dir"] == data_dir
    assert Path(small["written"]).read_bytes() == written

    # another checkpoint of step 20 (an extension rewrites the later checkpoints): an error, not stale figures
    marker = ckpt / "loop_state.json"
    original = marker.read_text()
    marker.write_text(original.replace('"wall_time_s": ', '"wall_time_s": 1'))
    try:
        with pytest.raises(UserError, match="holds the evaluation of an earlier checkpoint of step 20"):
            evaluate_checkpoint(ckpt, tokens=2048)
    finally:
        marker.write_text(original)
    assert Path(small["written"]).read_bytes() == written


def test_evaluate_cli_from_another_directory(finished, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training.evaluate", str(finished)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "eval/loss" in proc.stdout and (finished / "evals" / "step_20.json").is_file()


def test_export_needs_nothing_but_the_run_directory(finished, base_args, tmp_path):  # noqa: F811
    from transformers import AutoTokenizer

    from training.export import main

    data_dir = Path(next(a for a in base_args if a.startswith("data.dir=")).split("=", 1)[1])
    moved = tmp_path / "data_moved"
    shutil.move(data_dir, moved)  # the data cache is gone
    try:
        assert main(["export", str(finished), str(tmp_path / "hf")]) == 0
    finally:
        shutil.move(moved, data_dir)
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")("the king")["input_ids"]


def test_options_anywhere_and_print_config(base_args, tmp_path):  # noqa: F811
    run = tmp_path / "dry"
    proc = run_train(["optim.muon=vo", *base_args, f"run.dir={run}", "--dry-run",
                      "--out", str(run / "routing.json")])
    assert (run / "routing.json").is_file() and "v_proj" in proc.stdout
    proc = run_train(["optim.adamw_lr=0.02", "--print-config"])
    assert "adamw_lr: 0.02" in proc.stdout
    helptext = run_train(["--help"]).stdout
    assert "train.extend_to=null" in helptext and "optim.muon=hidden" in helptext


@pytest.mark.parametrize("override, message", [
    ("optim.adamw_lr=-1", "optim.adamw_lr must be >= 0"),
    ("optim.momentum=1.5", "optim.momentum must be in [0, 1)"),
    ("train.extend_to=5", "train.extend_to=5 must exceed train.steps=20"),
    ("optim.muon=vo,fnn", "unknown parameter group 'fnn'"),
])
def test_cheap_checks_come_before_the_data(base_args, tmp_path, override, message):  # noqa: F811
    args = [a for a in base_args if not a.startswith("data.")]
    missing = f"data.source={tmp_path}/nothing/*.txt"  # would be an error too, but later
    proc = run_train([*args, missing, override, f"run.dir={tmp_path / 'run'}"], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's .wandb file: a 7-byte header (":W&B", magic, version),
    then LevelDB-log blocks of 32 KiB whose records (crc32c, length, type) may span blocks."""
    from wandb.proto import wandb_internal_pb2

    raw, records, pending, offset = path.read_bytes(), [], b"", 7
    assert raw[:4] == b":W&B"
    while offset + 7 <= len(raw):
        if 32768 - offset % 32768 < 7:  # a block's tail too short for a header is padding
            offset += 32768 - offset % 32768
            continue
        length, kind = int.from_bytes(raw[offset + 4:offset + 6], "little"), raw[offset + 6]
        pending += raw[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
        elif kind == 0:
            break
    return records


def test_wandb_offline_run_read_back(base_args, tmp_path):  # noqa: F811
    run = tmp_path / "wandb"
    run_train([*base_args, "train.steps=10", "logging.wandb=true", "logging.wandb_mode=offline",
               f"run.dir={run}"])
    records = [r for path in (run / "wandb").glob("offline-run-*/run-*.wandb") for r in wandb_records(path)]
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    step0 = [h for h in history if h.get("_step") == 0]
    assert step0 and "eval/loss" in step0[0], "the step-0 evaluation is lost"
    assert any(k.startswith("routing/") for k in step0[0]), "the routing table is logged with step 0"
    assert all("train/tokens" in h for h in history if "train/loss" in h)
    assert not any("/layer" in k for h in history for k in h), "per-layer spectra belong in the table"
    tables = [{k.removesuffix("/_type") for k in h if k.endswith("/_type")} for h in history]
    assert any({"spectra_per_layer", "eval/tail/buckets_table"} <= t for t in tables), tables
    metrics = {r.metric.name or r.metric.glob_name: r.metric for r in records
               if r.WhichOneof("record_type") == "metric"}
    assert metrics["train/*"].step_metric == "train/tokens"
    assert metrics["eval/loss"].summary.min
    run_record = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run_record.display_name == "wandb" and run_record.run_group.startswith("tiny_")
    assert "muon:hidden" in list(run_record.tags)
