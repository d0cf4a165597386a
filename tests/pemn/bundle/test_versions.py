"""Rolling upgrade (docs/bundle-format.md, section 12): the reader of the last
1.0-only commit (982c461, taken from the repository's history with ``git archive``
and run in a subprocess) rejects every 2.0 file with ``bundle.unsupported_version``
naming both versions, reads the 1.0 files today's writer still writes, and shows
what a "1.1" label would have done instead. Today's reader reads both versions."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pemn.bundle import BundleError, convert_bundle, read_bundle
from pemn.prototype import Strategy
from pemn.testing import edit_manifest, make_bundle
from tests.pemn.bundle.craft import nested, tiny, tiny_manifest, tiny_manifest_2, tiny_tensors_2

ROOT = Path(__file__).resolve().parents[3]
OLD_COMMIT = "982c461"  # main before format 2.0: reads format 1.x only

_RUNNER = """
import json, sys
import pemn
from pemn.bundle import BundleError, read_bundle
out = {"pemn": pemn.__file__}
for path in sys.argv[1:]:
    try:
        read_bundle(open(path, "rb").read())
        out[path] = ["valid", ""]
    except BundleError as exc:
        out[path] = [exc.code, str(exc)]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def old_pemn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``pemn`` package of OLD_COMMIT, extracted into a directory of its own."""
    where = tmp_path_factory.mktemp("pemn-982c461")
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", OLD_COMMIT, "pemn"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"needs git and the repository history with commit {OLD_COMMIT}: {exc}")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    return where


def _files() -> dict[str, bytes]:
    relabel = lambda m: {**m, "format_version": "1.1"}  # noqa: E731
    strategy = {"name": "MASK", "seed": 0, "ratio": None, "scale": "paper"}
    return {
        # 2.0 in every form: rejected at the version check
        "2.0-f16": make_bundle(),
        "2.0-bf16": make_bundle("vit", None, Strategy("mp"), state_dtype="bfloat16"),
        "2.0-f32": make_bundle(state_dtype="float32"),
        "2.0-embedded": make_bundle(embed_prototype=True),
        "2.0-converted": convert_bundle(make_bundle(format_version="1.0")),
        # what writers write for old replicas during the upgrade: read
        "1.0-written": make_bundle(format_version="1.0", metrics={"test_accuracy": 0.9}),
        "1.0-converted": convert_bundle(make_bundle(), format_version="1.0"),
        "1.0-golden": (ROOT / "tests/pemn/bundle/golden/mlp-rp-1.0.pemn").read_bytes(),
        # the same changes labelled 1.1: past the version check, other codes
        "1.1-compact-manifest": edit_manifest(make_bundle(), relabel),
        "1.1-f16-state": tiny(tiny_manifest(format_version="1.1"), tiny_tensors_2()),
        # issue 16's two disagreements
        "deep": tiny(tiny_manifest(future=nested(299))),
        "strategy": tiny(tiny_manifest(arch={"name": "gpt5", "config": {}}, strategy=strategy)),
    }


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return _files()


@pytest.fixture(scope="module")
def old(
    old_pemn: Path, files: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[str]]:
    """``{name: [code or "valid", message]}`` of the old reader on every file (one process)."""
    tmp = tmp_path_factory.mktemp("files")
    paths = {}
    for name, data in files.items():
        paths[name] = tmp / f"{name}.pemn"
        paths[name].write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(old_pemn), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", _RUNNER, *map(str, paths.values())],
        capture_output=True,
        text=True,
        cwd=old_pemn,  # sys.path[0]: the old package, before the installed one
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert Path(out.pop("pemn")).is_relative_to(old_pemn), "the subprocess imported today's pemn"
    return {name: out[str(p)] for name, p in paths.items()}


@pytest.mark.slow
def test_old_reader_rejects_2_0_with_unsupported_version(
    old: dict[str, list[str]], files: dict[str, bytes]
) -> None:
    names = [n for n in files if n.startswith("2.0-")]
    assert len(names) == 5
    for name in names:
        code, message = old[name]
        assert code == "bundle.unsupported_version", (name, code, message)
        assert message == "format_version 2.0 is not supported (this reader reads 1.x)"
        read_bundle(files[name])  # today's reader reads them


@pytest.mark.slow
def test_old_reader_reads_what_writers_write_for_it(old: dict[str, list[str]]) -> None:
    """During the upgrade, writers keep ``format_version="1.0"``: old replicas read it."""
    for name in ("1.0-written", "1.0-converted", "1.0-golden"):
        assert old[name] == ["valid", ""], (name, old[name])


@pytest.mark.slow
def test_a_1_1_label_would_not_have_reached_the_version_check(old: dict[str, list[str]]) -> None:
    """Why 2.0 and not 1.1: the old reader accepts any 1.x and fails later, with
    codes that say nothing about versions."""
    assert old["1.1-compact-manifest"] == [
        "bundle.manifest_invalid",
        "manifest field format: Field required",
    ]
    code, message = old["1.1-f16-state"]
    assert code == "bundle.wrong_dtype" and "F16" in message


@pytest.mark.slow
def test_the_two_disagreements_of_issue_16(
    old: dict[str, list[str]], files: dict[str, bytes]
) -> None:
    """Before: a manifest nested 300 levels deep in an unknown field was
    ``manifest_invalid`` (pydantic's depth limit), a bad strategy with an unknown
    architecture ``unknown_arch``. Now: ``manifest_not_json`` (section 1.1) and
    ``manifest_invalid`` (section 3, step 7)."""
    assert old["deep"][0] == "bundle.manifest_invalid" and "recursion" in old["deep"][1]
    assert old["strategy"][0] == "bundle.unknown_arch"
    for name, want in (("deep", "manifest_not_json"), ("strategy", "manifest_invalid")):
        with pytest.raises(BundleError) as info:
            read_bundle(files[name])
        assert info.value.code == f"bundle.{want}", info.value


def test_todays_reader_reads_both_versions() -> None:
    golden = ROOT / "tests/pemn/bundle/golden"
    one, two = (
        read_bundle((golden / "mlp-rp-1.0.pemn").read_bytes()),
        read_bundle((golden / "mlp-rp.pemn").read_bytes()),
    )
    assert (one.manifest.format_version, two.manifest.format_version) == ("1.0", "2.0")
    assert one.fingerprint == two.fingerprint and one.manifest.layers == two.manifest.layers
    assert bytes(one.masks) == bytes(two.masks)
    # the 2.0 file is smaller: half the state bytes and no layer lists
    assert len(two.data) < len(one.data) - 2 * one.state.size
    v2 = tiny(tiny_manifest_2(), tiny_tensors_2())
    assert read_bundle(v2).state_dtype == "F16"
