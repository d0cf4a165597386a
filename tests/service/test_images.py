"""Images in over HTTP against a real server: multipart files, base64 JSON and OIP
``BYTES`` (JSON and ``tritonclient``'s binary) give the predictions of the same
pixels sent as tensors; every bad file is a 4xx naming it, and the server keeps
serving."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pemn.testing import edit_manifest, make_bundle
from tests.service.helpers import AUTH, local_logits, upload
from trainer.data import load_fashion_mnist

pytestmark = [pytest.mark.redis, pytest.mark.data]


def _png(a: np.ndarray, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **kw)
    return buf.getvalue()


def _logits(r) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert r.status_code == 200, r.text
    return np.array([o["logits"] for o in r.json()["outputs"]], dtype=np.float32)


def _err(r, status: int, code: str) -> str:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code, body
    return str(body["error"])


@pytest.fixture(scope="module")
def pictures() -> np.ndarray:
    return load_fashion_mnist("test")[0][:6]  # real test images, (6, 28, 28) uint8


@pytest.fixture(scope="module")
def gray(server) -> bytes:  # type: ignore[no-untyped-def]
    data = make_bundle(mask_seed=900)
    assert upload(server, "img-gray", data).status_code == 201
    return data


def _as_tensor(a: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W) or (n, C, H, W) -> the float32 (n, C, H, W) a client would send."""
    x = a.astype(np.float32) / 255.0
    return x[:, None] if x.ndim == 3 else x


def test_multipart_files_predict_like_their_pixels(server, gray, pictures):
    files = [("file", (f"item-{i}.png", _png(x), "image/png")) for i, x in enumerate(pictures)]
    r = server.client.post(
        "/predict", data={"model": "img-gray", "return_logits": "true", "top_k": "2"}, files=files
    )
    got = _logits(r)
    np.testing.assert_allclose(got, local_logits(gray, _as_tensor(pictures)), atol=1e-5)
    outputs = r.json()["outputs"]
    assert [o["file"] for o in outputs] == [f"item-{i}.png" for i in range(len(pictures))]
    assert all(len(o["top"]) == 2 for o in outputs)
    # the same pixels as tensors give the same logits through the server
    t = server.client.post(
        "/predict",
        json={"model": "img-gray", "inputs": _as_tensor(pictures).tolist(), "return_logits": True},
    )
    np.testing.assert_allclose(got, _logits(t), atol=1e-6)


def test_base64_json_images_and_data_urls(server, gray, pictures):
    texts = [base64.b64encode(_png(x, "WEBP", lossless=True)).decode() for x in pictures[:2]]
    texts.append("data:image/png;base64," + base64.b64encode(_png(pictures[2])).decode())
    r = server.client.post(
        "/predict", json={"model": "img-gray", "images": texts, "return_logits": True}
    )
    np.testing.assert_allclose(_logits(r), local_logits(gray, _as_tensor(pictures[:3])), atol=1e-5)
    assert r.json()["outputs"][0]["file"] is None
    both = {"model": "img-gray", "images": texts, "inputs": [[0.0]]}
    assert "exactly one" in _err(server.client.post("/predict", json=both), 422, "request.invalid")


def test_oip_bytes_json_and_tritonclient_binary(server, gray, pictures):
    httpclient = pytest.importorskip("tritonclient.http")
    files = [_png(x) for x in pictures[:3]]
    want = local_logits(gray, _as_tensor(pictures[:3]))
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [3],
                "datatype": "BYTES",
                "data": [base64.b64encode(f).decode() for f in files],
            }
        ],
        "outputs": [{"name": "logits"}],
    }
    r = server.client.post("/v2/models/img-gray/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), want, atol=1e-5)
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    inp = httpclient.InferInput("input", [3, 1], "BYTES")
    inp.set_data_from_numpy(np.array(files, dtype=object).reshape(3, 1), binary_data=True)
    res = client.infer("img-gray", [inp], outputs=[httpclient.InferRequestedOutput("logits")])
    np.testing.assert_allclose(res.as_numpy("logits"), want, atol=1e-5)
    client.close()
    bad = {"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": ["eA=="]}]}
    _err(server.client.post("/v2/models/img-gray/infer", json=bad), 422, "request.bad_input")


