"""ConvMixer (Trockman & Kolter), as used by PEMN: no biases, GELU then BatchNorm.

stem: conv(kernel = stride = patch) -> GELU -> BN
depth x [ residual(depthwise conv k, same padding -> GELU -> BN) -> 1x1 conv -> GELU -> BN ]
global average pool -> linear head
"""

from __future__ import annotations

import torch
from torch import nn

from pemn.archs.registry import register
from pemn.errors import InvalidParameterError

__all__ = ["ConvMixer"]


class _MixerBlock(nn.Module):
    def __init__(self, width: int, kernel: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(width, width, kernel, groups=width, padding="same", bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.pointwise = nn.Conv2d(width, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, width, H', W')
        x = x + self.bn1(self.act(self.depthwise(x)))
        return self.bn2(self.act(self.pointwise(x)))


class ConvMixer(nn.Module):
    def __init__(
        self, in_channels: int, num_classes: int, width: int, depth: int, kernel: int, patch: int
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, patch, stride=patch, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.act = nn.GELU()
        self.blocks = nn.ModuleList(_MixerBlock(width, kernel) for _ in range(depth))
        self.head = nn.Linear(width, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        x = self.stem_bn(self.act(self.stem(x)))  # (B, width, H/patch, W/patch)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))  # (B, num_classes)


@register("convmixer")
def convmixer(
    *,
    in_channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    width: int = 256,
    depth: int = 8,
    kernel: int = 5,
    patch: int = 2,
) -> nn.Module:
    """ConvMixer-width/depth; the paper's CIFAR models are 256 or 512 wide, 6 or 8 deep."""
    if patch > image_size:
        raise InvalidParameterError("patch", patch, f"an integer <= image_size ({image_size})")
    return ConvMixer(in_channels, num_classes, width, depth, kernel, patch)
