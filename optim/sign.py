"""Sign-based optimizers torch does not have: Signum (SignSGD with momentum) and Lion.

Each element moves by exactly `lr` (or 0) per step, so an update's RMS is 1 x lr, against roughly
0.2 x lr for AdamW (`optim.registry.SIGN_LR_RATIO`). Weight decay is decoupled, as in AdamW and Muon:
`p <- p * (1 - lr * weight_decay)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class _SignOptimizer(torch.optim.Optimizer):
    """The step both share: per group, the momentum lists, decoupled weight decay, `p -= lr * sign(d)`."""

    def _direction(self, group: dict[str, Any], bufs: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """The direction whose sign is the step; updates `bufs` (the momentum) in place."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            direction = self._direction(group, bufs, [p.grad for p in params])
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(params, torch._foreach_sign(direction), alpha=-group["lr"])
        return loss


class Signum(_SignOptimizer):
    """Signum (Bernstein et al. 2018): `m <- lerp(m, g, 1 - momentum)`, `p <- p - lr * sign(m)`.

    `momentum=0` is SignGD, `p <- p - lr * sign(g)` (the theory's SignGD; Adam with beta1 = beta2 = 0
    up to its eps).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Signum: lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Signum: momentum must be in [0, 1), got {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Signum: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def _direction(self, group: dict[str, Any], bufs: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
        return bufs


class Lion(_SignOptimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):
    `p <- p - lr * sign(lerp(m, g, 1 - beta1))`, then `m <- lerp(m, g, 1 - beta2)`."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Lion: lr must be >= 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: betas must be two numbers in [0, 1), got {betas}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Lion: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    def _direction(self, group: dict[str, Any], bufs: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        beta1, beta2 = group["betas"]
        direction = [torch.lerp(m, g, 1 - beta1) for m, g in zip(bufs, grads, strict=True)]
        torch._foreach_lerp_(bufs, grads, 1 - beta2)
        return direction
