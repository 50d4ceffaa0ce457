"""The LLaMA-style decoder, its configuration and named presets."""

from model.config import ModelConfig
from model.presets import PRESETS, get_preset, resolve_model_config
from model.transformer import Transformer

__all__ = ["PRESETS", "ModelConfig", "Transformer", "get_preset", "resolve_model_config"]
