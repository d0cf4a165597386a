"""Scale-out over a shared store: three server processes on loopback over one Redis.
Uploads go through replica 0; replicas 1 and 2 must serve them without a restart.
Replica 1 follows the store's pub/sub hints; replica 2 runs with
``PEMN_STORE_HINTS=false`` (every pub/sub message lost) and must converge by polling
alone, so one cluster covers both modes. The timing distribution is measured by
``bench/bench_scaleout.py`` (docs/benchmarks.md), not asserted here."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from pemn.bundle import read_bundle
from pemn.testing import CLUSTER_API_KEY as API_KEY
from pemn.testing import Cluster, make_bundle
from tests.service.helpers import images, local_logits

pytestmark = pytest.mark.redis

POLL_S = 0.5
HINTS, POLLING = 1, 2


@pytest.fixture(scope="module")
def cluster(redis_server: str) -> Iterator[Cluster]:
    with Cluster(redis_server, hints=[True, True, False], poll_interval_s=POLL_S) as c:
        yield c


def _predict(cluster: Cluster, index: int, name: str, x: np.ndarray) -> tuple[int, np.ndarray]:
    r = cluster.replicas[index].client.post(
        "/predict", json={"model": name, "inputs": x.tolist(), "return_logits": True}
    )
    assert r.status_code == 200, f"replica {index}: {r.text}"
    body = r.json()
    return body["version"], np.array([o["logits"] for o in body["outputs"]], dtype=np.float32)


def test_upload_through_one_replica_serve_through_the_others(cluster: Cluster) -> None:
    x = images(3, seed=5)
    v1, v2 = make_bundle(mask_seed=51), make_bundle(mask_seed=52)
    for version, data in ((1, v1), (2, v2)):
        body = cluster.upload(0, "scale-task", data)
        since = time.perf_counter()
        assert body["version"] == version
        assert body["content_id"] == read_bundle(data).content_id
        took = cluster.converge([HINTS, POLLING], "scale-task", body["content_id"], since=since)
        # polling alone: within one poll interval plus a listing (generous on a busy machine)
        assert took[POLLING] < POLL_S + 5.0
        for replica in (HINTS, POLLING):
            got_version, logits = _predict(cluster, replica, "scale-task", x)
            assert got_version == version
            np.testing.assert_allclose(logits, local_logits(data, x), rtol=0, atol=1e-5)


def test_a_delete_through_one_replica_reaches_the_others(cluster: Cluster) -> None:
    body = cluster.upload(0, "scale-gone", make_bundle(mask_seed=53))
    cluster.converge([HINTS, POLLING], "scale-gone", body["content_id"], since=time.perf_counter())
    r = cluster.replicas[0].client.delete("/models/scale-gone", headers={"X-API-Key": API_KEY})
    assert r.status_code == 204
    cluster.converge([HINTS, POLLING], "scale-gone", None, since=time.perf_counter())
    for replica in (HINTS, POLLING):
        r = cluster.replicas[replica].client.post(
            "/predict", json={"model": "scale-gone", "inputs": images(1).tolist()}
        )
        assert r.status_code == 404, r.text
