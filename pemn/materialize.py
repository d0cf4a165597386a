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

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pemn.archs import create_model, resolve_config
from pemn.bundle import errors as E
from pemn.bundle.reader import Bundle, forget_digests, generated_digest, verify_prototype
from pemn.bundle.spec import (
    ArchLayout,
    InputSpec,
    arch_layout,
    canonical_json,
    clear_layout_cache,
    fingerprint,
    mask_offsets,
    meta_model,
)
from pemn.prototype import Strategy, digest, generate

__all__ = [
    "Backbone",
    "Normalize",
    "Task",
    "clear_caches",
    "materialize",
    "resolve_device",
    "unpack_bits",
]

_NORM_LEAF = {"scale": "weight", "shift": "bias"}  # folded BatchNorm -> module parameter


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


_BIT_TABLE = torch.tensor([[(i >> j) & 1 for j in range(8)] for i in range(256)], dtype=torch.bool)


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (n,) -> bool (8n,), least significant bit first, on ``packed``'s device
    (numpy's ``unpackbits`` on the CPU, a 256-entry table lookup elsewhere)."""
    if packed.device.type == "cpu":
        bits = np.unpackbits(packed.contiguous().numpy(), bitorder="little")
        return torch.from_numpy(bits.view(np.bool_))
    return _unpack_by_table(packed)


def _unpack_by_table(packed: torch.Tensor) -> torch.Tensor:
    return _BIT_TABLE.to(packed.device).index_select(0, packed.int()).view(-1)


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


_CONTAINERS = (dict, set, list)


def _clone_structure(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s tree that shares tensors and immutable attributes but
    has its own containers (parameters, buffers, submodules, hooks, sets), so that
    assigning a tensor to the copy never touches ``module``. Much cheaper than
    ``copy.deepcopy`` of a module, which copies every attribute through the
    generic deepcopy machinery."""
    new = module.__class__.__new__(module.__class__)
    state = module.__dict__.copy()
    for key, value in state.items():
        if isinstance(value, _CONTAINERS):
            state[key] = value.copy()
    state["_modules"] = {
        k: None if m is None else _clone_structure(m) for k, m in module._modules.items()
    }
    new.__dict__.update(state)
    return new


@functools.lru_cache(maxsize=16)
def _cpu_parts(arch: str, config_json: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Per (architecture, config), built once: the eval-mode module tree on the meta
    device with folded BatchNorms (eps 0), and the CPU buffers every task of every
    backbone shares: BatchNorm statistics (0 and 1 after folding) and counters, made
    from their shapes, and derived tables such as ViT positions, taken from one real
    instance (built only for architectures that have such buffers)."""
    config = json.loads(config_json)
    layout = arch_layout(arch, config)
    template = _clone_structure(meta_model(arch, config)).eval()
    constants: dict[str, torch.Tensor] = {}
    real: nn.Module | None = None
    for module_name, module in template.named_modules():
        for leaf, buf in module._buffers.items():
            if buf is None:
                continue
            name = f"{module_name}.{leaf}" if module_name else leaf
            kind = layout.norms.get(module_name, (None, 0.0))[0]
            if kind == "batchnorm" and leaf in ("running_mean", "running_var"):
                fill = 0.0 if leaf == "running_mean" else 1.0
                constants[name] = torch.full(buf.shape, fill, dtype=buf.dtype)
            elif kind == "batchnorm" and leaf == "num_batches_tracked":
                constants[name] = torch.zeros(buf.shape, dtype=buf.dtype)
            elif leaf in module._non_persistent_buffers_set:  # derived: compute it for real
                if real is None:
                    real = create_model(arch, **config)
                constants[name] = real.get_buffer(name)
    # norms are stored folded (see bundle spec): BatchNorm runs with mean 0, var 1, eps 0
    for name, (kind, _) in layout.norms.items():
        if kind == "batchnorm":
            template.get_submodule(name).eps = 0.0  # type: ignore[assignment]
    return template, constants


def clear_caches() -> None:
    """Drop the process-wide caches of architecture layouts, module templates and
    prototype digests (for benchmarks of cold starts and for tests)."""
    _cpu_parts.cache_clear()
    clear_layout_cache()
    forget_digests()


def _to_device(
    tensors: Mapping[str, torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    """``tensors`` on ``device``, keeping shared memory shared: each underlying storage
    is moved once and the tensors are re-made as views of it (mp and rp layers are
    prefixes of one vector, one_layer layers repeat)."""
    moved: dict[int, torch.Tensor] = {}
    out = {}
    for name, t in tensors.items():
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in moved:
            flat = torch.empty(0, dtype=t.dtype).set_(
                storage, 0, (storage.nbytes() // t.element_size(),), (1,)
            )
            moved[key] = flat.to(device)
        out[name] = moved[key].as_strided(t.shape, t.stride(), t.storage_offset())
    return out


class Backbone:
    """Fixed weights of one fingerprint on one device, shared by every task on it.

    With ``channels_last=True`` tasks get their convolution weights in channels-last
    memory format and PyTorch runs the whole network channels-last: 1.1x to 1.2x
    faster than NCHW on the CPU for ConvMixer and ResNet (the service's default);
    outputs then differ from the NCHW network by float rounding (about 1e-6
    relative), so the default is NCHW, which reproduces the trained network exactly."""

    def __init__(
        self,
        arch: str,
        config: Mapping[str, Any],
        strategy: Strategy,
        device: str | torch.device = "cpu",
        prototype: Mapping[str, torch.Tensor] | None = None,
        *,
        channels_last: bool = False,
    ) -> None:
        self.arch = arch
        self.channels_last = channels_last
        self.config = resolve_config(arch, **config)
        self.strategy = strategy
        self.device = resolve_device(device)
        self.fingerprint = fingerprint(arch, self.config, strategy)
        self.layout: ArchLayout = arch_layout(arch, self.config)
        if prototype is not None:
            cpu = dict(prototype)
            self.digest = digest(cpu)
        else:
            cpu = generate(self.layout.layers, strategy)
            # the generator's output is a function of the fingerprint: hash it once per process
            self.digest = generated_digest(self.fingerprint, lambda: cpu)
        self.fixed = _to_device(cpu, self.device)
        self._offsets, _ = mask_offsets(self.layout.layers)
        template, constants = _cpu_parts(arch, canonical_json(self.config))
        self._template = template
        self._constants = {k: v.to(self.device) for k, v in constants.items()}
        # where each tensor of a task goes: (module path, leaf, source)
        params = {n for n, _ in template.named_parameters()}
        buffers = {n for n, _ in template.named_buffers()}
        weight_keys = {f"{s.name}.weight" for s in self.layout.layers}
        norm_keys = {
            f"{e.name.rpartition('.')[0]}.{_NORM_LEAF.get(e.name.rpartition('.')[2], e.name.rpartition('.')[2])}"
            for e in self.layout.trained
        }
        if params != weight_keys | norm_keys or buffers != set(self._constants):
            raise RuntimeError(f"{arch}: the bundle layout does not cover the module's tensors")

    @classmethod
    def for_bundle(
        cls,
        bundle: Bundle,
        device: str | torch.device = "cpu",
        *,
        use_embedded: bool = False,
        channels_last: bool = False,
    ) -> Backbone:
        """The backbone ``bundle`` needs, generated from its seed.

        A backbone is shared by every task with the same fingerprint, and the
        fingerprint names the generator's output. An embedded prototype is checked
        only against its own bundle's digest, so a hostile bundle could embed other
        values under a genuine fingerprint; it is therefore used only when the caller
        trusts the file (``use_embedded=True``, e.g. an offline tool)."""
        m = bundle.manifest
        proto = None
        if use_embedded and bundle.prototype is not None:
            proto, pos = {}, 0
            for s in bundle.layout.layers:
                proto[s.name] = torch.from_numpy(
                    bundle.prototype[pos : pos + s.numel].copy().reshape(s.shape)
                )
                pos += s.numel
        return cls(
            m.arch.name, m.arch.config, bundle.strategy, device, proto, channels_last=channels_last
        )

    @property
    def nbytes(self) -> int:
        """Bytes of fixed weights on the device (layers that share memory count once)."""
        storages = {
            w.untyped_storage().data_ptr(): w.untyped_storage().nbytes()
            for w in self.fixed.values()
        }
        return sum(storages.values())

    def weights(self, bundle: Bundle) -> dict[str, torch.Tensor]:
        """The task's own tensors by state-dict key: every maskable weight as
        ``fixed * mask`` and the norms' values (views of one state tensor)."""
        packed = torch.from_numpy(np.array(bundle.masks)).to(self.device, non_blocking=True)
        bits = unpack_bits(packed)
        weights: dict[str, torch.Tensor] = {}
        for s, off in zip(self.layout.layers, self._offsets, strict=True):
            mask = bits[8 * off : 8 * off + s.numel].view(s.shape)
            fixed = self.fixed[s.name]
            if fixed.dim() == 4 and self.channels_last:
                w = torch.empty(
                    s.shape,
                    dtype=fixed.dtype,
                    device=fixed.device,
                    memory_format=torch.channels_last,
                )
                weights[f"{s.name}.weight"] = torch.mul(fixed, mask, out=w)
            else:
                weights[f"{s.name}.weight"] = fixed * mask
        state = torch.from_numpy(np.array(bundle.state)).to(self.device)
        pos = 0
        for e in self.layout.trained:
            module_name, _, leaf = e.name.rpartition(".")
            weights[f"{module_name}.{_NORM_LEAF.get(leaf, leaf)}"] = state[
                pos : pos + e.numel
            ].view(e.shape)
            pos += e.numel
        return weights

    def module(self, weights: Mapping[str, torch.Tensor]) -> nn.Module:
        """An eval-mode network: a copy of the template's structure holding
        ``weights`` as frozen parameters and the backbone's shared buffers."""
        net = _clone_structure(self._template)
        modules = dict(net.named_modules())
        for key, tensor in weights.items():
            module_name, _, leaf = key.rpartition(".")
            modules[module_name]._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
        for key, buf in self._constants.items():
            module_name, _, leaf = key.rpartition(".")
            modules[module_name]._buffers[leaf] = buf
        return net

    def task(self, bundle: Bundle, *, verify: bool = True) -> Task:
        """Materialize ``bundle`` over this backbone. With ``verify`` the manifest's
        prototype digest must equal this backbone's."""
        if bundle.fingerprint != self.fingerprint:
            raise ValueError(
                f"bundle backbone {bundle.fingerprint} is not this backbone {self.fingerprint}"
            )
        if verify:
            verify_prototype(bundle, self.digest)
        weights = self.weights(bundle)
        net = self.module(weights)
        m = bundle.manifest
        normalize = Normalize(m.input.mean, m.input.std).to(self.device)
        module = _Net(normalize, net).eval().requires_grad_(False)
        own = sum(w.numel() * w.element_size() for w in weights.values())
        return Task(
            module, self.fingerprint, bundle.content_id, list(m.labels), m.input, own, self.device
        )


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
