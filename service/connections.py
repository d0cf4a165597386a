"""Connection-level limits for uvicorn: what an ASGI app cannot see because it only
runs once a request's headers have arrived.

``guarded_protocol(limits, parser)`` returns a subclass of uvicorn's HTTP/1.1
protocol (httptools or h11) that adds, per connection:

* a cap on connections open at once, in all and per client address: one over the
  cap is answered ``503`` and closed at once, so its file descriptor is released
  right away (the accept path stays fd-safe: uvloop's libuv keeps a spare
  descriptor for EMFILE, and ``raise_fd_limit`` lifts the soft limit first);
* a cap on the bytes of a request's start line and headers (``431`` and close):
  uvicorn's httptools parser has none, h11's default is only checked as it parses;
* a deadline for the start line and headers, from the connection's first byte
  (or its opening) until the end of the headers (``408`` and close): uvicorn
  closes idle keep-alive connections but never one that is slowly sending headers.

Reading the body is bounded by ``service.limits`` (an ASGI middleware), which also
keeps the global budget of buffered body bytes.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["ConnectionLimits", "guarded_protocol", "raise_fd_limit"]

log = logging.getLogger("service.connections")

_FD_RESERVE = 128  # descriptors kept for the store, the log, model files and the like


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 2048
    max_connections_per_client: int = 256  # 0: no per-client cap
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0


def raise_fd_limit(max_connections: int) -> int:
    """Lift the soft ``RLIMIT_NOFILE`` to the hard limit and return the connection cap
    that fits under it (``max_connections``, or fewer with a warning)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + _FD_RESERVE
    if hard == resource.RLIM_INFINITY or hard >= want:
        target = want if hard == resource.RLIM_INFINITY else max(soft, min(hard, want))
    else:
        target = hard
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # pragma: no cover - platform specific
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    fits = max(1, soft - _FD_RESERVE)
    if fits < max_connections:
        log.warning(
            "open-file limit %d allows %d connections, not max_connections=%d",
            soft,
            fits,
            max_connections,
        )
        return fits
    return max_connections


def _answer(status: int, reason: str, text: str, extra: bytes = b"") -> bytes:
    body = (text + "\n").encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


class _Guard:
    """Mixin over a uvicorn HTTP protocol class; ``limits`` is set per subclass."""

    limits: ClassVar[ConnectionLimits]
    per_client: ClassVar[Counter[str]]
    # the base protocol's attributes this mixin uses
    connections: set[Any]
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def _phase(self) -> str:
        """``idle`` (no request begun), ``headers`` (a start line or headers begun but
        not complete) or ``body`` (headers complete, body not yet)."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._refused = False
        self._header_bytes = 0
        self._tail = b""  # the last bytes of the head so far (a blank line may straddle)
        self._header_timer: asyncio.TimerHandle | None = None
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        limits = self.limits
        per_client = limits.max_connections_per_client
        if len(self.connections) >= limits.max_connections or (
            per_client and self.per_client[self._peer] >= per_client
        ):
            self._refused = True
            transport.write(
                _answer(503, "Service Unavailable", "too many connections", b"retry-after: 1\r\n")
            )
            transport.close()
            return
        self.per_client[self._peer] += 1
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()  # the first request's headers are due within the deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        self.per_client[self._peer] -= 1
        if self.per_client[self._peer] <= 0:
            del self.per_client[self._peer]
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._phase() != "body":  # these bytes start (or continue) a request's head
            # Count up to the end of the head (a blank line), before the parser sees
            # the bytes: a 64 MB header is refused after its first 64 KiB.
            joined = self._tail + data
            end = joined.find(b"\r\n\r\n")
            head = len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            if self._header_bytes + head > self.limits.max_header_bytes:
                self._reject(
                    431,
                    "Request Header Fields Too Large",
                    f"request line and headers exceed {self.limits.max_header_bytes} bytes",
                )
                return
            self._header_bytes += head
            self._tail = joined[-3:]
            self._arm()
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            self._disarm()
        elif self._phase() != "headers":  # headers complete (or a whole request read)
            self._disarm()
            self._header_bytes = 0
            self._tail = b""
        else:
            self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._header_timeout
            )

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        cycle = getattr(self, "cycle", None)
        idle = cycle is None or cycle.response_complete  # no request being answered
        if idle and self._phase() != "body" and not self.transport.is_closing():
            self._reject(
                408,
                "Request Timeout",
                f"request headers not received within {self.limits.header_timeout_s:g} s",
            )

    def _reject(self, status: int, reason: str, text: str) -> None:
        self._disarm()
        log.info("closed a connection from %s: %s", self._peer or "?", text)
        self.transport.write(_answer(status, reason, text))
        self.transport.close()


class _HttpToolsGuard(_Guard, HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._state = "idle"
        super().connection_made(transport)

    def _phase(self) -> str:
        return self._state

    def on_message_begin(self) -> None:
        self._state = "headers"
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._state = "body"
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._state = "idle"
        super().on_message_complete()


class _H11Guard(_Guard, H11Protocol):  # type: ignore[misc]
    def _phase(self) -> str:
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            return "body"
        if state is h11.IDLE and self.conn.trailing_data[0]:
            return "headers"
        return "idle"


def guarded_protocol(
    limits: ConnectionLimits, parser: Literal["httptools", "h11"] = "httptools"
) -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol class (for ``uvicorn.run(http=...)``) with ``limits``."""
    base: type[_Guard] = _HttpToolsGuard if parser == "httptools" else _H11Guard
    return type(
        f"Guarded{base.__name__.lstrip('_')}",
        (base,),
        {"limits": limits, "per_client": Counter()},
    )
