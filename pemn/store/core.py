"""The store semantics, written once over the ``Backend`` primitives: ``AsyncStore``.

Owns name and content-id validation, the size cap, bundle validation (the summary
kept for listing), content addressing, version numbering, retention, compare-and-set,
idempotent re-puts, reference tracking for blob deletion, sha256 verification on
every read, bounded retries, and change following (``watch``). The synchronous
``Store`` (``pemn.store.sync``) runs this same class on a private event loop.

Writes go through ``Backend.transact``: the function that decides a write reads the
current head, then records blob/ref/head writes; the backend commits them so that
the pointer moves only after the blob is durable (see ``pemn.store.backend``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from pemn.store.backend import Backend, Txn
from pemn.store.errors import (
    Conflict,
    Corrupt,
    InvalidBundle,
    NotFound,
    TooLarge,
    Unavailable,
)
from pemn.store.names import content_id, validate_content_id, validate_name
from pemn.store.options import StoreOptions, Validator
from pemn.store.records import (
    Head,
    NameInfo,
    PutResult,
    StoredBundle,
    VersionInfo,
    decode_head,
    encode_head,
)

__all__ = ["AsyncStore", "default_validator"]

log = logging.getLogger("pemn.store")
T = TypeVar("T")
_THREAD_HASH_BYTES = 1 << 20  # hash larger payloads off the event loop
_READ_ATTEMPTS = 5  # a reader re-reads a head that moved between its two reads


def default_validator(data: bytes) -> Mapping[str, Any]:
    """Validate with the bundle reader and return its JSON-able summary."""
    from pemn.bundle import inspect_bundle  # imported lazily: it pulls in torch

    return inspect_bundle(data)


async def _sha(data: bytes) -> str:
    if len(data) > _THREAD_HASH_BYTES:
        return await asyncio.to_thread(content_id, data)
    return content_id(data)


class AsyncStore:
    """A bundle store (async API). Create it with ``pemn.store.open_async_store``."""

    def __init__(self, backend: Backend, options: StoreOptions) -> None:
        self._backend = backend
        self._options = options
        self._validator: Validator = options.validator or default_validator
        self._closed = False

    # ------------------------------------------------------------------ basics
    @property
    def url(self) -> str:
        """The store URL without credentials (also in every error message)."""
        return self._backend.display

    @property
    def options(self) -> StoreOptions:
        return self._options

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            await self._backend.aclose()

    aclose = close

    def _name(self, name: object) -> str:
        return validate_name(name, store=self.url)

    async def _retrying(self, op: str, key: str | None, fn: Callable[[int], Awaitable[T]]) -> T:
        """Run ``fn(attempt)`` with up to ``retries`` attempts on ``Unavailable``."""
        if self._closed:
            raise Unavailable(f"cannot {op}: the store is closed", store=self.url, key=key)
        delay = self._options.retry_backoff
        attempts = self._options.retries
        for attempt in range(1, attempts + 1):
            try:
                return await fn(attempt)
            except Unavailable as exc:
                if attempt == attempts:
                    raise Unavailable(
                        f"cannot {op} after {attempts} attempt(s): {exc.reason}",
                        store=self.url,
                        key=key,
                    ) from exc
                log.debug("store %s: %s %s failed (%s), retrying", self.url, op, key, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay *= 2
        raise AssertionError("unreachable")

    def _head(self, raw: bytes, name: str) -> Head:
        try:
            return decode_head(raw, name)
        except ValueError as exc:
            raise Corrupt(f"unreadable head record: {exc}", store=self.url, key=name) from None

    # ------------------------------------------------------------------ writes
    async def _prepare(self, name: str, data: bytes) -> tuple[dict[str, Any], str]:
        """Size cap, then full bundle validation, then the content id: before any write."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"bundle data must be bytes, not {type(data).__name__}")
        size = len(data)
        if size > self._options.max_bundle_bytes:
            raise TooLarge(
                store=self.url, key=name, size=size, limit=self._options.max_bundle_bytes
            )

        def check() -> tuple[dict[str, Any], str]:
            try:
                summary = self._validator(bytes(data))
            except ValueError as exc:  # BundleError is a ValueError with .code and .field
                raise InvalidBundle(
                    f"invalid bundle: {exc}",
                    store=self.url,
                    key=name,
                    bundle_code=getattr(exc, "code", None),
                    field=getattr(exc, "field", None),
                ) from exc
            try:
                clean = json.loads(json.dumps(dict(summary), allow_nan=False))
            except ValueError as exc:
                raise InvalidBundle(
                    f"invalid bundle: its summary is not plain JSON ({exc})",
                    store=self.url,
                    key=name,
                ) from exc
            return clean, content_id(data)

        return await asyncio.to_thread(check)

    async def put(
        self, name: str, data: bytes, *, expected_version: int | None = None
    ) -> PutResult:
        """Store ``data`` as the next version of ``name``.

        The bytes are size-checked and validated first; nothing is written if they
        fail. If they equal the latest version, nothing is written and the result has
        ``created=False``. ``expected_version`` (compare-and-set): the current latest
        version must be this number (0: the name must not exist), else ``Conflict``.
        """
        name = self._name(name)
        if expected_version is not None and (
            isinstance(expected_version, bool)
            or not isinstance(expected_version, int)
            or expected_version < 0
        ):
            raise ValueError(f"expected_version must be an integer >= 0, not {expected_version!r}")
        summary, cid = await self._prepare(name, data)
        blob = bytes(data)
        retain = self._options.retain

        async def attempt(n: int) -> PutResult:
            async def decide(txn: Txn) -> PutResult:
                raw = await txn.head(name)
                head = self._head(raw, name) if raw is not None else None
                current = head.latest.version if head else 0
                epoch = await txn.epoch()
                # Idempotent re-put. After an ambiguous failed attempt (n > 1) the
                # earlier commit may be ours and unannounced: touch the epoch.
                if (
                    head
                    and head.latest.content_id == cid
                    and (
                        expected_version in (None, current)
                        or (n > 1 and expected_version == current - 1)
                    )
                ):
                    if n > 1:
                        txn.touch()
                    v = head.latest
                    return PutResult(name, v.version, cid, v.size, False, epoch)
                if expected_version is not None and expected_version != current:
                    raise Conflict(
                        f"expected version {expected_version}, current version is {current}",
                        store=self.url,
                        key=name,
                        expected=expected_version,
                        current=current,
                    )
                new = VersionInfo(current + 1, cid, len(blob), datetime.now(UTC))
                versions = (*(head.versions if head else ()), new)
                kept, dropped = versions[-retain:], versions[:-retain]
                txn.add_ref(cid, name)
                txn.put_blob(cid, blob)
                txn.put_head(name, encode_head(Head(name, kept, summary)))
                await self._forget(txn, name, {v.content_id for v in dropped}, kept)
                return PutResult(name, new.version, cid, new.size, True, epoch)

            result, epoch = await self._backend.transact(decide)
            return replace(result, epoch=epoch)

        return await self._retrying("put", name, attempt)

    async def _forget(
        self, txn: Txn, name: str, cids: set[str], kept: tuple[VersionInfo, ...]
    ) -> None:
        """Drop ``name``'s use of ``cids`` (those no kept version uses) and delete
        blobs no other name uses."""
        still = {v.content_id for v in kept}
        for cid in sorted(cids - still):
            txn.remove_ref(cid, name)
            if not (await txn.ref_names(cid)) - {name}:
                txn.delete_blob(cid)

    async def delete(self, name: str) -> None:
        """Delete ``name`` and every blob no other name uses; ``NotFound`` if absent."""
        name = self._name(name)

        async def attempt(n: int) -> None:
            async def decide(txn: Txn) -> bool:
                raw = await txn.head(name)
                if raw is None:
                    if n > 1:  # an earlier, ambiguous attempt may have deleted it
                        txn.touch()
                        return True
                    return False
                txn.delete_head(name)
                try:
                    head = self._head(raw, name)
                except Corrupt as exc:  # still deletable; its blobs stay (a leak, logged)
                    log.error("%s; deleting it, its blobs are kept", exc)
                    return True
                await self._forget(txn, name, {v.content_id for v in head.versions}, ())
                return True

            found, _ = await self._backend.transact(decide)
            if not found:
                raise NotFound("no bundle with this name", store=self.url, key=name)

        await self._retrying("delete", name, attempt)

    # ------------------------------------------------------------------ reads
    async def info(self, name: str) -> NameInfo:
        """The latest version of ``name`` and its summary (reads no blob)."""
        name = self._name(name)

        async def attempt(_: int) -> NameInfo:
            raw = await self._backend.read_head(name)
            if raw is None:
                raise NotFound("no bundle with this name", store=self.url, key=name)
            return self._head(raw, name).info()

        return await self._retrying("read", name, attempt)

    async def versions(self, name: str) -> list[VersionInfo]:
        """Retained versions of ``name``, oldest first."""
        name = self._name(name)

        async def attempt(_: int) -> list[VersionInfo]:
            raw = await self._backend.read_head(name)
            if raw is None:
                raise NotFound("no bundle with this name", store=self.url, key=name)
            return list(self._head(raw, name).versions)

        return await self._retrying("list versions of", name, attempt)

    async def list(self) -> list[NameInfo]:
        """Every name with its latest version and summary, sorted by name.

        A name whose head record is unreadable is logged and left out (``get`` on it
        raises ``Corrupt``), so one damaged record does not hide the others."""

        async def attempt(_: int) -> list[NameInfo]:
            out = []
            for name, raw in sorted((await self._backend.read_heads()).items()):
                try:
                    out.append(self._head(raw, name).info())
                except Corrupt as exc:
                    log.error("%s", exc)
            return out

        return await self._retrying("list", None, attempt)

    async def get(self, name: str, version: int | None = None) -> StoredBundle:
        """The verified bytes of ``name`` (latest, or ``version``).

        ``NotFound`` if the name or version does not exist (or is no longer retained);
        ``Corrupt`` if the stored bytes fail their sha256 or the blob is missing."""
        name = self._name(name)
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int) or version < 1
        ):
            raise ValueError(f"version must be an integer >= 1, not {version!r}")
        key = name if version is None else f"{name}@{version}"

        async def attempt(_: int) -> StoredBundle:
            raw = await self._backend.read_head(name)
            for _ in range(_READ_ATTEMPTS):
                if raw is None:
                    raise NotFound("no bundle with this name", store=self.url, key=name)
                head = self._head(raw, name)
                entry = head.latest if version is None else head.find(version)
                if entry is None:
                    raise NotFound(
                        f"no version {version} (retained: "
                        + ", ".join(str(v.version) for v in head.versions)
                        + ")",
                        store=self.url,
                        key=key,
                    )
                data = await self._backend.read_blob(entry.content_id)
                if data is not None:
                    await self._verify(data, entry.content_id, key, entry.size)
                    return StoredBundle(
                        name, entry.version, entry.content_id, data, entry.created_at
                    )
                # The blob went away: a writer moved the head and dropped the version
                # after we read it. Re-read; an unchanged head means real damage.
                again = await self._backend.read_head(name)
                if again == raw:
                    raise Corrupt(
                        f"head points to missing blob {entry.content_id}", store=self.url, key=key
                    )
                raw = again
            raise Unavailable("the head kept changing while reading it", store=self.url, key=key)

        return await self._retrying("get", key, attempt)

    async def get_by_id(self, cid: str) -> bytes:
        """The verified bytes of blob ``cid`` (``sha256:<hex>``), whatever names use it."""
        cid = validate_content_id(cid, store=self.url)

        async def attempt(_: int) -> bytes:
            data = await self._backend.read_blob(cid)
            if data is None:
                raise NotFound("no blob with this content id", store=self.url, key=cid)
            await self._verify(data, cid, cid, None)
            return data

        return await self._retrying("get", cid, attempt)

    async def _verify(self, data: bytes, cid: str, key: str, size: int | None) -> None:
        got = await _sha(data)
        if got != cid or (size is not None and len(data) != size):
            raise Corrupt(
                f"stored bytes fail verification: sha256 {got} ({len(data)} bytes), "
                f"expected {cid}" + (f" ({size} bytes)" if size is not None else ""),
                store=self.url,
                key=key,
            )

    # ------------------------------------------------------------------ changes
    async def epoch(self) -> int:
        """The store's change counter: it grows by one with every committed change."""
        return await self._retrying("read the epoch of", None, lambda _: self._backend.read_epoch())

    async def watch(
        self, poll_interval: float = 1.0, *, since: int | None = None
    ) -> AsyncIterator[int]:
        """Yield the epoch each time it changes: first the current one (unless it
        equals ``since``), then every new value. Several changes may be folded into
        one value; react by re-reading (``list``), not by counting.

        The backend's hint (Redis pub/sub) wakes the watcher at once; the epoch is
        also polled every ``poll_interval`` seconds, so a missed or lost message only
        costs latency. A backend outage is logged and waited out, never raised. An
        epoch that goes *down* (a Redis server restarted empty) is yielded too.
        Close the iterator (``contextlib.aclosing``) to release the subscription."""
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, not {poll_interval!r}")
        hint = await self._backend.open_hint()
        last = since
        down = False
        try:
            while True:
                if hint is not None:
                    hint.event.clear()
                try:
                    current = await self._backend.read_epoch()
                except Unavailable as exc:
                    if not down:
                        log.warning("watching %s: %s; will keep polling", self.url, exc)
                    down = True
                else:
                    if down:
                        log.info("watching %s: the store answers again", self.url)
                    down = False
                    if current != last:
                        last = current
                        yield current
                if hint is None:
                    await asyncio.sleep(poll_interval)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(hint.event.wait(), poll_interval)
        finally:
            if hint is not None:
                await hint.aclose()
