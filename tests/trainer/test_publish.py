"""``--publish``: to a running service (the real one, a subprocess on loopback) and to
a bundle store (a file:// store and the session's private Redis)."""

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pemn.store import open_store
from pemn.testing import ServerProcess, make_bundle
from trainer.errors import PublishError
from trainer.publish import Publisher

ROOT = Path(__file__).resolve().parents[2]
KEY = "trainer-test-key-0123456789"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    store = tmp_path_factory.mktemp("service-store")
    server = ServerProcess({"PEMN_STORE_URL": f"file://{store}", "PEMN_API_KEY": KEY})
    yield server
    server.stop()


@pytest.mark.slow
def test_publish_to_the_running_service(service):
    data = make_bundle()
    Publisher(service.url, name="pub-a", api_key=KEY).check()
    where = Publisher(service.url, name="pub-a", api_key=KEY).publish(data)
    assert where == f"{service.url}/models/pub-a"
    listed = service.client.get("/models/pub-a").json()
    assert listed["name"] == "pub-a"
    with pytest.raises(PublishError, match="HTTP 401"):
        Publisher(service.url, name="pub-b", api_key="wrong-key-0123456789").publish(data)
    with pytest.raises(PublishError, match="HTTP 422"):
        Publisher(service.url, name="pub-c", api_key=KEY).publish(b"not a bundle")


def test_publish_to_a_file_store(tmp_path):
    url = f"file://{tmp_path / 'store'}"
    data = make_bundle()
    publisher = Publisher(url, name="fashion")
    publisher.check()
    assert "version 1" in publisher.publish(data)
    with open_store(url) as store:
        assert store.get("fashion").data == data
    with pytest.raises(PublishError, match="refused"):
        Publisher(url, name="broken").publish(b"garbage")


@pytest.mark.redis
def test_publish_to_redis(redis_server):
    url = f"{redis_server}?prefix=trainer-{uuid.uuid4().hex[:8]}"
    data = make_bundle()
    Publisher(url, name="r1").check()
    Publisher(url, name="r1").publish(data)
    with open_store(url) as store:
        assert store.get("r1").data == data


def test_unreachable_targets_fail_in_one_sentence():
    with pytest.raises(PublishError, match=r"cannot reach the service at http://127\.0\.0\.1:9"):
        Publisher("http://127.0.0.1:9", name="x").check()
    with pytest.raises(PublishError, match="cannot reach the store"):
        Publisher("redis://127.0.0.1:9/0", name="x").check()
    with pytest.raises(PublishError, match=r"http\(s\)://"):
        Publisher("gopher://example.org", name="x")


@pytest.mark.data
@pytest.mark.slow
def test_train_with_publish_uploads_the_bundle(service, tmp_path):
    out = tmp_path / "tiny.pemn"
    proc = subprocess.run(
        [
            sys.executable, "-m", "trainer", "train", "--arch", "mlp", "-c", "hidden=[16]",
            "--strategy", "mp", "--train-limit", "128", "--test-limit", "100", "--epochs", "1",
            "--batch-size", "32", "--threads", "1", "--out", str(out),
            "--run-dir", str(tmp_path / "run"), "--publish", service.url, "--api-key", KEY,
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"published {out} as 'tiny'" in proc.stdout
    info = service.client.get("/models/tiny").json()
    assert info["versions"][0]["size"] == out.stat().st_size
