"""Typed errors of the bundle stores.

Every error is a ``StoreError`` with a stable ``code`` (``store.*``), the store it
came from (``store``: the URL without credentials) and the key it concerns (``key``:
a bundle name, ``name@version``, or ``None``). Messages are one sentence naming both.
The service maps them to HTTP statuses (docs/stores.md has the table).
"""

from __future__ import annotations

__all__ = [
    "Corrupt",
    "DeadlineExceeded",
    "InvalidBundle",
    "InvalidName",
    "NeedsMigration",
    "NotFound",
    "PreconditionFailed",
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
    """No bundle under that name, or no such retained version."""

    code = "store.not_found"


class PreconditionFailed(StoreError):
    """``if_match`` did not match the content id of the name's latest version.

    ``expected`` is what the caller gave, ``current`` the latest content id (``None``
    when the name does not exist). Nothing was written."""

    code = "store.precondition_failed"

    def __init__(self, *, store: str | None, key: str, expected: str, current: str | None) -> None:
        self.expected = expected
        self.current = current
        now = f"the latest version is {current}" if current else "the name does not exist"
        super().__init__(f"if_match {expected} does not hold: {now}", store=store, key=key)


class InvalidName(StoreError, ValueError):
    """A bundle name or content id that breaks the rules (see ``pemn.store.names``)."""

    code = "store.invalid_name"


class InvalidBundle(StoreError, ValueError):
    """The bytes are not a valid bundle; nothing was written. ``bundle_code`` and
    ``field`` carry the bundle reader's error code and field (or ``None``)."""

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
    """The backend did not answer (connection refused, timeout, server refusing).

    Raised after the bounded retries; nothing stored is lost or half-written. A write
    that raised it is not known to have committed; repeating it is safe."""

    code = "store.unavailable"


class DeadlineExceeded(Unavailable):
    """A write did not commit within its deadline and was abandoned: it will not
    commit later (docs/stores.md, "Deadlines")."""

    code = "store.deadline_exceeded"


class Corrupt(StoreError):
    """Stored data failed its check (sha256 mismatch, missing version object,
    unreadable record). The store never returns bytes that fail verification."""

    code = "store.corrupt"


class NeedsMigration(StoreError):
    """The store holds records of the store v1 layout; convert it with
    ``python -m pemn store migrate URL``."""

    code = "store.needs_migration"


class StoreConfigError(StoreError, ValueError):
    """A store URL or option that cannot be used (unknown scheme, bad option value)."""

    code = "store.bad_config"
