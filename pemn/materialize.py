"""Bundle -> weights on a device over a shared backbone, and the networks that run them.

A ``Backbone`` holds the fixed weights of one fingerprint (architecture, config,
strategy, seed, generator) on one device, generated once on the CPU, checked
against the digest, then moved. Tasks live in two forms:

* ``PackedTask``: what stays resident for every task (the packed tier): its 1-bit
  masks and its folded norm state, about 1/30 of a dense copy.
* ``TaskWeights``: the task's tensors expanded on the device in the backbone's flat
  layout (the hot tier): every maskable weight ``fixed * mask`` and the norms.
  ``Backbone.materialize`` builds them with two tensor operations over the whole
  network (unpack the mask bits, multiply by the padded fixed weights) plus one
  copy of the state, into a preallocated buffer when given one.

The backbone owns one network (``pemn.multitask``) that runs any task's weights:
``forward`` for a batch of one task, ``forward_mixed`` for a batch whose samples
use different tasks (per-sample weights, one pass), ``forward_grouped`` for the
same as one pass per task. No module is built per task.

Flat layout of a task (float32): layer ``l``'s ``n_l`` weights at
``8 * mask_offset(l)`` (the byte offset of its packed mask times 8, so all masks
unpack in one call; the few padding values are zero), then the state values in
storage order, then the input mean and std per channel.

``materialize(bundle)`` and ``Backbone.module`` build an ordinary standalone
``nn.Module`` (for export, training tools and tests); the service never does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pemn import caches
from pemn.archs import create_model, resolve_config
from pemn.bundle import errors as E
from pemn.bundle.reader import Bundle, generated_digest, verify_prototype
from pemn.bundle.spec import (
    ArchLayout,
    InputSpec,
    arch_layout,
    canonical_json,
    fingerprint,
    mask_offsets,
    meta_model,
)
from pemn.caches import CACHES
from pemn.devices import resolve_device
from pemn.multitask import Slot, TaskContext, convert
from pemn.normalize import Normalize
from pemn.prototype import Strategy, digest, generate

__all__ = [
    "Backbone",
    "MixedMode",
    "PackedTask",
    "Task",
    "TaskWeights",
    "clear_caches",
    "materialize",
    "unpack_bits",
]

MixedMode = Literal["per_sample", "per_task"]


class _Net(nn.Module):
    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W) pixels -> (B, classes)
        return self.net(self.normalize(x))


_BIT_TABLE = torch.tensor([[(i >> j) & 1 for j in range(8)] for i in range(256)], dtype=torch.bool)
_SHIFTS = torch.arange(8, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (n,) -> bool (8n,), least significant bit first, on ``packed``'s device
    (numpy's ``unpackbits`` on the CPU, a 256-entry table lookup elsewhere)."""
    if packed.device.type == "cpu":
        bits = np.unpackbits(packed.contiguous().numpy(), bitorder="little")
        return torch.from_numpy(bits.view(np.bool_))
    return _unpack_by_table(packed)


def _unpack_by_table(packed: torch.Tensor) -> torch.Tensor:
    return _BIT_TABLE.to(packed.device).index_select(0, packed.int()).view(-1)


@dataclass(eq=False)
class PackedTask:
    """A task in packed form, resident on the CPU: masks (1 bit per weight, uint8)
    and ``tail`` (the folded norm state, then the input mean and std, float32)."""

    content_id: str
    fingerprint: str
    masks: np.ndarray = field(repr=False)  # uint8 (mask bytes,)
    tail: np.ndarray = field(repr=False)  # float32 (state values + 2 C,)
    input: InputSpec
    labels: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        return int(self.masks.nbytes + self.tail.nbytes)


@dataclass(eq=False)
class TaskWeights:
    """A task's tensors on the device in the backbone's flat layout."""

    content_id: str
    flat: torch.Tensor = field(repr=False)  # float32 (backbone.size,)
    slots: Sequence[Slot] = field(repr=False)

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()

    @cached_property
    def views(self) -> list[torch.Tensor]:
        return [s.view(self.flat) for s in self.slots]


