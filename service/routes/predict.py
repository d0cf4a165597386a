"""``POST /predict``: the native inference endpoint. Every request names its model,
so consecutive requests may use different tasks over one shared backbone.

Inputs come as JSON tensors (``inputs``), JSON base64 image files (``images``), or a
multipart form of image files (``file`` parts, as ``curl -F file=@shoe.png``) with
the other fields as form fields."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from service.catalog import ModelRecord
from service.deps import ServiceDep
from service.errors import APIError
from service.image_inputs import from_base64, read_form
from service.images import EncodedImage
from service.inference import infer
from service.inputs import from_lists, from_npy_b64, parse_json, read_body, top_k
from service.schemas import (
    ClassScore,
    PredictItem,
    PredictOptions,
    PredictRequest,
    PredictResponse,
)

__all__ = ["router"]

router = APIRouter(tags=["inference"])

# The route reads its body itself (size cap, one-pass JSON parsing; see
# ``service.inputs.parse_json``); main.py adds the schema to the OpenAPI components.
_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string"},
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more image files (PNG, JPEG, WebP, GIF)",
                        },
                        "version": {"type": "integer"},
                        "top_k": {"type": "integer"},
                        "return_logits": {"type": "boolean"},
                        "timeout_ms": {"type": "number"},
                    },
                    "required": ["model", "file"],
                }
            },
        },
    }
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Classify inputs with a named model",
    responses={
        400: {"description": "malformed JSON"},
        404: {"description": "unknown model or version"},
        413: {"description": "too many items, or a body above the request size limit"},
        422: {"description": "inputs of the wrong shape or dtype"},
        503: {"description": "queue full or not ready (Retry-After)"},
        504: {"description": "deadline exceeded"},
    },
    openapi_extra=_PREDICT_BODY,
)
async def predict(request: Request, svc: ServiceDep) -> Response:
    """Run ``inputs`` (tensors) or ``images`` (files) through ``model`` (latest version
    unless ``version``) and return the ``top_k`` classes per item with label names
    and probabilities."""
    body = await read_body(request, svc.settings.max_request_bytes)
    images: list[EncodedImage] | None = None
    files: list[str | None] = []
    opts: PredictOptions
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        raise APIError(
            415,
            "request.unsupported_media_type",
            "a form predict request must be multipart/form-data with 'file' parts "
            "(curl -F file=@path)",
        )
    if content_type.startswith("multipart/form-data"):
        fields, images, files = await read_form(request.headers, body, svc.images.limits)
        if not images:
            raise APIError(
                422, "request.missing_file", "a multipart predict request needs 'file' parts"
            )
        opts = _form_options(fields)
    else:
        req = parse_json(PredictRequest, body)
        if req.images is not None:
            images = from_base64(req.images, svc.images.limits)
        opts = req
    if opts.top_k > svc.settings.max_top_k:
        raise APIError(
            422,
            "request.bad_top_k",
            f"top_k {opts.top_k} exceeds the limit of {svc.settings.max_top_k}",
        )
    max_items = svc.settings.max_items_per_request

    async def decode(record: ModelRecord) -> np.ndarray:
        if images is not None:
            return await svc.images.decode(images, record)
        assert isinstance(opts, PredictRequest) and opts.inputs is not None
        if isinstance(opts.inputs, str):
            return from_npy_b64(opts.inputs, record, max_items)
        return from_lists(opts.inputs, record, max_items)

    result = await infer(svc, "predict", opts.model, opts.version, decode, opts.timeout_ms)
    labels = result.record.labels
    idx, prob = top_k(result.logits, opts.top_k)
    outputs = [
        PredictItem(
            file=files[n] if files else None,
            top=[
                ClassScore(index=int(i), label=labels[int(i)], probability=float(p))
                for i, p in zip(ri, rp, strict=True)
            ],
            logits=[float(v) for v in row] if opts.return_logits else None,
        )
        for n, (ri, rp, row) in enumerate(zip(idx, prob, result.logits, strict=True))
    ]
    record = result.record
    response = PredictResponse(
        model=record.name,
        version=record.version,
        content_id=record.content_id,
        runtime=result.runtime,
        outputs=outputs,
    )
    # Serialized here: returning the model would have FastAPI validate it once more.
    return Response(response.model_dump_json(), media_type="application/json")


def _form_options(fields: dict[str, str]) -> PredictOptions:
    try:
        return PredictOptions.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "form"
        raise APIError(422, "request.invalid", f"form field {where}: {err['msg']}") from None
