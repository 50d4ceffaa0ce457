"""data.shards: header, dtype choice, round trip and damaged files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from data.shards import HEADER, dtype_for_vocab, read_shard, write_shard


def test_dtype_follows_the_vocabulary():
    assert dtype_for_vocab(50257) == np.uint16 and dtype_for_vocab(65536) == np.uint16
    assert dtype_for_vocab(65537) == np.uint32


@pytest.mark.parametrize("dtype,high", [(np.uint16, 2**16), (np.uint32, 2**32)])
def test_round_trip(tmp_path, dtype, high):
    tokens = np.random.default_rng(0).integers(0, high, size=1001, dtype=np.int64)
    path = tmp_path / "s.bin"
    sha = write_shard(path, tokens, dtype)
    back = read_shard(path)
    assert back.dtype == dtype and isinstance(back, np.memmap)
    np.testing.assert_array_equal(back, tokens)
    raw = path.read_bytes()
    assert sha == hashlib.sha256(raw).hexdigest()
    assert len(raw) == HEADER.size + 1001 * np.dtype(dtype).itemsize
    assert raw[:8] == b"MUONTOK\0" and not list(tmp_path.glob(".*tmp*"))  # no temporary file left
    assert read_shard(_written(tmp_path / "e.bin", [], dtype)).size == 0


def _written(path, tokens, dtype):
    write_shard(path, np.asarray(tokens), dtype)
    return path


def test_damaged_shards_are_clear_errors(tmp_path):
    path = _written(tmp_path / "s.bin", range(100), np.uint16)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_shard(path)
    (tmp_path / "x.bin").write_bytes(b"not a shard at all, really not one")
    with pytest.raises(ValueError, match="bad magic"):
        read_shard(tmp_path / "x.bin")
