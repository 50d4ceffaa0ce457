"""End-to-end runs of train.py on CPU: loss goes down, exact resume, 1 vs 2 processes (DDP and FSDP2),
bad input."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils.other import get_free_port
from safetensors.torch import load_file, save_file

from training.checkpoint import load_weights, unwrapped_names

pytestmark = pytest.mark.slow  # every test here runs train.py end to end

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "the", "king", "queen", "lord", "lady", "sword", "crown", "night", "day", "love", "death", "honour",
    "speak", "hear", "see", "come", "go", "good", "noble", "false", "true", "sweet", "bitter", "heaven",
    "earth", "fire", "water", "blood", "heart"
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small deterministic text corpus with structure a tiny model learns within 20 steps."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("corpus")
    for d in range(40):
        lines = []
        for _ in range(60):
            a, b, c = rng.sample(WORDS, 3)
            lines.append(f"The {a} shall {b} the {c}, and the {c} shall {b} the {a}.")
        (root / f"doc{d:02d}.txt").write_text("\n".join(lines))
    return root


@pytest.fixture(scope="module")
def base_args(corpus: Path, tmp_path_factory) -> list[str]:
    data_dir = tmp_path_factory.mktemp("prepared") / "ds"
    return [
        "model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
        "model.ffn_hidden=128", f"data.source={corpus}/*.txt", f"data.dir={data_dir}",
        "data.vocab_size=512", "data.val_tokens=8192", "train.seq_len=32", "train.batch_size=8",
        "train.steps=20",
        "train.eval_every=10", "train.eval_tokens=4096", "train.log_every=5", "train.checkpoint_every=10",
        "optim.adamw_lr=1e-2", "optim.warmup_steps=2", "metrics.tail_buckets=4",
        # fp32 Newton–Schulz: bf16 rounding would differ with how matrices are batched across ranks.
        "optim.ns_dtype=fp32",
    ]


LAUNCHERS = {
    "python": [sys.executable],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
                   "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"],
    "accelerate-fsdp": [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version=2",
                        "--num_processes=2", "--num_machines=1", "--mixed_precision=no",
                        "--dynamo_backend=no"],
}


def run_train(args: list[str], launcher: str = "python", check: bool = True,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUONLAB_CACHE": os.environ.get("MUONLAB_CACHE", str(ROOT / ".cache")),
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **(env or {})}
    # A free rendezvous port each time: accelerate's default (29500) may still be held by an
    # earlier test's process group.
    port = ["--main_process_port", str(get_free_port())] if launcher.startswith("accelerate") else []
    cmd = [*LAUNCHERS[launcher], *port, "train.py", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_weights(run: Path, step: int = 20) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{step}" / "model.safetensors")


def without_perf(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if not k.startswith("perf/")} for e in events]


@pytest.fixture(scope="module")
def reference_run(base_args, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "ref"
    run_train([*base_args, f"run.dir={run}"])
    return run


def test_dry_run_prints_routing(base_args, tmp_path):
    run = tmp_path / "dry"
    proc = run_train(["--dry-run", "optim.muon=vo,ffn", *base_args, f"run.dir={run}"])
    assert not run.exists()  # a dry run writes nothing under the run directory unless asked (--out)
    proc = run_train(["--dry-run", "optim.muon=vo,ffn", *base_args, f"run.dir={run}",
                      "--out", str(run / "routing.json")])
    routing = json.loads((run / "routing.json").read_text())
    by_group = {}
    for row in routing:
        by_group.setdefault(row["group"], set()).add(row["optimizer"])
    assert by_group["v"] == by_group["o"] == {"muon"}
    assert by_group["ffn_in"] == by_group["ffn_gate"] == by_group["ffn_out"] == {"muon"}
    for group in ("q", "k", "embed", "head", "scalar"):
        assert by_group[group] == {"adamw"}, group
    assert "v_proj" in proc.stdout and "muon" in proc.stdout
    assert sorted(p.name for p in run.iterdir()) == ["routing.json"]


def test_training_lowers_loss_and_writes_the_run_directory(reference_run):
    names = {p.name for p in reference_run.iterdir()}
    assert {"config.yaml", "routing.json", "metrics.jsonl", "summary.json", "checkpoints"} <= names
    events = read_metrics(reference_run)
    evals = {e["step"]: e for e in events if "eval/loss" in e}
    assert sorted(evals) == [0, 10, 20]
    assert evals[20]["eval/loss"] < evals[0]["eval/loss"] - 1.0
    train = [e for e in events if "train/loss" in e]
    assert [e["step"] for e in train] == [5, 10, 15, 20]
    assert all({"train/lr", "train/grad_norm", "perf/tokens_per_s"} <= e.keys() for e in train)
    assert "eval/tail/loss_b0" in evals[20] and "eval/tail/gap" in evals[20]
    assert any(k.startswith("spectra/v/") for k in evals[20])
    # the spectrum of the update of the step before each eval (none before the first step)
    assert any(k.startswith("spectra_update/v/") for k in evals[20])
    assert any(k.startswith("spectra_update/v/") for k in evals[10])
    assert not any(k.startswith("spectra_update/") for k in evals[0])
    summary = json.loads((reference_run / "summary.json").read_text())
    assert summary["processes"] == 1
    assert summary["final/eval_loss"] == pytest.approx(evals[20]["eval/loss"])
    assert summary["tokens"] == 20 * 8 * 32
    ckpts = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    assert ckpts == ["step_10", "step_20"]


def test_resume_continues_exactly(reference_run, base_args, tmp_path):
    """Interrupted after step 10 and resumed == never interrupted, bit for bit."""
    run = tmp_path / "resumed"
    shutil.copytree(reference_run, run)
    shutil.rmtree(run / "checkpoints" / "step_20")
    (run / "summary.json").unlink()
    proc = run_train([*base_args, f"run.dir={run}"])
    assert "resuming" in proc.stdout
    assert without_perf(read_metrics(run)) == without_perf(read_metrics(reference_run))
    ref, got = final_weights(reference_run), final_weights(run)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name


@pytest.mark.parametrize("names", [("_orig_mod.x", "x"), ("module.x", "x"),
                                   ("module._orig_mod.module.x", "x"), ("model.module_x", "model.module_x")])
def test_wrapper_prefixes_come_off_in_any_order(names):
    assert list(unwrapped_names({names[0]: torch.zeros(1)})) == [names[1]]


def test_checkpoints_with_wrapper_prefixes_still_resume_exactly(reference_run, base_args, tmp_path):
    """Checkpoints written before the unwrapped format carry compile's / DDP's prefixes in their names
    (here a compiled DDP model's)."""
    prefix = "_orig_mod.module."
    run = interrupted_copy(reference_run, tmp_path / "old_format")
    weights = run / "checkpoints" / "step_10" / "model.safetensors"
    save_file({prefix + name: t for name, t in load_file(weights).items()}, weights)
    marker = weights.parent / "loop_state.json"  # as such checkpoints wrote it: without file checksums
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "files"}))
    model, *_ = load_weights(weights.parent)  # export and evaluation read it too
    ref_10 = final_weights(reference_run, step=10)
    assert all(torch.equal(t, ref_10[name]) for name, t in model.state_dict().items() if name in ref_10)
    run_train([*base_args, f"run.dir={run}"])
    assert without_perf(read_metrics(run)) == without_perf(read_metrics(reference_run))
    ref, got = final_weights(reference_run), final_weights(run)
    assert ref.keys() == got.keys()  # written back without the prefix
    assert all(torch.equal(ref[name], got[name]) for name in ref)


