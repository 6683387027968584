"""The worker's images/s and busy fraction, on a clock the test controls."""

from __future__ import annotations

import pytest

from inference.loop.beats import Throughput


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_busy_fraction_is_sampling_time_over_wall_time():
    clock = Clock()
    meter = Throughput(window_s=60, clock=clock)
    clock.now = 10
    meter.record(sampling_s=4.0, images=2)
    clock.now = 20
    meter.record(sampling_s=5.0, images=4)
    assert meter.busy_fraction() == pytest.approx(9 / 20)
    assert meter.images_per_s() == pytest.approx(6 / 20)


def test_old_jobs_leave_the_window():
    clock = Clock()
    meter = Throughput(window_s=60, clock=clock)
    clock.now = 5
    meter.record(sampling_s=5.0, images=1)
    clock.now = 100
    meter.record(sampling_s=30.0, images=3)
    assert meter.busy_fraction() == pytest.approx(30 / 60)
    assert meter.images_per_s() == pytest.approx(3 / 60)


def test_an_idle_worker_reports_zero():
    clock = Clock()
    meter = Throughput(clock=clock)
    clock.now = 30
    assert meter.busy_fraction() == 0 and meter.images_per_s() == 0
