"""Ablation grids: expansion and naming, the runner (skip/resume/failures), SLURM script, reports."""

from __future__ import annotations

import csv
import json
import os
import shlex
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ablations.__main__ import main
from ablations.reading.report import build_report
from ablations.reading.rows import read_history
from ablations.running.grid import REPO_ROOT, GridError, load_grid
from ablations.running.runner import LaunchError, gpu_slots, run_grid
from ablations.running.tuning import arms as tuned_arms
from ablations.running.tuning import swept_keys
from common.rundir import RunDir


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(tmp_path / "base.yaml", "model: {preset: tiny, ffn_type: swiglu}\noptim: {muon: hidden}\n")


def grid_file(tmp_path: Path, base: Path, body: str) -> Path:
    return write(tmp_path / "g.yaml", f"name: g\nbase: {base}\n" + textwrap.dedent(body))


# ---------------------------------------------------------------- grid expansion and naming


def test_runs_times_axes_times_seeds(tmp_path, base):
    grid = load_grid(grid_file(tmp_path, base, """
        overrides: {train.steps: 50}
        runs:
          - optim.muon: none
          - optim.muon: vo,ffn
        axes:
          model.ffn_type: [gelu, swiglu]
        seeds: [0, 1]
    """))
    assert [r.name for r in grid.runs] == [
        "adamw_gelu_s0", "adamw_gelu_s1", "adamw_swiglu_s0", "adamw_swiglu_s1",
        "muon-vo+ffn_gelu_s0", "muon-vo+ffn_gelu_s1", "muon-vo+ffn_swiglu_s0", "muon-vo+ffn_swiglu_s1",
    ]
    run = grid.runs[5]
    assert run.overrides == {"train.steps": 50, "optim.muon": "vo,ffn", "model.ffn_type": "gelu",
                             "train.seed": 1}
    assert run.seed == 1 and run.group == "muon-vo+ffn_gelu"
    assert run.labels == {"routing": "muon-vo+ffn", "ffn_type": "gelu", "seed": "1"}


def test_bundle_axis_exclude_labels_and_paper_refs(tmp_path, base):
    grid = load_grid(grid_file(tmp_path, base, """
        axes:
          ffn:
            - {label: plain, model.ffn_type: gelu}
            - {label: gated, model.ffn_type: swiglu, model.ffn_hidden: 96}
          optim.adamw_lr: [0.01, 3.0e-3]
        runs:
          - {optim.muon: none, paper_ref: {plain: {eval_loss: 3.9242}, gated: {eval_loss: 3.8}}}
          - {optim.muon: ffn_gate, paper_ref: {eval_loss: 3.7}}
          - {label: sgd-baseline, optim.muon: none, optim.base: sgd}
        exclude:
          - {optim.muon: ffn_gate, model.ffn_type: gelu}
    """))
    assert [r.name for r in grid.runs] == [
        "adamw_adamw_lr-0.01_plain", "adamw_adamw_lr-0.003_plain",
        "adamw_adamw_lr-0.01_gated", "adamw_adamw_lr-0.003_gated",
        "muon-ffn_gate_adamw_lr-0.01_gated", "muon-ffn_gate_adamw_lr-0.003_gated",
        "sgd-baseline_adamw_lr-0.01_plain", "sgd-baseline_adamw_lr-0.003_plain",
        "sgd-baseline_adamw_lr-0.01_gated", "sgd-baseline_adamw_lr-0.003_gated",
    ]
    by_name = {r.name: r for r in grid.runs}
    assert by_name["adamw_adamw_lr-0.01_plain"].paper_ref == {"eval_loss": 3.9242}
    assert by_name["adamw_adamw_lr-0.003_gated"].paper_ref == {"eval_loss": 3.8}
    assert by_name["muon-ffn_gate_adamw_lr-0.01_gated"].paper_ref == {"eval_loss": 3.7}
    assert by_name["sgd-baseline_adamw_lr-0.01_plain"].paper_ref == {}
    gated = by_name["muon-ffn_gate_adamw_lr-0.003_gated"]
    assert gated.overrides == {"optim.muon": "ffn_gate", "model.ffn_type": "swiglu", "model.ffn_hidden": 96,
                               "optim.adamw_lr": 0.003}
    assert by_name["sgd-baseline_adamw_lr-0.01_gated"].labels["routing"] == "sgd"


