"""Bundles for the store tests: ``bundle(i)`` gives distinct valid bundles, and
``VALIDATOR`` is what the test stores validate with.

Until ``pemn.bundle`` lands these are stand-ins: a magic line plus JSON, checked by
``fake_validator`` (which, like the bundle reader, raises a ``ValueError`` with
``code`` and ``field``). Switching to real bundles changes only this file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["MAGIC", "VALIDATOR", "FakeBundleError", "bundle", "corrupt", "fake_validator"]

MAGIC = b"PEMN-TEST-BUNDLE\n"


class FakeBundleError(ValueError):
    def __init__(self, code: str, field: str, message: str) -> None:
        self.code = code
        self.field = field
        super().__init__(message)


def fake_validator(data: bytes) -> Mapping[str, Any]:
    if not data.startswith(MAGIC):
        raise FakeBundleError("bundle.magic", "magic", "not a test bundle (bad magic)")
    try:
        doc = json.loads(data[len(MAGIC) :])
    except ValueError:
        raise FakeBundleError("bundle.json", "manifest", "manifest is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("seed"), int):
        raise FakeBundleError("bundle.field", "seed", "seed missing")
    return {"seed": doc["seed"], "arch": "test", "file_size": len(data)}


VALIDATOR: Any = fake_validator


def bundle(i: int, size: int | None = None) -> bytes:
    """A valid bundle, different for each ``i``; ``size`` pads it to about that many bytes."""
    doc: dict[str, Any] = {"seed": i}
    raw = MAGIC + json.dumps(doc).encode()
    if size is not None and size > len(raw):
        doc["pad"] = "x" * (size - len(raw) - 10)
        raw = MAGIC + json.dumps(doc).encode()
    return raw


def corrupt(data: bytes) -> bytes:
    """The same bundle with its magic damaged: invalid."""
    return b"X" + data[1:]


def summary_seed(summary: Mapping[str, Any]) -> int:
    return int(summary["seed"])
