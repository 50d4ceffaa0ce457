"""The settings of the optimizers and the router: the `optim` section of a run config."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any

from optim.registry import OptimizerSpec, sections

# The optim keys an AdamW-only run depends on: runs that differ only in other optim keys (routing,
# Muon's or another optimizer's settings) have the same AdamW reference run.
ADAMW_RUN_KEYS = ("adamw_lr", "embed_lr", "head_lr", "betas", "eps", "weight_decay", "schedule",
                  "warmup_steps", "min_lr_ratio", "decay_fraction", "grad_clip")


@dataclass
class _OptimKeys:
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


@dataclass
class _ScheduleKeys:
    """The learning-rate schedule and clipping (the last keys of the `optim` section).

    Keys:
        schedule: learning-rate schedule: cosine, wsd (warmup, stable, decay) or constant
        warmup_steps: linear warmup steps
        min_lr_ratio: the final learning rate as a fraction of the peak (cosine, wsd)
        decay_fraction: the share of the steps that wsd decays over
        grad_clip: clip the global gradient norm to this; 0: off
    """

    schedule: str = "cosine"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    grad_clip: float = 1.0


def _optim_config() -> type:
    """OptimConfig: `_OptimKeys`, then one `optim.<name>` section per optimizer of the registry that has
    one, then `_ScheduleKeys` (config.yaml's order from before the registry, so its text is unchanged)."""
    fields: list[tuple[str, Any, Any]] = []
    docs: list[str] = []
    for part in (_OptimKeys, *sections(), _ScheduleKeys):
        if isinstance(part, OptimizerSpec):  # a section: its docstring's first line documents it
            fields.append((part.name, part.section, field(default_factory=part.section)))
            docs.append(f"{part.name}: {inspect.getdoc(part.section).splitlines()[0].rstrip('.')}")
            continue
        hints = typing.get_type_hints(part)
        for f in dataclasses.fields(part):
            fields.append((f.name, hints[f.name], field(default=f.default,
                                                        default_factory=f.default_factory)))
        docs.extend(line.strip() for line in inspect.getdoc(part).partition("Keys:\n")[2].splitlines())
    keys = "\n".join(f"    {line}" for line in docs if line)
    doc = f"{inspect.getdoc(_OptimKeys).partition('Keys:')[0]}Keys:\n{keys}\n"
    return dataclasses.make_dataclass("OptimConfig", fields,
                                      namespace={"__doc__": doc, "__module__": __name__})


# A dataclass built from the registry: an optimizer added there brings its section here.
OptimConfig = _optim_config()
