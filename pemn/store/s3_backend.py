"""The S3-compatible backend (``s3://bucket/prefix?endpoint_url=...``), on obstore.

Key layout under the prefix ``P/`` (docs/stores.md)::

    P/heads/<name>.json       head record, swapped with PutObject If-Match: <its ETag>
                              (If-None-Match: * for a name without one)
    P/versions/<name>/<n>     version objects, n as 12 digits, PutObject If-None-Match: *

The change marker is a digest of the ETags in one listing of ``P/heads/`` (a request
per 1,000 names); there is no push hint. obstore's client is asynchronous (Rust), so
no call blocks a thread. The server must support conditional writes (AWS S3, MinIO,
Ceph RGW and moto do). Credentials: the URL options, else the usual ``AWS_*``
environment variables and instance metadata.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from pemn.store.backend import Backend
from pemn.store.errors import DeadlineExceeded, StoreConfigError, Unavailable
from pemn.store.names import NAME_RE
from pemn.store.options import S3Config, StoreOptions

__all__ = ["S3Backend"]

T = TypeVar("T")


class S3Backend(Backend):
    def __init__(self, display: str, config: S3Config, options: StoreOptions) -> None:
        try:
            import obstore
            from obstore import exceptions
            from obstore.store import S3Store
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise StoreConfigError(
                "the s3 backend needs obstore: pip install 'pemn-serve[s3]'", store=display
            ) from exc
        self.display = display
        self._obs, self._exc = obstore, exceptions
        keys = {"access_key_id", "secret_access_key", "session_token"}
        given = {k: getattr(config, f"aws_{k}") for k in keys if getattr(config, f"aws_{k}")}
        seconds = f"{options.timeout}s"
        self._s3 = S3Store(
            config.bucket,
            prefix=config.prefix or None,
            region=config.region or "us-east-1",
            endpoint=config.endpoint_url,
            virtual_hosted_style_request=config.addressing_style == "virtual"
            or (config.addressing_style is None and config.endpoint_url is None),
            conditional_put="etag",
            client_options={
                "timeout": seconds,
                "connect_timeout": seconds,
                "allow_http": bool(config.endpoint_url and config.endpoint_url.startswith("http:")),
            },
            retry_config={"max_retries": 0},  # the store retries, only where safe
            **given,
        )

    async def _call(self, key: str, what: Awaitable[T]) -> T:
        """Await an obstore call; failures other than a lost condition or a missing
        object become ``Unavailable``."""
        e = self._exc
        try:
            return await what
        except (FileNotFoundError, e.NotFoundError, e.AlreadyExistsError, e.PreconditionError):
            raise
        except (e.BaseError, OSError, TimeoutError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise Unavailable(f"S3: {why}", store=self.display, key=key) from exc

    async def _get(self, path: str) -> tuple[bytes | None, Any]:
        async def get() -> tuple[bytes | None, Any]:
            try:
                got = await self._obs.get_async(self._s3, path)
                return (await got.bytes_async()).to_bytes(), got.meta["e_tag"]
            except (FileNotFoundError, self._exc.NotFoundError):  # obstore raises the former
                return None, None

        return await self._call(path, get())

    async def _put(self, path: str, data: bytes, mode: Any) -> bool:
        try:
            await self._call(path, self._obs.put_async(self._s3, path, data, mode=mode))
            return True
        except (self._exc.AlreadyExistsError, self._exc.PreconditionError):
            return False

    async def _names(self) -> list[tuple[str, str]]:
        """(name, ETag) of every head, from a listing."""

        async def scan() -> list[tuple[str, str]]:
            out = []
            async for batch in self._obs.list(self._s3, prefix="heads/"):
                for meta in batch:
                    name = meta["path"].removeprefix("heads/").removesuffix(".json")
                    if NAME_RE.fullmatch(name):
                        out.append((name, str(meta["e_tag"])))
            return sorted(out)

        return await self._call("heads/", scan())

    async def read_head(self, name: str) -> tuple[bytes | None, Any]:
        return await self._get(f"heads/{name}.json")

    async def read_heads(self) -> dict[str, bytes]:
        limit = asyncio.Semaphore(8)

        async def one(name: str) -> tuple[str, bytes | None]:
            async with limit:
                return name, (await self.read_head(name))[0]

        pairs = await asyncio.gather(*(one(n) for n, _ in await self._names()))
        return {n: raw for n, raw in pairs if raw is not None}

    async def swap_head(self, name: str, token: Any, record: bytes, deadline: float) -> bool:
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(
                "no commit within its deadline; abandoned", store=self.display, key=name
            )
        mode = "create" if token is None else {"e_tag": token}
        return await self._put(f"heads/{name}.json", record, mode)

    async def create_version(self, name: str, version: int, data: bytes) -> bool:
        return await self._put(f"versions/{name}/{version:012d}", data, "create")

    async def read_version(self, name: str, version: int) -> bytes | None:
        return (await self._get(f"versions/{name}/{version:012d}"))[0]

    async def delete_versions(self, name: str, versions: list[int]) -> None:
        paths = [f"versions/{name}/{v:012d}" for v in versions]
        await self._call(name, self._obs.delete_async(self._s3, paths))

    async def marker(self) -> str:
        names = await self._names()
        return hashlib.sha256(repr(names).encode()).hexdigest()[:32]

    async def aclose(self) -> None:
        return None
