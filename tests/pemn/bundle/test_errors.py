"""One test per error class of ``pemn.bundle.errors``, each from hand-crafted bytes.

Every case breaks one rule of docs/bundle-format.md in the tiny bundle of
``craft.py`` and asserts the error class, its stable code, that the message is
one line naming the offending field or tensor, and that the spec reader (the
independent implementation of the document) reports the same code.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pemn.bundle import BundleError, BundleLimits, read_bundle
from pemn.bundle import errors as E
from tests.pemn.bundle import craft, spec_reader
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


@dataclass(frozen=True)
class Case:
    error: type[BundleError]
    variant: str
    make: Callable[[], bytes]
    names: str  # the message must contain this (the field or tensor)
    limits: dict[str, int] | None = None

    @property
    def id(self) -> str:
        return f"{self.error.code.removeprefix('bundle.')}-{self.variant}"


def _manifest(**changes: Any) -> Callable[[], bytes]:
    return lambda: tiny(tiny_manifest(**changes))


def _changed(m: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``m`` with nested fields set: ``arch__config__width=3`` sets m["arch"]["config"]["width"]."""
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        d = m
        for part in parents:
            d = d[part]
        d[leaf] = value
    return m


def _nested(**changes: Any) -> Callable[[], bytes]:
    """Change nested manifest fields: ``_nested(arch__config__width=3)``."""
    return lambda: tiny(_changed(tiny_manifest(), changes))


def _tensors(**change: Any) -> Callable[[], bytes]:
    name = change.pop("name")
    return lambda: tiny(tensors=with_tensor(tiny_tensors(), name, **change))


def _header(text: bytes, data: bytes = b"") -> Callable[[], bytes]:
    return lambda: craft.container(text, data)


def _meta(metadata: dict[str, Any]) -> Callable[[], bytes]:
    return lambda: tiny(metadata=metadata)


def _layers(layers: list[dict[str, Any]]) -> Callable[[], bytes]:
    return _manifest(layers=layers)


def _v2(tensors: list[Tensor] | None = None, **changes: Any) -> Callable[[], bytes]:
    """A format 2.0 tiny bundle (state F16 unless ``tensors`` say otherwise) with
    nested manifest changes as in ``_nested``."""

    return lambda: tiny(
        _changed(tiny_manifest_2(), changes), tiny_tensors_2() if tensors is None else tensors
    )


def _f16_state(*values: float) -> bytes:
    return struct.pack("<6e", *values)


def _bf16_state(*halves: int) -> bytes:
    return struct.pack("<6H", *halves)


_MANIFEST_TEXT = json.dumps(tiny_manifest(), separators=(",", ":"))
_TRAINED_SWAPPED = [
    {"name": "norms.0.shift", "shape": [3]},
    {"name": "norms.0.scale", "shape": [3]},
]
_NAN_STATE = struct.pack("<6f", 1, 1, float("nan"), 0, 0, 0)
_BAD_PROTO = craft.prototype_tensor().data[:-4] + struct.pack("<f", float("inf"))
_OTHER_PROTO = craft.prototype_tensor().data[:-4] + struct.pack("<f", 0.25)

