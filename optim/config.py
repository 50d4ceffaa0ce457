"""The settings of the optimizers and the router: the `optim` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A sign update (signum, lion, adam0) moves every element by lr: RMS 1 x lr. AdamW's update has RMS of
# about sqrt((1 - beta1) / (1 + beta1)) x lr on noise-dominated gradients (0.23 at beta1 = 0.9), the 0.2
# that Muon's match_rms_adamw also uses (Moonlight). So a sign method's default lr is 0.2 x adamw_lr:
# the same update RMS, hence the same learning rate for every group whichever optimizer it goes to.
SIGN_LR_RATIO = 0.2


# The optim keys an AdamW-only run depends on: runs that differ only in other optim keys (routing,
# Muon's or another optimizer's settings) have the same AdamW reference run.
ADAMW_RUN_KEYS = ("adamw_lr", "embed_lr", "head_lr", "betas", "eps", "weight_decay", "schedule",
                  "warmup_steps", "min_lr_ratio", "decay_fraction", "grad_clip")


@dataclass
class SGDConfig:
    lr: float | None = None  # None: adamw_lr (SGD's momentum is optim.sgd_momentum)


@dataclass
class SignumConfig:
    lr: float | None = None  # None: SIGN_LR_RATIO x adamw_lr
    momentum: float = 0.9  # 0: SignGD


@dataclass
class LionConfig:
    lr: float | None = None  # None: SIGN_LR_RATIO x adamw_lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])


@dataclass
class Adam0Config:
    lr: float | None = None  # None: SIGN_LR_RATIO x adamw_lr (Adam with beta1 = beta2 = 0 is g / (|g| + eps))
    eps: float = 1e-8


@dataclass
class NorMuonConfig:
    lr: float | None = None  # None: Muon's lr (the per-row normalization keeps Muon's update norm)
    beta2: float = 0.95  # EMA of each row's mean square


@dataclass
class OptimConfig:
    """The `optim` section of a run config: routing, learning rates, each optimizer's settings."""

    muon: Any = "hidden"  # groups routed to Muon: "vo,ffn" or [vo, ffn]; every other parameter -> base
    # Any optimizer per group and layer range: "vo,ffn:muon qk@0-3:signum default:adamw" or a mapping
    # (optim.routing); None: optim.muon decides. Setting both (optim.muon not "hidden") is an error.
    route: Any = None
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
    # Muon's variables (muon and normuon alike)
    ns_coefficients: str = "quintic"  # quintic (Jordan's) | polar_express (per-step, arXiv 2505.16932)
    orthogonalize: str = "newton_schulz"  # newton_schulz | exact (the SVD polar factor U V^T)
    momentum_order: str = "momentum_then_orthogonalize"  # | orthogonalize_then_momentum
    momentum_warmup_steps: int = 0  # 0: off; else momentum from 0.85 to optim.momentum (modded-nanogpt)
    sgd_momentum: float = 0.9
    sgd: SGDConfig = field(default_factory=SGDConfig)
    signum: SignumConfig = field(default_factory=SignumConfig)
    lion: LionConfig = field(default_factory=LionConfig)
    adam0: Adam0Config = field(default_factory=Adam0Config)
    normuon: NorMuonConfig = field(default_factory=NorMuonConfig)
    schedule: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    grad_clip: float = 1.0  # 0 disables clipping
