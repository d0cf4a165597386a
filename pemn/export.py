"""ONNX export of a materialized network, with a parity check against PyTorch.

The exported graph takes ``input`` (batch, C, H, W) float32 pixels (dynamic batch
axis) and returns ``logits`` (batch, classes); masks are folded into the weights
and the input normalisation is part of the graph.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["export_onnx", "onnx_parity", "onnx_session"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's own warnings and log lines (e.g. about torchvision)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    module: nn.Module, input_shape: tuple[int, int, int], opset: int | None = None
) -> bytes:
    """Serialized ONNX model of ``module`` (eval mode, on any device; exported on CPU)."""
    module = module.eval().to("cpu")
    example = torch.zeros(2, *input_shape)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with _quiet():
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    assert program is not None
    return bytes(program.model_proto.SerializeToString())


def onnx_session(
    model: bytes, device: str | torch.device = "cpu", threads: int | None = None
) -> Any:
    """An ONNX Runtime session: the CUDA provider when ``device`` is CUDA and
    available, else the CPU provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if (
        torch.device(device).type == "cuda"
        and "CUDAExecutionProvider" in ort.get_available_providers()
    ):
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(model, sess_options=opts, providers=providers)


def onnx_parity(module: nn.Module, model: bytes, x: torch.Tensor) -> float:
    """Max absolute difference between ONNX Runtime's and PyTorch's outputs on ``x``."""
    session = onnx_session(model)
    with torch.inference_mode():
        expected = module.eval().to("cpu")(x.cpu()).numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy().astype(np.float32)})[0]
    return float(np.abs(got - expected).max())
