"""The format's mask arithmetic: how many weights a mask of a given density keeps,
and how a mask is bit-packed (docs/bundle-format.md, masks).

The writer packs with these, the reader checks popcounts against ``kept_count``,
and training (``pemn.masking``) keeps exactly ``kept_count`` weights per layer, so
every trained mask is one the format accepts. numpy only: no torch here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pemn.errors import InvalidParameterError

__all__ = ["check_density", "kept_count", "pack_mask"]


def check_density(density: float) -> float:
    """``density`` as a float when it is a number in (0, 1), else ``InvalidParameterError``."""
    if isinstance(density, bool) or not isinstance(density, int | float) or not 0 < density < 1:
        raise InvalidParameterError("density", density, "a number in (0, 1)")
    return float(density)


def kept_count(n: int, density: float) -> int:
    """Weights a layer of ``n`` keeps: ``floor(density * n + 0.5)`` in IEEE double,
    clamped to ``[1, n]``. The bundle reader checks every mask's popcount against it."""
    return max(1, min(n, math.floor(density * n + 0.5)))


def pack_mask(mask: Any) -> np.ndarray:
    """Row-major flattened mask (a bool/0-1 torch tensor or array) -> ceil(n/8) bytes,
    bit i in byte i//8 at position i%8 (least significant bit first); unused high
    bits of the last byte are zero."""
    if hasattr(mask, "detach"):  # a torch tensor: to the CPU without importing torch
        mask = mask.detach().cpu()
    bits = np.asarray(mask).reshape(-1)
    return np.packbits(bits.astype(bool), bitorder="little")
