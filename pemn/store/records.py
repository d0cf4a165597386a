"""What the stores return, and the *head* record every backend keeps per name.

The head of a name is one small JSON document, written atomically as a whole (the
"name -> version pointer"). Schema ``pemn.store.head/1``::

    {"schema": "pemn.store.head/1",
     "name": "<name>",
     "versions": [{"version": 3, "content_id": "sha256:...", "size": 1234,
                   "created_at": "2025-01-01T12:00:00.000000Z"}, ...],   # ascending
     "summary": {...}}          # the bundle summary of the latest version

Only retained versions are listed; the last entry is the latest. Its summary is
saved at put time, so listing names never reads a blob.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pemn.store.names import CONTENT_ID_RE, NAME_RE

__all__ = [
    "HEAD_SCHEMA",
    "Head",
    "NameInfo",
    "PutResult",
    "StoredBundle",
    "VersionInfo",
    "decode_head",
    "encode_head",
]

HEAD_SCHEMA = "pemn.store.head/1"


@dataclass(frozen=True)
class VersionInfo:
    """One retained version of a name."""

    version: int
    content_id: str
    size: int
    created_at: datetime


@dataclass(frozen=True)
class PutResult:
    """The outcome of ``put``. ``created`` is False when the bytes equal the latest
    version (nothing written, no new version); ``epoch`` is the store epoch after it."""

    name: str
    version: int
    content_id: str
    size: int
    created: bool
    epoch: int


@dataclass(frozen=True)
class StoredBundle:
    """Verified bundle bytes of one version of a name."""

    name: str
    version: int
    content_id: str
    data: bytes = field(repr=False)
    created_at: datetime

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class NameInfo:
    """A name, its latest version and that version's bundle summary."""

    name: str
    version: int
    content_id: str
    size: int
    created_at: datetime
    summary: dict[str, Any]
    versions: int  # how many versions are retained


@dataclass(frozen=True)
class Head:
    """The parsed head record of a name (at least one version)."""

    name: str
    versions: tuple[VersionInfo, ...]
    summary: dict[str, Any]

    @property
    def latest(self) -> VersionInfo:
        return self.versions[-1]

    def find(self, version: int) -> VersionInfo | None:
        for v in self.versions:
            if v.version == version:
                return v
        return None

    def info(self) -> NameInfo:
        last = self.latest
        return NameInfo(
            name=self.name,
            version=last.version,
            content_id=last.content_id,
            size=last.size,
            created_at=last.created_at,
            summary=self.summary,
            versions=len(self.versions),
        )


def _time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_head(head: Head) -> bytes:
    """Canonical JSON bytes of a head record."""
    doc = {
        "schema": HEAD_SCHEMA,
        "name": head.name,
        "versions": [
            {
                "version": v.version,
                "content_id": v.content_id,
                "size": v.size,
                "created_at": _time(v.created_at),
            }
            for v in head.versions
        ],
        "summary": head.summary,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def decode_head(raw: bytes, name: str) -> Head:
    """Parse and check a head record stored under ``name``.

    Raises ``ValueError`` naming the problem; the caller turns it into ``Corrupt``."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"head record is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != HEAD_SCHEMA:
        raise ValueError(f"head record does not have schema {HEAD_SCHEMA!r}")
    if doc.get("name") != name or NAME_RE.fullmatch(name) is None:
        raise ValueError(f"head record names {doc.get('name')!r}, not {name!r}")
    versions = doc.get("versions")
    summary = doc.get("summary")
    if not isinstance(versions, list) or not versions or not isinstance(summary, dict):
        raise ValueError("head record has no versions or no summary")
    out: list[VersionInfo] = []
    for v in versions:
        try:
            info = VersionInfo(
                version=v["version"],
                content_id=v["content_id"],
                size=v["size"],
                created_at=datetime.strptime(v["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                    tzinfo=UTC
                ),
            )
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"head record has a malformed version entry {v!r}") from None
        if (
            not isinstance(info.version, int)
            or isinstance(info.version, bool)
            or info.version < 1
            or (out and info.version <= out[-1].version)
            or not isinstance(info.content_id, str)
            or CONTENT_ID_RE.fullmatch(info.content_id) is None
            or not isinstance(info.size, int)
            or info.size < 0
        ):
            raise ValueError(f"head record has an invalid version entry {v!r}")
        out.append(info)
    return Head(name=name, versions=tuple(out), summary=summary)
