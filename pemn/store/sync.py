"""``Store``: the synchronous bundle store for the trainer and tools.

It runs the one ``AsyncStore`` implementation on a private event loop in a daemon
thread and waits for each call, so the sync and async APIs cannot drift apart.
A ``Store`` may be shared by threads (calls run concurrently on its loop); it does
not survive ``fork`` (open a new one in the child). Close it (or use ``with``);
one left open is closed when garbage-collected or at interpreter exit.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pemn.store.core import AsyncStore
from pemn.store.options import StoreOptions
from pemn.store.records import NameInfo, PutResult, StoredBundle, VersionInfo

__all__ = ["Store"]

T = TypeVar("T")


def _shutdown(loop: asyncio.AbstractEventLoop, thread: threading.Thread, holder: list[Any]) -> None:
    """Close the async store, the loop's executor and the loop, then join the thread."""
    if not loop.is_closed() and thread.is_alive():

        async def finish() -> None:
            if holder:
                await holder[0].close()
            await loop.shutdown_asyncgens()
            await loop.shutdown_default_executor()

        try:
            asyncio.run_coroutine_threadsafe(finish(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
    if not loop.is_closed():
        loop.close()


class Store:
    """A bundle store (sync API). Create it with ``pemn.store.open_store``.

    Every method has the semantics of the ``AsyncStore`` method of the same name."""

    def __init__(self, factory: Callable[[], AsyncStore]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pemn.store loop", daemon=True
        )
        self._thread.start()
        holder: list[AsyncStore] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._thread, holder)

        async def make() -> AsyncStore:
            return factory()

        try:
            self._async = self._run(make())
        except BaseException:
            self._finalizer()
            raise
        holder.append(self._async)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._finalizer.alive:
            coro.close()
            raise RuntimeError("the store is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

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
        """Release connections and stop the private loop thread (idempotent)."""
        self._finalizer()

    def put(self, name: str, data: bytes, *, expected_version: int | None = None) -> PutResult:
        return self._run(self._async.put(name, data, expected_version=expected_version))

    def get(self, name: str, version: int | None = None) -> StoredBundle:
        return self._run(self._async.get(name, version))

    def get_by_id(self, content_id: str) -> bytes:
        return self._run(self._async.get_by_id(content_id))

    def info(self, name: str) -> NameInfo:
        return self._run(self._async.info(name))

    def list(self) -> list[NameInfo]:
        return self._run(self._async.list())

    def versions(self, name: str) -> builtins.list[VersionInfo]:
        return self._run(self._async.versions(name))

    def delete(self, name: str) -> None:
        self._run(self._async.delete(name))

    def epoch(self) -> int:
        return self._run(self._async.epoch())
