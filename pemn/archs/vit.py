"""A small ViT for 28-32 px images, in the "simple ViT" style (Beyer et al. 2022).

Patch embedding is a conv with kernel = stride = patch; positions are a fixed 2-D
sine-cosine table (derived, never stored); pre-norm blocks of multi-head attention
and an MLP; mean pooling; linear head. Every Linear and the patch conv are
maskable; LayerNorm affine parameters are the only other trained tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pemn.archs.registry import register
from pemn.errors import InvalidParameterError

__all__ = ["ViT"]


def _sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """(grid*grid, dim) table: dim/4 frequencies each for sin/cos of x and y."""
    y, x = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    omega = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float64) / max(dim // 4 - 1, 1)))
    yo = y.flatten()[:, None].double() * omega[None, :]
    xo = x.flatten()[:, None].double() * omega[None, :]
    return torch.cat([xo.sin(), xo.cos(), yo.sin(), yo.cos()], dim=1).float()


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, D)
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // self.heads))  # (B, H, T, T)
        out = att.softmax(dim=-1) @ v  # (B, H, T, D/H)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width, bias=False)
        self.fc2 = nn.Linear(mlp_ratio * width, width, bias=False)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        width: int,
        depth: int,
        heads: int,
        patch: int,
        mlp_ratio: int,
    ) -> None:
        super().__init__()
        grid = image_size // patch
        self.patch_embed = nn.Conv2d(in_channels, width, patch, stride=patch, bias=False)
        self.register_buffer("pos", _sincos_2d(grid, width), persistent=False)
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, T, width)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))  # (B, num_classes)


@register("vit")
def vit(
    *,
    in_channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    width: int = 256,
    depth: int = 6,
    heads: int = 8,
    patch: int = 4,
    mlp_ratio: int = 2,
) -> nn.Module:
    """ViT-depth/width with ``heads`` heads on ``patch`` x ``patch`` patches."""
    if width % heads or width % 4:
        raise InvalidParameterError("width", width, f"a multiple of heads ({heads}) and of 4")
    if image_size % patch:
        raise InvalidParameterError("patch", patch, f"a divisor of image_size ({image_size})")
    return ViT(in_channels, image_size, num_classes, width, depth, heads, patch, mlp_ratio)
