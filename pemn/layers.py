"""Layer discovery: which layers of a network are maskable, in which order, and the
shape of each one's weight.

The maskable layers are every ``nn.Conv2d`` and ``nn.Linear`` (and their masked
forms, subclasses of ``MaskedLayer``, defined in ``pemn.masking``), in module
order. The prototype (``pemn.prototype``), the masking (``pemn.masking``) and the
bundle format's layouts all take their layer list from here, so none of them
imports another for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerSpec", "MaskedLayer", "layer_specs", "maskable_layers"]


@dataclass(frozen=True)
class LayerSpec:
    """One maskable layer: its module name, weight shape and fan-in."""

    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def fan_in(self) -> int:
        # conv (out, in/groups, kh, kw) and linear (out, in) alike
        return math.prod(self.shape[1:])


class MaskedLayer(nn.Module):
    """Base of the masked forms of conv/linear layers (``pemn.masking``): the fixed
    weight is the buffer ``fixed_weight``; there is no trained ``weight``."""

    fixed_weight: torch.Tensor


def maskable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every conv and linear layer, in module order."""
    kinds = (nn.Conv2d, nn.Linear, MaskedLayer)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def layer_specs(model: nn.Module) -> list[LayerSpec]:
    """The ``LayerSpec`` of every maskable layer of ``model``, in module order."""
    out = []
    for name, module in maskable_layers(model):
        weight = module.fixed_weight if isinstance(module, MaskedLayer) else module.weight
        assert isinstance(weight, torch.Tensor)
        out.append(LayerSpec(name, tuple(weight.shape)))
    return out
