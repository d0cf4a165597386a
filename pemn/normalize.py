"""Input normalisation: ``(x - mean) / std`` per channel on pixels in [0, 1].

One module for the trainer (before the score model), the materialized network (in
front of it, from the bundle's input spec) and the benchmarks' dense baseline, so
that all of them compute the same float32 values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; x: (B, C, H, W), mean and std: C values."""

    mean: torch.Tensor  # (1, C, 1, 1) float32
    std: torch.Tensor

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        shape = (1, -1, 1, 1)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32, device=device).view(shape)
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32, device=device).view(shape)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
