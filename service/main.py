"""Builds the FastAPI app: ``uvicorn service.main:app`` or ``python -m service``."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from service import __version__
from service.context import RequestContext
from service.errors import install_error_handlers
from service.limits import BodyLimits
from service.routes import models, ops, predict, ui, v2
from service.settings import Settings, get_settings
from service.state import ServiceState

__all__ = ["create_app"]

_DESCRIPTION = """
Serve many task networks that are each a random seed plus 1-bit masks (PEMN).
Upload bundles to `/models`, run them with `/predict` (or the Open Inference
Protocol v2 under `/v2`). Every request names its model; tasks that share a
backbone share its fixed weights.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = ServiceState(settings)
        app.state.service = service
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="pemn-serve", version=__version__, description=_DESCRIPTION, lifespan=lifespan
    )
    install_error_handlers(app)
    # Outermost last: the request id wraps everything, the body budget the routes.
    app.add_middleware(
        BodyLimits, budget_bytes=settings.body_budget_bytes, timeout_s=settings.body_timeout_s
    )
    app.add_middleware(RequestContext)
    app.include_router(models.router)
    app.include_router(predict.router)
    app.include_router(v2.router)
    app.include_router(ops.router)
    app.include_router(ui.router)
    ui.mount(app)
    _document_oip_schemas(app)
    return app


def _document_oip_schemas(app: FastAPI) -> None:
    """The OIP infer routes (for the binary extension) and /predict (for one-pass
    JSON parsing) read their body themselves; add their JSON schemas to the OpenAPI
    components they reference."""
    from fastapi.openapi.utils import get_openapi

    from service.schemas import InferRequest, InferResponse, PredictRequest

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (InferRequest, InferResponse, PredictRequest):
                full = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(full.pop("$defs", {}))
                components[model.__name__] = full
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


@functools.cache
def _default_app() -> FastAPI:
    return create_app()


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.main:app` builds the app from the environment on first access,
    # so importing this module reads no settings.
    if name == "app":
        return _default_app()
    raise AttributeError(name)
