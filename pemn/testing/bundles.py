"""Small valid bundles for the tests and the benchmarks.

``make_bundle(**overrides)`` builds a masked network whose masks and norm tensors
come from the documented generator (so the bytes depend only on our code and the
arguments), and returns the bundle bytes. Different ``mask_seed``/``metrics``
give different bytes over the same backbone; different ``seed``/``strategy``/
``config`` give a different backbone.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import torch
from torch import nn

from pemn.archs import create_model, resolve_config
from pemn.bundle import InputSpec, write_bundle
from pemn.bundle.bits import kept_count
from pemn.layers import layer_specs
from pemn.masking import trained_state
from pemn.prototype import Strategy, normal

__all__ = ["deterministic_masks", "edit_manifest", "make_bundle", "make_model_state"]


def deterministic_masks(
    model: nn.Module, density: float, mask_seed: int
) -> dict[str, torch.Tensor]:
    """Top-k masks of generator-drawn scores (stable sort: exact on every machine)."""
    out = {}
    for i, s in enumerate(layer_specs(model)):
        scores = np.abs(normal(mask_seed + 1_000_003, i, s.numel))
        keep = np.argsort(-scores, kind="stable")[: kept_count(s.numel, density)]
        m = np.zeros(s.numel, dtype=bool)
        m[keep] = True
        out[s.name] = torch.from_numpy(m.reshape(s.shape))
    return out


def make_model_state(model: nn.Module, mask_seed: int) -> dict[str, torch.Tensor]:
    """Plausible norm tensors drawn from the generator (running_var > 0)."""
    state = trained_state(model)
    out = {}
    for j, (k, v) in enumerate(sorted(state.items())):
        z = torch.from_numpy(normal(mask_seed + 7, j, v.numel()).astype(np.float32)).view(v.shape)
        if k.endswith("running_var"):
            z = 0.5 + z.abs()
        elif k.endswith("weight"):
            z = 1.0 + 0.1 * z
        else:
            z = 0.1 * z
        out[k] = z
    return out


def make_bundle(
    arch: str = "mlp",
    config: dict[str, Any] | None = None,
    strategy: Strategy | None = None,
    *,
    density: float = 0.5,
    mask_seed: int = 0,
    metrics: dict[str, Any] | None = None,
    labels: list[str] | None = None,
    embed_prototype: bool = False,
    **write_options: Any,  # format_version, state_dtype: passed to write_bundle
) -> bytes:
    """A valid bundle of ``arch`` (default: an MLP on 1x28x28) under ``strategy``
    (default: rp 1e-2, seed 0) whose masks and norm tensors derive from ``mask_seed``."""
    if config is None:
        config = {"in_channels": 1, "image_size": 28, "hidden": [64]} if arch == "mlp" else {}
    full = resolve_config(arch, **config)
    strategy = strategy or Strategy("rp", seed=0, ratio=1e-2)
    model = create_model(arch, **full)
    c = full["in_channels"]
    return write_bundle(
        arch=arch,
        config=config,
        strategy=strategy,
        density=density,
        masks=deterministic_masks(model, density, mask_seed),
        trained=make_model_state(model, mask_seed),
        input_spec=InputSpec(
            shape=(c, full["image_size"], full["image_size"]), mean=(0.5,) * c, std=(0.25,) * c
        ),
        labels=labels or [f"class-{i}" for i in range(full["num_classes"])],
        metrics={"test_accuracy": 0.5} if metrics is None else metrics,
        # the file's old path: the golden bundles' bytes (and sha256) include it
        provenance={"made_by": "tests/pemn/bundles.py", "mask_seed": mask_seed},
        embed_prototype=embed_prototype,
        **write_options,
    )


def edit_manifest(data: bytes, edit: Any) -> bytes:
    """The bundle with its manifest replaced by ``edit(manifest_dict)`` (the header
    length and padding are recomputed; tensor data is kept byte for byte)."""
    n = struct.unpack_from("<Q", data)[0]
    header = json.loads(data[8 : 8 + n])
    manifest = json.loads(header["__metadata__"]["manifest"])
    header["__metadata__"]["manifest"] = json.dumps(
        edit(manifest) or manifest, sort_keys=True, separators=(",", ":")
    )
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]
