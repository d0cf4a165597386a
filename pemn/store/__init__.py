"""Bundle stores: one interface, three backends chosen by URL.

    from pemn.store import open_store, open_async_store
    store = open_store("file:///var/store")                        # the embedded default
    store = open_store("redis://127.0.0.1:6379/0?prefix=pemn")
    store = open_store("s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000")
    r = store.put("fashion-mlp", bundle_bytes)   # -> PutResult(version, content_id, ...)
    store.get("fashion-mlp").data                 # verified bytes of the latest version

``open_store`` gives the synchronous ``Store`` (trainer, tools); ``open_async_store``
the ``AsyncStore`` (the service), which adds ``watch()``. Options: see
``pemn.store.options``; semantics, name rules and key layouts: docs/stores.md.
"""

from __future__ import annotations

from typing import Any

from pemn.store.backend import Backend
from pemn.store.core import AsyncStore, default_validator
from pemn.store.errors import (
    Conflict,
    Corrupt,
    InvalidBundle,
    InvalidName,
    NotFound,
    StoreConfigError,
    StoreError,
    TooLarge,
    Unavailable,
)
from pemn.store.names import MAX_NAME_LENGTH, content_id, validate_content_id, validate_name
from pemn.store.options import FileConfig, RedisConfig, S3Config, StoreOptions, parse_url
from pemn.store.records import NameInfo, PutResult, StoredBundle, VersionInfo
from pemn.store.sync import Store

__all__ = [
    "MAX_NAME_LENGTH",
    "AsyncStore",
    "Conflict",
    "Corrupt",
    "InvalidBundle",
    "InvalidName",
    "NameInfo",
    "NotFound",
    "PutResult",
    "Store",
    "StoreConfigError",
    "StoreError",
    "StoreOptions",
    "StoredBundle",
    "TooLarge",
    "Unavailable",
    "VersionInfo",
    "content_id",
    "default_validator",
    "open_async_store",
    "open_store",
    "validate_content_id",
    "validate_name",
]


def _backend(display: str, options: StoreOptions, config: Any) -> Backend:
    if isinstance(config, FileConfig):
        from pemn.store.file_backend import FileBackend

        return FileBackend(display, config, options)
    if isinstance(config, RedisConfig):
        from pemn.store.redis_backend import RedisBackend

        return RedisBackend(display, config, options)
    if isinstance(config, S3Config):
        from pemn.store.s3_backend import S3Backend

        return S3Backend(display, config, options)
    raise AssertionError(f"no backend for {config!r}")  # parse_url only returns the above


def open_async_store(url: str, **options: Any) -> AsyncStore:
    """Open the store at ``url`` for asyncio code (no I/O happens until first use,
    except creating a local store directory). Raises ``StoreConfigError`` for a bad
    URL or option."""
    display, opts, config = parse_url(url, **options)
    return AsyncStore(_backend(display, opts, config), opts)


def open_store(url: str, **options: Any) -> Store:
    """Open the store at ``url`` with the synchronous API (same URL and options)."""
    display, opts, config = parse_url(url, **options)
    return Store(lambda: AsyncStore(_backend(display, opts, config), opts))
