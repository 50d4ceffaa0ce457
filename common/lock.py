"""One process per run directory: an exclusive lock that names its holder.

The lock is `filelock.FileLock`, i.e. `flock(2)` on Unix: the kernel releases it when the holding
process dies, however it dies (SIGKILL, OOM, node reboot on a local disk), so a lock left by a
dead process is simply free: nothing to detect, nothing to break. The holder writes its pid and
host into the lock file once it holds it; a refused process reads them back for its error line.

On a shared filesystem the lock is as good as the filesystem's `flock`: NFSv4 and Lustre mounted
with `-o flock` honour it across nodes; where `flock` is missing, filelock falls back to its soft
lock (a marker file), whose holder line may then read "an unknown process".
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from common.errors import UserError

# A starting process waits this long for the lock, so that another process's brief probe
# (`holder`) never makes it refuse; a lock held by a running process is still refused "at once".
START_WAIT_S = 1.0


class LockHeld(UserError):
    """Another live process holds the lock."""


def _write_holder(fd: int) -> None:
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, info, 0)


def _describe(path: Path) -> str:
    """'pid X on host Y' as the holder wrote it (or 'an unknown process' if it has not yet)."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


def _lock(path: Path, timeout: float) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    # not a singleton: each call is its own acquisition, so a second one in this process is refused too
    return FileLock(path, timeout=timeout, is_singleton=False, on_acquired=_write_holder)


@contextmanager
def hold(path: Path, what: str) -> Iterator[None]:
    """Hold the lock at `path` for the block; raise LockHeld naming the holder if another has it.

    `what` names the protected thing in the error (e.g. the run directory).
    """
    lock = _lock(Path(path), START_WAIT_S)
    try:
        lock.acquire()
    except Timeout:
        raise LockHeld(f"{what} is in use by {_describe(Path(path))} (lock {path}); wait for it to end or "
                       "stop it, then rerun") from None
    try:
        yield
    finally:
        lock.release()


def holder(path: Path) -> str | None:
    """'pid X on host Y' if a live process holds the lock at `path`, else None (probes without waiting)."""
    path = Path(path)
    if not path.exists():
        return None
    lock = _lock(path, 0)
    try:
        lock.acquire()
    except Timeout:
        return _describe(path)
    lock.release()
    return None
