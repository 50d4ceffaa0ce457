"""optim.schedules: lr multipliers at the key steps of each schedule."""

import math

import pytest

from optim.schedules import lr_multiplier


def test_warmup_is_linear_and_starts_above_zero():
    for schedule in ("cosine", "wsd", "constant"):
        values = [lr_multiplier(s, 100, schedule, warmup_steps=10) for s in range(10)]
        assert values == pytest.approx([(s + 1) / 10 for s in range(10)])


def test_cosine_key_steps():
    # warmup 10, then cosine over steps 10..99 from 1 to 0.1
    assert lr_multiplier(10, 100, "cosine", 10, 0.1) == pytest.approx(1.0)
    mid = 10 + (99 - 10) / 2
    assert lr_multiplier(int(mid), 100, "cosine", 10, 0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 89))
    )
    assert lr_multiplier(99, 100, "cosine", 10, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(500, 100, "cosine", 10, 0.1) == pytest.approx(0.1)
    values = [lr_multiplier(s, 100, "cosine", 10, 0.0) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_wsd_key_steps():
    # 100 steps, decay over the last 20: stable until step 79, linear to 0.1 at step 99
    kw = dict(warmup_steps=5, min_lr_ratio=0.1, decay_fraction=0.2)
    assert lr_multiplier(5, 100, "wsd", **kw) == 1.0
    assert lr_multiplier(79, 100, "wsd", **kw) == 1.0
    assert lr_multiplier(80, 100, "wsd", **kw) == 1.0
    assert lr_multiplier(80 + 19 // 2, 100, "wsd", **kw) == pytest.approx(1 - 0.9 * 9 / 19)
    assert lr_multiplier(99, 100, "wsd", **kw) == pytest.approx(0.1)


def test_constant_and_no_warmup():
    assert lr_multiplier(0, 10, "constant") == 1.0
    assert lr_multiplier(9, 10, "constant", warmup_steps=2) == 1.0
    assert lr_multiplier(0, 10, "cosine", warmup_steps=0, min_lr_ratio=0.0) == 1.0
    assert lr_multiplier(0, 1, "cosine", min_lr_ratio=0.5) == 1.0  # a 1-step run still trains


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(schedule="linear"), "unknown lr schedule 'linear'; choose one of cosine, wsd, constant"),
        (dict(total_steps=0), "total_steps must be >= 1"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(min_lr_ratio=1.5), "min_lr_ratio"),
        (dict(decay_fraction=2.0), "decay_fraction"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(step=0, total_steps=10, schedule="cosine") | kwargs
    with pytest.raises(ValueError, match=match):
        lr_multiplier(**args)
