"""Bundles for the store tests.

``bundle(i)`` is a real, valid bundle (``pemn.testing.make_bundle`` with
``mask_seed=i``): different ``i``, different bytes, same backbone. The stores under
test validate with their default, the bundle reader (``VALIDATOR = None``).

``fake_bundle`` / ``FAKE_VALIDATOR`` are a stand-in format (a magic line plus
JSON) for the one test that needs many multi-megabyte bundles quickly (a writer
killed mid-put); real bundles of that size take seconds each to generate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any

from pemn.testing import make_bundle

__all__ = [
    "FAKE_VALIDATOR",
    "VALIDATOR",
    "bundle",
    "corrupt",
    "fake_bundle",
    "summary_seed",
]

VALIDATOR: Any = None  # None: the store's default validator, pemn.bundle.inspect_bundle
_MNIST = {"in_channels": 1, "image_size": 28}


@cache
def bundle(i: int, size: int | None = None) -> bytes:
    """A valid bundle, different for each ``i``. With ``size``, an MLP whose hidden
    layer makes the bundle at least about that many bytes (masks are 1 bit/weight)."""
    if size is None:
        return make_bundle(mask_seed=i)
    hidden = max(1, size * 8 // (28 * 28 + 10))
    return make_bundle(config={**_MNIST, "hidden": [hidden]}, mask_seed=i)


def corrupt(data: bytes) -> bytes:
    """The bundle with one mask bit flipped: the reader refuses it (popcount)."""
    out = bytearray(data)
    out[-1] ^= 0x10
    return bytes(out)


def summary_seed(summary: Mapping[str, Any]) -> int:
    """The ``i`` a stored bundle was made with, from its summary."""
    return int(summary["provenance"]["mask_seed"])


_MAGIC = b"PEMN-TEST-BUNDLE\n"


class _FakeBundleError(ValueError):
    def __init__(self, code: str, field: str, message: str) -> None:
        self.code = code
        self.field = field
        super().__init__(message)


def _fake_validator(data: bytes) -> Mapping[str, Any]:
    if not data.startswith(_MAGIC):
        raise _FakeBundleError("bundle.magic", "magic", "not a test bundle (bad magic)")
    try:
        doc = json.loads(data[len(_MAGIC) :])
    except ValueError:
        raise _FakeBundleError("bundle.json", "manifest", "manifest is not JSON") from None
    return {"seed": doc["seed"], "file_size": len(data)}


FAKE_VALIDATOR = _fake_validator


def fake_bundle(i: int, size: int) -> bytes:
    """A stand-in bundle of about ``size`` bytes (valid for ``FAKE_VALIDATOR`` only)."""
    head = _MAGIC + json.dumps({"seed": i, "pad": ""}).encode()
    return _MAGIC + json.dumps({"seed": i, "pad": "x" * max(0, size - len(head))}).encode()
