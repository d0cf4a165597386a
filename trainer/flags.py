"""The command line of ``TrainConfig``, generated from its fields.

Each field becomes one flag in its group: ``--<name with dashes>`` (or the field's
``flag``), typed from the annotation (``bool``: ``--x/--no-x``; a dict: repeatable
``KEY=VALUE``), with its choices and its help text followed by its default. Flags a
user does not give are left out of the parsed values, so the model's defaults (and
its default rules, e.g. no flips for mnist) apply: defaults live in the model only.

Written here rather than with pydantic-settings' CLI source because the flags keep
their names (``-c/--config KEY=VALUE`` for a dict, ``--flip/--no-flip``), their
groups and sub-commands, and a bad value stays one sentence (``ConfigError``).
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Collection
from typing import Any, Union, get_args, get_origin

from trainer.config import GROUPS, TrainConfig, flag_name

__all__ = ["add_config_flags", "config_values"]


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; ``dict[str, Any]`` -> ``dict``."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    return get_origin(annotation) or annotation


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _bounds_text(metadata: list[Any]) -> str:
    """``[Gt(0), Lt(1)]`` -> ``"> 0, < 1"``: the field's bounds, as validated."""
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return ", ".join(
        f"{sign} {getattr(m, key)}"
        for m in metadata
        for key, sign in signs.items()
        if getattr(m, key, None) is not None
    )


def add_config_flags(
    parser: argparse.ArgumentParser, exclude: Collection[str] = ()
) -> dict[str, argparse._ArgumentGroup]:
    """Add a flag per ``TrainConfig`` field (but ``exclude``) to ``parser``, in
    argument groups; returns the groups by key (``model``, ``data``, ...) so a
    command can add its own flags to them."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for name, info in TrainConfig.model_fields.items():
        if name in exclude:
            continue
        extra = info.json_schema_extra
        assert isinstance(extra, dict), f"TrainConfig.{name} has no command-line metadata"
        kind = _base_type(info.annotation)
        text = (info.description or "").replace("%", "%%")
        notes = [] if "default" in text else [f"default: {_default_text(info.default)}"]
        if info.default is None or kind is dict:
            notes = []
        notes += [b for b in [_bounds_text(info.metadata)] if b]
        if notes:
            text += f" ({'; '.join(notes)})"
        names = [flag_name(name)] + ([str(extra["short"])] if "short" in extra else [])
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": text}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            options.update(action="append", metavar=extra.get("metavar"))
        else:
            options["type"] = kind
            if "choices" in extra:
                options["choices"] = extra["choices"]
            if "metavar" in extra:
                options["metavar"] = extra["metavar"]
        groups[str(extra["group"])].add_argument(*names, **options)
    return groups


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields a user gave on the command line."""
    return {k: v for k, v in vars(args).items() if k in TrainConfig.model_fields}
