"""Fixed random weights of every maskable layer, per PEMN strategy, and their digest.

A *prototype* is the set of fixed weights the masks select from. It is never
stored: it is regenerated from (layer shapes, strategy, seed) by the documented
generator below, which gives the same bytes in every process, on every machine,
whatever the thread count. Weights are always generated on the CPU in float64,
rounded to float32, and only then moved to a device.

Generator ``splitmix64-boxmuller-v1`` (all integer arithmetic mod 2**64):
  mix64(z):  z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
             z *= 0x94D049BB133111EB; z ^= z >> 31
  key(seed, stream) = mix64(mix64(seed) + stream)
  x_i = mix64(key + (i + 1) * 0x9E3779B97F4A7C15)              for i = 0, 1, ...
  pair j: u1 = ((x_2j >> 11) + 1) * 2**-53 in (0, 1], u2 = (x_2j+1 >> 11) * 2**-53
          r = sqrt(-2 ln u1); z_2j = r cos(2 pi u2); z_2j+1 = r sin(2 pi u2)
  normal(seed, stream, n) = z_0 .. z_n-1 (float64)
A layer value is float32(z * std) with std = sqrt(2 / fan_in) (Kaiming normal,
fan_in mode, ReLU gain), computed in float64 and rounded to nearest.

Strategies (layers l = 0..L-1 in module order, n_l weights, N = sum n_l):
  mask       layer l = normal(seed, l, n_l) * std(fan_in_l)
  one_layer  the first layer of each shape s (index f) draws normal(seed, f, n_f);
             later layers of shape s reuse those values
  mp         the largest layer (first on ties, index m, size M) draws
             v = normal(seed, m, M) * std(fan_in_m); layer l = v[:n_l] reshaped
  rp(r)      as mp with v replaced by v[:U] tiled to length M, U = min(int(r*M)+1, M)
Scale ``paper`` (default) is the reference: mp/rp values keep the largest layer's
std. Scale ``fan_in`` (mp/rp only) uses each layer's own std instead:
layer l = float32(z * sqrt(2 / fan_in_l)) with the same z.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pemn.errors import InvalidParameterError, UnknownStrategyError
from pemn.layers import LayerSpec

__all__ = [
    "GENERATOR",
    "SCALES",
    "STRATEGIES",
    "PrototypeStats",
    "Strategy",
    "digest",
    "generate",
    "normal",
    "paper_compression",
    "stats",
]

GENERATOR = "splitmix64-boxmuller-v1"
STRATEGIES = ("mask", "one_layer", "mp", "rp")
SCALES = ("paper", "fan_in")
MAX_SEED = 2**53  # seeds stay exact in JSON everywhere

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


_CHUNK = 1 << 16  # pairs per step: bounds the temporaries whatever n is


def _key(seed: int, stream: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix64(_mix64(np.array([seed], dtype=np.uint64)) + np.uint64(stream))


def _pairs(key: np.ndarray, start: int, stop: int) -> np.ndarray:
    """z_{2 start} .. z_{2 stop - 1} (float64): pairs ``start`` to ``stop - 1``."""
    with np.errstate(over="ignore"):
        i = np.arange(2 * start + 1, 2 * stop + 1, dtype=np.uint64)
        x = _mix64(key + i * _GAMMA)
    u1 = ((x[0::2] >> np.uint64(11)) + np.uint64(1)).astype(np.float64) * 2.0**-53
    u2 = (x[1::2] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    r = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * math.pi * u2
    out = np.empty(2 * (stop - start), dtype=np.float64)
    out[0::2] = r * np.cos(theta)
    out[1::2] = r * np.sin(theta)
    return out


def normal(seed: int, stream: int, n: int) -> np.ndarray:
    """``n`` standard normal float64 values of stream ``stream`` (see module doc)."""
    key = _key(seed, stream)
    pairs = (n + 1) // 2
    out = np.empty(2 * pairs, dtype=np.float64)
    for a in range(0, pairs, _CHUNK):
        b = min(a + _CHUNK, pairs)
        out[2 * a : 2 * b] = _pairs(key, a, b)
    return out[:n]


def _normal_f32(seed: int, stream: int, n: int, std: float) -> np.ndarray:
    """``float32(normal(seed, stream, n) * std)`` without the float64 array of n values."""
    key = _key(seed, stream)
    out = np.empty(n, dtype=np.float32)
    for a in range(0, (n + 1) // 2, _CHUNK):
        b = min(a + _CHUNK, (n + 1) // 2)
        z = _pairs(key, a, b)[: n - 2 * a]
        out[2 * a : 2 * a + len(z)] = (z * std).astype(np.float32)
    return out


@dataclass(frozen=True)
class Strategy:
    """How the fixed weights are laid out: strategy name, seed, rp ratio, scale mode."""

    name: str
    seed: int = 0
    ratio: float | None = None
    scale: str = "paper"

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise UnknownStrategyError(self.name, STRATEGIES)
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed < MAX_SEED
        ):
            raise InvalidParameterError("seed", self.seed, "an integer in [0, 2**53)")
        if self.name == "rp":
            r = self.ratio
            if isinstance(r, bool) or not isinstance(r, int | float) or not 0 < r <= 1:
                raise InvalidParameterError("ratio", r, "a number in (0, 1] (strategy rp)")
            object.__setattr__(self, "ratio", float(r))
        elif self.ratio is not None:
            raise InvalidParameterError("ratio", self.ratio, "none unless strategy is rp")
        if self.scale not in SCALES:
            raise InvalidParameterError("scale", self.scale, "one of " + ", ".join(SCALES))
        if self.scale == "fan_in" and self.name not in ("mp", "rp"):
            raise InvalidParameterError(
                "scale", self.scale, f"'paper' for strategy {self.name} (fan_in applies to mp, rp)"
            )

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "seed": self.seed, "ratio": self.ratio, "scale": self.scale}


def _std(fan_in: int) -> float:
    return math.sqrt(2.0 / fan_in)


def _max_layer(specs: Sequence[LayerSpec]) -> int:
    sizes = [s.numel for s in specs]
    return sizes.index(max(sizes))


def _rp_unique(ratio: float, m: int) -> int:
    return min(int(ratio * m) + 1, m)


@dataclass(frozen=True)
class PrototypeStats:
    """Counts of the paper's storage accounting."""

    layers: int
    n: int  # masked weights (N)
    m: int  # size of the largest layer (M)
    u: int  # unique fixed values (U)

    @property
    def compression(self) -> float:
        """Paper formula: 1 - (N*1 + U*32) / (N*32) bits."""
        return paper_compression(self.n, self.u)


