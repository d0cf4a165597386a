"""``python -m pemn publish`` and ``rollback`` against a directory store and the private Redis."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from pemn.bundle import read_bundle
from pemn.cli import main
from pemn.store import open_store
from pemn.testing import free_port, make_bundle


@pytest.fixture(scope="module")
def bundles() -> dict[str, bytes]:
    return {"fashion-a": make_bundle(mask_seed=31), "fashion-b": make_bundle(mask_seed=32)}


@pytest.fixture
def bundle_dir(tmp_path: Path, bundles: dict[str, bytes]) -> Path:
    d = tmp_path / "bundles"
    d.mkdir()
    for name, data in bundles.items():
        (d / f"{name}.pemn").write_bytes(data)
    (d / "README.txt").write_text("not a bundle: publish takes only *.pemn from a directory")
    return d


@pytest.fixture
def file_store(tmp_path: Path) -> str:
    return (tmp_path / "store").as_uri()


@pytest.fixture
def redis_store(redis_server: str) -> str:
    return f"{redis_server}?prefix=cli-{uuid.uuid4().hex[:10]}"


def _latest(url: str, name: str) -> tuple[int, bytes]:
    with open_store(url) as store:
        got = store.get(name)
        return got.version, got.data


def test_publish_directory_uses_file_stems_and_is_idempotent(
    bundle_dir: Path, file_store: str, bundles: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["publish", str(bundle_dir), "--store", file_store]) == 0
    out = capsys.readouterr().out
    assert out.count("published ") == 2 and "as fashion-a v1" in out and "as fashion-b v1" in out
    for name, data in bundles.items():
        assert _latest(file_store, name) == (1, data)
    with open_store(file_store) as store:
        assert sorted(i.name for i in store.list()) == ["fashion-a", "fashion-b"]

    assert main(["publish", str(bundle_dir / "fashion-a.pemn"), "--store", file_store]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert _latest(file_store, "fashion-a")[0] == 1


def test_publish_name_and_store_from_environment(
    bundle_dir: Path,
    file_store: str,
    bundles: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PEMN_STORE_URL", file_store)
    assert main(["publish", str(bundle_dir / "fashion-b.pemn"), "--name", "shoes"]) == 0
    assert "as shoes v1" in capsys.readouterr().out
    assert _latest(file_store, "shoes") == (1, bundles["fashion-b"])


def test_publish_refuses_bad_arguments_with_one_sentence(
    bundle_dir: Path, file_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PEMN_STORE_URL", raising=False)
    with pytest.raises(SystemExit, match="--store URL"):
        main(["publish", str(bundle_dir)])
    with pytest.raises(SystemExit, match="exactly one bundle file, got 2"):
        main(["publish", str(bundle_dir), "--name", "x", "--store", file_store])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match=r"holds no \*\.pemn bundles"):
        main(["publish", str(empty), "--store", file_store])
    with pytest.raises(SystemExit, match="neither a bundle file nor a directory"):
        main(["publish", str(tmp_path / "missing.pemn"), "--store", file_store])


def test_publish_invalid_bundle_exits_nonzero_and_stores_nothing(
    tmp_path: Path, file_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.pemn"
    bad.write_bytes(b"\x00" * 64)
    assert main(["publish", str(bad), "--store", file_store]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error [store.invalid_bundle]:") and err.count("\n") == 1
    with open_store(file_store) as store:
        assert store.list() == []


def test_publish_bad_store_url(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", str(bundle_dir), "--store", "ftp://example.org/x"]) == 1
    assert "error [store.bad_config]" in capsys.readouterr().err


@pytest.mark.redis
def test_publish_to_redis_and_roll_back(
    bundle_dir: Path,
    redis_store: str,
    bundles: dict[str, bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["publish", str(bundle_dir), "--store", redis_store]) == 0
    # a new version of fashion-a, then roll back to v1: the latest pointer moves back
    newer = bundle_dir / "fashion-a-v2.pemn"
    newer.write_bytes(make_bundle(mask_seed=33))
    assert main(["publish", str(newer), "--name", "fashion-a", "--store", redis_store]) == 0
    assert _latest(redis_store, "fashion-a")[0] == 2
    assert main(["rollback", "fashion-a", "1", "--store", redis_store]) == 0
    assert "v1 is the latest version again" in capsys.readouterr().out
    version, data = _latest(redis_store, "fashion-a")
    assert (version, data) == (1, bundles["fashion-a"])
    assert read_bundle(data).content_id == read_bundle(bundles["fashion-a"]).content_id
    # rolling back to a version that does not exist is one sentence and exit 1
    assert main(["rollback", "fashion-a", "9", "--store", redis_store]) == 1
    assert "error [store.not_found]" in capsys.readouterr().err


@pytest.mark.redis
def test_publish_waits_for_an_unreachable_redis_then_fails_clearly(
    bundle_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?prefix=nobody&timeout=0.5&retries=1"
    t = time.monotonic()
    assert main(["publish", str(bundle_dir), "--store", url, "--wait", "1"]) == 1
    assert time.monotonic() - t >= 1.0
    err = capsys.readouterr().err
    assert "waiting for the store" in err
    assert err.splitlines()[-1].startswith("error [store.unavailable]:")
