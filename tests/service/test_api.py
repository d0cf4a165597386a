"""The API over HTTP against a real server process and a real Redis store."""

from __future__ import annotations

import base64
import io
import struct

import numpy as np
import pytest

from pemn.bundle import BundleError, read_bundle
from pemn.prototype import Strategy
from pemn.testing import edit_manifest, make_bundle
from tests.service.helpers import AUTH, images, local_logits, predict_logits, upload

pytestmark = pytest.mark.redis


def test_health_and_index(server):
    assert server.client.get("/v2/health/live").json() == {"live": True}
    assert server.client.get("/v2/health/ready").status_code == 200
    assert server.client.get("/v2").json()["name"] == "pemn-serve"
    assert server.client.get("/").json()["ready"] is True
    assert "pemn_requests" in server.client.get("/metrics").text
    docs = server.client.get("/openapi.json").json()
    assert "/predict" in docs["paths"] and "/v2/models/{name}/infer" in docs["paths"]
    body = docs["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/PredictRequest"}
    assert {"PredictRequest", "PredictResponse"} <= set(docs["components"]["schemas"])
    assert server.client.get("/docs").status_code == 200


def test_upload_then_predict_equals_local_materialization(server):
    data = make_bundle(mask_seed=11, metrics={"test_accuracy": 0.5})
    r = upload(server, "api-predict", data)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["version"] == 1 and body["created"] is True
    assert body["content_id"] == read_bundle(data).content_id
    assert body["backbone"] == read_bundle(data).fingerprint
    assert body["file_size"] == len(data) and body["dense_fp32_size"] > 20 * len(data)
    assert body["metrics"] == {"test_accuracy": 0.5}
    x = images(5)
    got, resp = predict_logits(server, "api-predict", x, top_k=3)
    np.testing.assert_allclose(got, local_logits(data, x), rtol=0, atol=1e-5)
    assert resp["version"] == 1 and resp["runtime"] == "torch"
    top = resp["outputs"][0]["top"]
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    assert top[0]["label"] == f"class-{top[0]['index']}"
    assert top[0]["index"] == int(np.argmax(got[0]))


def test_idempotent_reupload_and_new_version(server):
    data = make_bundle(mask_seed=12)
    first = upload(server, "api-idem", data)
    again = upload(server, "api-idem", data)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["version"] == first.json()["version"] and again.json()["created"] is False
    newer = upload(server, "api-idem", make_bundle(mask_seed=13))
    assert newer.status_code == 201 and newer.json()["version"] == first.json()["version"] + 1
    info = server.client.get("/models/api-idem").json()
    assert [v["version"] for v in info["versions"]] == [2, 1] or [
        v["version"] for v in info["versions"]
    ] == [1, 2]
    # an older version stays servable by number
    x = images(2, seed=3)
    got, resp = predict_logits(server, "api-idem", x, version=1)
    assert resp["version"] == 1
    np.testing.assert_allclose(got, local_logits(data, x), atol=1e-5)