def test_shipped_grids_expand():
    smoke = load_grid("smoke")
    assert [r.name for r in smoke.runs] == ["adamw", "muon-hidden", "muon-vo+ffn", "muon-qk"]
    assert smoke.base == "configs/smoke.yaml"
    stage1 = load_grid("ablations/grids/paper_stage1.yaml")
    names = [r.name for r in stage1.runs]
    assert len(names) == 17 and "muon-ffn_gate_swiglu" in names and "muon-ffn_gate_gelu" not in names
    stage2 = {r.name: r for r in load_grid("paper_stage2").runs}
    assert len(stage2) == 16
    assert stage2["muon-vo+ffn_gelu"].paper_ref == {"eval_loss": 3.5858}
    assert stage2["muon-vo+ffn_swiglu"].paper_ref == {"eval_loss": 3.531}
    assert stage2["muon-qk_swiglu"].overrides["model.ffn_hidden"] == 2048
    qa = {r.name: r for r in load_grid("paper_qa").runs}
    assert list(qa) == ["adamw", "muon-hidden", "sgd", "muon-vo+ffn", "muon-qk"]
    assert qa["sgd"].overrides == {"optim.muon": "none", "optim.base": "sgd"}
    assert qa["muon-hidden"].paper_ref == {"qa_tail_fta": 0.976}


@pytest.mark.parametrize("name, steps, seeds", [
    ("study_tiny_v2", {"adamw": 300, "muon-hidden": 300, "muon-vo+ffn": 300, "muon-qk": 300, "adamw-2x": 600},
     [0, 1, 2, 3, 4]),
    ("study_bios_v2", {"adamw": 800, "muon-hidden": 800, "muon-vo+ffn": 800}, [0, 1, 2]),
    ("study_wide_v2", {"adamw": 300, "muon-hidden": 300, "muon-vo+ffn": 300, "muon-qk": 300}, [0, 1, 2]),
    ("study_160m_v2", {"adamw": 5000, "muon-hidden": 5000, "muon-vo+ffn": 5000, "muon-qk": 5000,
                       "adamw-2x": 10000}, [0, 1, 2]),
])
def test_the_v2_study_grids_tune_every_rate_on_seeds_of_their_own(name, steps, seeds):
    """Issue 21's design as shipped: the arms and budgets, coordinate tuning of each optimizer's own rate
    and the embedding/head rates on tuning seeds disjoint from the evaluation seeds, edges extended, at
    stable-phase cooldown branches (issue 21 asks study_tiny_v2 for at least 4), pre-registered targets."""
    grid = load_grid(name)
    arms = {r.group: {**grid.base_config, **r.overrides}["train.steps"] for r in grid.runs}
    assert arms == steps and sorted({r.seed for r in grid.runs}) == seeds
    tune = grid.tune
    every_rate = ["optim.adamw_lr", "optim.muon_lr", "optim.embed_lr", "optim.head_lr"]
    # the CPU studies cut the head's own rate for the budget (their grid files say so)
    assert list(tune.keys) == (every_rate if name == "study_160m_v2" else every_rate[:3])
    assert tune.method == "coordinate" and tune.extend_edges and not tune.reuse_tuning_seeds
    assert not set(tune.seeds) & set(seeds)
    assert len(grid.cooldowns.at) >= (4 if name == "study_tiny_v2" else 3) and grid.analysis["iso_loss"]
    configs = [{**grid.base_config, **r.overrides} for r in grid.runs]
    assert all(c["optim.schedule"] == "wsd" for c in configs)
    if name == "study_bios_v2":  # matched on the held-out biographies' loss
        assert all(c["data.bios.heldout"] == 1 for c in configs)


