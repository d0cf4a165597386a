"""Serving behaviour under concurrency, over HTTP against real server processes
sharing a real Redis store: per-request task swapping, atomic re-upload, single
flight loads, replicas, the ONNX runtime and an existing OIP client."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pytest

from pemn.bundle import read_bundle
from pemn.testing import make_bundle
from tests.service.conftest import API_KEY
from tests.service.helpers import images, local_logits, predict_logits, upload

pytestmark = pytest.mark.redis


def test_interleaved_tasks_on_one_backbone_match_each_task_alone(server):
    tasks = {f"swap-{i}": make_bundle(mask_seed=100 + i) for i in range(4)}
    assert len({read_bundle(d).fingerprint for d in tasks.values()}) == 1
    for name, data in tasks.items():
        assert upload(server, name, data).status_code == 201
    x = images(3, seed=9)
    alone = {name: predict_logits(server, name, x)[0] for name in tasks}
    for name, data in tasks.items():
        np.testing.assert_allclose(alone[name], local_logits(data, x), atol=1e-5)
    assert not np.allclose(alone["swap-0"], alone["swap-1"])
    order = [f"swap-{i % 4}" for i in range(64)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda n: (n, predict_logits(server, n, x)), order))
    for name, (logits, body) in results:
        assert body["model"] == name
        np.testing.assert_allclose(logits, alone[name], rtol=0, atol=1e-5)
    assert server.metric("pemn_batch_size_count") > 0


def test_reupload_under_load_is_atomic(server):
    versions = [make_bundle(mask_seed=200 + i) for i in range(3)]
    assert upload(server, "atomic", versions[0]).status_code == 201
    x = images(2, seed=5)
    expected = {read_bundle(d).content_id: local_logits(d, x) for d in versions}
    stop = threading.Event()
    seen: list[tuple[str, np.ndarray]] = []
    errors: list[str] = []

    def hammer() -> None:
        while not stop.is_set():
            r = server.client.post(
                "/predict", json={"model": "atomic", "inputs": x.tolist(), "return_logits": True}
            )
            if r.status_code != 200:
                errors.append(r.text)
                continue
            body = r.json()
            seen.append(
                (body["content_id"], np.array([o["logits"] for o in body["outputs"]], np.float32))
            )

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for data in versions[1:]:
            time.sleep(0.5)
            assert upload(server, "atomic", data).status_code == 201
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(seen) > 20
    for cid, logits in seen:
        np.testing.assert_allclose(
            logits, expected[cid], rtol=0, atol=1e-5
        )  # never a mix of versions
    last = read_bundle(versions[-1]).content_id
    assert seen[-1][0] == last
    assert {cid for cid, _ in seen} >= {read_bundle(versions[0]).content_id, last}


def test_cold_task_loads_once_for_concurrent_requests(server):
    data = make_bundle(mask_seed=300)
    upload(server, "single-flight", data)
    count = lambda kind: server.metric("pemn_materialize_seconds_count", kind=kind)  # noqa: E731
    before = {k: count(k) for k in ("packed", "task")}
    x = images(1, seed=1)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: predict_logits(server, "single-flight", x)[0], range(12)))
    # one fetch + validation from the store, one expansion into the hot tier
    assert {k: count(k) - v for k, v in before.items()} == {"packed": 1, "task": 1}
    for logits in results:
        np.testing.assert_allclose(logits, results[0], atol=1e-5)
    model = server.client.get("/models/single-flight").json()
    assert model["packed"] is True
    assert model["loaded"] and model["loaded"][0]["device"] == "cpu"


def test_second_replica_serves_an_upload_made_through_the_first(server, start_server, redis_store):
    replica = start_server(store_url=redis_store, api_key=API_KEY, poll_interval_s="0.5")
    data = make_bundle(mask_seed=400)
    assert upload(server, "replicated", data).status_code == 201
    x = images(2, seed=2)
    deadline = time.monotonic() + 10
    while True:
        r = replica.client.post(
            "/predict", json={"model": "replicated", "inputs": x.tolist(), "return_logits": True}
        )
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        assert r.json()["code"] == "model.not_found"
        time.sleep(0.05)
    assert r.status_code == 200, r.text
    got = np.array([o["logits"] for o in r.json()["outputs"]], np.float32)
    np.testing.assert_allclose(got, local_logits(data, x), atol=1e-5)
    # deletion through the replica reaches the first server too
    assert (
        replica.client.delete("/models/replicated", headers={"X-API-Key": API_KEY}).status_code
        == 204
    )
    deadline = time.monotonic() + 10
    while (
        server.client.get("/models/replicated").status_code != 404 and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert server.client.get("/models/replicated").status_code == 404


def test_onnx_runtime_matches_torch(start_server, redis_store):
    onnx = start_server(store_url=redis_store, api_key=API_KEY, runtime="onnx")
    data = make_bundle(
        arch="convmixer",
        config={"in_channels": 1, "image_size": 28, "width": 16, "depth": 2, "patch": 4},
        mask_seed=500,
    )
    assert upload(onnx, "onnx-task", data).status_code == 201
    x = images(4, seed=6)
    got, body = predict_logits(onnx, "onnx-task", x)
    assert body["runtime"] == "onnx"
    np.testing.assert_allclose(got, local_logits(data, x), atol=1e-4)
    status = onnx.client.get("/status")  # with an ONNX lane: it used to be a 500
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["tasks"] == 1 and body["task_bytes"] > 0
    assert [lane["runtime"] for lane in body["lanes"].values()] == ["onnx"]


def test_an_existing_oip_client_works_unchanged(server):
    httpclient = pytest.importorskip("tritonclient.http")
    data = make_bundle(mask_seed=600)
    upload(server, "oip-client", data)
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("oip-client")
    meta = client.get_model_metadata("oip-client")
    assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28]
    x = images(3, seed=8)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("oip-client", [inp], outputs=[httpclient.InferRequestedOutput("logits")])
    np.testing.assert_allclose(out.as_numpy("logits"), local_logits(data, x), atol=1e-5)
    client.close()


def test_per_model_metric_series_are_bounded(start_server, redis_store):
    s = start_server(store_url=f"{redis_store}-m", api_key=API_KEY, metrics_max_models="2")
    names = [f"series-{i}" for i in range(4)]
    for i, name in enumerate(names):
        assert upload(s, name, make_bundle(mask_seed=300 + i)).status_code == 201
    x = images(1, seed=3)
    for name in names:
        predict_logits(s, name, x)
    text = s.client.get("/metrics").text
    counted = {n: s.metric("pemn_requests_total", model=n, status="200") for n in names}
    assert sum(1 for n in names if counted[n] == 1) == 2  # two names got their own series
    assert sum(1 for n in names if f'model="{n}"' in text) == 2
    assert s.metric("pemn_requests_total", model="_other", status="200") == 2
    assert s.metric("pemn_queue_time_seconds_count", model="_other") == 2
