"""Tail buckets and per-bucket validation loss on hand-built examples."""

import numpy as np
import pytest
import torch

from metrics.tail import TailAccumulator, make_buckets


def test_equal_share_buckets_on_uniform_counts():
    counts = np.array([5, 5, 5, 5, 5, 5, 5, 5], dtype=np.int64)
    # equal counts: ties broken by token id, two types per bucket
    assert make_buckets(counts, k=4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_dominant_type_fills_bucket_alone_and_rest_is_shared():
    # token 3 holds 60% of occurrences (more than a bucket's 25%): alone in bucket 0
    counts = np.array([10, 10, 10, 60, 5, 5, 0], dtype=np.int64)
    buckets = make_buckets(counts, k=4)
    assert buckets[3] == 0
    assert (buckets == 0).sum() == 1
    # the remaining 40 occurrences go to 3 buckets aiming at 13.3 each: {0}, {1}, {2, 4, 5}
    assert buckets.tolist() == [1, 2, 3, 0, 3, 3, 3]


def test_unseen_types_go_to_rarest_bucket():
    counts = np.array([0, 100, 50, 0, 25, 25], dtype=np.int64)
    buckets = make_buckets(counts, k=3)
    assert buckets[0] == 2 and buckets[3] == 2
    assert buckets[1] == 0


def test_buckets_are_ordered_by_frequency_on_zipf():
    rng = np.random.default_rng(0)
    counts = (1e6 / np.arange(1, 2001) ** 1.1).astype(np.int64)
    counts = counts[rng.permutation(counts.size)]
    buckets = make_buckets(counts, k=10)
    assert set(buckets.tolist()) == set(range(10))
    # every type in bucket b is at least as frequent as every type in bucket b+1
    for b in range(9):
        assert counts[buckets == b].min() >= counts[buckets == b + 1].max()
    # after bucket 0 (which may be a single dominant type), shares are close to equal
    shares = np.array([counts[buckets == b].sum() for b in range(10)]) / counts.sum()
    rest = shares[1:] / shares[1:].sum()
    assert np.all(np.abs(rest - 1 / 9) < 0.03)


def test_log_buckets():
    counts = np.array([1000, 100, 10, 1, 0, 1000], dtype=np.int64)
    # log10 range 0..3 cut into 3 equal parts: 1000 -> 0, 100 -> 1, 10 -> 2, 1 -> 2 (clipped), 0 -> 2
    assert make_buckets(counts, k=3, mode="log").tolist() == [0, 1, 2, 2, 2, 0]


@pytest.mark.parametrize(
    ("counts", "kwargs", "match"),
    [
        (np.zeros(4, dtype=np.int64), {}, "all zero"),
        (np.array([1, -1]), {}, "non-negative"),
        (np.array([1.5, 2.0]), {}, "integers"),
        (np.ones((2, 2), dtype=np.int64), {}, "1-D"),
        (np.ones(4, dtype=np.int64), {"k": 0}, "positive integer"),
        (np.ones(4, dtype=np.int64), {"mode": "quantile"}, "unknown tail bucket mode"),
    ],
)
def test_bad_counts_raise(counts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_buckets(counts, **kwargs)


def test_accumulator_per_bucket_means_and_missing_bucket():
    bucket_of = np.array([0, 0, 1, 2, 2])
    acc = TailAccumulator(bucket_of, k=4)
    acc.update(torch.tensor([[1.0, 3.0], [2.0, 6.0]]), torch.tensor([[0, 1], [2, 4]]))
    acc.update(torch.tensor([4.0, 10.0]), torch.tensor([3, -100]))  # -100 is ignored
    m = acc.metrics()
    assert m == pytest.approx({
        "eval/tail/loss_b0": 2.0,  # tokens 0, 1
        "eval/tail/loss_b1": 2.0,  # token 2
        "eval/tail/loss_b2": 5.0,  # tokens 4, 3
        "eval/tail/head_loss": 2.0,
    })
    # bucket 3 has no validation tokens: loss_b3, tail_loss and gap are missing, not zero
    assert "eval/tail/loss_b3" not in m and "eval/tail/tail_loss" not in m and "eval/tail/gap" not in m
    assert acc.counts.tolist() == [2.0, 1.0, 2.0, 0.0]


def test_accumulator_gap_and_sum_of_parts():
    acc = TailAccumulator(np.array([0, 1]), k=2)
    acc.update(torch.tensor([1.0, 4.0]), torch.tensor([0, 1]))
    other = TailAccumulator(np.array([0, 1]), k=2)
    other.update(torch.tensor([3.0]), torch.tensor([0]))
    # what an all_reduce(SUM) across two ranks does
    acc.sums += other.sums
    acc.counts += other.counts
    m = acc.metrics()
    assert m["eval/tail/head_loss"] == pytest.approx(2.0)
    assert m["eval/tail/tail_loss"] == pytest.approx(4.0)
    assert m["eval/tail/gap"] == pytest.approx(2.0)
    acc.reset()
    assert acc.metrics() == {}


def test_accumulator_rejects_bad_input():
    acc = TailAccumulator(np.array([0, 1]), k=2)
    with pytest.raises(ValueError, match="same shape"):
        acc.update(torch.ones(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        acc.update(torch.ones(1), torch.tensor([5]))
    with pytest.raises(ValueError, match="bucket ids"):
        TailAccumulator(np.array([0, 3]), k=2)
