"""Decoding inference requests: the body (size-capped), its JSON (parsed and
validated in one pass by pydantic-core), and the inputs (nested lists, base64
``.npy`` and OIP tensors) into a validated (batch, C, H, W) float32 array."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from service.errors import APIError

__all__ = ["decode_npy_b64", "from_oip", "parse_json", "read_body", "to_batch", "top_k"]

M = TypeVar("M", bound=BaseModel)

_OIP_DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "UINT8": np.uint8}


def _bad(message: str) -> APIError:
    return APIError(422, "request.bad_input", message)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(
            413, "request.too_large", f"body of {declared} bytes exceeds the {limit}-byte limit"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, "request.too_large", f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(model: type[M], data: bytes) -> M:
    """``model`` from JSON bytes. pydantic-core parses and validates in one pass, about
    7x faster than ``json.loads`` then validation on a body of 784 floats (what
    FastAPI does for a body parameter). 400 for malformed JSON, 422 for invalid fields."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            raise APIError(
                400, "request.malformed_json", f"request body is not valid JSON: {err['msg']}"
            ) from None
        where = ".".join(str(p) for p in err["loc"]) or "request"
        raise APIError(422, "request.invalid", f"{where}: {err['msg']}") from None


def decode_npy_b64(text: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("inputs is a string but not valid base64 of a .npy file") from None
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _bad(f"inputs is not a readable .npy array ({exc.__class__.__name__})") from None


def to_batch(value: Any, shape: tuple[int, int, int], max_items: int, model: str) -> np.ndarray:
    """(b, C, H, W) float32 from nested lists or an array; uint8 is scaled by 1/255."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except ValueError:
            raise _bad("inputs is ragged: every item must have the same shape") from None
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
    elif arr.dtype.kind in "iu" and not isinstance(value, np.ndarray):
        arr = arr.astype(np.float32)  # JSON integers such as 0 and 1
    else:
        raise _bad(f"inputs has dtype {arr.dtype}; expected float (or uint8 pixels)")
    if arr.ndim == 3:
        arr = arr[None]
    want = "(batch, " + ", ".join(map(str, shape)) + ")"
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(shape):
        raise _bad(f"inputs has shape {tuple(arr.shape)} but model {model!r} takes {want}")
    if arr.shape[0] == 0:
        raise _bad("inputs holds no items")
    if arr.shape[0] > max_items:
        raise APIError(
            413,
            "request.too_many_items",
            f"inputs holds {arr.shape[0]} items; the limit is {max_items}",
        )
    if not np.isfinite(arr).all():
        raise _bad("inputs holds NaN or infinite values")
    return np.ascontiguousarray(arr)


def from_oip(shape: list[int], datatype: str, data: list[Any]) -> np.ndarray:
    """An OIP tensor (shape, datatype, flat or nested row-major data) as an array."""
    dtype = _OIP_DTYPES.get(datatype)
    if dtype is None:
        raise _bad(f"input datatype {datatype} is not supported (use FP32, FP64, FP16 or UINT8)")
    if any(d < 0 for d in shape):
        raise _bad(f"input shape {shape} has a negative dimension")
    try:
        arr = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError):
        raise _bad(f"input data is not a list of {datatype} numbers") from None
    if arr.size != int(np.prod(shape)):
        raise _bad(
            f"input data holds {arr.size} values but shape {shape} needs {int(np.prod(shape))}"
        )
    return arr.reshape(shape)


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities) of the k most probable classes per row."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    k = min(k, p.shape[1])
    idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(p, idx, axis=1)
