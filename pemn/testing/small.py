"""Small configs of every registered architecture, for fast parametrized tests."""

from __future__ import annotations

from typing import Any

from pemn.archs import list_archs
from pemn.prototype import Strategy

__all__ = ["ARCHS", "SMALL", "STRATEGIES", "strategy_id"]

SMALL: dict[str, dict[str, Any]] = {
    "convmixer": {"width": 16, "depth": 2, "kernel": 3, "patch": 4},
    "vit": {"width": 32, "depth": 2, "heads": 4, "patch": 4},
    "resnet20": {},
    "resnet32": {},
    "resnet56": {},
    "mlp": {"hidden": [32, 16]},
}
ARCHS = list_archs()
STRATEGIES = [
    Strategy("mask"),
    Strategy("one_layer"),
    Strategy("mp"),
    Strategy("rp", ratio=1e-1),
    Strategy("rp", ratio=1e-3),
    Strategy("mp", scale="fan_in"),
    Strategy("rp", ratio=1e-2, scale="fan_in"),
]


def strategy_id(s: Strategy) -> str:
    """A test id: ``rp-0.1-paper``."""
    return "-".join(str(x) for x in (s.name, s.ratio, s.scale) if x is not None)
