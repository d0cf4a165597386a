"""The checked-in JSON Schema of the manifest: in sync with the pydantic model,
satisfied by every manifest the writer emits, and violated by invalid ones that
the reader rejects too."""

from __future__ import annotations

import json
import struct
from importlib import resources
from typing import Any

import jsonschema
import pytest

from pemn.bundle import BundleError, read_bundle
from pemn.bundle.spec import manifest_schema_text
from pemn.prototype import Strategy
from pemn.testing import SMALL, make_bundle
from tests.pemn.bundle.craft import tiny, tiny_manifest, tiny_manifest_2, tiny_tensors_2

SCHEMA_FILE = resources.files("pemn.bundle") / "manifest.schema.json"


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def _manifest_of(data: bytes) -> dict[str, Any]:
    (n,) = struct.unpack_from("<Q", data)
    return json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["manifest"])


def test_checked_in_schema_matches_the_model() -> None:
    assert SCHEMA_FILE.read_text() == manifest_schema_text(), (
        "pemn/bundle/manifest.schema.json is stale: regenerate it with "
        "`python -m pemn schema > pemn/bundle/manifest.schema.json`"
    )


def test_schema_is_valid_draft_2020_12() -> None:
    schema = _schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    ("arch", "strategy", "embed"),
    [
        ("mlp", Strategy("rp", ratio=1e-2), False),
        ("convmixer", Strategy("mp", seed=3, scale="fan_in"), True),
        ("vit", Strategy("mask", seed=1), False),
        ("resnet20", Strategy("one_layer"), False),
    ],
)
def test_writer_manifests_validate(arch: str, strategy: Strategy, embed: bool) -> None:
    config = {"in_channels": 1, "image_size": 28, **SMALL[arch]} if arch != "mlp" else None
    data = make_bundle(arch, config, strategy, embed_prototype=embed)
    jsonschema.Draft202012Validator(_schema()).validate(_manifest_of(data))


def test_hand_made_manifest_validates() -> None:
    jsonschema.Draft202012Validator(_schema()).validate(tiny_manifest())
    jsonschema.Draft202012Validator(_schema()).validate(tiny_manifest_2())


def test_format_1_0_writer_manifests_validate() -> None:
    data = make_bundle(format_version="1.0", strategy=Strategy("mp", scale="fan_in"))
    manifest = _manifest_of(data)
    assert {"format", "layers", "trained"} <= set(manifest)
    jsonschema.Draft202012Validator(_schema()).validate(manifest)


def _without(path: str) -> dict[str, Any]:
    m = tiny_manifest()
    *parents, leaf = path.split(".")
    d = m
    for p in parents:
        d = d[p]
    del d[leaf]
    return m


def _set(path: str, value: Any) -> dict[str, Any]:
    m = tiny_manifest()
    *parents, leaf = path.split(".")
    d = m
    for p in parents:
        d = d[p]
    d[leaf] = value
    return m


INVALID = {
    "missing-layers": _without("layers"),
    "missing-arch-config": _without("arch.config"),
    "density-zero": _set("density", 0),
    "density-string": _set("density", "0.5"),
    "seed-negative": _set("strategy.seed", -1),
    "seed-too-big": _set("strategy.seed", 2**53),
    "digest-uppercase": _set("prototype_digest", "sha256:" + "A" * 64),
    "format": _set("format", "safetensors"),
    "generator": _set("generator", "pcg64"),
    "version-form": _set("format_version", "1.0.0"),
    "input-shape-2d": _set("input.shape", [1, 2]),
    "std-negative": _set("input.std", [-1.0]),
    "layer-shape-zero": _set("layers", [{"name": "layers.0", "shape": [0, 4]}]),
    "layer-name-empty": _set("layers", [{"name": "", "shape": [3, 4]}]),
    "labels-empty": _set("labels", []),
    "metrics-nested": _set("metrics", {"a": {"b": 1}}),
    "config-string": _set("arch.config", {"hidden": "3"}),
    "embedded-string": _set("prototype_embedded", "yes"),
    "v1-missing-trained": _without("trained"),
    "v1-missing-format": _without("format"),
    "strategy-name-case": _set("strategy.name", "MASK"),
    "strategy-scale-case": _set("strategy.scale", "FAN_IN"),
    "ratio-for-mask": _set("strategy.ratio", 0.5),
    "fan-in-for-mask": _set("strategy.scale", "fan_in"),
    "v2-rp-without-ratio": tiny_manifest_2(strategy={"name": "rp", "seed": 0}),
    "v2-rp-ratio-zero": tiny_manifest_2(strategy={"name": "rp", "seed": 0, "ratio": 0}),
    "v2-rp-ratio-1.5": tiny_manifest_2(strategy={"name": "rp", "seed": 0, "ratio": 1.5}),
    "v2-format-other": tiny_manifest_2(format="other"),
    "v2-layers-null": {**tiny_manifest_2(), "layers": None},
}
V2 = {name for name in INVALID if name.startswith("v2-")}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_manifests_fail_schema_and_reader(name: str) -> None:
    manifest = INVALID[name]
    errors = list(jsonschema.Draft202012Validator(_schema()).iter_errors(manifest))
    assert errors, f"{name} passes the schema"
    with pytest.raises(BundleError) as info:
        read_bundle(tiny(manifest, tiny_tensors_2() if name in V2 else None))
    assert info.value.code == "bundle.manifest_invalid"
