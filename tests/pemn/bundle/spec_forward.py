"""The network's computation, written from docs/bundle-format.md section 5.3 alone.

Given a bundle read by ``spec_reader`` (masks, norm values, regenerated or
embedded fixed weights) and pixels, ``logits`` computes the outputs in float64
with numpy, from the document's definitions: input normalisation, conv
(cross-correlation, zero padding, groups), linear, exact GELU, ReLU, folded
BatchNorm, LayerNorm, pooling, the ViT's attention layout and position table,
the ResNets' option-A shortcuts. Nothing here comes from ``pemn`` or torch; the
tests check it agrees with ``pemn.materialize`` to 1e-5 on every architecture.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tests.pemn.bundle.spec_reader import SpecBundle, resolve

__all__ = ["logits", "position_table"]

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _fl32(v: Any) -> np.ndarray:
    """Round to binary32, then compute on in binary64."""
    return np.asarray(v, dtype=np.float64).astype(np.float32).astype(np.float64)


def gelu(z: np.ndarray) -> np.ndarray:
    return 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0)))


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def conv(
    h: np.ndarray,
    w: np.ndarray,
    stride: int = 1,
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    groups: int = 1,
) -> np.ndarray:
    """(B, I, H, W) * [O, I/g, kh, kw] -> (B, O, Ho, Wo); pad = (top, bottom, left, right)."""
    top, bottom, left, right = pad
    hp = np.pad(h, ((0, 0), (0, 0), (top, bottom), (left, right)))
    o, ig, kh, kw = w.shape
    b, _, height, width = hp.shape
    ho, wo = (height - kh) // stride + 1, (width - kw) // stride + 1
    win = sliding_window_view(hp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride][:, :, :ho, :wo]
    win = win.reshape(b, groups, ig, ho, wo, kh, kw)
    wg = w.reshape(groups, o // groups, ig, kh, kw)
    out = np.einsum("bgchwuv,gocuv->bgohw", win, wg, optimize=True)
    return out.reshape(b, o, ho, wo)


def same(k: int) -> tuple[int, int, int, int]:
    top = (k - 1) // 2
    return (top, k - 1 - top, top, k - 1 - top)


def linear(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    return h @ w.T


def pool(h: np.ndarray) -> np.ndarray:
    return h.mean(axis=(2, 3))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def shortcut(h: np.ndarray, t: int, planes: int) -> np.ndarray:
    """Option A: identity, or rows/columns 0, t, 2t, ... and zero channels on both sides."""
    if t == 1 and h.shape[1] == planes:
        return h
    extra = (planes - h.shape[1]) // 2
    return np.pad(h[:, :, ::t, ::t], ((0, 0), (extra, extra), (0, 0), (0, 0)))


def split_qkv(u: np.ndarray, w: int, heads: int) -> list[np.ndarray]:
    """(B, T, 3w) -> q, k, v of (B, T, heads, w/heads): [q | k | v], each head-major inside."""
    b, t, _ = u.shape
    return [u[:, :, j * w : (j + 1) * w].reshape(b, t, heads, w // heads) for j in range(3)]


def position_table(g: int, w: int) -> np.ndarray:
    """(g*g, w) float32: column sines, column cosines, row sines, row cosines."""
    q = w // 4
    omega = 1.0 / 10000.0 ** (np.arange(q, dtype=np.float64) / max(q - 1, 1))
    t = np.arange(g * g)
    x = (t % g).astype(np.float64)[:, None] * omega[None, :]
    y = (t // g).astype(np.float64)[:, None] * omega[None, :]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


class _Net:
    """Weights and norms of one bundle in float64, and the operations that use them."""

    def __init__(self, bundle: SpecBundle) -> None:
        self.w = {k: v.astype(np.float64) for k, v in bundle.weights().items()}
        self.s = {k: v.astype(np.float64) for k, v in bundle.state.items()}
        arch = bundle.manifest["arch"]
        self.config = resolve(arch["name"], arch["config"])

    def bn(self, h: np.ndarray, name: str) -> np.ndarray:
        view = (1, -1) + (1,) * (h.ndim - 2)
        return h * self.s[f"{name}.scale"].reshape(view) + self.s[f"{name}.shift"].reshape(view)

    def ln(self, h: np.ndarray, name: str) -> np.ndarray:
        mu = h.mean(axis=-1, keepdims=True)
        var = ((h - mu) ** 2).mean(axis=-1, keepdims=True)
        return (h - mu) / np.sqrt(var + 1e-5) * self.s[f"{name}.weight"] + self.s[f"{name}.bias"]


def _mlp(n: _Net, x: np.ndarray) -> np.ndarray:
    h = x.reshape(x.shape[0], -1)
    for i in range(len(n.config["hidden"])):
        h = relu(n.bn(linear(h, n.w[f"layers.{i}"]), f"norms.{i}"))
    return linear(h, n.w["head"])


def _convmixer(n: _Net, x: np.ndarray) -> np.ndarray:
    c = n.config
    h = n.bn(gelu(conv(x, n.w["stem"], stride=c["patch"])), "stem_bn")
    for i in range(c["depth"]):
        dw = conv(h, n.w[f"blocks.{i}.depthwise"], pad=same(c["kernel"]), groups=c["width"])
        h = h + n.bn(gelu(dw), f"blocks.{i}.bn1")
        h = n.bn(gelu(conv(h, n.w[f"blocks.{i}.pointwise"])), f"blocks.{i}.bn2")
    return linear(pool(h), n.w["head"])


def _resnet(blocks: int) -> Callable[[_Net, np.ndarray], np.ndarray]:
    def forward(n: _Net, x: np.ndarray) -> np.ndarray:
        h = relu(n.bn(conv(x, n.w["conv1"], pad=(1, 1, 1, 1)), "bn1"))
        for s, planes in enumerate((16, 32, 64)):
            for j in range(blocks):
                t = 2 if s > 0 and j == 0 else 1
                name = f"stages.{s}.{j}"
                r = relu(n.bn(conv(h, n.w[f"{name}.conv1"], t, (1, 1, 1, 1)), f"{name}.bn1"))
                r = n.bn(conv(r, n.w[f"{name}.conv2"], 1, (1, 1, 1, 1)), f"{name}.bn2")
                h = relu(r + shortcut(h, t, planes))
        return linear(pool(h), n.w["head"])

    return forward


def _vit(n: _Net, x: np.ndarray) -> np.ndarray:
    c = n.config
    w, p, heads = c["width"], c["patch"], c["heads"]
    g, e = c["image_size"] // p, w // heads
    z = conv(x, n.w["patch_embed"], stride=p)  # (B, w, g, g)
    b = z.shape[0]
    h = z.reshape(b, w, g * g).transpose(0, 2, 1) + position_table(g, w).astype(np.float64)
    scale = float(np.float32(1.0 / math.sqrt(e)))
    for i in range(c["depth"]):
        u = linear(n.ln(h, f"blocks.{i}.norm1"), n.w[f"blocks.{i}.attn.qkv"])  # (B, T, 3w)
        q, k, v = split_qkv(u, w, heads)
        att = softmax(np.einsum("btmk,bsmk->bmts", q, k) * scale)  # (B, heads, T, T)
        o = np.einsum("bmts,bsmk->btmk", att, v).reshape(b, -1, w)
        h = h + linear(o, n.w[f"blocks.{i}.attn.proj"])
        mlp = gelu(linear(n.ln(h, f"blocks.{i}.norm2"), n.w[f"blocks.{i}.fc1"]))
        h = h + linear(mlp, n.w[f"blocks.{i}.fc2"])
    return linear(n.ln(h, "norm").mean(axis=1), n.w["head"])


_FORWARD: dict[str, Callable[[_Net, np.ndarray], np.ndarray]] = {
    "mlp": _mlp,
    "convmixer": _convmixer,
    "resnet20": _resnet(3),
    "resnet32": _resnet(5),
    "resnet56": _resnet(9),
    "vit": _vit,
}


def logits(bundle: SpecBundle, pixels: np.ndarray) -> np.ndarray:
    """(B, C, S, S) pixels -> (B, K) logits, float64 (section 5.3)."""
    inp = bundle.manifest["input"]
    view = (1, -1, 1, 1)
    x = (_fl32(pixels) - _fl32(inp["mean"]).reshape(view)) / _fl32(inp["std"]).reshape(view)
    return _FORWARD[bundle.manifest["arch"]["name"]](_Net(bundle), x)
