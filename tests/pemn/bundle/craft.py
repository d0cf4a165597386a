"""Hand-crafted bundle bytes for the error tests and attack files.

Everything here builds the container directly (8-byte little-endian header
length, header JSON, data) without the writer, so a test can break exactly one
rule. The base case is a tiny valid bundle, ``tiny()``: an ``mlp`` with
``in_channels=1, image_size=2, hidden=[3], num_classes=2`` (layers ``layers.0``
``[3, 4]`` and ``head`` ``[2, 3]``, one BatchNorm ``norms.0``), strategy
``mask`` seed 0, density 0.5, masks ``3f 00 | 07``, state scale 1 shift 0.
Its prototype digest comes from the spec reader's generator, not from ``pemn``.
``tiny_manifest()`` is format 1.0 (every field); ``tiny_manifest_2()`` is the
same bundle's 2.0 manifest (no ``format``, ``layers``, ``trained``, no defaults),
to go with ``tiny_tensors_2()`` (state in float16).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, replace
from typing import Any

from tests.pemn.bundle import spec_reader

__all__ = [
    "Tensor",
    "container",
    "nested",
    "tiny",
    "tiny_manifest",
    "tiny_manifest_2",
    "tiny_tensors",
    "tiny_tensors_2",
]

TINY_CONFIG = {"in_channels": 1, "image_size": 2, "num_classes": 2, "hidden": [3]}
TINY_LAYERS = [("layers.0", [3, 4]), ("head", [2, 3])]
TINY_MASKS = bytes([0x3F, 0x00, 0x07])  # 6 of 12 kept, 3 of 6 kept, zero padding
TINY_STATE = struct.pack("<6f", 1.0, 1.0, 1.0, 0.0, 0.0, 0.0)
TINY_STATE_F16 = struct.pack("<6e", 1.0, 1.0, 1.0, 0.0, 0.0, 0.0)
TINY_STATE_BF16 = bytes.fromhex("803f803f803f000000000000")  # 1.0 = 0x3F80


@dataclass(frozen=True)
class Tensor:
    """One header entry and its bytes. ``offsets=None``: placed after the previous tensor."""

    name: str
    dtype: Any
    shape: Any
    data: bytes
    offsets: Any = None


def container(
    header: dict[str, Any] | bytes, data: bytes = b"", *, length: int | None = None
) -> bytes:
    """8-byte header length (``length`` overrides the true one) + header + data.
    A dict header is serialized compactly and padded with spaces to 8 bytes."""
    if isinstance(header, dict):
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
    else:
        text = header
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def tiny_manifest(**overrides: Any) -> dict[str, Any]:
    """The tiny bundle's manifest; top-level ``overrides`` replace fields (None deletes)."""
    fixed = spec_reader.generate(TINY_LAYERS, {"name": "mask", "seed": 0})
    m: dict[str, Any] = {
        "format": "pemn-bundle",
        "format_version": "1.0",
        "arch": {"name": "mlp", "config": dict(TINY_CONFIG)},
        "strategy": {"name": "mask", "seed": 0, "ratio": None, "scale": "paper"},
        "generator": "splitmix64-boxmuller-v1",
        "prototype_digest": spec_reader.digest(fixed),
        "prototype_embedded": False,
        "density": 0.5,
        "layers": [{"name": n, "shape": s} for n, s in TINY_LAYERS],
        "trained": [
            {"name": "norms.0.scale", "shape": [3]},
            {"name": "norms.0.shift", "shape": [3]},
        ],
        "input": {"shape": [1, 2, 2], "mean": [0.5], "std": [0.25]},
        "labels": ["zero", "one"],
        "metrics": {"test_accuracy": 0.5},
        "provenance": {"made_by": "tests/pemn/bundle/craft.py"},
    }
    return _overridden(m, overrides)


def _overridden(m: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for k, v in overrides.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    return m


def tiny_manifest_2(**overrides: Any) -> dict[str, Any]:
    """The tiny bundle's manifest in format 2.0 (what the writer would write: no
    derived fields, no defaults); ``overrides`` as in ``tiny_manifest``."""
    m = tiny_manifest(format_version="2.0")
    for key in ("format", "generator", "layers", "trained", "prototype_embedded"):
        del m[key]
    m["strategy"] = {"name": "mask", "seed": 0}
    return _overridden(m, overrides)


def tiny_tensors(masks: bytes = TINY_MASKS, state: bytes = TINY_STATE) -> list[Tensor]:
    return [
        Tensor("state", "F32", [len(state) // 4], state),
        Tensor("masks", "U8", [len(masks)], masks),
    ]


def tiny_tensors_2(
    masks: bytes = TINY_MASKS, state: bytes = TINY_STATE_F16, dtype: str = "F16"
) -> list[Tensor]:
    """The tiny bundle's tensors with a 2-byte state (F16 or BF16)."""
    return [
        Tensor("state", dtype, [len(state) // 2], state),
        Tensor("masks", "U8", [len(masks)], masks),
    ]


def nested(depth: int) -> Any:
    """A JSON value of exactly ``depth`` levels (section 1.1): ``[[...[0]...]]``."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def tiny(
    manifest: dict[str, Any] | str | None = None,
    tensors: list[Tensor] | None = None,
    *,
    metadata: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    tail: bytes = b"",
    **overrides: Any,
) -> bytes:
    """A bundle from parts: the manifest (dict, or raw text), the tensors (placed
    back to back unless their ``offsets`` say otherwise), the metadata (default
    ``format`` + ``manifest``), extra header members, and bytes appended after the data."""
    if manifest is None:
        manifest = tiny_manifest(**overrides)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest, separators=(",", ":"))
    header: dict[str, Any] = {
        "__metadata__": {"format": "pemn-bundle", "manifest": text}
        if metadata is None
        else metadata
    }
    data, pos = b"", 0
    for t in tiny_tensors() if tensors is None else tensors:
        offsets = [pos, pos + len(t.data)] if t.offsets is None else t.offsets
        header[t.name] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": offsets}
        data += t.data
        pos += len(t.data)
    header.update(extra or {})
    return container(header, data + tail)


def with_tensor(tensors: list[Tensor], name: str, **change: Any) -> list[Tensor]:
    """``tensors`` with the one called ``name`` changed."""
    return [replace(t, **change) if t.name == name else t for t in tensors]


def prototype_tensor() -> Tensor:
    """The tiny bundle's prototype as an embedded ``prototype`` tensor."""
    fixed = spec_reader.generate(TINY_LAYERS, {"name": "mask", "seed": 0})
    raw = b"".join(fixed[n].astype("<f4").tobytes() for n, _ in TINY_LAYERS)
    return Tensor("prototype", "F32", [sum(math.prod(s) for _, s in TINY_LAYERS)], raw)