def test_theory_lm_v2_tunes_each_optimizers_own_rate_and_reads_curvature_at_the_targets():
    """Issue 21's theory_lm v2: both momentum orders and Signum each at their own tuned rate (v1 shared
    one key), Signum's sweep below 3e-3, on a tuning seed of its own; sharpness at every eval."""
    grid = load_grid("theory_lm_v2")
    arms = {r.group: {**grid.base_config, **r.overrides} for r in grid.runs}
    assert list(arms) == ["adamw", "muon-vo+ffn", "muon-vo+ffn-orth-first", "signum-vo+ffn"]
    assert arms["muon-vo+ffn-orth-first"]["optim.momentum_order"] == "orthogonalize_then_momentum"
    assert "optim.momentum_order" not in arms["muon-vo+ffn"]  # the default order
    swept = {arm.group: swept_keys(grid, arm) for arm in tuned_arms(grid)}
    assert swept["muon-vo+ffn"] == swept["muon-vo+ffn-orth-first"] == [
        "optim.adamw_lr", "optim.muon_lr", "optim.embed_lr"]
    assert swept["signum-vo+ffn"] == ["optim.adamw_lr", "optim.signum.lr", "optim.embed_lr"]
    assert max(grid.tune.keys["optim.signum.lr"]) < 3e-3 and grid.tune.extend_edges
    assert not set(grid.tune.seeds) & {r.seed for r in grid.runs} and not grid.tune.reuse_tuning_seeds
    every = {c[k] for c in arms.values() for k in ("metrics.curvature_every", "train.eval_every")}
    assert every == {25} and grid.analysis["iso_loss"] == [5.0, 4.8, 4.6] and len(grid.cooldowns.at) >= 4


def test_theory_lm_v2_polar_shares_theory_lm_v2s_design_for_its_muon_variants():
    """The optional arms: Newton–Schulz Muon (the reference), the exact polar factor and NorMuon, each on
    VO+FFN at its own tuned rates, with theory_lm_v2's base, tuning, seeds and targets."""
    polar, v2 = load_grid("theory_lm_v2_polar"), load_grid("theory_lm_v2")
    arms = {r.group: {**polar.base_config, **r.overrides} for r in polar.runs}
    assert list(arms) == ["muon-vo+ffn", "muon-vo+ffn-exact", "normuon-vo+ffn"]
    assert arms["muon-vo+ffn-exact"]["optim.orthogonalize"] == "exact"
    assert "optim.orthogonalize" not in arms["muon-vo+ffn"]
    assert arms["normuon-vo+ffn"]["optim.route"] == "vo,ffn:normuon default:adamw"
    assert all(swept_keys(polar, arm) == ["optim.adamw_lr", "optim.muon_lr", "optim.embed_lr"]
               for arm in tuned_arms(polar))
    assert polar.tune.keys == {k: v for k, v in v2.tune.keys.items() if k != "optim.signum.lr"}
    assert polar.tune.seeds == v2.tune.seeds and polar.analysis == v2.analysis
    assert sorted({r.seed for r in polar.runs}) == sorted({r.seed for r in v2.runs})
    shared = ("optim.schedule", "optim.decay_fraction", "train.eval_every", "metrics.curvature_every")
    v2_arm = {**v2.base_config, **v2.runs[0].overrides}
    assert all(c[k] == v2_arm[k] for c in arms.values() for k in shared)


@pytest.mark.parametrize("body, message", [
    ("runs: [{optim.muon: none}]\nseed: [1]\n", "unknown top-level key(s) seed"),
    ("description: nothing\n", "the grid has no runs"),
    ("axes: {model.ffn_type: []}\n", "axes.model.ffn_type must be a non-empty list"),
    ("runs: [{optim.muon: none}, {optim.muon: none}]\n", "several runs would be named adamw"),
    ("runs: [{optim.muon: qk, run.dir: x}]\n", "run.dir is set by the runner"),
    ("runs: [{muon: qk}]\n", "'muon' is not a dotted config key"),
    ("runs: [{optim.muon: qk}]\nexclude: [{optim.muon: vo}]\n", "matches no run"),
    ("runs: [{optim.muon: qk, paper_ref: {loss: 3.0}}]\n", "paper_ref must map eval_loss / qa_tail_fta"),
    ("runs: [{optim.muon: qk}]\naxes: {optim.muon: [vo]}\n", "set both in a run entry and by an axis"),
    ("axes: {ffn: [{model.ffn_type: gelu}]}\n", "each of its values must be a mapping with a `label`"),
    ("seeds: [0, x]\n", "`seeds` must be a non-empty list of integers"),
])
def test_grid_errors(tmp_path, base, body, message):
    with pytest.raises(GridError) as err:
        load_grid(grid_file(tmp_path, base, body))
    assert message in str(err.value)


