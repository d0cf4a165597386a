"""Per-request context (an ASGI middleware): a request id, client disconnects and
unexpected errors, each logged once.

* Every answer carries ``X-Request-ID``: the client's own (when it is a short token
  of letters, digits, ``-``, ``_`` and ``.``) or a new random one.
* A client that disconnects before its body was read (Starlette's
  ``ClientDisconnect``) is one info line: nothing to answer, nothing went wrong.
* Any other exception that escapes the app is logged with one traceback and the
  request id, and answered with a generic 500 naming that id (when no answer has
  started). It is not re-raised, so neither Starlette nor uvicorn logs it again.

It is installed inside Starlette's outermost middleware, so it sees what the
routes' error handlers do not handle, and nothing else.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Any

from starlette.requests import ClientDisconnect

__all__ = ["RequestContext"]

log = logging.getLogger("service")

_CLIENT_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


def _request_id(scope: dict[str, Any]) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id" and _CLIENT_ID.fullmatch(value):
            return str(value.decode("ascii"))
    return secrets.token_hex(8)


class RequestContext:
    """ASGI middleware; the id is also in ``request.state.request_id``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        where = f"{scope.get('method', '?')} {scope.get('path', '?')}"
        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            log.info("client disconnected before its request was read: %s (request %s)", where, rid)
        except Exception:
            log.exception("unexpected error on %s (request %s)", where, rid)
            if not started:
                body = json.dumps(
                    {
                        "error": f"internal server error; the failure was logged as request {rid}",
                        "code": "internal",
                        "request_id": rid,
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-request-id", rid.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
