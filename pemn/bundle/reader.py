"""The validating bundle reader (docs/bundle-format.md, section 13).

Untrusted bytes are checked in an order that never allocates more than the caps
allow: total size, header length, header JSON (strict: no duplicate keys, no
NaN, bounded numbers, at most ``MAX_JSON_DEPTH`` levels), manifest (version
first: formats 1.x and 2.x), architecture (built on the meta device, so declared
sizes cost nothing; layouts are cached per config), tensor table (dtypes,
shapes, offsets, no holes, no trailing bytes), then the data itself (mask
padding bits and popcounts, finite trained values) through zero-copy views
(a float16 or bfloat16 state is converted to float32), and finally the
prototype digest (cached per backbone fingerprint for generated prototypes).
Every failure raises its own ``BundleError`` subclass.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from pydantic import ValidationError

from pemn.archs import list_archs, resolve_config
from pemn.bundle import errors as E
from pemn.bundle.bits import kept_count
from pemn.bundle.dtypes import HEADER_DTYPES, decode_state, state_value_name
from pemn.bundle.spec import (
    FORMAT,
    READ_MAJORS,
    ArchLayout,
    BundleLimits,
    Manifest,
    TensorEntry,
    arch_layout,
    mask_offsets,
)
from pemn.bundle.strict_json import BadJSON, strict_json
from pemn.caches import CACHES
from pemn.content import content_id
from pemn.errors import InvalidParameterError
from pemn.prototype import PrototypeStats, Strategy, digest, generate, stats

__all__ = [
    "Bundle",
    "forget_digests",
    "generated_digest",
    "inspect_bundle",
    "read_bundle",
    "verify_prototype",
]

# header dtypes each tensor may have, by format major version
_DTYPES: dict[int, dict[str, tuple[str, ...]]] = {
    1: {"masks": ("U8",), "state": ("F32",), "prototype": ("F32",)},
    2: {"masks": ("U8",), "state": ("F16", "BF16", "F32"), "prototype": ("F32",)},
}
_NUMPY: dict[str, np.dtype[Any]] = {
    "U8": np.dtype(np.uint8),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # bit patterns; decode_state makes float32 of them
}
_ITEMSIZE = {"U8": 1, "F32": 4, "F16": 2, "BF16": 2}
# fields a 1.x manifest must have; 2.x derives them (format from the metadata)
_REQUIRED_1X = ("format", "generator", "layers", "trained")


@dataclass(frozen=True)
class Bundle:
    """A validated bundle. Arrays are read-only views into ``data`` (no copies),
    except ``state`` when it is stored as float16 or bfloat16: then a read-only
    float32 copy. ``manifest`` has ``layers`` and ``trained`` filled in from the
    architecture when the file leaves them out (format 2.0)."""

    data: bytes = field(repr=False)
    manifest: Manifest
    layout: ArchLayout = field(repr=False)
    strategy: Strategy
    masks: np.ndarray = field(repr=False)  # uint8 (total mask bytes,)
    state: np.ndarray = field(repr=False)  # float32 (total state values,)
    prototype: np.ndarray | None = field(repr=False)  # float32 (N,) when embedded
    state_dtype: str = "F32"  # how the file stores ``state``: F32, F16 or BF16

    @property
    def size(self) -> int:
        return len(self.data)

    @cached_property
    def content_id(self) -> str:
        return content_id(self.data)

    @cached_property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def stats(self) -> PrototypeStats:
        return stats(self.layout.layers, self.strategy)

    def layer_masks(self) -> dict[str, np.ndarray]:
        """Packed mask bytes of each layer (views)."""
        offsets, _ = mask_offsets(self.layout.layers)
        return {
            s.name: self.masks[o : o + (s.numel + 7) // 8]
            for s, o in zip(self.layout.layers, offsets, strict=True)
        }

    def state_tensors(self) -> dict[str, np.ndarray]:
        """Trained tensors by name (``<bn>.scale``/``.shift``, ``<ln>.weight``/``.bias``), views."""
        out, pos = {}, 0
        for e in self.layout.trained:
            out[e.name] = self.state[pos : pos + e.numel].reshape(e.shape)
            pos += e.numel
        return out


def _header(data: bytes, limits: BundleLimits) -> tuple[dict[str, Any], int]:
    if len(data) > limits.max_file_bytes:
        raise E.BundleTooLarge(
            f"bundle is {len(data)} bytes, above the {limits.max_file_bytes}-byte limit"
        )
    if len(data) < 8:
        raise E.Truncated(f"bundle is {len(data)} bytes, too short for the 8-byte header length")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > limits.max_header_bytes:
        raise E.HeaderTooLarge(
            f"header length {n} exceeds the {limits.max_header_bytes}-byte limit", "header"
        )
    if 8 + n > len(data):
        raise E.Truncated(f"header declares {n} bytes but only {len(data) - 8} follow", "header")
    raw = data[8 : 8 + n]
    if not raw.startswith(b"{"):
        raise E.HeaderInvalid("header does not start with '{'", "header")
    try:
        header = strict_json(raw.decode("utf-8"), padded=True)
    except UnicodeDecodeError as exc:
        raise E.HeaderInvalid(
            f"header is not valid UTF-8 (byte {8 + exc.start} of the file)", "header"
        ) from None
    except BadJSON as exc:
        raise E.HeaderInvalid(f"header is not valid JSON: {exc}", "header") from None
    if not isinstance(header, dict):
        raise E.HeaderInvalid("header is not a JSON object", "header")
    return header, 8 + n


_VERSION = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})", re.ASCII)


def _location(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a dotted path: ``layers.3.shape``, ``metrics['a b']``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", part, re.ASCII):
            out += f".{part}" if out else part
        else:
            out += f"[{part[:64]!r}]"
    return out or "manifest"


def _manifest(header: dict[str, Any]) -> tuple[Manifest, int]:
    """The validated manifest (section 3, steps 4-7) and its format major version."""
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise E.NotABundle(
            "header has no __metadata__ object of strings: not a pemn bundle", "__metadata__"
        )
    if meta.get("format") != FORMAT:
        raise E.NotABundle(
            f"metadata format is {meta.get('format')!r}, expected {FORMAT!r}", "__metadata__.format"
        )
    if "manifest" not in meta:
        raise E.NotABundle("metadata has no manifest", "__metadata__.manifest")
    try:
        doc = strict_json(meta["manifest"])
    except BadJSON as exc:
        raise E.ManifestNotJSON(f"metadata manifest is not valid JSON: {exc}", "manifest") from None
    if not isinstance(doc, dict):
        raise E.ManifestNotJSON("metadata manifest is not a JSON object", "manifest")
    version = doc.get("format_version")
    match = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise E.ManifestInvalid(
            f"manifest format_version {version!r} is not MAJOR.MINOR", "format_version"
        )
    major = int(match[1])
    if major not in READ_MAJORS:
        known = " and ".join(f"{v}.x" for v in READ_MAJORS)
        raise E.UnsupportedVersion(
            f"format_version {version} is not supported (this reader reads {known})",
            "format_version",
        )
    try:
        m = Manifest.model_validate_json(meta["manifest"])
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _location(tuple(err["loc"]))
        raise E.ManifestInvalid(f"manifest field {where}: {err['msg']}", where) from None
    if major == 1:
        for name in _REQUIRED_1X:
            if name not in m.model_fields_set:
                raise E.ManifestInvalid(
                    f"manifest field {name}: Field required (format {version})", name
                )
    return m, major


def _architecture(m: Manifest, limits: BundleLimits) -> tuple[ArchLayout, Strategy]:
    if m.arch.name not in list_archs():
        raise E.UnknownArchitecture(
            f"architecture {m.arch.name!r} is unknown (known: {', '.join(list_archs())})",
            "arch.name",
        )
    strategy = m.strategy.to_strategy()  # the schema step checked every strategy rule
    try:
        config = resolve_config(m.arch.name, **m.arch.config)
    except InvalidParameterError as exc:
        if exc.param.endswith(" config key"):  # a key the architecture does not take
            where = f"arch.config[{str(exc.value)[:64]!r}]"
        else:
            where = f"arch.config.{exc.param}"
        raise E.ManifestInvalid(f"manifest {where}: {exc}", where) from None
    declared = m.layers or []  # absent in 2.x: nothing declared, the architecture decides
    if len(declared) > limits.max_layers:
        raise E.ModelTooLarge(
            f"{len(declared)} layers exceed the {limits.max_layers}-layer limit", "layers"
        )
    declared_n = sum(e.numel for e in declared)
    if declared_n > limits.max_weights:
        raise E.ModelTooLarge(
            f"{declared_n} weights exceed the {limits.max_weights}-weight limit", "layers"
        )
    input_values = config["in_channels"] * config["image_size"] ** 2
    if input_values > limits.max_input_values:
        raise E.ModelTooLarge(
            f"arch.config in_channels={config['in_channels']} and image_size={config['image_size']} "
            f"make inputs of {input_values} values, above the {limits.max_input_values}-value limit",
            "arch.config.image_size",
        )
    try:
        layout = arch_layout(m.arch.name, config)
    except (ValueError, RuntimeError, TypeError, OverflowError) as exc:
        # e.g. a kernel larger than the image, or sizes whose product overflows int64
        reason = str(exc).partition("\n")[0]
        raise E.ManifestInvalid(
            f"manifest arch.config cannot be built ({exc.__class__.__name__}: {reason})",
            "arch.config",
        ) from None
    if len(layout.layers) > limits.max_layers or layout.n > limits.max_weights:
        raise E.ModelTooLarge(
            f"architecture has {layout.n} weights in {len(layout.layers)} layers, above the limits",
            "arch.config",
        )
    if layout.extra_values > limits.max_extra_values:
        raise E.ModelTooLarge(
            f"architecture has {layout.extra_values} values besides its weights (norms, "
            f"buffers), above the {limits.max_extra_values}-value limit",
            "arch.config",
        )
    expected = [(s.name, list(s.shape)) for s in layout.layers]
    got = expected if m.layers is None else [(e.name, e.shape) for e in m.layers]
    if got != expected:
        i = next(
            (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
            min(len(got), len(expected)),
        )
        want = expected[i] if i < len(expected) else "no more layers"
        raise E.ArchitectureMismatch(
            f"manifest layers[{i}] is {got[i] if i < len(got) else 'missing'}, the architecture has {want}",
            f"layers[{i}]",
        )
    trained_want = [(e.name, e.shape) for e in layout.trained]
    trained_got = trained_want if m.trained is None else [(e.name, e.shape) for e in m.trained]
    if trained_got != trained_want:
        i = next(
            (i for i, (a, b) in enumerate(zip(trained_got, trained_want, strict=False)) if a != b),
            min(len(trained_got), len(trained_want)),
        )
        have = trained_got[i] if i < len(trained_got) else "missing"
        want = trained_want[i] if i < len(trained_want) else "no more trained tensors"
        raise E.ArchitectureMismatch(
            f"manifest trained[{i}] is {have}, the architecture's norm layers have {want}",
            f"trained[{i}]",
        )
    if tuple(m.input.shape) != (config["in_channels"], config["image_size"], config["image_size"]):
        raise E.ManifestInvalid(
            f"manifest input.shape {list(m.input.shape)} differs from the architecture's input",
            "input.shape",
        )
    if len(m.labels) != config["num_classes"]:
        raise E.ManifestInvalid(
            f"manifest has {len(m.labels)} labels for {config['num_classes']} classes", "labels"
        )
    return layout, strategy


def _tensors(
    header: dict[str, Any],
    m: Manifest,
    major: int,
    layout: ArchLayout,
    data: bytes,
    start: int,
    limits: BundleLimits,
) -> tuple[dict[str, np.ndarray], str]:
    """Views of the tensors (state still in its stored dtype) and the state's dtype."""
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > limits.max_tensors:
        raise E.TooManyTensors(
            f"header declares {len(entries)} tensors, above the limit of {limits.max_tensors}"
        )
    _, mask_bytes = mask_offsets(layout.layers)
    expected_shape = {"masks": [mask_bytes], "state": [sum(e.numel for e in layout.trained)]}
    if m.prototype_embedded:
        expected_shape["prototype"] = [layout.n]
    for name in sorted(entries):
        if name not in expected_shape:
            raise E.UnexpectedTensor(f"tensor {name[:64]!r} is not part of the format", name)
    for name in expected_shape:
        if name not in entries:
            raise E.MissingTensor(f"tensor {name!r} is missing", name)
    spans = []
    for name in sorted(entries):
        info = entries[name]
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise E.HeaderInvalid(
                f"tensor {name!r} entry needs exactly dtype, shape and data_offsets", name
            )
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        allowed = _DTYPES[major][name]
        if dtype not in allowed:
            shown = repr(dtype)[:32]
            wanted = " or ".join(allowed)
            raise E.WrongDtype(
                f"tensor {name!r} has dtype {shown}, format {m.format_version} requires {wanted}",
                name,
            )
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise E.HeaderInvalid(
                f"tensor {name!r} shape is not a list of non-negative integers", name
            )
        if shape != expected_shape[name]:
            shown = str(shape) if len(shape) <= 8 else f"of {len(shape)} dimensions"
            raise E.WrongShape(
                f"tensor {name!r} has shape {shown}, the architecture requires {expected_shape[name]}",
                name,
            )
        if not (
            isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        ):
            raise E.HeaderInvalid(f"tensor {name!r} data_offsets is not a pair of integers", name)
        b, e = offsets
        if not 0 <= b <= e:
            raise E.InvalidOffsets(
                f"tensor {name!r} data_offsets {offsets} are not a non-negative ascending pair",
                name,
            )
        need = math.prod(shape) * _ITEMSIZE[dtype]
        if e - b != need:
            raise E.InvalidOffsets(
                f"tensor {name!r} spans {e - b} bytes but its shape needs {need}", name
            )
        spans.append((b, e, name))
    pos = 0
    for b, e, name in sorted(spans):
        if b != pos:
            what = "leaves a hole" if b > pos else "overlaps the previous tensor"
            raise E.InvalidOffsets(f"tensor {name!r} starts at {b}, expected {pos}: {what}", name)
        pos = e
    buffer_len = len(data) - start
    if pos > buffer_len:
        raise E.Truncated(
            f"the tensors need {pos} data bytes but only {buffer_len} follow the header", "data"
        )
    if pos < buffer_len:
        raise E.TrailingBytes(f"{buffer_len - pos} bytes follow the last tensor", "data")
    arrays = {
        name: np.frombuffer(
            data,
            dtype=_NUMPY[info["dtype"]],
            count=math.prod(info["shape"]),
            offset=start + info["data_offsets"][0],
        )
        for name, info in entries.items()
    }
    return arrays, entries["state"]["dtype"]


