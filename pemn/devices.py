"""Device names -> ``torch.device``: ``auto`` (CUDA when there is one, else the CPU),
``cpu``, ``cuda`` or ``cuda:N``, checked before any work is placed on them."""

from __future__ import annotations

import torch

from pemn.errors import InvalidParameterError

__all__ = ["resolve_device"]

_NAMES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device ``device`` names. ``InvalidParameterError`` (a ``ValueError``) when
    the name is not one of auto, cpu, cuda, cuda:N, or names a GPU this machine lacks."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidParameterError("device", str(device), _NAMES) from None
    if dev.type not in ("cpu", "cuda"):
        raise InvalidParameterError("device", str(device), _NAMES)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidParameterError(
                "device", str(device), "auto or cpu (CUDA is not available)"
            )
        if dev.index is not None and dev.index >= count:
            raise InvalidParameterError("device", str(device), f"cuda:0 to cuda:{count - 1}")
    return dev