CASES = [
    # container
    Case(E.BundleTooLarge, "limit", tiny, "limit", {"max_file_bytes": 1000}),
    Case(E.Truncated, "short", lambda: b"\x08\x00\x00", "8-byte header length"),
    Case(E.Truncated, "header-past-eof", lambda: tiny()[:40], "header declares"),
    Case(E.Truncated, "data", lambda: tiny()[:-1], "data bytes"),
    Case(
        E.HeaderTooLarge,
        "length",
        lambda: craft.container(b"{}", length=2**20 + 1),
        "header length",
    ),
    Case(
        E.HeaderTooLarge,
        "u64-max",
        lambda: craft.container(b"{}", length=2**64 - 1),
        "header length",
    ),
    Case(E.HeaderInvalid, "not-brace", _header(b' {"a":1}'), "'{'"),
    Case(E.HeaderInvalid, "utf8", _header(b'{"\xff":1}'), "UTF-8"),
    Case(E.HeaderInvalid, "syntax", _header(b'{"a":}'), "JSON"),
    Case(E.HeaderInvalid, "junk-after", _header(b'{"a":1}\n'), "non-space"),
    Case(E.HeaderInvalid, "duplicate", _header(b'{"a":1,"a":2}'), "duplicate key 'a'"),
    Case(E.HeaderInvalid, "nan", _header(b'{"a":NaN}'), "NaN"),
    Case(E.HeaderInvalid, "deep", _header(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"), "nested"),
    Case(
        E.HeaderInvalid,
        "entry-members",
        lambda: tiny(
            extra={"masks": {"dtype": "U8", "shape": [3], "data_offsets": [24, 27], "x": 0}}
        ),
        "masks",
    ),
    Case(E.HeaderInvalid, "shape-type", _tensors(name="state", shape="6"), "state"),
    Case(E.HeaderInvalid, "offsets-type", _tensors(name="masks", offsets=[0, 1, 2]), "masks"),
    # metadata and manifest
    Case(E.NotABundle, "no-metadata", _header(b'{"masks":{}}'), "__metadata__"),
    Case(E.NotABundle, "format", _meta({"format": "other", "manifest": _MANIFEST_TEXT}), "format"),
    Case(E.NotABundle, "no-manifest", _meta({"format": "pemn-bundle"}), "manifest"),
    Case(
        E.NotABundle, "non-string", _meta({"format": "pemn-bundle", "manifest": {}}), "__metadata__"
    ),
    Case(E.ManifestNotJSON, "syntax", lambda: tiny("{'format': 1}"), "manifest"),
    Case(E.ManifestNotJSON, "array", lambda: tiny("[1, 2]"), "manifest"),
    Case(
        E.ManifestNotJSON,
        "duplicate",
        lambda: tiny(_MANIFEST_TEXT[:-1] + ',"density":0.5}'),
        "density",
    ),
    Case(
        E.ManifestNotJSON,
        "infinity",
        lambda: tiny(_MANIFEST_TEXT.replace("0.5", "1e999", 1)),
        "manifest",
    ),
    Case(
        E.ManifestNotJSON,
        "surrogate",
        lambda: tiny(_MANIFEST_TEXT.replace('"zero"', '"\\ud800"')),
        "surrogate",
    ),
    # nesting (section 1.1): 65 levels inside an unknown field; the few hundred
    Case(E.ManifestNotJSON, "depth-65", _v2(future=nested(64)), "64 levels"),
    Case(E.ManifestNotJSON, "depth-300", _manifest(future=nested(299)), "64 levels"),
    Case(E.HeaderInvalid, "depth-65", lambda: tiny(extra={"x": nested(64)}), "64 levels"),
    Case(
        E.ManifestNotJSON,
        "digits",
        lambda: tiny(_MANIFEST_TEXT.replace('"seed":0', '"seed":' + "9" * 5000)),
        "digits",
    ),
    Case(E.UnsupportedVersion, "major-3", _manifest(format_version="3.0"), "1.x and 2.x"),
    Case(E.UnsupportedVersion, "major-0", _manifest(format_version="0.9"), "format_version 0.9"),
    Case(E.UnsupportedVersion, "major-10-v2-body", _v2(format_version="10.1"), "10.1"),
    Case(E.ManifestInvalid, "version-form", _manifest(format_version="1"), "format_version"),
    Case(
        E.ManifestInvalid, "version-unicode", _manifest(format_version="\u00b9.0"), "format_version"
    ),
    Case(E.ManifestInvalid, "missing-density", _manifest(density=None), "density"),
    Case(E.ManifestInvalid, "density-range", _manifest(density=1.5), "density"),
    Case(E.ManifestInvalid, "seed-string", _nested(strategy__seed="0"), "strategy.seed"),
    Case(E.ManifestInvalid, "seed-float", _nested(strategy__seed=0.0), "strategy.seed"),
    Case(
        E.ManifestInvalid, "digest-form", _manifest(prototype_digest="md5:00"), "prototype_digest"
    ),
    Case(E.ManifestInvalid, "long-label", _manifest(labels=["x" * 257, "y"]), "labels[0]"),
    Case(E.ManifestInvalid, "std-zero", _nested(input__std=[0.0]), "input.std"),
    Case(E.ManifestInvalid, "mean-count", _nested(input__mean=[0.5, 0.5]), "input"),
    Case(E.ManifestInvalid, "config-key", _nested(arch__config__width=8), "arch.config['width']"),
    Case(
        E.ManifestInvalid, "config-range", _nested(arch__config__hidden=[0]), "arch.config.hidden"
    ),
    Case(
        E.ManifestInvalid,
        "config-float",
        _nested(arch__config__image_size=2.0),
        "arch.config.image_size",
    ),
    Case(E.ManifestInvalid, "strategy-name", _nested(strategy__name="dense"), "strategy.name"),
    Case(E.ManifestInvalid, "ratio-not-rp", _nested(strategy__ratio=0.5), "strategy.ratio"),
    Case(E.ManifestInvalid, "fan-in-mask", _nested(strategy__scale="fan_in"), "strategy.scale"),
    Case(
        E.ManifestInvalid,
        "rp-without-ratio",
        _v2(strategy={"name": "rp", "seed": 0}),
        "strategy.ratio",
    ),
    # strategy values are checked at step 7 even when the architecture is unknown (step 8)
    Case(
        E.ManifestInvalid,
        "name-case-unknown-arch",
        _nested(strategy__name="MASK", arch__name="gpt5"),
        "strategy.name",
    ),
    Case(
        E.ManifestInvalid,
        "ratio-zero-unknown-arch",
        _v2(strategy={"name": "rp", "seed": 0, "ratio": 0}, arch__name="gpt5"),
        "strategy.ratio",
    ),
    Case(
        E.ManifestInvalid,
        "ratio-1.5-unknown-arch",
        _v2(strategy={"name": "rp", "seed": 0, "ratio": 1.5}, arch__name="gpt5"),
        "strategy.ratio",
    ),
    Case(
        E.ManifestInvalid,
        "scale-case-unknown-arch",
        _v2(strategy={"name": "mp", "seed": 0, "scale": "FAN_IN"}, arch__name="gpt5"),
        "strategy.scale",
    ),
    # 1.x requires what 2.x derives
    Case(E.ManifestInvalid, "v1-without-layers", _manifest(layers=None), "layers"),
    Case(E.ManifestInvalid, "v1-without-trained", _manifest(trained=None), "trained"),
    Case(E.ManifestInvalid, "v1-without-format", _manifest(format=None), "format"),
    Case(
        E.ManifestInvalid,
        "v1.3-without-layers",
        _manifest(layers=None, format_version="1.3"),
        "1.3",
    ),
    Case(E.ManifestInvalid, "v2-format-wrong", _v2(format="other"), "format"),
    Case(E.ManifestInvalid, "v2-layers-null", _v2(layers=None), "layers"),
    Case(E.ManifestInvalid, "input-shape", _nested(input__shape=[1, 3, 3]), "input.shape"),
    Case(E.ManifestInvalid, "labels-count", _manifest(labels=["a", "b", "c"]), "labels"),
    Case(E.ManifestInvalid, "generator", _manifest(generator="mt19937"), "generator"),
    Case(
        E.ManifestInvalid,
        "cannot-build",
        _manifest(arch={"name": "convmixer", "config": {"patch": 64}}),
        "arch.config",
    ),
    # architecture
    Case(E.UnknownArchitecture, "name", _nested(arch__name="resnet1000"), "resnet1000"),
    Case(
        E.ArchitectureMismatch,
        "layer-shape",
        _layers([{"name": "layers.0", "shape": [3, 5]}, {"name": "head", "shape": [2, 3]}]),
        "layers[0]",
    ),
    Case(
        E.ArchitectureMismatch,
        "layer-missing",
        _layers([{"name": "layers.0", "shape": [3, 4]}]),
        "layers[1]",
    ),
    Case(
        E.ArchitectureMismatch,
        "layer-name",
        _layers([{"name": "fc", "shape": [3, 4]}, {"name": "head", "shape": [2, 3]}]),
        "layers[0]",
    ),
    Case(
        E.ArchitectureMismatch, "trained-order", _manifest(trained=_TRAINED_SWAPPED), "trained[0]"
    ),
    Case(
        E.ArchitectureMismatch, "v2-declared-trained", _v2(trained=_TRAINED_SWAPPED), "trained[0]"
    ),
    Case(
        E.ArchitectureMismatch,
        "v2-declared-layers",
        _v2(layers=[{"name": "layers.0", "shape": [3, 4]}]),
        "layers[1]",
    ),
    Case(
        E.ModelTooLarge,
        "declared-shape",
        _layers([{"name": "layers.0", "shape": [2**31] * 8}]),
        "weights",
    ),
    Case(
        E.ModelTooLarge, "declared-layers", _layers([{"name": "x", "shape": [1]}] * 4097), "layers"
    ),
    Case(E.ModelTooLarge, "config-width", _nested(arch__config__hidden=[2**24] * 8), "weights"),
    Case(E.ModelTooLarge, "input", _nested(arch__config__image_size=2**24), "image_size"),
    Case(
        E.ModelTooLarge,
        "extra-values",
        _manifest(
            arch={
                "name": "vit",
                "config": {"image_size": 1024, "patch": 1, "width": 32, "heads": 1, "depth": 1},
            }
        ),
        "besides its weights",
    ),
    Case(E.ModelTooLarge, "layer-limit", tiny, "layers", {"max_layers": 1}),
    # tensor table
    Case(
        E.TooManyTensors,
        "nine",
        lambda: tiny(tensors=tiny_tensors() + [Tensor(f"t{i}", "U8", [0], b"") for i in range(7)]),
        "9 tensors",
    ),
    Case(
        E.UnexpectedTensor,
        "bias",
        lambda: tiny(tensors=[*tiny_tensors(), Tensor("bias", "F32", [1], b"\x00" * 4)]),
        "bias",
    ),
    Case(
        E.UnexpectedTensor,
        "prototype-not-declared",
        lambda: tiny(tensors=[*tiny_tensors(), craft.prototype_tensor()]),
        "prototype",
    ),
    Case(E.MissingTensor, "state", lambda: tiny(tensors=tiny_tensors()[1:]), "state"),
    Case(E.MissingTensor, "prototype", _manifest(prototype_embedded=True), "prototype"),
    Case(E.WrongDtype, "masks-f32", _tensors(name="masks", dtype="F32"), "masks"),
    Case(E.WrongDtype, "state-f16-in-1.0", _tensors(name="state", dtype="F16"), "requires F32"),
    Case(
        E.WrongDtype,
        "state-f64-in-2.0",
        _v2(with_tensor(tiny_tensors_2(), "state", dtype="F64")),
        "F16 or BF16 or F32",
    ),
    Case(
        E.WrongDtype,
        "masks-f16-in-2.0",
        _v2(with_tensor(tiny_tensors_2(), "masks", dtype="F16")),
        "masks",
    ),
    Case(
        E.WrongShape,
        "masks-long",
        lambda: tiny(tensors=tiny_tensors(masks=craft.TINY_MASKS + b"\0")),
        "masks",
    ),
    Case(E.WrongShape, "state-2d", _tensors(name="state", shape=[2, 3]), "state"),
    Case(E.WrongShape, "huge", _tensors(name="masks", shape=[2**62]), "masks"),
    Case(E.InvalidOffsets, "negative", _tensors(name="state", offsets=[-24, 0]), "state"),
    Case(E.InvalidOffsets, "descending", _tensors(name="masks", offsets=[27, 24]), "masks"),
    Case(E.InvalidOffsets, "span", _tensors(name="masks", offsets=[24, 26]), "masks"),
    Case(E.InvalidOffsets, "overlap", _tensors(name="masks", offsets=[20, 23]), "masks"),
    Case(E.InvalidOffsets, "hole", _tensors(name="masks", offsets=[25, 28]), "masks"),
    Case(E.InvalidOffsets, "huge", _tensors(name="masks", offsets=[2**62, 2**62 + 3]), "masks"),
    Case(E.TrailingBytes, "one", lambda: tiny(tail=b"\0"), "follow the last tensor"),
    # data
    Case(
        E.PopcountMismatch,
        "layer0",
        lambda: tiny(tensors=tiny_tensors(masks=b"\x1f\x00\x07")),
        "layers.0",
    ),
    Case(
        E.PopcountMismatch,
        "head",
        lambda: tiny(tensors=tiny_tensors(masks=b"\x3f\x00\x0f")),
        "head",
    ),
    Case(
        E.NonZeroPadding,
        "layer0",
        lambda: tiny(tensors=tiny_tensors(masks=b"\x1f\x10\x07")),
        "layers.0",
    ),
    Case(
        E.NonZeroPadding, "head", lambda: tiny(tensors=tiny_tensors(masks=b"\x3f\x00\x83")), "head"
    ),
    Case(
        E.NonFiniteValue, "state-nan", lambda: tiny(tensors=tiny_tensors(state=_NAN_STATE)), "state"
    ),
    Case(
        E.NonFiniteValue,
        "f16-inf",
        _v2(tiny_tensors_2(state=_f16_state(1, 1, 1, 0, float("inf"), 0))),
        "norms.0.shift[1]",
    ),
    Case(
        E.NonFiniteValue,
        "f16-nan",
        _v2(tiny_tensors_2(state=_f16_state(float("nan"), 1, 1, 0, 0, 0))),
        "norms.0.scale[0]",
    ),
    Case(
        E.NonFiniteValue,
        "bf16-nan",
        _v2(tiny_tensors_2(state=_bf16_state(0x3F80, 0x7FC1, 0x3F80, 0, 0, 0), dtype="BF16")),
        "(BF16)",
    ),
    Case(
        E.NonFiniteValue,
        "bf16-minus-inf",
        _v2(tiny_tensors_2(state=_bf16_state(0x3F80, 0x3F80, 0x3F80, 0, 0, 0xFF80), dtype="BF16")),
        "norms.0.shift[2]",
    ),
    Case(
        E.NonFiniteValue,
        "prototype-inf",
        lambda: tiny(
            tiny_manifest(prototype_embedded=True),
            [*tiny_tensors(), Tensor("prototype", "F32", [18], _BAD_PROTO)],
        ),
        "prototype",
    ),
    Case(
        E.DigestMismatch,
        "zeros",
        _manifest(prototype_digest="sha256:" + "0" * 64),
        "prototype digest",
    ),
    Case(E.DigestMismatch, "seed", _nested(strategy__seed=1), "prototype digest"),
    Case(
        E.DigestMismatch,
        "embedded",
        lambda: tiny(
            tiny_manifest(prototype_embedded=True),
            [*tiny_tensors(), Tensor("prototype", "F32", [18], _OTHER_PROTO)],
        ),
        "prototype digest",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_error(case: Case) -> None:
    data = case.make()
    limits = BundleLimits(**case.limits) if case.limits else None
    with pytest.raises(BundleError) as info:
        read_bundle(data, limits=limits)
    exc = info.value
    assert type(exc) is case.error, f"{type(exc).__name__}: {exc}"
    assert exc.code == case.error.code and exc.code.startswith("bundle.")
    message = str(exc)
    assert case.names in message, message
    assert "\n" not in message and len(message) <= 400
    # the independent reader, written from the spec, rejects it with the same code
    with pytest.raises(spec_reader.SpecError) as spec:
        spec_reader.read(data, case.limits)
    assert spec.value.code == exc.code


def test_every_error_class_has_a_test() -> None:
    classes = {
        cls for cls in vars(E).values() if isinstance(cls, type) and issubclass(cls, BundleError)
    }
    classes.discard(BundleError)
    assert {c.error for c in CASES} == classes
    codes = [cls.code for cls in classes]
    assert len(set(codes)) == len(codes), "codes must be unique"
    assert set(E.__all__) == {c.__name__ for c in classes} | {"BundleError"}


def test_tiny_bundle_is_valid() -> None:
    """The base every case breaks is itself valid for both readers."""
    data = tiny()
    b = read_bundle(data)
    s = spec_reader.read(data)
    assert bytes(b.masks) == craft.TINY_MASKS == b"\x3f\x00\x07"
    assert b.fingerprint == s.fingerprint
    assert s.masks["head"].tolist() == [[True, True, True], [False, False, False]]


def test_messages_are_one_short_line_even_for_hostile_names() -> None:
    name = "evil\nname\x07\u2028" + "x" * 5000
    data = tiny(tensors=[*tiny_tensors(), Tensor(name, "U8", [0], b"")])
    with pytest.raises(E.UnexpectedTensor) as info:
        read_bundle(data)
    message = str(info.value)
    assert "\n" not in message and len(message) <= 400
    assert message.isprintable()
    assert "evil\\nname\\x07\\u2028xxx" in message


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
def test_tiny_2_bundle_is_valid(dtype: str) -> None:
    state = {"F16": craft.TINY_STATE_F16, "BF16": craft.TINY_STATE_BF16, "F32": craft.TINY_STATE}
    tensors = tiny_tensors() if dtype == "F32" else tiny_tensors_2(state=state[dtype], dtype=dtype)
    data = tiny(tiny_manifest_2(), tensors)
    b, s = read_bundle(data), spec_reader.read(data)
    assert b.state_dtype == dtype and b.state.tolist() == [1, 1, 1, 0, 0, 0]
    assert [float(v) for v in s.state["norms.0.scale"]] == [1, 1, 1]
    assert b.fingerprint == s.fingerprint == read_bundle(tiny()).fingerprint
    # the derived fields are filled in, exactly as a 1.0 file states them
    assert b.manifest.layers == read_bundle(tiny()).manifest.layers
    assert b.manifest.trained == read_bundle(tiny()).manifest.trained


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_nesting_up_to_64_levels_is_accepted(version: str) -> None:
    """Section 1.1: exactly 64 levels parse, in the manifest (an unknown field of
    depth 63 inside the depth-1 manifest object) and in the header (where the
    member is then an unexpected tensor, a later check)."""
    make = tiny_manifest if version == "1.0" else tiny_manifest_2
    tensors = tiny_tensors() if version == "1.0" else tiny_tensors_2()
    data = tiny(make(future=nested(63)), tensors)
    read_bundle(data)
    spec_reader.read(data)
    deep_header = tiny(make(), tensors, extra={"y": nested(63)})
    with pytest.raises(E.UnexpectedTensor):
        read_bundle(deep_header)
    with pytest.raises(spec_reader.SpecError, match="y"):
        spec_reader.read(deep_header)


def test_added_optional_fields_are_accepted() -> None:
    """Versioning: a later minor version may add optional fields anywhere."""
    m = tiny_manifest(format_version="1.7", future_field={"x": 1})
    m["strategy"]["future"] = True
    m["input"]["layout"] = "NCHW"
    b = read_bundle(tiny(m))
    assert b.manifest.format_version == "1.7"
    spec_reader.read(tiny(m))