@pytest.fixture(scope="module")
def compiled_run(base_args, tmp_path_factory) -> tuple[Path, str]:
    """train.compile=true (inductor on the CPU), with dynamo's recompilations logged."""
    run = tmp_path_factory.mktemp("runs") / "compiled"
    proc = run_train([*base_args, "train.compile=true", f"run.dir={run}"], env={"TORCH_LOGS": "recompiles"})
    return run, proc.stderr


def test_compiled_run_saves_unwrapped_weights_and_evaluates_without_recompiling(compiled_run, reference_run):
    run, log = compiled_run
    # evaluation and QA run the uncompiled module: the compiled forward is built once, for training
    assert "Recompiling" not in log, log[-3000:]
    assert final_weights(run).keys() == final_weights(reference_run).keys()  # no "_orig_mod." names
    ref, got = read_metrics(reference_run), read_metrics(run)
    for r, g in zip(ref, got, strict=True):
        for key in ("train/loss", "eval/loss"):
            if key in r:  # inductor's fused kernels round differently from eager
                assert g[key] == pytest.approx(r[key], rel=1e-3), (r["step"], key)


@pytest.mark.parametrize("direction", ["compiled_then_eager", "eager_then_compiled"])
def test_resume_with_compile_toggled(compiled_run, reference_run, base_args, tmp_path, direction):
    first, compile_after = (compiled_run[0], "false") if direction == "compiled_then_eager" else (
        reference_run, "true")
    run = interrupted_copy(first, tmp_path / direction)
    proc = run_train([*base_args, f"train.compile={compile_after}", f"run.dir={run}"])
    assert "resuming" in proc.stdout
    ref, got = read_metrics(first), read_metrics(run)
    assert [e["step"] for e in got] == [e["step"] for e in ref]
    for r, g in zip(ref, got, strict=True):
        for key in ("train/loss", "eval/loss"):
            if key in r:
                assert g[key] == pytest.approx(r[key], rel=1e-3), (r["step"], key)