def test_missing_base_and_grid(tmp_path):
    with pytest.raises(GridError, match="base config configs/nope.yaml not found"):
        load_grid(write(tmp_path / "g.yaml", "base: configs/nope.yaml\nruns: [{optim.muon: qk}]\n"))
    with pytest.raises(GridError, match="one of the shipped grids: .*smoke"):
        load_grid(tmp_path / "absent.yaml")


def test_cli_errors_are_one_line_exit_1(tmp_path, capsys):
    assert main(["run", str(tmp_path / "absent.yaml"), "--dry-run"]) == 1  # a user error, as in train.py
    assert main(["report", str(tmp_path / "no_such_dir")]) == 1
    assert main(["report", str(tmp_path)]) == 1  # exists but holds no run directory
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert "no run directories" in lines[2]


# ---------------------------------------------------------------- plan, SLURM


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, base, capsys):
    runs = "runs: [{optim.muon: none}, {optim.muon: hidden}, {optim.muon: 'vo,ffn'}]\n"
    path = grid_file(tmp_path, base, runs)
    (tmp_path / "out" / "muon-hidden").mkdir(parents=True)
    (tmp_path / "out" / "muon-hidden" / "summary.json").write_text("{}")
    assert main(["run", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("grid g: 3 runs -> ")
    assert lines[1].split() == ["adamw", "routing=adamw", "ffn=swiglu", "[to", "run]", "optim.muon=none"]
    # optim.muon=hidden is the base's value: no diff to show; the run has finished already.
    assert lines[2].split() == ["muon-hidden", "routing=muon-hidden", "ffn=swiglu", "[finished]"]
    assert lines[3].split()[-1] == "optim.muon=vo,ffn"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["muon-hidden"]


def fake_slurm_bin(tmp_path: Path) -> Path:
    """scontrol/srun/torchrun stand-ins: the script's launch line is recorded instead of run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "scontrol": 'echo "$@" >> "${SCONTROL_LOG:-/dev/null}"; printf "gpu-node-07\\ngpu-node-08\\n"',
        "srun": 'while [[ $1 == --* ]]; do shift; done; exec "$@"',
        "torchrun": 'printf "%s\\n" "$@" > "$TORCHRUN_ARGS"',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    return bin_dir


def test_slurm_array_script_for_two_nodes_of_eight_gpus(tmp_path, base, capsys):
    path = grid_file(tmp_path, base, "runs: [{optim.muon: none}, {optim.muon: 'vo,ffn'}]\nseeds: [0, 1]\n")
    out = tmp_path / "runs" / "g"
    assert main(["run", str(path), "--launcher", "slurm", "--dry-run", "--out", str(out),
                 "--partition", "gpu", "--time", "12:00:00"]) == 0
    printed = capsys.readouterr().out
    for line in ["#SBATCH --array=0-3", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --partition=gpu", "#SBATCH --time=12:00:00",
                 "torchrun --nnodes 2 --nproc_per_node 8", "--rdzv_backend c10d",
                 'NODES=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))', "MASTER_ADDR=${NODES[0]}"]:
        assert line in printed
    assert not out.exists()

    assert main(["run", str(path), "--launcher", "slurm", "--out", str(out)]) == 0
    script, manifest = out / "slurm" / "g.sbatch", out / "slurm" / "g.runs"
    assert f"sbatch {script}" in capsys.readouterr().out
    rows = [shlex.split(line) for line in manifest.read_text().splitlines()]
    assert [r[0] for r in rows] == ["adamw_s0", "adamw_s1", "muon-vo+ffn_s0", "muon-vo+ffn_s1"]
    # Execute array task 2 with stand-in SLURM tools: it must launch muon-vo+ffn_s0 on the first node.
    env = {**os.environ, "PATH": f"{fake_slurm_bin(tmp_path)}:{os.environ['PATH']}",
           "SLURM_ARRAY_TASK_ID": "2", "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
           "SLURM_SUBMIT_DIR": str(tmp_path), "TORCHRUN_ARGS": str(tmp_path / "torchrun.txt"),
           "PYTHONPATH": str(REPO_ROOT)}  # the script's `python -m training.runs --status`
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
    args = (tmp_path / "torchrun.txt").read_text().splitlines()
    assert args[:4] == ["--nnodes", "2", "--nproc_per_node", "8"]
    assert args[args.index("--rdzv_endpoint") + 1] == "gpu-node-07:29502"
    train = args[args.index("train.py") + 1:]
    assert train[:2] == ["--config", str(base)]
    assert "optim.muon=vo,ffn" in train and "train.seed=0" in train and "train.resume=auto" in train
    assert f"run.dir={out}/muon-vo+ffn_s0" in train
    assert "logging.wandb_tags=[muon-vo+ffn,ffn-swiglu,seed-0]" in train
    # A finished run's task exits without launching anything.
    (tmp_path / "torchrun.txt").unlink()
    (out / "muon-vo+ffn_s0").mkdir(parents=True)
    (out / "muon-vo+ffn_s0" / "summary.json").write_text("{}")
    done = subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, text=True)
    assert "already finished" in done.stdout and not (tmp_path / "torchrun.txt").exists()


@pytest.mark.parametrize("status", ["complete", "diverged", "missing", "failed", "stopped"])
def test_the_sbatch_script_skips_a_run_as_the_local_runner_does(tmp_path, base, status):
    """The script asks RunDir.status: a complete or diverged run is skipped (a diverged sweep run is not
    trained again), any other is launched, and one that stopped on a signal is requeued."""
    path = grid_file(tmp_path, base, "runs: [{optim.muon: none}]\n")
    out = tmp_path / "runs" / "g"
    assert main(["run", str(path), "--launcher", "slurm", "--out", str(out)]) == 0
    run = RunDir(out / "adamw")
    marker = {"complete": run.summary, "diverged": run.divergence_marker, "failed": run.config,
              "stopped": run.stop_marker}.get(status)
    if marker is not None:
        run.path.mkdir(parents=True)
        run.config.write_text("{}")
        marker.write_text("{}")
    assert run.status() == status
    env = {**os.environ, "PATH": f"{fake_slurm_bin(tmp_path)}:{os.environ['PATH']}",
           "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "76",
           "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "SLURM_SUBMIT_DIR": str(REPO_ROOT),
           "TORCHRUN_ARGS": str(tmp_path / "torchrun.txt"), "SCONTROL_LOG": str(tmp_path / "scontrol.txt")}
    task = subprocess.run(["bash", str(out / "slurm" / "g.sbatch")], env=env, check=True, capture_output=True,
                          text=True)
    skipped = status in ("complete", "diverged")
    assert (f"already finished ({status}); skipping" in task.stdout) == skipped
    assert (tmp_path / "torchrun.txt").exists() != skipped
    calls = tmp_path / "scontrol.txt"
    requeued = calls.is_file() and "requeue 76_0" in calls.read_text()
    assert requeued == (status == "stopped")


# ---------------------------------------------------------------- local runner

FAKE_TRAIN = """
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
kv = dict(a.split("=", 1) for a in args if "=" in a)
run_dir = Path(kv["run.dir"])
resumed = (run_dir / "checkpoints").is_dir()
run_dir.mkdir(parents=True, exist_ok=True)
with open(run_dir / "calls.jsonl", "a") as f:
    call = {"argv": args, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "resumed": resumed}
    f.write(json.dumps(call) + "\\n")
print("training", kv["run.name"])
if kv.get("optim.muon") == "ffn_gate":
    print("error: no ffn_gate parameters in a gelu FFN", file=sys.stderr)
    sys.exit(3)
(run_dir / "summary.json").write_text(json.dumps({"final/eval_loss": 2.5}))
"""


def test_runner_skips_finished_resumes_interrupted_and_survives_failures(tmp_path, base):
    grid = load_grid(grid_file(tmp_path, base, """
        runs: [{optim.muon: none}, {optim.muon: hidden}, {optim.muon: ffn_gate}, {optim.muon: qk}]
    """))
    out = tmp_path / "out"
    (out / "muon-hidden").mkdir(parents=True)
    (out / "muon-hidden" / "summary.json").write_text("{}")
    (out / "muon-qk" / "checkpoints" / "step_10").mkdir(parents=True)  # interrupted at step 10
    fake = write(tmp_path / "fake_train.py", FAKE_TRAIN)
    outcomes = run_grid(grid, out, num_gpus=0, train_cmd=[sys.executable, str(fake)])

    assert [(o.name, o.status, o.returncode) for o in outcomes] == [
        ("adamw", "done", 0), ("muon-hidden", "skipped", None), ("muon-ffn_gate", "failed", 3),
        ("muon-qk", "done", 0)]
    assert not (out / "muon-hidden" / "calls.jsonl").exists()
    failed = outcomes[2]
    assert failed.log == out / "logs" / "muon-ffn_gate.log"
    assert "error: no ffn_gate parameters" in failed.log.read_text()
    qk = json.loads((out / "muon-qk" / "calls.jsonl").read_text())
    assert qk["resumed"] and "train.resume=auto" in qk["argv"] and qk["cuda"] is None
    assert qk["argv"][:2] == ["--config", str(base)]
    assert {"optim.muon=qk", f"run.dir={out}/muon-qk", "run.name=muon-qk", "logging.wandb_group=g",
            "logging.wandb_tags=[muon-qk,ffn-swiglu]"} <= set(qk["argv"])
    manifest = json.loads((out / "grid.json").read_text())
    assert [r["name"] for r in manifest["runs"]] == ["adamw", "muon-hidden", "muon-ffn_gate", "muon-qk"]

    # A second pass reruns only the failed run.
    again = run_grid(grid, out, num_gpus=0, train_cmd=[sys.executable, str(fake)])
    assert [o.status for o in again] == ["skipped", "skipped", "failed", "skipped"]


@pytest.mark.parametrize("num_gpus, per_run, slots", [(2, 1, {"0", "1"}), (5, 2, {"0,1", "2,3"})])
def test_runs_pinned_to_gpu_slots(tmp_path, base, num_gpus, per_run, slots):
    runs = "runs: [{optim.muon: none}, {optim.muon: qk}, {optim.muon: vo}]\n"
    grid = load_grid(grid_file(tmp_path, base, runs))
    fake = write(tmp_path / "fake_train.py", FAKE_TRAIN)
    outcomes = run_grid(grid, tmp_path / "out", num_gpus=num_gpus, gpus_per_run=per_run,
                        train_cmd=[sys.executable, str(fake)])
    assert all(o.status == "done" for o in outcomes)
    used = [json.loads((tmp_path / "out" / r.name / "calls.jsonl").read_text())["cuda"] for r in grid.runs]
    assert set(used) <= slots


def test_gpu_slots():
    assert gpu_slots(0, 1) == [[]]
    assert gpu_slots(8, 1) == [[i] for i in range(8)]
    assert gpu_slots(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert gpu_slots(3, 2) == [[0, 1]]
    with pytest.raises(LaunchError, match="exceeds the 2 GPUs"):
        gpu_slots(2, 4)


# ---------------------------------------------------------------- report


def synthetic_run(root: Path, name: str, muon: str, ffn: str, seed: int, final: float | None,
                  base_opt: str = "adamw", qa: bool = False) -> None:
    """A run directory as train.py writes it; eval loss falls linearly to `final` at step 100."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(
        f"model: {{preset: tiny, ffn_type: {ffn}}}\n"
        f"optim: {{muon: '{muon}', base: {base_opt}, adamw_lr: 0.01}}\n"
        f"train: {{steps: 100, seed: {seed}, resume: auto}}\nrun: {{name: {name}, dir: {d}}}\n"
        f"logging: {{wandb_group: g, wandb_tags: [{name}]}}\n")
    end = 3.0 if final is None else final
    events = [{"step": s, "train/loss": 5.0, "eval/loss": 5.0 + (end - 5.0) * s / 100,
               "spectra/v/svd_entropy": 0.5 + s / 400, "spectra/o/effective_rank": 10.0 + s / 10}
              for s in (0, 50, 100)]
    if qa:
        for e in events:
            e["qa/fta/tail"] = e["step"] / 200
    (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if final is None:
        return
    summary = {"final/eval_loss": final, "eval/tail/tail_loss": final + 2.0, "eval/tail/gap": 2.5 - seed,
               **{f"eval/tail/loss_b{b}": final + b / 2 for b in range(4)}}
    if qa:
        summary.update({"qa/fta/tail": 0.25 + 0.5 * seed, **{f"qa/fta/g{j}": 1 - j / 10 for j in range(3)}})
    (d / "summary.json").write_text(json.dumps(summary))


def read_table(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def test_report_from_synthetic_runs(tmp_path):
    runs = tmp_path / "runs"
    for seed, (a, h, v) in enumerate([(4.0, 3.5, 3.6), (4.2, 3.7, 3.8)]):
        synthetic_run(runs, f"adamw_s{seed}", "none", "gelu", seed, a, qa=True)
        synthetic_run(runs, f"muon-hidden_s{seed}", "hidden", "gelu", seed, h, qa=True)
        synthetic_run(runs, f"muon-vo+ffn_s{seed}", "vo,ffn", "gelu", seed, v)
    synthetic_run(runs, "muon-qk_s0", "qk", "gelu", 0, 4.05)
    synthetic_run(runs, "sgd_s0", "none", "gelu", 0, 4.6, base_opt="sgd")
    synthetic_run(runs, "adamw-swiglu_s0", "none", "swiglu", 0, 3.9)   # no full-Muon run for swiglu
    synthetic_run(runs, "muon-qk-swiglu_s0", "qk", "swiglu", 0, 3.8)
    synthetic_run(runs, "muon-o_s0", "o", "gelu", 0, None)  # interrupted: no summary.json
    # grid.json as the runner writes it (the swiglu runs are not in it: they sort after, by name).
    refs = {"adamw_s0": {"eval_loss": 3.9242, "qa_tail_fta": 0.264}, "muon-vo+ffn_s1": {"eval_loss": 3.5858}}
    names = ["adamw_s0", "adamw_s1", "muon-hidden_s0", "muon-hidden_s1", "muon-vo+ffn_s0", "muon-vo+ffn_s1",
             "muon-qk_s0", "sgd_s0", "muon-o_s0"]
    (runs / "grid.json").write_text(json.dumps({"name": "synthetic", "description": "a test grid", "runs": [
        {"name": n, "group": n.rsplit("_", 1)[0], "paper_ref": refs.get(n, {})} for n in names]}))

    report = build_report(runs, tmp_path / "report")
    table = read_table(tmp_path / "report" / "table.csv")
    assert list(table) == ["adamw", "muon-hidden", "muon-vo+ffn", "muon-qk", "sgd", "adamw-swiglu",
                           "muon-qk-swiglu"]
    adamw, vo_ffn, qk = table["adamw"], table["muon-vo+ffn"], table["muon-qk"]
    assert (adamw["routing"], adamw["ffn_type"], adamw["seeds"]) == ("adamw", "gelu", "0 1")
    assert (adamw["eval_loss"], adamw["eval_loss_std"]) == ("4.100000", "0.141421")
    assert (adamw["delta_vs_adamw"], adamw["share_recovered"]) == ("0.000000", "0.000000")
    assert table["muon-hidden"]["share_recovered"] == "1.000000"
    assert (vo_ffn["eval_loss"], vo_ffn["delta_vs_adamw"], vo_ffn["share_recovered"]) == (
        "3.700000", "-0.400000", "0.800000")
    assert (qk["eval_loss"], qk["eval_loss_std"], qk["delta_vs_adamw"], qk["share_recovered"]) == (
        "4.050000", "", "-0.050000", "0.100000")
    assert (table["sgd"]["routing"], table["sgd"]["delta_vs_adamw"]) == ("sgd", "0.500000")
    swiglu_qk = table["muon-qk-swiglu"]
    assert (swiglu_qk["delta_vs_adamw"], swiglu_qk["share_recovered"]) == ("-0.100000", "")
    assert (vo_ffn["tail_loss"], vo_ffn["tail_gap"]) == ("5.700000", "2.000000")
    assert (adamw["qa_tail_fta"], adamw["qa_tail_fta_std"]) == ("0.500000", "0.353553")
    assert vo_ffn["qa_tail_fta"] == ""
    assert (adamw["paper_eval_loss"], adamw["paper_qa_tail_fta"]) == ("3.924200", "0.264000")
    assert vo_ffn["paper_eval_loss"] == "3.585800" and qk["paper_eval_loss"] == ""

    md = (tmp_path / "report" / "table.md").read_text()
    assert "| muon-vo+ffn | muon-vo+ffn | gelu | 0,1 | 3.7000 ± 0.1414 | -0.4000 | 80% |" in md
    text = report.read_text()
    for png in ("loss_curves", "final_loss", "tail_buckets", "spectra", "qa_fta"):
        assert (tmp_path / "report" / f"{png}.png").stat().st_size > 1000
        assert f"({png}.png)" in text
    assert "# Ablation report: synthetic" in text and "`muon-o_s0`" in text


def test_report_skips_missing_metrics(tmp_path):
    runs = tmp_path / "runs"
    synthetic_run(runs, "adamw_s0", "none", "gelu", 0, 4.0)
    synthetic_run(runs, "muon-hidden_s0", "hidden", "gelu", 0, 3.5)
    for d in runs.iterdir():  # drop the spectra and tail metrics: the report must still work
        (d / "metrics.jsonl").write_text(json.dumps({"step": 100, "eval/loss": 4.0}) + "\n")
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({"final/eval_loss": summary["final/eval_loss"]}))
    assert main(["report", str(runs)]) == 0
    out = runs / "report"
    assert sorted(p.name for p in out.glob("*.png")) == ["final_loss.png", "loss_curves.png"]
    header = (out / "table.md").read_text().splitlines()[0]
    assert "QA tail FTA" not in header and "tail loss" not in header and "share of Muon gain" in header


def test_read_history_later_lines_win_and_cut_lines_are_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "eval/loss": 8.0, "eval/note": "text"}\n{"step": 10, "eval/loss": 6.0}\n'
                    '{"step": 10, "eval/loss": 5.5, "spectra/o/q75_q25": null}\n\n{"step": 20, "eval/lo')
    with pytest.warns(UserWarning, match="metrics.jsonl:5: skipping a line that is not JSON"):
        history = read_history(RunDir(tmp_path))
    assert history == {"eval/loss": [(0, 8.0), (10, 5.5)]}


