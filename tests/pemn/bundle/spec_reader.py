"""A second bundle reader, written from docs/bundle-format.md alone.

It imports nothing from ``pemn``: the container, the strict JSON rules, the
manifest schema of both versions (1.x, 2.x), the architectures' layouts
(section 5), the mask bit order, the state precisions (7.1), the generator and
the digest are all re-implemented here from the document, in plain Python and
numpy; ``spec_forward`` computes the logits (5.3). The tests check that it
agrees with ``pemn.bundle.read_bundle`` on real bundles (every field and array)
and on the code of every malformed one, and with ``pemn.materialize`` on the
logits, which is how we know the document is enough to write a reader.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LIMITS", "SpecBundle", "SpecError", "digest", "fingerprint", "generate", "read"]

LIMITS = {  # section 11
    "max_file_bytes": 64 * 2**20,
    "max_header_bytes": 2**20,
    "max_tensors": 8,
    "max_layers": 4096,
    "max_weights": 2**27,
    "max_input_values": 2**22,
    "max_extra_values": 2**24,
}


class SpecError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = "bundle." + code


# ---------------------------------------------------------------- JSON (1.1, 1.2)


class _Bad(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Bad("duplicate key")
    return dict(pairs)


def _float(text: str) -> float:
    v = float(text)
    if math.isinf(v):
        raise _Bad("number out of range")
    return v


def _const(text: str) -> Any:
    raise _Bad(text)


_JSON = json.JSONDecoder(object_pairs_hook=_pairs, parse_float=_float, parse_constant=_const)


MAX_DEPTH = 64


def _depth(v: Any) -> int:
    """Section 1.1: scalars 0, an array or object 1 + its deepest member."""
    if isinstance(v, dict):
        v = list(v.values())
    if not isinstance(v, list):
        return 0
    return 1 + max((_depth(x) for x in v), default=0)


def _strict(text: str, padded: bool) -> Any:
    try:
        if padded:
            value, end = _JSON.raw_decode(text)
            if set(text[end:]) - {" "}:
                raise _Bad("junk after the header object")
        else:
            value = _JSON.decode(text)
        if _depth(value) > MAX_DEPTH:  # (recursion is fine: the parser stopped deeper ones)
            raise _Bad("too deep")
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # unpaired surrogates
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, 4300 digits, surrogates
        raise _Bad(str(exc)) from None
    return value


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# ---------------------------------------------------------------- manifest schema (3)


GENERATOR = "splitmix64-boxmuller-v1"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _str(v: Any, lo: int = 0, hi: int | None = None) -> bool:
    return isinstance(v, str) and lo <= len(v) and (hi is None or len(v) <= hi)


def _entries(v: Any, lo: int) -> bool:
    return (
        isinstance(v, list)
        and lo <= len(v) <= 65536
        and all(
            isinstance(e, dict)
            and _str(e.get("name"), 1, 256)
            and isinstance(e.get("shape"), list)
            and 1 <= len(e["shape"]) <= 8
            and all(_is_int(d) and 1 <= d <= 2**31 for d in e["shape"])
            for e in v
        )
    )


def _scalars(v: Any, limit: int) -> bool:
    return (
        isinstance(v, dict)
        and len(v) <= limit
        and all(isinstance(x, bool | int | float | str) for x in v.values())
    )


def _check_schema(m: dict[str, Any], major: int) -> None:
    def need(ok: bool, field: str) -> None:
        if not ok:
            raise SpecError("manifest_invalid", field)

    need(m.get("format", "pemn-bundle") == "pemn-bundle", "format")
    arch = m.get("arch")
    need(isinstance(arch, dict), "arch")
    need(_str(arch.get("name"), 1, 256), "arch.name")
    cfg = arch.get("config")
    need(
        isinstance(cfg, dict)
        and len(cfg) <= 64
        and all(
            isinstance(x, bool | int | float)
            or (isinstance(x, list) and all(_is_int(i) for i in x))
            for x in cfg.values()
        ),
        "arch.config",
    )
    st = m.get("strategy")
    need(isinstance(st, dict), "strategy")
    need(st.get("name") in ("mask", "one_layer", "mp", "rp"), "strategy.name")
    need(_is_int(st.get("seed")) and 0 <= st["seed"] < 2**53, "strategy.seed")
    ratio, scale = st.get("ratio"), st.get("scale", "paper")
    if st["name"] == "rp":
        need(_is_num(ratio) and 0 < ratio <= 1, "strategy.ratio")
    else:
        need(ratio is None, "strategy.ratio")
    need(scale in ("paper", "fan_in"), "strategy.scale")
    need(scale == "paper" or st["name"] in ("mp", "rp"), "strategy.scale")
    need(m.get("generator", GENERATOR) == GENERATOR, "generator")  # 2.x: the default
    need(
        isinstance(m.get("prototype_digest"), str)
        and re.fullmatch(r"sha256:[0-9a-f]{64}", m["prototype_digest"]) is not None,
        "prototype_digest",
    )
    need(isinstance(m.get("prototype_embedded", False), bool), "prototype_embedded")
    need(_is_num(m.get("density")) and 0 < m["density"] < 1, "density")
    # 2.x derives layers and trained; when present they are checked as in 1.x
    need("layers" not in m or _entries(m["layers"], 1), "layers")
    need("trained" not in m or _entries(m["trained"], 0), "trained")
    inp = m.get("input")
    need(isinstance(inp, dict), "input")
    shape = inp.get("shape")
    need(
        isinstance(shape, list)
        and len(shape) == 3
        and all(_is_int(d) and 1 <= d <= 2**31 for d in shape),
        "input.shape",
    )
    mean, std = inp.get("mean"), inp.get("std")
    need(isinstance(mean, list) and 1 <= len(mean) <= 64 and all(map(_is_num, mean)), "mean")
    need(
        isinstance(std, list) and 1 <= len(std) <= 64 and all(_is_num(s) and s > 0 for s in std),
        "input.std",
    )
    need(inp.get("dtype", "float32") == "float32", "input.dtype")
    rng = inp.get("range", [0.0, 1.0])
    need(isinstance(rng, list) and len(rng) == 2 and all(map(_is_num, rng)), "input.range")
    need(len(mean) == len(std) == shape[0], "input.mean")
    labels = m.get("labels")
    need(
        isinstance(labels, list)
        and 1 <= len(labels) <= 100_000
        and all(_str(s, 0, 256) for s in labels),
        "labels",
    )
    need(_scalars(m.get("metrics", {}), 256), "metrics")
    need(_scalars(m.get("provenance", {}), 256), "provenance")
    if major == 1:
        for field in ("format", "generator", "layers", "trained"):
            need(field in m, field)


# ---------------------------------------------------------------- architectures (5)

_COMMON = {"in_channels": 3, "image_size": 32, "num_classes": 10}
DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {**_COMMON, "hidden": [256, 256]},
    "convmixer": {**_COMMON, "width": 256, "depth": 8, "kernel": 5, "patch": 2},
    "resnet20": dict(_COMMON),
    "resnet32": dict(_COMMON),
    "resnet56": dict(_COMMON),
    "vit": {**_COMMON, "width": 256, "depth": 6, "heads": 8, "patch": 4, "mlp_ratio": 2},
}


def resolve(arch: str, config: dict[str, Any]) -> dict[str, Any]:
    """Section 5.1."""
    defaults = DEFAULTS[arch]
    for key in config:
        if key not in defaults:
            raise SpecError("manifest_invalid", f"arch.config.{key}")
    full = {**defaults, **config}
    for key, v in full.items():
        if key == "hidden":
            ok = (
                isinstance(v, list)
                and len(v) <= 1024
                and all(_is_int(h) and 1 <= h <= 2**24 for h in v)
            )
        else:
            ok = _is_int(v) and 1 <= v <= (1024 if key == "depth" else 2**24)
        if not ok:
            raise SpecError("manifest_invalid", f"arch.config.{key}")
    return full


@dataclass
class Layout:
    layers: list[tuple[str, list[int]]]
    trained: list[tuple[str, list[int]]]
    norms: dict[str, str]  # norm module -> "batchnorm" | "layernorm"
    extra: int  # section 5.2's extra values
    biggest: int  # largest parameter or buffer, in values


def layout(arch: str, c: dict[str, Any]) -> Layout:
    """Section 5.2. Raises manifest_invalid for a config that cannot be built."""
    C, S, K = c["in_channels"], c["image_size"], c["num_classes"]
    layers: list[tuple[str, list[int]]] = []
    norms: list[tuple[str, str, int]] = []  # (name, kind, features)
    extra_tables: list[int] = []
    if arch == "mlp":
        dims = [C * S * S, *c["hidden"]]
        layers += [(f"layers.{i}", [dims[i + 1], dims[i]]) for i in range(len(c["hidden"]))]
        layers.append(("head", [K, dims[-1]]))
        norms += [(f"norms.{i}", "batchnorm", h) for i, h in enumerate(c["hidden"])]
    elif arch == "convmixer":
        w, p, k = c["width"], c["patch"], c["kernel"]
        if p > S:
            raise SpecError("manifest_invalid", "patch")
        layers.append(("stem", [w, C, p, p]))
        norms.append(("stem_bn", "batchnorm", w))
        for i in range(c["depth"]):
            layers += [
                (f"blocks.{i}.depthwise", [w, 1, k, k]),
                (f"blocks.{i}.pointwise", [w, w, 1, 1]),
            ]
            norms += [(f"blocks.{i}.bn1", "batchnorm", w), (f"blocks.{i}.bn2", "batchnorm", w)]
        layers.append(("head", [K, w]))
    elif arch.startswith("resnet"):
        b = (int(arch[6:]) - 2) // 6
        layers.append(("conv1", [16, C, 3, 3]))
        norms.append(("bn1", "batchnorm", 16))
        prev = 16
        for s, planes in enumerate((16, 32, 64)):
            for j in range(b):
                layers += [
                    (f"stages.{s}.{j}.conv1", [planes, prev, 3, 3]),
                    (f"stages.{s}.{j}.conv2", [planes, planes, 3, 3]),
                ]
                norms += [
                    (f"stages.{s}.{j}.bn1", "batchnorm", planes),
                    (f"stages.{s}.{j}.bn2", "batchnorm", planes),
                ]
                prev = planes
        layers.append(("head", [K, 64]))
    elif arch == "vit":
        w, p, r = c["width"], c["patch"], c["mlp_ratio"]
        if w % c["heads"] or w % 4 or S % p:
            raise SpecError("manifest_invalid", "vit config")
        layers.append(("patch_embed", [w, C, p, p]))
        extra_tables.append((S // p) ** 2 * w)
        for i in range(c["depth"]):
            layers += [
                (f"blocks.{i}.attn.qkv", [3 * w, w]),
                (f"blocks.{i}.attn.proj", [w, w]),
                (f"blocks.{i}.fc1", [r * w, w]),
                (f"blocks.{i}.fc2", [w, r * w]),
            ]
            norms += [(f"blocks.{i}.norm1", "layernorm", w), (f"blocks.{i}.norm2", "layernorm", w)]
        norms.append(("norm", "layernorm", w))
        layers.append(("head", [K, w]))
    else:  # pragma: no cover - DEFAULTS lists every architecture
        raise AssertionError(arch)
    sizes = [math.prod(s) for _, s in layers] + [f for _, _, f in norms] + extra_tables
    if max(sizes) >= 2**61:
        raise SpecError("manifest_invalid", "arch.config")
    trained = []
    for name, kind, f in norms:
        leaves = ("scale", "shift") if kind == "batchnorm" else ("weight", "bias")
        trained += [(f"{name}.{leaf}", [f]) for leaf in leaves]
    extra = sum(4 * f + 1 if kind == "batchnorm" else 2 * f for _, kind, f in norms)
    return Layout(
        layers, trained, {n: k for n, k, _ in norms}, extra + sum(extra_tables), max(sizes)
    )


# ---------------------------------------------------------------- generator (8), digest (9)

_MASK = (1 << 64) - 1


def _mix64(z: int) -> int:
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _MASK
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def normal(seed: int, stream: int, n: int) -> list[float]:
    key = _mix64((_mix64(seed) + stream) & _MASK)
    out: list[float] = []
    for j in range((n + 1) // 2):
        x0 = _mix64((key + (2 * j + 1) * 0x9E3779B97F4A7C15) & _MASK)
        x1 = _mix64((key + (2 * j + 2) * 0x9E3779B97F4A7C15) & _MASK)
        u1 = ((x0 >> 11) + 1) * 2.0**-53
        u2 = (x1 >> 11) * 2.0**-53
        r = math.sqrt(-2.0 * math.log(u1))
        t = 6.283185307179586 * u2
        out += [r * math.cos(t), r * math.sin(t)]
    return out[:n]


def _f32(values: list[float], std: float, shape: list[int]) -> np.ndarray:
    return (np.array(values, dtype=np.float64) * std).astype(np.float32).reshape(shape)


def generate(
    layers: list[tuple[str, list[int]]], strategy: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Section 8: the fixed weights of every layer."""
    name, seed = strategy["name"], strategy["seed"]
    sizes = [math.prod(s) for _, s in layers]
    fan = [math.prod(s[1:]) for _, s in layers]
    out: dict[str, np.ndarray] = {}
    if name == "mask":
        for i, (n, s) in enumerate(layers):
            out[n] = _f32(normal(seed, i, sizes[i]), math.sqrt(2.0 / fan[i]), s)
    elif name == "one_layer":
        first: dict[tuple[int, ...], np.ndarray] = {}
        for i, (n, s) in enumerate(layers):
            if tuple(s) not in first:
                first[tuple(s)] = _f32(normal(seed, i, sizes[i]), math.sqrt(2.0 / fan[i]), s)
            out[n] = first[tuple(s)]
    else:
        m = sizes.index(max(sizes))
        big = sizes[m]
        u = big if name == "mp" else min(math.floor(strategy["ratio"] * big) + 1, big)
        b = normal(seed, m, u)
        v = [b[i % u] for i in range(big)]
        for i, (n, s) in enumerate(layers):
            f = fan[i] if strategy.get("scale", "paper") == "fan_in" else fan[m]
            out[n] = _f32(v[: sizes[i]], math.sqrt(2.0 / f), s)
    return out


