"""Token shard files: a 32-byte header, then the tokens, little-endian.

Header (``<8sIIQ8x``): magic ``b"MUONTOK\\0"``, format version (1), dtype code (2 = uint16,
4 = uint32: the bytes per token), token count, 8 bytes of padding. Tokens are uint16 when the
vocabulary fits (<= 65536 ids), else uint32. Shards are written to a temporary file and renamed,
so a shard on disk is always complete; they are read back as read-only ``np.memmap``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"MUONTOK\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return DTYPES[2] if vocab_size <= 2**16 else DTYPES[4]


def write_shard(path: Path, tokens: np.ndarray, dtype: np.dtype) -> str:
    """Write ``tokens`` atomically as a shard of ``dtype``; returns the file's sha256."""
    dtype = np.dtype(dtype).newbyteorder("<")
    data = np.ascontiguousarray(tokens, dtype=dtype)
    header = HEADER.pack(MAGIC, VERSION, dtype.itemsize, data.size)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(data.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    digest = hashlib.sha256(header)
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


def read_shard(path: Path) -> np.ndarray:
    """The tokens of a shard as a read-only memmap; a clear error for a foreign or truncated file."""
    with open(path, "rb") as f:
        raw = f.read(HEADER.size)
    if len(raw) < HEADER.size or raw[:8] != MAGIC:
        raise ValueError(f"{path} is not a muonlab token shard (bad magic); re-run python -m data.prepare")
    _, version, code, count = HEADER.unpack(raw)
    if version != VERSION or code not in DTYPES:
        raise ValueError(f"{path}: shard format version {version}, dtype code {code} not supported")
    expected = HEADER.size + count * code
    if os.path.getsize(path) != expected:
        raise ValueError(f"{path} is truncated ({os.path.getsize(path)} bytes, header says {expected})")
    if count == 0:
        return np.zeros(0, dtype=DTYPES[code])  # np.memmap cannot map zero bytes
    return np.memmap(path, dtype=DTYPES[code], mode="r", offset=HEADER.size, shape=(count,))
