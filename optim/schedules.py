"""Learning-rate schedules: a multiplier of each group's base lr (lr = base_lr * multiplier)."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd", "constant")


def lr_multiplier(
    step: int,
    total_steps: int,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """The lr multiplier at 0-based `step` of a run of `total_steps` steps.

    All schedules warm up linearly over `warmup_steps` ((step + 1) / warmup_steps, so step 0 already
    moves). Then "constant" stays at 1; "cosine" follows a half cosine from 1 to `min_lr_ratio`; "wsd"
    (warmup-stable-decay) stays at 1 and decays linearly to `min_lr_ratio` over the last
    `decay_fraction` of the run. The decay reaches `min_lr_ratio` exactly at the last step
    (total_steps - 1) and stays there after it.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if not 0.0 <= decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction must be in [0, 1], got {decay_fraction}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    last = total_steps - 1
    if schedule == "cosine":
        start = warmup_steps
    else:
        start = max(warmup_steps, total_steps - round(decay_fraction * total_steps))
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / max(1, last - start))
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - min_lr_ratio) * progress
