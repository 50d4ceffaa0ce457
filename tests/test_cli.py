"""The command line: errors in our words, --help from the schema, --print-config resolved, and one
table of exit codes for every command."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ablations.__main__ import main as ablations_main
from common.cli import ExitCode, StoppedBySignal, run_main
from common.errors import UserError
from train import main as train_main
from training.config import ConfigError, load_config, schema_leaves
from training.config_text import config_keys_help, key_docs, resolved_config_yaml
from training.identity import run_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("override", "message"), [
    ("stepz=60", "unknown key 'stepz'; did you mean train.steps? (in override 'stepz=60'; valid keys of the "
                 "config: model, optim, train, data, metrics, run, logging)"),
    ("optim.signum.lrr=1", "unknown key 'optim.signum.lrr'; did you mean optim.signum.lr? (in override "
                           "'optim.signum.lrr=1'; valid keys of optim.signum: lr, momentum)"),
    ("train.steps=abc", "train.steps=abc: expected an integer (in override 'train.steps=abc')"),
    ("train.micro_batch_size=x", "train.micro_batch_size=x: expected an integer or null"),
    ("train.compile=maybe", "train.compile=maybe: expected true or false"),
    ("optim.betas=abc", "optim.betas=abc: expected a list such as [a, b]"),
    ("optim.betas=[a,b]", "optim.betas[0]=a: expected a number"),
    ("model=3", "a config section (model, optim, train, data, metrics, run, logging) was given a value, not "
                "keys (in override 'model=3')"),
])
def test_config_errors_in_our_words(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert str(err.value).startswith(message)
    assert "RunConfig" not in str(err.value) and "TrainSection" not in str(err.value)
    if "expected" in message:  # the key was valid: no list of the valid ones
        assert "valid keys" not in str(err.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stpes: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config([str(bad)])
    assert str(err.value).startswith(f"unknown key 'train.stpes'; did you mean train.steps? (in {bad};")


def test_every_key_has_a_description_and_no_description_is_stale():
    owners = {owner for _, owner, _ in schema_leaves()}
    for owner in owners:
        fields = {f.name for f in dataclasses.fields(owner)}
        assert set(key_docs(owner)) == fields, owner.__name__


def test_help_has_yaml_defaults_and_a_description_per_key():
    text = config_keys_help()
    lines = [line for line in text.splitlines() if line.startswith("    ")]
    assert len(lines) == len(list(schema_leaves()))
    assert all(re.match(r"^    \S+=\S.*  +\S", line) for line in lines)
    for shown in ("optim.nesterov=true ", "optim.signum.lr=null ", "optim.betas=[0.9, 0.95] ",
                  "data.bios={} ", "train.extend_to=null "):
        assert shown in text, shown
    assert "Config(" not in text and "True" not in text and "None" not in text
    assert re.search(r"train\.steps=400 +optimizer steps of the run", text)


def test_print_config_is_fully_resolved():
    cfg = load_config(overrides=["optim.muon=vo", "model.n_layers=2"])
    text = resolved_config_yaml(cfg)
    assert re.search(r"^  d_model: 128$", text, re.MULTILINE)  # the tiny preset's, filled in
    assert re.search(r"^  n_layers: 2$", text, re.MULTILINE)  # the override wins
    assert f"  dir: {run_dir(cfg)}\n" in text and "name: tiny_muon-vo_s0" in text
    assert "d_model: null" not in text


@pytest.mark.parametrize(("raised", "code", "stderr"), [
    (UserError("train.steps must be positive"), ExitCode.USER_ERROR, "error: train.steps must be positive"),
    (StoppedBySignal("stopped at step 3; rerun"), ExitCode.STOPPED, "stopped at step 3; rerun"),
    (KeyboardInterrupt(), ExitCode.ABORTED, "aborted (Ctrl-C)"),
    (RuntimeError("boom"), ExitCode.BUG, "this is a bug in muonlab (exit code 70)"),
])
def test_run_main_maps_each_outcome_to_its_exit_code(raised, code, stderr, capsys, monkeypatch):
    monkeypatch.delenv("MUONLAB_DEBUG", raising=False)

    def body() -> int:
        raise raised

    assert run_main(body) == code
    assert stderr in capsys.readouterr().err


def test_train_and_ablations_agree_on_a_user_error(tmp_path, capsys):
    assert train_main(["stepz=60"]) == ExitCode.USER_ERROR == 1
    assert ablations_main(["report", str(tmp_path / "nowhere")]) == ExitCode.USER_ERROR
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: unknown key 'stepz'; did you mean train.steps?")
    assert err[1].startswith("error: ")


def test_export_help_is_whole(capsys):
    from training.export import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "`AutoModelForCausalLM.from_pretrained(OUT_DIR)` (and `AutoTokenizer`) load." in out


def test_an_input_warning_is_one_line_printed_once():
    code = ("from common.cli import run_main; from optim.groups import route; from model import ModelConfig, "
            "Transformer; m = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, "
            "n_kv_heads=2, ffn_hidden=48, max_seq_len=16)); "
            "raise SystemExit(run_main(lambda: [route(m, 'hidden,embed') for _ in range(2)] and 0))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == [
        "warning: routing embed to Muon: Muon is meant for hidden matrices; allowed for ablations only"]
