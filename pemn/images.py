"""Image preprocessing shared by the trainer and the server: one decoded image (a
Pillow ``Image``, header read, pixels not yet decoded) -> (C, H, W) uint8 pixels of
a model's input size, so that a picture sent to the server is turned into exactly
the array the trainer made from the same file.

The rule, in order:

1. the first frame of an animated or multi-frame file (Pillow opens that one);
2. a large JPEG is decoded at a reduced scale (libjpeg's DCT scaling, 1/2 .. 1/8)
   that stays at least the target size, which only saves time and memory;
3. 16-bit greyscale is scaled to 8 bits (``round(v / 257)``); transparent pixels
   are composited onto black (the background of the MNIST family);
4. converted to the model's channel count: 1 -> Pillow's ``L`` (ITU-R 601-2 luma,
   ``L = R * 299/1000 + G * 587/1000 + B * 114/1000``), 3 -> ``RGB``;
5. resized to (H, W) by the model's resize rule, bilinear with Pillow's
   antialiasing (an image already of that size is not resampled):
   ``resize`` (the default): the whole image to H x W, aspect ratio not kept;
   ``resize_crop``: scaled to cover H x W keeping its aspect ratio, then
   centre-cropped (torchvision's ``Resize`` + ``CenterCrop``).

The pixels are then ``x / 255`` in [0, 1], like any uint8 input. The rule a model
was trained with is recorded by the trainer in the bundle manifest's provenance
(``input_resize``); a bundle without it uses ``resize``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "DEFAULT_RESIZE",
    "GRAY_MODES",
    "PROVENANCE_KEY",
    "RESIZE_RULES",
    "SUPPORTED_MODES",
    "is_grayscale",
    "resize_rule",
    "to_pixels",
]

RESIZE_RULES = ("resize", "resize_crop")
DEFAULT_RESIZE = "resize"
PROVENANCE_KEY = "input_resize"  # in the manifest's provenance (a field of `input` from format 1.1)

_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
GRAY_MODES = frozenset({"1", "L", "LA", "La", *_SIXTEEN_BIT})
# Every mode a PNG, JPEG, WebP or GIF file opens as.
SUPPORTED_MODES = GRAY_MODES | {"P", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr"}
_BILINEAR = Image.Resampling.BILINEAR


def resize_rule(provenance: Mapping[str, Any]) -> str:
    """The resize rule recorded in a manifest's provenance (``resize`` when absent);
    ``ValueError`` for a value that is not one of ``RESIZE_RULES``."""
    rule = provenance.get(PROVENANCE_KEY, DEFAULT_RESIZE)
    if rule not in RESIZE_RULES:
        raise ValueError(f"{PROVENANCE_KEY} {rule!r} is not one of {', '.join(RESIZE_RULES)}")
    return str(rule)


def is_grayscale(im: Image.Image) -> bool:
    """Whether the image holds one channel of values (with or without alpha)."""
    return im.mode in GRAY_MODES


def _eight_bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer greyscale as ``L`` scaled by 1/257 (Pillow's own ``convert``
    would clip everything above 255)."""
    a = np.asarray(im).astype(np.int64)
    a = (np.clip(a, 0, 65535) + 128) // 257
    return Image.fromarray(a.astype(np.uint8))  # 2-D uint8: mode L


def _onto_black(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("LA", "La", "PA", "RGBA", "RGBa") or (
        im.mode == "P" and "transparency" in im.info
    )


def to_pixels(im: Image.Image, channels: int, size: tuple[int, int], rule: str) -> np.ndarray:
    """``im`` as (channels, H, W) uint8 for ``size`` = (H, W) by ``rule`` (see the
    module docstring). ``channels`` is 1 or 3. Decodes the pixels; Pillow's errors
    (``OSError`` for truncated data, ...) propagate."""
    if channels not in (1, 3):
        raise ValueError(f"images convert to 1 or 3 channels, not {channels}")
    if rule not in RESIZE_RULES:
        raise ValueError(f"resize rule {rule!r} is not one of {', '.join(RESIZE_RULES)}")
    h, w = size
    if im.format == "JPEG" and im.width >= 2 * w and im.height >= 2 * h:
        im.draft(im.mode, (w, h))
    if im.mode in _SIXTEEN_BIT:
        im = _eight_bit(im)
    elif _has_alpha(im):
        im = _onto_black(im)
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (w, h):
        if rule == "resize":
            im = im.resize((w, h), _BILINEAR)
        else:
            im = ImageOps.fit(im, (w, h), _BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if channels == 1 else np.ascontiguousarray(a.transpose(2, 0, 1))
