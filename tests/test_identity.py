"""One run identity (training/identity.py): old run directories keep their hash and group with new ones."""

from __future__ import annotations

import json
from pathlib import Path

from ablations.reading.rows import aggregate, load_runs
from ablations.running.grid import load_grid
from ablations.running.runner import train_args
from common.files import write_text
from common.rundir import RunDir
from training.config import config_yaml, load_config
from training.identity import config_hash, run_dir, run_label, run_name, setting_key, wandb_names

ROOT = Path(__file__).resolve().parents[1]
OLD_CONFIG = Path(__file__).parent / "fixtures" / "config_before_route.yaml"
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def test_a_run_from_before_optim_route_keeps_its_hash_and_name():
    old = load_config([str(OLD_CONFIG)])
    assert config_hash(old) == "f3a4932d"  # what train.py at f72388b^ computed for this config.yaml
    assert run_dir(old) == Path("runs/tiny_swiglu_muon-vo+ffn_s1-f3a4932d")
    assert run_name(old) == "tiny_swiglu_muon-vo+ffn_s1" and run_label(old) == "muon-vo+ffn"
    assert wandb_names(old, "x")["tags"][0] == "muon:vo+ffn"


def _run(root: Path, name: str, config: str, final: float) -> None:
    """A finished run directory holding `config` as its config.yaml."""
    run = RunDir(root / name)
    run.path.mkdir()
    write_text(run.config, config)
    write_text(run.metrics, json.dumps({"step": 200, "eval/loss": final}) + "\n")
    write_text(run.summary, json.dumps({"final/eval_loss": final}))


def test_an_old_run_and_a_resumed_seed_group_with_identical_new_runs(tmp_path):
    new = ["optim.muon=vo,ffn", "train.steps=200"]
    old = load_config([str(OLD_CONFIG)])
    resumed = load_config([SMOKE], [*new, "train.seed=2", "train.micro_batch_size=4", "train.log_every=5"])
    fresh = load_config([SMOKE], [*new, "train.seed=0"])
    assert setting_key(old) == setting_key(fresh) == setting_key(resumed)
    assert setting_key(old) != setting_key(load_config([SMOKE], [*new, "optim.adamw_lr=0.02"]))
    _run(tmp_path, "old_s1", OLD_CONFIG.read_text(), 3.0)
    _run(tmp_path, "new_s0", config_yaml(fresh), 3.2)
    _run(tmp_path, "new_s2", config_yaml(resumed), 3.1)
    _run(tmp_path, "other_s0", config_yaml(load_config([SMOKE], [*new, "optim.adamw_lr=0.02"])), 3.5)
    rows = aggregate(load_runs(tmp_path))
    assert sorted(row.seeds for row in rows) == [[0], [0, 1, 2]]


def test_the_seeds_of_a_shipped_grid_share_one_setting_and_its_settings_differ():
    grid = load_grid("study_tiny")
    keys: dict[str, set[str]] = {}
    for run in grid.runs:
        args = train_args(grid, run, Path("out"))
        keys.setdefault(run.group, set()).add(setting_key(load_config([str(ROOT / args[1])], args[2:])))
    assert all(len(k) == 1 for k in keys.values())
    assert len({k for ks in keys.values() for k in ks}) == len(keys)
