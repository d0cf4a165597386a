"""Image files as model inputs: the server's limits, and encoded bytes (PNG, JPEG,
WebP, GIF) -> a validated (batch, C, H, W) float32 array for a model's record.

Every limit is checked before any pixel is decoded: the number of images, each
file's size, then each header (``Image.open`` reads only the header) for the
format, the mode and the pixel count, then all the images' pixels together. Only
then are the pixels decoded, by ``pemn.images.to_pixels`` (the preprocessing the
trainer applies to image folders, documented there). Failures are domain errors
that name the file: ``UnsupportedImage`` (415), ``ImageTooLarge`` (413),
``BadImage`` (422), ``TooManyItems`` (413).

``ImageDecoder.decode`` decodes small requests on the calling thread (a 28x28 PNG
costs tens of microseconds, less than a thread hop) and larger ones in its own
small pool, so that photos do not stall the event loop and at most
``image_decode_threads`` decoded images are held at once.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pemn.images import SUPPORTED_MODES, resize_rule, to_pixels
from service.catalog import ModelRecord
from service.errors import BadImage, BadInput, ImageTooLarge, TooManyItems, UnsupportedImage
from service.settings import Settings

__all__ = ["FORMATS", "EncodedImage", "ImageDecoder", "ImageLimits", "decode_images"]

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_FORMAT_NAMES = "PNG, JPEG, WebP or GIF"
# File signatures of FORMATS: a file that has one but that Pillow cannot open is
# corrupt, not of an unsupported format.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
_INLINE_PIXELS = 1 << 16  # requests up to this many pixels in all decode on the event loop


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int  # of one encoded file
    max_pixels: int  # width x height of one image
    max_total_pixels: int  # of all the images of one request
    max_images: int  # per request

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            max_total_pixels=settings.max_request_image_pixels,
            max_images=settings.max_images_per_request,
        )

    def check_count(self, n: int) -> None:
        if n == 0:
            raise BadInput("the request holds no images")
        if n > self.max_images:
            raise TooManyItems(f"the request holds {n} images; the limit is {self.max_images}")

    def check_size(self, name: str, size: int) -> None:
        if size > self.max_bytes:
            raise ImageTooLarge(
                f"{name}: {size:,} bytes exceeds the {self.max_bytes:,}-byte limit per image"
            )


@dataclass(frozen=True)
class EncodedImage:
    name: str  # how errors name it: 'file "shoe.png"', 'images[2]', 'input[0]'
    data: bytes


def _is_signed(data: bytes) -> bool:
    riff_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return riff_webp or any(data.startswith(s) for s in _SIGNATURES)


def _open(image: EncodedImage, limits: ImageLimits) -> Image.Image:
    """The image with only its header read, or the domain error naming the problem."""
    name, data = image.name, image.data
    limits.check_size(name, len(data))
    if not data:
        raise BadImage(f"{name} is empty")
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(
            f"{name} declares more pixels than the {limits.max_pixels:,}-pixel limit"
        ) from None
    except Exception as exc:  # Pillow raises many kinds on untrusted bytes
        if _is_signed(data):
            raise BadImage(f"{name} is corrupt: {exc}") from None
        raise UnsupportedImage(
            f"{name} is not a {_FORMAT_NAMES} image (it starts with {data[:8].hex()})"
        ) from None
    w, h = im.size
    if w < 1 or h < 1:
        raise BadImage(f"{name} is {w}x{h} pixels")
    if w * h > limits.max_pixels:
        raise ImageTooLarge(
            f"{name} is {w}x{h} ({w * h:,} pixels); the limit is {limits.max_pixels:,} pixels"
        )
    if im.mode not in SUPPORTED_MODES:
        raise BadImage(f"{name} has pixel mode {im.mode}, which the server does not convert")
    return im


def _check_record(record: ModelRecord) -> str:
    """The model's resize rule, after checking it takes images at all."""
    c = record.input.shape[0]
    if c not in (1, 3):
        raise BadInput(
            f"model {record.name!r} takes {c}-channel inputs; images can be sent only to "
            "1- or 3-channel models (send tensors)"
        )
    try:
        return resize_rule(record.provenance)
    except ValueError as exc:
        raise BadInput(
            f"model {record.name!r} records no usable resize rule ({exc}); send tensors"
        ) from None


def _pixels(
    opened: Sequence[tuple[str, Image.Image]], record: ModelRecord, rule: str
) -> np.ndarray:
    c, h, w = record.input.shape
    out = np.empty((len(opened), c, h, w), dtype=np.uint8)
    for i, (name, im) in enumerate(opened):
        try:
            out[i] = to_pixels(im, c, (h, w), rule)
        except Exception as exc:  # truncated or corrupt data found while decoding
            raise BadImage(f"{name} cannot be decoded: {exc}") from None
        finally:
            im.close()
    lo, hi = record.input.range
    x = out.astype(np.float32) / 255.0  # the same op as a uint8 tensor input
    if (lo, hi) != (0.0, 1.0):
        x = x * np.float32(hi - lo) + np.float32(lo)
    return x


def decode_images(
    images: Sequence[EncodedImage], record: ModelRecord, limits: ImageLimits
) -> np.ndarray:
    """``images`` as (batch, C, H, W) float32 for ``record``, on the calling thread."""
    rule = _check_record(record)
    return _pixels(_open_all(images, limits)[0], record, rule)


def _open_all(
    images: Sequence[EncodedImage], limits: ImageLimits
) -> tuple[list[tuple[str, Image.Image]], int]:
    limits.check_count(len(images))
    opened: list[tuple[str, Image.Image]] = []
    total = 0
    try:
        for image in images:
            im = _open(image, limits)
            opened.append((image.name, im))
            total += im.width * im.height
        if total > limits.max_total_pixels:
            raise ImageTooLarge(
                f"the request's {len(images)} images hold {total:,} pixels; the limit is "
                f"{limits.max_total_pixels:,}"
            )
    except Exception:
        for _, im in opened:
            im.close()
        raise
    return opened, total


class ImageDecoder:
    """The server's image decoding: its limits and its thread pool."""

    def __init__(self, limits: ImageLimits, threads: int) -> None:
        self.limits = limits
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="pemn-image")

    async def decode(self, images: Sequence[EncodedImage], record: ModelRecord) -> np.ndarray:
        """``images`` as (batch, C, H, W) float32 for ``record``: headers and limits
        here, pixels here too when the request is small, else in the pool."""
        rule = _check_record(record)
        opened, total = _open_all(images, self.limits)
        if total <= _INLINE_PIXELS:
            return _pixels(opened, record, rule)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _pixels, opened, record, rule)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
