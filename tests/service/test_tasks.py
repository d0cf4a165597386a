"""Many tasks on one backbone over HTTP, against real server processes on a real
Redis store: bursts that mix tasks in one batch, inputs refused before anything is
loaded, and eviction under memory pressure that never fails a request."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest

from pemn.testing import make_bundle
from tests.service.conftest import API_KEY
from tests.service.helpers import images, local_logits, predict_logits, upload

pytestmark = pytest.mark.redis

CONFIG = {"in_channels": 1, "image_size": 28, "width": 16, "depth": 2, "patch": 4}


def _tasks(prefix: str, n: int, seed: int) -> dict[str, bytes]:
    return {f"{prefix}-{i}": make_bundle("convmixer", CONFIG, mask_seed=seed + i) for i in range(n)}


@pytest.mark.parametrize("mode", ["per_sample", "per_task"])
def test_a_burst_over_50_tasks_shares_batches_and_each_answer_is_its_task_alone(
    start_server, redis_store, mode
):
    s = start_server(
        store_url=f"{redis_store}-burst-{mode}",
        api_key=API_KEY,
        max_batch_wait_ms="20",
        mixed_batches=mode,
    )
    tasks = _tasks(f"burst-{mode}", 50, 1000)
    for name, data in tasks.items():
        assert upload(s, name, data).status_code == 201
    x = images(1, seed=4)
    order = [n for _ in range(3) for n in tasks]
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda n: (n, predict_logits(s, n, x)), order))
    want = {name: local_logits(data, x) for name, data in tasks.items()}
    for name, (logits, body) in results:
        assert body["model"] == name
        np.testing.assert_allclose(logits, want[name], rtol=1e-5, atol=1e-5)
    (lane,) = s.client.get("/status").json()["lanes"].values()
    assert lane["mixed_mode"] == mode and lane["batches"][mode] >= 1  # batches mixed tasks
    batches = s.metric("pemn_batch_size_count")
    assert s.metric("pemn_batch_size_sum") / batches > 1.5  # and more than one item on average


def test_a_wrong_input_for_a_model_that_is_not_resident_loads_and_evicts_nothing(server):
    assert (
        upload(server, "cold-shape", make_bundle("convmixer", CONFIG, mask_seed=77)).status_code
        == 201
    )
    before = server.client.get("/status").json()
    bad = [
        {"inputs": images(1)[:, :, :20].tolist()},  # wrong shape
        {"inputs": [[["x"] * 28] * 28]},  # not numbers
        {"inputs": np.zeros((1025, 1, 28, 28)).tolist()[:1] * 1025},  # too many items
    ]
    codes = []
    for extra in bad:
        r = server.client.post("/predict", json={"model": "cold-shape", **extra})
        codes.append((r.status_code, r.json()["code"]))
    assert codes == [
        (422, "request.bad_input"),
        (422, "request.bad_input"),
        (413, "request.too_many_items"),
    ]
    after = server.client.get("/status").json()
    for key in ("packed_tasks", "packed_evictions", "tasks", "evictions", "backbones"):
        assert after[key] == before[key], key
    model = server.client.get("/models/cold-shape").json()
    assert model["packed"] is False and model["loaded"] == []
    # the same model answers a good request afterwards
    predict_logits(server, "cold-shape", images(1))
    assert server.client.get("/models/cold-shape").json()["packed"] is True


def test_eviction_under_pressure_never_fails_a_request(start_server, redis_store):
    tasks = _tasks("press", 12, 2000)
    one = len(next(iter(tasks.values())))
    s = start_server(
        store_url=f"{redis_store}-press",
        api_key=API_KEY,
        packed_bytes=str(3 * one),  # about three packed tasks
        cache_bytes="1",  # no hot tier: every batch expands its tasks
    )
    for name, data in tasks.items():
        assert upload(s, name, data).status_code == 201
    x = images(2, seed=5)
    want = {name: local_logits(data, x) for name, data in tasks.items()}
    order = [n for _ in range(8) for n in tasks]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda n: (n, predict_logits(s, n, x)), order))
    for name, (logits, _) in results:
        np.testing.assert_allclose(logits, want[name], rtol=1e-5, atol=1e-5)
    status = s.client.get("/status").json()
    assert status["packed_evictions"] > 0 and status["packed_tasks"] <= 4
    assert status["tasks"] == 0  # nothing stayed materialized


def test_runtime_auto_gives_a_hot_task_its_onnx_session_and_keeps_the_rest_on_torch(
    start_server, redis_store
):
    s = start_server(
        store_url=f"{redis_store}-auto", api_key=API_KEY, runtime="auto", onnx_hot_rate="2"
    )
    hot, cold = (make_bundle("convmixer", CONFIG, mask_seed=3000 + i) for i in range(2))
    assert upload(s, "auto-hot", hot).status_code == 201
    assert upload(s, "auto-cold", cold).status_code == 201
    x = images(2, seed=8)
    _, body = predict_logits(s, "auto-cold", x)
    assert body["runtime"] == "torch"
    seen = []
    deadline = time.monotonic() + 120  # the backbone's first ONNX export takes seconds
    while time.monotonic() < deadline:
        logits, body = predict_logits(s, "auto-hot", x)
        seen.append(body["runtime"])
        np.testing.assert_allclose(logits, local_logits(hot, x), rtol=1e-4, atol=1e-4)
        if body["runtime"] == "onnx":
            break
    assert seen[0] == "torch" and seen[-1] == "onnx"  # served all along, then by its session
    _, body = predict_logits(s, "auto-cold", x)
    assert body["runtime"] == "torch"
    status = s.client.get("/status").json()
    assert status["tasks"] >= 1 and s.metric("pemn_cache_items", tier="onnx") == 1
    hot_id = s.client.get("/models/auto-hot").json()["content_id"]
    built = [line for line in s.log().splitlines() if "built ONNX session of task" in line]
    assert len(built) == 1 and hot_id[:19] in built[0]  # the background cost, in the log
