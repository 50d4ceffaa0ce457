"""The run configuration: presets + overrides, unknown keys, validation, resume compatibility."""

import pytest

from training.batching import BatchPlan
from training.config import ConfigError, load_config
from training.identity import config_hash, resume_conflicts, run_dir, run_name


def test_defaults_are_the_embedded_default():
    cfg = load_config()
    assert cfg.model.preset == "tiny"
    assert cfg.data.source == "builtin:shakespeare"
    assert cfg.optim.muon == "hidden"
    assert cfg.optim.adjust_lr_fn == "match_rms_adamw"


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("model:\n  preset: small\n  qk_norm: true\ntrain:\n  steps: 7\n")
    cfg = load_config([str(f)], ["train.steps=9", "optim.muon=vo,ffn", "optim.betas=[0.8,0.99]"])
    assert cfg.model.preset == "small" and cfg.model.qk_norm is True
    assert cfg.train.steps == 9
    assert cfg.optim.muon == "vo,ffn"
    assert list(cfg.optim.betas) == [0.8, 0.99]


def test_list_routing_override():
    cfg = load_config(overrides=["optim.muon=[vo,ffn_out]"])
    assert list(cfg.optim.muon) == ["vo", "ffn_out"]


@pytest.mark.parametrize("override", ["optim.mun=vo", "train.stepz=3", "nosuch.key=1"])
def test_unknown_key_is_an_error(override):
    with pytest.raises(ConfigError, match="valid keys"):
        load_config(overrides=[override])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config([str(f)])


def test_bad_values_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(overrides=["train.steps=abc"])
    with pytest.raises(ConfigError, match="optim.schedule"):
        load_config(overrides=["optim.schedule=linear"])
    with pytest.raises(ConfigError, match="positive"):
        load_config(overrides=["train.batch_size=0"])
    with pytest.raises(ConfigError, match="not found"):
        load_config([str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["train.steps"])


def test_run_name_and_dir():
    cfg = load_config(overrides=["optim.muon=vo,ffn", "train.seed=3"])
    assert run_name(cfg) == "tiny_muon-vo+ffn_s3"
    # issue 11: a derived directory carries a hash of what the run computes, so configs never share one
    assert str(run_dir(cfg)) == f"runs/tiny_muon-vo+ffn_s3-{config_hash(cfg)}"
    cfg = load_config(overrides=["run.name=x", "run.dir=/tmp/y"])
    assert run_name(cfg) == "x" and str(run_dir(cfg)) == "/tmp/y"


def test_resume_conflicts_ignore_schedule_only_keys():
    a = load_config(overrides=["train.steps=10"])
    b = load_config(overrides=["train.steps=10", "train.micro_batch_size=4", "logging.wandb=true"])
    assert resume_conflicts(a, b) == []
    # issue 11: train.steps changes the schedule, so it is a conflict (extending is train.extend_to)
    assert resume_conflicts(a, load_config(overrides=["train.steps=20"])) == ["train.steps"]
    c = load_config(overrides=["train.steps=10", "optim.muon=qk", "optim.adamw_lr=0.1"])
    assert resume_conflicts(a, c) == ["optim.adamw_lr", "optim.muon"]


def test_batch_plan():
    assert BatchPlan.of(16, None, 1) == BatchPlan(16, 16, 1)
    assert BatchPlan.of(16, 4, 2) == BatchPlan(8, 4, 2)
    with pytest.raises(ConfigError, match="divisible"):
        BatchPlan.of(15, None, 2)
    with pytest.raises(ConfigError, match="divide"):
        BatchPlan.of(16, 3, 1)

