"""Write the attack files of this directory and ``expected.json``.

    python -m tests.pemn.bundle.attacks.make_attacks

Each file is a hand-crafted bundle (``tests/pemn/bundle/craft.py``, never the
writer) that breaks one rule of docs/bundle-format.md; ``expected.json`` maps
the file name to the error code the reader must raise (and, for the one attack
that needs a file above a cap, the limits to read it with). The output is
deterministic; ``test_attacks.py`` checks the committed files equal it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from tests.pemn.bundle import craft
from tests.pemn.bundle.craft import (
    Tensor,
    nested,
    tiny,
    tiny_manifest,
    tiny_manifest_2,
    tiny_tensors,
    tiny_tensors_2,
    with_tensor,
)

HERE = Path(__file__).resolve().parent

_T = tiny_tensors  # state [0, 24), masks [24, 27)
_T2 = tiny_tensors_2  # format 2.0: state F16 [0, 12), masks [12, 15)


def _vit(**config: Any) -> dict[str, Any]:
    return tiny_manifest(arch={"name": "vit", "config": config})


def _mlp(**config: Any) -> dict[str, Any]:
    return tiny_manifest(arch={"name": "mlp", "config": {**craft.TINY_CONFIG, **config}})


def _manifest_text(**overrides: Any) -> str:
    return json.dumps(tiny_manifest(**overrides), separators=(",", ":"))


def build() -> dict[str, tuple[bytes, dict[str, Any]]]:
    """``{file name: (bytes, {"code": ..., ["limits": {...}]})}``."""
    out: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def add(name: str, data: bytes, code: str, **limits: int) -> None:
        entry: dict[str, Any] = {"code": "bundle." + code}
        if limits:
            entry["limits"] = limits
        out[name + ".pemn"] = (data, entry)

    valid = tiny()
    # container: lengths and ends
    add("file-above-cap", valid, "too_large", max_file_bytes=512)
    add("header-length-2e63", craft.container(b"{}", length=2**63), "header_too_large")
    add("header-length-u64-max", craft.container(b"{}", length=2**64 - 1), "header_too_large")
    add("header-length-past-eof", craft.container(b'{"a":1}', length=4096), "truncated")
    add("empty", b"", "truncated")
    add("truncated-data", valid[:-5], "truncated")
    add("truncated-mid-header", valid[:100], "truncated")
    add("trailing-bytes", tiny(tail=b"\0" * 16), "trailing_bytes")
    # header JSON
    add("header-not-json", craft.container(b"{not json}   "), "header_invalid")
    add("header-not-utf8", craft.container(b'{"\xc3\x28":1}'), "header_invalid")
    add("header-array", craft.container(b"[1,2,3] "), "header_invalid")
    add(
        "header-deep-nesting",
        craft.container(b'{"a":' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
        "header_invalid",
    )
    add("header-duplicate-tensor", craft.container(b'{"masks":{},"masks":{}}'), "header_invalid")
    add(
        "header-nan-offset",
        craft.container(b'{"state":{"data_offsets":[0,NaN]}}'),
        "header_invalid",
    )
    add("header-huge-integer", craft.container(b'{"n":' + b"9" * 10_000 + b"}"), "header_invalid")
    # not ours / manifest JSON
    plain = craft.container(
        {"weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4
    )
    add("plain-safetensors", plain, "not_a_bundle")
    add("manifest-not-json", tiny("format_version: 1.0"), "manifest_not_json")
    add("manifest-deep-nesting", tiny("[" * 10_000 + "]" * 10_000), "manifest_not_json")
    add(
        "manifest-duplicate-key",
        tiny(_manifest_text()[:-1] + ',"density":0.9}'),
        "manifest_not_json",
    )
    add(
        "manifest-nan",
        tiny(_manifest_text().replace('"density":0.5', '"density":NaN')),
        "manifest_not_json",
    )
    # versions and fields
    add("unknown-major-version", tiny(format_version="3.0"), "unsupported_version")
    add("unknown-architecture", tiny(arch={"name": "gpt5", "config": {}}), "unknown_arch")
    add("labels-count-mismatch", tiny(labels=["only-one"]), "manifest_invalid")
    add(
        "config-depth-1e9",
        tiny(arch={"name": "convmixer", "config": {"depth": 10**9}}),
        "manifest_invalid",
    )
    add(
        "config-negative-width",
        tiny(arch={"name": "vit", "config": {"width": -8}}),
        "manifest_invalid",
    )
    add(
        "config-layer-overflows-int64",
        tiny(arch={"name": "convmixer", "config": {"width": 2**24, "kernel": 2**20, "depth": 1}}),
        "manifest_invalid",
    )
    # sizes that would mean terabytes: declared shapes, manifest layers, configs
    add("tensor-shape-2e40", tiny(tensors=with_tensor(_T(), "masks", shape=[2**40])), "wrong_shape")
    add(
        "tensor-shape-many-dims",
        tiny(tensors=with_tensor(_T(), "masks", shape=[2**31] * 64)),
        "wrong_shape",
    )
    add(
        "manifest-layer-shape-2e248",
        tiny(layers=[{"name": "layers.0", "shape": [2**31] * 8}]),
        "model_too_large",
    )
    add(
        "manifest-4097-layers", tiny(layers=[{"name": "x", "shape": [1]}] * 4097), "model_too_large"
    )
    add("config-huge-width", tiny(_mlp(hidden=[2**24] * 4)), "model_too_large")
    add(
        "config-huge-depth",
        tiny(arch={"name": "convmixer", "config": {"depth": 1024, "width": 2**24}}),
        "model_too_large",
    )
    add("config-huge-input", tiny(_mlp(image_size=2**24)), "model_too_large")
    add(
        "config-vit-positions",
        tiny(_vit(image_size=2048, patch=1, width=4, heads=1, depth=1, in_channels=1)),
        "model_too_large",
    )
    # the architecture disagrees with the manifest
    add(
        "mask-layer-shape-mismatch",
        tiny(layers=[{"name": "layers.0", "shape": [4, 3]}, {"name": "head", "shape": [2, 3]}]),
        "arch_mismatch",
    )
    add("trained-missing", tiny(trained=[]), "arch_mismatch")
    # tensor table
    many = [*_T(), *(Tensor(f"extra{i}", "U8", [0], b"") for i in range(10))]
    add("too-many-tensors", tiny(tensors=many), "too_many_tensors")
    add(
        "unexpected-tensor",
        tiny(tensors=[*_T(), Tensor("weights", "F32", [2], b"\0" * 8)]),
        "unexpected_tensor",
    )
    add("missing-masks", tiny(tensors=_T()[:1]), "missing_tensor")
    add("wrong-dtype", tiny(tensors=with_tensor(_T(), "state", dtype="F64")), "wrong_dtype")
    add(
        "masks-shape-not-architecture",
        tiny(tensors=_T(masks=craft.TINY_MASKS + b"\0")),
        "wrong_shape",
    )
    add(
        "offsets-overlap",
        tiny(tensors=with_tensor(_T(), "masks", offsets=[22, 25])),
        "invalid_offsets",
    )
    add(
        "offsets-hole",
        tiny(tensors=with_tensor(_T(), "masks", offsets=[26, 29])),
        "invalid_offsets",
    )
    add(
        "offsets-negative",
        tiny(tensors=with_tensor(_T(), "state", offsets=[-1, 23])),
        "invalid_offsets",
    )
    add(
        "offsets-huge",
        tiny(tensors=with_tensor(_T(), "masks", offsets=[2**64, 2**64 + 3])),
        "invalid_offsets",
    )
    add(
        "offsets-reversed",
        tiny(tensors=with_tensor(_T(), "masks", offsets=[27, 24])),
        "invalid_offsets",
    )
    # data
    add("nonzero-padding", tiny(tensors=_T(masks=b"\x3f\x00\x47")), "nonzero_padding")
    add("wrong-popcount", tiny(tensors=_T(masks=b"\xff\x00\x07")), "popcount_mismatch")
    add(
        "state-nan",
        tiny(tensors=_T(state=struct.pack("<6f", 1, 1, 1, 0, float("nan"), 0))),
        "non_finite",
    )
    add(
        "state-inf",
        tiny(tensors=_T(state=struct.pack("<6f", float("inf"), 1, 1, 0, 0, 0))),
        "non_finite",
    )
    add("digest-mismatch", tiny(prototype_digest="sha256:" + "ab" * 32), "digest_mismatch")
    # format 2.0 (and 1.x rules it must not relax)
    v2 = tiny_manifest_2()
    add(
        "v2-state-f16-inf",
        tiny(v2, _T2(state=struct.pack("<6e", 1, 1, 1, 0, 0, float("inf")))),
        "non_finite",
    )
    add(
        "v2-state-f16-nan",
        tiny(v2, _T2(state=bytes.fromhex("003c003c007e") + bytes(6))),
        "non_finite",
    )
    add(
        "v2-state-bf16-nan",
        tiny(v2, _T2(state=bytes.fromhex("803f803fc07f") + bytes(6), dtype="BF16")),
        "non_finite",
    )
    add("v2-state-f64", tiny(v2, with_tensor(_T2(), "state", dtype="F64")), "wrong_dtype")
    add(
        "v2-state-f16-with-f32-bytes",
        tiny(v2, with_tensor(_T2(), "state", data=craft.TINY_STATE)),
        "invalid_offsets",
    )
    add("v1-state-f16", tiny(tiny_manifest(), _T2()), "wrong_dtype")
    add("v1-without-layers", tiny(tiny_manifest(layers=None), _T()), "manifest_invalid")
    add(
        "v2-manifest-deep-unknown-field",
        tiny(tiny_manifest_2(future={"a": nested(300)}), _T2()),
        "manifest_not_json",
    )
    add(
        "v2-bad-strategy-unknown-arch",
        tiny(
            tiny_manifest_2(
                arch={"name": "gpt5", "config": {}}, strategy={"name": "MASK", "seed": 0}
            ),
            _T2(),
        ),
        "manifest_invalid",
    )
    add(
        "v2-layers-mismatch",
        tiny(tiny_manifest_2(layers=[{"name": "x", "shape": [1]}]), _T2()),
        "arch_mismatch",
    )
    return out


def main() -> None:
    attacks = build()
    for old in HERE.glob("*.pemn"):
        if old.name not in attacks:
            old.unlink()
    for name, (data, _) in attacks.items():
        (HERE / name).write_bytes(data)
    expected = {name: entry for name, (_, entry) in sorted(attacks.items())}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(attacks)} attack files and expected.json to {HERE}")


if __name__ == "__main__":
    main()
