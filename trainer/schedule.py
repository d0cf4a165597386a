"""The reference learning-rate schedule, per step.

With ``t = (step + 1) / total`` the fraction of training done once this step is
taken (the reference evaluates ``epoch + (i + 1) / len(loader)``), the rate is the
piecewise-linear interpolation of

    t:   0        warmup    decay_end            1
    lr:  0        lr_max    lr_max * lr_floor    0

i.e. warm-up over the first 40 % of steps, down to lr_max / 20 at 80 %, then to 0.
(The reference code places the corners at ``epochs * 2 // 5`` and ``epochs * 4 // 5``
epochs, integer division; that equals 40 % / 80 % when epochs is a multiple of 5.)
"""

from __future__ import annotations

import itertools

__all__ = ["lr_at"]


def lr_at(
    step: int,
    total: int,
    lr_max: float,
    warmup: float = 0.4,
    decay_end: float = 0.8,
    lr_floor: float = 0.05,
) -> float:
    """Learning rate of global step ``step`` (0-based) out of ``total`` steps."""
    t = (step + 1) / total
    points = [(0.0, 0.0), (warmup, lr_max), (decay_end, lr_max * lr_floor), (1.0, 0.0)]
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if t <= t1:
            return v1 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return 0.0