def test_colour_model_and_resize_crop_rule(server, pictures):
    rgb = make_bundle(config={"in_channels": 3, "image_size": 28, "hidden": [32]}, mask_seed=901)
    crop = edit_manifest(rgb, lambda m: {**m, "provenance": {"input_resize": "resize_crop"}})
    assert upload(server, "img-rgb-crop", crop).status_code == 201
    assert server.client.get("/models/img-rgb-crop").json()["input_resize"] == "resize_crop"
    wide = np.concatenate([pictures[1][:, :14], pictures[0], pictures[2][:, 14:]], axis=1)
    r = server.client.post(
        "/predict",
        data={"model": "img-rgb-crop", "return_logits": "true"},
        files=[("file", ("wide.png", _png(wide), "image/png"))],
    )
    # a grey 28x56 picture: centre crop (exact at scale 1), grey copied to R, G and B
    want = _as_tensor(np.repeat(pictures[0][None, None], 3, axis=1))
    np.testing.assert_allclose(_logits(r), local_logits(crop, want), atol=1e-5)


def test_limits_and_bad_files_are_4xx_naming_the_file(start_server, redis_store, pictures):
    s = start_server(
        store_url=redis_store,
        api_key=AUTH["X-API-Key"],
        max_image_bytes="4096",
        max_image_pixels="250000",
        max_images_per_request="3",
    )
    data = make_bundle(mask_seed=902)
    upload(s, "img-limits", data)
    good = _png(pictures[0])

    def send(*files: tuple[str, bytes]):  # type: ignore[no-untyped-def]
        return s.client.post(
            "/predict",
            data={"model": "img-limits"},
            files=[("file", (n, b, "application/octet-stream")) for n, b in files],
        )

    corrupt = bytearray(good)
    corrupt[60:80] = b"\0" * 20  # inside the compressed pixel data
    cases = [
        (("notes.txt", b"just some text, no image"), 415, "image.unsupported_format", "notes.txt"),
        (("pic.bmp", _png(pictures[0], "BMP")), 415, "image.unsupported_format", "pic.bmp"),
        (("cut.png", good[: len(good) // 2]), 422, "image.unreadable", "cut.png"),
        (("flip.png", bytes(corrupt)), 422, "image.unreadable", "flip.png"),
        (("empty.png", b""), 422, "image.unreadable", "empty.png"),
        (("big.png", _png(np.zeros((600, 600), np.uint8))), 413, "image.too_large", "600x600"),
        (
            ("noise.png", _png(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))),
            413,
            "image.too_large",
            "4,096-byte",
        ),
    ]
    for (name, blob), status, code, needle in cases:
        # a bad file in a batch fails the whole request, naming that file
        msg = _err(send(("ok.png", good), (name, blob)), status, code)
        assert needle in msg, msg
    assert "limit is 3" in _err(send(*[("a.png", good)] * 4), 413, "request.too_many_items")
    _err(
        s.client.post("/predict", json={"model": "img-limits", "images": ["eA=="] * 4}),
        413,
        "request.too_many_items",
    )
    assert "base64" in _err(
        s.client.post("/predict", json={"model": "img-limits", "images": ["%%%"]}),
        422,
        "image.unreadable",
    )
    _err(
        s.client.post(
            "/predict",
            data={"model": "img-limits"},
            files=[("image", ("a.png", good, "image/png"))],
        ),
        422,
        "request.bad_multipart",
    )
    text_file = s.client.post(
        "/predict",
        data={"model": "img-limits", "file": "x"},
        files=[("file", ("a.png", good, "image/png"))],
    )
    assert "-F file=@" in _err(text_file, 422, "request.bad_multipart")
    no_files = s.client.post("/predict", data={"model": "img-limits"})  # urlencoded
    _err(no_files, 415, "request.unsupported_media_type")
    _err(
        s.client.post(
            "/predict",
            data={"model": "img-limits", "top_k": "many"},
            files=[("file", ("a.png", good, "image/png"))],
        ),
        422,
        "request.invalid",
    )
    # still serving, and the good file alone is predicted like its pixels
    np.testing.assert_allclose(
        _logits(
            s.client.post(
                "/predict",
                data={"model": "img-limits", "return_logits": "1"},
                files=[("file", ("ok.png", good, "image/png"))],
            )
        ),
        local_logits(data, _as_tensor(pictures[:1])),
        atol=1e-5,
    )
    assert "Traceback" not in s.log()


def _bomb(side: int) -> bytes:
    """A real PNG of ``side`` x ``side`` zero pixels: tiny compressed, huge decoded."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    rows = zlib.compress(b"\0" * ((side + 1) * side), 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_its_header(server, gray):
    bomb = _bomb(12_000)  # 144 million pixels in about 140 kB
    assert len(bomb) < 200_000
    r = server.client.post(
        "/predict", data={"model": "img-gray"}, files=[("file", ("bomb.png", bomb, "image/png"))]
    )
    msg = _err(r, 413, "image.too_large")
    assert "bomb.png" in msg and "12000x12000" in msg
    assert server.client.get("/v2/health/ready").status_code == 200
