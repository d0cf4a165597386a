"""Request bodies held in memory, bounded across all requests: an ASGI middleware.

Each route caps its own body (``PEMN_MAX_REQUEST_BYTES``, ``PEMN_MAX_UPLOAD_BYTES``);
this middleware bounds what all of them hold together and how long one may take:

* a global budget of body bytes (``PEMN_BODY_BUDGET_BYTES``): every chunk a route
  reads is charged to it until that request's answer is sent; a chunk that would
  exceed it fails the request with ``503`` + ``Retry-After`` (and closes the
  connection), so N slow clients cannot make the server hold N x 32 MiB;
* a deadline for the whole body (``PEMN_BODY_TIMEOUT_S``) from the route's first
  read: ``408`` and close beyond it, so a client that sent its headers and stops
  (or trickles) does not hold a connection and its buffers for ever.

Both surface in the route as an ``APIError`` raised from ``receive()``, so the
normal error handlers write the answer.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from service.errors import APIError

__all__ = ["BodyLimits"]

Scope = dict[str, Any]
Message = dict[str, Any]


class BodyLimits:
    """ASGI middleware: ``app = BodyLimits(app, budget_bytes=..., timeout_s=...)``."""

    def __init__(self, app: Any, *, budget_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.budget_bytes = budget_bytes
        self.timeout_s = timeout_s
        self.in_use = 0  # body bytes held by requests in flight (read by /status)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held = 0
        deadline: float | None = None
        done = False
        loop = asyncio.get_running_loop()

        async def limited_receive() -> Message:
            nonlocal held, deadline, done
            if done:  # body complete: later reads wait for the disconnect, unbounded
                return dict(await receive())
            if deadline is None:
                deadline = loop.time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = dict(await receive())
            except TimeoutError:
                done = True
                raise APIError(
                    408,
                    "request.body_timeout",
                    f"the request body was not received within {self.timeout_s:g} s",
                    {"Connection": "close"},
                ) from None
            if message["type"] != "http.request":
                done = True
                return message
            size = len(message.get("body", b""))
            if size:
                if self.in_use + size > self.budget_bytes:
                    done = True
                    raise APIError(
                        503,
                        "server.body_budget",
                        "the server holds too many request bodies at the moment "
                        f"({self.budget_bytes}-byte budget); retry shortly",
                        {"Retry-After": "1", "Connection": "close"},
                    )
                self.in_use += size
                held += size
            if not message.get("more_body", False):
                done = True
                deadline = math.inf
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.in_use -= held
