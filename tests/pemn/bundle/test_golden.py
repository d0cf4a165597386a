"""The writer's exact bytes: the committed golden bundles are reproduced byte for
byte. When the format changes on purpose, regenerate them with
``python -m tests.pemn.bundle.golden.make_golden`` and update GOLDEN below in the
same commit (docs/bundle-format.md, section 12)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load as st_load_torch

from pemn.bundle import read_bundle
from tests.pemn.bundle import spec_reader
from tests.pemn.bundle.golden.make_golden import build

HERE = Path(__file__).resolve().parent / "golden"
GOLDEN = {
    # format 1.0: the bytes 1.0 writers wrote (these two hashes predate format 2.0)
    "mlp-rp-1.0.pemn": "23ecdb7353bdb0743d085f197fa967afec90a7d3438dc4c23a4fd115d6bf2c9b",
    "vit-mp-embedded-1.0.pemn": "80ea8e41d933504998c96a62927c170431e14d845a6ca19327864708322f2f78",
    # format 2.0: state float16 (default), bfloat16, float32
    "mlp-rp.pemn": "56c7da5c8013d181a30cd64c9b67d4f5e4b1d5b22008328d47eebb1c89c722f6",
    "mlp-rp-bf16.pemn": "5cbf35cba7cedbf7fd88dfd17cddbd0fca1c114c29851e84bc90e8c7e7dcc46b",
    "vit-mp-embedded-f32.pemn": "959ba2cc5e033954f1cb899b33390839d3e3cf8bd594a04eb2bd6fd77c492c63",
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
    # data order: by item size (F32 prototype, then state in F32, F16 or BF16), then masks
    order = sorted((e["data_offsets"][0], k) for k, e in header.items() if k != "__metadata__")
    assert [k for _, k in order] == (
        ["prototype", "state", "masks"] if "prototype" in header else ["state", "masks"]
    )
    # every reader agrees (safetensors' numpy loader has no bfloat16: its torch one does)
    ours, spec, official = read_bundle(data), spec_reader.read(data), st_load_torch(data)
    assert spec.fingerprint == ours.fingerprint
    assert official["masks"].numpy().tobytes() == ours.masks.tobytes()
    assert np.array_equal(official["state"].float().numpy(), ours.state)
    manifest = json.loads(header["__metadata__"]["manifest"])
    version = manifest["format_version"]
    assert version == ("1.0" if name.endswith("-1.0.pemn") else "2.0")
    if version == "2.0":  # section 3: nothing derivable, no default values
        assert not {"format", "generator", "layers", "trained"} & set(manifest)
        defaults = spec_reader.DEFAULTS[manifest["arch"]["name"]]
        assert all(v != defaults[k] for k, v in manifest["arch"]["config"].items())
        assert "ratio" not in manifest["strategy"] or manifest["strategy"]["name"] == "rp"
        assert "dtype" not in manifest["input"] and "range" not in manifest["input"]
        want = {"mlp-rp.pemn": "F16", "mlp-rp-bf16.pemn": "BF16"}.get(name, "F32")
        assert header["state"]["dtype"] == ours.state_dtype == want
