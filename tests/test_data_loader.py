"""data.loader on hand-made shards whose token values encode their position in the split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.loader import TokenLoader, check_vocab, val_batches
from data.manifest import FORMAT, write_meta
from data.shards import write_shard

SEQ = 16
TRAIN_SIZES = (1000, 777, 50)  # windows per shard: (n - 1) // SEQ = 62, 48, 3
N_WINDOWS = 113
EOS = 0


def make_dataset(root, train_sizes=TRAIN_SIZES, val_size=600, eos_every=None):
    """Token value = 1 + position in the split (so 0 is free for EOS); with ``eos_every``, every
    ``eos_every``-th token is EOS instead."""
    root.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "source": "test", "tokenizer": "test", "vocab_size": 1 << 20, "eos_id": EOS}
    for split, sizes in (("train", train_sizes), ("val", (val_size,))):
        offset, entries = 0, []
        for i, n in enumerate(sizes):
            tokens = np.arange(offset + 1, offset + n + 1, dtype=np.uint32)
            if eos_every:
                tokens[eos_every - 1 :: eos_every] = EOS
            write_shard(root / f"{split}_{i:06d}.bin", tokens, np.uint32)
            entries.append({"file": f"{split}_{i:06d}.bin", "tokens": n, "sha256": ""})
            offset += n
        meta["shards" if split == "train" else "val_shards"] = entries
    write_meta(root, meta)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("loader"))


def rows_of_epoch(data_dir, seed=0):
    loader = TokenLoader(data_dir, "train", SEQ, batch_size=1, seed=seed)
    return torch.cat([loader.batch(s) for s in range(N_WINDOWS)])


def test_an_epoch_is_every_window_once_never_crossing_a_shard(data_dir):
    rows = rows_of_epoch(data_dir)
    starts = rows[:, 0] - 1  # token value = 1 + position
    torch.testing.assert_close(rows, starts[:, None] + 1 + torch.arange(SEQ + 1))  # contiguous windows
    shard_of_first = np.searchsorted(np.cumsum(TRAIN_SIZES), starts.numpy(), side="right")
    shard_of_last = np.searchsorted(np.cumsum(TRAIN_SIZES), (starts + SEQ).numpy(), side="right")
    np.testing.assert_array_equal(shard_of_first, shard_of_last)
    offsets = (0, 1000, 1777)
    expected = [o + s for o, n in zip(offsets, TRAIN_SIZES, strict=True) for s in range(0, n - SEQ, SEQ)]
    assert sorted(starts.tolist()) == expected and len(expected) == N_WINDOWS
    assert starts.tolist() != expected  # shuffled


def test_order_is_seeded_and_reshuffled_every_epoch(data_dir):
    torch.testing.assert_close(rows_of_epoch(data_dir, seed=1), rows_of_epoch(data_dir, seed=1))
    assert not torch.equal(rows_of_epoch(data_dir, seed=1), rows_of_epoch(data_dir, seed=2))
    loader = TokenLoader(data_dir, "train", SEQ, batch_size=1, seed=1)
    second_epoch = torch.cat([loader.batch(N_WINDOWS + s) for s in range(N_WINDOWS)])
    assert not torch.equal(second_epoch, rows_of_epoch(data_dir, seed=1))
    assert sorted(second_epoch[:, 0].tolist()) == sorted(rows_of_epoch(data_dir, seed=1)[:, 0].tolist())


def test_batch_is_a_pure_function_of_step(data_dir):
    used = TokenLoader(data_dir, "train", SEQ, batch_size=8, seed=3)
    for step in range(40):  # walk past two epoch boundaries first
        used.batch(step)
    fresh = TokenLoader(data_dir, "train", SEQ, batch_size=8, seed=3)
    for step in (0, 13, 14, 29, 7):  # step 14 straddles the first epoch boundary
        torch.testing.assert_close(used.batch(step), fresh.batch(step))
        assert fresh.batch(step).shape == (8, SEQ + 1) and fresh.batch(step).dtype == torch.int64


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_split_the_same_global_batch(data_dir, world_size):
    whole = TokenLoader(data_dir, "train", SEQ, batch_size=8, seed=5)
    ranks = [TokenLoader(data_dir, "train", SEQ, 8, 5, r, world_size) for r in range(world_size)]
    for step in (0, 1, 14, 30):
        torch.testing.assert_close(torch.cat([r.batch(step) for r in ranks]), whole.batch(step))


def test_aligned_windows_start_after_eos(tmp_path):
    root = make_dataset(tmp_path / "aligned", train_sizes=(300, 200), eos_every=25)
    loader = TokenLoader(root, "train", SEQ, batch_size=4, seed=0, aligned=True)
    # documents start at 0 and after each EOS (position 25k - 1) while a full window fits in the shard
    assert loader.windows_per_epoch == len(range(0, 300 - SEQ, 25)) + len(range(25, 200 - SEQ, 25))
    for step in range(loader.windows_per_epoch // 4):
        first = loader.batch(step)[:, 0]
        assert ((first - 1) % 25 == 0).all()  # value 1 + position, position a multiple of 25


def test_bad_arguments_are_clear_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match="multiple of world_size"):
        TokenLoader(data_dir, "train", SEQ, batch_size=6, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        TokenLoader(data_dir, "train", SEQ, batch_size=8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="smaller seq_len"):
        TokenLoader(data_dir, "train", 5000, batch_size=8)
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        TokenLoader(tmp_path, "train", SEQ, batch_size=8)
    with pytest.raises(ValueError, match="split"):
        TokenLoader(data_dir, "test", SEQ, batch_size=8)
    empty_val = make_dataset(tmp_path / "no_val", val_size=0)
    with pytest.raises(ValueError, match="no val tokens"):
        list(val_batches(empty_val, SEQ, eval_tokens=100, batch_size=4))


def test_val_batches_are_the_first_eval_tokens_for_any_world_size(data_dir):
    one = list(val_batches(data_dir, SEQ, eval_tokens=200, batch_size=4))
    assert len(one) == 3  # 200 // 16 = 12 windows = 3 batches of 4
    rows = torch.cat(one)
    torch.testing.assert_close(rows, torch.arange(12)[:, None] * SEQ + 1 + torch.arange(SEQ + 1))
    for world_size, micro in ((2, None), (4, None), (2, 1)):
        per_rank = [list(val_batches(data_dir, SEQ, 200, 4, r, world_size, micro)) for r in range(world_size)]
        assert all(b.shape[0] <= (micro or 4 // world_size) for p in per_rank for b in p)
        chunks = [torch.cat(p).reshape(3, 4 // world_size, SEQ + 1) for p in per_rank]
        torch.testing.assert_close(torch.cat(chunks, dim=1).reshape(12, SEQ + 1), rows)


def test_val_batches_limits(data_dir):
    assert sum(len(b) for b in val_batches(data_dir, SEQ, eval_tokens=1, batch_size=4)) == 4  # one batch
    with pytest.warns(UserWarning, match="exceeds the validation split"):
        n = sum(len(b) for b in val_batches(data_dir, SEQ, eval_tokens=10**6, batch_size=4))
    assert n == 36  # (600 - 1) // 16 = 37 windows, rounded down to whole batches
    with pytest.raises(ValueError, match="fewer than one eval batch"):
        list(val_batches(data_dir, SEQ, eval_tokens=500, batch_size=64))


def test_check_vocab():
    meta = {"vocab_size": 4096, "tokenizer": "bpe", "source": "builtin:shakespeare"}
    check_vocab(meta, 4096)
    check_vocab(meta, 4160)  # padded model vocabularies are fine
    with pytest.raises(ValueError, match="model.vocab_size >= 4096"):
        check_vocab(meta, 4095)