@dataclass
class Task:
    """One bundle over a backbone as a standalone eval-mode module (tools, export)."""

    module: nn.Module
    fingerprint: str
    content_id: str
    labels: list[str]
    input: InputSpec
    nbytes: int  # bytes this task owns on the device (its weights and norms)
    device: torch.device
    weights: TaskWeights | None = None

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.device, torch.float32))


def _derived_buffers(arch: str, config_json: str) -> dict[str, torch.Tensor]:
    """Non-persistent buffers of ``arch(**config)`` (derived tables such as ViT
    positions), from one real CPU instance, built only for architectures that have
    them; kept in ``CACHES.cpu_parts``."""
    return CACHES.cpu_parts.get_or_make(
        (arch, config_json), lambda: _make_derived_buffers(arch, config_json)
    )


def _make_derived_buffers(arch: str, config_json: str) -> dict[str, torch.Tensor]:
    config = json.loads(config_json)
    meta = meta_model(arch, config)  # shared: only read here
    names = [
        f"{mn}.{leaf}" if mn else leaf
        for mn, m in meta.named_modules()
        for leaf in m._non_persistent_buffers_set
    ]
    if not names:
        return {}
    real = create_model(arch, **config)
    return {n: real.get_buffer(n) for n in names}


def clear_caches() -> None:
    """Drop the process-wide caches of the core (architecture layouts, derived
    buffers, prototype digests): ``pemn.caches.clear()``, for benchmarks of cold
    starts and for tests."""
    caches.clear()


def _norm_key(name: str) -> str:
    """State entry name -> the parameter it becomes in the standalone module."""
    module, _, leaf = name.rpartition(".")
    return f"{module}.{ {'scale': 'weight', 'shift': 'bias'}.get(leaf, leaf) }"


