"""Lanes in-process. Torch: a batch that mixes tasks of one backbone gives each
request what its task gives alone, in both mixed modes, with or without a hot
tier, and a task that cannot be materialized fails its requests only. ONNX: the
graph is exported once per backbone and re-weighted per task, exactly; a graph that
cannot be re-weighted faithfully falls back to an export of the task itself."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from pemn.bundle import read_bundle
from pemn.materialize import Backbone, PackedTask
from pemn.testing import make_bundle
from service.errors import Unservable
from service.runtimes import OnnxGraphs, OnnxLane, OnnxRunner, TorchLane
from tests.service.helpers import images

CONFIG = {"in_channels": 1, "image_size": 28, "width": 16, "depth": 2, "patch": 4}


@pytest.fixture(scope="module")
def backbone_and_tasks() -> tuple[Backbone, list[PackedTask]]:
    bundles = [read_bundle(make_bundle("convmixer", CONFIG, mask_seed=700 + i)) for i in range(3)]
    backbone = Backbone.for_bundle(bundles[0], channels_last=True)
    return backbone, [backbone.pack(b) for b in bundles]


def _alone(backbone: Backbone, packed: PackedTask, x: np.ndarray) -> np.ndarray:
    return backbone.forward(torch.from_numpy(x), backbone.materialize(packed)).numpy()


@pytest.mark.parametrize("mode", ["per_sample", "per_task"])
@pytest.mark.parametrize("hot_tasks", [0, 1, 3])
def test_a_mixed_batch_answers_each_request_as_its_task_alone(backbone_and_tasks, mode, hot_tasks):
    backbone, tasks = backbone_and_tasks
    lane = TorchLane(("fp", "torch"), backbone, hot_tasks * backbone.task_nbytes, mode)
    order = [0, 1, 2, 1, 1, 0, 2]
    xs = [images(1 + i % 3, seed=i) for i in range(len(order))]
    results = lane.run(xs, [tasks[t] for t in order])
    for x, t, got in zip(xs, order, results, strict=True):
        assert isinstance(got, np.ndarray) and got.shape == (len(x), 10)
        np.testing.assert_allclose(got, _alone(backbone, tasks[t], x), rtol=1e-5, atol=1e-5)
    s = lane.stats()
    assert s["items"] == hot_tasks and s["bytes"] <= lane.hot.capacity
    assert s["batches"][mode] == 1
    # a batch of one task runs as one forward on that task's weights
    assert np.allclose(
        lane.run([xs[0]], [tasks[2]])[0], _alone(backbone, tasks[2], xs[0]), atol=1e-5
    )
    assert lane.stats()["batches"]["single"] == 1


def test_a_task_that_cannot_be_materialized_fails_its_requests_only(backbone_and_tasks):
    backbone, tasks = backbone_and_tasks
    lane = TorchLane(("fp", "torch"), backbone, 0, "per_sample")
    alien = dataclasses.replace(tasks[1], fingerprint="sha256:" + "0" * 64)
    xs = [images(2, seed=1), images(1, seed=2), images(3, seed=3)]
    good, bad, other = lane.run(xs, [tasks[0], alien, tasks[2]])
    assert isinstance(bad, Unservable) and "could not be materialized" in str(bad)
    np.testing.assert_allclose(good, _alone(backbone, tasks[0], xs[0]), atol=1e-5)
    np.testing.assert_allclose(other, _alone(backbone, tasks[2], xs[2]), atol=1e-5)


@pytest.fixture(scope="module")
def exported(backbone_and_tasks) -> OnnxGraphs:
    backbone, tasks = backbone_and_tasks
    graphs = OnnxGraphs()
    OnnxRunner.build(backbone, tasks[0], 1, graphs)
    assert graphs.exports == 1
    return graphs


def _copy(graphs: OnnxGraphs) -> OnnxGraphs:
    out = OnnxGraphs()
    out._graphs = {k: copy.deepcopy(v) for k, v in graphs._graphs.items()}
    out.exports = graphs.exports
    return out


def test_tasks_on_one_backbone_share_one_export_and_keep_their_own_weights(
    backbone_and_tasks, exported
):
    backbone, tasks = backbone_and_tasks
    graphs = _copy(exported)
    x = images(5, seed=3)
    outs = []
    runners = []
    for task in tasks:
        runner = OnnxRunner.build(backbone, task, 1, graphs)
        got = runner(x)
        np.testing.assert_allclose(got, _alone(backbone, task, x), rtol=0, atol=1e-5)
        outs.append(got)
        runners.append(runner)
        assert runner.nbytes > 0
    assert graphs.exports == 1  # the first task's export, re-weighted for the others
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])
    # a mixed batch on the ONNX lane: one session call per task, each request its own
    lane = OnnxLane(("fp", "onnx"), "convmixer")
    xs = [images(2, seed=s) for s in range(4)]
    order = [0, 2, 0, 1]
    for x_, t, got in zip(xs, order, lane.run(xs, [runners[t] for t in order]), strict=True):
        np.testing.assert_allclose(got, _alone(backbone, tasks[t], x_), atol=1e-5)


@pytest.mark.parametrize("renamed", ["one", "all"])
def test_a_graph_that_does_not_fit_the_task_falls_back_to_its_own_export(
    backbone_and_tasks, exported, renamed, caplog
):
    backbone, tasks = backbone_and_tasks
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
    got = OnnxRunner.build(backbone, tasks[1], 1, graphs)(x)
    np.testing.assert_allclose(got, _alone(backbone, tasks[1], x), rtol=0, atol=1e-5)
    assert graphs.exports == 2
    assert ("does not match PyTorch" in caplog.text) == (renamed == "one")


def test_graphs_of_dropped_backbones_are_forgotten(backbone_and_tasks, exported):
    backbone, tasks = backbone_and_tasks
    graphs = _copy(exported)
    graphs.drop_unused({backbone.fingerprint})
    assert len(graphs._graphs) == 1
    graphs.drop_unused(set())
    assert graphs._graphs == {}
    OnnxRunner.build(backbone, tasks[2], 1, graphs)
    assert graphs.exports == 2


def test_an_auto_lane_runs_hot_tasks_on_their_session_and_the_rest_on_torch(
    backbone_and_tasks, exported
):
    backbone, tasks = backbone_and_tasks
    session = OnnxRunner.build(backbone, tasks[1], 1, _copy(exported))
    lane = TorchLane(("fp", "auto"), backbone, 0, "per_sample", runtime="auto")
    order = [tasks[0], session, tasks[2], session, tasks[0]]
    xs = [images(2, seed=10 + i) for i in range(len(order))]
    wanted = [tasks[0], tasks[1], tasks[2], tasks[1], tasks[0]]
    for x, t, got in zip(xs, wanted, lane.run(xs, order), strict=True):
        np.testing.assert_allclose(got, _alone(backbone, t, x), rtol=1e-4, atol=1e-4)
    assert lane.stats()["batches"]["onnx"] == 1 and lane.stats()["batches"]["per_sample"] == 1
