"""The S3-compatible backend (``s3://bucket/prefix?endpoint_url=...``), on boto3.

Key layout (docs/stores.md), ``P/`` the key prefix (empty for none)::

    P/epoch                     {"epoch": n}, the change counter
    P/lock                      the write lock (a lease, below)
    P/heads/<name>.json         head record per name
    P/blobs/sha256/<hex>        bundle bytes
    P/refs/<hex>/<name>         empty marker: <name> uses blob <hex>

S3 has no multi-object transaction, so writers serialise on a lease kept in
``P/lock`` with conditional writes (``If-None-Match: *`` to create it, ``If-Match:
<etag>`` to take over a released or expired one, or to release it), and commit in
the order of ``pemn.store.backend``: blob first, then the head (the pointer), then
the epoch. A lease expires ``lock_ttl`` seconds after its last write, judged by the
server's own clock (its ``Date`` header against the object's ``LastModified``); a
holder stops committing once half its lease has passed. Heads and the epoch are
also written conditionally on the ETag read under the lock, so a writer that lost
its lease fails instead of overwriting. The server must support conditional
writes (AWS S3, MinIO, Ceph RGW and moto do).

boto3 is synchronous: each call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from pemn.store.backend import LockedBackend
from pemn.store.errors import Corrupt, StoreConfigError, StoreError, Unavailable
from pemn.store.names import NAME_RE, content_hex
from pemn.store.options import S3Config, StoreOptions

__all__ = ["S3Backend", "boto3_session"]

log = logging.getLogger("pemn.store")
T = TypeVar("T")
_LOST_RACE = ("PreconditionFailed", "ConditionalRequestConflict")
_TRANSIENT = (
    "SlowDown",
    "RequestTimeout",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeTooSkewed",
)


_loader_lock = threading.Lock()
_loader: Any = None


def boto3_session(**kwargs: Any) -> Any:
    """A ``boto3.session.Session(**kwargs)`` sharing one botocore data loader per
    process, so that a client after the first is built in milliseconds, not 0.2 s."""
    global _loader
    import boto3
    import botocore.loaders
    import botocore.session

    with _loader_lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader()
        core = botocore.session.Session()
        core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core, **kwargs)


class _LostRace(Exception):
    """A conditional write found the object changed (412 / 409)."""


@dataclass
class _Lease:
    owner: str
    etag: str
    since: float  # time.monotonic() just before the write that took it


class S3Backend(LockedBackend):
    def __init__(self, display: str, config: S3Config, options: StoreOptions) -> None:
        super().__init__()
        try:
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise StoreConfigError(
                "the s3 backend needs boto3: pip install 'pemn-serve[s3]'", store=display
            ) from exc
        self.display = display
        self.bucket = config.bucket
        self._p = f"{config.prefix}/" if config.prefix else ""
        self._ttl = config.lock_ttl
        self._lock_timeout = options.lock_timeout
        session = boto3_session(
            aws_access_key_id=config.aws_access_key_id,
            aws_secret_access_key=config.aws_secret_access_key,
            aws_session_token=config.aws_session_token,
            region_name=config.region or "us-east-1",
        )
        s3: dict[str, Any] = {}
        if config.addressing_style or config.endpoint_url:
            s3["addressing_style"] = config.addressing_style or "path"
        self._client = session.client(
            "s3",
            endpoint_url=config.endpoint_url,
            config=Config(
                connect_timeout=options.timeout,
                read_timeout=options.timeout,
                retries={"max_attempts": 1, "mode": "standard"},  # the store retries
                max_pool_connections=16,
                s3=s3,
            ),
        )
        from botocore import exceptions as botoexc

        self._botoexc = botoexc
        self._unreachable: tuple[type[Exception], ...] = (
            botoexc.ConnectionError,
            botoexc.HTTPClientError,
            botoexc.NoCredentialsError,
            OSError,
        )

    # ---------------------------------------------------------------- helpers
    def key(self, *parts: str) -> str:
        return self._p + "/".join(parts)

    def _head_key(self, name: str) -> str:
        return self.key("heads", f"{name}.json")

    def _blob_key(self, cid: str) -> str:
        return self.key("blobs", "sha256", content_hex(cid))

    def _ref_key(self, cid: str, name: str) -> str:
        return self.key("refs", content_hex(cid), name)

    async def _call(self, key: str, fn: Callable[[], T]) -> T:
        """Run a boto3 call in a thread and map its errors; a lost conditional write
        raises ``_LostRace`` for the caller to handle."""
        try:
            return await asyncio.to_thread(fn)
        except self._botoexc.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code in _LOST_RACE or status == 412:
                raise _LostRace(key) from exc
            where = f"bucket {self.bucket!r}" if code == "NoSuchBucket" else "S3"
            msg = f"{where}: {code or status} {err.get('Message', '')}".strip()
            if code in _TRANSIENT or status >= 500 or code == "NoSuchBucket":
                raise Unavailable(msg, store=self.display, key=key) from exc
            raise StoreError(msg, store=self.display, key=key) from exc
        except self._unreachable as exc:
            raise Unavailable(f"S3 not reachable: {exc}", store=self.display, key=key) from exc

    def _get(self, key: str) -> tuple[bytes, str, Any, str] | None:
        """(body, etag, LastModified, server Date) of ``key``, or None (in a thread)."""
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=key)
        except self._client.exceptions.NoSuchKey:
            return None
        body = resp["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        date = resp["ResponseMetadata"].get("HTTPHeaders", {}).get("date", "")
        return data, resp["ETag"], resp["LastModified"], date

    async def _read(self, key: str) -> tuple[bytes, str, Any, str] | None:
        return await self._call(key, lambda: self._get(key))

    async def _put(self, key: str, data: bytes, **cond: str) -> str:
        resp = await self._call(
            key, lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **cond)
        )
        return str(resp["ETag"])

    async def _delete(self, key: str) -> None:
        await self._call(key, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))

    async def _list(self, prefix: str) -> list[str]:
        def run() -> list[str]:
            keys: list[str] = []
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                keys.extend(o["Key"] for o in page.get("Contents", []))
            return keys

        return await self._call(prefix, run)

    # ---------------------------------------------------------------- readers
    async def read_head(self, name: str) -> bytes | None:
        got = await self._read(self._head_key(name))
        return got[0] if got else None

    async def read_heads(self) -> dict[str, bytes]:
        prefix = self.key("heads") + "/"
        names = [k[len(prefix) :].removesuffix(".json") for k in await self._list(prefix)]
        names = [n for n in names if NAME_RE.fullmatch(n)]
        limit = asyncio.Semaphore(8)

        async def one(name: str) -> tuple[str, bytes | None]:
            async with limit:
                return name, await self.read_head(name)

        pairs = await asyncio.gather(*(one(n) for n in names))
        return {n: raw for n, raw in pairs if raw is not None}

    async def read_blob(self, cid: str) -> bytes | None:
        got = await self._read(self._blob_key(cid))
        return got[0] if got else None

    async def read_epoch(self) -> int:
        return (await self._txn_read_epoch())[0]

    # ---------------------------------------------------------------- the lease
    async def _acquire(self) -> _Lease:
        key = self.key("lock")
        owner = uuid.uuid4().hex
        body = json.dumps(
            {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "ttl": self._ttl}
        ).encode()
        deadline = time.monotonic() + self._lock_timeout
        pause = 0.01
        holder = "?"
        while True:
            since = time.monotonic()
            try:
                return _Lease(owner, await self._put(key, body, IfNoneMatch="*"), since)
            except _LostRace:
                pass
            got = await self._read(key)
            if got is not None:
                data, etag, modified, date = got
                try:
                    doc = json.loads(data)
                    age = (parsedate_to_datetime(date) - modified).total_seconds()
                except (ValueError, TypeError):
                    doc, age = {}, float("inf")  # unreadable lock object: treat as expired
                holder = f"{doc.get('host', '?')} pid {doc.get('pid', '?')}"
                if doc.get("released") or age > self._ttl:
                    since = time.monotonic()
                    try:
                        return _Lease(owner, await self._put(key, body, IfMatch=etag), since)
                    except _LostRace:
                        pass
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"could not take the write lock within {self._lock_timeout}s "
                    f"(held by {holder})",
                    store=self.display,
                    key=key,
                )
            await asyncio.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.2)

    async def _check_lock(self, lock: Any) -> None:
        if time.monotonic() - lock.since > self._ttl / 2:
            raise Unavailable(
                f"write lock lease ran past half its ttl ({self._ttl}s); commit abandoned",
                store=self.display,
                key=self.key("lock"),
            )

    async def _release(self, lock: Any) -> None:
        key = self.key("lock")
        body = json.dumps({"released": True, "owner": lock.owner}).encode()
        try:
            await self._put(key, body, IfMatch=lock.etag)
        except _LostRace:
            log.warning("store %s: the write lock was taken over before release", self.display)
        except StoreError as exc:  # it expires after lock_ttl anyway
            log.warning("store %s: could not release the write lock: %s", self.display, exc)

    # ---------------------------------------------------------------- writers
    async def _txn_read_epoch(self) -> tuple[int, Any]:
        got = await self._read(self.key("epoch"))
        if got is None:
            return 0, None
        try:
            return int(json.loads(got[0])["epoch"]), got[1]
        except (ValueError, KeyError, TypeError) as exc:
            raise Corrupt(
                f"unreadable epoch object: {exc}", store=self.display, key=self.key("epoch")
            ) from None

    async def _txn_read_head(self, name: str) -> tuple[bytes | None, Any]:
        got = await self._read(self._head_key(name))
        return (got[0], got[1]) if got else (None, None)

    async def _ref_names(self, cid: str) -> set[str]:
        prefix = self.key("refs", content_hex(cid)) + "/"
        return {k[len(prefix) :] for k in await self._list(prefix)}

    async def _put_checked(self, key: str, data: bytes, token: Any) -> None:
        cond = {"IfMatch": token} if token else {"IfNoneMatch": "*"}
        try:
            await self._put(key, data, **cond)
        except _LostRace:
            raise Unavailable(
                "changed by another writer during this commit (write lock lost?); retry",
                store=self.display,
                key=key,
            ) from None

    async def _write_blob(self, cid: str, data: bytes) -> None:
        await self._put(self._blob_key(cid), data)

    async def _write_head(self, name: str, record: bytes | None, token: Any) -> None:
        if record is None:
            await self._delete(self._head_key(name))
        else:
            await self._put_checked(self._head_key(name), record, token)

    async def _write_epoch(self, epoch: int, token: Any) -> None:
        await self._put_checked(self.key("epoch"), json.dumps({"epoch": epoch}).encode(), token)

    async def _add_ref(self, cid: str, name: str) -> None:
        await self._put(self._ref_key(cid, name), b"")

    async def _remove_ref(self, cid: str, name: str) -> None:
        await self._delete(self._ref_key(cid, name))

    async def _delete_blob(self, cid: str) -> None:
        await self._delete(self._blob_key(cid))

    async def aclose(self) -> None:
        await asyncio.to_thread(self._client.close)
