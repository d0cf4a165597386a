"""Decoding inference requests: the body (size-capped), its JSON (parsed and
validated in one pass by pydantic-core), and the inputs (nested lists, base64
``.npy`` and OIP tensors) into a validated (batch, C, H, W) float32 array for the
model's input spec. Declared shapes are checked (``service.bounds.check_tensor``)
before anything is allocated."""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from service.bounds import MAX_DIMS, check_tensor
from service.catalog import ModelRecord
from service.errors import APIError, BadInput

__all__ = [
    "from_lists",
    "from_npy_b64",
    "from_oip",
    "from_oip_binary",
    "parse_json",
    "read_body",
    "top_k",
]

M = TypeVar("M", bound=BaseModel)

_OIP_DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "UINT8": np.uint8}
_NPY_MAX_HEADER = 10_000  # bytes of a .npy header (numpy's own default)


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


def _nested_shape(value: Any, depth: int = MAX_DIMS + 1) -> tuple[int, ...]:
    """The shape nested lists claim along their first elements (cheap: no conversion)."""
    shape: list[int] = []
    while isinstance(value, list) and len(shape) < depth:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def from_lists(value: list[Any], record: ModelRecord, max_items: int) -> np.ndarray:
    """Nested JSON lists as (batch, C, H, W) float32 for ``record``. The shape the
    lists claim is checked before they are converted."""
    check_tensor(_nested_shape(value), 8, record, max_items)
    try:
        arr = np.asarray(value)
    except ValueError:
        raise BadInput("inputs is ragged: every item must have the same shape") from None
    if arr.dtype == object:
        raise BadInput("inputs is ragged or holds values that are not numbers")
    return record.check_inputs(arr, max_items, integers=True)


def from_npy_b64(text: str, record: ModelRecord, max_items: int) -> np.ndarray:
    """A base64 ``.npy`` file as (batch, C, H, W) float32 for ``record``: the header's
    dtype and shape are checked, and the data length against them, before the array
    is read."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("inputs is a string but not valid base64 of a .npy file") from None
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = read_header(f, max_header_size=_NPY_MAX_HEADER)
    except Exception as exc:  # numpy's header parser raises many kinds (found by fuzzing:
        # ValueError, SyntaxError, tokenize.TokenError, ...); the header is at most 10 kB
        raise BadInput(f"inputs is not a readable .npy array ({exc})") from None
    if dtype.hasobject or dtype.kind not in "fiu":
        raise BadInput(f"inputs has dtype {dtype}; expected float (or uint8 pixels)")
    check_tensor(shape, dtype.itemsize, record, max_items)
    expected = math.prod(shape) * dtype.itemsize
    data = memoryview(raw)[f.tell() :]
    if len(data) != expected:
        raise BadInput(
            f"inputs .npy holds {len(data)} data bytes but its header's shape "
            f"{tuple(shape)} {dtype} needs {expected}"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return record.check_inputs(arr, max_items)


def from_oip(
    shape: list[int], datatype: str, data: list[Any], record: ModelRecord, max_items: int
) -> np.ndarray:
    """An OIP tensor (shape, datatype, flat or nested row-major data) for ``record``;
    the declared shape is checked before the data is converted."""
    dtype = _OIP_DTYPES.get(datatype)
    if dtype is None:
        raise BadInput(
            f"input datatype {datatype} is not supported (use FP32, FP64, FP16 or UINT8; BYTES for image files)"
        )
    check_tensor(shape, np.dtype(dtype).itemsize, record, max_items, "input")
    try:
        with np.errstate(over="raise", invalid="raise"):  # 65520 as FP16, NaN as UINT8
            arr = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError, FloatingPointError):
        raise BadInput(f"input data is not a list of {datatype} numbers in range") from None
    if arr.size != math.prod(shape):
        raise BadInput(
            f"input data holds {arr.size} values but shape {shape} needs {math.prod(shape)}"
        )
    return record.check_inputs(arr.reshape(shape), max_items)


def from_oip_binary(
    shape: list[int], datatype: str, binary: bytes, record: ModelRecord, max_items: int
) -> np.ndarray:
    """An OIP tensor sent with the binary data extension (little-endian raw values)."""
    dtype = _OIP_DTYPES.get(datatype)
    if dtype is None:
        raise BadInput(
            f"input datatype {datatype} is not supported (use FP32, FP64, FP16 or UINT8; BYTES for image files)"
        )
    check_tensor(shape, np.dtype(dtype).itemsize, record, max_items, "input")
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if len(binary) != expected:
        raise BadInput(f"binary input of {len(binary)} bytes does not fit shape {shape} {datatype}")
    arr = np.frombuffer(binary, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    return record.check_inputs(arr, max_items)


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities) of the k most probable classes per row."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    k = min(k, p.shape[1])
    idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(p, idx, axis=1)
