"""Architectures by name: ``create_model("convmixer", width=256, depth=8)``.

Every architecture takes ``in_channels``, ``image_size`` and ``num_classes`` and
uses bias-free ``nn.Conv2d`` / ``nn.Linear`` layers, which are the maskable ones.
"""

from pemn.archs import convmixer as _convmixer  # noqa: F401  (registers)
from pemn.archs import mlp as _mlp  # noqa: F401
from pemn.archs import resnet as _resnet  # noqa: F401
from pemn.archs import vit as _vit  # noqa: F401
from pemn.archs.registry import (
    create_model,
    list_archs,
    parse_config_items,
    register,
    resolve_config,
)
from pemn.errors import UnknownArchitectureError

__all__ = [
    "UnknownArchitectureError",
    "create_model",
    "list_archs",
    "parse_config_items",
    "register",
    "resolve_config",
]
