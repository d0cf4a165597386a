"""``AsyncStore``: the store semantics, written once over the ``Backend`` primitives.

Owns name and precondition checks, the size cap, bundle validation (the summary kept
for listing), version numbering, retention, idempotent re-puts, rollback, sha256
verification on every read, bounded retries, write deadlines, and change following
(``watch``). docs/stores.md is the contract.

A write is: read the name's head; create a new version object with a conditional
create (a number that exists, left by a racer or by a writer that died, is skipped);
compare-and-swap the head from what was read. The swap is the commit. Writers of
different names touch different keys; writers of one name are ordered by the swap,
and one that lost re-reads that one head. Nothing is retried past the deadline, and
a swap is never started after it (see ``_commit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from pemn.store.backend import Backend
from pemn.store.errors import (
    Corrupt,
    DeadlineExceeded,
    InvalidBundle,
    NeedsMigration,
    NotFound,
    PreconditionFailed,
    TooLarge,
    Unavailable,
)
from pemn.store.names import content_id, validate_content_id, validate_name
from pemn.store.options import MAX_WRITE_TIMEOUT, StoreOptions, Validator
from pemn.store.records import (
    Head,
    NameInfo,
    PutResult,
    StoredBundle,
    VersionInfo,
    VersionRecord,
    decode_head,
    decode_version,
    encode_version,
)

__all__ = ["AsyncStore", "default_validator"]

log = logging.getLogger("pemn.store")
T = TypeVar("T")
_HASH_IN_THREAD = 1 << 20  # hash larger payloads off the event loop
_READ_ATTEMPTS = 5  # a reader re-reads a head that moved between its two reads


def default_validator(data: bytes) -> Mapping[str, Any]:
    """Validate with the bundle reader and return its JSON-able summary."""
    from pemn.bundle import inspect_bundle  # imported lazily: it pulls in torch

    return inspect_bundle(data)


class _Write:
    """One write's bookkeeping across its attempts."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.unsure: Head | None = None  # a head whose swap failed without an answer
        self.mine: VersionRecord | None = None  # the version object this put created
        self.used = False  # a head refers to ``mine``


