"""One optimizer object over a Muon part and a base part (AdamW or SGD), as the training loop sees it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from optim.groups import RouteEntry
from optim.muon import Muon


class CombinedOptimizer(torch.optim.Optimizer):
    """Steps a `Muon` part and a base `torch.optim.Optimizer` part together.

    It subclasses `torch.optim.Optimizer` so that accelerate's `prepare`/`save_state` treat it as an
    optimizer, but it does not call `Optimizer.__init__`: its groups and state live in the parts.

    Either part may be None (nothing routed to it). `param_groups` lists the groups of both parts
    (Muon's first); each carries a "name" and a "base_lr" so the loop can apply a schedule with
    `group["lr"] = group["base_lr"] * multiplier`. `state_dict()` is {"muon": ..., "base": ...}.
    """

    def __init__(
        self, muon: Muon | None, base: torch.optim.Optimizer | None, routing: Sequence[RouteEntry] = ()
    ) -> None:
        if muon is None and base is None:
            raise ValueError("CombinedOptimizer got no parameters: the model has no trainable parameters")
        # No super().__init__(): it would build param groups and step hooks this wrapper does not own.
        self.muon = muon
        self.base = base
        self.routing = list(routing)
        self.defaults: dict[str, Any] = {}
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])

    @property
    def parts(self) -> list[torch.optim.Optimizer]:
        """The present parts, Muon first."""
        return [opt for opt in (self.muon, self.base) if opt is not None]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """All param groups of both parts (the dicts themselves, so setting group["lr"] takes effect)."""
        return [group for opt in self.parts for group in opt.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, Any]:
        """Per-parameter state of both parts (a merged read-only view)."""
        return {p: s for opt in self.parts for p, s in opt.state.items()}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step of both parts; the closure, if any, is evaluated once."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.parts:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """{"muon": Muon's state_dict or None, "base": the base optimizer's or None}."""
        return {
            "muon": self.muon.state_dict() if self.muon is not None else None,
            "base": self.base.state_dict() if self.base is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict from `state_dict()`; the routing must be the same as when it was saved."""
        for key, opt in (("muon", self.muon), ("base", self.base)):
            saved = state_dict.get(key)
            if (saved is None) != (opt is None):
                raise ValueError(
                    f"the saved optimizer state {'lacks' if saved is None else 'has'} a {key} part and this "
                    f"optimizer {'has' if opt is not None else 'has none'}: the routing (optim.muon, "
                    "optim.base) differs from the checkpoint's; resume with the same optim settings"
                )
            if opt is not None:
                opt.load_state_dict(saved)

    def __repr__(self) -> str:
        return f"CombinedOptimizer(muon={self.muon!r}, base={self.base!r})"