def _popcount(a: np.ndarray) -> int:
    return int(np.bitwise_count(a).sum(dtype=np.int64))


def _check_data(
    m: Manifest, layout: ArchLayout, arrays: dict[str, np.ndarray], state_dtype: str
) -> np.ndarray:
    """Steps 10: mask padding and popcounts, finite values; returns the state as float32."""
    masks = arrays["masks"]
    offsets, _ = mask_offsets(layout.layers)
    for s, o in zip(layout.layers, offsets, strict=True):
        nbytes = (s.numel + 7) // 8
        chunk = masks[o : o + nbytes]
        spare = nbytes * 8 - s.numel
        if spare and int(chunk[-1]) >> (8 - spare):
            raise E.NonZeroPadding(
                f"mask of layer {s.name!r} has non-zero padding bits", f"masks.{s.name}"
            )
        kept, want = _popcount(chunk), kept_count(s.numel, m.density)
        if kept != want:
            raise E.PopcountMismatch(
                f"mask of layer {s.name!r} keeps {kept} of {s.numel} weights; density {m.density} requires {want}",
                f"masks.{s.name}",
            )
    state = decode_state(arrays["state"], state_dtype)
    finite = np.isfinite(state)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise E.NonFiniteValue(
            f"tensor 'state' ({state_dtype}) holds NaN or infinite values, first at "
            f"{state_value_name(layout.trained, first)} ({HEADER_DTYPES[state_dtype]} value {state[first]})",
            "state",
        )
    if "prototype" in arrays and not np.isfinite(arrays["prototype"]).all():
        raise E.NonFiniteValue("tensor 'prototype' holds NaN or infinite values", "prototype")
    if state_dtype != "F32":
        state.setflags(write=False)  # like the views of the other formats
    return state


