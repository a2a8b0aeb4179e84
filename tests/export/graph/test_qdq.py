"""Quantised constants evaluated at augmentation time, against onnx's reference evaluator."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from gradtap.export.graph.emitter import GraphInfo

RNG = np.random.default_rng(0)
CASES = {
    "int8-per-axis": (RNG.integers(-128, 128, (4, 3, 2, 2)).astype(np.int8),
                      np.array([0.1, 0.02, 0.5, 1.5], np.float32), np.array([0, 3, -2, 1], np.int8), 0),
    "uint8-per-tensor": (RNG.integers(0, 256, (5, 6)).astype(np.uint8), np.array(0.07, np.float32),
                         np.array(128, np.uint8), 1),
    "int32-bias": (RNG.integers(-5000, 5000, (7,)).astype(np.int32), np.array(0.003, np.float32),
                   None, 0),
}  # fmt: skip


def model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], out: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "q", [], [helper.make_empty_tensor_value_info(out)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("name", list(CASES))
def test_a_dequantised_weight_is_a_constant(name: str) -> None:
    q, scale, zp, axis = CASES[name]
    inits = [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "s")]
    inputs = ["q", "s"]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "zp"))
        inputs.append("zp")
    m = model([helper.make_node("DequantizeLinear", inputs, ["w"], axis=axis)], inits, "w")
    expected = ReferenceEvaluator(m).run(None, {})[0]
    np.testing.assert_array_equal(GraphInfo.of(m).const("w"), expected)


def test_a_float_weight_behind_a_quantize_dequantize_pair_is_a_constant() -> None:
    """As quantisation-aware training exports leave weights; rounding ties go to even."""
    w = RNG.normal(size=(3, 4)).astype(np.float32)
    w[0, :2] = [0.25, 0.75]  # ties at scale 0.5
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([0.5, 0.01, 0.2], np.float32), "s"),
             numpy_helper.from_array(np.zeros(3, np.int8), "zp")]  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["wq"], axis=0),
        helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"], axis=0),
    ]
    m = model(nodes, inits, "wd")
    expected = ReferenceEvaluator(m).run(None, {})[0]
    info = GraphInfo.of(m)
    np.testing.assert_array_equal(info.const("wd"), expected)
    assert info.const("wq").dtype == np.int8


def test_an_activation_is_not_a_constant() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "a", [x], [helper.make_empty_tensor_value_info("y")],
                              [numpy_helper.from_array(np.array(0.1, np.float32), "s")])  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert GraphInfo.of(m).const("y") is None
