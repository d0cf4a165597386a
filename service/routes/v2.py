"""The Open Inference Protocol v2 REST endpoints (KServe / Triton convention), so
existing OIP clients work unchanged. The ``input`` tensor is FP32/FP64/FP16/UINT8
pixels, or ``BYTES`` holding one encoded image file per element (base64 strings in
JSON; raw with the binary data extension, as ``tritonclient`` sends them)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service import __version__
from service.catalog import ModelRecord
from service.deps import ServiceDep
from service.errors import APIError, BadInput
from service.image_inputs import from_oip_bytes
from service.images import EncodedImage
from service.inference import infer
from service.inputs import from_oip, from_oip_binary, parse_json, read_body, top_k
from service.schemas import (
    InferInput,
    InferOutput,
    InferRequest,
    InferRequestedOutput,
    InferResponse,
)

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

_OUTPUTS = ("logits", "probabilities")


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "pemn-serve", "version": __version__, "extensions": []}


@router.get("/health/live", summary="Liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: store synced and preloads done")
async def ready(svc: ServiceDep) -> Response:
    body = {"ready": svc.ready, "status": svc.status}
    return JSONResponse(body, status_code=200 if svc.ready else 503)


def _metadata(svc: Any, record: ModelRecord, versions: list[int]) -> dict[str, Any]:
    c, h, w = record.input.shape
    k = len(record.labels)
    return {
        "name": record.name,
        "versions": [str(v) for v in versions],
        "platform": f"pemn_{svc.registry.runtime_for(record.name)}",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [{"name": o, "datatype": "FP32", "shape": [-1, k]} for o in _OUTPUTS],
        "parameters": {
            "labels": list(record.labels),
            "backbone": record.fingerprint,
            "architecture": record.arch,
            # the same 'input' may instead be BYTES: encoded image files, shape [n]
            "image_input": {"name": "input", "datatype": "BYTES", "shape": [-1]},
        },
    }


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(name: str, svc: ServiceDep) -> dict[str, Any]:
    record = svc.registry.latest(name)
    versions = [v.version for v in await svc.registry.versions(name)]
    return _metadata(svc, record, versions)


@router.get("/models/{name}/versions/{version}", summary="Model metadata of one version")
async def model_version_metadata(name: str, version: int, svc: ServiceDep) -> dict[str, Any]:
    record = await svc.registry.resolve(name, version)
    return _metadata(svc, record, [record.version])


async def _ready(name: str, version: int | None, svc: Any) -> Response:
    record = await svc.registry.resolve(name, version)
    ok = svc.ready
    return JSONResponse(
        {"name": name, "version": str(record.version), "ready": ok}, status_code=200 if ok else 503
    )


@router.get("/models/{name}/ready", summary="Model readiness")
async def model_ready(name: str, svc: ServiceDep) -> Response:
    return await _ready(name, None, svc)


@router.get("/models/{name}/versions/{version}/ready", summary="Model version readiness")
async def model_version_ready(name: str, version: int, svc: ServiceDep) -> Response:
    return await _ready(name, version, svc)


_BINARY_HEADER = "inference-header-content-length"


async def _read_request(request: Request, limit: int) -> tuple[InferRequest, bytes]:
    """The JSON part of an infer request and, with the binary tensor data extension
    (``Inference-Header-Content-Length``), the binary part that follows it."""
    body = await read_body(request, limit)
    split = request.headers.get(_BINARY_HEADER)
    if split is not None:
        if not split.isdigit() or int(split) > len(body):
            raise APIError(
                400,
                "request.bad_binary_header",
                f"{_BINARY_HEADER} {split!r} does not fit the body",
            )
        head, binary = body[: int(split)], body[int(split) :]
    else:
        head, binary = body, b""
    return parse_json(InferRequest, head), binary


def _binary_part(tensor: InferInput, binary: bytes) -> bytes | None:
    """The tensor's binary data (the binary extension), or None for JSON ``data``."""
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise BadInput(f"binary_data_size {size!r} does not match the {len(binary)} bytes sent")
    return binary


