"""The primitives every backend implements (``Backend``); the semantics built on them
live once in ``pemn.store.core``.

Per name a backend keeps a **head** (replaced only by ``swap_head``, a compare-and-
swap on the token ``read_head`` returned) and **version objects** (created only by
``create_version``, a conditional create that fails when the object exists). There
is no other write, no lock and no cross-name state except the change marker, which
only announces (``marker``, ``open_hint``). Every method raises ``Unavailable``
(naming the store and key) when the backend does not answer.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

__all__ = ["Backend", "Hint"]


class Hint(ABC):
    """A fast change hint (Redis pub/sub): ``event`` is set when a change may have
    happened and after every (re)subscription. Watchers poll the marker as well."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    @abstractmethod
    async def aclose(self) -> None: ...


class Backend(ABC):
    display: str  # the store URL without credentials, for messages
    # True: swap_head itself refuses to commit after its deadline (the server checks),
    # so a caller may stop waiting at any time. False: a started swap is waited for.
    server_deadline = False

    @abstractmethod
    async def read_head(self, name: str) -> tuple[bytes | None, Any]:
        """The head record of ``name`` (None: there is none) and the CAS token to
        swap it with."""

    @abstractmethod
    async def read_heads(self) -> dict[str, bytes]:
        """Every name's head record (each consistent; Redis: one snapshot)."""

    @abstractmethod
    async def swap_head(self, name: str, token: Any, record: bytes, deadline: float) -> bool:
        """Replace the head if it is still what ``token`` was read from (``None``: if
        there is none) and ``time.monotonic() < deadline``; False if it changed.
        Raises ``DeadlineExceeded`` when the deadline passed before the commit."""

    @abstractmethod
    async def create_version(self, name: str, version: int, data: bytes) -> bool:
        """Write a version object unless it exists (then False); complete or absent."""

    @abstractmethod
    async def read_version(self, name: str, version: int) -> bytes | None: ...

    @abstractmethod
    async def delete_versions(self, name: str, versions: list[int]) -> None:
        """Remove version objects no head refers to any more (missing ones: fine)."""

    @abstractmethod
    async def marker(self) -> str:
        """A value that changes whenever any head changes (cheap to poll)."""

    async def open_hint(self) -> Hint | None:
        """A change hint, or None when the backend has none (then watchers poll)."""
        return None

    @abstractmethod
    async def aclose(self) -> None: ...
