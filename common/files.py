"""Atomic writes: a reader (another rank, a report, a crash) never sees half a file.

A write that fails (full disk, quota, I/O error) is reported as one WriteError line naming the
file: the environment's fault, not a bug, and nothing written before it is lost.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from common.errors import UserError


class WriteError(UserError):
    """A file could not be written; the message names it and says how to continue."""


def write_error(path: Path, err: BaseException) -> WriteError:
    """The WriteError for `path`, with the cause and the space left on its filesystem."""
    cause = err.strerror if isinstance(err, OSError) and err.strerror else f"{type(err).__name__}: {err}"
    parent = next((p for p in Path(path).parents if p.exists()), Path("."))
    free = shutil.disk_usage(parent).free
    return WriteError(f"cannot write {path} ({cause}; {free / 2**20:,.1f} MiB free there); free space or "
                      "fix the filesystem, then rerun the same command: it resumes from the last complete "
                      "checkpoint")


@contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """Turn an OSError raised by the block into a WriteError naming `path`."""
    try:
        yield
    except OSError as err:
        raise write_error(path, err) from err


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path` for binary writing; it replaces `path` only on success."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def write_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(f)` on a temporary file that then atomically replaces `path` (np.save, torch.save, ...)."""
    with atomic_open(path) as f:
        write(f)


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode())


def write_json(path: Path, obj: object) -> None:
    """Write `obj` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2) + "\n")
