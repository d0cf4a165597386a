"""The deterministic bundle writer: the same inputs give the same bytes.

``write_bundle`` writes format 2.0 by default (compact manifest, float16 norm
state) and 1.0 on request (for readers not yet upgraded); ``convert_bundle``
rewrites an existing bundle in another version or state precision.

The safetensors container is written here rather than by ``safetensors.numpy.save``
because that serializer orders ``__metadata__`` keys differently from one process
to the next; the bytes follow the safetensors spec exactly and the official reader
reads them (tested).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pemn.archs import resolve_config
from pemn.bundle.bits import check_density, kept_count, pack_mask
from pemn.bundle.dtypes import DEFAULT_STATE_DTYPE, STATE_DTYPES, encode_state, state_value_name
from pemn.bundle.spec import (
    FORMAT,
    FORMAT_VERSION,
    WRITE_VERSIONS,
    ArchLayout,
    BundleLimits,
    InputSpec,
    Manifest,
    arch_layout,
    canonical_json,
)
from pemn.errors import InvalidParameterError
from pemn.prototype import GENERATOR, Strategy, digest, generate

__all__ = ["convert_bundle", "pack_mask", "safetensors_bytes", "write_bundle"]


def safetensors_bytes(
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str],
    header_dtypes: Mapping[str, str] | None = None,
) -> bytes:
    """A safetensors file: tensors ordered by (itemsize descending, name), header JSON
    with sorted keys and no whitespace, padded with spaces to a multiple of 8 bytes.
    ``header_dtypes`` names a tensor's dtype where numpy's does not (``BF16`` for
    bfloat16 bit patterns held as ``uint16``)."""
    dtypes = {np.dtype(np.uint8): "U8", np.dtype("<f4"): "F32", np.dtype("<f2"): "F16"}
    order = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    pos = 0
    chunks = []
    for name in order:
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype == np.float32:
            arr = arr.astype("<f4", copy=False)
        raw = arr.tobytes()
        header[name] = {
            "dtype": (header_dtypes or {}).get(name) or dtypes[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [pos, pos + len(raw)],
        }
        chunks.append(raw)
        pos += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _fold_norms(layout: ArchLayout, trained: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BatchNorm (weight, bias, running_mean, running_var, eps) -> (scale, shift) with
    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale, in
    float32 the way PyTorch's CPU inference kernel computes them, so that a folded
    BatchNorm gives the unfolded one's outputs bit for bit there (elsewhere within
    float rounding); LayerNorm tensors as they are."""
    out: dict[str, torch.Tensor] = {}
    for name, (kind, eps) in layout.norms.items():
        if kind == "batchnorm":
            need = [f"{name}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            missing = [k for k in need if k not in trained]
            if missing:
                raise InvalidParameterError(
                    "trained", ", ".join(missing), "every BatchNorm tensor of the architecture"
                )
            w, b, rm, rv = (trained[k].detach().cpu().float() for k in need)
            # the order of operations of PyTorch's CPU inference kernel, so that a
            # folded BatchNorm reproduces the unfolded one bit for bit there
            # (rsqrt in float32; shift with a single rounding, as a fused multiply-add)
            scale = torch.rsqrt(rv + torch.tensor(eps, dtype=torch.float32)) * w
            shift = (b.double() - rm.double() * scale.double()).float()
            out[f"{name}.scale"], out[f"{name}.shift"] = scale, shift
        else:
            for leaf in ("weight", "bias"):
                key = f"{name}.{leaf}"
                if key not in trained:
                    raise InvalidParameterError(
                        "trained", key, "every LayerNorm tensor of the architecture"
                    )
                out[key] = trained[key].detach().cpu().float()
    return out


def _manifest_doc(
    version: str,
    *,
    arch: str,
    full: Mapping[str, Any],
    strategy: Strategy,
    prototype_digest: str,
    embed_prototype: bool,
    density: float,
    layout: ArchLayout,
    input_spec: InputSpec,
    labels: Sequence[str],
    metrics: Mapping[str, Any],
    provenance: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest (docs/bundle-format.md, section 3). 1.0: every field, as 1.0
    writers always wrote it. 2.0: no field the reader derives (``format`` from the
    metadata, ``layers``, ``trained`` and config defaults from the architecture) and
    no field equal to its default (section 1.2)."""
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in resolve_config(arch).items()}
    inp = input_spec.model_dump(mode="json")
    if version == "1.0":
        return {
            "format": FORMAT,
            "format_version": version,
            "arch": {"name": arch, "config": config},
            "strategy": strategy.as_dict(),
            "generator": GENERATOR,
            "prototype_digest": prototype_digest,
            "prototype_embedded": embed_prototype,
            "density": density,
            "layers": [{"name": s.name, "shape": list(s.shape)} for s in layout.layers],
            "trained": [e.model_dump() for e in layout.trained],
            "input": inp,
            "labels": list(labels),
            "metrics": dict(metrics),
            "provenance": dict(provenance),
        }
    st: dict[str, Any] = {"name": strategy.name, "seed": strategy.seed}
    if strategy.ratio is not None:
        st["ratio"] = strategy.ratio
    if strategy.scale != "paper":
        st["scale"] = strategy.scale
    for key, default in (("dtype", "float32"), ("range", [0.0, 1.0])):
        if inp[key] == default:
            del inp[key]
    doc: dict[str, Any] = {
        "format_version": version,
        "arch": {"name": arch, "config": {k: v for k, v in config.items() if v != defaults[k]}},
        "strategy": st,
        "prototype_digest": prototype_digest,
        "density": density,
        "input": inp,
        "labels": list(labels),
    }
    if embed_prototype:
        doc["prototype_embedded"] = True
    if metrics:
        doc["metrics"] = dict(metrics)
    if provenance:
        doc["provenance"] = dict(provenance)
    return doc


def _check_version(format_version: str, state_dtype: str | None) -> str:
    """The header dtype of ``state`` for these arguments (None: the default policy)."""
    if format_version not in WRITE_VERSIONS:
        raise InvalidParameterError("format_version", format_version, " or ".join(WRITE_VERSIONS))
    if state_dtype is not None and state_dtype not in STATE_DTYPES:
        raise InvalidParameterError("state_dtype", state_dtype, ", ".join(STATE_DTYPES))
    if format_version == "1.0":
        if state_dtype not in (None, "float32"):
            raise InvalidParameterError(
                "state_dtype", state_dtype, "float32 (format 1.0 stores no other)"
            )
        return "F32"
    return STATE_DTYPES[state_dtype or DEFAULT_STATE_DTYPE]


def _encoded_state(
    flat: np.ndarray, header_dtype: str, explicit: bool, layout: ArchLayout
) -> tuple[np.ndarray, str]:
    """The state in ``header_dtype``; under the default policy a value beyond its
    range (float16: |v| > 65504) makes the whole state float32 instead (the header
    says which); asked for explicitly, it is an error naming the value."""
    stored, bad = encode_state(flat, header_dtype)
    if bad is None:
        return stored, header_dtype
    if not explicit:
        return encode_state(flat, "F32")[0], "F32"
    raise InvalidParameterError(
        f"trained[{state_value_name(layout.trained, bad)}]",
        float(flat[bad]),
        f"a value within the range of {header_dtype} (use state_dtype='float32')",
    )


def _container(
    doc: dict[str, Any],
    packed: np.ndarray,
    state: np.ndarray,
    state_header_dtype: str,
    layout: ArchLayout,
    explicit_dtype: bool,
    prototype: np.ndarray | None,
) -> bytes:
    stored, dtype = _encoded_state(state, state_header_dtype, explicit_dtype, layout)
    tensors: dict[str, np.ndarray] = {"masks": packed, "state": stored}
    if prototype is not None:
        tensors["prototype"] = prototype
    return safetensors_bytes(
        tensors, {"format": FORMAT, "manifest": canonical_json(doc)}, {"state": dtype}
    )


def write_bundle(
    *,
    arch: str,
    config: Mapping[str, Any],
    strategy: Strategy,
    density: float,
    masks: Mapping[str, torch.Tensor],
    trained: Mapping[str, torch.Tensor],
    input_spec: InputSpec,
    labels: Sequence[str],
    metrics: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    embed_prototype: bool = False,
    format_version: str = FORMAT_VERSION,
    state_dtype: str | None = None,
) -> bytes:
    """Serialize a trained masked network as a bundle (see docs/bundle-format.md).

    ``masks`` holds a bool mask per maskable layer (``pemn.masking.extract_masks``),
    ``trained`` the norm tensors (``pemn.masking.trained_state``). The prototype is
    regenerated to record its digest. ``format_version``: ``"2.0"`` (default) or
    ``"1.0"`` (what readers of format 1 only can read). ``state_dtype``: how the
    folded norm values are stored, ``"float16"``, ``"bfloat16"`` or ``"float32"``;
    the default (None) is float16 in 2.0 (float32 when a value exceeds float16's
    range) and float32 in 1.0. Bad arguments raise ``InvalidParameterError``.
    """
    header_dtype = _check_version(format_version, state_dtype)
    full = resolve_config(arch, **config)
    density = check_density(density)
    layout = arch_layout(arch, full)
    for s in layout.layers:
        if s.name not in masks:
            raise InvalidParameterError("masks", s.name, "a mask for every maskable layer")
        m = masks[s.name]
        if tuple(m.shape) != s.shape:
            raise InvalidParameterError(f"masks[{s.name}].shape", tuple(m.shape), str(s.shape))
        kept = int(m.sum())
        if kept != kept_count(s.numel, density):
            raise InvalidParameterError(
                f"masks[{s.name}] kept count",
                kept,
                f"{kept_count(s.numel, density)} (density {density})",
            )
    extra = set(masks) - {s.name for s in layout.layers}
    if extra:
        raise InvalidParameterError("masks", sorted(extra)[0], "layer names of the architecture")
    state = _fold_norms(layout, trained)
    for entry in layout.trained:
        if list(state[entry.name].shape) != entry.shape:
            raise InvalidParameterError(
                f"trained[{entry.name}].shape", tuple(state[entry.name].shape), str(entry.shape)
            )
        if not bool(torch.isfinite(state[entry.name]).all()):
            raise InvalidParameterError(
                f"trained[{entry.name}]", "non-finite values", "finite numbers"
            )

    fixed = generate(layout.layers, strategy)
    doc = _manifest_doc(
        format_version,
        arch=arch,
        full=full,
        strategy=strategy,
        prototype_digest=digest(fixed),
        embed_prototype=embed_prototype,
        density=density,
        layout=layout,
        input_spec=input_spec,
        labels=labels,
        metrics=metrics or {},
        provenance=provenance or {},
    )
    manifest = Manifest.model_validate_json(
        canonical_json(doc)
    )  # the writer never emits an invalid manifest
    if len(manifest.labels) != full["num_classes"]:
        raise InvalidParameterError(
            "labels", len(manifest.labels), f"{full['num_classes']} names (num_classes)"
        )
    if tuple(manifest.input.shape) != (full["in_channels"], full["image_size"], full["image_size"]):
        raise InvalidParameterError(
            "input_spec.shape",
            manifest.input.shape,
            f"{(full['in_channels'], full['image_size'], full['image_size'])}",
        )

    packed = np.concatenate([pack_mask(masks[s.name]) for s in layout.layers])
    flat_state = [state[e.name].reshape(-1).numpy() for e in layout.trained]
    flat = np.concatenate(flat_state).astype(np.float32) if flat_state else np.zeros(0, np.float32)
    prototype = None
    if embed_prototype:
        prototype = np.concatenate([fixed[s.name].reshape(-1).numpy() for s in layout.layers])
    return _container(doc, packed, flat, header_dtype, layout, state_dtype is not None, prototype)


def convert_bundle(
    data: bytes,
    *,
    format_version: str = FORMAT_VERSION,
    state_dtype: str | None = None,
    limits: BundleLimits | None = None,
) -> bytes:
    """``data`` (any version the reader reads, validated in full) rewritten as
    ``format_version`` with its norm state stored as ``state_dtype`` (defaults as in
    ``write_bundle``). Masks, labels, metrics and provenance are kept; manifest
    fields this reader does not know (from a later minor version) are dropped.
    The backbone fingerprint stays; the content id changes with the bytes."""
    from pemn.bundle.reader import read_bundle

    header_dtype = _check_version(format_version, state_dtype)
    b = read_bundle(data, limits=limits)
    m = b.manifest
    doc = _manifest_doc(
        format_version,
        arch=m.arch.name,
        full=resolve_config(m.arch.name, **m.arch.config),
        strategy=b.strategy,
        prototype_digest=m.prototype_digest,
        embed_prototype=m.prototype_embedded,
        density=m.density,
        layout=b.layout,
        input_spec=m.input,
        labels=m.labels,
        metrics=m.metrics,
        provenance=m.provenance,
    )
    return _container(
        doc,
        np.asarray(b.masks),
        np.asarray(b.state, dtype=np.float32),
        header_dtype,
        b.layout,
        state_dtype is not None,
        None if b.prototype is None else np.asarray(b.prototype),
    )
