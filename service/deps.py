"""Dependencies shared by the routers (``Annotated`` aliases, as in the FastAPI template)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from service.errors import APIError
from service.state import ServiceState

__all__ = ["AdminDep", "ServiceDep", "get_service", "require_api_key"]


# Both are ``async def``: FastAPI runs a plain ``def`` dependency in its threadpool,
# a thread hop per request for what is an attribute read.
async def get_service(request: Request) -> ServiceState:
    service: ServiceState = request.app.state.service
    return service


ServiceDep = Annotated[ServiceState, Depends(get_service)]


async def require_api_key(request: Request, svc: ServiceDep) -> None:
    """When ``PEMN_API_KEY`` is set, model changes need it as ``X-API-Key`` or a bearer token."""
    if svc.settings.api_key is None:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not given:
        raise APIError(
            401,
            "auth.missing_key",
            "this endpoint needs an API key (X-API-Key header or bearer token)",
            {"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(given.encode(), svc.settings.api_key.get_secret_value().encode()):
        raise APIError(
            401, "auth.invalid_key", "the API key is not valid", {"WWW-Authenticate": "Bearer"}
        )


AdminDep = Depends(require_api_key)