SLEEPY_TRAIN = """
import json, os, sys, time
kv = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
run_dir = __import__("pathlib").Path(kv["run.dir"])
run_dir.mkdir(parents=True, exist_ok=True)
start = time.time()
# hold the slot until a second run has started too, or give up after a while (one at a time)
marker = run_dir.parent / "started"
with open(marker, "a") as f:
    f.write(kv["run.name"] + "\\n")
while len(marker.read_text().split()) < 2 and time.time() - start < float(os.environ["WAIT_S"]):
    time.sleep(0.05)
seen = len(marker.read_text().split())
(run_dir / "summary.json").write_text(json.dumps({"final/eval_loss": 1.0, "seen": seen,
                                                   "threads": os.environ.get("OMP_NUM_THREADS")}))
"""


@pytest.mark.parametrize("jobs, together", [(2, 2), (1, 1)])
def test_cpu_runs_go_side_by_side_with_their_share_of_the_cores(tmp_path, base, monkeypatch, jobs, together):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("WAIT_S", "20" if jobs == 2 else "0.5")
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    grid = load_grid(grid_file(tmp_path, base, "runs: [{optim.muon: none}, {optim.muon: hidden}]"))
    out = tmp_path / "out"
    fake = write(tmp_path / "sleepy_train.py", SLEEPY_TRAIN)
    outcomes = run_grid(grid, out, num_gpus=0, train_cmd=[sys.executable, str(fake)], jobs=jobs)
    assert [o.status for o in outcomes] == ["done", "done"]
    summaries = [json.loads((out / o.name / "summary.json").read_text()) for o in outcomes]
    # side by side, the first run sees the second start; one at a time, it never does
    assert summaries[0]["seen"] == together
    assert {s["threads"] for s in summaries} == ({"2"} if jobs == 2 else {None})  # 4 cores / 2 jobs


def test_jobs_is_for_cpu_runs_only(tmp_path, base):
    grid = load_grid(grid_file(tmp_path, base, "runs: [{optim.muon: none}]"))
    with pytest.raises(LaunchError, match="--jobs sets how many CPU runs go side by side"):
        run_grid(grid, tmp_path / "out", num_gpus=2, jobs=2)
    with pytest.raises(LaunchError, match="--jobs must be >= 1"):
        run_grid(grid, tmp_path / "out", num_gpus=0, jobs=0)
