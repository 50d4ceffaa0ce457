"""Conversion between muonlab's Transformer and transformers' LlamaForCausalLM (Qwen3 with QK-norm).

Parameter names are identical on both sides, so conversion is a 1:1 state_dict copy; RoPE uses the
same rotate-half convention, so no q/k permutation is needed.

CLI: `python -m model.hf export RUN_DIR_OR_CHECKPOINT OUT_DIR` writes a directory that
`transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)` loads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from model.config import ModelConfig
from model.presets import resolve_model_config
from model.transformer import Transformer

WEIGHTS_NAME = "model.safetensors"  # accelerate.save_state's file name for the first model
# Prefixes that torch.compile / DDP wrappers add to parameter names.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def _hf_config(cfg: ModelConfig, **token_ids: int | None) -> PretrainedConfig:
    """The transformers config that expresses `cfg` exactly (Llama, or Qwen3 for QK-norm)."""
    if cfg.ffn_type != "swiglu":
        raise ValueError(
            f"model.ffn_type={cfg.ffn_type!r} is a non-gated FFN, which transformers' Llama cannot express "
            "(its MLP is always gated); only models trained with model.ffn_type=swiglu can be exported"
        )
    common: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=float(cfg.rope_theta),
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        initializer_range=cfg.init_std,
        **token_ids,
    )
    if cfg.qk_norm:
        # Qwen3 is Llama plus a per-head RMSNorm on q and k before RoPE: exactly our qk_norm.
        return Qwen3Config(**common, use_sliding_window=False)
    return LlamaConfig(**common, mlp_bias=False)


def to_hf(
    model: Transformer, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> PreTrainedModel:
    """A transformers model with the same weights and logits: LlamaForCausalLM, or Qwen3ForCausalLM
    when the model uses QK-norm (Llama has no QK-norm). Raises ValueError for a non-gated FFN."""
    cfg = model.config
    hf_config = _hf_config(cfg, bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=None)
    hf_cls = Qwen3ForCausalLM if cfg.qk_norm else LlamaForCausalLM
    dtype = next(model.parameters()).dtype
    hf_model = hf_cls(hf_config).to(dtype)
    missing, unexpected = hf_model.load_state_dict(model.state_dict(), strict=False)
    # When tied, lm_head.weight is the embedding itself and absent from our state_dict.
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"names do not match transformers: missing {missing}, unexpected {unexpected}")
    return hf_model.eval()


def _model_config_from_hf(config: PretrainedConfig) -> ModelConfig:
    """ModelConfig for a Llama/Qwen3 config, or a ValueError naming what muonlab cannot express."""
    model_type = config.model_type
    if model_type not in ("llama", "qwen3"):
        raise ValueError(f"cannot convert a {model_type!r} model; only llama and qwen3 checkpoints convert")
    rope = getattr(config, "rope_parameters", None) or {
        "rope_type": "default",
        "rope_theta": config.rope_theta,
    }
    problems = []
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_type={rope['rope_type']!r} (only default RoPE is supported)")
    if config.hidden_act != "silu":
        problems.append(f"hidden_act={config.hidden_act!r} (only silu)")
    if config.attention_bias or getattr(config, "mlp_bias", False):
        problems.append("attention/MLP biases (muonlab's linears are bias-free)")
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        problems.append(f"head_dim={config.head_dim} != hidden_size/num_attention_heads")
    if getattr(config, "sliding_window", None) is not None:
        problems.append("sliding-window attention")
    if problems:
        raise ValueError(f"cannot convert this {model_type} model: {'; '.join(problems)}")
    return ModelConfig(
        vocab_size=config.vocab_size,
        d_model=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        ffn_hidden=config.intermediate_size,
        ffn_type="swiglu",
        max_seq_len=config.max_position_embeddings,
        tie_embeddings=bool(config.tie_word_embeddings),
        qk_norm=model_type == "qwen3",
        rope_theta=float(rope["rope_theta"]),
        norm_eps=config.rms_norm_eps,
        init_std=config.initializer_range,
    )


def from_hf(hf_model: PreTrainedModel) -> Transformer:
    """A muonlab Transformer with the weights of a LlamaForCausalLM (or Qwen3ForCausalLM)."""
    cfg = _model_config_from_hf(hf_model.config)
    dtype = next(hf_model.parameters()).dtype
    model = Transformer(cfg).to(dtype)
    state = hf_model.state_dict()
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)  # the embedding itself; muonlab registers no lm_head when tied
    model.load_state_dict(state, strict=True)
    return model


def find_checkpoint(path: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) for a run directory (newest checkpoint) or a checkpoint."""
    if (path / WEIGHTS_NAME).is_file():
        return path.parent.parent, path
    steps = []
    for ckpt in (path / "checkpoints").glob("step_*"):
        match = re.fullmatch(r"step_(\d+)", ckpt.name)
        if match and (ckpt / WEIGHTS_NAME).is_file():
            steps.append((int(match.group(1)), ckpt))
    if not steps:
        raise FileNotFoundError(
            f"{path} is neither a checkpoint directory (with {WEIGHTS_NAME}) nor a run directory with "
            f"checkpoints/step_<N>/{WEIGHTS_NAME}; pass runs/<name> or runs/<name>/checkpoints/step_<N>"
        )
    return path, max(steps)[1]


