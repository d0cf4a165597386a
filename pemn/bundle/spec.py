"""The bundle format's constants, limits, manifest schema and derived layouts.

See docs/bundle-format.md for the byte-level specification; this module is its
executable half: the versions it reads and writes, the pydantic ``Manifest``
model (from which the checked-in JSON Schema is generated), canonical JSON, the
backbone fingerprint, and the layouts of the packed ``masks`` and ``state``
tensors derived from an architecture.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from torch import nn

from pemn.archs import create_model
from pemn.caches import CACHES
from pemn.layers import LayerSpec, layer_specs
from pemn.prototype import GENERATOR, Strategy

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_JSON_DEPTH",
    "READ_MAJORS",
    "WRITE_VERSIONS",
    "BundleLimits",
    "InputSpec",
    "Manifest",
    "NormKind",
    "TensorEntry",
    "arch_layout",
    "canonical_json",
    "clear_layout_cache",
    "fingerprint",
    "manifest_schema",
    "manifest_schema_text",
    "mask_offsets",
    "meta_model",
]

FORMAT = "pemn-bundle"
FORMAT_VERSION = "2.0"  # what the writer writes by default
WRITE_VERSIONS = ("1.0", "2.0")  # what it can write (1.0: for readers not yet upgraded)
READ_MAJORS = (1, 2)  # what the reader reads (any minor of these)
# Deepest nesting of arrays and objects in the header and the manifest (a valid
# manifest nests 4 levels; pydantic's JSON parser stops at 200, Python's at ~1000).
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class BundleLimits:
    """Caps the reader enforces before it allocates anything large."""

    max_file_bytes: int = 64 * 2**20  # whole bundle
    max_header_bytes: int = 2**20  # safetensors JSON header
    max_tensors: int = 8  # the format defines 3
    max_layers: int = 4096  # maskable layers of the declared architecture
    max_weights: int = 2**27  # N: the materialized network is 4N bytes
    # values of the materialized network besides its N maskable weights: norm
    # parameters and statistics, derived tables such as ViT positions
    max_extra_values: int = 2**24
    max_input_values: int = 2**22  # C * H * W of one input (export and serving allocate it)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, ASCII only, no NaN: the same value gives the same bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


_Name = Annotated[str, Field(min_length=1, max_length=256)]
_Dim = Annotated[int, Field(ge=1, le=2**31)]
_Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
_ConfigValue = StrictBool | StrictInt | StrictFloat | list[StrictInt]


class _Model(BaseModel):
    # strict: no "1" -> 1 coercion; ignore: later minor versions may add optional fields
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class ArchEntry(_Model):
    name: _Name
    config: Annotated[dict[str, _ConfigValue], Field(max_length=64)]


class StrategyEntry(_Model):
    # every strategy rule is checked here (schema step), none depends on the architecture
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"name": {"const": "rp"}}, "required": ["name"]},
                    "then": {"required": ["ratio"], "properties": {"ratio": {"type": "number"}}},
                    "else": {"properties": {"ratio": {"type": "null"}}},
                },
                {
                    "if": {"properties": {"scale": {"const": "fan_in"}}, "required": ["scale"]},
                    "then": {"properties": {"name": {"enum": ["mp", "rp"]}}},
                },
            ]
        }
    )

    name: Literal["mask", "one_layer", "mp", "rp"]
    seed: Annotated[int, Field(ge=0, lt=2**53)]
    # validate_default: an rp entry without a ratio fails on the ratio field
    ratio: Annotated[float, Field(gt=0, le=1)] | None = Field(default=None, validate_default=True)
    scale: Literal["paper", "fan_in"] = "paper"

    @field_validator("ratio")
    @classmethod
    def _ratio_only_for_rp(cls, ratio: float | None, info: ValidationInfo) -> float | None:
        name = info.data.get("name")
        if name == "rp" and ratio is None:
            raise ValueError("strategy rp needs a ratio in (0, 1]")
        if name not in (None, "rp") and ratio is not None:
            raise ValueError(f"strategy {name} takes no ratio (null)")
        return ratio

    @field_validator("scale")
    @classmethod
    def _fan_in_only_for_mp_rp(cls, scale: str, info: ValidationInfo) -> str:
        name = info.data.get("name")
        if scale == "fan_in" and name not in (None, "mp", "rp"):
            raise ValueError(f"scale fan_in applies to mp and rp, not {name}")
        return scale

    def to_strategy(self) -> Strategy:
        return Strategy(self.name, seed=self.seed, ratio=self.ratio, scale=self.scale)


class TensorEntry(_Model):
    """A named tensor of the architecture (a maskable layer or a trained tensor)."""

    name: _Name
    shape: Annotated[list[_Dim], Field(min_length=1, max_length=8)]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class InputSpec(_Model):
    """What the network takes: (C, H, W) float32 pixels in ``range``, normalised per
    channel as ``(x - mean) / std`` by the runtime before the first layer."""

    shape: tuple[_Dim, _Dim, _Dim]
    mean: Annotated[tuple[float, ...], Field(min_length=1, max_length=64)]
    std: Annotated[tuple[Annotated[float, Field(gt=0)], ...], Field(min_length=1, max_length=64)]
    dtype: Literal["float32"] = "float32"
    range: tuple[float, float] = (0.0, 1.0)

    @model_validator(mode="after")
    def _per_channel(self) -> InputSpec:
        if not len(self.mean) == len(self.std) == self.shape[0]:
            raise ValueError(f"mean and std need one value per channel ({self.shape[0]})")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std, *self.range)):
            raise ValueError("mean, std and range must be finite")
        return self


class Manifest(_Model):
    """The bundle's self-description, stored as canonical JSON in the safetensors
    metadata key ``manifest``. Format 2.0 leaves out what the reader derives
    (``format``, ``generator``, ``layers``, ``trained``, config values equal to the
    architecture's defaults, other default values); 1.x files carry ``format``,
    ``generator``, ``layers`` and ``trained`` (required there: the reader checks it).
    ``read_bundle`` hands out manifests with ``layers``, ``trained`` and the full
    ``arch.config`` filled in."""

    model_config = ConfigDict(
        json_schema_extra={
            "if": {
                "properties": {"format_version": {"pattern": "^0*1\\."}},
                "required": ["format_version"],
            },
            "then": {"required": ["format", "generator", "layers", "trained"]},
        }
    )

    format: Literal["pemn-bundle"] = "pemn-bundle"
    format_version: Annotated[str, Field(pattern=r"^[0-9]{1,4}\.[0-9]{1,4}$")]
    arch: ArchEntry
    strategy: StrategyEntry
    generator: Literal["splitmix64-boxmuller-v1"] = "splitmix64-boxmuller-v1"
    prototype_digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
    prototype_embedded: StrictBool = False
    density: Annotated[float, Field(gt=0, lt=1)]
    # absent in 2.x (derived); never null (the schema shows arrays only)
    layers: (
        Annotated[list[TensorEntry], Field(min_length=1, max_length=65536)] | SkipJsonSchema[None]
    ) = None
    trained: Annotated[list[TensorEntry], Field(max_length=65536)] | SkipJsonSchema[None] = None
    input: InputSpec
    labels: Annotated[
        list[Annotated[str, Field(max_length=256)]], Field(min_length=1, max_length=100_000)
    ]
    metrics: Annotated[dict[str, _Scalar], Field(max_length=256)] = {}
    provenance: Annotated[dict[str, _Scalar], Field(max_length=256)] = {}

    @field_validator("layers", "trained", mode="before")
    @classmethod
    def _absent_not_null(cls, value: Any) -> Any:
        if value is None:  # optional in 2.x means absent; null is not an array
            raise ValueError("must be an array when present")
        return value

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.arch.name, self.arch.config, self.strategy.to_strategy())


assert GENERATOR == "splitmix64-boxmuller-v1"  # the Literal above names the same generator


def fingerprint(arch: str, config: Mapping[str, Any], strategy: Strategy) -> str:
    """Identity of a backbone: sha256 of the canonical JSON of architecture, full
    config, strategy (name, seed, ratio, scale) and generator."""
    from pemn.archs import resolve_config

    full = {
        k: list(v) if isinstance(v, tuple) else v for k, v in resolve_config(arch, **config).items()
    }
    doc = {"arch": arch, "config": full, "strategy": strategy.as_dict(), "generator": GENERATOR}
    return "sha256:" + hashlib.sha256(canonical_json(doc).encode()).hexdigest()


NormKind = Literal["batchnorm", "layernorm"]


@dataclass(frozen=True)
class ArchLayout:
    """What a bundle of one architecture must contain, derived without allocating
    weights (the model is built on the meta device)."""

    layers: list[LayerSpec]  # maskable layers, module order
    trained: list[TensorEntry]  # state entries in storage order
    norms: dict[str, tuple[NormKind, float]]  # norm module name -> (kind, eps)
    extra_values: int = 0  # parameter and buffer values of the network besides the N weights

    @property
    def n(self) -> int:
        return sum(s.numel for s in self.layers)


# Layouts are cached per (architecture, canonical config) in CACHES.layouts: building
# the module tree, even on the meta device, is most of what validating a bundle costs.
# Only layouts of at most _CACHED_LAYERS layers are kept, so that hostile configs at
# the size caps cannot fill memory (64 layouts of <= 512 layers: a few MB at most).
# The meta module trees themselves (~10 KB of Python objects per module) are kept in
# CACHES.trees for the 8 most recent configs of at most 128 layers, for backbones to
# clone.
_CACHED_LAYERS = 512
_CACHED_TREES = 128


def _build(
    arch: str, config: Mapping[str, Any], key: tuple[str, str]
) -> tuple[nn.Module, ArchLayout]:
    with torch.device("meta"):
        model = create_model(arch, **config)
    layout = _layout(model)
    if len(layout.layers) <= _CACHED_LAYERS:
        CACHES.layouts.put(key, layout)
    if len(layout.layers) <= _CACHED_TREES:
        CACHES.trees.put(key, model)
    return model, layout


def arch_layout(arch: str, config: Mapping[str, Any]) -> ArchLayout:
    """Layers and trained tensors of ``arch(**config)``. BatchNorm modules are stored
    folded as ``<name>.scale`` and ``<name>.shift``; LayerNorm as ``.weight``/``.bias``.
    The result is shared between callers (cached): treat it as read-only."""
    key = (arch, canonical_json(dict(config)))
    hit: ArchLayout | None = CACHES.layouts.get(key)
    return hit if hit is not None else _build(arch, config, key)[1]


def meta_model(arch: str, config: Mapping[str, Any]) -> nn.Module:
    """``arch(**config)`` on the meta device (shapes, no data), shared between callers
    (cached): never modify it; clone it first."""
    key = (arch, canonical_json(dict(config)))
    hit: nn.Module | None = CACHES.trees.get(key)
    return hit if hit is not None else _build(arch, config, key)[0]


def clear_layout_cache() -> None:
    """Forget every cached layout and module tree (benchmarks of cold starts, tests)."""
    CACHES.layouts.clear()
    CACHES.trees.clear()


def _layout(model: nn.Module) -> ArchLayout:
    trained: list[TensorEntry] = []
    norms: dict[str, tuple[NormKind, float]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not module.affine or not module.track_running_stats:
                raise ValueError(f"{name}: batch norms must be affine with running statistics")
            norms[name] = ("batchnorm", float(module.eps))
            trained += [
                TensorEntry(name=f"{name}.{leaf}", shape=[module.num_features])
                for leaf in ("scale", "shift")
            ]
        elif isinstance(module, nn.LayerNorm):
            if not module.elementwise_affine or module.bias is None:
                raise ValueError(f"{name}: layer norms must have weight and bias")
            norms[name] = ("layernorm", float(module.eps))
            shape = list(module.normalized_shape)
            trained += [
                TensorEntry(name=f"{name}.{leaf}", shape=shape) for leaf in ("weight", "bias")
            ]
    layers = layer_specs(model)
    total = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    n = sum(s.numel for s in layers)
    return ArchLayout(layers=layers, trained=trained, norms=norms, extra_values=total - n)


def mask_offsets(layers: list[LayerSpec]) -> tuple[list[int], int]:
    """Byte offset of each layer's packed mask in ``masks``, and the total length:
    layer l occupies ceil(n_l / 8) bytes starting where layer l-1 ended."""
    offsets, pos = [], 0
    for s in layers:
        offsets.append(pos)
        pos += (s.numel + 7) // 8
    return offsets, pos


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the manifest, generated from ``Manifest``."""
    schema = Manifest.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def manifest_schema_text() -> str:
    """``manifest_schema()`` as checked in at ``pemn/bundle/manifest.schema.json``
    (regenerate with ``python -m pemn schema > pemn/bundle/manifest.schema.json``)."""
    return json.dumps(manifest_schema(), indent=2, sort_keys=True, ensure_ascii=True) + "\n"
