"""pemn: the core library of pemn-serve (architectures, fixed-weight prototypes,
mask learning; later the bundle format, stores, materialization and export).

Depends on torch, numpy, safetensors, pydantic and Pillow (pemn.images); never on the service.
"""

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
