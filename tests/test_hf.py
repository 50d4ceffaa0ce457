"""Conversion to and from transformers (LlamaForCausalLM / Qwen3ForCausalLM) and the export CLI."""

import json

import pytest
import torch
import yaml
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM

from data.manifest import FORMAT
from model import Transformer, get_preset
from model.hf import from_hf, to_hf
from training.export import main

SMALL = dict(vocab_size=211, d_model=64, n_layers=2, n_heads=4, ffn_hidden=96, max_seq_len=64)


def random_model(**overrides) -> Transformer:
    """A tiny model with random norm gains too, so a dropped or misplaced norm shows in the logits."""
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny", **{**SMALL, **overrides}))
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize(
    "overrides,hf_cls",
    [
        ({"n_kv_heads": 2}, LlamaForCausalLM),
        ({"n_kv_heads": 1, "tie_embeddings": True, "rope_theta": 500.0}, LlamaForCausalLM),
        ({"n_kv_heads": 2, "qk_norm": True}, Qwen3ForCausalLM),
    ],
)
def test_to_hf_logits_agree(overrides, hf_cls):
    model = random_model(**overrides)
    hf = to_hf(model)
    assert type(hf) is hf_cls
    idx = torch.randint(0, SMALL["vocab_size"], (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [{"n_kv_heads": 2}, {"tie_embeddings": True}, {"qk_norm": True}])
def test_from_hf_round_trip_is_exact(overrides):
    model = random_model(**overrides)
    back = from_hf(to_hf(model))
    assert back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_from_hf_of_a_fresh_llama():
    from transformers import LlamaConfig

    torch.manual_seed(1)
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=150, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=2, max_position_embeddings=48, rope_theta=20000.0,
        )
    ).eval()
    model = from_hf(hf)
    assert (model.config.n_kv_heads, model.config.rope_theta, model.config.max_seq_len) == (2, 20000.0, 48)
    idx = torch.randint(0, 150, (1, 48))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ffn_type", ["gelu", "relu2"])
def test_non_gated_ffn_cannot_be_exported(ffn_type):
    with pytest.raises(ValueError, match="non-gated FFN.*Llama cannot express"):
        to_hf(random_model(ffn_type=ffn_type))


def test_from_hf_rejects_what_it_cannot_express():
    from transformers import LlamaConfig

    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
            hidden_act="gelu", attention_bias=True,
        )
    )
    with pytest.raises(ValueError, match="hidden_act='gelu'.*biases"):
        from_hf(hf)


def write_checkpoint(run_dir, model: Transformer, step: int) -> None:
    """checkpoints/step_<N>/model.safetensors, as accelerate.save_state writes it."""
    ckpt = run_dir / "checkpoints" / f"step_{step}"
    ckpt.mkdir(parents=True)
    save_model(model, str(ckpt / "model.safetensors"))
    (ckpt / "loop_state.json").write_text(json.dumps({"step": step}))  # written last: complete


def write_run(run_dir, model: Transformer, step: int, model_section: dict) -> None:
    """A run directory as train.py writes it: config.yaml + one checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"model": model_section, "data": {"vocab_size": model.config.vocab_size, "dir": None}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    write_checkpoint(run_dir, model, step)


def test_export_cli_from_run_dir_uses_newest_checkpoint(tmp_path, capsys):
    section = {"preset": "tiny", **{k: v for k, v in SMALL.items() if k != "vocab_size"}, "n_kv_heads": 2}
    old, new = random_model(n_kv_heads=2), random_model(n_kv_heads=2)
    with torch.no_grad():
        new.model.embed_tokens.weight.mul_(2.0)
    write_run(tmp_path / "run", old, 5, {**section, "vocab_size": None})
    write_checkpoint(tmp_path / "run", new, 10)
    (tmp_path / "run" / "checkpoints" / "step_20").mkdir()  # incomplete: no weights, must be skipped

    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert "step_10" in capsys.readouterr().out
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert type(hf) is LlamaForCausalLM
    idx = torch.randint(0, SMALL["vocab_size"], (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, new(idx), rtol=1e-5, atol=1e-5)


def write_dataset(data_dir) -> None:
    """tokenizer.json (word-level: "t<i>" -> i) and meta.json, as data.prepare leaves them."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    data_dir.mkdir(parents=True)
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(SMALL["vocab_size"])}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(data_dir / "tokenizer.json"))
    (data_dir / "meta.json").write_text(json.dumps({"format": FORMAT, "eos_id": 3, "bos_id": None}))


def set_data_config(run_dir, **data) -> None:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"].update(data)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def test_export_cli_from_checkpoint_dir_with_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    model = random_model(tie_embeddings=True)
    write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    write_run(run, model, 7, {"preset": "tiny", **SMALL, "tie_embeddings": True})
    set_data_config(run, dir=str(tmp_path / "data"))

    assert main(["export", str(run / "checkpoints" / "step_7"), str(tmp_path / "hf")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert hf.config.eos_token_id == 3 and hf.config.tie_word_embeddings
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.eos_token == "t3"
    ids = tokenizer("t5 t9 t200")["input_ids"]
    assert ids == [5, 9, 200]
    with torch.no_grad():
        idx = torch.tensor([ids])
        torch.testing.assert_close(hf(idx).logits, model(idx), rtol=1e-5, atol=1e-5)


def test_export_finds_the_tokenizer_in_the_derived_dataset_cache(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from data.prepare import dataset_dir_for

    monkeypatch.setenv("MUONLAB_CACHE", str(tmp_path / "cache"))
    data = {"source": "builtin:shakespeare", "vocab_size": 211, "tokenizer": None, "dir": None}
    write_dataset(dataset_dir_for(data["source"], vocab_size=211, tokenizer=None))
    run = tmp_path / "run"
    write_run(run, random_model(), 3, {"preset": "tiny", **SMALL})
    set_data_config(run, **data)
    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")("t7")["input_ids"] == [7]


def test_export_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "checkpoints/step_<N>" in err

    gelu = {"preset": "tiny", **SMALL, "ffn_type": "gelu"}
    write_run(tmp_path / "gelu", random_model(ffn_type="gelu"), 1, gelu)
    assert main(["export", str(tmp_path / "gelu"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "non-gated FFN" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()

    # Weights that do not fit the run's config (here: a different width).
    write_run(tmp_path / "bad", random_model(), 1, {"preset": "tiny", **SMALL, "d_model": 128})
    assert main(["export", str(tmp_path / "bad"), str(tmp_path / "out")]) == 1
    assert "does not match the run's model config" in capsys.readouterr().err
