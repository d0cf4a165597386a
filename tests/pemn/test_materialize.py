"""Materialization of bundles over shared backbones (round trips live in
tests/pemn/bundle/test_roundtrip.py): what a backbone may be built from."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pemn.bundle import DigestMismatch, read_bundle
from pemn.materialize import Backbone
from tests.pemn.bundle import craft, spec_reader
from tests.pemn.bundle.craft import Tensor, tiny, tiny_manifest, tiny_tensors


def _planted() -> bytes:
    """A bundle whose embedded prototype is not the generator's, with a manifest
    digest that matches the embedded values: valid on its own."""
    fixed = spec_reader.generate(craft.TINY_LAYERS, {"name": "mask", "seed": 0})
    other = {k: (v * 0 + 0.5).astype(np.float32) for k, v in fixed.items()}
    raw = b"".join(other[n].astype("<f4").tobytes() for n, _ in craft.TINY_LAYERS)
    manifest = tiny_manifest(prototype_embedded=True, prototype_digest=spec_reader.digest(other))
    return tiny(manifest, [*tiny_tensors(), Tensor("prototype", "F32", [18], raw)])


def test_planted_prototype_does_not_become_the_shared_backbone() -> None:
    bundle = read_bundle(_planted())  # self-consistent, so the reader accepts it
    backbone = Backbone.for_bundle(bundle)  # generated from the seed, not the file
    genuine = read_bundle(tiny())
    assert backbone.fingerprint == genuine.fingerprint
    assert backbone.digest == genuine.manifest.prototype_digest
    backbone.task(genuine)  # other tenants' tasks still load
    with pytest.raises(DigestMismatch, match="prototype digest"):
        backbone.task(bundle)


def test_embedded_prototype_is_used_only_when_trusted() -> None:
    bundle = read_bundle(_planted())
    backbone = Backbone.for_bundle(bundle, use_embedded=True)
    task = backbone.task(bundle)
    weight = dict(task.module.named_parameters())["net.layers.0.weight"].numpy()
    mask = np.unpackbits(np.frombuffer(craft.TINY_MASKS[:2], np.uint8), bitorder="little")[:12]
    assert np.array_equal(weight.reshape(-1), 0.5 * mask.astype(np.float32))


# ------------------------------------------------------------- tiers and sharing


def test_packed_task_and_weights_are_compact_and_share_the_backbone() -> None:
    import torch

    from pemn.prototype import Strategy, generate
    from pemn.testing import make_bundle

    bundle = read_bundle(make_bundle("convmixer", {"width": 16, "depth": 2}, Strategy("mp")))
    backbone = Backbone.for_bundle(bundle)
    fixed = generate(bundle.layout.layers, bundle.strategy)
    for name, w in fixed.items():
        assert torch.equal(backbone.fixed[name], w)
    n = bundle.stats.n
    assert (
        backbone.nbytes == 4 * 8 * backbone.mask_bytes
        and n <= 8 * backbone.mask_bytes < n + 8 * len(fixed)
    )
    packed = backbone.pack(bundle)
    state = sum(e.numel for e in bundle.layout.trained)
    assert packed.masks.nbytes == backbone.mask_bytes == bundle.masks.nbytes
    assert packed.nbytes == backbone.mask_bytes + 4 * (state + 2 * 3)  # masks, norms, mean+std
    weights = backbone.materialize(packed)
    assert weights.nbytes == backbone.task_nbytes
    # every maskable weight is fixed * mask, in the shared flat layout
    masks = bundle.layer_masks()
    for s, view in zip(backbone.layout.layers, weights.views, strict=False):
        bits = np.unpackbits(masks[s.name], bitorder="little")[: s.numel].reshape(s.shape)
        np.testing.assert_array_equal(view.numpy(), fixed[s.name].numpy() * bits)
    # materializing into given buffers writes there and nowhere else
    out = torch.full((backbone.size,), float("nan"))
    again = backbone.materialize(packed, out)
    assert again.flat is out and torch.equal(out, weights.flat)


def test_a_task_of_another_backbone_is_refused_before_any_work() -> None:
    import dataclasses

    from pemn.testing import make_bundle

    a = read_bundle(make_bundle("convmixer", {"width": 16, "depth": 2}))
    b = read_bundle(make_bundle("convmixer", {"width": 8, "depth": 2}))
    backbone = Backbone.for_bundle(a)
    with pytest.raises(Exception, match="bundle needs backbone"):
        backbone.pack(b)
    other = Backbone.for_bundle(b).pack(b)
    with pytest.raises(ValueError, match="is not for"):
        backbone.materialize(other)
    short = dataclasses.replace(backbone.pack(a), masks=np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="layout"):
        backbone.materialize(short)


def test_standalone_modules_are_independent_of_each_other_and_of_the_backbone() -> None:
    import torch

    bundle = read_bundle(tiny())
    backbone = Backbone.for_bundle(bundle)
    a, b = backbone.task(bundle).module, backbone.task(bundle).module
    calls = []
    a.net.head.register_forward_hook(lambda *args: calls.append(1))
    a.net.head.weight = torch.nn.Parameter(torch.zeros(2, 3), requires_grad=False)
    x = torch.rand(2, 1, 2, 2)
    with torch.no_grad():
        b(x)
        assert not calls and b.net.head.weight.abs().sum() > 0
        a(x)
    assert calls == [1]
    c = backbone.task(bundle).module
    assert not c.net.head._forward_hooks and c.net.head.weight.abs().sum() > 0
    assert c.net.norms[0].eps == 0.0 and c.net.norms[0].running_var.tolist() == [1.0] * 3
    # and the backbone's own network still runs the task
    packed = backbone.pack(bundle)
    with torch.inference_mode():
        torch.testing.assert_close(backbone.forward(x, backbone.materialize(packed)), c(x))


def test_bit_table_unpacks_like_numpy() -> None:
    import torch

    from pemn.materialize import _unpack_by_table, unpack_bits

    packed = torch.randint(
        0, 256, (1000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(_unpack_by_table(packed), unpack_bits(packed))
    assert unpack_bits(torch.tensor([0b00000101], dtype=torch.uint8)).tolist()[:3] == [
        True,
        False,
        True,
    ]


def test_layout_and_digest_caches() -> None:
    from pemn.bundle.reader import generated_digest
    from pemn.bundle.spec import arch_layout
    from pemn.materialize import clear_caches

    clear_caches()
    small = arch_layout("convmixer", {"depth": 2})
    assert arch_layout("convmixer", {"depth": 2}) is small
    big = arch_layout("convmixer", {"depth": 300, "width": 8})  # 602 layers: not kept
    assert arch_layout("convmixer", {"depth": 300, "width": 8}) is not big
    calls = []
    for _ in range(3):
        generated_digest("sha256:test", lambda: calls.append(1) or {})
    assert len(calls) == 1
    clear_caches()
    assert arch_layout("convmixer", {"depth": 2}) is not small
    generated_digest("sha256:test", lambda: calls.append(1) or {})
    assert len(calls) == 2


def test_weight_reuse_counts_output_positions_and_is_computed_once_when_asked() -> None:
    """A convolution uses its weights once per output pixel, a linear layer once per
    sample here; the figure is worked out only when asked, once per architecture."""
    from pemn.bundle.spec import arch_layout
    from pemn.caches import CACHES
    from pemn.materialize import clear_caches
    from pemn.prototype import Strategy

    clear_caches()
    config = {"depth": 2, "width": 8, "image_size": 32, "patch": 2}
    layers = arch_layout("convmixer", config).layers
    positions = {s.name: 1 if s.name == "head" else (32 // 2) ** 2 for s in layers}
    numel = {s.name: int(np.prod(s.shape)) for s in layers}
    want = sum(numel[n] * positions[n] for n in numel) / sum(numel.values())
    one = Backbone("convmixer", config, Strategy("mp", seed=1))
    assert len(CACHES.reuse) == 0  # building a backbone does not pay for it
    assert one.weight_reuse == pytest.approx(want)
    other = Backbone("convmixer", config, Strategy("mp", seed=2))  # another backbone
    assert other.fingerprint != one.fingerprint
    assert other.weight_reuse == one.weight_reuse and len(CACHES.reuse) == 1
    assert Backbone("mlp", {}, Strategy("mp")).weight_reuse == 1.0


def test_a_fresh_process_builds_a_backbone_and_its_reuse_without_importing_dynamo() -> None:
    """A process's first meta-device forward imports torch._dynamo (about 1.5 s): the
    cost a server's first request paid when the weight-reuse figure used one."""
    code = (
        "import sys\n"
        "from pemn.materialize import Backbone\n"
        "from pemn.prototype import Strategy\n"
        "b = Backbone('convmixer', {'depth': 2, 'width': 8}, Strategy('mp'))\n"
        "assert b.weight_reuse > 1\n"
        "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout[:500]


@pytest.mark.parametrize(
    ("arch", "config"),
    [
        ("convmixer", {"in_channels": 1, "image_size": 28, "width": 16, "depth": 2, "patch": 2}),
        ("resnet20", {"in_channels": 3, "image_size": 32}),
    ],
)
def test_channels_last_backbone_runs_channels_last_and_agrees_with_nchw(arch, config) -> None:
    import torch

    from pemn.prototype import Strategy
    from pemn.testing import make_bundle

    b = read_bundle(make_bundle(arch, config, Strategy("mp", seed=0)))
    nchw, fast = Backbone.for_bundle(b), Backbone.for_bundle(b, channels_last=True)
    outs: list[torch.Tensor] = []
    for m in fast._net.modules():
        if type(m).__name__ == "_Conv2d":
            m.register_forward_hook(lambda _m, _i, out: outs.append(out))
    x = torch.rand(4, *b.manifest.input.shape, generator=torch.Generator().manual_seed(0))
    want = nchw.forward(x, nchw.materialize(nchw.pack(b)))
    got = fast.forward(x, fast.materialize(fast.pack(b)))
    assert outs and all(
        o.is_contiguous(memory_format=torch.channels_last) and not o.is_contiguous() for o in outs
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