# Digests of generated prototypes by backbone fingerprint, in CACHES.digests. The
# generator's output is a function of the fingerprint (architecture, full config,
# strategy, seed, generator), so hashing it once per process is enough; embedded
# prototypes never enter here.
def generated_digest(fingerprint: str, generate_weights: Callable[[], Mapping[str, Any]]) -> str:
    """The digest of the prototype generated for ``fingerprint``; calls
    ``generate_weights()`` and hashes its result only the first time."""
    return CACHES.digests.get_or_make(fingerprint, lambda: digest(generate_weights()))


def forget_digests() -> None:
    """Empty the digest cache (benchmarks of cold starts, tests)."""
    CACHES.digests.clear()


def verify_prototype(bundle: Bundle, actual_digest: str | None = None) -> None:
    """Check the manifest's prototype digest against ``actual_digest`` (e.g. of a
    resident backbone) or, when None, against the embedded or generated prototype."""
    if actual_digest is None:
        if bundle.prototype is not None:
            views, pos = {}, 0
            for s in bundle.layout.layers:
                views[s.name] = bundle.prototype[pos : pos + s.numel].reshape(s.shape)
                pos += s.numel
            actual_digest = digest(views)
        else:
            actual_digest = generated_digest(
                bundle.fingerprint, lambda: generate(bundle.layout.layers, bundle.strategy)
            )
    if actual_digest != bundle.manifest.prototype_digest:
        raise E.DigestMismatch(
            f"prototype digest {actual_digest} differs from the manifest's {bundle.manifest.prototype_digest}",
            "prototype_digest",
        )


