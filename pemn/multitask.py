"""One network per backbone that runs any task's weights: a single task, or a batch
whose samples each use a different task (per-sample weights).

The module tree of the architecture is built once per backbone; its maskable
layers and norms are replaced by the layers below, which hold no weights of their
own. Before a forward the caller binds the weights to use in ``TaskContext`` (a
thread-local, so several threads can run one backbone at once):

* ``views``: one tensor per slot (see ``Slot``) of a single task; every layer
  computes exactly as the PyTorch layer it replaces (same kernels).
* ``bank``: one tensor per slot with a leading sample axis, (B, *slot shape), for
  a batch that mixes tasks. Each layer computes every sample with its own weights:
  1x1 convolutions and linear layers as batched matrix products (``bmm``),
  depthwise convolutions as one depthwise convolution over B x C channels, other
  convolutions as a grouped convolution with B groups, norms as a per-sample
  scale and shift. The rest of the network (activations, residuals, pooling,
  attention, option-A shortcuts) is per sample already.

Everything here is plain ``torch`` on whatever device the tensors live on.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Slot", "TaskContext", "convert"]


@dataclass(frozen=True)
class Slot:
    """One tensor of a task in the backbone's flat layout: ``flat[offset:offset+numel]``
    viewed as ``shape`` (with ``strides`` when given: the same memory seen with
    other strides, e.g. channels-last strides of a 1x1 or one-input-channel kernel)."""

    name: str
    shape: tuple[int, ...]
    offset: int
    strides: tuple[int, ...] | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def view(self, flat: torch.Tensor) -> torch.Tensor:
        if self.strides is None:
            return flat[self.offset : self.offset + self.numel].view(self.shape)
        return flat.as_strided(self.shape, self.strides, flat.storage_offset() + self.offset)


class TaskContext(threading.local):
    """The weights the converted layers read in the current thread."""

    views: list[torch.Tensor] | None = None
    bank: list[torch.Tensor] | None = None  # per-sample: (B, *shape) per slot


class _TaskLayer(nn.Module):
    def __init__(self, ctx: TaskContext, slots: tuple[int, ...]) -> None:
        super().__init__()
        self._ctx = ctx
        self._slots = slots

    def _weights(self) -> tuple[list[torch.Tensor], bool]:
        ctx = self._ctx
        if ctx.bank is not None:
            return [ctx.bank[i] for i in self._slots], True
        if ctx.views is None:
            raise RuntimeError("no task weights are bound to this backbone's network")
        return [ctx.views[i] for i in self._slots], False


class _Conv2d(_TaskLayer):
    def __init__(self, ctx: TaskContext, slot: int, conv: nn.Conv2d) -> None:
        super().__init__(ctx, (slot,))
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.out_channels, self.in_channels = conv.out_channels, conv.in_channels
        k = conv.kernel_size
        self.pointwise = (
            k == (1, 1) and self.stride == (1, 1) and conv.groups == 1 and _no_pad(conv.padding)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (w,), per_sample = self._weights()
        if not per_sample:
            return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)
        b, c, h, wd = x.shape  # w: (B, out, in/groups, kh, kw)
        if self.pointwise:  # (B, out, in) @ (B, in, h*w)
            y = torch.bmm(w.reshape(b, self.out_channels, c), x.reshape(b, c, h * wd))
            return y.view(b, self.out_channels, h, wd)
        groups = b * self.groups
        y = F.conv2d(
            x.reshape(1, b * c, h, wd),
            w.reshape(b * self.out_channels, *w.shape[2:]),
            None,
            self.stride,
            self.padding,
            self.dilation,
            groups,
        )
        return y.view(b, self.out_channels, *y.shape[2:])


class _Linear(_TaskLayer):
    def __init__(self, ctx: TaskContext, slot: int) -> None:
        super().__init__(ctx, (slot,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (w,), per_sample = self._weights()
        if not per_sample:
            return F.linear(x, w)
        b = x.shape[0]  # w: (B, out, in); x: (B, ..., in)
        y = torch.bmm(x.reshape(b, -1, x.shape[-1]), w.transpose(1, 2))
        return y.view(*x.shape[:-1], w.shape[1])


def _per_channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B, C) -> (B, C, 1, ...) broadcasting over the trailing dims of an ndim input."""
    return t.view(*t.shape, *([1] * (ndim - 2)))


