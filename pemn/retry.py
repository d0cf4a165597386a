"""Retrying a call with exponential backoff while its failure is one worth waiting
out (a store that is not reachable yet), on tenacity.

The policy: the n-th pause is ``min(first * 2**(n-1), cap)`` seconds, times a
uniform factor in [0.5, 1.5) with ``jitter``; retrying stops after ``attempts``
calls or once ``deadline_s`` seconds have passed since the first call (the last
pause is shortened so that a final call happens at the deadline), whichever comes
first, and then the last error is raised as it was. No limit: retry until success.

    unreachable = RetryPolicy(lambda e: isinstance(e, Unavailable), first=0.5, cap=5.0,
                              deadline_s=30, on_retry=print_wait)
    unreachable.call(lambda: store.put(name, data))
    await RetryPolicy(..., first=0.25, cap=5.0).call_async(registry.sync)

Standard library and tenacity only (no torch), for the store and the service too.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
)

__all__ = ["Backoff", "RetryPolicy"]

T = TypeVar("T")


class Backoff:
    """tenacity ``wait``: the pause before the next attempt (see the module doc)."""

    def __init__(
        self, first: float, cap: float, *, jitter: bool = False, deadline_s: float | None = None
    ) -> None:
        if not 0 <= first <= cap:
            raise ValueError(f"need 0 <= first <= cap, got first={first}, cap={cap}")
        self.first, self.cap, self.jitter, self.deadline_s = first, cap, jitter, deadline_s

    def delay(self, failures: int) -> float:
        """The pause after ``failures`` failed attempts (1, 2, ...), before the deadline."""
        d = min(self.first * 2.0 ** (failures - 1), self.cap)
        return d * (0.5 + random.random()) if self.jitter else d

    def __call__(self, state: RetryCallState) -> float:
        d = self.delay(state.attempt_number)
        if self.deadline_s is not None:
            elapsed = state.seconds_since_start or 0.0
            d = max(0.0, min(d, self.deadline_s - elapsed))
        return d


@dataclass(frozen=True)
class RetryPolicy:
    """When to call again (``retry_if`` accepts the error) and how long to wait;
    ``on_retry(error, pause_s)`` runs before each pause."""

    retry_if: Callable[[BaseException], bool]
    first: float  # seconds of the first pause
    cap: float = float("inf")  # longest pause
    deadline_s: float | None = None  # stop retrying this long after the first call
    attempts: int | None = None  # stop after this many calls
    jitter: bool = False
    on_retry: Callable[[BaseException, float], None] | None = None

    def _tenacity(self) -> dict[str, Any]:
        stop: Any = stop_never
        if self.deadline_s is not None:
            stop = stop_after_delay(self.deadline_s)
        if self.attempts is not None:
            by_count = stop_after_attempt(self.attempts)
            stop = by_count if stop is stop_never else stop | by_count
        return {
            "retry": retry_if_exception(self.retry_if),
            "stop": stop,
            "wait": Backoff(self.first, self.cap, jitter=self.jitter, deadline_s=self.deadline_s),
            "before_sleep": self._before_sleep,
            "reraise": True,
        }

    def _before_sleep(self, state: RetryCallState) -> None:
        if self.on_retry is not None and state.outcome is not None and state.next_action:
            exc = state.outcome.exception()
            assert exc is not None
            self.on_retry(exc, state.next_action.sleep)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, called again after a pause while it fails with a retryable error."""
        return Retrying(**self._tenacity())(fn)

    async def call_async(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` likewise (pauses are ``asyncio.sleep``)."""
        return await AsyncRetrying(**self._tenacity())(fn)
