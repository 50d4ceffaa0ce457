"""The run directory's lock for a training job of one or more processes.

The main process holds it (common/lock.py) for the whole job; the other processes learn whether it
was refused through one broadcast, so every process of a refused job stops with the same line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from common.lock import LockHeld, hold
from common.rundir import RunDir


@contextmanager
def run_lock(run: RunDir, accelerator: Accelerator) -> Iterator[None]:
    """Hold `run`'s lock for the block, or raise LockHeld (naming the holder) on every process."""
    with ExitStack() as held:
        refused: list[str | None] = [None]
        if accelerator.is_main_process:
            try:
                held.enter_context(hold(run.lock, str(run.path)))
            except LockHeld as err:
                refused[0] = str(err)
        if accelerator.num_processes > 1:
            broadcast_object_list(refused)
        if refused[0] is not None:
            raise LockHeld(refused[0])
        yield
