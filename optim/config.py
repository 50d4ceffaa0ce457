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
    """SGD with momentum, as a routing target.

    Keys:
        lr: null: adamw_lr (its momentum is optim.sgd_momentum)
    """

    lr: float | None = None


@dataclass
class SignumConfig:
    """Signum: the sign of the momentum.

    Keys:
        lr: null: 0.2 x adamw_lr (the same update RMS as AdamW's)
        momentum: 0: SignGD
    """

    lr: float | None = None  # None: SIGN_LR_RATIO x adamw_lr
    momentum: float = 0.9


@dataclass
class LionConfig:
    """Lion (Chen et al. 2023).

    Keys:
        lr: null: 0.2 x adamw_lr
        betas: Lion's interpolation and momentum coefficients
    """

    lr: float | None = None  # None: SIGN_LR_RATIO x adamw_lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])


@dataclass
class Adam0Config:
    """Adam with beta1 = beta2 = 0: g / (|g| + eps), the paper's SignGD proxy.

    Keys:
        lr: null: 0.2 x adamw_lr
        eps: added to |g|
    """

    lr: float | None = None  # None: SIGN_LR_RATIO x adamw_lr
    eps: float = 1e-8


@dataclass
class NorMuonConfig:
    """NorMuon: Muon with a per-row second-moment normalization.

    Keys:
        lr: null: Muon's lr (the per-row normalization keeps Muon's update norm)
        beta2: EMA coefficient of each row's mean square
    """

    lr: float | None = None
    beta2: float = 0.95


@dataclass
class OptimConfig:
    """The `optim` section of a run config: routing, learning rates, each optimizer's settings.

    Keys:
        muon: groups routed to Muon (vo,ffn or [vo, ffn]); every other parameter goes to base
        route: any optimizer per group and layer range ("vo,ffn:muon qk@0-1:lion default:adamw"); null: muon
        base: optimizer of the groups not on Muon: adamw or sgd
        adamw_lr: peak learning rate of AdamW (and the reference of every other optimizer's)
        muon_lr: peak learning rate of Muon; null: adamw_lr (fair with adjust_lr_fn=match_rms_adamw)
        embed_lr: learning rate of the embedding on whichever optimizer; null: its optimizer's
        head_lr: learning rate of the head on whichever optimizer; null: its optimizer's
        betas: AdamW's betas
        eps: AdamW's epsilon
        weight_decay: decoupled weight decay of every matrix on every optimizer (never 1-D parameters)
        momentum: Muon's momentum
        nesterov: Nesterov momentum in Muon
        ns_steps: Newton-Schulz iterations of Muon
        ns_dtype: Newton-Schulz precision: auto (bf16 on GPUs and bf16-capable CPUs, else fp32), fp32, bf16
        adjust_lr_fn: match_rms_adamw (update RMS matched to AdamW's) or original (lr ~ 0.02)
        per_head: orthogonalize q per query head and k/v per kv head
        ns_coefficients: quintic (Jordan's) or polar_express (per-iteration, arXiv 2505.16932)
        orthogonalize: newton_schulz or exact (the SVD polar factor U V^T)
        momentum_order: momentum_then_orthogonalize or orthogonalize_then_momentum
        momentum_warmup_steps: Muon's momentum rises from 0.85 over N steps (modded-nanogpt); 0: off
        sgd_momentum: momentum of SGD (optim.base=sgd or a route to sgd)
        sgd: SGD's settings as a routing target
        signum: Signum's settings
        lion: Lion's settings
        adam0: Adam0's settings
        normuon: NorMuon's settings
        schedule: learning-rate schedule: cosine, wsd (warmup, stable, decay) or constant
        warmup_steps: linear warmup steps
        min_lr_ratio: the final learning rate as a fraction of the peak (cosine, wsd)
        decay_fraction: the share of the steps that wsd decays over
        grad_clip: clip the global gradient norm to this; 0: off
    """

    muon: Any = "hidden"
    # Setting both route and muon (muon not "hidden") is an error (optim.routing).
    route: Any = None
    base: str = "adamw"
    adamw_lr: float = 3e-3
    muon_lr: float | None = None
    embed_lr: float | None = None
    head_lr: float | None = None
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    ns_dtype: str = "auto"
    adjust_lr_fn: str = "match_rms_adamw"
    per_head: bool = False
    # Muon's variables (muon and normuon alike)
    ns_coefficients: str = "quintic"
    orthogonalize: str = "newton_schulz"
    momentum_order: str = "momentum_then_orthogonalize"
    momentum_warmup_steps: int = 0
    sgd_momentum: float = 0.9
    sgd: SGDConfig = field(default_factory=SGDConfig)
    signum: SignumConfig = field(default_factory=SignumConfig)
    lion: LionConfig = field(default_factory=LionConfig)
    adam0: Adam0Config = field(default_factory=Adam0Config)
    normuon: NorMuonConfig = field(default_factory=NorMuonConfig)
    schedule: str = "cosine"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    grad_clip: float = 1.0
