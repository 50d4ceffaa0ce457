"""Graceful stop: SIGTERM, SIGINT or SIGUSR1 end the run after the current step, with a checkpoint.

SLURM sends SIGTERM (or the `--signal` of the job) before its time limit and on preemption; a
terminal sends SIGINT on Ctrl-C. The handler only sets a flag: the loop finishes its optimizer step
on every rank, the ranks agree (any rank's flag stops all of them), a checkpoint is written, and
the process exits with STOPPED_EXIT_CODE. Rerunning the same command resumes exactly. A second
SIGINT aborts at once (KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import types

import torch
from accelerate import Accelerator

from common.cli import ExitCode, StoppedBySignal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
STOPPED_EXIT_CODE = ExitCode.STOPPED  # resumable; the ablation runner reruns it


class Stopped(StoppedBySignal):
    """The run stopped on a signal after writing a checkpoint at `step`."""

    def __init__(self, step: int, checkpoint: str) -> None:
        super().__init__(f"stopped at step {step}; checkpoint {checkpoint}; rerun the same command to resume")
        self.step, self.checkpoint = step, checkpoint


class StopSignals:
    """Context manager: while active, the stop signals set `requested` instead of killing the process."""

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal received
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: types.FrameType | None) -> None:
        if signum == signal.SIGINT and self.requested is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        self.requested = signum

    def agreed(self, accelerator: Accelerator) -> bool:
        """Whether any rank was asked to stop (a collective when there are several processes)."""
        if accelerator.num_processes == 1:
            return self.requested is not None
        flag = torch.tensor([self.requested is not None], dtype=torch.int32, device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item())
