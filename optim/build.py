"""Build the combined optimizer of a model from the `optim` config section."""

from __future__ import annotations

from typing import Any

from torch import nn

from common.errors import UserError
from optim.combined import CombinedOptimizer
from optim.config import OptimConfig
from optim.registry import bases, optimizer_lr, orthogonalizing, part_order, spec_of
from optim.routing import route_config


def _lr_for(group: str, optimizer: str, cfg: OptimConfig) -> float:
    """embed_lr / head_lr override the lr of those groups on any optimizer; otherwise the optimizer's lr."""
    if group == "embed" and cfg.embed_lr is not None:
        return float(cfg.embed_lr)
    if group == "head" and cfg.head_lr is not None:
        return float(cfg.head_lr)
    return optimizer_lr(optimizer, cfg)


def parameter_rates(model: nn.Module, cfg: OptimConfig) -> dict[str, tuple[str, float]]:
    """Each parameter's optimizer and learning rate, as build_optimizer gives them: two configs with the
    same rates (a tied rate set to the value it ties to) train the same model."""
    return {e.name: (e.optimizer, _lr_for(e.group, e.optimizer, cfg)) for e in route_config(model, cfg)}


def _heads_of(model: nn.Module, group: str) -> int | None:
    """Heads to split a q/k/v matrix into for per-head orthogonalization (needs `model.config`)."""
    if group not in ("q", "k", "v"):
        return None
    # the bare Transformer, or a DDP/accelerate wrapper around it
    config = getattr(model, "config", None) or getattr(getattr(model, "module", None), "config", None)
    if config is None or not hasattr(config, "n_heads"):
        raise UserError(
            "optim.per_head=true needs the model's head counts (model.config.n_heads / n_kv_heads); "
            "this model has no such config, set optim.per_head=false"
        )
    return config.n_heads if group == "q" else getattr(config, "n_kv_heads", config.n_heads)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> CombinedOptimizer:
    """Route `model`'s parameters (`optim.routing.routing_of(cfg)`) and build each part by its registry spec.

    `cfg` is the `optim` section. Param groups are named "<optimizer>[_<kind>]": kind "embed", "head",
    "scalar" or "heads<N>" (per-head Muon). Weight decay applies to every matrix (embedding and head
    included, whichever optimizer they go to, so a group keeps its decay when it moves between
    optimizers) and never to 1-D parameters.
    """
    if cfg.base not in bases():
        raise ValueError(f"optim.base={cfg.base!r} is unknown; choose one of {', '.join(bases())}")
    entries = route_config(model, cfg)
    params = dict(model.named_parameters())
    per_head = bool(cfg.per_head)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    muon_family = orthogonalizing()
    for entry in entries:
        kind, extra = "", {}
        if entry.group in ("embed", "head", "scalar"):
            kind = entry.group
        elif entry.optimizer in muon_family and per_head:
            extra = {"split_heads": _heads_of(model, entry.group)}
            kind = f"heads{extra['split_heads']}" if extra["split_heads"] else ""
        name = entry.optimizer + (f"_{kind}" if kind else "")
        lr = _lr_for(entry.group, entry.optimizer, cfg)
        group = groups.setdefault(
            (entry.optimizer, name),
            {"name": name, "params": [], "lr": lr, "base_lr": lr, **extra,
             "weight_decay": 0.0 if entry.group == "scalar" else float(cfg.weight_decay)},
        )
        group["params"].append(params[entry.name])
    parts = {}
    for optimizer in part_order():  # Muon first, as the loop's train/lr (param_groups[0]) always was
        mine = [g for (opt, _), g in groups.items() if opt == optimizer]
        if mine:
            parts[optimizer] = spec_of(optimizer).build(mine, optimizer_lr(optimizer, cfg), cfg)
    return CombinedOptimizer(parts, entries, base=cfg.base)