def test_multipart_upload_uses_the_file_stem(server):
    data = make_bundle(mask_seed=14)
    r = server.client.post(
        "/models",
        files={"file": ("api-multipart.pemn", data, "application/octet-stream")},
        headers=AUTH,
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "api-multipart"


def test_list_get_delete(server):
    upload(server, "api-del", make_bundle(mask_seed=15))
    names = [m["name"] for m in server.client.get("/models").json()["data"]]
    assert "api-del" in names
    assert server.client.delete("/models/api-del").status_code == 401
    assert server.client.delete("/models/api-del", headers=AUTH).status_code == 204
    assert server.client.get("/models/api-del").status_code == 404
    r = server.client.delete("/models/api-del", headers=AUTH)
    assert r.status_code == 404 and r.json()["code"] == "store.not_found"


def test_npy_base64_inputs_and_uint8(server):
    data = make_bundle(mask_seed=16)
    upload(server, "api-npy", data)
    x = images(3, seed=4)
    buf = io.BytesIO()
    np.save(buf, x)
    r = server.client.post(
        "/predict",
        json={
            "model": "api-npy",
            "inputs": base64.b64encode(buf.getvalue()).decode(),
            "return_logits": True,
        },
    )
    assert r.status_code == 200, r.text
    got = np.array([o["logits"] for o in r.json()["outputs"]], dtype=np.float32)
    np.testing.assert_allclose(got, local_logits(data, x), atol=1e-5)
    u8 = (x * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    np.save(buf, u8)
    r = server.client.post(
        "/predict",
        json={
            "model": "api-npy",
            "inputs": base64.b64encode(buf.getvalue()).decode(),
            "return_logits": True,
        },
    )
    got = np.array([o["logits"] for o in r.json()["outputs"]], dtype=np.float32)
    np.testing.assert_allclose(got, local_logits(data, u8.astype(np.float32) / 255), atol=1e-5)


# ---- errors -------------------------------------------------------------------


def _err(r, status, code):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and len(body["error"]) > 10
    return body["error"]


def test_auth_errors(server):
    data = make_bundle(mask_seed=17)
    r = server.client.post("/models", params={"name": "api-auth"}, content=data)
    assert "API key" in _err(r, 401, "auth.missing_key")
    r = upload(server, "api-auth", data, **{"X-API-Key": "wrong-key-wrong-key"})
    _err(r, 401, "auth.invalid_key")
    r = server.client.post(
        "/models",
        params={"name": "api-auth"},
        content=data,
        headers={"Authorization": f"Bearer {AUTH['X-API-Key']}"},
    )
    assert r.status_code == 201


def test_not_found_errors(server):
    x = images(1).tolist()
    assert "nope" in _err(
        server.client.post("/predict", json={"model": "nope", "inputs": x}), 404, "model.not_found"
    )
    upload(server, "api-404", make_bundle(mask_seed=18))
    msg = _err(
        server.client.post("/predict", json={"model": "api-404", "version": 9, "inputs": x}),
        404,
        "model.version_not_found",
    )
    assert "9" in msg
    _err(server.client.get("/v2/models/nope"), 404, "model.not_found")
    _err(server.client.get("/nothing-here"), 404, "not_found")


def test_request_errors(server):
    upload(server, "api-bad", make_bundle(mask_seed=19))
    c = server.client
    _err(
        c.post("/predict", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "request.malformed_json",
    )
    assert "model" in _err(c.post("/predict", json={"inputs": [1]}), 422, "request.invalid")
    assert "(2, 28)" in _err(
        c.post("/predict", json={"model": "api-bad", "inputs": [[0.0] * 28] * 2}),
        422,
        "request.bad_input",
    )
    ragged = [[[[0.0] * 28] * 28], [[[0.0] * 28] * 27]]  # the first item has the right shape
    assert "ragged" in _err(
        c.post("/predict", json={"model": "api-bad", "inputs": ragged}), 422, "request.bad_input"
    )
    assert "dtype" in _err(
        c.post("/predict", json={"model": "api-bad", "inputs": [[["a"] * 28] * 28]}),
        422,
        "request.bad_input",
    )
    assert "base64" in _err(
        c.post("/predict", json={"model": "api-bad", "inputs": "***"}), 422, "request.bad_input"
    )
    assert "top_k" in _err(
        c.post("/predict", json={"model": "api-bad", "inputs": images(1).tolist(), "top_k": 1000}),
        422,
        "request.bad_top_k",
    )
    many = np.zeros((1025, 1, 28, 28), np.float32)
    buf = io.BytesIO()
    np.save(buf, many)
    _err(
        c.post(
            "/predict",
            json={"model": "api-bad", "inputs": base64.b64encode(buf.getvalue()).decode()},
        ),
        413,
        "request.too_many_items",
    )
    _err(
        c.post("/models", params={"name": "api-bad2"}, content=b"", headers=AUTH),
        422,
        "request.empty_body",
    )
    assert "name" in _err(
        c.post("/models", content=make_bundle(), headers=AUTH), 422, "request.missing_name"
    )
    _err(upload(server, "../etc/passwd", make_bundle()), 422, "store.invalid_name")


def _mutations() -> list[tuple[str, bytes]]:
    good = make_bundle(mask_seed=20)

    def setkey(path: tuple[str, ...], value: object):  # type: ignore[no-untyped-def]
        def edit(m: dict) -> dict:
            d = m
            for k in path[:-1]:
                d = d[k]
            d[path[-1]] = value
            return m

        return edit

    return [
        ("truncated", good[: len(good) - 100]),
        ("trailing", good + b"\0\0\0\0"),
        ("header-length", struct.pack("<Q", 10**9) + good[8:]),
        ("not-json", struct.pack("<Q", 4) + b"\xff\xfe{[" + good[12:]),
        ("padding-bit", good[:-1] + bytes([good[-1] | 0x80])),
        ("popcount", good[:-200] + bytes([good[-200] ^ 0x01]) + good[-199:]),
        ("major-version", edit_manifest(good, setkey(("format_version",), "9.0"))),
        ("unknown-arch", edit_manifest(good, setkey(("arch", "name"), "xyz"))),
        ("digest", edit_manifest(good, setkey(("prototype_digest",), "sha256:" + "0" * 64))),
        ("labels", edit_manifest(good, setkey(("labels",), ["only-one"]))),
        ("density", edit_manifest(good, setkey(("density",), 0.25))),
    ]


@pytest.mark.parametrize(("kind", "data"), _mutations(), ids=[k for k, _ in _mutations()])
def test_invalid_bundles_get_their_bundle_code(server, kind, data):
    with pytest.raises(BundleError) as exc:
        read_bundle(data)
    r = upload(server, f"api-invalid-{kind}", data)
    status = 413 if exc.value.code == "bundle.too_large" else 422
    _err(r, status, exc.value.code)
    # nothing was stored under that name
    assert server.client.get(f"/models/api-invalid-{kind}").status_code == 404


def test_oversized_upload_and_inference_bodies_are_413(start_server, redis_store):
    small = start_server(
        store_url=redis_store,
        api_key=AUTH["X-API-Key"],
        max_upload_bytes="10000",
        max_request_bytes="8192",
    )
    big = make_bundle(config={"in_channels": 1, "image_size": 28, "hidden": [128]})
    assert len(big) > 10000
    _err(upload(small, "api-big", big), 413, "request.too_large")
    upload(small, "api-small", make_bundle(mask_seed=24))
    x = images(1)
    buf = io.BytesIO()
    np.save(buf, x)
    npy = base64.b64encode(buf.getvalue()).decode()
    r = small.client.post("/predict", json={"model": "api-small", "inputs": npy})
    assert r.status_code == 200, r.text  # about 4.5 kB
    as_lists = {"model": "api-small", "inputs": x.tolist()}  # about 16 kB of JSON
    assert "8192" in _err(small.client.post("/predict", json=as_lists), 413, "request.too_large")
    oip = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32"}]}
    oip["inputs"][0]["data"] = x.reshape(-1).tolist()
    _err(small.client.post("/v2/models/api-small/infer", json=oip), 413, "request.too_large")


def test_timeout_is_504_and_server_keeps_serving(server):
    data = make_bundle(
        strategy=Strategy("mp", seed=77), mask_seed=21
    )  # a backbone nobody has loaded yet
    upload(server, "api-timeout", data)
    r = server.client.post(
        "/predict", json={"model": "api-timeout", "inputs": images(1).tolist(), "timeout_ms": 0.5}
    )
    assert "api-timeout" in _err(r, 504, "request.timeout")
    got, _ = predict_logits(server, "api-timeout", images(1))
    np.testing.assert_allclose(got, local_logits(data, images(1)), atol=1e-5)


def test_full_queue_is_503_with_retry_after(start_server, redis_store):
    import concurrent.futures
    import time

    s = start_server(store_url=redis_store, max_queue="1", api_key=AUTH["X-API-Key"])
    config = {"in_channels": 1, "image_size": 28, "width": 64, "depth": 4, "patch": 1}
    upload(s, "api-queue", make_bundle(arch="convmixer", config=config, mask_seed=22))
    predict_logits(s, "api-queue", images(1))  # warm: loaded
    buf = io.BytesIO()
    np.save(buf, images(128))
    slow = {"model": "api-queue", "inputs": base64.b64encode(buf.getvalue()).decode()}
    started = s.metric("pemn_queue_time_seconds_count", model="api-queue")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        running = pool.submit(s.client.post, "/predict", json=slow)  # keeps the device busy
        while s.metric("pemn_queue_time_seconds_count", model="api-queue") == started:
            time.sleep(0.005)  # until its batch has started
        responses = list(
            pool.map(
                lambda i: s.client.post(
                    "/predict", json={"model": "api-queue", "inputs": images(1, i).tolist()}
                ),
                range(5),
            )
        )
        assert running.result().status_code == 200
    codes = [r.status_code for r in responses]
    assert 200 in codes and 503 in codes, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1"
    assert busy.json()["code"] == "server.overloaded"


def test_oip_json_infer_and_metadata(server):
    data = make_bundle(mask_seed=23)
    upload(server, "api-oip", data)
    meta = server.client.get("/v2/models/api-oip").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    assert meta["versions"] == ["1"]
    assert server.client.get("/v2/models/api-oip/ready").json()["ready"] is True
    x = images(2, seed=7)
    body = {
        "id": "req-1",
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ],
    }
    r = server.client.post("/v2/models/api-oip/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "req-1" and r.json()["model_version"] == "1"
    logits = np.array(out["logits"]["data"], np.float32).reshape(out["logits"]["shape"])
    np.testing.assert_allclose(logits, local_logits(data, x), atol=1e-5)
    probs = np.array(out["probabilities"]["data"]).reshape(2, 10)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    r = server.client.post(
        "/v2/models/api-oip/versions/1/infer", json={**body, "outputs": [{"name": "probabilities"}]}
    )
    assert [o["name"] for o in r.json()["outputs"]] == ["probabilities"]
    bad = {
        "inputs": [
            {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 10}
        ]
    }
    assert "784" in _err(
        server.client.post("/v2/models/api-oip/infer", json=bad), 422, "request.bad_input"
    )
    bad = {"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [0.0]}]}
    _err(server.client.post("/v2/models/api-oip/infer", json=bad), 422, "request.bad_input")
    _err(
        server.client.post(
            "/v2/models/api-oip/infer", content=b"{", headers={"content-type": "application/json"}
        ),
        400,
        "request.malformed_json",
    )
    docs = server.client.get("/openapi.json").json()
    assert (
        "InferRequest" in docs["components"]["schemas"]
        and "InferInput" in docs["components"]["schemas"]
    )
