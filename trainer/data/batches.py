"""Batches from an in-memory ``ImageSet``: seeded order, tensor-op augmentation,
normalisation. No DataLoader workers: on a 2-core machine they only cost time.

Every random choice is a pure function of ``(seed, epoch, step)``: the order of an
epoch comes from a generator seeded by ``(seed, epoch)`` and the augmentation of a
step from one seeded by ``(seed, epoch, step)``. A run resumed at any step boundary
therefore sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.data.datasets import ImageSet, derive_seed

__all__ = ["augment", "epoch_order", "steps_per_epoch", "train_batches"]


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation: random horizontal flips and random crops of the
    image zero-padded by ``crop_pad`` pixels on each side (0 = no crop)."""

    flip: bool = True
    crop_pad: int = 0


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch: all full batches plus the remainder when it has >= 2 examples
    (a 1-example batch breaks BatchNorm in training mode)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 else 0)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``range(n)`` used in ``epoch``."""
    g = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    return torch.randperm(n, generator=g)


def augment(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Augment a uint8 batch ``x`` (B, C, H, W); returns a new uint8 tensor."""
    b, c, h, w = x.shape
    if aug.flip:
        flip = torch.rand(b, generator=generator) < 0.5  # (B,)
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    if aug.crop_pad > 0:
        p = aug.crop_pad
        padded = F.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p), zeros
        oy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
        x = padded[torch.arange(b).view(b, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]
    return x


def train_batches(
    data: ImageSet, batch_size: int, seed: int, epoch: int, aug: Augment, start_step: int = 0
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(step in epoch, pixels (B, C, H, W) float in [0, 1], labels (B,))`` of
    ``epoch``, starting at ``start_step``; CPU tensors."""
    order = epoch_order(len(data), seed, epoch)
    for step in range(start_step, steps_per_epoch(len(data), batch_size)):
        idx = order[step * batch_size : (step + 1) * batch_size]
        g = torch.Generator().manual_seed(derive_seed(seed, "augment", epoch, step))
        x = augment(data.images[idx], aug, g)
        yield step, x.float().div_(255.0), data.labels[idx]
