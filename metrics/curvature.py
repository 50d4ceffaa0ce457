"""Curvature along the last update, per parameter group: is a step's gain eaten by curvature?

For an update u = w_after - w_before and the loss L on a fixed batch, at w_before:
L(w_before + u) ~ L(w_before) - gain + penalty / 2, with

- `gain` = -g·u, the first-order decrease (positive when the update descends),
- `penalty` = uᵀHu, the curvature along u (H the Hessian; a Hessian-vector product by double backward),
- `nds` = uᵀHu / ‖u‖², the normalized directional sharpness ("Why Muon Outperforms Adam: A Curvature
  Perspective": Muon's updates point along flatter directions).

Each group's u is its own parameters' part of the update (the rest held at zero), so `penalty` is the
group's diagonal block of H. Logged as `curvature/<group>/{gain,penalty,nds}`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel


def curvature_metrics(
    model: nn.Module,
    batch_inputs: Tensor,
    batch_targets: Tensor,
    update: Mapping[str, Tensor],
    groups: Mapping[str, str],
) -> dict[str, float]:
    """`curvature/<group>/{gain,penalty,nds}` of `update` ({parameter name: w_after - w_before}) on a batch.

    `model(batch_inputs)` gives logits, scored by cross-entropy against `batch_targets`; `model` holds
    w_after (it is not modified: the loss is evaluated at w_after - u through `functional_call`).
    `groups` maps each updated parameter's name to its group.
    """
    params = dict(model.named_parameters())
    before = {name: (params[name].detach() - u.to(params[name])).requires_grad_()
              for name, u in update.items()}
    rest = {name: p.detach() for name, p in params.items() if name not in before}
    names = list(before)
    # The fused attention kernels have no double backward; the math one does.
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        logits = functional_call(model, {**rest, **before}, (batch_inputs,))
        loss = F.cross_entropy(logits.flatten(0, -2), batch_targets.flatten())
        grads = dict(zip(names, torch.autograd.grad(loss, [before[n] for n in names], create_graph=True),
                         strict=True))
        by_group: dict[str, list[str]] = {}
        for name in names:
            by_group.setdefault(groups[name], []).append(name)
        out = {}
        for group, members in by_group.items():
            u = [update[n].to(before[n]) for n in members]
            gu = sum((grads[n] * v).sum() for n, v in zip(members, u, strict=True))
            hu = torch.autograd.grad(gu, [before[n] for n in members], retain_graph=True)
            penalty = sum((h * v).sum() for h, v in zip(hu, u, strict=True)).item()
            norm2 = sum(v.square().sum() for v in u).item()
            out[f"curvature/{group}/gain"] = -gu.item()
            out[f"curvature/{group}/penalty"] = penalty
            out[f"curvature/{group}/nds"] = penalty / norm2 if norm2 > 0 else 0.0
    return out