def _load_run_config(run_dir: Path, ckpt: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf  # only the CLI needs it

    for candidate in (ckpt / "config.yaml", run_dir / "config.yaml"):
        if candidate.is_file():
            cfg = OmegaConf.to_container(OmegaConf.load(candidate), resolve=True)
            if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
                raise ValueError(f"{candidate} has no `model` section; is it a muonlab run config?")
            return cfg
    raise FileNotFoundError(f"no config.yaml in {ckpt} or {run_dir}; the run's resolved config is needed")


def load_checkpoint(path: str | Path) -> tuple[Transformer, dict[str, Any], Path]:
    """(model with the checkpoint's weights, the run config, checkpoint dir) for a run or checkpoint dir."""
    from safetensors.torch import load_file

    run_dir, ckpt = find_checkpoint(Path(path))
    run_cfg = _load_run_config(run_dir, ckpt)
    state = {}
    for name, tensor in load_file(ckpt / WEIGHTS_NAME).items():
        for prefix in _WRAPPER_PREFIXES:
            name = name.removeprefix(prefix)
        state[name] = tensor
    if "model.embed_tokens.weight" not in state:
        raise ValueError(f"{ckpt / WEIGHTS_NAME} has no model.embed_tokens.weight; not a muonlab checkpoint")
    # The embedding's row count is the vocabulary the run trained with, whatever the data config says.
    vocab_size = state["model.embed_tokens.weight"].shape[0]
    cfg = resolve_model_config({**run_cfg["model"], "vocab_size": vocab_size})
    model = Transformer(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ValueError(f"{ckpt / WEIGHTS_NAME} does not match the run's model config: {first}") from None
    return model, run_cfg, ckpt


def _dataset_dir(run_dir: Path, run_cfg: dict[str, Any]) -> Path | None:
    """Where the run's tokenizer.json (and meta.json) live: the run directory, `data.dir`, or the
    cache directory train.py derived from the data settings; None when none of them has one."""
    data = run_cfg.get("data") or {}
    candidates = [run_dir]
    if data.get("dir"):
        candidates.append(Path(data["dir"]))
    elif data.get("source"):
        from data.prepare import dataset_dir_for

        settings = ("vocab_size", "tokenizer", "tokens", "val_tokens", "text_field", "bios")
        # Same keywords as train.py's ensure_prepared call; settings this version of data/ does not
        # understand mean exporting without the tokenizer, not failing the export.
        with contextlib.suppress(TypeError, ValueError):
            candidates.append(dataset_dir_for(data["source"], **{k: data[k] for k in settings if k in data}))
    return next((c for c in candidates if (c / "tokenizer.json").is_file()), None)


def _save_tokenizer(tokenizer_file: Path, meta: dict[str, Any], out_dir: Path) -> None:
    """Save the run's tokenizer for AutoTokenizer, with its BOS/EOS tokens named when meta.json has them."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
    special = {}
    for key, role in (("bos_id", "bos_token"), ("eos_id", "eos_token")):
        if meta.get(key) is not None:
            special[role] = tokenizer.convert_ids_to_tokens(meta[key])
    tokenizer.add_special_tokens(special)
    tokenizer.save_pretrained(out_dir)


def export(src: str | Path, out_dir: str | Path) -> str:
    """Convert a run's newest (or the given) checkpoint to a transformers directory; returns a summary."""
    out_dir = Path(out_dir)
    # disable=None: a bar on a terminal, silent in logs; the context closes it before any error line.
    with tqdm(total=3, desc="export", unit="stage", disable=None) as stages:
        model, run_cfg, ckpt = load_checkpoint(src)
        stages.update()
        data_dir = _dataset_dir(ckpt.parent.parent, run_cfg)
        meta_file = data_dir / "meta.json" if data_dir else None
        meta = json.loads(meta_file.read_text()) if meta_file and meta_file.is_file() else {}
        hf_model = to_hf(model, bos_token_id=meta.get("bos_id"), eos_token_id=meta.get("eos_id"))
        stages.update()
        hf_model.save_pretrained(out_dir)
        if data_dir is not None:
            _save_tokenizer(data_dir / "tokenizer.json", meta, out_dir)
        stages.update()
    tokenizer_note = "with tokenizer" if data_dir is not None else "without tokenizer (none found)"
    return (
        f"exported {ckpt} ({model.num_params() / 1e6:.1f}M params) as {type(hf_model).__name__} "
        f"to {out_dir}, {tokenizer_note}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.hf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a transformers checkpoint directory")
    exp.add_argument("src", help="runs/<name> (newest checkpoint) or runs/<name>/checkpoints/step_<N>")
    exp.add_argument("out_dir", help="output directory for save_pretrained")
    args = parser.parse_args(argv)
    try:
        print(export(args.src, args.out_dir))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
