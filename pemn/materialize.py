"""Bundle -> eval-mode network on a device, sharing one backbone across tasks.

A ``Backbone`` holds the fixed weights of one fingerprint (architecture, config,
strategy, seed, generator) on one device; they are generated once, on the CPU,
checked against the digest, then moved. A ``Task`` is one bundle applied to a
backbone: its packed masks are copied to the device and unpacked there, each
maskable weight becomes ``fixed * mask``, norms take the bundle's folded values,
and the result is an ordinary eval-mode module that takes pixels in the input
range and normalises them itself. Building a task allocates only that task's
weights; the backbone's fixed weights and constants are shared.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pemn.archs import create_model, resolve_config
from pemn.bundle import errors as E
from pemn.bundle.reader import Bundle, verify_prototype
from pemn.bundle.spec import ArchLayout, InputSpec, arch_layout, fingerprint, mask_offsets
from pemn.prototype import Strategy, digest, generate

__all__ = ["Backbone", "Normalize", "Task", "materialize", "resolve_device", "unpack_bits"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; otherwise ``torch.device(device)``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; x: (B, C, H, W)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _Net(nn.Module):
    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W) pixels -> (B, classes)
        return self.net(self.normalize(x))


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (n,) -> bool (8n,), least significant bit first, on ``packed``'s device."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(1) >> shifts) & 1).view(-1).bool()


@dataclass
class Task:
    """One bundle materialized over a backbone: an eval-mode module and its cost."""

    module: nn.Module
    fingerprint: str
    content_id: str
    labels: list[str]
    input: InputSpec
    nbytes: int  # bytes this task owns on the device (its masked weights and norms)
    device: torch.device

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.device, torch.float32))


class Backbone:
    """Fixed weights of one fingerprint on one device, shared by every task on it."""

    def __init__(
        self,
        arch: str,
        config: Mapping[str, Any],
        strategy: Strategy,
        device: str | torch.device = "cpu",
        prototype: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.arch = arch
        self.config = resolve_config(arch, **config)
        self.strategy = strategy
        self.device = resolve_device(device)
        self.fingerprint = fingerprint(arch, self.config, strategy)
        self.layout: ArchLayout = arch_layout(arch, self.config)
        cpu = dict(prototype) if prototype is not None else generate(self.layout.layers, strategy)
        self.digest = digest(cpu)
        self.fixed = {k: v.to(self.device) for k, v in cpu.items()}
        self._offsets, _ = mask_offsets(self.layout.layers)
        with torch.device("meta"):
            self._template = create_model(arch, **self.config).eval()
        # norms are stored folded (see bundle spec): BatchNorm runs with mean 0, var 1, eps 0
        for name, (kind, _) in self.layout.norms.items():
            if kind == "batchnorm":
                self._template.get_submodule(name).eps = 0.0  # type: ignore[assignment]
        self._constants = self._build_constants()

    @classmethod
    def for_bundle(cls, bundle: Bundle, device: str | torch.device = "cpu") -> Backbone:
        """The backbone ``bundle`` needs (its embedded prototype when it has one)."""
        m = bundle.manifest
        proto = None
        if bundle.prototype is not None:
            proto, pos = {}, 0
            for s in bundle.layout.layers:
                proto[s.name] = torch.from_numpy(
                    bundle.prototype[pos : pos + s.numel].copy().reshape(s.shape)
                )
                pos += s.numel
        return cls(m.arch.name, m.arch.config, bundle.strategy, device, proto)

    @property
    def nbytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in self.fixed.values())

    def _build_constants(self) -> dict[str, torch.Tensor]:
        """Buffers every task shares: BatchNorm statistics (0 and 1 after folding),
        counters, and derived tables (e.g. ViT positions), computed once on a real
        CPU instance and moved to the device."""
        state_keys = set(self._template.state_dict())
        real = create_model(self.arch, **self.config)
        out: dict[str, torch.Tensor] = {}
        for name, buf in real.named_buffers():
            module_name, _, leaf = name.rpartition(".")
            if module_name in self.layout.norms and leaf == "running_mean":
                buf = torch.zeros_like(buf)
            elif module_name in self.layout.norms and leaf == "running_var":
                buf = torch.ones_like(buf)
            elif name in state_keys and leaf != "num_batches_tracked":
                continue
            out[name] = buf.to(self.device)
        return out

    def task(self, bundle: Bundle, *, verify: bool = True) -> Task:
        """Materialize ``bundle`` over this backbone. With ``verify`` the manifest's
        prototype digest must equal this backbone's."""
        if bundle.fingerprint != self.fingerprint:
            raise ValueError(
                f"bundle backbone {bundle.fingerprint} is not this backbone {self.fingerprint}"
            )
        if verify:
            verify_prototype(bundle, self.digest)
        packed = torch.from_numpy(np.array(bundle.masks)).to(self.device, non_blocking=True)
        bits = unpack_bits(packed)
        weights: dict[str, torch.Tensor] = {}
        for s, off in zip(self.layout.layers, self._offsets, strict=True):
            mask = bits[8 * off : 8 * off + s.numel].view(s.shape)
            weights[f"{s.name}.weight"] = self.fixed[s.name] * mask
        state = torch.from_numpy(np.array(bundle.state)).to(self.device)
        pos = 0
        for e in self.layout.trained:
            module_name, _, leaf = e.name.rpartition(".")
            key = {"scale": "weight", "shift": "bias"}.get(leaf, leaf)
            weights[f"{module_name}.{key}"] = state[pos : pos + e.numel].view(e.shape)
            pos += e.numel
        net = copy.deepcopy(self._template)
        net.load_state_dict({**weights, **self._persistent_constants()}, strict=True, assign=True)
        for name, buf in self._constants.items():
            module_name, _, leaf = name.rpartition(".")
            (net.get_submodule(module_name) if module_name else net)._buffers[leaf] = buf
        m = bundle.manifest
        normalize = Normalize(m.input.mean, m.input.std).to(self.device)
        module = _Net(normalize, net).eval().requires_grad_(False)
        own = sum(w.numel() * w.element_size() for w in weights.values())
        return Task(
            module, self.fingerprint, bundle.content_id, list(m.labels), m.input, own, self.device
        )

    def _persistent_constants(self) -> dict[str, torch.Tensor]:
        keys = set(self._template.state_dict())
        return {k: v for k, v in self._constants.items() if k in keys}


def materialize(
    bundle: Bundle, device: str | torch.device = "cpu", backbone: Backbone | None = None
) -> nn.Module:
    """An eval-mode module for ``bundle``: (B, C, H, W) pixels in the input range ->
    logits (B, classes). Pass ``backbone`` to reuse resident fixed weights."""
    if backbone is None:
        backbone = Backbone.for_bundle(bundle, device)
    elif backbone.fingerprint != bundle.fingerprint:
        raise E.ArchitectureMismatch(
            f"bundle needs backbone {bundle.fingerprint}, got {backbone.fingerprint}", "fingerprint"
        )
    return backbone.task(bundle).module
