"""Errors: the domain errors raised below the routes, and the one place where they
(and the library's typed errors) become HTTP answers.

Every 4xx/5xx body is ``{"error": <one sentence>, "code": <stable code>}``. The
catalog, the caches, the batcher and the runtimes raise ``DomainError``
subclasses, which know nothing of HTTP; ``_DOMAIN_STATUS`` maps them to a status.
Routes raise ``APIError`` for what only HTTP knows (headers, bodies). Anything else
is logged once, with a traceback and the request id, and answered with a generic
500 by ``service.context.RequestContext``. Store errors name the store's address
only to authenticated callers (``service.auth``, ``service.redact``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pemn.bundle import BundleError
from pemn.store import (
    InvalidBundle,
    InvalidName,
    NeedsMigration,
    NotFound,
    PreconditionFailed,
    StoreError,
    TooLarge,
    Unavailable,
)
from service.auth import is_authenticated

__all__ = [
    "APIError",
    "BadImage",
    "BadInput",
    "DeadlineExceeded",
    "DomainError",
    "ImageTooLarge",
    "ModelNotFound",
    "NotReady",
    "Overloaded",
    "ShuttingDown",
    "TooManyItems",
    "Unservable",
    "UnsupportedImage",
    "install_error_handlers",
]

log = logging.getLogger("service")


class DomainError(Exception):
    """An expected failure of the serving pipeline: a stable ``code`` and one sentence."""

    code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ModelNotFound(DomainError):
    code = "model.not_found"


class BadInput(DomainError):
    """The request's inputs do not fit the model (shape, dtype, values, limits)."""

    code = "request.bad_input"


class TooManyItems(DomainError):
    """More items (or values: ``service.bounds``) than one request may send."""

    code = "request.too_many_items"


class BadImage(BadInput):
    """An image that cannot be decoded (corrupt, truncated) or used (its mode)."""

    code = "image.unreadable"


class ImageTooLarge(DomainError):
    """An image over the encoded-size or pixel limits (decompression bombs)."""

    code = "image.too_large"


class UnsupportedImage(DomainError):
    """A file that is not one of the image formats the server decodes."""

    code = "image.unsupported_format"


class Unservable(DomainError):
    """The stored bundle of a model cannot be built (e.g. its prototype digest does
    not match its backbone); only the requests for that model fail."""

    code = "model.unservable"


class Overloaded(DomainError):
    code = "server.overloaded"


class NotReady(DomainError):
    code = "server.not_ready"


class ShuttingDown(DomainError):
    code = "server.shutting_down"


class DeadlineExceeded(DomainError):
    code = "request.timeout"


_DOMAIN_STATUS: dict[type[DomainError], int] = {
    ModelNotFound: 404,
    BadInput: 422,
    TooManyItems: 413,
    ImageTooLarge: 413,
    UnsupportedImage: 415,
    Unservable: 422,
    Overloaded: 503,
    NotReady: 503,
    ShuttingDown: 503,
    DeadlineExceeded: 504,
}


def domain_status(exc: DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in _DOMAIN_STATUS:
            return _DOMAIN_STATUS[cls]
    return 500


class APIError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def _body(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return (
            400,
            "request.malformed_json",
            f"request body is not valid JSON: {first.get('msg', '')}",
        )
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    where = ".".join(loc) or "request"
    return 422, "request.invalid", f"{where}: {first.get('msg', 'invalid value')}"


def _store_text(request: Request, exc: StoreError) -> str:
    """The error's sentence; the store's address hidden unless the caller has the key."""
    svc = getattr(request.app.state, "service", None)
    if svc is None or is_authenticated(request, svc.settings):
        return str(exc)
    return str(svc.store_address.hide(str(exc)))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return _body(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        status = domain_status(exc)
        headers = {"Retry-After": "1"} if status == 503 else None
        return _body(status, exc.code, exc.message, headers)

    @app.exception_handler(BundleError)
    async def _bundle(request: Request, exc: BundleError) -> JSONResponse:
        status = 413 if exc.code == "bundle.too_large" else 422
        return _body(status, exc.code, f"invalid bundle: {exc}")

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        text = _store_text(request, exc)
        if isinstance(exc, TooLarge):
            return _body(413, exc.code, text)
        if isinstance(exc, InvalidBundle):
            return _body(422, getattr(exc, "bundle_code", None) or exc.code, text)
        if isinstance(exc, InvalidName):
            return _body(422, exc.code, text)
        if isinstance(exc, NotFound):
            return _body(404, exc.code, text)
        if isinstance(exc, PreconditionFailed):
            return _body(412, exc.code, text)
        if isinstance(exc, Unavailable | NeedsMigration):  # a deadline too: try again later
            return _body(503, exc.code, text, {"Retry-After": "1"})
        # Corrupt (stored bytes fail their check) or a store bug: logged, a 500.
        log.error(
            "store failure on %s %s (request %s): %s",
            request.method,
            request.url.path,
            getattr(request.state, "request_id", "-"),
            exc,
        )
        return _body(500, exc.code, text)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message = _validation_message(exc)
        return _body(status, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, f"http_{exc.status_code}"
        )
        message = str(exc.detail)
        if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            message = f"{message.lower()}: {request.method} {request.url.path}"
        return _body(exc.status_code, code, message, getattr(exc, "headers", None))
