"""The local-directory backend (``file:///path``), the embedded default.

Layout under the root (docs/stores.md)::

    heads/<name>/<rev>        head records, rev as 12 digits; the highest one is the head
    versions/<name>/<n>       version objects, n as 12 digits
    tmp/                      files being written (same file system, for link)

Every file is written to ``tmp/`` and fsynced, then put in place with ``link()``,
which fails when the target exists: that is the conditional create of version
objects, and of head revisions, so swapping the head read at rev ``r`` is creating
rev ``r + 1``. A revision is removed only when it is older than twice the longest
write deadline (``MAX_WRITE_TIMEOUT``): a writer still holding the rev before it
has given up by then, so ``r + 1`` cannot be created twice. No file is ever locked
or rewritten; a writer killed anywhere leaves at most a temp file or an unused
version object.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pemn.store.backend import Backend
from pemn.store.errors import DeadlineExceeded, StoreConfigError, Unavailable
from pemn.store.names import NAME_RE
from pemn.store.options import MAX_WRITE_TIMEOUT, FileConfig, StoreOptions

__all__ = ["FileBackend"]

T = TypeVar("T")
_STALE_TMP_SECONDS = 3600


def _revs(d: Path | str) -> list[int]:
    try:
        return sorted(int(n) for n in os.listdir(d) if n.isdigit())
    except FileNotFoundError:
        return []


class FileBackend(Backend):
    def __init__(self, display: str, config: FileConfig, options: StoreOptions) -> None:
        self.display = display
        self.root = config.root
        self._fsync = config.fsync
        self._heads, self._versions, self._tmp = (
            self.root / d for d in ("heads", "versions", "tmp")
        )
        if not self.root.is_dir() and not config.create:
            raise StoreConfigError(
                "the store directory does not exist (create=false)", store=display
            )
        try:
            for d in (self._heads, self._versions, self._tmp):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreConfigError(
                f"cannot create the store directory: {exc}", store=display
            ) from exc
        cutoff = time.time() - _STALE_TMP_SECONDS  # temp files of writers that died
        for p in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()

    async def _io(self, key: str, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` in a thread; an OSError becomes ``Unavailable``."""
        try:
            return await asyncio.to_thread(fn)
        except OSError as exc:
            raise Unavailable(
                f"file system error: {exc.strerror or exc}", store=self.display, key=key
            ) from exc

    def _sync_dir(self, path: Path) -> None:
        if self._fsync:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _place(self, data: bytes, target: Path, deadline: float | None = None) -> bool:
        """Create ``target`` holding ``data`` unless it exists (then False)."""
        tmp = self._tmp / uuid.uuid4().hex
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
            if not target.parent.is_dir():
                target.parent.mkdir(parents=True, exist_ok=True)
                self._sync_dir(target.parent.parent)
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    "no commit within its deadline; abandoned",
                    store=self.display,
                    key=target.parent.name,
                )
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            self._sync_dir(target.parent)
            return True
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _read_head(self, name: str) -> tuple[bytes | None, Any]:
        d = self._heads / name
        for _ in range(5):
            revs = _revs(d)
            if not revs:
                v1 = self._heads / f"{name}.json"  # a store v1 record: decoding says so
                return (v1.read_bytes() if v1.is_file() else None), None
            with contextlib.suppress(FileNotFoundError):  # removed by a newer swap: look again
                return (d / f"{revs[-1]:012d}").read_bytes(), revs[-1]
        raise Unavailable("the head kept changing while reading it", store=self.display, key=name)

    async def read_head(self, name: str) -> tuple[bytes | None, Any]:
        return await self._io(name, lambda: self._read_head(name))

    async def read_heads(self) -> dict[str, bytes]:
        def scan() -> dict[str, bytes]:
            out = {}
            for entry in os.scandir(self._heads):
                name = entry.name.removesuffix(".json")
                raw = self._read_head(name)[0] if NAME_RE.fullmatch(name) else None
                if raw is not None:
                    out[name] = raw
            return out

        return await self._io("heads", scan)

    async def swap_head(self, name: str, token: Any, record: bytes, deadline: float) -> bool:
        rev = (token or 0) + 1
        d = self._heads / name

        def swap() -> bool:
            if not self._place(record, d / f"{rev:012d}", deadline):
                return False
            cutoff = time.time() - 2 * MAX_WRITE_TIMEOUT
            for r in _revs(d)[:-1]:
                with contextlib.suppress(FileNotFoundError):
                    if (d / f"{r:012d}").stat().st_mtime < cutoff:
                        (d / f"{r:012d}").unlink()
            return True

        return await self._io(name, swap)

    async def create_version(self, name: str, version: int, data: bytes) -> bool:
        target = self._versions / name / f"{version:012d}"
        return await self._io(f"{name}@{version}", lambda: self._place(data, target))

    async def read_version(self, name: str, version: int) -> bytes | None:
        path = self._versions / name / f"{version:012d}"

        def read() -> bytes | None:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

        return await self._io(f"{name}@{version}", read)

    async def delete_versions(self, name: str, versions: list[int]) -> None:
        def remove() -> None:
            for v in versions:
                with contextlib.suppress(FileNotFoundError):
                    (self._versions / name / f"{v:012d}").unlink()

        await self._io(name, remove)

    async def marker(self) -> str:
        def scan() -> str:
            h = hashlib.sha256()
            for entry in sorted(os.scandir(self._heads), key=lambda e: e.name):
                revs = _revs(entry.path) if entry.is_dir() else [entry.stat().st_mtime_ns]
                h.update(f"{entry.name}={revs[-1] if revs else 0};".encode())
            return h.hexdigest()[:32]

        return await self._io("heads", scan)

    async def aclose(self) -> None:
        return None
