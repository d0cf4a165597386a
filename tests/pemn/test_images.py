"""pemn.images: the preprocessing shared by the trainer and the server, checked
against values computed independently (numpy slices, the luma formula), on real
Fashion-MNIST pixels written in every supported format."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pemn.images import resize_rule, to_pixels
from trainer.data import load_fashion_mnist


def _encode(im: Image.Image, fmt: str, **kw: object) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.fixture(scope="module")
def shoes() -> np.ndarray:
    return load_fashion_mnist("test")[0][:8]  # (8, 28, 28) uint8


@pytest.mark.data
@pytest.mark.parametrize(("fmt", "kw"), [("PNG", {}), ("WEBP", {"lossless": True}), ("GIF", {})])
def test_lossless_files_give_back_the_exact_pixels(shoes, fmt, kw):
    for x in shoes:
        got = to_pixels(_encode(Image.fromarray(x), fmt, **kw), 1, (28, 28), "resize")
        assert got.shape == (1, 28, 28) and got.dtype == np.uint8
        np.testing.assert_array_equal(got[0], x)


@pytest.mark.data
def test_jpeg_is_close_and_grey_goes_to_three_channels(shoes):
    got = to_pixels(_encode(Image.fromarray(shoes[0]), "JPEG", quality=95), 1, (28, 28), "resize")
    assert np.abs(got[0].astype(int) - shoes[0]).mean() < 3
    rgb = to_pixels(_encode(Image.fromarray(shoes[0]), "PNG"), 3, (28, 28), "resize")
    assert rgb.shape == (3, 28, 28)
    for c in range(3):
        np.testing.assert_array_equal(rgb[c], shoes[0])


def test_colour_to_grey_is_the_luma_formula():
    r, g, b = 200, 100, 50
    im = Image.new("RGB", (28, 28), (r, g, b))
    got = to_pixels(_encode(im, "PNG"), 1, (28, 28), "resize")
    assert set(np.unique(got)) == {int((r * 299 + g * 587 + b * 114) / 1000)}


def test_transparent_pixels_go_onto_black():
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    a[..., :3] = 255
    a[:2, :, 3] = 255  # top half opaque white, bottom half fully transparent white
    a[2, 0, 3] = 128  # one half-transparent pixel
    got = to_pixels(_encode(Image.fromarray(a), "PNG"), 1, (4, 4), "resize")[0]
    assert (got[:2] == 255).all() and got[3].max() == 0 and got[2, 0] in (127, 128)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    a = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    got = to_pixels(_encode(Image.fromarray(a), "PNG"), 1, (1, 4), "resize")[0, 0]
    assert got.tolist() == [0, 1, 255, 128]


@pytest.mark.data
def test_resize_crop_takes_the_centre_and_resize_takes_everything(shoes):
    wide = np.concatenate([shoes[1][:, :14], shoes[0], shoes[2][:, 14:]], axis=1)  # 28 x 56
    im = _encode(Image.fromarray(wide), "PNG")
    crop = to_pixels(im, 1, (28, 28), "resize_crop")[0]
    np.testing.assert_array_equal(crop, shoes[0])  # the scale is 1: an exact crop
    whole = to_pixels(_encode(Image.fromarray(wide), "PNG"), 1, (28, 28), "resize")[0]
    # the whole width squeezed in: column j comes from columns near 2j of the wide image
    assert np.abs(whole[:, 7].astype(int) - wide[:, 14:16].mean(1)).mean() < 40
    assert not np.array_equal(whole, crop)


@pytest.mark.data
def test_animated_gif_takes_its_first_frame(shoes):
    frames = [Image.fromarray(x) for x in shoes[:3]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    im = Image.open(io.BytesIO(buf.getvalue()))
    assert getattr(im, "n_frames", 1) == 3
    np.testing.assert_array_equal(to_pixels(im, 1, (28, 28), "resize")[0], shoes[0])


def test_large_jpeg_is_drafted_and_still_resized():
    im = Image.new("RGB", (1600, 1200), (10, 200, 30))
    got = to_pixels(_encode(im, "JPEG", quality=95), 3, (32, 32), "resize")
    assert got.shape == (3, 32, 32)
    assert np.abs(got.reshape(3, -1).mean(1) - [10, 200, 30]).max() < 4


def test_resize_rule_from_provenance():
    assert resize_rule({}) == "resize"
    assert resize_rule({"input_resize": "resize_crop", "command": "x"}) == "resize_crop"
    with pytest.raises(ValueError, match="stretch"):
        resize_rule({"input_resize": "stretch"})
    with pytest.raises(ValueError, match="channels"):
        to_pixels(Image.new("L", (2, 2)), 2, (2, 2), "resize")
