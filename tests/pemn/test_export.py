"""ONNX export of every registered architecture: ONNX Runtime matches PyTorch,
the batch axis is dynamic, masks are folded in and normalisation is in the graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from pemn.bundle import read_bundle
from pemn.export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_parity, onnx_session
from pemn.materialize import materialize
from pemn.prototype import Strategy
from pemn.testing import ARCHS, SMALL, make_bundle

pytestmark = pytest.mark.slow  # one dynamo export per architecture: seconds each


@pytest.mark.parametrize("arch", ARCHS)
def test_onnxruntime_matches_torch_with_dynamic_batch(arch: str) -> None:
    config = {"in_channels": 3, "image_size": 16, **SMALL[arch]}
    if arch == "mlp":
        config["hidden"] = [32]
    bundle = read_bundle(make_bundle(arch, config, Strategy("rp", seed=1, ratio=1e-1), density=0.3))
    module = materialize(bundle)
    model = export_onnx(module, (3, 16, 16))

    proto = onnx.load_from_string(model)
    onnx.checker.check_model(proto)
    (inp,) = proto.graph.input
    batch = inp.type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")  # symbolic: dynamic batch
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]

    session = onnx_session(model)  # one session, two batch sizes
    g = torch.Generator().manual_seed(0)
    for n in (1, 7):
        x = torch.rand(n, 3, 16, 16, generator=g)
        with torch.inference_mode():
            expected = module(x).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        assert got.shape == (n, 10)
        assert float(np.abs(got - expected).max()) < 1e-4
    assert onnx_parity(module, model, torch.rand(2, 3, 16, 16, generator=g)) < 1e-4
    # masks are folded in: the graph holds the materialized (masked) weights
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    zeros = sum(int((w == 0).sum()) for w in weights.values() if w.ndim >= 2)
    assert zeros >= 0.6 * sum(s.numel for s in bundle.layout.layers)  # density 0.3
