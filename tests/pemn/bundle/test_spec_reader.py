"""The spec is enough to write a reader: ``spec_reader`` (written from
docs/bundle-format.md, no ``pemn`` imports) agrees with ``pemn.bundle`` on real
bundles of both format versions and every state precision, field by field and
bit by bit, and on the document's test vectors; ``spec_forward`` computes the
same logits as ``pemn.materialize`` on every architecture."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pemn.archs import resolve_config
from pemn.bundle import read_bundle
from pemn.bundle.bits import kept_count
from pemn.bundle.spec import arch_layout
from pemn.layers import LayerSpec
from pemn.materialize import Backbone, materialize
from pemn.prototype import Strategy, digest, generate, normal
from pemn.testing import ARCHS, SMALL, make_bundle
from tests.pemn.bundle import spec_forward, spec_reader


@pytest.mark.parametrize("module", [spec_reader, spec_forward], ids=lambda m: m.__name__)
def test_spec_reader_imports_nothing_from_pemn(module) -> None:
    tree = ast.parse(Path(module.__file__).read_text())
    modules = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in (n.names if isinstance(n, ast.Import) else [n])
    ]
    allowed = {"tests.pemn.bundle.spec_reader"}  # the forward pass uses the second reader
    assert modules and not [
        m
        for m in modules
        if m and m not in allowed and m.split(".")[0] in ("pemn", "tests", "torch", "scipy")
    ]


# ------------------------------------------------------------- test vectors (sections 8, 9)


@pytest.mark.parametrize("impl", [normal, spec_reader.normal], ids=["pemn", "spec"])
def test_generator_vectors(impl) -> None:
    assert [f"{v:.17g}" for v in impl(0, 0, 4)] == [
        "-0.45275774021745802",
        "0.20776603893419193",
        "2.6506058120796689",
        "-0.49042282539864768",
    ]
    assert [f"{v:.17g}" for v in impl(7, 3, 4)] == [
        "1.5901902545652091",
        "-0.18325992748991063",
        "1.3951833551868547",
        "-0.038120968060186784",
    ]
    assert len(impl(5, 1, 3)) == 3


def test_digest_vectors() -> None:
    fc = generate([LayerSpec("fc", (2, 3))], Strategy("mask", seed=0))
    assert [float(v).hex() for v in fc["fc"].numpy().ravel()] == [
        "-0x1.7a8c200000000p-2",
        "0x1.5b6c5a0000000p-3",
        "0x1.1504da0000000p+1",
        "-0x1.9a09f20000000p-2",
        "-0x1.9d48420000000p-1",
        "0x1.874ffe0000000p+0",
    ]
    want = "sha256:4fcb8bae3d0796fdc36431204ee13719283be2beebe9f1fc8c4ad47e59f6d0fc"
    assert digest(fc) == want
    assert (
        spec_reader.digest(spec_reader.generate([("fc", [2, 3])], {"name": "mask", "seed": 0}))
        == want
    )
    rp = generate(
        [LayerSpec("a", (2, 3)), LayerSpec("b", (4, 2))], Strategy("rp", seed=1, ratio=0.25)
    )
    want = "sha256:78abc9004418aed473912e42ec54e822a9cfd39495f83d65ecc782c78e12631b"
    assert digest(rp) == want
    assert len(set(rp["b"].numpy().ravel().tolist())) == 3  # U = min(floor(0.25 * 8) + 1, 8)
    spec = spec_reader.generate(
        [("a", [2, 3]), ("b", [4, 2])], {"name": "rp", "seed": 1, "ratio": 0.25}
    )
    assert spec_reader.digest(spec) == want


@pytest.mark.parametrize(
    ("n", "density"), [(10, 0.5), (6272, 0.01), (3, 0.01), (7, 0.999), (1, 0.5)]
)
def test_kept_count(n: int, density: float) -> None:
    assert spec_reader.kept(n, density) == kept_count(n, density)
    assert (kept_count(10, 0.5), kept_count(6272, 0.01)) == (5, 63)


def test_bit_order_worked_example() -> None:
    """Section 6.1: [[1,0,1,1,0],[0,0,1,0,1]] is stored as 0x8D 0x02."""
    mask = np.array([[1, 0, 1, 1, 0], [0, 0, 1, 0, 1]], dtype=bool)
    from pemn.bundle.writer import pack_mask

    assert pack_mask(mask).tobytes() == b"\x8d\x02"


# ------------------------------------------------------------- layouts (section 5)

LAYOUT_CONFIGS = (
    [(arch, {}) for arch in ARCHS]
    + [(arch, {"in_channels": 1, "image_size": 28, **SMALL[arch]}) for arch in ARCHS]
    + [
        ("mlp", {"hidden": []}),
        ("mlp", {"hidden": [5, 7, 3], "num_classes": 4}),
        ("convmixer", {"width": 12, "depth": 3, "kernel": 4, "patch": 7, "image_size": 28}),
        ("vit", {"width": 12, "heads": 3, "depth": 2, "patch": 2, "mlp_ratio": 3, "image_size": 6}),
        ("resnet56", {"in_channels": 2, "num_classes": 100}),
    ]
)


@pytest.mark.parametrize(("arch", "config"), LAYOUT_CONFIGS)
def test_layout_formulas_match_the_architectures(arch: str, config: dict) -> None:
    full = resolve_config(arch, **config)
    got = spec_reader.layout(arch, spec_reader.resolve(arch, config))
    want = arch_layout(arch, full)
    assert got.layers == [(s.name, list(s.shape)) for s in want.layers]
    assert got.trained == [(e.name, e.shape) for e in want.trained]
    assert got.norms == {k: kind for k, (kind, _) in want.norms.items()}
    assert got.extra == want.extra_values
    assert all(eps == 1e-5 for _, eps in want.norms.values())
    assert spec_reader.resolve(arch, config) == {
        k: list(v) if isinstance(v, tuple) else v for k, v in full.items()
    }


def test_resnet56_has_the_papers_weight_count() -> None:
    lay = spec_reader.layout("resnet56", spec_reader.resolve("resnet56", {}))
    assert sum(math.prod(s) for _, s in lay.layers) == 848_944


# ------------------------------------------------------------- real bundles

BUNDLES = [  # (arch, strategy, embed, write_bundle options)
    ("mlp", Strategy("mp", seed=2), False, {}),
    ("mlp", Strategy("rp", seed=5, ratio=1e-2, scale="fan_in"), True, {"format_version": "1.0"}),
    ("convmixer", Strategy("mask", seed=1), False, {"state_dtype": "bfloat16"}),
    ("convmixer", Strategy("one_layer", seed=3), False, {"format_version": "1.0"}),
    ("resnet20", Strategy("rp", ratio=1e-3), False, {"state_dtype": "float32"}),
    ("vit", Strategy("mp", seed=4, scale="fan_in"), True, {}),
    ("vit", Strategy("one_layer"), False, {"state_dtype": "bfloat16"}),
]


def _same_manifest(spec: dict, ours: dict) -> None:
    """The spec reader's manifest (the file's JSON) and pemn's (typed, defaults and
    derived fields filled in) say the same things."""
    defaults = {
        "prototype_embedded": False,
        "metrics": {},
        "provenance": {},
        "generator": spec_reader.GENERATOR,
    }
    for key, value in ours.items():
        if key in ("layers", "trained", "format") and key not in spec:
            continue  # 2.x: derived, compared through the layouts
        got = spec.get(key, defaults.get(key))
        if key == "arch":  # 2.x stores only the config values that are not defaults
            got = {"name": got["name"], "config": spec_reader.resolve(got["name"], got["config"])}
        if key == "strategy":
            got = {"ratio": None, "scale": "paper", **got}
        if key == "input":
            got = {"dtype": "float32", "range": [0.0, 1.0], **got}
        assert got == value, key


@pytest.mark.parametrize(("arch", "strategy", "embed", "options"), BUNDLES)
def test_spec_reader_agrees_with_read_bundle(
    arch: str, strategy: Strategy, embed: bool, options: dict
) -> None:
    config = None if arch == "mlp" else {"in_channels": 1, "image_size": 28, **SMALL[arch]}
    data = make_bundle(
        arch, config, strategy, density=0.3, mask_seed=7, embed_prototype=embed, **options
    )
    ours = read_bundle(data)
    spec = spec_reader.read(data)

    _same_manifest(spec.manifest, ours.manifest.model_dump(mode="json"))
    assert spec.manifest["format_version"] == options.get("format_version", "2.0")
    assert spec.fingerprint == ours.fingerprint
    assert spec.layout.trained == [(e.name, e.shape) for e in ours.layout.trained]
    assert spec.layout.layers == [(s.name, list(s.shape)) for s in ours.layout.layers]
    # masks: same bits, same layers
    for name, packed in ours.layer_masks().items():
        assert (
            np.packbits(spec.masks[name].reshape(-1), bitorder="little").tobytes()
            == packed.tobytes()
        )
    # state: same values under the same names
    assert list(spec.state) == list(ours.state_tensors())
    for name, values in ours.state_tensors().items():
        assert np.array_equal(spec.state[name], values)
    # the regenerated (or embedded) prototype is the same, bit for bit
    fixed = generate(ours.layout.layers, ours.strategy)
    theirs = spec.prototype if embed else spec.fixed
    assert theirs is not None
    for name, w in fixed.items():
        assert np.array_equal(theirs[name], w.numpy()), name
    # materialized weights (fixed * mask) and folded norms equal the real network's
    module = Backbone.for_bundle(ours).task(ours).module
    params = dict(module.named_parameters())
    for name, w in spec.weights().items():
        assert np.array_equal(params[f"net.{name}.weight"].numpy(), w), name
    torch.manual_seed(0)
    for name, kind in spec.layout.norms.items():
        norm = module.net.get_submodule(name)
        if kind == "batchnorm":
            assert isinstance(norm, nn.modules.batchnorm._BatchNorm)
            x = torch.randn(
                5, norm.num_features, *([3, 3] if isinstance(norm, nn.BatchNorm2d) else [])
            )
            with torch.no_grad():
                torch.testing.assert_close(
                    norm(x), torch.from_numpy(spec.apply_norm(name, x.numpy())), rtol=0, atol=1e-6
                )
        else:
            assert np.array_equal(
                params[f"net.{name}.weight"].numpy(), spec.state[f"{name}.weight"]
            )


def test_spec_reader_verify_false_skips_only_the_digest() -> None:
    data = make_bundle()
    assert spec_reader.read(data, verify=False).fixed is None


# ------------------------------------------------------------- the computation (section 5.3)

FORWARD_CONFIGS = [
    (arch, {"in_channels": 1, "image_size": 28, **SMALL[arch]}) for arch in ARCHS
] + [
    # an even depthwise kernel (asymmetric "same" padding), a patch that leaves rows unused
    (
        "convmixer",
        {"width": 12, "depth": 3, "kernel": 4, "patch": 5, "image_size": 28, "in_channels": 2},
    ),
    # 3 heads of 4, mlp_ratio 3, 9 tokens
    ("vit", {"width": 12, "heads": 3, "depth": 2, "patch": 2, "mlp_ratio": 3, "image_size": 6}),
    # odd sizes through the stride-2 stages (9 -> 5 -> 3), 3 input channels
    ("resnet20", {"image_size": 9, "in_channels": 3, "num_classes": 4}),
    ("mlp", {"hidden": [], "image_size": 4, "in_channels": 2}),
]
TOLERANCE = 1e-5  # |spec - materialize| <= TOLERANCE * max(1, |logit|)


def _logits_both_ways(arch: str, config: dict, **options) -> tuple[np.ndarray, np.ndarray]:
    data = make_bundle(arch, config, density=0.5, mask_seed=3, **options)
    bundle = read_bundle(data)
    c, s = bundle.manifest.input.shape[:2]
    x = torch.rand(3, c, s, s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = materialize(bundle)(x).double().numpy()
    return spec_forward.logits(spec_reader.read(data), x.numpy()), want


def _worst(got: np.ndarray, want: np.ndarray) -> float:
    return float((np.abs(got - want) / np.maximum(1.0, np.abs(want))).max())


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize(("arch", "config"), FORWARD_CONFIGS, ids=lambda v: str(v))
def test_spec_forward_computes_the_logits_of_materialize(arch: str, config: dict) -> None:
    got, want = _logits_both_ways(arch, config)
    assert got.shape == want.shape == (3, config.get("num_classes", 10))
    assert _worst(got, want) <= TOLERANCE
    assert np.abs(want).max() > 1e-3  # a network that computes something


def _tanh_gelu(z: np.ndarray) -> np.ndarray:
    return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


_POSITIONS = spec_forward.position_table


def _rows_first(g: int, w: int) -> np.ndarray:
    t = _POSITIONS(g, w)
    q = w // 4
    return np.concatenate([t[:, 2 * q :], t[:, : 2 * q]], axis=1)


def _shortcut_padded_after(h: np.ndarray, t: int, planes: int) -> np.ndarray:
    if t == 1 and h.shape[1] == planes:
        return h
    return np.pad(h[:, :, ::t, ::t], ((0, 0), (0, planes - h.shape[1]), (0, 0), (0, 0)))


def _qkv_interleaved(u: np.ndarray, w: int, heads: int) -> list[np.ndarray]:
    b, t, _ = u.shape
    per_head = u.reshape(b, t, heads, 3, w // heads)
    return [per_head[:, :, :, j] for j in range(3)]


WRONG = {  # each a plausible misreading of section 5.3; each must break the agreement
    "gelu-tanh": ("convmixer", "gelu", _tanh_gelu),
    "same-padding-top-left": ("convmixer-even", "same", lambda k: (k // 2, (k - 1) // 2) * 2),
    "positions-rows-first": ("vit", "position_table", _rows_first),
    "qkv-per-head": ("vit", "split_qkv", _qkv_interleaved),
    "shortcut-zeros-after": ("resnet20", "shortcut", _shortcut_padded_after),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("name", sorted(WRONG))
def test_a_misread_computation_disagrees(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1e-5 agreement can fail: reading any one rule differently breaks it."""
    target, attr, replacement = WRONG[name]
    arch, config = {
        "convmixer": FORWARD_CONFIGS[ARCHS.index("convmixer")],
        "convmixer-even": FORWARD_CONFIGS[len(ARCHS)],
        "vit": FORWARD_CONFIGS[ARCHS.index("vit")],
        "resnet20": FORWARD_CONFIGS[ARCHS.index("resnet20")],
    }[target]
    monkeypatch.setattr(spec_forward, attr, replacement)
    got, want = _logits_both_ways(arch, config)
    assert _worst(got, want) > 5 * TOLERANCE, name  # the tanh GELU: 10x, the others far more
