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

from common.errors import UserError
from common.files import atomic_open

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
    body = memoryview(data).cast("B")
    with atomic_open(path) as f:
        f.write(header)
        f.write(body)
    digest = hashlib.sha256(header)
    digest.update(body)
    return digest.hexdigest()


def read_shard(path: Path) -> np.ndarray:
    """The tokens of a shard as a read-only memmap; a clear error for a foreign or truncated file."""
    with open(path, "rb") as f:
        raw = f.read(HEADER.size)
    if len(raw) < HEADER.size or raw[:8] != MAGIC:
        raise UserError(f"{path} is not a muonlab token shard (bad magic); re-run python -m data.prepare")
    _, version, code, count = HEADER.unpack(raw)
    if version != VERSION or code not in DTYPES:
        raise UserError(f"{path}: shard format version {version}, dtype code {code} not supported")
    expected = HEADER.size + count * code
    if os.path.getsize(path) != expected:
        raise UserError(f"{path} is truncated ({os.path.getsize(path)} bytes, header says {expected})")
    if count == 0:
        return np.zeros(0, dtype=DTYPES[code])  # np.memmap cannot map zero bytes
    return np.memmap(path, dtype=DTYPES[code], mode="r", offset=HEADER.size, shape=(count,))
