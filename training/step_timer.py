"""Training throughput that a GPU cannot flatter: the clock is read only after a host-device sync.

CUDA kernels run asynchronously: a clock read right after the Python loop has queued a step measures
the queueing, not the work, and a window closed that way ends before its last kernels do. `StepTimer`
synchronizes the device before every clock read that closes an interval, and is paused around
evaluations and checkpoints, so `perf/tokens_per_s` counts training steps only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait until every kernel queued on `device` has finished, so that wall-clock time covers it (no-op
    on the CPU). The one device sync of the project's timings: train.py's and the benchmarks'."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Seconds and steps of training since the last `read`, excluding paused intervals.

    `sync` waits for the device and `clock` gives seconds (injectable for tests).
    """

    def __init__(self, sync: Callable[[], None], clock: Callable[[], float] = time.perf_counter) -> None:
        self.sync, self.clock = sync, clock
        self.steps, self.seconds = 0, 0.0
        self.running_since: float | None = clock()

    def step(self) -> None:
        self.steps += 1

    def pause(self) -> None:
        """Stop counting time (after the queued work has finished, so it is counted)."""
        if self.running_since is not None:
            self.sync()
            self.seconds += self.clock() - self.running_since
            self.running_since = None

    def resume(self) -> None:
        if self.running_since is None:
            self.running_since = self.clock()

    def read(self, tokens_per_step: int) -> float:
        """Tokens per second over the steps since the last read; starts the next window."""
        self.pause()
        rate = tokens_per_step * self.steps / self.seconds if self.seconds > 0 else float("nan")
        self.steps, self.seconds = 0, 0.0
        self.resume()
        return rate
