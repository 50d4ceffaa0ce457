"""Cooldown branches: fully annealed models at several losses from one WSD run.

A grid's `cooldowns: {at: [...], length: F}` branches each final run at each step `a` of `at` (in its
stable phase) into a run of `a + L` steps whose decay takes the last fraction F of it (L = F a / (1 -
F), rounded). Up to `a` the branch's schedule is its parent's, so it starts from the parent's
checkpoint at step `a` as an exact resume with a shorter total (like `train.extend_to`): the same as a
fresh run of `a + L` steps, computed in L. The report compares arms at matched loss across these
annealed points (ablations/reading/annealed.py), where every compared model has finished its schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optim.schedules import Schedule

STEPS, SCHEDULE, DECAY = "train.steps", "optim.schedule", "optim.decay_fraction"


@dataclass(frozen=True)
class Cooldowns:
    """The branch points `at` (steps of each final run) and each branch's decay fraction `length`."""

    at: list[int]
    length: float

    def branch(self, at: int) -> tuple[int, float]:
        """The branch at step `at`: its total steps and its optim.decay_fraction (its decay starts at
        exactly `at`)."""
        decay = max(1, round(self.length * at / (1 - self.length)))
        return at + decay, decay / (at + decay)

    def overrides(self, at: int) -> dict[str, Any]:
        """What a branch changes in its parent's config."""
        total, fraction = self.branch(at)
        return {STEPS: total, DECAY: fraction}

    def problem(self, config: dict[str, Any]) -> str | None:
        """Why a final run with this resolved (flat) config cannot be branched, or None."""
        if config[SCHEDULE] != "wsd":
            return (f"cooldowns need optim.schedule=wsd (a stable phase to branch from), not "
                    f"{config[SCHEDULE]}")
        # a grid may give numbers as strings (as on the command line)
        steps, warmup = int(config[STEPS]), int(config["optim.warmup_steps"])
        every, keep = int(config["train.checkpoint_every"]), int(config["train.keep_checkpoints"])
        parent = Schedule(steps, "wsd", warmup, float(config["optim.min_lr_ratio"]), float(config[DECAY]))
        late = [a for a in self.at if not warmup <= a <= parent.decay_start]
        if late:
            return (f"cooldowns.at {late} is outside the stable phase [{warmup}, {parent.decay_start}] of a "
                    f"{steps}-step run; branch between warmup and decay")
        same = [a for a in self.at if self.branch(a)[0] == steps]
        if same:
            return (f"cooldowns.at {same}: that branch is the {steps}-step run itself (it decays from the "
                    "same step); the final run is already that annealed point, drop it from cooldowns.at")
        if every <= 0 or any(a % every for a in self.at):
            return (f"cooldowns.at {self.at} must be multiples of train.checkpoint_every={every}: a branch "
                    "starts from its parent's checkpoint at that step")
        # the checkpoints from the first branch point on, and the final one if it is not on the cadence
        kept = (steps - min(self.at)) // every + 1 + bool(steps % every)
        if keep < kept:
            return (f"set train.keep_checkpoints >= {kept}: the final runs must keep their checkpoint at "
                    f"step {min(self.at)} until the end (train.keep_checkpoints={keep})")
        return None
