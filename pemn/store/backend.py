"""The small primitive interface every backend implements, and the shared commit
order of the backends that serialise writers with a lock (directory, S3).

A backend stores four kinds of things (see docs/stores.md for each key layout):

* **blobs**: immutable bundle bytes keyed by content id;
* **heads**: one JSON record per name (``pemn.store.records``), the name -> version
  pointer, replaced as a whole;
* **refs**: the set of names whose retained versions use a blob, kept per blob, so
  deleting a name or dropping a version can tell whether the blob is still used;
* **epoch**: one integer per store, incremented by every committed change.

Readers use the lock-free ``read_*`` methods. Writers run a function over a ``Txn``
with ``Backend.transact``: the function reads through the ``Txn`` (a stable view:
either the store's write lock is held, or the backend aborts and reruns the
function if anything changed under it) and records writes, which the backend
applies when the function returns. The function may be run more than once.

Commit order of a locked backend, chosen so that a reader never sees a head that
points to a missing blob and a crash at any point leaves at worst an unreferenced
blob or ref (a leak), never a dangling pointer:

1. add refs          (a blob gains a user before any head uses it)
2. write blobs       (temp + fsync + rename, or one S3 PUT: complete or absent)
3. write / delete heads  (the pointer moves: the commit point for readers)
4. write epoch + 1   (after the heads, so a poller that sees the new epoch sees them)
5. remove refs, then delete blobs no name uses any more
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Backend", "Changes", "Hint", "LockedBackend", "Txn"]

T = TypeVar("T")


@dataclass
class Changes:
    """Writes recorded by a transaction, applied by the backend's commit."""

    blobs: dict[str, bytes] = field(default_factory=dict)  # content id -> bytes
    heads: dict[str, bytes | None] = field(default_factory=dict)  # name -> record; None deletes
    add_refs: set[tuple[str, str]] = field(default_factory=set)  # (content id, name)
    remove_refs: set[tuple[str, str]] = field(default_factory=set)
    delete_blobs: set[str] = field(default_factory=set)
    touched: bool = False  # bump the epoch even with no other write

    def __bool__(self) -> bool:
        return bool(
            self.touched
            or self.blobs
            or self.heads
            or self.add_refs
            or self.remove_refs
            or self.delete_blobs
        )


class Txn(ABC):
    """A writer's view of the store; reads are stable, writes are recorded."""

    def __init__(self) -> None:
        self.changes = Changes()

    @abstractmethod
    async def epoch(self) -> int: ...

    @abstractmethod
    async def head(self, name: str) -> bytes | None: ...

    @abstractmethod
    async def ref_names(self, cid: str) -> set[str]:
        """Names that the committed state records as using blob ``cid``."""

    def put_blob(self, cid: str, data: bytes) -> None:
        self.changes.blobs[cid] = data

    def put_head(self, name: str, record: bytes) -> None:
        self.changes.heads[name] = record

    def delete_head(self, name: str) -> None:
        self.changes.heads[name] = None

    def add_ref(self, cid: str, name: str) -> None:
        self.changes.add_refs.add((cid, name))

    def remove_ref(self, cid: str, name: str) -> None:
        self.changes.remove_refs.add((cid, name))

    def delete_blob(self, cid: str) -> None:
        self.changes.delete_blobs.add(cid)

    def touch(self) -> None:
        """Announce a change (bump the epoch) even if nothing else is written."""
        self.changes.touched = True


class Hint(ABC):
    """A fast change hint (Redis pub/sub): ``event`` is set when a change may have
    happened and after every (re)subscription. It is only a hint: watchers always
    poll the epoch as well."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    @abstractmethod
    async def aclose(self) -> None: ...


class Backend(ABC):
    """Storage primitives. Every method raises ``Unavailable`` (naming the store and
    the backend key) when the backend does not answer, and returns ``None`` for a
    missing item; the semantics live in ``pemn.store.core``."""

    display: str  # the store URL without credentials, for messages

    @abstractmethod
    async def read_head(self, name: str) -> bytes | None: ...

    @abstractmethod
    async def read_heads(self) -> dict[str, bytes]:
        """Every name's head record (each one consistent; Redis: one snapshot)."""

    @abstractmethod
    async def read_blob(self, cid: str) -> bytes | None: ...

    @abstractmethod
    async def read_epoch(self) -> int: ...

    @abstractmethod
    async def transact(self, fn: Callable[[Txn], Awaitable[T]]) -> tuple[T, int]:
        """Run ``fn`` over a transaction and commit its writes atomically with
        respect to other writers; return its result and the epoch after the commit
        (unchanged when ``fn`` wrote nothing)."""

    async def open_hint(self) -> Hint | None:
        """A change hint, or None when the backend has none (then watchers poll)."""
        return None

    @abstractmethod
    async def aclose(self) -> None: ...


