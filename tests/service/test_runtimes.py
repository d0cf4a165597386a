"""Runtimes in-process: the ONNX graph is exported once per backbone and re-weighted
per task, exactly; a graph that cannot be re-weighted faithfully falls back to an
export of the task itself."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pemn.bundle import read_bundle
from pemn.materialize import Backbone, Task
from pemn.testing import make_bundle
from service.runtimes import OnnxGraphs, OnnxRunner, TorchRunner
from tests.service.helpers import images

CONFIG = {"in_channels": 1, "image_size": 28, "width": 16, "depth": 2, "patch": 4}


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    bundles = [read_bundle(make_bundle("convmixer", CONFIG, mask_seed=700 + i)) for i in range(3)]
    backbone = Backbone.for_bundle(bundles[0])
    return [backbone.task(b) for b in bundles]


@pytest.fixture(scope="module")
def exported(tasks: list[Task]) -> OnnxGraphs:
    graphs = OnnxGraphs()
    OnnxRunner(tasks[0], 1, graphs)
    assert graphs.exports == 1
    return graphs


def _copy(graphs: OnnxGraphs) -> OnnxGraphs:
    out = OnnxGraphs()
    out._graphs = {k: copy.deepcopy(v) for k, v in graphs._graphs.items()}
    out.exports = graphs.exports
    return out


def _torch(task: Task, x: np.ndarray) -> np.ndarray:
    return TorchRunner(task)(x)


def test_tasks_on_one_backbone_share_one_export_and_keep_their_own_weights(tasks, exported):
    graphs = _copy(exported)
    x = images(5, seed=3)
    outs = []
    for task in tasks:
        runner = OnnxRunner(task, 1, graphs)
        got = runner(x)
        np.testing.assert_allclose(got, _torch(task, x), rtol=0, atol=1e-5)
        outs.append(got)
        assert runner.nbytes > 0
    assert graphs.exports == 1  # the first task's export, re-weighted for the others
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])


@pytest.mark.parametrize("renamed", ["one", "all"])
def test_a_graph_that_does_not_fit_the_task_falls_back_to_its_own_export(
    tasks, exported, renamed, caplog
):
    graphs = _copy(exported)
    (graph,) = graphs._graphs.values()
    inits = list(graph.graph.initializer)
    # "one": the head keeps the first task's values (as if the exporter had folded it
    # into a constant): re-weighting succeeds but the parity check catches it.
    # "all": no initializer carries a state dict name: nothing to re-weight.
    for init in [i for i in inits if i.name == "net.head.weight"] if renamed == "one" else inits:
        for node in graph.graph.node:
            node.input[:] = ["x" + n if n == init.name else n for n in node.input]
        init.name = "x" + init.name
    x = images(4, seed=4)
    got = OnnxRunner(tasks[1], 1, graphs)(x)
    np.testing.assert_allclose(got, _torch(tasks[1], x), rtol=0, atol=1e-5)
    assert graphs.exports == 2
    assert ("does not match PyTorch" in caplog.text) == (renamed == "one")


def test_graphs_of_dropped_backbones_are_forgotten(tasks, exported):
    graphs = _copy(exported)
    graphs.drop_unused({tasks[0].fingerprint})
    assert len(graphs._graphs) == 1
    graphs.drop_unused(set())
    assert graphs._graphs == {}
    with torch.inference_mode():
        OnnxRunner(tasks[2], 1, graphs)
    assert graphs.exports == 2