class _BatchNorm(_TaskLayer):
    """A BatchNorm stored folded: ``x * scale + shift`` per channel (eval mode)."""

    _zeros: torch.Tensor
    _ones: torch.Tensor

    def __init__(self, ctx: TaskContext, scale: int, shift: int, features: int) -> None:
        super().__init__(ctx, (scale, shift))
        self.register_buffer("_zeros", torch.zeros(features), persistent=False)
        self.register_buffer("_ones", torch.ones(features), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (scale, shift), per_sample = self._weights()
        if not per_sample:  # the kernel of the trained network: mean 0, var 1, eps 0
            return F.batch_norm(x, self._zeros, self._ones, scale, shift, False, 0.0, 0.0)
        return torch.addcmul(_per_channel(shift, x.dim()), x, _per_channel(scale, x.dim()))


class _LayerNorm(_TaskLayer):
    def __init__(self, ctx: TaskContext, weight: int, bias: int, norm: nn.LayerNorm) -> None:
        super().__init__(ctx, (weight, bias))
        self.shape = tuple(norm.normalized_shape)
        self.eps = norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (w, b), per_sample = self._weights()
        if not per_sample:
            return F.layer_norm(x, self.shape, w, b, self.eps)
        y = F.layer_norm(x, self.shape, None, None, self.eps)
        lead = [1] * (x.dim() - 1 - len(self.shape))  # w, b: (B, *shape)
        return torch.addcmul(
            b.view(b.shape[0], *lead, *self.shape), y, w.view(w.shape[0], *lead, *self.shape)
        )


class _Normalize(_TaskLayer):
    """The task's input normalisation ``(x - mean) / std`` per channel; x: (B, C, H, W)."""

    def __init__(self, ctx: TaskContext, mean: int, std: int) -> None:
        super().__init__(ctx, (mean, std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (mean, std), per_sample = self._weights()
        if per_sample:
            return (x - mean[:, :, None, None]) / std[:, :, None, None]
        return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


class _Net(nn.Module):
    def __init__(self, normalize: _Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) pixels -> (B, classes)
        return self.net(self.normalize(x))


def _no_pad(padding: Any) -> bool:
    return padding == "valid" or (not isinstance(padding, str) and not any(padding))


def convert(
    net: nn.Module, slot_of: dict[str, int], mean: int, std: int, ctx: TaskContext
) -> nn.Module:
    """Replace, in place, every Conv2d / Linear / BatchNorm / LayerNorm of ``net``
    (built on any device, e.g. meta) by a layer that reads its tensors from ``ctx``;
    ``slot_of`` maps state-dict keys (``<layer>.weight``, ``<bn>.scale``/``.shift``,
    ``<ln>.weight``/``.bias``) to slot indices. Returns the network with the input
    normalisation in front. Raises ``ValueError`` for a module it cannot convert."""
    paths = {id(m): n for n, m in net.named_modules()}
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            path = paths[id(child)]
            new: nn.Module | None = None
            if isinstance(child, nn.Conv2d):
                if child.bias is not None or child.padding_mode != "zeros":
                    raise ValueError(f"{path}: only bias-free, zero-padded convolutions")
                new = _Conv2d(ctx, slot_of[f"{path}.weight"], child)
            elif isinstance(child, nn.Linear):
                if child.bias is not None:
                    raise ValueError(f"{path}: only bias-free linear layers")
                new = _Linear(ctx, slot_of[f"{path}.weight"])
            elif isinstance(child, nn.modules.batchnorm._BatchNorm):
                new = _BatchNorm(
                    ctx, slot_of[f"{path}.scale"], slot_of[f"{path}.shift"], child.num_features
                )
            elif isinstance(child, nn.LayerNorm):
                new = _LayerNorm(ctx, slot_of[f"{path}.weight"], slot_of[f"{path}.bias"], child)
            if new is not None:
                setattr(parent, child_name, new)
    leftover = [n for n, _ in net.named_parameters()]
    if leftover:
        raise ValueError(f"cannot serve parameters of unknown layers: {', '.join(leftover[:5])}")
    return _Net(_Normalize(ctx, mean, std), net).eval().requires_grad_(False)
