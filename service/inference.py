"""One inference path for every endpoint: resolve the model, get its materialized
task (loading it once if cold), validate the inputs, and run them through the
batcher, all within the request's deadline; record metrics either way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.errors import APIError
from service.registry import Loaded
from service.state import ServiceState

__all__ = ["Result", "infer"]


@dataclass
class Result:
    loaded: Loaded
    logits: np.ndarray  # (b, K) float32


async def infer(
    svc: ServiceState,
    endpoint: str,
    model: str,
    version: int | None,
    decode: Callable[[Loaded], np.ndarray],
    timeout_ms: float | None = None,
) -> Result:
    """``decode(loaded)`` turns the request's inputs into (b, C, H, W) float32 for
    the resolved task (it raises ``APIError`` on bad input)."""
    start = time.perf_counter()
    timeout_s = (timeout_ms or svc.settings.request_timeout_ms) / 1000
    status = 500
    label = svc.metrics.model_label(model) if model in svc.registry.names else "_unknown"
    try:
        if not svc.ready:
            raise APIError(
                503,
                "server.not_ready",
                f"the server is not ready yet ({svc.status})",
                {"Retry-After": "1"},
            )
        ref = await svc.registry.resolve(model, version)
        try:
            loaded = await asyncio.wait_for(svc.registry.get(ref), timeout_s)
        except TimeoutError:
            raise APIError(
                504,
                "request.timeout",
                f"model {model!r} was still loading after {timeout_s * 1000:.0f} ms",
            ) from None
        x = decode(loaded)
        remaining = timeout_s - (time.perf_counter() - start)
        if remaining <= 0:
            raise APIError(
                504,
                "request.timeout",
                f"no result for model {model!r} within {timeout_s * 1000:.0f} ms",
            )
        logits = await svc.batcher.submit(loaded, x, remaining)
        status = 200
        return Result(loaded, logits)
    except APIError as exc:
        status = exc.status
        raise
    finally:
        svc.metrics.requests.labels(label, endpoint, str(status)).inc()
        if status == 200:
            svc.metrics.latency.labels(label, endpoint).observe(time.perf_counter() - start)
