"""Edge-popup mask learning: score-based masked conv/linear layers, mask extraction,
and applying binary masks to fixed weights.

Training: every maskable layer keeps its fixed weight ``W`` (a buffer, never
trained) and a trainable score tensor ``S`` of the same shape. The forward pass
keeps the top ``kept(n, density)`` entries of ``|S|`` and computes with ``W * M``;
the backward pass is straight-through: the gradient w.r.t. ``M`` flows to ``|S|``
unchanged (and through ``abs`` to ``S``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pemn.bundle.bits import check_density, kept_count
from pemn.errors import InvalidParameterError
from pemn.layers import MaskedLayer, maskable_layers

__all__ = [
    "MaskedConv2d",
    "MaskedLinear",
    "apply_masks",
    "extract_masks",
    "to_masked",
    "topk_mask",
    "trained_state",
]


def topk_mask(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """Float {0, 1} mask of ``scores``' shape with ones at the ``kept`` largest |scores|
    (exactly ``kept`` ones; ties broken by ``torch.topk``)."""
    flat = scores.detach().abs().flatten()
    mask = torch.zeros_like(flat)
    mask[flat.topk(kept, sorted=False).indices] = 1.0
    return mask.view_as(scores)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, abs_scores: torch.Tensor, kept: int) -> torch.Tensor:
        return topk_mask(abs_scores, kept)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _strides_of(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` with ``ref``'s strides where the two differ only on size-1 dimensions
    (the same memory layout, so a free view). An elementwise product gives a
    channels-last weight of shape (C, 1, k, k) or (C, C, 1, 1) NCHW strides; the
    convolution reads the weight's strides to choose its memory format, and with
    them it would run the whole network NCHW: 1.4x slower per training step on the
    CPU than channels-last."""
    if t.stride() == ref.stride():
        return t
    if all(a == b or n == 1 for a, b, n in zip(t.stride(), ref.stride(), t.shape, strict=True)):
        return t.as_strided(t.shape, ref.stride())
    return t


class _Masked(MaskedLayer):
    """What the masked conv and linear layers share: fixed weight, scores, top-k."""

    scores: nn.Parameter
    density: float

    def _init_masked(
        self, fixed: torch.Tensor, density: float, generator: torch.Generator | None
    ) -> None:
        self.density = check_density(density)
        self.register_buffer("fixed_weight", fixed.detach().clone())
        fan_in = math.prod(fixed.shape[1:])
        bound = 1.0 / math.sqrt(fan_in)  # PyTorch's default init range for the layer
        scores = torch.empty(fixed.shape, dtype=torch.float32)
        scores.uniform_(-bound, bound, generator=generator)
        self.scores = nn.Parameter(scores.to(fixed.device))

    @property
    def kept(self) -> int:
        return kept_count(self.fixed_weight.numel(), self.density)

    def mask(self) -> torch.Tensor:
        """The current binary mask (bool), as used by the forward pass."""
        return topk_mask(self.scores, self.kept).bool()

    def masked_weight(self) -> torch.Tensor:
        w = self.fixed_weight * _StraightThrough.apply(self.scores.abs(), self.kept)
        return _strides_of(w, self.fixed_weight)


class MaskedConv2d(_Masked):
    """A bias-free ``nn.Conv2d`` whose weight is ``fixed_weight * topk(|scores|)``."""

    def __init__(
        self,
        conv: nn.Conv2d,
        fixed: torch.Tensor,
        density: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = (
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        )
        self._init_masked(fixed, density, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x, self.masked_weight(), None, self.stride, self.padding, self.dilation, self.groups
        )


class MaskedLinear(_Masked):
    """A bias-free ``nn.Linear`` whose weight is ``fixed_weight * topk(|scores|)``."""

    def __init__(
        self,
        linear: nn.Linear,
        fixed: torch.Tensor,
        density: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self._init_masked(fixed, density, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight())


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _plain_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def to_masked(
    model: nn.Module,
    fixed: Mapping[str, torch.Tensor],
    density: float = 0.5,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Replace, in place, every conv/linear layer of ``model`` by its masked form over
    ``fixed[name]``. Scores are drawn from ``generator`` in layer order. Returns ``model``."""
    check_density(density)
    for name, module in _plain_layers(model):
        if module.bias is not None:
            raise InvalidParameterError(f"{name}.bias", "present", "no bias on maskable layers")
        w = fixed[name]
        if tuple(w.shape) != tuple(module.weight.shape):
            raise InvalidParameterError(
                f"fixed[{name}].shape", tuple(w.shape), str(tuple(module.weight.shape))
            )
        w = w.to(module.weight.device)
        masked: nn.Module
        if isinstance(module, nn.Conv2d):
            masked = MaskedConv2d(module, w, density, generator)
        else:
            masked = MaskedLinear(module, w, density, generator)
        _replace(model, name, masked)
    return model


def extract_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer name: bool mask}`` of every masked layer of a trained model."""
    return {
        name: module.mask()
        for name, module in maskable_layers(model)
        if isinstance(module, MaskedConv2d | MaskedLinear)
    }


@torch.no_grad()
def apply_masks(
    model: nn.Module, fixed: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> nn.Module:
    """Set every plain conv/linear weight of ``model`` to ``fixed * mask``, in place."""
    for name, module in _plain_layers(model):
        w = fixed[name].to(module.weight.device)
        m = masks[name].to(module.weight.device)
        if w.shape != module.weight.shape or m.shape != module.weight.shape:
            raise InvalidParameterError(
                f"{name} weight/mask shape",
                (tuple(w.shape), tuple(m.shape)),
                str(tuple(module.weight.shape)),
            )
        module.weight.copy_(w * m)
    return model


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors a bundle stores besides the masks: every floating-point
    entry of ``model.state_dict()`` except maskable weights, fixed weights and scores
    (BatchNorm weight/bias/running_mean/running_var, LayerNorm weight/bias).
    Works on the plain and the masked form of an architecture alike."""
    skip = {
        f"{name}.{leaf}"
        for name, _ in maskable_layers(model)
        for leaf in ("weight", "fixed_weight", "scores")
    }
    return {
        k: v.detach().cpu()
        for k, v in model.state_dict().items()
        if k not in skip and v.is_floating_point()
    }
