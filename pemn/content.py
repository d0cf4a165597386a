"""Content addressing: the id of a byte string is ``sha256:`` and the 64 lower-case
hex digits of its SHA-256 (a bundle's ``content_id``, the store's blob keys).

Standard library only, so that any part of the core (the store too) can use it
without importing torch.
"""

from __future__ import annotations

import hashlib

__all__ = ["content_id"]


def content_id(data: bytes | bytearray | memoryview) -> str:
    """``"sha256:<hex>"`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
