"""``POST /predict``: the native inference endpoint. Every request names its model,
so consecutive requests may use different tasks over one shared backbone."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from service.catalog import ModelRecord
from service.deps import ServiceDep
from service.errors import APIError
from service.inference import infer
from service.inputs import from_lists, from_npy_b64, parse_json, read_body, top_k
from service.schemas import ClassScore, PredictItem, PredictRequest, PredictResponse

__all__ = ["router"]

router = APIRouter(tags=["inference"])

# The route reads its body itself (size cap, one-pass JSON parsing; see
# ``service.inputs.parse_json``); main.py adds the schema to the OpenAPI components.
_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
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
    """Run ``inputs`` through ``model`` (latest version unless ``version``) and return
    the ``top_k`` classes per item with label names and probabilities."""
    req = parse_json(PredictRequest, await read_body(request, svc.settings.max_request_bytes))
    if req.top_k > svc.settings.max_top_k:
        raise APIError(
            422,
            "request.bad_top_k",
            f"top_k {req.top_k} exceeds the limit of {svc.settings.max_top_k}",
        )
    max_items = svc.settings.max_items_per_request

    def decode(record: ModelRecord) -> np.ndarray:
        if isinstance(req.inputs, str):
            return from_npy_b64(req.inputs, record, max_items)
        return from_lists(req.inputs, record, max_items)

    result = await infer(svc, "predict", req.model, req.version, decode, req.timeout_ms)
    labels = result.record.labels
    idx, prob = top_k(result.logits, req.top_k)
    outputs = [
        PredictItem(
            top=[
                ClassScore(index=int(i), label=labels[int(i)], probability=float(p))
                for i, p in zip(ri, rp, strict=True)
            ],
            logits=[float(v) for v in row] if req.return_logits else None,
        )
        for ri, rp, row in zip(idx, prob, result.logits, strict=True)
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
