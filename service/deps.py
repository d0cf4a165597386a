"""Dependencies shared by the routers (``Annotated`` aliases, as in the FastAPI template)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.auth import given_key, is_authenticated
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
    if given_key(request) is None:
        raise APIError(
            401,
            "auth.missing_key",
            "this endpoint needs an API key (X-API-Key header or bearer token)",
            {"WWW-Authenticate": "Bearer"},
        )
    if not is_authenticated(request, svc.settings):
        raise APIError(
            401, "auth.invalid_key", "the API key is not valid", {"WWW-Authenticate": "Bearer"}
        )


AdminDep = Depends(require_api_key)
