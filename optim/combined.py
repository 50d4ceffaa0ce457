"""One optimizer object over the optimizers a routing uses (Muon, AdamW, Signum, ...), as the loop sees it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from optim.groups import RouteEntry


class CombinedOptimizer(torch.optim.Optimizer):
    """Steps several optimizers ("parts", one per optimizer name of the routing) together.

    It subclasses `torch.optim.Optimizer` so that accelerate's `prepare`/`save_state` treat it as an
    optimizer, but it does not call `Optimizer.__init__`: its groups and state live in the parts.

    `parts` maps optimizer names to optimizers, Muon first (empty parts are left out). `param_groups`
    lists the groups of every part in that order; each carries a "name" and a "base_lr" so the loop can
    apply a schedule with `group["lr"] = group["base_lr"] * multiplier`. `state_dict()` holds one entry
    per part, keyed by its name, except the part of optimizer `base` (`optim.base`), which is "base";
    "muon" and "base" are always there (None without such a part): the format of the runs from before
    the router took any optimizer, so their checkpoints resume.
    """

    def __init__(
        self,
        parts: Mapping[str, torch.optim.Optimizer],
        routing: Sequence[RouteEntry] = (),
        base: str = "adamw",
    ) -> None:
        if not parts:
            raise ValueError("CombinedOptimizer got no parameters: the model has no trainable parameters")
        # No super().__init__(): it would build param groups and step hooks this wrapper does not own.
        self.parts = dict(parts)
        self.base_name = base
        self.routing = list(routing)
        self.defaults: dict[str, Any] = {}
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])

    @property
    def muon(self) -> torch.optim.Optimizer | None:
        return self.parts.get("muon")

    @property
    def base(self) -> torch.optim.Optimizer | None:
        """The part of optimizer `optim.base` (AdamW or SGD), if any parameter goes to it."""
        return self.parts.get(self.base_name)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """All param groups of every part (the dicts themselves, so setting group["lr"] takes effect)."""
        return [group for opt in self.parts.values() for group in opt.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, Any]:
        """Per-parameter state of every part (a merged read-only view)."""
        return {p: s for opt in self.parts.values() for p, s in opt.state.items()}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step of every part; the closure, if any, is evaluated once."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.parts.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def _key(self, name: str) -> str:
        return "base" if name == self.base_name else name

    def state_dict(self) -> dict[str, Any]:
        """{part key: its state_dict}, with "muon" and "base" always present (see the class)."""
        saved: dict[str, Any] = {"muon": None, "base": None}
        saved.update({self._key(name): opt.state_dict() for name, opt in self.parts.items()})
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict from `state_dict()`; the routing must be the same as when it was saved."""
        mine = {self._key(name): opt for name, opt in self.parts.items()}
        saved = {key for key, value in state_dict.items() if value is not None}
        if saved != set(mine):
            raise ValueError(
                f"the saved optimizer state has parts {', '.join(sorted(saved)) or 'none'} and this "
                f"optimizer {', '.join(sorted(mine))}: the routing (optim.route, optim.muon, optim.base) "
                "differs from the checkpoint's; resume with the same optim settings"
            )
        for key, opt in mine.items():
            opt.load_state_dict(state_dict[key])

    def __repr__(self) -> str:
        return f"CombinedOptimizer({', '.join(f'{name}={opt!r}' for name, opt in self.parts.items())})"
