"""Pruning the explanation graph to the outputs a method needs (onnxruntime runs every node)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gradtap.runtime import contract as c
from gradtap.runtime.errors import ModelError
from gradtap.runtime.prune import prune
from tests.runtime_graphs import tiny_model

FORWARD_OPS = {"Conv", "Relu", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm", "Identity"}


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return tiny_model()


def ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}
    return s.run(None, {k: v for k, v in feeds.items() if k in names})


def test_forward_only_graph(model: onnx.ModelProto) -> None:
    fwd = prune(model, [c.LOGITS, "tap/features"])
    assert ops(fwd) <= FORWARD_OPS and "ConvTranspose" in ops(model)
    assert [i.name for i in fwd.graph.input] == [c.INPUT]
    assert {t.name for t in fwd.graph.initializer} == {"w1", "b1", "w2", "b2", "fc_w", "fc_b"}
    onnx.checker.check_model(fwd, full_check=True)


def test_tap_gradient_graph_stops_at_the_tap(model: onnx.ModelProto) -> None:
    taps = prune(model, [c.LOGITS, "tap/features", "grad/tap/features"])
    assert "ConvTranspose" not in ops(taps) and "ScatterElements" not in ops(taps)
    assert c.SEED in [i.name for i in taps.graph.input]
    onnx.checker.check_model(taps, full_check=True)


def test_pruned_graphs_compute_the_same_values(model: onnx.ModelProto) -> None:
    rng = np.random.default_rng(0)
    feeds = {
        c.INPUT: rng.random((2, 3, 16, 16), dtype=np.float32),
        c.SEED: rng.normal(size=(2, 3)).astype(np.float32),
    }
    full = dict(zip([o.name for o in model.graph.output], run(model, feeds), strict=True))
    names = [c.LOGITS, "grad/tap/features"]
    for got, name in zip(run(prune(model, names), feeds), names, strict=True):
        np.testing.assert_array_equal(got, full[name])


def test_unknown_output(model: onnx.ModelProto) -> None:
    with pytest.raises(
        ModelError, match=r"cannot prune to \['grad/tap/layer4'\]: graph outputs are"
    ):
        prune(model, ["grad/tap/layer4"])
    assert len(model.graph.node) > len(prune(model, [c.LOGITS]).graph.node)  # input untouched
