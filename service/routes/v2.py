"""The Open Inference Protocol v2 REST endpoints (KServe / Triton convention), so
existing OIP clients work unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service import __version__
from service.deps import ServiceDep
from service.errors import APIError
from service.inference import infer
from service.inputs import from_oip, to_batch, top_k
from service.registry import Loaded
from service.schemas import InferOutput, InferRequest, InferResponse

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


def _metadata(svc: Any, name: str, versions: list[int]) -> dict[str, Any]:
    s = svc.registry.names[name].summary
    c, h, w = s["input"]["shape"]
    k = len(s["labels"])
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": f"pemn_{svc.registry.runtime_for(name)}",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [{"name": o, "datatype": "FP32", "shape": [-1, k]} for o in _OUTPUTS],
        "parameters": {
            "labels": s["labels"],
            "backbone": s["fingerprint"],
            "architecture": s["arch"],
        },
    }


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(name: str, svc: ServiceDep) -> dict[str, Any]:
    svc.registry.resolve_latest(name)
    versions = [v.version for v in await svc.registry.versions(name)]
    return _metadata(svc, name, versions)


@router.get("/models/{name}/versions/{version}", summary="Model metadata of one version")
async def model_version_metadata(name: str, version: int, svc: ServiceDep) -> dict[str, Any]:
    ref = await svc.registry.resolve(name, version)
    return _metadata(svc, name, [ref.version])


async def _ready(name: str, version: int | None, svc: Any) -> Response:
    ref = await svc.registry.resolve(name, version)
    ok = svc.ready
    return JSONResponse(
        {"name": name, "version": str(ref.version), "ready": ok}, status_code=200 if ok else 503
    )


@router.get("/models/{name}/ready", summary="Model readiness")
async def model_ready(name: str, svc: ServiceDep) -> Response:
    return await _ready(name, None, svc)


@router.get("/models/{name}/versions/{version}/ready", summary="Model version readiness")
async def model_version_ready(name: str, version: int, svc: ServiceDep) -> Response:
    return await _ready(name, version, svc)


async def _infer(name: str, version: int | None, req: InferRequest, svc: Any) -> InferResponse:
    if len(req.inputs) != 1:
        raise APIError(
            422, "request.bad_input", f"model {name!r} takes exactly one input tensor named 'input'"
        )
    tensor = req.inputs[0]
    if tensor.name != "input":
        raise APIError(
            422, "request.bad_input", f"unknown input {tensor.name!r}; model {name!r} takes 'input'"
        )
    wanted = [o.name for o in req.outputs] if req.outputs else list(_OUTPUTS)
    for o in wanted:
        if o not in _OUTPUTS:
            raise APIError(
                422,
                "request.bad_output",
                f"unknown output {o!r}; model {name!r} gives {', '.join(_OUTPUTS)}",
            )
    arr = from_oip(tensor.shape, tensor.datatype, tensor.data)

    def decode(loaded: Loaded) -> np.ndarray:
        return to_batch(arr, loaded.input_shape, svc.settings.max_items_per_request, name)

    result = await infer(svc, "v2_infer", name, version, decode)
    logits = result.logits
    outputs = []
    for o in wanted:
        values = logits if o == "logits" else _probabilities(logits)
        outputs.append(
            InferOutput(
                name=o, shape=list(values.shape), datatype="FP32", data=values.reshape(-1).tolist()
            )
        )
    ref = result.loaded.ref
    return InferResponse(
        model_name=ref.name, model_version=str(ref.version), id=req.id, outputs=outputs
    )


def _probabilities(logits: np.ndarray) -> np.ndarray:
    idx, prob = top_k(logits, logits.shape[1])
    out = np.empty_like(prob)
    np.put_along_axis(out, idx, prob, axis=1)
    return out.astype(np.float32)


@router.post(
    "/models/{name}/infer",
    response_model=InferResponse,
    response_model_exclude_none=True,
    summary="Inference",
)
async def model_infer(name: str, req: InferRequest, svc: ServiceDep) -> InferResponse:
    return await _infer(name, None, req, svc)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferResponse,
    response_model_exclude_none=True,
    summary="Inference on one version",
)
async def model_version_infer(
    name: str, version: int, req: InferRequest, svc: ServiceDep
) -> InferResponse:
    return await _infer(name, version, req, svc)
