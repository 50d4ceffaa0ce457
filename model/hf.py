"""Conversion between muonlab's Transformer and transformers' LlamaForCausalLM (Qwen3 with QK-norm).

Parameter names are identical on both sides, so conversion is a 1:1 state_dict copy; RoPE uses the
same rotate-half convention, so no q/k permutation is needed.

Exporting a run directory's checkpoint is `python -m training.export` (training/export.py).
"""

from __future__ import annotations

from typing import Any

from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from common.errors import UserError
from model.config import ModelConfig
from model.transformer import Transformer

# ModelConfig field -> the transformers config field that holds it, in both directions (the others:
# rope_theta and head_dim, derived; qk_norm, the model type; ffn_type, always swiglu).
FIELDS = (("vocab_size", "vocab_size"), ("d_model", "hidden_size"), ("ffn_hidden", "intermediate_size"),
          ("n_layers", "num_hidden_layers"), ("n_heads", "num_attention_heads"),
          ("n_kv_heads", "num_key_value_heads"), ("max_seq_len", "max_position_embeddings"),
          ("norm_eps", "rms_norm_eps"), ("tie_embeddings", "tie_word_embeddings"),
          ("init_std", "initializer_range"))


def _hf_config(cfg: ModelConfig, **token_ids: int | None) -> PretrainedConfig:
    """The transformers config that expresses `cfg` exactly (Llama, or Qwen3 for QK-norm)."""
    if cfg.ffn_type != "swiglu":
        raise UserError(
            f"model.ffn_type={cfg.ffn_type!r} is a non-gated FFN, which transformers' Llama cannot express "
            "(its MLP is always gated); only models trained with model.ffn_type=swiglu can be exported"
        )
    common: dict[str, Any] = {
        **{theirs: getattr(cfg, ours) for ours, theirs in FIELDS},
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rope_theta": float(cfg.rope_theta),
        "attention_bias": False,
        **token_ids,
    }
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
        raise UserError(f"cannot convert a {model_type!r} model; only llama and qwen3 checkpoints convert")
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
        raise UserError(f"cannot convert this {model_type} model: {'; '.join(problems)}")
    fields = {ours: getattr(config, theirs) for ours, theirs in FIELDS}
    return ModelConfig(**{**fields, "tie_embeddings": bool(fields["tie_embeddings"])}, ffn_type="swiglu",
                       qk_norm=model_type == "qwen3", rope_theta=float(rope["rope_theta"]))


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
