"""``/models``: upload (raw body or multipart), list, describe and delete bundles."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import PurePosixPath

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.catalog import ModelRecord
from service.deps import AdminDep, ServiceDep
from service.errors import APIError
from service.registry import Registry
from service.schemas import ModelPublic, ModelsPublic, VersionPublic

__all__ = ["model_public", "router"]

router = APIRouter(prefix="/models", tags=["models"])


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
        401: {"description": "API key missing or wrong"},
        413: {"description": "bundle larger than the upload limit"},
        422: {"description": "invalid bundle or name; `code` names the failure"},
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
    version, or 200 when the same bytes were already the latest version."""
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
    try:
        result = await svc.store.put(name, body)
    except Exception:
        svc.metrics.uploads.labels("rejected").inc()
        raise
    info = await svc.store.info(name)
    record = svc.registry.note_upload(info)
    svc.metrics.uploads.labels("created" if result.created else "unchanged").inc()
    public = model_public(record, svc.registry, created=result.created)
    return JSONResponse(public.model_dump(mode="json"), status_code=201 if result.created else 200)


@router.get("", response_model=ModelsPublic, summary="List models")
async def list_models(svc: ServiceDep) -> ModelsPublic:
    data = [model_public(r, svc.registry) for r in svc.registry.catalog.records()]
    return ModelsPublic(data=data, count=len(data))


@router.get(
    "/{name}",
    response_model=ModelPublic,
    summary="Describe a model, its versions and where it is loaded",
)
async def get_model(name: str, svc: ServiceDep) -> ModelPublic:
    record = svc.registry.latest(name)
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
    responses={
        401: {"description": "API key missing or wrong"},
        404: {"description": "no such model"},
    },
)
async def delete_model(name: str, svc: ServiceDep) -> Response:
    await svc.store.delete(name)
    svc.registry.forget(name)
    return Response(status_code=204)
