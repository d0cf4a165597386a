"""Typed errors of the bundle stores.

Every error is a ``StoreError`` with a stable ``code`` (``store.*``), the store it
came from (``store``: the URL without credentials) and the key it concerns (``key``:
a bundle name, ``name@version``, a content id, or ``None``). Messages are one
sentence naming both. The service maps them to HTTP statuses:

=================  ======================  ======
class              code                    status
=================  ======================  ======
NotFound           store.not_found         404
Conflict           store.conflict          409
InvalidName        store.invalid_name      422
InvalidBundle      store.invalid_bundle    422
TooLarge           store.too_large         413 (or 422; it is an ``InvalidBundle``)
Unavailable        store.unavailable       503
Corrupt            store.corrupt           500
StoreConfigError   store.bad_config        (raised by ``open_store``; a deploy error)
=================  ======================  ======
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "Corrupt",
    "InvalidBundle",
    "InvalidName",
    "NotFound",
    "StoreConfigError",
    "StoreError",
    "TooLarge",
    "Unavailable",
]


class StoreError(Exception):
    """Base of every store error; ``code`` is stable, ``str(err)`` is for people
    (``reason`` is the message without the store and key)."""

    code = "store.error"

    def __init__(self, message: str, *, store: str | None = None, key: str | None = None) -> None:
        self.reason = message
        self.store = store
        self.key = key
        where = f"store {store}" if store else "store"
        what = f" key {key!r}" if key is not None else ""
        super().__init__(f"{where}{what}: {message}")


class NotFound(StoreError):
    """No bundle under that name / version / content id."""

    code = "store.not_found"


class Conflict(StoreError):
    """``expected_version`` did not match the current version of the name."""

    code = "store.conflict"

    def __init__(
        self, message: str, *, store: str | None, key: str, expected: int, current: int
    ) -> None:
        self.expected = expected
        self.current = current  # 0 when the name does not exist
        super().__init__(message, store=store, key=key)


class InvalidName(StoreError, ValueError):
    """A bundle name or content id that breaks the rules (see ``pemn.store.names``)."""

    code = "store.invalid_name"


class InvalidBundle(StoreError, ValueError):
    """The bytes are not a valid bundle; nothing was written.

    ``bundle_code`` and ``field`` carry the bundle reader's error code and field
    (``None`` when the reader did not give them)."""

    code = "store.invalid_bundle"

    def __init__(
        self,
        message: str,
        *,
        store: str | None,
        key: str | None,
        bundle_code: str | None = None,
        field: str | None = None,
    ) -> None:
        self.bundle_code = bundle_code
        self.field = field
        super().__init__(message, store=store, key=key)


class TooLarge(InvalidBundle):
    """The bundle is larger than the store's ``max_bundle_bytes``; nothing was written."""

    code = "store.too_large"

    def __init__(self, *, store: str | None, key: str | None, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"bundle of {size} bytes exceeds the limit of {limit} bytes (max_bundle_bytes)",
            store=store,
            key=key,
        )


class Unavailable(StoreError):
    """The backend did not answer (connection refused, timeout, lock not obtained).

    Raised after the bounded retries; nothing stored is lost or half-written."""

    code = "store.unavailable"


class Corrupt(StoreError):
    """Stored data failed its check (sha256 mismatch, missing blob, unreadable record).

    The store never returns bytes that fail verification; it raises this instead."""

    code = "store.corrupt"


class StoreConfigError(StoreError, ValueError):
    """A store URL or option that cannot be used (unknown scheme, bad option value)."""

    code = "store.bad_config"
