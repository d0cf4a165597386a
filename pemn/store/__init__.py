"""Bundle stores: one interface, three backends chosen by URL.

    from pemn.store import open_store, open_async_store
    store = open_store("file:///var/store")                        # the embedded default
    store = open_store("redis://127.0.0.1:6379/0?prefix=pemn")
    store = open_store("s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000")
    r = store.put("fashion-mlp", bundle_bytes)   # -> PutResult(version, content_id, created, ...)
    store.get("fashion-mlp").data                 # verified bytes of the latest version
    store.put("fashion-mlp", newer, if_match=r.content_id)  # replace what I saw, or 412

``open_store`` gives the synchronous ``Store`` (trainer, tools); ``open_async_store``
the ``AsyncStore`` (the service), which adds ``watch()``. Semantics, options, key
layouts: docs/stores.md.
"""

from __future__ import annotations

from typing import Any

from pemn.store.backend import Backend
from pemn.store.core import AsyncStore, default_validator
from pemn.store.errors import (
    Corrupt,
    DeadlineExceeded,
    InvalidBundle,
    InvalidName,
    NeedsMigration,
    NotFound,
    PreconditionFailed,
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
    "Corrupt",
    "DeadlineExceeded",
    "InvalidBundle",
    "InvalidName",
    "NameInfo",
    "NeedsMigration",
    "NotFound",
    "PreconditionFailed",
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
    "open_backend",
    "open_store",
    "parse_url",
    "validate_content_id",
    "validate_name",
]


def open_backend(url: str, **options: Any) -> tuple[Backend, StoreOptions]:
    """The backend for ``url`` and the parsed options (``StoreConfigError`` if bad)."""
    display, opts, config = parse_url(url, **options)
    backend: Backend
    if isinstance(config, FileConfig):
        from pemn.store.file_backend import FileBackend

        backend = FileBackend(display, config, opts)
    elif isinstance(config, RedisConfig):
        from pemn.store.redis_backend import RedisBackend

        backend = RedisBackend(display, config, opts)
    else:
        assert isinstance(config, S3Config)
        from pemn.store.s3_backend import S3Backend

        backend = S3Backend(display, config, opts)
    return backend, opts


def open_async_store(url: str, **options: Any) -> AsyncStore:
    """Open the store at ``url`` for asyncio code (no I/O happens until first use,
    except creating a local store directory). Raises ``StoreConfigError`` for a bad
    URL or option."""
    return AsyncStore(*open_backend(url, **options))


def open_store(url: str, **options: Any) -> Store:
    """Open the store at ``url`` with the synchronous API (same URL and options)."""
    parse_url(url, **options)  # a bad URL fails here, before a thread starts
    return Store(lambda: open_async_store(url, **options))
