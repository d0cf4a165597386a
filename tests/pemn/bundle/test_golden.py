"""The writer's exact bytes: the committed golden bundles are reproduced byte for
byte. When the format changes on purpose, regenerate them with
``python -m tests.pemn.bundle.golden.make_golden`` and update GOLDEN below in the
same commit (docs/bundle-format.md, section 12)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from safetensors.numpy import load as st_load

from pemn.bundle import read_bundle
from tests.pemn.bundle import spec_reader
from tests.pemn.bundle.golden.make_golden import build

HERE = Path(__file__).resolve().parent / "golden"
GOLDEN = {
    "mlp-rp.pemn": "23ecdb7353bdb0743d085f197fa967afec90a7d3438dc4c23a4fd115d6bf2c9b",
    "vit-mp-embedded.pemn": "80ea8e41d933504998c96a62927c170431e14d845a6ca19327864708322f2f78",
}


def test_golden_files_are_the_recorded_ones() -> None:
    assert sorted(p.name for p in HERE.glob("*.pemn")) == sorted(GOLDEN)
    for name, sha in GOLDEN.items():
        assert hashlib.sha256((HERE / name).read_bytes()).hexdigest() == sha, name


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_writer_reproduces_golden_bytes(name: str) -> None:
    made = build()[name]
    assert hashlib.sha256(made).hexdigest() == GOLDEN[name], (
        f"the writer's bytes for {name} changed; if the format changed on purpose, "
        "regenerate with `python -m tests.pemn.bundle.golden.make_golden` and update GOLDEN"
    )
    assert made == (HERE / name).read_bytes()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_layout_is_the_documented_one(name: str) -> None:
    data = (HERE / name).read_bytes()
    (n,) = struct.unpack_from("<Q", data)
    assert n % 8 == 0 and data[8:9] == b"{"  # section 1.2: padded to 8, starts with {
    text = data[8 : 8 + n].decode("ascii")
    header = json.loads(text)
    assert text.rstrip(" ") == json.dumps(header, sort_keys=True, separators=(",", ":"))
    assert list(header) == sorted(header)
    assert header["__metadata__"]["manifest"] == json.dumps(
        json.loads(header["__metadata__"]["manifest"]), sort_keys=True, separators=(",", ":")
    )
    # data order: F32 tensors first (prototype, state), then masks
    order = sorted((e["data_offsets"][0], k) for k, e in header.items() if k != "__metadata__")
    assert [k for _, k in order] == (
        ["prototype", "state", "masks"] if "prototype" in header else ["state", "masks"]
    )
    # every reader agrees
    ours, spec, official = read_bundle(data), spec_reader.read(data), st_load(data)
    assert spec.fingerprint == ours.fingerprint
    assert official["masks"].tobytes() == ours.masks.tobytes()
