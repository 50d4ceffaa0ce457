"""Learning-rate schedules: a multiplier of each group's base lr (lr = base_lr * multiplier)."""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("cosine", "wsd", "constant")


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule over `total_steps` steps, validated once; `multiplier(step)` per step.

    All schedules warm up linearly over `warmup_steps` ((step + 1) / warmup_steps, so step 0 already
    moves). Then "constant" stays at 1; "cosine" follows a half cosine from 1 to `min_lr_ratio`; "wsd"
    (warmup-stable-decay) stays at 1 and decays linearly to `min_lr_ratio` over the last
    `decay_fraction` of the run. The decay reaches `min_lr_ratio` exactly at the last step
    (total_steps - 1) and stays there after it.
    """

    total_steps: int
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")

    @property
    def decay_start(self) -> int:
        """The step where the decay begins (total_steps for "constant": never)."""
        if self.schedule == "constant":
            return self.total_steps
        if self.schedule == "cosine":
            return self.warmup_steps
        return max(self.warmup_steps, self.total_steps - round(self.decay_fraction * self.total_steps))

    def multiplier(self, step: int) -> float:
        """The lr multiplier at 0-based `step`."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        start = self.decay_start
        if step < start or self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - start) / max(1, self.total_steps - 1 - start))
        if self.schedule == "cosine":
            return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - (1.0 - self.min_lr_ratio) * progress


def lr_multiplier(
    step: int,
    total_steps: int,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """`Schedule(...).multiplier(step)`, for one-off use (a loop should build the Schedule once)."""
    return Schedule(total_steps, schedule, warmup_steps, min_lr_ratio, decay_fraction).multiplier(step)
