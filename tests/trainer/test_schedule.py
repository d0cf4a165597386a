"""The reference learning-rate schedule: warm-up to 40 %, lr_max/20 at 80 %, 0 at the end."""

import itertools

import pytest

from trainer.schedule import lr_at


def test_corners_of_the_reference_schedule():
    total = 1000
    assert lr_at(399, total, 0.01) == pytest.approx(0.01)  # t = 0.4
    assert lr_at(799, total, 0.01) == pytest.approx(0.01 / 20)  # t = 0.8
    assert lr_at(total - 1, total, 0.01) == 0.0  # the last step
    assert lr_at(0, total, 0.01) == pytest.approx(0.01 * 0.001 / 0.4)
    assert lr_at(199, total, 0.01) == pytest.approx(0.005)  # halfway up
    assert lr_at(599, total, 0.01) == pytest.approx((0.01 + 0.0005) / 2)  # halfway down


def test_shape_is_up_then_down():
    lrs = [lr_at(s, 500, 1.0) for s in range(500)]
    peak = lrs.index(max(lrs))
    assert peak == 199
    assert all(a < b for a, b in itertools.pairwise(lrs[: peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[peak:]))


def test_configurable_corners():
    assert lr_at(9, 100, 2.0, warmup=0.1, decay_end=0.5, lr_floor=0.5) == pytest.approx(2.0)
    assert lr_at(49, 100, 2.0, warmup=0.1, decay_end=0.5, lr_floor=0.5) == pytest.approx(1.0)
    assert lr_at(0, 10, 1.0, warmup=0.0, decay_end=1.0, lr_floor=1.0) == pytest.approx(1.0)
