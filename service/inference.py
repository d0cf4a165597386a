"""One inference pipeline for every endpoint, within the request's deadline:

    resolve  the model's record in the catalog (404 before anything else)
    validate the inputs against the record's input spec (nothing loaded yet)
    get      the task from the residency tiers (packed; ONNX: its session)
    submit   it to the batcher, which runs it in the lane of its backbone
    format   (the route) the logits as the endpoint's response

Metrics are recorded either way. Errors are domain errors (``service.errors``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from service.catalog import ModelRecord
from service.errors import BadInput, DeadlineExceeded, DomainError, NotReady, domain_status
from service.runtimes import OnnxRunner
from service.state import ServiceState

__all__ = ["Result", "infer"]


@dataclass
class Result:
    record: ModelRecord
    runtime: str  # what ran it: torch or onnx
    logits: np.ndarray  # (b, K) float32


async def infer(
    svc: ServiceState,
    endpoint: str,
    model: str,
    version: int | None,
    decode: Callable[[ModelRecord], np.ndarray | Awaitable[np.ndarray]],
    timeout_ms: float | None = None,
) -> Result:
    """``decode(record)`` turns the request's inputs into (b, C, H, W) float32 for the
    resolved model, checking them against its input spec (it raises ``BadInput``);
    it may be a coroutine function (images decode off the event loop)."""
    start = time.perf_counter()
    limit = svc.settings.max_request_timeout_ms
    timeout_s = (timeout_ms or svc.settings.request_timeout_ms) / 1000
    status = 500
    registry = svc.registry
    label = svc.metrics.model_label(model) if model in registry.catalog else "_unknown"
    try:
        if timeout_ms is not None and not 0 < timeout_ms <= limit:
            raise BadInput(f"timeout_ms {timeout_ms:g} is not within (0, {limit:g}] ms")
        if not svc.ready:
            raise NotReady(f"the server is not ready yet ({svc.status})")
        record = await registry.resolve(model, version)
        decoded = decode(record)
        x = await decoded if inspect.isawaitable(decoded) else decoded
        runtime = registry.runtime_for(record.name)
        try:
            task = await asyncio.wait_for(registry.task(record, runtime), timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"model {model!r} was still loading after {timeout_s * 1000:.0f} ms"
            ) from None
        remaining = timeout_s - (time.perf_counter() - start)
        if remaining <= 0:
            raise DeadlineExceeded(
                f"no result for model {model!r} within {timeout_s * 1000:.0f} ms"
            )
        lane = registry.lane(record, runtime)
        logits = await svc.batcher.submit(lane, task, x, remaining, label)
        status = 200
        return Result(record, "onnx" if isinstance(task, OnnxRunner) else "torch", logits)
    except DomainError as exc:
        status = domain_status(exc)
        raise
    finally:
        svc.metrics.requests.labels(label, endpoint, str(status)).inc()
        if status == 200:
            svc.metrics.latency.labels(label, endpoint).observe(time.perf_counter() - start)