class AsyncStore:
    """A bundle store (async API). Create it with ``pemn.store.open_async_store``."""

    def __init__(self, backend: Backend, options: StoreOptions) -> None:
        self._backend = backend
        self._options = options
        self._validator: Validator = options.validator or default_validator
        self._closed = False
        self._cleanups: set[asyncio.Task[None]] = set()  # version objects being removed

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
            if self._cleanups:
                await asyncio.wait(self._cleanups, timeout=self._options.timeout)
            await self._backend.aclose()

    aclose = close

    # ------------------------------------------------------------------ plumbing
    def _check_open(self, op: str) -> None:
        if self._closed:
            raise RuntimeError(f"cannot {op}: the store {self.url} is closed")

    async def _retrying(self, op: str, key: str | None, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` with up to ``retries`` attempts on ``Unavailable`` (reads)."""
        self._check_open(op)
        delay = self._options.retry_backoff
        for attempt in range(1, self._options.retries + 1):
            try:
                return await fn()
            except Unavailable as exc:
                if attempt == self._options.retries:
                    raise Unavailable(
                        f"cannot {op} after {attempt} attempt(s): {exc.reason}",
                        store=self.url,
                        key=key,
                    ) from exc
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay *= 2
        raise AssertionError("unreachable")

    async def _write(
        self,
        op: str,
        name: str,
        timeout: float | None,
        step: Callable[[_Write], Awaitable[T | None]],
    ) -> T:
        """Run ``step`` until it returns a result (None: it lost a race, again), within
        the write's deadline; ``Unavailable`` is retried ``retries`` times in a row."""
        self._check_open(op)
        if timeout is None:
            timeout = self._options.write_timeout
        elif (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= MAX_WRITE_TIMEOUT
        ):
            raise ValueError(
                f"timeout must be a number of seconds in (0, {MAX_WRITE_TIMEOUT:g}], not {timeout!r}"
            )
        w = _Write(time.monotonic() + timeout)
        try:
            return await self._attempts(op, name, timeout, step, w)
        finally:
            if w.mine is not None and not w.used and w.unsure is None:  # never committed
                self._drop_later(name, [w.mine.version])

    async def _attempts(
        self,
        op: str,
        name: str,
        timeout: float,
        step: Callable[[_Write], Awaitable[T | None]],
        w: _Write,
    ) -> T:
        failures, delay = 0, self._options.retry_backoff
        while True:
            if time.monotonic() >= w.deadline:
                raise DeadlineExceeded(
                    f"cannot {op}: no commit within its deadline of {timeout:g}s; abandoned",
                    store=self.url,
                    key=name,
                )
            try:
                result = await step(w)
            except DeadlineExceeded:
                raise
            except Unavailable as exc:
                failures += 1
                if failures >= self._options.retries:
                    raise Unavailable(
                        f"cannot {op} after {failures} attempt(s): {exc.reason}",
                        store=self.url,
                        key=name,
                    ) from exc
                left = w.deadline - time.monotonic()
                await asyncio.sleep(max(0.0, min(delay * (0.5 + random.random()), left)))
                delay *= 2
                continue
            if result is not None:
                return result

    async def _call(self, w: _Write, what: Awaitable[T], name: str) -> T:
        """One backend request of a write, abandoned at the deadline (never started
        after it). A cancellation (the client went away) always propagates, even one
        that arrives as the request completes: asyncio.wait_for would return the
        result instead (Python 3.11, see ``wait_event``) and the write would go on."""
        left = w.deadline - time.monotonic()
        try:
            if left <= 0:
                if inspect.iscoroutine(what):
                    what.close()
                raise TimeoutError
            async with asyncio.timeout(left):
                return await what
        except TimeoutError:
            raise DeadlineExceeded(
                "no commit within its deadline; abandoned", store=self.url, key=name
            ) from None

    async def _commit(self, w: _Write, token: Any, new: Head) -> bool:
        """Swap the head to ``new``. On a backend whose server refuses late swaps
        (Redis) the caller may stop waiting at any time; elsewhere a swap, once
        started, is waited for (one short request), so an answer or an abandonment
        never precedes a commit that then happens anyway."""
        record = new.encode()
        swap = self._backend.swap_head(new.name, token, record, w.deadline)
        try:
            if self._backend.server_deadline:
                return await self._call(w, swap, new.name)
            task = asyncio.ensure_future(swap)
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                await asyncio.wait([task])
                raise
        except DeadlineExceeded:
            raise
        except Unavailable:
            w.unsure = new  # it may have committed: the next attempt looks
            raise

    async def _head(self, name: str, w: _Write | None = None) -> tuple[Head | None, Any]:
        """The parsed head of ``name`` (None when absent) and its CAS token."""
        read = self._backend.read_head(name)
        raw, token = await (self._call(w, read, name) if w else read)
        return (None if raw is None else self._decode(raw, name)), token

    def _decode(self, raw: bytes, name: str) -> Head:
        try:
            return decode_head(raw, name)
        except LookupError as exc:
            raise NeedsMigration(
                f"the name is a {exc} record of store v1; convert the store with "
                f"`python -m pemn store migrate {self.url}`",
                store=self.url,
                key=name,
            ) from None
        except ValueError as exc:
            raise Corrupt(str(exc), store=self.url, key=name) from None

    def _expect(self, if_match: object) -> str | None:
        if if_match is None or if_match == "*":
            return if_match
        return validate_content_id(if_match, store=self.url)

    def _check(self, name: str, expect: str | None, cur: NameInfo | None) -> None:
        if expect is not None and (cur is None or expect not in ("*", cur.content_id)):
            raise PreconditionFailed(
                store=self.url,
                key=name,
                expected=expect,
                current=cur.content_id if cur else None,
            )

    def _drop_later(self, name: str, versions: list[int]) -> None:
        """``_drop`` in the background, so that an abandoned write's answer never waits."""
        task = asyncio.create_task(self._drop(name, versions))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _drop(self, name: str, versions: list[int]) -> None:
        """Delete version objects no head uses (best effort: a failure is a leak)."""
        if not versions:
            return
        try:
            async with asyncio.timeout(self._options.timeout):
                await self._backend.delete_versions(name, versions)
        except (Unavailable, TimeoutError) as exc:
            log.warning(
                "store %s: could not remove %s versions %s: %s", self.url, name, versions, exc
            )

    # ------------------------------------------------------------------ writes
    async def _prepare(self, name: str, data: bytes) -> tuple[dict[str, Any], str]:
        """Size cap, then full bundle validation, then the content id: before any write."""
        limit = self._options.max_bundle_bytes
        if len(data) > limit:
            raise TooLarge(store=self.url, key=name, size=len(data), limit=limit)

        def check() -> tuple[dict[str, Any], str]:
            try:
                summary = self._validator(data)
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
        self,
        name: str,
        data: bytes | bytearray | memoryview,
        *,
        if_match: str | None = None,
        timeout: float | None = None,
    ) -> PutResult:
        """Store ``data`` as a new version of ``name`` and make it the latest.

        Size-checked and validated first; nothing is written if that fails. Bytes equal
        to the latest version write nothing (``created=False``). ``if_match``: the
        content id the latest version must have (``"*"``: the name must exist), else
        ``PreconditionFailed``. ``timeout``: seconds until the write is abandoned
        (``DeadlineExceeded``; default the ``write_timeout`` option)."""
        name = validate_name(name, store=self.url)
        expect = self._expect(if_match)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"bundle data must be bytes, not {type(data).__name__}")
        blob = bytes(data)  # no copy for bytes; a private copy of anything mutable
        summary, cid = await self._prepare(name, blob)

        async def step(w: _Write) -> PutResult | None:
            head, token = await self._head(name, w)
            if head is not None and head == w.unsure:
                w.used = True
                return PutResult(**_info(head).model_dump(), created=True)
            cur = head.info() if head else None
            self._check(name, expect, cur)
            if cur is not None and cur.content_id == cid:
                return PutResult(**cur.model_dump(), created=False)
            top = head.top if head else 0
            if w.mine and w.mine.version <= top:  # a racer committed a higher number
                await self._drop(name, [w.mine.version])
                w.mine = None
            n = top + 1
            while w.mine is None:  # numbers that exist (racers, dead writers) are skipped
                rec = VersionRecord(
                    name=name,
                    version=n,
                    content_id=cid,
                    size=len(blob),
                    created_at=datetime.now(UTC),
                    summary=summary,
                )
                create = self._backend.create_version(name, n, encode_version(rec, blob))
                if await self._call(w, create, name):
                    w.mine = rec
                n += 1
            old = head.versions if head else ()
            kept = (*old, w.mine.info())[-self._options.retain :]
            new = Head(
                name=name,
                rev=head.rev + 1 if head else 1,
                top=w.mine.version,
                latest=w.mine.version,
                versions=kept,
                summary=summary,
            )
            if not await self._commit(w, token, new):
                return None
            w.used = True
            await self._drop(name, [v.version for v in old if v not in kept])
            return PutResult(**_info(new).model_dump(), created=True)

        return await self._write("put", name, timeout, step)

    async def rollback(
        self, name: str, version: int, *, if_match: str | None = None, timeout: float | None = None
    ) -> NameInfo:
        """Make the retained ``version`` of ``name`` its latest again (the pointer
        moves; no version is written). ``if_match`` and ``timeout`` as for ``put``."""
        name = validate_name(name, store=self.url)
        _check_version(version)
        expect = self._expect(if_match)

        async def step(w: _Write) -> NameInfo | None:
            head, token = await self._head(name, w)
            if head is not None and head == w.unsure:
                return _info(head)
            cur = head.info() if head else None
            if head is None or cur is None:
                raise NotFound("no bundle with this name", store=self.url, key=name)
            self._check(name, expect, cur)
            entry = self._entry(head, version, name)
            if head.latest == version:
                return cur
            raw = await self._call(w, self._backend.read_version(name, version), name)
            record, _ = await self._verified(name, entry, raw, f"{name}@{version}")
            new = head.model_copy(
                update={"rev": head.rev + 1, "latest": version, "summary": record.summary}
            )
            return _info(new) if await self._commit(w, token, new) else None

        return await self._write("roll back", name, timeout, step)

    async def delete(
        self, name: str, *, if_match: str | None = None, timeout: float | None = None
    ) -> None:
        """Delete ``name`` and its versions; ``NotFound`` if absent. ``if_match`` and
        ``timeout`` as for ``put``. Version numbers are not reused afterwards."""
        name = validate_name(name, store=self.url)
        expect = self._expect(if_match)

        async def step(w: _Write) -> bool | None:
            damaged = False
            try:
                head, token = await self._head(name, w)
            except Corrupt as exc:  # still deletable: replace the damaged record
                log.error("%s; deleting the name", exc)
                head, damaged = None, True
                token = (await self._call(w, self._backend.read_head(name), name))[1]
            if head is not None and head == w.unsure:
                return True
            cur = head.info() if head else None
            if cur is None and not damaged:
                raise NotFound("no bundle with this name", store=self.url, key=name)
            self._check(name, expect, cur)
            tomb = Head(
                name=name,
                rev=head.rev + 1 if head else 1,
                top=head.top if head else 0,
                latest=None,
                versions=(),
                summary=None,
            )
            if not await self._commit(w, token, tomb):
                return None
            await self._drop(name, [v.version for v in head.versions] if head else [])
            return True

        await self._write("delete", name, timeout, step)

    # ------------------------------------------------------------------ reads
    def _entry(self, head: Head, version: int, name: str) -> VersionInfo:
        entry = head.find(version)
        if entry is None:
            retained = ", ".join(str(v.version) for v in head.versions)
            raise NotFound(
                f"no version {version} (retained: {retained})",
                store=self.url,
                key=f"{name}@{version}",
            )
        return entry

    async def _verified(
        self, name: str, entry: VersionInfo, raw: bytes | None, key: str
    ) -> tuple[VersionRecord, bytes]:
        if raw is None:
            raise Corrupt(f"version object {entry.version} is missing", store=self.url, key=key)
        try:
            rec, data = decode_version(raw)
        except ValueError as exc:
            raise Corrupt(str(exc), store=self.url, key=key) from None
        got = (
            await asyncio.to_thread(content_id, data)
            if len(data) > _HASH_IN_THREAD
            else content_id(data)
        )
        if (rec.name, rec.version, rec.content_id) != (name, entry.version, entry.content_id) or (
            got,
            len(data),
        ) != (entry.content_id, entry.size):
            raise Corrupt(
                f"stored bytes fail verification: sha256 {got} ({len(data)} bytes), "
                f"expected {entry.content_id} ({entry.size} bytes)",
                store=self.url,
                key=key,
            )
        return rec, data

    async def info(self, name: str) -> NameInfo:
        """The latest version of ``name`` and its summary (reads no bundle bytes)."""
        name = validate_name(name, store=self.url)
        head, _ = await self._retrying("read", name, lambda: self._head(name))
        return _info_or_404(head, self.url, name)

    async def versions(self, name: str) -> list[VersionInfo]:
        """Retained versions of ``name``, oldest first (the latest may be any of them)."""
        name = validate_name(name, store=self.url)
        head, _ = await self._retrying("list versions of", name, lambda: self._head(name))
        _info_or_404(head, self.url, name)
        return list(head.versions) if head else []

    async def list(self) -> list[NameInfo]:
        """Every name with its latest version and summary, sorted by name. A name whose
        head is unreadable is logged and left out (``get`` on it raises ``Corrupt``)."""

        async def attempt() -> list[NameInfo]:
            out = []
            for name, raw in sorted((await self._backend.read_heads()).items()):
                try:
                    info = self._decode(raw, name).info()
                except Corrupt as exc:
                    log.error("%s", exc)
                    continue
                if info is not None:
                    out.append(info)
            return out

        return await self._retrying("list", None, attempt)

    async def get(self, name: str, version: int | None = None) -> StoredBundle:
        """The verified bytes of ``name`` (latest, or ``version``). ``NotFound`` if the
        name or version does not exist; ``Corrupt`` if the bytes fail their sha256."""
        name = validate_name(name, store=self.url)
        if version is not None:
            _check_version(version)
        key = name if version is None else f"{name}@{version}"

        async def attempt() -> StoredBundle:
            for _ in range(_READ_ATTEMPTS):
                head, _token = await self._head(name)
                cur = head.info() if head else None
                if head is None or cur is None:
                    raise NotFound("no bundle with this name", store=self.url, key=name)
                entry = self._entry(head, cur.version if version is None else version, name)
                raw = await self._backend.read_version(name, entry.version)
                if raw is None and (await self._head(name))[0] != head:
                    continue  # a writer dropped that version after we read the head
                _, data = await self._verified(name, entry, raw, key)
                return StoredBundle(
                    name=name,
                    version=entry.version,
                    content_id=entry.content_id,
                    data=data,
                    created_at=entry.created_at,
                )
            raise Unavailable("the head kept changing while reading it", store=self.url, key=key)

        return await self._retrying("get", key, attempt)

    # ------------------------------------------------------------------ changes
    async def marker(self) -> str:
        """A value that changes whenever any name changes (compare, never order)."""
        return await self._retrying("read the change marker of", None, self._backend.marker)

    async def watch(
        self, poll_interval: float = 1.0, *, since: str | None = None
    ) -> AsyncGenerator[str, None]:
        """Yield the change marker each time it changes: first the current one (unless
        it equals ``since``), then every new value. Several changes may fold into one;
        react by re-reading (``list``). The backend's hint (Redis pub/sub) wakes the
        watcher at once; the marker is also polled every ``poll_interval`` seconds, so
        a lost message only costs latency. An outage is logged and waited out. Close
        the iterator (``contextlib.aclosing``) to release the subscription."""
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, not {poll_interval!r}")
        hint = await self._backend.open_hint()
        last, down = since, False
        try:
            while True:
                if hint is not None:
                    hint.event.clear()
                try:
                    current = await self._backend.marker()
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
                    await wait_event(hint.event, poll_interval)
        finally:
            if hint is not None:
                await hint.aclose()


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set, at most ``timeout`` seconds. Not
    ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives as
    the event fires (it returns instead), so a loop around it may never end; a
    watcher's owner then hangs waiting for it to stop."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


def _check_version(version: object) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an integer >= 1, not {version!r}")


def _info(head: Head) -> NameInfo:
    info = head.info()
    assert info is not None  # a head this store wrote with a latest version
    return info


def _info_or_404(head: Head | None, store: str, name: str) -> NameInfo:
    info = head.info() if head else None
    if info is None:
        raise NotFound("no bundle with this name", store=store, key=name)
    return info
