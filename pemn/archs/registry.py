"""The architecture registry: ``create_model(name, **config)`` and friends.

Every architecture is a function taking keyword-only config values with defaults;
the registry resolves a partial config against those defaults (so a bundle can
record the *full* config), rejects unknown keys, and checks sizes are positive.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from pemn.errors import InvalidParameterError, UnknownArchitectureError

__all__ = ["create_model", "list_archs", "parse_config_items", "register", "resolve_config"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# Caps that keep a hostile config (e.g. from an uploaded bundle) from making the
# builder itself slow: any size, and the number of repeated blocks.
MAX_SIZE = 2**24
MAX_REPEATS = 1024


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register an architecture builder under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"architecture {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_archs() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_REGISTRY)


def parse_config_items(items: Sequence[str]) -> dict[str, Any]:
    """Command-line ``KEY=VALUE`` items -> a config dict; values are JSON when they
    parse as JSON, else strings: ``["width=256", "hidden=[128,64]"]`` ->
    ``{"width": 256, "hidden": [128, 64]}``. ``ValueError`` names a malformed item."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--config expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownArchitectureError(str(name), list_archs()) from None


def resolve_config(name: str, **config: Any) -> dict[str, Any]:
    """The full config of ``name``: defaults overlaid with ``config``, validated.

    Unknown keys raise ``InvalidParameterError``; every integer size must be >= 1.
    """
    fn = _builder(name)
    params = {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    for key in config:
        if key not in params:
            raise InvalidParameterError(
                f"{name} config key", key, "one of " + ", ".join(sorted(params))
            )
    full = {**params, **config}
    for key, value in full.items():
        default = params[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise InvalidParameterError(key, value, "true or false")
        elif isinstance(default, int):
            cap = MAX_REPEATS if key == "depth" else MAX_SIZE
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
                raise InvalidParameterError(key, value, f"an integer in [1, {cap}]")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InvalidParameterError(key, value, "a number > 0")
        elif isinstance(default, tuple):
            if (
                not isinstance(value, list | tuple)
                or len(value) > MAX_REPEATS
                or not all(
                    isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE
                    for v in value
                )
            ):
                raise InvalidParameterError(
                    key, value, f"a list of at most {MAX_REPEATS} integers in [1, {MAX_SIZE}]"
                )
            full[key] = tuple(value)
    return full


def create_model(name: str, **config: Any) -> nn.Module:
    """Build architecture ``name`` with ``config`` (see ``resolve_config``).

    Every conv and linear layer of the result is a plain ``nn.Conv2d`` /
    ``nn.Linear`` without bias: those are the maskable layers.
    """
    full = resolve_config(name, **config)
    return _builder(name)(**full)
