"""StepTimer: the clock is read after the device sync, and paused intervals (evals, checkpoints) are not
counted. A fake clock stands for the GPU: its sync advances the clock as queued kernels would."""

from __future__ import annotations

import math

import pytest

from training.step_timer import StepTimer


class FakeDevice:
    """A clock, and a queue of seconds of work that a sync waits for."""

    def __init__(self) -> None:
        self.now, self.queued = 0.0, 0.0

    def clock(self) -> float:
        return self.now

    def sync(self) -> None:
        self.now += self.queued
        self.queued = 0.0


def test_the_window_ends_when_the_device_has_finished_its_work():
    device = FakeDevice()
    timer = StepTimer(device.sync, device.clock)
    for _ in range(4):  # the loop queues 4 steps in 1 s of Python; the device needs 3 s more
        device.now += 0.25
        device.queued += 0.75
        timer.step()
    assert timer.read(tokens_per_step=100) == pytest.approx(400 / 4.0)  # not 400 / 1.0


def test_paused_time_is_not_counted_and_each_read_starts_a_new_window():
    device = FakeDevice()
    timer = StepTimer(device.sync, device.clock)
    device.now += 1.0
    timer.step()
    timer.pause()
    device.now += 10.0  # an evaluation
    timer.resume()
    device.now += 1.0
    timer.step()
    assert timer.read(tokens_per_step=50) == pytest.approx(100 / 2.0)
    device.now += 0.5
    timer.step()
    assert timer.read(tokens_per_step=50) == pytest.approx(50 / 0.5)
    assert math.isnan(timer.read(tokens_per_step=50))  # no time has passed: no rate, not a division by zero
