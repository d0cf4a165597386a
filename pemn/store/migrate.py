"""Convert a store written by store v1 to this layout: ``python -m pemn store migrate URL``.

Store v1 kept, per name, one head listing its retained versions, and bundle bytes as
blobs shared across names (with refs, a store-wide epoch and a write lock). For each
v1 head this reads every retained version's blob (sha256-checked), writes it as a
version object with the same number (the summary: the v1 head's for the latest, the
validator's for older versions), then swaps the head from the v1 record to a
``pemn.store.head/2`` record (compare-and-swap: nothing newer is overwritten). Last
it removes the v1 leftovers. Re-running it is safe; stop v1 writers first.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pemn.store.backend import Backend
from pemn.store.core import AsyncStore
from pemn.store.errors import Corrupt, StoreError
from pemn.store.names import content_hex, content_id
from pemn.store.records import Head, VersionInfo, VersionRecord, encode_version

__all__ = ["migrate"]

_V1 = "pemn.store.head/1"


async def migrate(store: AsyncStore, echo: Callable[[str], None] = print) -> int:
    """Migrate every v1 name of ``store``; returns how many were converted."""
    backend: Backend = store._backend
    v1 = _V1Layout.of(backend)
    done = 0
    for name, raw in sorted((await backend.read_heads()).items()):
        doc = json.loads(raw) if _V1.encode() in raw else None
        if doc is None or doc.get("schema") != _V1:
            continue
        kept = []
        for i, v in enumerate(doc["versions"]):
            data = await v1.blob(v["content_id"])
            if data is None or content_id(data) != v["content_id"]:
                raise Corrupt(
                    f"v1 blob of version {v['version']} is missing or damaged",
                    store=store.url,
                    key=name,
                )
            last = i == len(doc["versions"]) - 1
            summary = doc["summary"] if last else dict(store._validator(data))
            info = VersionInfo(version=v["version"], content_id=v["content_id"], size=len(data),
                               created_at=datetime.fromisoformat(v["created_at"]))  # fmt: skip
            record = VersionRecord(name=name, **info.model_dump(), summary=summary)
            await backend.create_version(name, info.version, encode_version(record, data))
            kept.append(info)
        top = kept[-1].version
        head = Head(
            name=name, rev=1, top=top, latest=top, versions=tuple(kept), summary=doc["summary"]
        )
        token = (await backend.read_head(name))[1]
        if not await backend.swap_head(name, token, head.encode(), time.monotonic() + 60):
            raise StoreError(
                "the head changed while migrating it; run again", store=store.url, key=name
            )
        await v1.forget_head(name)
        echo(f"migrated {name}: versions {', '.join(str(v.version) for v in kept)}")
        done += 1
    await v1.clean()
    return done


class _V1Layout:
    """Where store v1 kept blobs and what else it left, per backend."""

    def __init__(self, backend: Any) -> None:
        self.b = backend

    @staticmethod
    def of(backend: Backend) -> _V1Layout:
        kind = type(backend).__name__
        return {"FileBackend": _FileV1, "RedisBackend": _RedisV1, "S3Backend": _S3V1}[kind](backend)

    async def blob(self, cid: str) -> bytes | None:
        raise NotImplementedError

    async def forget_head(self, name: str) -> None:
        return None

    async def clean(self) -> None:
        raise NotImplementedError


class _FileV1(_V1Layout):
    async def blob(self, cid: str) -> bytes | None:
        h = content_hex(cid)
        path = self.b.root / "blobs" / "sha256" / h[:2] / h
        return path.read_bytes() if path.is_file() else None

    async def forget_head(self, name: str) -> None:
        (self.b.root / "heads" / f"{name}.json").unlink(missing_ok=True)

    async def clean(self) -> None:
        for d in ("blobs", "refs"):
            shutil.rmtree(self.b.root / d, ignore_errors=True)
        for f in ("epoch", "lock"):
            (self.b.root / f).unlink(missing_ok=True)


class _RedisV1(_V1Layout):
    async def blob(self, cid: str) -> bytes | None:
        raw: bytes | None = await self.b._client.get(f"{self.b.prefix}:blob:{content_hex(cid)}")
        return raw

    async def clean(self) -> None:
        c, p = self.b._client, self.b.prefix
        for pattern in (f"{p}:blob:*", f"{p}:refs:*"):
            keys = [k async for k in c.scan_iter(match=pattern)]
            if keys:
                await c.delete(*keys)
        await c.delete(f"{p}:epoch")


class _S3V1(_V1Layout):
    async def blob(self, cid: str) -> bytes | None:
        return (await self.b._get(f"blobs/sha256/{content_hex(cid)}"))[0]

    async def clean(self) -> None:
        obs, s3 = self.b._obs, self.b._s3
        paths = ["epoch", "lock", "lock.waiting"]
        for prefix in ("blobs/", "refs/"):
            async for batch in obs.list(s3, prefix=prefix):
                paths += [m["path"] for m in batch]
        await obs.delete_async(s3, paths)
