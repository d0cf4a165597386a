"""pemn: the core library of pemn-serve: architectures, fixed-weight prototypes, mask
learning, the bundle format, stores, materialization and ONNX export.

Depends on torch, numpy, safetensors, pydantic and Pillow (pemn.images); never on the service. Importing
``pemn`` itself is light: the names below load their module on first use, so that
the light modules (``pemn.store``, ``pemn.files``, ``pemn.retry``, ``pemn.content``,
``pemn.caches``) do not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pemn.archs import create_model, list_archs
    from pemn.errors import InvalidParameterError, UnknownArchitectureError, UnknownStrategyError
    from pemn.prototype import Strategy

__all__ = [
    "InvalidParameterError",
    "Strategy",
    "UnknownArchitectureError",
    "UnknownStrategyError",
    "create_model",
    "list_archs",
]

_HOME = {
    "InvalidParameterError": "pemn.errors",
    "UnknownArchitectureError": "pemn.errors",
    "UnknownStrategyError": "pemn.errors",
    "Strategy": "pemn.prototype",
    "create_model": "pemn.archs",
    "list_archs": "pemn.archs",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'pemn' has no attribute {name!r}")
