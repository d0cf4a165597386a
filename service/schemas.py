"""Request and response bodies (``XCreate``/``XPublic`` naming as in the FastAPI
template), with OpenAPI examples."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ClassScore",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferRequestedOutput",
    "InferResponse",
    "ModelPublic",
    "ModelsPublic",
    "PredictItem",
    "PredictOptions",
    "PredictRequest",
    "PredictResponse",
    "VersionPublic",
]


class VersionPublic(BaseModel):
    version: int
    content_id: str
    size: int
    created_at: datetime


class ModelPublic(BaseModel):
    """A model (task) as the API shows it."""

    name: str
    version: int
    content_id: str
    created: bool | None = Field(
        None, description="upload only: false when identical bytes were already the latest"
    )
    architecture: str
    config: dict[str, Any]
    strategy: str
    ratio: float | None
    seed: int
    backbone: str = Field(
        description="backbone fingerprint shared by tasks with the same architecture, strategy and seed"
    )
    file_size: int
    dense_fp32_size: int
    size_ratio: float
    input_shape: list[int]
    labels: list[str]
    metrics: dict[str, Any]
    provenance: dict[str, Any] = Field(
        default_factory=dict, description="how the bundle was made (the trainer's command, ...)"
    )
    input_resize: str = Field(
        "resize",
        description="how images are fitted to input_shape: resize (whole image) or resize_crop "
        "(cover, then centre crop)",
    )
    versions: list[VersionPublic] | None = None
    packed: bool = Field(
        False, description="its packed masks and norm state are resident on this server"
    )
    loaded: list[dict[str, Any]] = Field(
        default_factory=list,
        description="materialized tiers holding it: runtime, device and bytes",
    )


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


_PREDICT_EXAMPLE: dict[str, Any] = {
    "model": "fashion-mnist",
    "inputs": [[[[0.0] * 28] * 28]],
    "top_k": 3,
}


class PredictOptions(BaseModel):
    """What a predict request says besides its inputs (the plain fields of a
    multipart request)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128, description="model (task) name")
    version: int | None = Field(None, ge=1, description="a specific version; latest when absent")
    top_k: int = Field(5, ge=1, description="classes returned per item")
    return_logits: bool = Field(False, description="also return the raw logits")
    timeout_ms: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="deadline for this request (server default otherwise; at most "
        "PEMN_MAX_REQUEST_TIMEOUT_MS)",
    )


class PredictRequest(PredictOptions):
    """A JSON predict request: tensors in ``inputs`` or encoded image files in ``images``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_PREDICT_EXAMPLE]})

    inputs: list[Any] | str | None = Field(
        None,
        description="(batch, C, H, W) or (C, H, W) pixels in the model's input range as nested lists, "
        "or the base64 of a .npy file holding such an array (float32/float64, or uint8 scaled by 1/255)",
    )
    images: list[str] | None = Field(
        None,
        description="image files (PNG, JPEG, WebP, GIF) as base64 strings or data: URLs, one per "
        "item; decoded, converted to the model's channels and resized to its input size",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> PredictRequest:
        if (self.inputs is None) == (self.images is None):
            raise ValueError("give inputs (tensors) or images (base64 image files), exactly one")
        return self


class ClassScore(BaseModel):
    index: int
    label: str
    probability: float


class PredictItem(BaseModel):
    file: str | None = Field(None, description="multipart images: the file name of this item")
    top: list[ClassScore]
    logits: list[float] | None = None


class PredictResponse(BaseModel):
    model: str
    version: int
    content_id: str
    runtime: str
    outputs: list[PredictItem]


# ---- Open Inference Protocol v2 (KServe / Triton REST) -----------------------

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferRequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "1",
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 1, 28, 28],
                            "datatype": "FP32",
                            "data": [0.0] * 784,
                        }
                    ],
                }
            ]
        }
    )

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[InferRequestedOutput] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferOutput]
