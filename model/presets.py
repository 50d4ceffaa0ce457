"""Named model sizes and the resolution of a config file's `model` section into a ModelConfig."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from common.errors import UserError
from model.config import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # ~1.9M parameters at vocab 4096 (1.05M of them embedding + head): trains on 2 CPU cores in
    # minutes. Untied so that the `head` routing group exists in every preset.
    "tiny": ModelConfig(
        vocab_size=4096, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, ffn_hidden=384,
        ffn_type="swiglu", max_seq_len=256, tie_embeddings=False,
    ),
    # ~23.5M parameters at vocab 4096.
    "small": ModelConfig(
        vocab_size=4096, d_model=512, n_layers=6, n_heads=8, n_kv_heads=8, ffn_hidden=1408,
        ffn_type="swiglu", max_seq_len=512, tie_embeddings=False,
    ),
    # The paper's 160M "NanoGPT" (GPT-2 small shape, untied head, non-gated GELU FFN): ~162M
    # parameters at GPT-2's padded vocab 50304. Its gated variant is ffn_type=swiglu (then pick
    # ffn_hidden=2048 to keep the parameter count).
    "gpt2-160m": ModelConfig(
        vocab_size=50304, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_hidden=3072,
        ffn_type="gelu", max_seq_len=1024, tie_embeddings=False,
    ),
    # ~0.68B non-embedding parameters (~0.83B with the untied 50304-token embedding and head).
    "0.7b": ModelConfig(
        vocab_size=50304, d_model=1536, n_layers=24, n_heads=12, n_kv_heads=12, ffn_hidden=4096,
        ffn_type="swiglu", max_seq_len=2048, tie_embeddings=False,
    ),
}


def _check_fields(overrides: Mapping[str, Any]) -> None:
    unknown = sorted(set(overrides) - set(ModelConfig.field_names()))
    if unknown:
        valid = ", ".join(ModelConfig.field_names())
        raise UserError(f"unknown model field(s) {', '.join(unknown)}; valid fields: {valid}")


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A fresh copy of preset `name` with the given fields replaced (and re-validated)."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    _check_fields(overrides)
    return dataclasses.replace(PRESETS[name], **overrides)


def resolve_model_config(model_section: Mapping[str, Any], vocab_size: int | None = None) -> ModelConfig:
    """ModelConfig from a config file's `model` section: `preset` plus non-null field overrides.

    vocab_size is the tokenizer's (the prepared dataset's manifest); it replaces the preset's vocabulary
    unless the section sets model.vocab_size explicitly, which must then be at least as large
    (a larger embedding table is allowed, e.g. padded to a multiple of 64).
    """
    section = dict(model_section)
    preset = section.pop("preset", None)
    if preset is None:
        raise UserError(f"model.preset is missing; set it to one of {', '.join(PRESETS)}")
    overrides = {key: value for key, value in section.items() if value is not None}
    _check_fields(overrides)
    if vocab_size is not None:
        explicit = overrides.get("vocab_size")
        if explicit is not None and explicit < vocab_size:
            raise UserError(
                f"model.vocab_size={explicit} is smaller than the tokenizer's vocabulary ({vocab_size}); "
                f"remove the override or set model.vocab_size >= {vocab_size}"
            )
        overrides.setdefault("vocab_size", vocab_size)
    return get_preset(preset, **overrides)
