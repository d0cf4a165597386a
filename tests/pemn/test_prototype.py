import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pemn.archs import create_model
from pemn.errors import InvalidParameterError, UnknownStrategyError
from pemn.layers import layer_specs
from pemn.prototype import Strategy, digest, generate, normal, paper_compression, stats
from pemn.testing import ARCHS, SMALL, STRATEGIES, strategy_id

_MASK64 = (1 << 64) - 1


def _mix64_scalar(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _normal_scalar(seed: int, stream: int, n: int) -> list[float]:
    """The generator exactly as documented, one value at a time in pure Python."""
    key = _mix64_scalar((_mix64_scalar(seed) + stream) & _MASK64)
    out: list[float] = []
    i = 1
    while len(out) < n:
        x0 = _mix64_scalar((key + i * 0x9E3779B97F4A7C15) & _MASK64)
        x1 = _mix64_scalar((key + (i + 1) * 0x9E3779B97F4A7C15) & _MASK64)
        u1 = ((x0 >> 11) + 1) * 2.0**-53
        u2 = (x1 >> 11) * 2.0**-53
        r = math.sqrt(-2.0 * math.log(u1))
        out += [r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)]
        i += 2
    return out[:n]


@pytest.mark.parametrize(("seed", "stream", "n"), [(0, 0, 7), (1234567, 3, 64), (2**53 - 1, 17, 5)])
def test_generator_matches_its_documented_definition(seed, stream, n):
    vectorized = normal(seed, stream, n)
    reference = np.array(_normal_scalar(seed, stream, n))
    # float64 values may differ in the last ulp between libm and numpy's SIMD math
    np.testing.assert_allclose(vectorized, reference, rtol=1e-13, atol=1e-15)
    assert np.array_equal(vectorized.astype(np.float32), reference.astype(np.float32))


def test_generator_streams_and_seeds_differ():
    a, b, c = normal(0, 0, 100), normal(0, 1, 100), normal(1, 0, 100)
    assert not np.allclose(a, b) and not np.allclose(a, c)
    big = normal(7, 0, 200_000)
    assert abs(big.mean()) < 0.01 and abs(big.std() - 1) < 0.01


def _specs(arch):
    return layer_specs(create_model(arch, **SMALL[arch]))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy", STRATEGIES, ids=strategy_id)
def test_layout_follows_the_strategy(arch, strategy):
    specs = _specs(arch)
    weights = generate(specs, strategy)
    assert list(weights) == [s.name for s in specs]
    for s in specs:
        assert tuple(weights[s.name].shape) == s.shape and weights[s.name].dtype == torch.float32
    st = stats(specs, strategy)
    assert st.n == sum(s.numel for s in specs)
    big = max(specs, key=lambda s: s.numel)
    if strategy.name in ("mp", "rp"):
        # every layer is a prefix of one (possibly periodic) vector of length M, rescaled per layer
        src = weights[big.name].flatten().double() / math.sqrt(2 / big.fan_in)
        for s in specs:
            std = math.sqrt(2 / (s.fan_in if strategy.scale == "fan_in" else big.fan_in))
            got = weights[s.name].flatten()
            torch.testing.assert_close(got.double() / std, src[: s.numel], rtol=1e-6, atol=1e-6)
        period = src[: st.u]
        assert st.u == (
            big.numel
            if strategy.name == "mp"
            else min(int(strategy.ratio * big.numel) + 1, big.numel)
        )
        tiled = period.repeat(math.ceil(big.numel / st.u))[: big.numel]
        torch.testing.assert_close(src, tiled, rtol=1e-6, atol=1e-6)
    elif strategy.name == "one_layer":
        first = {}
        for s in specs:
            if s.shape in first:
                assert torch.equal(weights[s.name], weights[first[s.shape]])
            else:
                first[s.shape] = s.name
        # different shapes never share values
        reps = [weights[n].flatten() for n in first.values()]
        for i in range(len(reps)):
            for j in range(i + 1, len(reps)):
                k = min(len(reps[i]), len(reps[j]))
                assert not torch.equal(reps[i][:k], reps[j][:k])
        assert st.u == sum(math.prod(shape) for shape in first)
    else:  # mask: every layer draws its own stream (its index), U = N
        assert st.u == st.n
        for i, s in enumerate(specs):
            own = (normal(strategy.seed, i, s.numel) * math.sqrt(2 / s.fan_in)).astype(np.float32)
            assert np.array_equal(weights[s.name].flatten().numpy(), own)


def test_rp_1e5_on_convmixer256_is_a_single_value():
    specs = layer_specs(create_model("convmixer", width=256, depth=6))
    strategy = Strategy("rp", ratio=1e-5)
    assert stats(specs, strategy).u == 1
    flat = torch.cat([w.flatten() for w in generate(specs, strategy).values()])
    assert flat.unique().numel() == 1


