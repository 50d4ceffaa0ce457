"""File checksums: recorded when files are written, verified before they are trusted.

Checkpoints record each file's size and sha256 in their completion marker; prepared datasets
record each shard's sha256 in their manifest. A mismatch is described in words (which file, what
differs) for a one-line error or warning.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

_CHUNK = 1 << 22  # 4 MiB reads: hashlib releases the GIL on large buffers


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_files(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes", "sha256"}} for every file under `directory`."""
    directory = Path(directory)
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(directory.rglob("*")) if p.is_file()}


def file_problem(path: Path, expected: dict[str, Any], *, hash_bytes: bool = True) -> str | None:
    """What is wrong with `path` against its record ({"bytes"?, "sha256"?}), or None if it matches.

    hash_bytes=False checks presence and size only (a stat, no read).
    """
    path = Path(path)
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if "bytes" in expected and size != expected["bytes"]:
        return f"{path.name} has {size:,} bytes, {expected['bytes']:,} were written"
    if hash_bytes and "sha256" in expected and sha256_file(path) != expected["sha256"]:
        return f"{path.name} has changed since it was written (sha256 differs)"
    return None


def files_problem(directory: Path, records: dict[str, dict[str, Any]], *,
                  hash_bytes: bool = True) -> str | None:
    """The first problem of the files recorded by `record_files`, or None if all match."""
    for name, expected in records.items():
        if (problem := file_problem(Path(directory) / name, expected, hash_bytes=hash_bytes)) is not None:
            return problem.replace(Path(name).name, name, 1)
    return None
