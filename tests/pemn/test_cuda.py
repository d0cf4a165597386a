"""The CUDA path of materialization and of the backbone's network: the same code as
on the CPU (device-agnostic tensor operations), checked against the CPU. Skipped
where no GPU is present (bench/gpu.sh runs these on an accelerator)."""

from __future__ import annotations

import pytest
import torch

from pemn.bundle import read_bundle
from pemn.materialize import Backbone
from pemn.prototype import Strategy
from pemn.testing import make_bundle

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CASES = [
    ("convmixer", {"in_channels": 1, "image_size": 28, "width": 32, "depth": 2, "patch": 2}),
    ("resnet20", {"in_channels": 3, "image_size": 32}),
    ("vit", {"in_channels": 3, "image_size": 16, "width": 32, "depth": 2, "heads": 4, "patch": 4}),
    ("mlp", {"in_channels": 1, "image_size": 8, "hidden": [32, 16]}),
]


@pytest.mark.parametrize(("arch", "config"), CASES)
def test_cuda_tasks_equal_cpu_tasks_alone_and_mixed(arch, config):
    bundles = [
        read_bundle(make_bundle(arch, config, Strategy("rp", seed=0, ratio=0.01), mask_seed=i))
        for i in range(3)
    ]
    cpu, gpu = Backbone.for_bundle(bundles[0]), Backbone.for_bundle(bundles[0], "cuda")
    assert gpu.digest == cpu.digest  # generated on the CPU, then moved
    x = torch.rand(6, *bundles[0].manifest.input.shape, generator=torch.Generator().manual_seed(0))
    cw = [cpu.materialize(cpu.pack(b)) for b in bundles]
    packed = [gpu.pack(b) for b in bundles]
    gw = [gpu.materialize(p) for p in packed]
    for c, g in zip(cw, gw, strict=True):
        assert g.flat.device.type == "cuda"
        torch.testing.assert_close(g.flat.cpu(), c.flat)  # the bit unpacking agrees exactly
        torch.testing.assert_close(gpu.forward(x, g).cpu(), cpu.forward(x, c), rtol=1e-4, atol=1e-4)
    order = [0, 1, 2, 2, 1, 0]
    want = torch.stack([cpu.forward(x[i : i + 1], cw[t])[0] for i, t in enumerate(order)])
    for got in (
        gpu.forward_mixed(x, [gw[t] for t in order]),
        gpu.forward_mixed(x, [packed[t] for t in order]),
        gpu.forward_grouped(x, [gw[t] for t in order]),
    ):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
