"""The local-directory backend (``file:///path``), the embedded default.

Layout under the root (docs/stores.md)::

    epoch                          decimal text, the change counter
    lock                           empty; writers hold flock(LOCK_EX) on it
    heads/<name>.json              head record per name
    blobs/sha256/<hex[:2]>/<hex>   bundle bytes
    refs/<hex>/<name>              empty marker: <name> uses blob <hex>
    tmp/                           files being written (same file system, for rename)

Every file is written to ``tmp/``, fsynced, renamed into place and its directory
fsynced, so a reader sees the old file or the new one, never a partial one. Writers
(threads or processes on this host) serialise on the flock; readers take no lock.
Blocking file calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pemn.store.backend import LockedBackend
from pemn.store.errors import Corrupt, StoreConfigError, Unavailable
from pemn.store.names import NAME_RE, content_hex
from pemn.store.options import FileConfig, StoreOptions

__all__ = ["FileBackend"]

T = TypeVar("T")
_STALE_TMP_SECONDS = 3600


class FileBackend(LockedBackend):
    def __init__(self, display: str, config: FileConfig, options: StoreOptions) -> None:
        super().__init__()
        self.display = display
        self.root = config.root
        self._fsync = config.fsync
        self._lock_timeout = options.lock_timeout
        self._heads = self.root / "heads"
        self._blobs = self.root / "blobs" / "sha256"
        self._refs = self.root / "refs"
        self._tmp = self.root / "tmp"
        if not self.root.is_dir() and not config.create:
            raise StoreConfigError(
                "the store directory does not exist (create=false)", store=display
            )
        try:
            for d in (self._heads, self._blobs, self._refs, self._tmp):
                d.mkdir(parents=True, exist_ok=True)
            (self.root / "lock").touch(exist_ok=True)
        except OSError as exc:
            raise StoreConfigError(
                f"cannot create the store directory: {exc}", store=display
            ) from exc
        self._clean_tmp()

    def _clean_tmp(self) -> None:
        """Remove temp files a crashed writer left behind (older than an hour)."""
        cutoff = time.time() - _STALE_TMP_SECONDS
        for p in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()

    # ---------------------------------------------------------------- helpers
    async def _io(self, key: Path, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` in a thread; an OSError becomes ``Unavailable``."""
        try:
            return await asyncio.to_thread(fn)
        except OSError as exc:
            rel = key.relative_to(self.root) if key.is_relative_to(self.root) else key
            raise Unavailable(
                f"file system error: {exc.strerror or exc}", store=self.display, key=str(rel)
            ) from exc

    def _head_path(self, name: str) -> Path:
        return self._heads / f"{name}.json"

    def _blob_path(self, cid: str) -> Path:
        h = content_hex(cid)
        return self._blobs / h[:2] / h

    def _sync_dir(self, path: Path) -> None:
        if self._fsync:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _write_file(self, path: Path, data: bytes) -> None:
        """Atomically replace ``path`` with ``data`` (temp file, fsync, rename, fsync dir)."""
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._sync_dir(path.parent.parent)
        tmp = self._tmp / f"{path.name}.{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._sync_dir(path.parent)

    def _unlink(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            self._sync_dir(path.parent)

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    # ---------------------------------------------------------------- readers
    async def read_head(self, name: str) -> bytes | None:
        path = self._head_path(name)
        return await self._io(path, lambda: self._read(path))

    async def read_heads(self) -> dict[str, bytes]:
        def scan() -> dict[str, bytes]:
            out = {}
            for entry in os.scandir(self._heads):
                name = entry.name.removesuffix(".json")
                if entry.name.endswith(".json") and NAME_RE.fullmatch(name):
                    raw = self._read(Path(entry.path))
                    if raw is not None:  # deleted since the scan: skip
                        out[name] = raw
            return out

        return await self._io(self._heads, scan)

    async def read_blob(self, cid: str) -> bytes | None:
        path = self._blob_path(cid)
        return await self._io(path, lambda: self._read(path))

    async def read_epoch(self) -> int:
        path = self.root / "epoch"
        raw = await self._io(path, lambda: self._read(path))
        try:
            return int(raw) if raw else 0
        except ValueError:
            raise Corrupt(
                f"unreadable epoch file {raw!r:.60}", store=self.display, key="epoch"
            ) from None

    # ---------------------------------------------------------------- writers
    async def _acquire(self) -> int:
        path = self.root / "lock"
        fd = await self._io(path, lambda: os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
        deadline = time.monotonic() + self._lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise Unavailable(
                        f"another writer held the write lock for more than {self._lock_timeout}s",
                        store=self.display,
                        key="lock",
                    ) from None
                await asyncio.sleep(0.002 + random.random() * 0.01)
            except OSError as exc:
                os.close(fd)
                raise Unavailable(
                    f"cannot lock: {exc.strerror}", store=self.display, key="lock"
                ) from exc

    async def _release(self, lock: Any) -> None:
        try:
            fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            os.close(lock)

    async def _txn_read_epoch(self) -> tuple[int, Any]:
        return await self.read_epoch(), None

    async def _txn_read_head(self, name: str) -> tuple[bytes | None, Any]:
        return await self.read_head(name), None

    async def _ref_names(self, cid: str) -> set[str]:
        d = self._refs / content_hex(cid)

        def scan() -> set[str]:
            try:
                return {n for n in os.listdir(d) if NAME_RE.fullmatch(n)}
            except FileNotFoundError:
                return set()

        return await self._io(d, scan)

    async def _write_blob(self, cid: str, data: bytes) -> None:
        path = self._blob_path(cid)
        await self._io(path, lambda: self._write_file(path, data))

    async def _write_head(self, name: str, record: bytes | None, token: Any) -> None:
        path = self._head_path(name)
        if record is None:
            await self._io(path, lambda: self._unlink(path))
        else:
            await self._io(path, lambda: self._write_file(path, record))

    async def _write_epoch(self, epoch: int, token: Any) -> None:
        path = self.root / "epoch"
        await self._io(path, lambda: self._write_file(path, b"%d\n" % epoch))

    async def _add_ref(self, cid: str, name: str) -> None:
        path = self._refs / content_hex(cid) / name
        await self._io(path, lambda: self._write_file(path, b""))

    async def _remove_ref(self, cid: str, name: str) -> None:
        path = self._refs / content_hex(cid) / name

        def remove() -> None:
            self._unlink(path)
            with contextlib.suppress(OSError):  # not empty or already gone
                path.parent.rmdir()

        await self._io(path, remove)

    async def _delete_blob(self, cid: str) -> None:
        path = self._blob_path(cid)
        await self._io(path, lambda: self._unlink(path))

    async def aclose(self) -> None:
        return None
