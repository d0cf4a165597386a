"""Who is calling: the API key a request carries and whether it is the server's.

``PEMN_API_KEY`` guards model changes (``deps.require_api_key``) and decides what an
answer may reveal: the store's address is shown only to callers with the key (or
to everyone when no key is configured, i.e. in development).
"""

from __future__ import annotations

import secrets

from starlette.requests import HTTPConnection

from service.settings import Settings

__all__ = ["given_key", "is_authenticated"]


def given_key(request: HTTPConnection) -> str | None:
    """The key sent as ``X-API-Key`` or as a bearer token, if any."""
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return given or None


def is_authenticated(request: HTTPConnection, settings: Settings) -> bool:
    """True when no key is configured, or the request carries it (constant-time)."""
    if settings.api_key is None:
        return True
    given = given_key(request)
    if given is None:
        return False
    return secrets.compare_digest(given.encode(), settings.api_key.get_secret_value().encode())
