"""Rules for bundle names and content ids, shared by every backend.

A bundle name is 1 to 128 characters from ``a-z 0-9 . _ -``, starting with a letter
or digit (regex ``^[a-z0-9][a-z0-9._-]{0,127}$``). Lower case only, so that two
names never collide on a case-insensitive file system. The alphabet has no ``/``,
``\\``, ``:``, ``*``, ``?``, ``{``, space or control character, so a name is safe
as-is as a file name, a Redis key part and an S3 key part: no path traversal (a
leading ``.`` is refused, so ``.`` and ``..`` are impossible) and no key injection
(``x:blob:...`` or ``a/b`` are refused, not escaped).

A content id is ``sha256:`` followed by the 64 lower-case hex digits of the SHA-256
of the bundle bytes.
"""

from __future__ import annotations

import hashlib
import re

from pemn.store.errors import InvalidName

__all__ = [
    "CONTENT_ID_RE",
    "MAX_NAME_LENGTH",
    "NAME_RE",
    "content_hex",
    "content_id",
    "validate_content_id",
    "validate_name",
]

MAX_NAME_LENGTH = 128
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
CONTENT_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")
_RULE = "1-128 characters from a-z 0-9 . _ -, starting with a letter or digit"


def validate_name(name: object, *, store: str | None = None) -> str:
    """Return ``name`` if it is a valid bundle name, else raise ``InvalidName``."""
    if not isinstance(name, str):
        raise InvalidName(
            f"a bundle name must be a string, not {type(name).__name__}", store=store, key=None
        )
    if NAME_RE.fullmatch(name) is None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        if not name:
            why = "it is empty"
        elif len(name) > MAX_NAME_LENGTH:
            why = f"it has {len(name)} characters"
        else:
            bad = sorted({c for c in name if not re.fullmatch(r"[a-z0-9._-]", c)})
            why = (
                "it contains " + ", ".join(repr(c) for c in bad)
                if bad
                else f"it starts with {name[0]!r}"
            )
        raise InvalidName(f"invalid bundle name ({why}); allowed: {_RULE}", store=store, key=shown)
    return name


def validate_content_id(cid: object, *, store: str | None = None) -> str:
    """Return ``cid`` if it is ``sha256:<64 lower-case hex>``, else raise ``InvalidName``."""
    if not isinstance(cid, str) or CONTENT_ID_RE.fullmatch(cid) is None:
        shown = cid[:80] if isinstance(cid, str) else repr(cid)
        raise InvalidName(
            "invalid content id; expected 'sha256:' and 64 lower-case hex digits",
            store=store,
            key=shown,
        )
    return cid


def content_id(data: bytes | bytearray | memoryview) -> str:
    """The content id of ``data``: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def content_hex(cid: str) -> str:
    """The 64 hex digits of a (valid) content id."""
    return cid.removeprefix("sha256:")
