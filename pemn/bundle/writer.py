"""The deterministic bundle writer: the same inputs give the same bytes.

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
from pemn.bundle.spec import (
    FORMAT,
    FORMAT_VERSION,
    ArchLayout,
    InputSpec,
    Manifest,
    arch_layout,
    canonical_json,
)
from pemn.errors import InvalidParameterError
from pemn.prototype import GENERATOR, Strategy, digest, generate

__all__ = ["pack_mask", "safetensors_bytes", "write_bundle"]


def safetensors_bytes(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file: tensors ordered by (itemsize descending, name), header JSON
    with sorted keys and no whitespace, padded with spaces to a multiple of 8 bytes."""
    dtypes = {np.dtype(np.uint8): "U8", np.dtype("<f4"): "F32"}
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
            "dtype": dtypes[arr.dtype],
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
) -> bytes:
    """Serialize a trained masked network as a bundle (see docs/bundle-format.md).

    ``masks`` holds a bool mask per maskable layer (``pemn.masking.extract_masks``),
    ``trained`` the norm tensors (``pemn.masking.trained_state``). The prototype is
    regenerated to record its digest. Bad arguments raise ``InvalidParameterError``.
    """
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
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": {
            "name": arch,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()},
        },
        "strategy": {
            "name": strategy.name,
            "seed": strategy.seed,
            "ratio": strategy.ratio,
            "scale": strategy.scale,
        },
        "generator": GENERATOR,
        "prototype_digest": digest(fixed),
        "prototype_embedded": embed_prototype,
        "density": density,
        "layers": [{"name": s.name, "shape": list(s.shape)} for s in layout.layers],
        "trained": [e.model_dump() for e in layout.trained],
        "input": input_spec.model_dump(mode="json"),
        "labels": list(labels),
        "metrics": dict(metrics or {}),
        "provenance": dict(provenance or {}),
    }
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
    tensors: dict[str, np.ndarray] = {
        "masks": packed,
        "state": np.concatenate(flat_state).astype(np.float32)
        if flat_state
        else np.zeros(0, np.float32),
    }
    if embed_prototype:
        tensors["prototype"] = np.concatenate(
            [fixed[s.name].reshape(-1).numpy() for s in layout.layers]
        )
    return safetensors_bytes(tensors, {"format": FORMAT, "manifest": canonical_json(doc)})