def read_bundle(data: bytes, *, limits: BundleLimits | None = None, verify: bool = True) -> Bundle:
    """Validate ``data`` and return a ``Bundle`` of zero-copy views.

    ``verify=False`` skips only the prototype digest check (the caller then calls
    ``verify_prototype`` with the digest of a backbone it already holds).
    """
    limits = limits or BundleLimits()
    data = bytes(data)
    header, start = _header(data, limits)
    manifest, major = _manifest(header)
    layout, strategy = _architecture(manifest, limits)
    arrays, state_dtype = _tensors(header, manifest, major, layout, data, start, limits)
    state = _check_data(manifest, layout, arrays, state_dtype)
    # 2.x leaves out what the architecture implies: hand out the manifest complete
    full = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in resolve_config(manifest.arch.name, **manifest.arch.config).items()
    }
    if manifest.layers is None or manifest.trained is None or full != manifest.arch.config:
        manifest = manifest.model_copy(
            update={
                "arch": manifest.arch.model_copy(update={"config": full}),
                "layers": [TensorEntry(name=s.name, shape=list(s.shape)) for s in layout.layers],
                "trained": list(layout.trained),
            }
        )
    bundle = Bundle(
        data,
        manifest,
        layout,
        strategy,
        arrays["masks"],
        state,
        arrays.get("prototype"),
        state_dtype,
    )
    if verify:
        verify_prototype(bundle)
    return bundle