def _input_array(
    tensor: InferInput, binary: bytes, record: ModelRecord, max_items: int
) -> np.ndarray:
    raw = _binary_part(tensor, binary)
    if raw is None:
        return from_oip(tensor.shape, tensor.datatype, tensor.data or [], record, max_items)
    return from_oip_binary(tensor.shape, tensor.datatype, raw, record, max_items)


async def _infer(name: str, version: int | None, request: Request, svc: Any) -> Response:
    req, binary = await _read_request(request, svc.settings.max_request_bytes)
    if len(req.inputs) != 1:
        raise APIError(
            422, "request.bad_input", f"model {name!r} takes exactly one input tensor named 'input'"
        )
    tensor = req.inputs[0]
    if tensor.name != "input":
        raise APIError(
            422, "request.bad_input", f"unknown input {tensor.name!r}; model {name!r} takes 'input'"
        )
    requested = req.outputs or [InferRequestedOutput(name=o) for o in _OUTPUTS]
    for o in requested:
        if o.name not in _OUTPUTS:
            raise APIError(
                422,
                "request.bad_output",
                f"unknown output {o.name!r}; model {name!r} gives {', '.join(_OUTPUTS)}",
            )
    max_items = svc.settings.max_items_per_request
    images: list[EncodedImage] | None = None
    if tensor.datatype == "BYTES":
        raw = _binary_part(tensor, binary)
        images = from_oip_bytes(tensor.shape, tensor.data, raw, svc.images.limits)

    async def decode(record: ModelRecord) -> np.ndarray:
        if images is not None:
            return await svc.images.decode(images, record)
        return _input_array(tensor, binary, record, max_items)

    result = await infer(svc, "v2_infer", name, version, decode)
    logits = result.logits
    binary_default = bool((req.parameters or {}).get("binary_data_output", False))
    outputs, chunks = [], []
    for o in requested:
        values = (logits if o.name == "logits" else _probabilities(logits)).astype("<f4")
        if (o.parameters or {}).get("binary_data", binary_default):
            raw = values.tobytes()
            chunks.append(raw)
            outputs.append(
                InferOutput(
                    name=o.name,
                    shape=list(values.shape),
                    datatype="FP32",
                    parameters={"binary_data_size": len(raw)},
                    data=None,
                )
            )
        else:
            outputs.append(
                InferOutput(
                    name=o.name,
                    shape=list(values.shape),
                    datatype="FP32",
                    data=values.reshape(-1).tolist(),
                )
            )
    record = result.record
    body = InferResponse(
        model_name=record.name, model_version=str(record.version), id=req.id, outputs=outputs
    )
    text = body.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return Response(text, media_type="application/json")
    return Response(
        text + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(text))},
    )


def _probabilities(logits: np.ndarray) -> np.ndarray:
    idx, prob = top_k(logits, logits.shape[1])
    out = np.empty_like(prob)
    np.put_along_axis(out, idx, prob, axis=1)
    return out.astype(np.float32)


_INFER_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}},
    },
    "responses": {
        "200": {
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}}
            }
        }
    },
}


@router.post(
    "/models/{name}/infer", summary="Inference", openapi_extra=_INFER_DOC, response_class=Response
)
async def model_infer(name: str, request: Request, svc: ServiceDep) -> Response:
    """OIP v2 inference. JSON tensors, or the binary tensor data extension
    (``Inference-Header-Content-Length``) as Triton's clients send by default."""
    return await _infer(name, None, request, svc)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on one version",
    openapi_extra=_INFER_DOC,
    response_class=Response,
)
async def model_version_infer(
    name: str, version: int, request: Request, svc: ServiceDep
) -> Response:
    return await _infer(name, version, request, svc)
