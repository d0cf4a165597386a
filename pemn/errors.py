"""Typed errors of the core library for bad parameters (all are ``ValueError``s)."""

from __future__ import annotations

__all__ = ["InvalidParameterError", "UnknownArchitectureError", "UnknownStrategyError"]


class InvalidParameterError(ValueError):
    """A parameter is outside its allowed values; the message names both."""

    def __init__(self, name: str, value: object, allowed: str) -> None:
        self.param = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {name}={value!r}: allowed values are {allowed}")


class UnknownArchitectureError(InvalidParameterError):
    """``create_model`` was asked for a name that is not registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__("arch", name, "one of " + ", ".join(known))
        self.known = known


class UnknownStrategyError(InvalidParameterError):
    """A fixed-weight strategy name that does not exist."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__("strategy", name, "one of " + ", ".join(known))
        self.known = list(known)
