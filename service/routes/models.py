"""``/models``: upload (raw body or multipart), list, describe and delete bundles.

Writes carry the store's guarantees over HTTP: ``If-Match`` (the ``ETag`` of ``GET
/models/{name}``, the latest content id) makes an upload or delete conditional (412
when it does not hold); a write not committed within ``PEMN_WRITE_DEADLINE_S`` is
answered 503 with ``Retry-After``, and one whose client disconnects is cancelled;
neither commits later.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncGenerator, Awaitable
from pathlib import PurePosixPath
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from pemn.images import DEFAULT_RESIZE, PROVENANCE_KEY
from pemn.store import NameInfo
from service.catalog import ModelRecord
from service.deps import AdminDep, ServiceDep
from service.errors import APIError
from service.registry import Registry
from service.schemas import ModelPublic, ModelsPublic, VersionPublic

__all__ = ["model_public", "router"]

router = APIRouter(prefix="/models", tags=["models"])
T = TypeVar("T")
_WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "API key missing or wrong"},
    412: {"description": "If-Match does not hold: the latest version is another one"},
    503: {"description": "the store did not commit within the write deadline (Retry-After)"},
}


def _if_match(request: Request) -> str | None:
    """The one entity tag of an ``If-Match`` header (quotes optional), ``*``, or None."""
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    tags = [t.strip() for t in raw.split(",") if t.strip()]
    if len(tags) != 1 or tags[0].startswith("W/"):
        raise APIError(
            400,
            "request.bad_if_match",
            'If-Match takes one strong entity tag: the ETag of GET /models/{name} ("sha256:...") or *',
        )
    return tags[0].strip('"')


async def _unless_client_leaves(request: Request, write: Awaitable[T]) -> T:
    """Run ``write``; cancel it if the client disconnects first (the store then
    commits nothing, or had committed already)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    # A client may be gone before this handler runs: its request and its FIN both
    # waited in the socket (behind a stalled process, say), and uvicorn reads the FIN
    # one loop pass after the request. Look once, after that pass, before the write
    # starts; a write is a few store round trips, which a later FIN may not win.
    await asyncio.sleep(0)
    if await request.is_disconnected():
        if inspect.iscoroutine(write):
            write.close()
        raise _client_closed()
    work, left = asyncio.ensure_future(write), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({work, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if not work.done():
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        raise _client_closed()
    return work.result()


def _client_closed() -> APIError:
    return APIError(
        499, "request.client_closed", "the client disconnected; the write was cancelled"
    )


def _etag(info: NameInfo | ModelRecord) -> dict[str, str]:
    return {"ETag": f'"{info.content_id}"'}


def model_public(
    record: ModelRecord,
    registry: Registry,
    created: bool | None = None,
    versions: list[VersionPublic] | None = None,
) -> ModelPublic:
    where = registry.residency(record.content_id)
    return ModelPublic(
        name=record.name,
        version=record.version,
        content_id=record.content_id,
        created=created,
        architecture=record.arch,
        config=record.config,
        strategy=record.strategy,
        ratio=record.ratio,
        seed=record.seed,
        backbone=record.fingerprint,
        file_size=record.file_size,
        dense_fp32_size=record.dense_fp32_size,
        size_ratio=record.size_ratio,
        input_shape=list(record.input.shape),
        labels=list(record.labels),
        metrics=dict(record.metrics),
        provenance=dict(record.provenance),
        input_resize=str(record.provenance.get(PROVENANCE_KEY, DEFAULT_RESIZE)),
        versions=versions,
        packed=where["packed"],
        loaded=[{"version": record.version, **m} for m in where["materialized"]],
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(
            413,
            "request.too_large",
            f"body of {declared} bytes exceeds the {limit}-byte upload limit",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, "request.too_large", f"body exceeds the {limit}-byte upload limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart(request: Request, body: bytes) -> tuple[bytes, str | None]:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=4).parse()
    except MultiPartException as exc:
        raise APIError(422, "request.bad_multipart", f"multipart body: {exc.message}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise APIError(
            422, "request.missing_file", "multipart upload needs a 'file' field holding the bundle"
        )
    data = await upload.read()
    await upload.close()
    name = form.get("name")
    if isinstance(name, str) and name:
        return data, name
    stem = PurePosixPath(upload.filename or "").stem
    return data, stem or None


_UPLOAD_BODY = {
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "name": {"type": "string"},
                },
                "required": ["file"],
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=ModelPublic,
    dependencies=[AdminDep],
    summary="Upload a bundle",
    responses={
        200: {"description": "identical bytes were already the latest version (idempotent)"},
        413: {"description": "bundle larger than the upload limit"},
        422: {"description": "invalid bundle or name; `code` names the failure"},
        **_WRITE_RESPONSES,
    },
    openapi_extra={
        "parameters": [
            {
                "name": "name",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "model name (required for raw uploads)",
            }
        ],
        "requestBody": _UPLOAD_BODY,
    },
)
async def upload_model(request: Request, svc: ServiceDep) -> Response:
    """Store a bundle under a name: a raw ``application/octet-stream`` body with
    ``?name=``, or a multipart form with ``file`` (and optionally ``name``, else the
    file's stem). Validated before anything is stored. Returns 201 with the new
    version, or 200 when the same bytes were already the latest version. With
    ``If-Match``: only if the latest version is still that one (else 412)."""
    if_match = _if_match(request)
    body = await _read_body(request, svc.settings.max_upload_bytes)
    name = request.query_params.get("name")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        body, form_name = await _multipart(request, body)
        name = name or form_name
    if not name:
        raise APIError(
            422,
            "request.missing_name",
            "give the model name as ?name=... (or a multipart 'name' field)",
        )
    if not body:
        raise APIError(422, "request.empty_body", "the request body holds no bundle")
    put = svc.store.put(name, body, if_match=if_match, timeout=svc.settings.write_deadline_s)
    try:
        result = await _unless_client_leaves(request, put)
    except Exception:
        svc.metrics.uploads.labels("rejected").inc()
        raise
    record = svc.registry.note_upload(result)
    svc.metrics.uploads.labels("created" if result.created else "unchanged").inc()
    public = model_public(record, svc.registry, created=result.created)
    return JSONResponse(
        public.model_dump(mode="json"),
        status_code=201 if result.created else 200,
        headers=_etag(result),
    )


@router.get("", response_model=ModelsPublic, summary="List models")
async def list_models(svc: ServiceDep) -> ModelsPublic:
    data = [model_public(r, svc.registry) for r in svc.registry.catalog.records()]
    return ModelsPublic(data=data, count=len(data))


@router.get(
    "/{name}",
    response_model=ModelPublic,
    summary="Describe a model, its versions and where it is loaded",
    responses={200: {"headers": {"ETag": {"description": "content id of the latest version"}}}},
)
async def get_model(name: str, svc: ServiceDep, response: Response) -> ModelPublic:
    """The model, with ``ETag``: give it as ``If-Match`` to replace or delete exactly
    the version seen here."""
    record = svc.registry.latest(name)
    response.headers.update(_etag(record))
    versions = [
        VersionPublic(
            version=v.version, content_id=v.content_id, size=v.size, created_at=v.created_at
        )
        for v in await svc.registry.versions(name)
    ]
    return model_public(record, svc.registry, versions=versions)


@router.delete(
    "/{name}",
    status_code=204,
    dependencies=[AdminDep],
    summary="Delete a model and all its versions",
    responses={404: {"description": "no such model"}, **_WRITE_RESPONSES},
)
async def delete_model(name: str, request: Request, svc: ServiceDep) -> Response:
    """Delete the model; with ``If-Match``, only if its latest version is that one."""
    delete = svc.store.delete(
        name, if_match=_if_match(request), timeout=svc.settings.write_deadline_s
    )
    await _unless_client_leaves(request, delete)
    svc.registry.forget(name)
    return Response(status_code=204)
