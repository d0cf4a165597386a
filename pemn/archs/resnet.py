"""CIFAR ResNet-20/32/56 (He et al. 2016, section 4.2): 16-32-64 channels, 3 stages.

Shortcuts are parameter-free "option A": stride-2 subsampling and zero-padded
channels, so the only maskable layers are the 3x3 convs and the head; this is what
gives ResNet-56 exactly N = 848,944 maskable weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pemn.archs.registry import register

__all__ = ["CifarResNet"]


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.subsample = stride != 1 or in_planes != planes
        self.stride = stride
        self.pad = (planes - in_planes) // 2

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.subsample:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))  # zero channels on both sides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(64, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            x = stage(x)
        return self.head(x.mean(dim=(2, 3)))  # (B, num_classes)


def _make(depth: int) -> None:
    n = (depth - 2) // 6

    def build(*, in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> nn.Module:
        return CifarResNet(in_channels, num_classes, n)

    build.__doc__ = f"CIFAR ResNet-{depth} ({n} basic blocks per stage, option-A shortcuts)."
    register(f"resnet{depth}")(build)


for _depth in (20, 32, 56):
    _make(_depth)