def inspect_bundle(
    data: bytes, *, limits: BundleLimits | None = None, verify: bool = True
) -> dict[str, Any]:
    """Validate ``data`` and summarise it as a JSON-able dict."""
    b = read_bundle(data, limits=limits, verify=verify)
    st = b.stats
    m = b.manifest
    # the same network stored dense in fp32: weights plus norms (a BatchNorm has 4 vectors, stored folded as 2)
    norm_values = sum(
        e.numel * (2 if b.layout.norms[e.name.rpartition(".")[0]][0] == "batchnorm" else 1)
        for e in b.layout.trained
    )
    dense = 4 * (st.n + norm_values)
    return {
        "format_version": m.format_version,
        "state_dtype": HEADER_DTYPES[b.state_dtype],
        "arch": m.arch.name,
        "config": dict(m.arch.config),
        "strategy": m.strategy.name,
        "ratio": m.strategy.ratio,
        "scale": m.strategy.scale,
        "seed": m.strategy.seed,
        "density": m.density,
        "layers": len(b.layout.layers),
        "N": st.n,
        "U": st.u,
        "paper_compression": st.compression,
        "file_size": b.size,
        "dense_fp32_size": dense,
        "size_ratio": dense / b.size,
        "input": m.input.model_dump(mode="json"),
        "labels": list(m.labels),
        "metrics": dict(m.metrics),
        "provenance": dict(m.provenance),
        "fingerprint": b.fingerprint,
        "prototype_digest": m.prototype_digest,
        "content_id": b.content_id,
    }