def test_accumulation_matches_one_big_batch(reference_run, base_args, tmp_path):
    run = tmp_path / "accum"
    run_train([*base_args, "train.micro_batch_size=2", f"run.dir={run}"])
    ref, got = final_weights(reference_run), final_weights(run)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def ddp_run(base_args, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "ddp"
    run_train([*base_args, "train.micro_batch_size=2", f"run.dir={run}"], launcher="accelerate")
    return run


def test_muon_updates_are_isotropic_adamw_updates_are_not(base_args, tmp_path):
    """The paper's mechanism, seen in one run's update spectra: V and O on Muon, Q and K on AdamW."""
    run = tmp_path / "vo"
    run_train([*base_args, "optim.muon=v,o", "train.checkpoint_every=0", f"run.dir={run}"])
    last = read_metrics(run)[-1]
    entropy = {g: last[f"spectra_update/{g}/svd_entropy"] for g in ("q", "k", "v", "o")}
    assert min(entropy["v"], entropy["o"]) > 0.85, entropy  # orthogonalized: a nearly flat spectrum (~0.9)
    assert max(entropy["q"], entropy["k"]) < min(entropy["v"], entropy["o"]) - 0.3, entropy  # ~0.25-0.4


def assert_same_training(run: Path, reference: Path) -> None:
    """Same logged losses (to float32 reduction-order noise) and the same final weights."""
    ref = {(e["step"], k): v for e in read_metrics(reference) for k, v in e.items()}
    got = {(e["step"], k): v for e in read_metrics(run) for k, v in e.items()}
    compared = [key for key in got if key[1] in ("train/loss", "eval/loss")]
    assert len(compared) == 7  # train/loss at 5, 10, 15, 20; eval/loss at 0, 10, 20
    for key in compared:
        assert got[key] == pytest.approx(ref[key], rel=1e-4), key
    ref_w, got_w = final_weights(reference), final_weights(run)
    for name in ref_w:
        torch.testing.assert_close(got_w[name], ref_w[name], rtol=1e-4, atol=1e-5)


def test_two_processes_match_one(reference_run, ddp_run):
    """`accelerate launch`, 2 CPU processes (gloo): the same global batches, the same weights."""
    assert json.loads((ddp_run / "summary.json").read_text())["processes"] == 2
    assert_same_training(ddp_run, reference_run)


def interrupted_copy(run: Path, dest: Path) -> Path:
    """A copy of `run` as if it had stopped right after its step-10 checkpoint."""
    shutil.copytree(run, dest)
    shutil.rmtree(dest / "checkpoints" / "step_20")
    (dest / "summary.json").unlink()
    return dest


def test_checkpoints_move_between_process_counts(reference_run, ddp_run, base_args, tmp_path):
    """A 2-process checkpoint resumes in 1 process, and a 1-process one under torchrun with 2."""
    run = interrupted_copy(ddp_run, tmp_path / "ddp_then_single")
    run_train([*base_args, "train.micro_batch_size=2", f"run.dir={run}"])
    assert_same_training(run, ddp_run)
    run = interrupted_copy(reference_run, tmp_path / "single_then_ddp")
    run_train([*base_args, f"run.dir={run}"], launcher="torchrun")
    assert json.loads((run / "summary.json").read_text())["processes"] == 2
    assert_same_training(run, reference_run)


@pytest.fixture(scope="module")
def fsdp_run(base_args, tmp_path_factory) -> Path:
    """`accelerate launch --use_fsdp --fsdp_version 2`, 2 processes of 2 micro-batches each."""
    run = tmp_path_factory.mktemp("runs") / "fsdp"
    proc = run_train([*base_args, "train.micro_batch_size=2", f"run.dir={run}"], launcher="accelerate-fsdp")
    assert "sharded over 2 processes" in proc.stdout
    return run


def test_fsdp_matches_one_process(reference_run, fsdp_run):
    assert json.loads((fsdp_run / "summary.json").read_text())["processes"] == 2
    assert_same_training(fsdp_run, reference_run)
    # spectra come from the main process's whole copy of the sharded model, refreshed at every eval
    ref, got = read_metrics(reference_run)[-1], read_metrics(fsdp_run)[-1]
    spectra = [k for k in ref if k.startswith(("spectra/", "spectra_update/"))]
    assert spectra and ref["step"] == got["step"] == 20
    for key in spectra:
        assert got[key] == pytest.approx(ref[key], rel=1e-4), key


def test_fsdp_checkpoints_resume_in_any_mode(reference_run, fsdp_run, base_args, tmp_path):
    """Whole weights and optimizer state: an FSDP2 checkpoint resumes in 1 process, and a 1-process
    one under FSDP2 turned on by the config (torchrun)."""
    run = interrupted_copy(fsdp_run, tmp_path / "fsdp_then_single")
    run_train([*base_args, f"run.dir={run}"])
    assert_same_training(run, fsdp_run)
    run = interrupted_copy(reference_run, tmp_path / "single_then_fsdp")
    proc = run_train([*base_args, "train.fsdp=true", f"run.dir={run}"], launcher="torchrun")
    assert "sharded over 2 processes" in proc.stdout
    assert_same_training(run, reference_run)


def test_fsdp_version_1_is_one_error_line(base_args, tmp_path, monkeypatch):
    # what `accelerate launch --use_fsdp` without --fsdp_version 2 puts in the environment
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    run = tmp_path / "fsdp1"
    proc = run_train([*base_args, f"run.dir={run}"], check=False)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "--fsdp_version 2" in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not run.exists()


def test_wandb_offline_logs_the_same_metrics(base_args, tmp_path):
    run = tmp_path / "wandb"
    env_args = [*base_args, "train.steps=5", "train.eval_every=5", "logging.wandb=true",
                "logging.wandb_mode=offline", f"run.dir={run}"]
    run_train(env_args)
    assert any((run / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    assert any("eval/loss" in e for e in read_metrics(run))


@pytest.mark.parametrize("override, message", [
    ("optim.muon=vo,fnn", "valid"),
    ("optim.muon=scalar", "scalar"),
    ("optim.lr=0.1", "valid keys"),
    ("model.preset=huge", "tiny"),
])
def test_bad_input_is_one_error_line_and_no_run_directory(base_args, tmp_path, override, message):
    run = tmp_path / "bad"
    proc = run_train([*base_args, override, f"run.dir={run}"], check=False)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and message in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not run.exists()


def test_missing_data_file_is_an_error(base_args, tmp_path):
    run = tmp_path / "nodata"
    args = [a for a in base_args if not a.startswith("data.")]
    proc = run_train([*args, f"data.source={tmp_path}/nothing/*.txt", f"data.dir={tmp_path}/ds",
                      f"run.dir={run}"], check=False)
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert not run.exists()


def test_nan_loss_stops_with_a_clear_error(base_args, tmp_path):
    run = tmp_path / "nan"
    proc = run_train([*base_args, "optim.adamw_lr=1e30", "optim.muon_lr=1e30", "optim.grad_clip=0",
                      "optim.warmup_steps=0", f"run.dir={run}"], check=False)
    assert proc.returncode == 1
    assert "loss is" in proc.stderr and "step" in proc.stderr
    assert not (run / "summary.json").exists()