def paper_compression(n: int, u: int) -> float:
    return 1.0 - (n + 32 * u) / (32 * n)


def _check_specs(specs: Sequence[LayerSpec]) -> None:
    if not specs:
        raise InvalidParameterError("layers", "[]", "at least one maskable layer")


def stats(specs: Sequence[LayerSpec], strategy: Strategy) -> PrototypeStats:
    """N, M and U of ``strategy`` over ``specs``."""
    _check_specs(specs)
    n = sum(s.numel for s in specs)
    m = specs[_max_layer(specs)].numel
    if strategy.name == "mask":
        u = n
    elif strategy.name == "one_layer":
        u = sum(math.prod(shape) for shape in {s.shape for s in specs})
    elif strategy.name == "mp":
        u = m
    else:
        assert strategy.ratio is not None  # checked by Strategy
        u = _rp_unique(strategy.ratio, m)
    return PrototypeStats(layers=len(specs), n=n, m=m, u=u)


def _as_f32(values: np.ndarray, std: float, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy((values * std).astype(np.float32).reshape(shape))


def generate(specs: Sequence[LayerSpec], strategy: Strategy) -> dict[str, torch.Tensor]:
    """The fixed weights ``{layer name: float32 CPU tensor}`` of ``strategy``.

    Tensors may share memory and are to be treated as read-only: ``one_layer``
    repeats one tensor per shape, and with scale ``paper`` every ``mp``/``rp`` layer
    is a view of the first ``n_l`` values of one vector of M values (so the
    prototype takes 4M bytes, not 4N)."""
    _check_specs(specs)
    seed = strategy.seed
    out: dict[str, torch.Tensor] = {}
    if strategy.name == "mask":
        for i, s in enumerate(specs):
            out[s.name] = _tensor(_normal_f32(seed, i, s.numel, _std(s.fan_in)), s.shape)
    elif strategy.name == "one_layer":
        first: dict[tuple[int, ...], torch.Tensor] = {}
        for i, s in enumerate(specs):
            if s.shape not in first:
                first[s.shape] = _tensor(_normal_f32(seed, i, s.numel, _std(s.fan_in)), s.shape)
            out[s.name] = first[s.shape]
    else:
        j = _max_layer(specs)
        big = specs[j]
        u = big.numel if strategy.name == "mp" else _rp_unique(strategy.ratio or 1.0, big.numel)
        if strategy.scale == "paper":  # one std: round once, then tile and slice
            vec = _normal_f32(seed, j, u, _std(big.fan_in))
            if u < big.numel:
                vec = np.resize(vec, big.numel)  # periodic tiling
            full = torch.from_numpy(vec)
            for s in specs:
                out[s.name] = full[: s.numel].view(s.shape)
        else:  # fan_in: the same z, each layer with its own std
            base = normal(seed, j, u)
            if u < big.numel:
                base = np.resize(base, big.numel)
            for s in specs:
                out[s.name] = _as_f32(base[: s.numel], _std(s.fan_in), s.shape)
    return out


def _tensor(values: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(values.reshape(shape))


def digest(weights: Mapping[str, torch.Tensor | np.ndarray]) -> str:
    """``"sha256:<hex>"`` over, per layer in order: name, NUL, shape "a,b,c", NUL,
    then the float32 little-endian bytes of the weights in row-major order."""
    h = hashlib.sha256()
    for name, w in weights.items():
        arr = w.detach().to("cpu", torch.float32).numpy() if isinstance(w, torch.Tensor) else w
        h.update(name.encode() + b"\0" + ",".join(map(str, arr.shape)).encode() + b"\0")
        h.update(np.ascontiguousarray(arr, dtype="<f4").data)
    return "sha256:" + h.hexdigest()
