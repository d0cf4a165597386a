"""``service.images`` in process: mutated files (truncated, bytes flipped, headers
rewritten) of every supported format only ever raise the domain errors that become
4xx answers; nothing else escapes and no file is decoded past the limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.catalog import InputRecord, ModelRecord
from service.errors import DomainError, ImageTooLarge, TooManyItems
from service.images import EncodedImage, ImageLimits, decode_images

LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20, max_total_pixels=1 << 21, max_images=8)


def _record(channels: int = 1, **provenance: str) -> ModelRecord:
    return ModelRecord(
        name="m",
        version=1,
        content_id="sha256:" + "0" * 64,
        size=1,
        arch="mlp",
        config={},
        strategy="rp",
        seed=0,
        fingerprint="f",
        file_size=1,
        dense_fp32_size=1,
        size_ratio=1.0,
        input=InputRecord(shape=(channels, 28, 28), mean=(0.5,) * channels, std=(0.25,) * channels),
        labels=tuple("abcdefghij"),
        provenance=provenance,
    )


def _files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    out = {}
    for fmt, kw in (("PNG", {}), ("JPEG", {"quality": 90}), ("WEBP", {}), ("GIF", {})):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, fmt, **kw)
        out[fmt] = buf.getvalue()
    return out


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_mutated_files_raise_only_domain_errors(fmt):
    good = _files()[fmt]
    x = decode_images([EncodedImage("ok", good)], _record(3), LIMITS)
    assert x.shape == (1, 3, 28, 28) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
    rng = np.random.default_rng(1)
    outcomes = {"decoded": 0, "refused": 0}
    for trial in range(150):
        blob = bytearray(good)
        if trial % 3 == 0:
            blob = blob[: int(rng.integers(0, len(blob)))]
        else:
            for at in rng.integers(0, len(blob), int(rng.integers(1, 8))):
                blob[at] = int(rng.integers(0, 256))
        try:
            decode_images([EncodedImage(f"m{trial}", bytes(blob))], _record(1), LIMITS)
            outcomes["decoded"] += 1
        except DomainError as exc:
            assert f"m{trial}" in exc.message or isinstance(exc, TooManyItems)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0


def test_limits_hold_before_decoding():
    big = io.BytesIO()
    Image.new("L", (2000, 1000)).save(big, "PNG")  # 2 megapixels, a few kB
    with pytest.raises(ImageTooLarge, match="2000x1000"):
        decode_images([EncodedImage("big", big.getvalue())], _record(), LIMITS)
    half = io.BytesIO()
    Image.new("L", (1000, 800)).save(half, "PNG")  # under the per-file limit, not in total
    three = [EncodedImage(f"h{i}", half.getvalue()) for i in range(3)]
    with pytest.raises(ImageTooLarge, match="3 images hold 2,400,000 pixels"):
        decode_images(three, _record(), LIMITS)
    with pytest.raises(TooManyItems):
        decode_images([EncodedImage("x", b"x")] * 9, _record(), LIMITS)