class _LockedTxn(Txn):
    def __init__(self, backend: LockedBackend) -> None:
        super().__init__()
        self._backend = backend
        self.tokens: dict[str, Any] = {}  # head name / "epoch" -> backend version token
        self._epoch: int | None = None

    async def epoch(self) -> int:
        if self._epoch is None:
            self._epoch, self.tokens[" epoch"] = await self._backend._txn_read_epoch()
        return self._epoch

    async def head(self, name: str) -> bytes | None:
        raw, self.tokens[name] = await self._backend._txn_read_head(name)
        return raw

    async def ref_names(self, cid: str) -> set[str]:
        return await self._backend._ref_names(cid)


class LockedBackend(Backend):
    """Shared ``transact`` of the backends whose writers take a store-wide lock.

    Subclasses provide the lock and the individual writes; this class owns the
    commit order (module docstring). Writers in one process queue on an asyncio
    lock first, so only one of them at a time contends for the store lock."""

    def __init__(self) -> None:
        self._local: asyncio.Lock | None = None

    @abstractmethod
    async def _acquire(self) -> Any:
        """Take the store's write lock (raise ``Unavailable`` after ``lock_timeout``)."""

    @abstractmethod
    async def _release(self, lock: Any) -> None: ...

    async def _check_lock(self, lock: Any) -> None:
        """Raise ``Unavailable`` if the lock may no longer be ours (leases)."""
        return None

    @abstractmethod
    async def _txn_read_epoch(self) -> tuple[int, Any]: ...

    @abstractmethod
    async def _txn_read_head(self, name: str) -> tuple[bytes | None, Any]: ...

    @abstractmethod
    async def _ref_names(self, cid: str) -> set[str]: ...

    @abstractmethod
    async def _write_blob(self, cid: str, data: bytes) -> None: ...

    @abstractmethod
    async def _write_head(self, name: str, record: bytes | None, token: Any) -> None:
        """Replace (``record``) or delete (``None``) a head; ``token`` is what
        ``_txn_read_head`` returned, for backends that double-check it."""

    @abstractmethod
    async def _write_epoch(self, epoch: int, token: Any) -> None: ...

    @abstractmethod
    async def _add_ref(self, cid: str, name: str) -> None: ...

    @abstractmethod
    async def _remove_ref(self, cid: str, name: str) -> None: ...

    @abstractmethod
    async def _delete_blob(self, cid: str) -> None: ...

    async def transact(self, fn: Callable[[Txn], Awaitable[T]]) -> tuple[T, int]:
        if self._local is None:
            self._local = asyncio.Lock()
        async with self._local:
            lock = await self._acquire()
            try:
                txn = _LockedTxn(self)
                result = await fn(txn)
                epoch = await txn.epoch()
                if txn.changes:
                    epoch = await self._commit(txn, epoch, lock)
                return result, epoch
            finally:
                await self._release(lock)

    async def _commit(self, txn: _LockedTxn, epoch: int, lock: Any) -> int:
        c = txn.changes
        await self._check_lock(lock)
        await asyncio.gather(*(self._add_ref(cid, name) for cid, name in sorted(c.add_refs)))
        await asyncio.gather(*(self._write_blob(cid, data) for cid, data in c.blobs.items()))
        await self._check_lock(lock)
        for name, record in c.heads.items():
            await self._write_head(name, record, txn.tokens.get(name))
        await self._write_epoch(epoch + 1, txn.tokens.get(" epoch"))
        await self._check_lock(lock)
        await asyncio.gather(*(self._remove_ref(cid, name) for cid, name in sorted(c.remove_refs)))
        await self._check_lock(lock)
        await asyncio.gather(*(self._delete_blob(cid) for cid in sorted(c.delete_blobs)))
        return epoch + 1
