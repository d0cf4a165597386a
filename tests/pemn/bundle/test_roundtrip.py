"""A trained masked network and its materialized bundle compute the same function."""

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load
from torch import nn

from pemn.archs import create_model
from pemn.bundle import InputSpec, inspect_bundle, read_bundle, write_bundle
from pemn.layers import layer_specs
from pemn.masking import extract_masks, to_masked, trained_state
from pemn.materialize import Backbone, materialize, unpack_bits
from pemn.prototype import Strategy, generate
from pemn.testing import ARCHS, SMALL, STRATEGIES, make_bundle, strategy_id

SPEC1 = InputSpec(shape=(1, 28, 28), mean=(0.3,), std=(0.35,))


def _trained(arch, strategy, steps=2):
    """A masked network after a few AdamW steps (scores, norms and statistics moved)."""
    torch.manual_seed(0)
    model = create_model(arch, in_channels=1, image_size=28, **SMALL[arch])
    fixed = generate(layer_specs(model), strategy)
    to_masked(model, fixed, 0.5, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(steps):
        x = torch.rand(8, 1, 28, 28)
        loss = nn.functional.cross_entropy(model((x - 0.3) / 0.35), torch.randint(0, 10, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    # calibrate BatchNorm statistics as a finished training run would have them
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average
        for _ in range(2):
            model((torch.rand(16, 1, 28, 28) - 0.3) / 0.35)
    return model.eval()


def _header(data: bytes) -> dict:
    (n,) = struct.unpack_from("<Q", data)
    return json.loads(data[8 : 8 + n])


def _write(arch, strategy, model, **kw):
    return write_bundle(
        arch=arch,
        config={"in_channels": 1, "image_size": 28, **SMALL[arch]},
        strategy=strategy,
        density=0.5,
        masks=extract_masks(model),
        trained=trained_state(model),
        input_spec=SPEC1,
        labels=[f"c{i}" for i in range(10)],
        metrics={"test_accuracy": 0.25},
        **kw,
    )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy", STRATEGIES, ids=strategy_id)
def test_materialized_bundle_equals_trained_network(arch, strategy):
    """With the norm state in float32 the bundle is the trained network exactly."""
    model = _trained(arch, strategy)
    data = _write(arch, strategy, model, state_dtype="float32")
    net = materialize(read_bundle(data))
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        expected = model((x - 0.3) / 0.35)
        got = net(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.training


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("state_dtype", ["float16", "bfloat16"])
def test_reduced_precision_state_is_the_rounded_state(arch, state_dtype):
    """float16 / bfloat16: the reader hands out the float32 values of the rounded
    state (torch's rounding), and the network stays close to the trained one."""
    model = _trained(arch, Strategy("rp", ratio=1e-2))
    exact = read_bundle(_write(arch, Strategy("rp", ratio=1e-2), model, state_dtype="float32"))
    data = _write(arch, Strategy("rp", ratio=1e-2), model, state_dtype=state_dtype)
    bundle = read_bundle(data)
    assert bundle.state_dtype == {"float16": "F16", "bfloat16": "BF16"}[state_dtype]
    assert bundle.state.dtype == np.float32 and not bundle.state.flags.writeable
    rounded = torch.from_numpy(np.array(exact.state)).to(getattr(torch, state_dtype)).float()
    assert np.array_equal(bundle.state, rounded.numpy())
    begin, end = _header(data)["state"]["data_offsets"]
    assert end - begin == 2 * bundle.state.size  # half the bytes of float32
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        want, got = model((x - 0.3) / 0.35), materialize(bundle)(x)
    rel = float((got - want).abs().max() / want.abs().max())
    assert rel < (1e-2 if state_dtype == "float16" else 5e-2), rel


@pytest.mark.parametrize("arch", ARCHS)
def test_writer_is_deterministic_and_official_reader_agrees(arch):
    model = _trained(arch, Strategy("mp", seed=4), steps=1)
    a, b = _write(arch, Strategy("mp", seed=4), model), _write(arch, Strategy("mp", seed=4), model)
    assert a == b
    tensors = st_load(a)
    bundle = read_bundle(a)
    assert sorted(tensors) == ["masks", "state"]
    assert np.array_equal(tensors["masks"], bundle.masks)
    assert np.array_equal(tensors["state"], bundle.state)


def test_shared_backbone_serves_several_tasks():
    tasks = [make_bundle(mask_seed=i) for i in range(3)]
    bundles = [read_bundle(t) for t in tasks]
    assert len({b.fingerprint for b in bundles}) == 1
    backbone = Backbone.for_bundle(bundles[0], "cpu")
    x = torch.rand(4, 1, 28, 28)
    outs = []
    for b in bundles:
        task = backbone.task(b)
        alone = materialize(b)
        with torch.no_grad():
            torch.testing.assert_close(task(x), alone(x), rtol=0, atol=0)
        outs.append(task(x))
        assert task.nbytes < 1.1 * backbone.nbytes + 4096
    assert not torch.equal(outs[0], outs[1])  # different masks, different functions


def test_task_for_another_backbone_is_refused():
    a = read_bundle(make_bundle())
    b = read_bundle(make_bundle(strategy=Strategy("mp", seed=1)))
    backbone = Backbone.for_bundle(a)
    with pytest.raises(ValueError, match="backbone"):
        backbone.task(b)


def test_embedded_prototype_round_trip():
    data = make_bundle(embed_prototype=True)
    plain = make_bundle()
    assert len(data) > len(plain)
    b = read_bundle(data)
    assert b.prototype is not None
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(
            materialize(b)(x), materialize(read_bundle(plain))(x), rtol=0, atol=0
        )


def test_unpack_bits_is_lsb_first():
    packed = torch.tensor([0b00000101, 0b10000000], dtype=torch.uint8)
    assert unpack_bits(packed).tolist() == [True, False, True] + [False] * 5 + [False] * 7 + [True]


def test_inspect_summary():
    data = make_bundle(metrics={"test_accuracy": 0.875})
    s = inspect_bundle(data)
    assert s["file_size"] == len(data)
    assert s["N"] == 28 * 28 * 64 + 64 * 10
    assert s["U"] == int(0.01 * 28 * 28 * 64) + 1
    assert s["metrics"] == {"test_accuracy": 0.875}
    assert s["dense_fp32_size"] == 4 * (s["N"] + 4 * 64)
    assert s["size_ratio"] == s["dense_fp32_size"] / len(data)
    assert s["content_id"].startswith("sha256:") and s["fingerprint"].startswith("sha256:")
