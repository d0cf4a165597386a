"""A multilayer perceptron: flatten -> [linear -> BN -> ReLU] x len(hidden) -> linear."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from pemn.archs.registry import register

__all__ = ["MLP"]


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        dims = (in_features, *hidden)
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(dims)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in hidden)
        self.head = nn.Linear(dims[-1], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        x = x.flatten(1)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = torch.relu(norm(layer(x)))
        return self.head(x)  # (B, num_classes)


@register("mlp")
def mlp(
    *,
    in_channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    hidden: tuple[int, ...] = (256, 256),
) -> nn.Module:
    """MLP on flattened pixels with the given hidden widths."""
    return MLP(in_channels * image_size * image_size, num_classes, tuple(hidden))
