"""Precision of the ``state`` tensor (docs/bundle-format.md, section 7.1).

Format 2.0 stores the folded norm values in float16, bfloat16 or float32; 1.x
only in float32. This module owns the three encodings: their names (the writer's
``state_dtype`` and the safetensors header's dtype), float32 -> stored bytes with
round-to-nearest-even, and stored bytes -> float32 (exact: every float16 and
bfloat16 value is a float32 value). numpy only, so the reader needs no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

__all__ = [
    "DEFAULT_STATE_DTYPE",
    "HEADER_DTYPES",
    "STATE_DTYPES",
    "decode_state",
    "encode_state",
    "state_value_name",
]

# writer name -> safetensors header dtype
STATE_DTYPES: dict[str, str] = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
HEADER_DTYPES: dict[str, str] = {v: k for k, v in STATE_DTYPES.items()}
# Chosen by measurement (bench/bench_state_dtype.py, docs/benchmarks.md): on 7 trained
# bundles float16 moved the test accuracy by at most 0.01 points (1-2 of 10,000
# predictions), bfloat16 by up to 0.04 (up to 15 predictions), for the same size.
DEFAULT_STATE_DTYPE = "float16"


def encode_state(values: np.ndarray, header_dtype: str) -> tuple[np.ndarray, int | None]:
    """float32 ``values`` -> ``(array to store, index of the first value that is not
    finite after rounding, or None)``. Rounding is IEEE round-to-nearest-even; a
    finite float32 beyond the target's range becomes an infinity (float16: |v| >
    65504, about), which the caller must refuse."""
    x = np.ascontiguousarray(values, dtype="<f4")
    if header_dtype == "F32":
        out: np.ndarray = x
        check = x
    elif header_dtype == "F16":
        with np.errstate(over="ignore"):  # beyond the range: inf, reported below
            out = x.astype("<f2")  # numpy rounds to nearest, ties to even
        check = out
    elif header_dtype == "BF16":
        u = x.view("<u4")
        # keep the high 16 bits, rounding on the low 16: + 0x7FFF + (lowest kept bit)
        out = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> 16).astype("<u2")
        check = decode_state(out, "BF16")
    else:
        raise ValueError(f"unknown state dtype {header_dtype!r}")
    bad = np.flatnonzero(~np.isfinite(check))
    return out, (int(bad[0]) if bad.size else None)


def decode_state(stored: np.ndarray, header_dtype: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Stored state values (``<f4``, ``<f2`` or ``<u2`` bfloat16 bit patterns) ->
    float32, exactly."""
    if header_dtype == "F32":
        return np.asarray(stored, dtype=np.float32)
    if header_dtype == "F16":
        return np.asarray(stored, dtype="<f2").astype(np.float32)
    if header_dtype == "BF16":
        bits = np.asarray(stored, dtype="<u2").astype(np.uint32) << np.uint32(16)
        return bits.view(np.float32)
    raise ValueError(f"unknown state dtype {header_dtype!r}")


class _Entry(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def numel(self) -> int: ...


def state_value_name(trained: Sequence[_Entry], index: int) -> str:
    """``name[i]``: the trained tensor and element that state value ``index`` is."""
    for e in trained:
        if index < e.numel:
            return f"{e.name}[{index}]"
        index -= e.numel
    return f"state[{index}]"
