"""A config's model on the meta device (no memory, no data), and each parameter's optimizer and rate."""

from __future__ import annotations

import dataclasses

import torch

from model import Transformer
from model.presets import resolve_model_config
from optim.build import parameter_rates
from training.config import RunConfig

# Any vocabulary size: the routing and the rates do not depend on it, and no data is read.
PLACEHOLDER_VOCAB = 64


def meta_model(cfg: RunConfig) -> Transformer:
    """The config's model on the meta device (its vocabulary a placeholder)."""
    model_cfg = resolve_model_config(dataclasses.asdict(cfg.model), vocab_size=PLACEHOLDER_VOCAB)
    with torch.device("meta"):
        return Transformer(model_cfg)


def config_rates(cfg: RunConfig) -> dict[str, tuple[str, float]]:
    """Each parameter's optimizer and learning rate under this config (optim.build.parameter_rates)."""
    return parameter_rates(meta_model(cfg), cfg.optim)
