"""The format's strict JSON (docs/bundle-format.md, section 1.1), for the header
and the manifest: RFC 8259 without duplicate keys, NaN or infinities, with finite
numbers, integers of at most 4300 digits, at most ``MAX_JSON_DEPTH`` levels of
nesting and no unpaired surrogate escapes. ``strict_json`` raises ``BadJSON``
naming the rule; the reader turns it into its error for the header or manifest.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pemn.bundle.spec import MAX_JSON_DEPTH

__all__ = ["BadJSON", "strict_json"]


class BadJSON(Exception):
    """Why a JSON text breaks the format's JSON rules (see strict_json)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadJSON(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJSON(f"number {text[:20]} is out of the float64 range")
    return value


def _no_constant(name: str) -> Any:
    raise BadJSON(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_float=_finite_float, parse_constant=_no_constant
)


def _depth(value: Any) -> int:
    """Nesting depth: 0 for a number, string, true, false or null; 1 + the deepest
    member for an array or object (so ``[]`` and ``{}`` are 1). Iterative: no
    recursion limit, and it stops as soon as MAX_JSON_DEPTH is exceeded."""
    if not isinstance(value, dict | list):
        return 0
    deepest = 0
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_JSON_DEPTH:
            break
        for member in v.values() if isinstance(v, dict) else v:
            if isinstance(member, dict | list):
                stack.append((member, d + 1))
    return deepest


def strict_json(text: str, *, padded: bool = False) -> Any:
    """Parse RFC 8259 JSON more strictly than ``json.loads``: no duplicate keys, no
    NaN/Infinity, finite numbers, integers of at most 4300 digits, at most
    ``MAX_JSON_DEPTH`` levels of arrays and objects, no unpaired surrogate escapes.
    ``padded``: the text is one value followed only by spaces (0x20), the header's
    padding."""
    try:
        if padded:
            value, end = _DECODER.raw_decode(text)
            if text[end:].strip(" "):
                raise BadJSON(f"non-space bytes follow the JSON value at offset {end}")
        else:
            value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise BadJSON(f"{exc.msg} at offset {exc.pos}") from None
    except RecursionError:  # far deeper than MAX_JSON_DEPTH
        raise BadJSON(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError:  # int() of more than 4300 digits
        raise BadJSON("a number has too many digits") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise BadJSON(f"nested more than {MAX_JSON_DEPTH} levels deep")
    try:  # an unpaired surrogate escape (e.g. "\ud800") decodes but cannot be encoded
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadJSON("a string holds an unpaired surrogate escape") from None
    return value
