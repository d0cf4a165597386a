"""What the stores return, and the two records every backend keeps (pydantic models).

Per name, a backend keeps immutable **version objects** (written once, with a
conditional create) and one **head**, the latest pointer, moved by compare-and-swap.

Head, schema ``pemn.store.head/2`` (canonical JSON)::

    {"schema": "pemn.store.head/2", "name": "<name>", "rev": 7, "top": 5, "latest": 4,
     "versions": [{"version": 3, "content_id": "sha256:...", "size": 1234,
                   "created_at": "2026-01-01T12:00:00.000000Z"}, ...],     # retained, ascending
     "summary": {...}}                                 # bundle summary of version `latest`

``rev`` grows by one with every move; ``top`` is the highest version number ever
allocated (numbers are never reused, not even after a delete); ``latest`` is the
version the pointer designates (``null`` after a delete: a tombstone, which keeps
``top``). Version object: one line of JSON (``VersionRecord``), ``\\n``, the bundle bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from pemn.store.names import CONTENT_ID_RE, NAME_RE

__all__ = [
    "HEAD_SCHEMA",
    "VERSION_SCHEMA",
    "Head",
    "NameInfo",
    "PutResult",
    "StoredBundle",
    "VersionInfo",
    "VersionRecord",
    "decode_head",
    "decode_version",
    "encode_version",
]

HEAD_SCHEMA = "pemn.store.head/2"
VERSION_SCHEMA = "pemn.store.version/2"
_CID = Field(pattern=CONTENT_ID_RE.pattern)
_NAME = Field(pattern=f"^{NAME_RE.pattern}$")


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_serializer("created_at", check_fields=False)
    def _utc(self, t: datetime) -> str:
        return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VersionInfo(_Record):
    """One retained version of a name."""

    version: int = Field(ge=1)
    content_id: str = _CID
    size: int = Field(ge=0)
    created_at: datetime


class NameInfo(_Record):
    """A name, its latest version and that version's bundle summary."""

    name: str
    version: int
    content_id: str
    size: int
    created_at: datetime
    summary: dict[str, Any]
    versions: int  # how many versions are retained


class PutResult(NameInfo):
    """The outcome of ``put``: the name's new state. ``created`` is False when the
    bytes already were the latest version (nothing written)."""

    created: bool


class StoredBundle(_Record):
    """Verified bundle bytes of one version of a name."""

    name: str
    version: int
    content_id: str
    data: bytes = Field(repr=False)
    created_at: datetime

    @property
    def size(self) -> int:
        return len(self.data)


class VersionRecord(_Record):
    """The metadata line of a version object."""

    schema_: Literal["pemn.store.version/2"] = Field("pemn.store.version/2", alias="schema")
    name: str = _NAME
    version: int = Field(ge=1)
    content_id: str = _CID
    size: int = Field(ge=0)
    created_at: datetime
    summary: dict[str, Any]

    def info(self) -> VersionInfo:
        return VersionInfo(
            **self.model_dump(include={"version", "content_id", "size", "created_at"})
        )


class Head(_Record):
    """The latest pointer of a name (``latest`` None: the name was deleted)."""

    schema_: Literal["pemn.store.head/2"] = Field("pemn.store.head/2", alias="schema")
    name: str = _NAME
    rev: int = Field(ge=1)
    top: int = Field(ge=0)
    latest: int | None
    versions: tuple[VersionInfo, ...]
    summary: dict[str, Any] | None

    def find(self, version: int) -> VersionInfo | None:
        return next((v for v in self.versions if v.version == version), None)

    def info(self) -> NameInfo | None:
        cur = None if self.latest is None else self.find(self.latest)
        if cur is None or self.summary is None:
            return None
        return NameInfo(
            name=self.name, **cur.model_dump(), summary=self.summary, versions=len(self.versions)
        )

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


def decode_head(raw: bytes, name: str) -> Head:
    """Parse a head stored under ``name``; ``ValueError`` names the problem, and
    ``LookupError`` means a store v1 record (``pemn.store.head/1``)."""
    if b'"schema":"pemn.store.head/1"' in raw:
        raise LookupError("pemn.store.head/1")
    try:
        head = Head.model_validate_json(raw)
    except ValidationError as exc:
        raise ValueError(f"unreadable head record ({_first(exc)})") from None
    if head.name != name or (head.latest is not None and head.find(head.latest) is None):
        raise ValueError(f"head record for {head.name!r} does not fit name {name!r}")
    return head


def encode_version(record: VersionRecord, data: bytes) -> bytes:
    return record.model_dump_json(by_alias=True).encode() + b"\n" + data


def decode_version(raw: bytes) -> tuple[VersionRecord, bytes]:
    line, sep, data = raw.partition(b"\n")
    try:
        if not sep:
            raise ValueError("no record line")
        return VersionRecord.model_validate_json(line), data
    except (ValidationError, ValueError) as exc:
        why = _first(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ValueError(f"unreadable version object ({why})") from None


def _first(exc: ValidationError) -> str:
    e = exc.errors()[0]
    return f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
