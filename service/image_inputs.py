"""Where image files come from in a request, as ``EncodedImage`` lists (no pixels
decoded here; ``service.images`` does that):

* ``POST /predict`` multipart: one or more ``file`` parts plus the plain fields of
  ``PredictOptions`` (``model``, ``version``, ``top_k``, ...), as ``curl -F`` sends;
* ``POST /predict`` JSON: ``"images": ["<base64>", ...]`` (a ``data:`` URL prefix is
  accepted, as a browser's ``FileReader`` writes it);
* OIP ``BYTES`` tensors: JSON ``data`` holds base64 strings; with the binary data
  extension each element is a 4-byte little-endian length then the file's bytes
  (Triton's serialization, what ``tritonclient`` sends for an object array).

Counts and sizes are checked before anything is decoded or copied.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import AsyncGenerator
from typing import Any

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.errors import APIError, BadImage, BadInput, TooManyItems
from service.images import EncodedImage, ImageLimits

__all__ = ["from_base64", "from_oip_bytes", "read_form"]

_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.ASCII)
_FORM_FIELDS = 8  # plain fields of a multipart predict request (model, version, top_k, ...)


def _b64(text: str, name: str, limits: ImageLimits) -> EncodedImage:
    match = _DATA_URL.match(text)
    if match:
        text = text[match.end() :]
    padding = len(text) - len(text.rstrip("="))
    limits.check_size(name, len(text) * 3 // 4 - padding)  # the decoded size, before decoding
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage(f"{name} is not valid base64") from None
    return EncodedImage(name, data)


def from_base64(texts: list[str], limits: ImageLimits, what: str = "images") -> list[EncodedImage]:
    """Base64 strings (optionally ``data:`` URLs) as files named ``images[i]``."""
    limits.check_count(len(texts))
    return [_b64(t, f"{what}[{i}]", limits) for i, t in enumerate(texts)]


def _oip_count(shape: list[int]) -> int:
    if any(d < 0 for d in shape) or not 1 <= len(shape) <= 2 or math.prod(shape[1:]) != 1:
        raise BadInput(
            f"a BYTES input holds one encoded image per element, shape [n] or [n, 1]; got {shape[:8]}"
        )
    return shape[0]


def from_oip_bytes(
    shape: list[int], data: list[Any] | None, binary: bytes | None, limits: ImageLimits
) -> list[EncodedImage]:
    """An OIP ``BYTES`` input as files named ``input[i]``: JSON ``data`` of base64
    strings, or ``binary`` holding length-prefixed elements."""
    n = _oip_count(shape)
    limits.check_count(n)
    if binary is None:
        items = data or []
        if len(items) != n or not all(isinstance(t, str) for t in items):
            raise BadInput(
                f"a BYTES input of shape {shape} needs {n} base64 strings in data; got "
                f"{len(items)} items"
            )
        return from_base64(items, limits, what="input")
    out, at = [], 0
    for i in range(n):
        name = f"input[{i}]"
        if at + 4 > len(binary):
            raise BadInput(f"binary BYTES input ends before the length of {name}")
        size = int.from_bytes(binary[at : at + 4], "little")
        limits.check_size(name, size)
        at += 4
        if at + size > len(binary):
            raise BadInput(f"binary BYTES input ends inside {name} ({size:,} bytes declared)")
        out.append(EncodedImage(name, binary[at : at + size]))
        at += size
    if at != len(binary):
        raise BadInput(f"binary BYTES input has {len(binary) - at} bytes after its {n} elements")
    return out


def _file_name(upload: UploadFile, index: int) -> str:
    filename = (upload.filename or "").strip()
    if not filename:
        return f"file #{index + 1}"
    return f"file {filename[:120]!r}"


async def read_form(
    headers: Headers, body: bytes, limits: ImageLimits
) -> tuple[dict[str, str], list[EncodedImage], list[str | None]]:
    """A multipart body as (plain fields, the ``file`` parts as images, their file
    names). Any other file field, a repeated plain field or a ``file`` sent as
    text is a 422 naming it."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(
        headers, stream(), max_files=limits.max_images, max_fields=_FORM_FIELDS
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise TooManyItems(
                f"the request holds more than {limits.max_images} files; the limit is "
                f"{limits.max_images}"
            ) from None
        raise APIError(422, "request.bad_multipart", f"multipart body: {exc.message}") from None
    fields: dict[str, str] = {}
    images: list[EncodedImage] = []
    names: list[str | None] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "file":
                    raise APIError(
                        422,
                        "request.bad_multipart",
                        f"multipart file field {key!r}: images go in fields named 'file'",
                    )
                name = _file_name(value, len(images))
                limits.check_size(name, value.size or 0)
                images.append(EncodedImage(name, await value.read()))
                names.append(value.filename or None)
            elif key == "file":
                raise APIError(
                    422,
                    "request.bad_multipart",
                    "multipart field 'file' holds text, not a file (with curl: -F file=@path)",
                )
            elif key in fields:
                raise APIError(
                    422, "request.bad_multipart", f"multipart field {key!r} is given twice"
                )
            else:
                fields[key] = value
    finally:
        await form.close()
    return fields, images, names