def digest(weights: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, w in weights.items():
        h.update(name.encode() + b"\0" + ",".join(str(d) for d in w.shape).encode() + b"\0")
        h.update(np.asarray(w, dtype="<f4").tobytes())
    return "sha256:" + h.hexdigest()


def fingerprint(m: dict[str, Any]) -> str:
    st = m["strategy"]
    doc = {
        "arch": m["arch"]["name"],
        "config": resolve(m["arch"]["name"], m["arch"]["config"]),
        "strategy": {
            "name": st["name"],
            "seed": st["seed"],
            "ratio": st.get("ratio"),
            "scale": st.get("scale", "paper"),
        },
        "generator": m.get("generator", GENERATOR),
    }
    return "sha256:" + hashlib.sha256(canonical(doc).encode()).hexdigest()


def kept(n: int, density: float) -> int:
    return max(1, min(n, math.floor(density * n + 0.5)))


# ---------------------------------------------------------------- the reader (13)


@dataclass
class SpecBundle:
    manifest: dict[str, Any]
    layout: Layout
    masks: dict[str, np.ndarray]  # bool, layer shape
    state: dict[str, np.ndarray]  # float32
    prototype: dict[str, np.ndarray] | None  # embedded, float32, layer shapes
    fixed: dict[str, np.ndarray] | None  # regenerated (None when embedded)
    fingerprint: str

    def weights(self) -> dict[str, np.ndarray]:
        """Materialized weight of every maskable layer: fixed * mask."""
        fixed = self.prototype if self.prototype is not None else self.fixed
        assert fixed is not None
        return {n: fixed[n] * self.masks[n] for n in self.masks}

    def apply_norm(self, name: str, x: np.ndarray) -> np.ndarray:
        """Section 7: a BatchNorm is y = x * scale + shift over dimension 1."""
        assert self.layout.norms[name] == "batchnorm"
        view = (1, -1) + (1,) * (x.ndim - 2)
        scale, shift = self.state[f"{name}.scale"], self.state[f"{name}.shift"]
        return x * scale.reshape(view) + shift.reshape(view)


def _checked_architecture(m: dict[str, Any], lim: dict[str, int]) -> tuple[Layout, dict]:
    arch = m["arch"]["name"]
    if arch not in DEFAULTS:
        raise SpecError("unknown_arch", arch)
    c = resolve(arch, m["arch"]["config"])
    declared = m.get("layers", [])
    if len(declared) > lim["max_layers"]:
        raise SpecError("model_too_large", "layers")
    if sum(math.prod(e["shape"]) for e in declared) > lim["max_weights"]:
        raise SpecError("model_too_large", "layers")
    if c["in_channels"] * c["image_size"] ** 2 > lim["max_input_values"]:
        raise SpecError("model_too_large", "input")
    lay = layout(arch, c)
    n = sum(math.prod(s) for _, s in lay.layers)
    if len(lay.layers) > lim["max_layers"] or n > lim["max_weights"]:
        raise SpecError("model_too_large", "arch")
    if lay.extra > lim["max_extra_values"]:
        raise SpecError("model_too_large", "arch")
    for field, want in (("layers", lay.layers), ("trained", lay.trained)):
        if field in m and [(e["name"], e["shape"]) for e in m[field]] != list(want):
            raise SpecError("arch_mismatch", field)
    if m["input"]["shape"] != [c["in_channels"], c["image_size"], c["image_size"]]:
        raise SpecError("manifest_invalid", "input.shape")
    if len(m["labels"]) != c["num_classes"]:
        raise SpecError("manifest_invalid", "labels")
    return lay, c


def read(data: bytes, limits: dict[str, int] | None = None, verify: bool = True) -> SpecBundle:
    lim = {**LIMITS, **(limits or {})}
    # 1-3: container and header
    if len(data) > lim["max_file_bytes"]:
        raise SpecError("too_large", "file")
    if len(data) < 8:
        raise SpecError("truncated", "file")
    (hlen,) = struct.unpack("<Q", data[:8])
    if hlen > lim["max_header_bytes"]:
        raise SpecError("header_too_large", "header")
    if 8 + hlen > len(data):
        raise SpecError("truncated", "header")
    raw = data[8 : 8 + hlen]
    try:
        if raw[:1] != b"{":
            raise _Bad("no {")
        header = _strict(raw.decode("utf-8"), padded=True)
    except (_Bad, UnicodeDecodeError):
        raise SpecError("header_invalid", "header") from None
    if not isinstance(header, dict):
        raise SpecError("header_invalid", "header")
    # 4-7: metadata and manifest
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise SpecError("not_a_bundle", "__metadata__")
    if meta.get("format") != "pemn-bundle" or "manifest" not in meta:
        raise SpecError("not_a_bundle", "__metadata__")
    try:
        m = _strict(meta["manifest"], padded=False)
    except _Bad:
        raise SpecError("manifest_not_json", "manifest") from None
    if not isinstance(m, dict):
        raise SpecError("manifest_not_json", "manifest")
    v = m.get("format_version")
    if not isinstance(v, str) or not re.fullmatch(r"[0-9]{1,4}\.[0-9]{1,4}", v, re.ASCII):
        raise SpecError("manifest_invalid", "format_version")
    major = int(v.split(".")[0])
    if major not in (1, 2):
        raise SpecError("unsupported_version", "format_version")
    _check_schema(m, major)
    # 8: architecture
    lay, _ = _checked_architecture(m, lim)
    # 9: tensor table
    entries = {k: e for k, e in header.items() if k != "__metadata__"}
    if len(entries) > lim["max_tensors"]:
        raise SpecError("too_many_tensors", "header")
    sizes = [math.prod(s) for _, s in lay.layers]
    expected = {
        "masks": [sum((n + 7) // 8 for n in sizes)],
        "state": [sum(s[0] for _, s in lay.trained)],
    }
    itemsize = {"U8": 1, "F16": 2, "BF16": 2, "F32": 4}
    dtypes = {  # section 2: what each tensor may be, per major
        "masks": ["U8"],
        "state": ["F32"] if major == 1 else ["F16", "BF16", "F32"],
        "prototype": ["F32"],
    }
    if m.get("prototype_embedded", False):
        expected["prototype"] = [sum(sizes)]
    for name in sorted(entries):
        if name not in expected:
            raise SpecError("unexpected_tensor", name)
    for name in expected:
        if name not in entries:
            raise SpecError("missing_tensor", name)
    spans = []
    for name in sorted(entries):
        e = entries[name]
        if not isinstance(e, dict) or sorted(e) != ["data_offsets", "dtype", "shape"]:
            raise SpecError("header_invalid", name)
        if e["dtype"] not in dtypes[name]:
            raise SpecError("wrong_dtype", name)
        if not isinstance(e["shape"], list) or not all(_is_int(d) and d >= 0 for d in e["shape"]):
            raise SpecError("header_invalid", name)
        if e["shape"] != expected[name]:
            raise SpecError("wrong_shape", name)
        off = e["data_offsets"]
        if not isinstance(off, list) or len(off) != 2 or not all(_is_int(o) for o in off):
            raise SpecError("header_invalid", name)
        if not 0 <= off[0] <= off[1] or off[1] - off[0] != e["shape"][0] * itemsize[e["dtype"]]:
            raise SpecError("invalid_offsets", name)
        spans.append((off[0], off[1], name))
    pos = 0
    for b, end, name in sorted(spans):
        if b != pos:
            raise SpecError("invalid_offsets", name)
        pos = end
    body = data[8 + hlen :]
    if pos > len(body):
        raise SpecError("truncated", "data")
    if pos < len(body):
        raise SpecError("trailing_bytes", "data")

    def tensor(name: str) -> np.ndarray:
        """Section 7.1: every float tensor as float32."""
        b, end = entries[name]["data_offsets"]
        raw, dtype = body[b:end], entries[name]["dtype"]
        if dtype == "U8":
            return np.frombuffer(raw, dtype=np.uint8)
        if dtype == "F16":
            return np.frombuffer(raw, dtype="<f2").astype(np.float32)
        if dtype == "BF16":  # the upper half of a float32
            return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(raw, dtype="<f4")

    # 10: data
    packed, masks, o = tensor("masks"), {}, 0
    for (name, shape), n in zip(lay.layers, sizes, strict=True):
        chunk = packed[o : o + (n + 7) // 8]
        bits = np.unpackbits(chunk, bitorder="little")
        if bits[n:].any():
            raise SpecError("nonzero_padding", name)
        if int(bits.sum()) != kept(n, m["density"]):
            raise SpecError("popcount_mismatch", name)
        masks[name] = bits[:n].astype(bool).reshape(shape)
        o += (n + 7) // 8
    flat = tensor("state")
    if not np.isfinite(flat).all():
        raise SpecError("non_finite", "state")
    state, o = {}, 0
    for name, shape in lay.trained:
        state[name] = flat[o : o + shape[0]]
        o += shape[0]
    prototype = None
    if "prototype" in expected:
        p = tensor("prototype")
        if not np.isfinite(p).all():
            raise SpecError("non_finite", "prototype")
        prototype, o = {}, 0
        for (name, shape), n in zip(lay.layers, sizes, strict=True):
            prototype[name] = p[o : o + n].reshape(shape)
            o += n
    # 11: digest
    fixed = None
    if verify:
        if prototype is None:
            fixed = generate(lay.layers, m["strategy"])
        if digest(prototype if prototype is not None else fixed) != m["prototype_digest"]:  # type: ignore[arg-type]
            raise SpecError("digest_mismatch", "prototype_digest")
    return SpecBundle(m, lay, masks, state, prototype, fixed, fingerprint(m))
