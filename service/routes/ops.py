"""Operations: the index, Prometheus metrics and a cache/registry status view.

``/status`` names the store (its URL without credentials) and the full startup
state only to authenticated callers (see ``service.auth``); others see the kind of
store and the state with its address hidden."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import __version__
from service.auth import is_authenticated
from service.deps import ServiceDep

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/", summary="Service index")
async def index(svc: ServiceDep) -> dict[str, Any]:
    return {
        "service": "pemn-serve",
        "version": __version__,
        "ready": svc.ready,
        "models": len(svc.registry.catalog),
        "api_key_required": svc.settings.api_key is not None,  # for POST/DELETE /models
        "docs": "/docs",
        "ui": "/ui",
        "endpoints": ["/models", "/predict", "/v2", "/v2/health/ready", "/metrics", "/status"],
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(svc: ServiceDep) -> Response:
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/status", summary="Device, cache and store status")
async def status(request: Request, svc: ServiceDep) -> dict[str, Any]:
    trusted = is_authenticated(request, svc.settings)
    return {
        "ready": svc.ready,
        "status": svc.status_detail if trusted else svc.status,
        "store": svc.store.url if trusted else svc.store_address.kind,
        "store_epoch": svc.registry.synced_epoch,
        "queue_depth": svc.batcher.depth,
        **svc.registry.stats(),
    }