class Backbone:
    """Fixed weights of one fingerprint on one device, shared by every task on it,
    and the one network that runs any of those tasks.

    ``channels_last`` runs single-task batches of convolutional networks in
    channels-last memory format (the input is converted; PyTorch then keeps the
    whole network channels-last): faster on the CPU, equal to NCHW up to float
    rounding (about 1e-6 relative), so the default is NCHW."""

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
        offsets, mask_bytes = mask_offsets(self.layout.layers)
        self.mask_bytes = mask_bytes
        self._lw = 8 * mask_bytes  # the weights region of the flat layout
        slots = [
            Slot(f"{s.name}.weight", tuple(s.shape), 8 * off, self._strides(tuple(s.shape)))
            for s, off in zip(self.layout.layers, offsets, strict=True)
        ]
        pos = self._lw
        for e in self.layout.trained:
            slots.append(Slot(e.name, tuple(e.shape), pos))
            pos += e.numel
        channels = self.config["in_channels"]
        slots += [
            Slot("input.mean", (channels,), pos),
            Slot("input.std", (channels,), pos + channels),
        ]
        self.size = pos + 2 * channels
        self.slots: tuple[Slot, ...] = tuple(slots)
        fixed_flat = torch.zeros(self._lw)
        for s, slot in zip(self.layout.layers, slots, strict=False):
            fixed_flat[slot.offset : slot.offset + slot.numel] = cpu[s.name].reshape(-1)
        self._fixed_flat = fixed_flat.to(self.device)
        self._fixed_np = self._fixed_flat.numpy() if self.device.type == "cpu" else None
        self._shifts = _SHIFTS.to(self.device)
        self._ctx = TaskContext()
        self._net = self._build_net()
        self._banks: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def _strides(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """Channels-last strides for a kernel whose channels-last layout is its
        contiguous one (1x1, or one input channel): a free view that makes PyTorch
        run the convolution, and the rest of the network, channels-last."""
        if not self.channels_last or len(shape) != 4 or not (shape[1] == 1 or shape[2:] == (1, 1)):
            return None
        return tuple(torch.empty(shape, device="meta", memory_format=torch.channels_last).stride())

    def _build_net(self) -> nn.Module:
        """The backbone's one network: the architecture's module tree (built on the
        meta device) with its layers converted to read task weights, and the derived
        buffers (e.g. ViT positions) made real on the device."""
        tree = copy.deepcopy(meta_model(self.arch, self.config))  # convert() rewrites it
        index = {s.name: i for i, s in enumerate(self.slots)}
        net = convert(tree, index, index["input.mean"], index["input.std"], self._ctx)
        for name, buf in _derived_buffers(self.arch, canonical_json(self.config)).items():
            module, _, leaf = name.rpartition(".")
            net.get_submodule(f"net.{module}" if module else "net").register_buffer(
                leaf, buf.clone(), persistent=False
            )
        if any(b.is_meta for b in net.buffers()):
            raise ValueError(f"{self.arch}: a buffer of the network is neither a norm nor derived")
        return net.to(self.device)

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
    def weight_reuse(self) -> float:
        """How many times one sample's forward uses each maskable weight on average
        (``arch_weight_reuse``): computed when first asked, once per architecture."""
        return arch_weight_reuse(self.arch, self.config)

    @property
    def fixed(self) -> dict[str, torch.Tensor]:
        """Each maskable layer's fixed weights (views of the padded flat vector)."""
        return {
            s.name: self._fixed_flat[slot.offset : slot.offset + slot.numel].view(slot.shape)
            for s, slot in zip(self.layout.layers, self.slots, strict=False)
        }

    @property
    def nbytes(self) -> int:
        """Bytes the backbone holds on the device (its padded fixed weights)."""
        return self._fixed_flat.numel() * 4

    @property
    def task_nbytes(self) -> int:
        """Bytes of one task's ``TaskWeights`` on the device."""
        return self.size * 4

    # ---- tasks ------------------------------------------------------------------

    def pack(self, bundle: Bundle, *, verify: bool = True) -> PackedTask:
        """The packed form of ``bundle`` (copies of its masks and state: the bundle
        bytes can go). With ``verify`` its prototype digest must be this backbone's."""
        if bundle.fingerprint != self.fingerprint:
            raise E.ArchitectureMismatch(
                f"bundle needs backbone {bundle.fingerprint}, got {self.fingerprint}", "fingerprint"
            )
        if verify:
            verify_prototype(bundle, self.digest)
        m = bundle.manifest
        tail = np.concatenate(
            [
                np.asarray(bundle.state, dtype=np.float32),
                np.asarray(m.input.mean, np.float32),
                np.asarray(m.input.std, np.float32),
            ]
        )
        return PackedTask(
            bundle.content_id,
            self.fingerprint,
            np.array(bundle.masks, dtype=np.uint8),
            tail,
            m.input,
            tuple(m.labels),
        )

    def check(self, packed: PackedTask) -> None:
        """Raise ``ValueError`` unless ``packed`` is a task of this backbone (what
        ``materialize`` needs: the fingerprint and the sizes of its arrays)."""
        if packed.fingerprint != self.fingerprint:
            raise ValueError(f"task of backbone {packed.fingerprint} is not for {self.fingerprint}")
        if packed.masks.shape != (self.mask_bytes,) or packed.tail.shape != (self.size - self._lw,):
            raise ValueError(f"task {packed.content_id[:19]} does not have this backbone's layout")

    def empty_weights(self, content_id: str = "") -> TaskWeights:
        return TaskWeights(content_id, torch.empty(self.size, device=self.device), self.slots)

    def materialize(
        self, packed: PackedTask, out: TaskWeights | torch.Tensor | None = None
    ) -> TaskWeights:
        """``packed``'s weights on the device, written into ``out`` when given (a
        ``TaskWeights`` or a flat float32 tensor of ``size`` values)."""
        self.check(packed)
        if out is None:
            weights = self.empty_weights(packed.content_id)
        elif isinstance(out, TaskWeights):
            weights = out
            weights.content_id = packed.content_id
        else:
            weights = TaskWeights(packed.content_id, out, self.slots)
        flat, lw = weights.flat, self._lw
        if self._fixed_np is not None:  # CPU: numpy, without torch's per-call overheads
            arr = flat.numpy()
            unpacked = np.unpackbits(packed.masks, bitorder="little")  # uint8 (lw,)
            np.multiply(self._fixed_np, unpacked, out=arr[:lw])
            arr[lw:] = packed.tail
        else:
            on_device = torch.from_numpy(packed.masks).to(self.device, non_blocking=True)
            bits = (on_device[:, None] >> self._shifts) & 1  # (mask bytes, 8), LSB first
            torch.mul(self._fixed_flat.view(-1, 8), bits, out=flat[:lw].view(-1, 8))
            flat[lw:].copy_(torch.from_numpy(packed.tail), non_blocking=True)
        return weights

    # ---- running tasks ---------------------------------------------------------

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32, non_blocking=True)
        if self.channels_last and x.dim() == 4 and self._convolutional:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @cached_property
    def _convolutional(self) -> bool:
        return any(len(s.shape) == 4 for s in self.layout.layers)

    def forward(self, x: torch.Tensor, weights: TaskWeights) -> torch.Tensor:
        """Logits (B, classes) of one task on x: (B, C, H, W) pixels."""
        ctx = self._ctx
        ctx.views, ctx.bank = weights.views, None
        try:
            with torch.inference_mode():
                return self._net(self._input(x))
        finally:
            ctx.views = None

    def _bank(self, rows: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A (rows, size) buffer and its per-slot (rows, *shape) views, kept per size."""
        hit = self._banks.get(rows)
        if hit is None:
            if len(self._banks) >= 64:
                self._banks.clear()
            bank = torch.empty(rows, self.size, device=self.device)
            views = [
                bank[:, s.offset : s.offset + s.numel].view(rows, *s.shape) for s in self.slots
            ]
            hit = self._banks[rows] = (bank, views)
        return hit

    def forward_mixed(
        self, x: torch.Tensor, tasks: Sequence[TaskWeights | PackedTask]
    ) -> torch.Tensor:
        """Logits of a batch whose sample ``i`` uses ``tasks[i]``, in one pass with
        per-sample weights. Packed tasks are materialized straight into the batch's
        weight bank. The bank is reused: not safe for concurrent calls on one backbone."""
        if len(tasks) != len(x):
            raise ValueError(f"{len(x)} samples but {len(tasks)} tasks")
        bank, views = self._bank(len(x))
        if all(isinstance(t, TaskWeights) for t in tasks):  # one copy kernel for the batch
            torch.stack([t.flat for t in tasks], out=bank)  # type: ignore[union-attr]
        else:
            done: dict[int, int] = {}  # id(task) -> row already holding it
            for i, t in enumerate(tasks):
                row = done.get(id(t))
                if row is not None:
                    bank[i].copy_(bank[row])
                elif isinstance(t, PackedTask):
                    self.materialize(t, bank[i])
                else:
                    bank[i].copy_(t.flat)
                done.setdefault(id(t), i)
        ctx = self._ctx
        ctx.views, ctx.bank = None, views
        try:
            with torch.inference_mode():
                return self._net(x.to(self.device, torch.float32).contiguous())
        finally:
            ctx.bank = None

    def forward_grouped(
        self,
        x: torch.Tensor,
        tasks: Sequence[TaskWeights | PackedTask],
        scratch: TaskWeights | None = None,
    ) -> torch.Tensor:
        """The same as ``forward_mixed`` as one ``forward`` per distinct task (packed
        tasks materialized into ``scratch``, or a fresh buffer)."""
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(tasks):
            groups.setdefault(id(t), []).append(i)
        out: torch.Tensor | None = None
        for rows in groups.values():
            t = tasks[rows[0]]
            weights = self.materialize(t, scratch) if isinstance(t, PackedTask) else t
            part = x[rows[0] : rows[0] + 1] if len(rows) == 1 else x[rows]
            logits = self.forward(part, weights)
            if out is None:
                out = logits.new_empty(len(x), logits.shape[1])
            out[rows] = logits
        assert out is not None
        return out

    # ---- standalone modules ------------------------------------------------------

    def module(self, weights: TaskWeights, input_spec: InputSpec | None = None) -> nn.Module:
        """An ordinary eval-mode ``nn.Module`` holding ``weights`` (shared memory) as
        parameters named like the bundle's state-dict keys (``net.<layer>.weight``,
        BatchNorms with their folded values, mean 0, var 1, eps 0)."""
        views = weights.views
        net = copy.deepcopy(meta_model(self.arch, self.config))
        state: dict[str, torch.Tensor] = {}
        for slot, view in zip(self.slots, views, strict=True):
            if slot.name.startswith("input."):
                continue
            state[slot.name if slot.offset < self._lw else _norm_key(slot.name)] = view
        for name, (kind, _) in self.layout.norms.items():
            if kind == "batchnorm":
                bn = net.get_submodule(name)
                features = int(bn.num_features)  # type: ignore[arg-type]
                state[f"{name}.running_mean"] = torch.zeros(features, device=self.device)
                state[f"{name}.running_var"] = torch.ones(features, device=self.device)
                state[f"{name}.num_batches_tracked"] = torch.zeros(
                    (), dtype=torch.long, device=self.device
                )
                bn.eps = 0.0  # type: ignore[assignment]
        net.load_state_dict(state, strict=True, assign=True)
        for name, buf in _derived_buffers(self.arch, canonical_json(self.config)).items():
            module, _, leaf = name.rpartition(".")
            net.get_submodule(module).register_buffer(leaf, buf.to(self.device), persistent=False)
        mean = views[-2].tolist() if input_spec is None else input_spec.mean
        std = views[-1].tolist() if input_spec is None else input_spec.std
        normalize = Normalize(tuple(mean), tuple(std)).to(self.device)
        return _Net(normalize, net).eval().requires_grad_(False)

    def task(self, bundle: Bundle, *, verify: bool = True) -> Task:
        """Materialize ``bundle`` over this backbone as a standalone module. With
        ``verify`` the manifest's prototype digest must equal this backbone's."""
        packed = self.pack(bundle, verify=verify)
        weights = self.materialize(packed)
        m = bundle.manifest
        return Task(
            self.module(weights, m.input),
            self.fingerprint,
            bundle.content_id,
            list(m.labels),
            m.input,
            weights.nbytes,
            self.device,
            weights,
        )


def arch_weight_reuse(arch: str, config: Mapping[str, Any]) -> float:
    """How many times one sample's forward through ``arch(**config)`` uses each
    maskable weight on average: a layer's weights are used once per output position
    (pixels of a convolution, tokens of a linear layer). Worked out with a forward of
    one zero image through a real CPU instance (about as costly as building the
    backbone), so only when asked and once per architecture: kept in ``CACHES.reuse``.
    Not on the meta device: a process's first meta-device forward imports
    ``torch._dynamo`` (about 1.5 s), which every server would pay on its first request."""
    return CACHES.reuse.get_or_make(
        (arch, canonical_json(dict(config))), lambda: _weight_reuse(arch, config)
    )


def _weight_reuse(arch: str, config: Mapping[str, Any]) -> float:
    tree = create_model(arch, **config).eval()
    uses: list[tuple[int, int]] = []

    def hook(module: nn.Module, _: Any, out: torch.Tensor) -> None:
        weight: torch.Tensor = module.weight  # type: ignore[assignment]
        positions = out.numel() // out.shape[1 if isinstance(module, nn.Conv2d) else -1]
        uses.append((weight.numel(), positions))

    for m in tree.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            m.register_forward_hook(hook)
    with torch.inference_mode():
        tree(torch.zeros(1, config["in_channels"], config["image_size"], config["image_size"]))
    n = sum(w for w, _ in uses)
    return sum(w * p for w, p in uses) / n if n else 0.0


def materialize(
    bundle: Bundle, device: str | torch.device = "cpu", backbone: Backbone | None = None
) -> nn.Module:
    """An eval-mode module for ``bundle``: (B, C, H, W) pixels in the input range ->
    logits (B, classes). Pass ``backbone`` to reuse resident fixed weights."""
    if backbone is None:
        backbone = Backbone.for_bundle(bundle, device)
    return backbone.task(bundle).module