def test_one_layer_shares_by_shape_on_convmixer():
    specs = layer_specs(create_model("convmixer", width=32, depth=4))
    w = generate(specs, Strategy("one_layer"))
    assert torch.equal(w["blocks.0.depthwise"], w["blocks.3.depthwise"])
    assert torch.equal(w["blocks.0.pointwise"], w["blocks.2.pointwise"])
    assert not torch.equal(w["blocks.0.pointwise"].flatten()[:10], w["stem"].flatten()[:10])


def test_kaiming_scale():
    specs = layer_specs(create_model("resnet56"))
    w = generate(specs, Strategy("mask", seed=3))
    last = w["stages.2.8.conv2"]
    assert abs(float(last.std()) - math.sqrt(2 / (64 * 9))) < 0.002


@pytest.mark.parametrize(
    ("strategy", "compression"),
    [
        (Strategy("mp"), 92.53),
        (Strategy("rp", ratio=1e-1), 96.44),
        (Strategy("rp", ratio=1e-2), 96.83),
    ],
)
def test_paper_compression_resnet56(strategy, compression):
    st = stats(layer_specs(create_model("resnet56")), strategy)
    assert (st.n, st.m) == (848_944, 36_864)
    assert round(100 * st.compression, 2) == compression


def test_paper_compression_convmixer256_6():
    specs = layer_specs(create_model("convmixer", width=256, depth=6))
    assert stats(specs, Strategy("mp")).n == 437_248
    assert round(100 * stats(specs, Strategy("rp", ratio=1e-1)).compression, 2) == 95.38
    assert round(100 * stats(specs, Strategy("rp", ratio=1e-3)).compression, 2) == 96.86
    assert paper_compression(32, 0) == 1 - 1 / 32


_CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from pemn.archs import create_model
from pemn.prototype import Strategy, digest, generate
from pemn.layers import layer_specs
for arch, cfg in {cases!r}:
    specs = layer_specs(create_model(arch, **cfg))
    for s in {strategies!r}:
        print(digest(generate(specs, Strategy(*s))))
"""


def test_byte_identical_across_processes_and_thread_counts():
    cases = [(a, SMALL[a]) for a in ARCHS]
    strategies = [(s.name, 11, s.ratio, s.scale) for s in STRATEGIES]
    code = _CHILD.format(cases=cases, strategies=strategies)
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    outs = [
        subprocess.run(
            [sys.executable, "-c", code, str(t)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        for t in (1, 2)
    ]
    here = [
        digest(generate(layer_specs(create_model(a, **c)), Strategy(*s)))
        for a, c in cases
        for s in strategies
    ]
    assert outs[0] == outs[1] == "\n".join(here) + "\n"
    # different prototypes differ, except one_layer == mask when no two layers share a shape (mlp)
    dups = len(here) - len(set(here))
    assert dups == (
        1 if len({s.shape for s in layer_specs(create_model("mlp", **SMALL["mlp"]))}) == 3 else 0
    )


def test_digest_depends_on_names_and_values():
    w = {"a": torch.ones(2, 2), "b": torch.zeros(3)}
    assert digest(w) != digest({"a": torch.ones(2, 2), "c": torch.zeros(3)})
    assert digest(w) != digest({"a": torch.ones(4), "b": torch.zeros(3)})
    w2 = {"a": torch.ones(2, 2), "b": torch.zeros(3)}
    w2["b"][1] = 1e-30
    assert digest(w) != digest(w2)
    assert digest(w).startswith("sha256:") and len(digest(w)) == 7 + 64


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"name": "foo"}, "strategy"),
        ({"name": "rp"}, "ratio"),
        ({"name": "rp", "ratio": 0.0}, "ratio"),
        ({"name": "rp", "ratio": 1.5}, "ratio"),
        ({"name": "mp", "ratio": 0.1}, "ratio"),
        ({"name": "mp", "scale": "bogus"}, "scale"),
        ({"name": "mask", "scale": "fan_in"}, "scale"),
        ({"name": "mp", "seed": -1}, "seed"),
        ({"name": "mp", "seed": 2**60}, "seed"),
    ],
)
def test_bad_strategy_names_the_parameter(kwargs, param):
    with pytest.raises(InvalidParameterError) as exc:
        Strategy(**kwargs)
    assert f"{param}=" in str(exc.value) and "allowed" in str(exc.value)
    if param == "strategy":
        assert isinstance(exc.value, UnknownStrategyError)
        assert "one_layer" in str(exc.value)


def test_rp_ratio_one_is_mp():
    specs = _specs("resnet20")
    assert stats(specs, Strategy("rp", ratio=1.0)).u == stats(specs, Strategy("mp")).u
    assert digest(generate(specs, Strategy("rp", ratio=1.0))) == digest(
        generate(specs, Strategy("mp"))
    )
