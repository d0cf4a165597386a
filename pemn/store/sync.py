"""``Store``: the synchronous bundle store for the trainer and tools.

It runs the one ``AsyncStore`` implementation on an event loop in a daemon thread,
through an ``anyio.from_thread.BlockingPortal``, so the sync and async APIs cannot
drift apart and the sync API works even inside someone else's event loop. A
``Store`` may be shared by threads; it does not survive ``fork``. Close it (or use
``with``); one left open is closed when garbage-collected or at exit.
"""

from __future__ import annotations

import builtins
import threading
import weakref
from collections.abc import Callable
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal

from pemn.store.core import AsyncStore
from pemn.store.options import StoreOptions
from pemn.store.records import NameInfo, PutResult, StoredBundle, VersionInfo

__all__ = ["Store"]


def _shutdown(portal: BlockingPortal, thread: threading.Thread, store: AsyncStore) -> None:
    try:
        portal.call(store.close)
    finally:
        portal.call(portal.stop)
        thread.join()


class Store:
    """A bundle store (sync API). Create it with ``pemn.store.open_store``.

    Every method has the semantics of the ``AsyncStore`` method of the same name."""

    def __init__(self, factory: Callable[[], AsyncStore]) -> None:
        started = threading.Event()
        holder: list[BlockingPortal] = []

        async def serve() -> None:
            async with BlockingPortal() as portal:
                holder.append(portal)
                started.set()
                await portal.sleep_until_stopped()

        thread = threading.Thread(target=anyio.run, args=(serve,), name="pemn.store", daemon=True)
        thread.start()
        started.wait()
        self._portal = holder[0]

        async def make() -> AsyncStore:
            return factory()

        try:
            self._async = self._portal.call(make)
        except BaseException:
            self._portal.call(self._portal.stop)
            thread.join()
            raise
        self._finalizer = weakref.finalize(self, _shutdown, self._portal, thread, self._async)

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._finalizer.alive:
            raise RuntimeError(f"cannot call {fn.__name__}: the store {self.url} is closed")
        return self._portal.call(lambda: fn(*args, **kwargs))

    @property
    def url(self) -> str:
        return self._async.url

    @property
    def options(self) -> StoreOptions:
        return self._async.options

    def __repr__(self) -> str:
        return f"<Store {self.url}>"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release connections and stop the loop thread (idempotent)."""
        self._finalizer()

    def put(self, name: str, data: bytes | bytearray | memoryview, **kw: Any) -> PutResult:
        result: PutResult = self._run(self._async.put, name, data, **kw)
        return result

    def rollback(self, name: str, version: int, **kw: Any) -> NameInfo:
        result: NameInfo = self._run(self._async.rollback, name, version, **kw)
        return result

    def delete(self, name: str, **kw: Any) -> None:
        self._run(self._async.delete, name, **kw)

    def get(self, name: str, version: int | None = None) -> StoredBundle:
        result: StoredBundle = self._run(self._async.get, name, version)
        return result

    def info(self, name: str) -> NameInfo:
        result: NameInfo = self._run(self._async.info, name)
        return result

    def list(self) -> builtins.list[NameInfo]:
        result: builtins.list[NameInfo] = self._run(self._async.list)
        return result

    def versions(self, name: str) -> builtins.list[VersionInfo]:
        result: builtins.list[VersionInfo] = self._run(self._async.versions, name)
        return result

    def marker(self) -> str:
        result: str = self._run(self._async.marker)
        return result
