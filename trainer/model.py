"""Building the network a run trains: the PEMN score model or the dense baseline.

PEMN: ``create_model`` -> fixed weights from ``generate(layer_specs, strategy)`` ->
``to_masked`` (scores drawn from a generator seeded with the run's seed). Trained:
the scores and the norm layers' affine parameters.

Dense baseline: the plain model whose conv/linear weights start from the values the
``mask`` strategy fixes (Kaiming normal, fan_in); every parameter is trained.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pemn.archs import create_model, resolve_config
from pemn.layers import layer_specs
from pemn.masking import to_masked
from pemn.prototype import generate
from trainer.config import TrainConfig
from trainer.errors import ConfigError

__all__ = ["build_model", "model_config", "trainable_parameters"]


def model_config(cfg: TrainConfig, shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
    """The full architecture config for inputs of ``shape`` (C, H, W) and
    ``num_classes`` classes; raises ``ConfigError`` when they cannot fit together."""
    c, h, w = shape
    if h != w:
        raise ConfigError(f"{cfg.dataset} images are {h}x{w}; the architectures take square images")
    for key in ("in_channels", "image_size", "num_classes"):
        if key in cfg.arch_config:
            raise ConfigError(f"--config {key}=... is set from the dataset; remove it")
    try:
        return resolve_config(
            cfg.arch, in_channels=c, image_size=h, num_classes=num_classes, **cfg.arch_config
        )
    except ValueError as exc:
        raise ConfigError(f"{cfg.arch} config does not fit {cfg.dataset}: {exc}") from None


def build_model(cfg: TrainConfig, arch_config: dict[str, Any]) -> nn.Module:
    """The CPU model to train: masked (PEMN) or plain with ``mask``-strategy init (dense).

    Checks with a one-image forward pass that the architecture accepts the inputs."""
    try:
        model = create_model(cfg.arch, **arch_config)
    except ValueError as exc:
        raise ConfigError(f"{cfg.arch} config does not fit {cfg.dataset}: {exc}") from None
    fixed = generate(layer_specs(model), cfg.pemn_strategy())
    if cfg.dense:
        with torch.no_grad():
            for name, w in fixed.items():
                weight = model.get_submodule(name).weight
                assert isinstance(weight, torch.Tensor)
                weight.copy_(w)
    else:
        generator = torch.Generator().manual_seed(cfg.seed)
        to_masked(model, fixed, cfg.density, generator=generator)
    shape = (1, arch_config["in_channels"], arch_config["image_size"], arch_config["image_size"])
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"{cfg.arch} {cfg.arch_config or ''} cannot take {cfg.dataset} inputs of shape "
            f"{tuple(shape[1:])}: {first}"
        ) from None
    if tuple(out.shape) != (1, arch_config["num_classes"]):
        raise ConfigError(f"{cfg.arch} gives outputs {tuple(out.shape)} for one image")
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad``: scores + norm affine (PEMN), everything (dense)."""
    return [p for p in model.parameters() if p.requires_grad]
