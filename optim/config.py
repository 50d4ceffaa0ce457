"""The settings of the optimizers and the router: the `optim` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class OptimConfig:
    """The `optim` section of a run config: routing, learning rates, each optimizer's settings."""

    muon: Any = "hidden"  # groups routed to Muon: "vo,ffn" or [vo, ffn]; every other parameter -> base
    base: str = "adamw"  # optimizer of the groups not on Muon: adamw | sgd
    adamw_lr: float = 3e-3
    muon_lr: float | None = None  # None: same as adamw_lr (fair with adjust_lr_fn=match_rms_adamw)
    embed_lr: float | None = None
    head_lr: float | None = None
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    ns_dtype: str = "auto"  # Newton–Schulz: auto (bf16 on GPU and bf16-capable CPUs, else fp32) | fp32 | bf16
    adjust_lr_fn: str = "match_rms_adamw"  # or "original": sqrt(max(1, rows/cols)), lr ~ 0.02
    per_head: bool = False
    sgd_momentum: float = 0.9
    schedule: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    grad_clip: float = 1.0  # 0 disables clipping
