"""The model configuration: one dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, fields

from common.errors import UserError

FFN_TYPES = ("swiglu", "gelu", "relu2")


@dataclass
class ModelConfig:
    """Shape and options of the LLaMA-style decoder.

    ffn_type "swiglu" is the gated FFN (gate_proj, up_proj, down_proj); "gelu" and "relu2" are the
    non-gated FFN of GPT-2/NanoGPT (up_proj, down_proj) with GELU or squared-ReLU activation.
    """

    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    ffn_hidden: int = 384
    ffn_type: str = "swiglu"
    max_seq_len: int = 256
    tie_embeddings: bool = False
    qk_norm: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self) -> None:
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "max_seq_len")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"model.{name} must be a positive integer, got {value!r}")
        for name in ("rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UserError(f"model.{name} must be a positive number, got {value!r}")
        if self.ffn_type not in FFN_TYPES:
            raise UserError(
                f"model.ffn_type={self.ffn_type!r} is unknown; use one of {', '.join(FFN_TYPES)}"
            )
        if self.d_model % self.n_heads:
            raise UserError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                "choose n_heads that divides d_model"
            )
        if self.n_heads % self.n_kv_heads:
            raise UserError(
                f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.n_kv_heads}; "
                "choose n_kv_heads that divides n_heads (n_kv_heads=n_heads disables grouped-query attention)"
            )
        if self.head_dim % 2:
            raise UserError(
                f"head dimension d_model/n_heads={self.head_dim} is odd; rotary embeddings need an even "
                "head dimension, change d_model or n_heads"
            )
        for name in ("tie_embeddings", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"model.{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the configurable fields (what a config file may override)."""
        return tuple(f.name for f in fields(cls))
