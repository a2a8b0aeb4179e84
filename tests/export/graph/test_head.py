"""CAM heads are found at augmentation time: GAP -> linear after a tap, or the reason why not."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph.augment import augment
from gradtap.export.graph.head import cam_outputs
from gradtap.runtime import contract as c
from tests.graphs import OPSET, tiny_cnn


def test_a_gemm_head_returns_its_own_weight_initializer() -> None:
    model = augment(tiny_cnn(classes=3))
    fc = next(n for n in model.graph.node if n.name == "fc")  # Gemm with transB: W is [3, 6]
    cam = next(n for n in model.graph.node if c.cam_output("features") in n.output)
    assert cam.op_type == "Identity" and cam.input[0] == fc.input[1]  # no copy of the weights
    assert not any(i.name.startswith("cam/") for i in model.graph.initializer)


def test_a_matmul_head_gets_its_transposed_copy() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 5)).astype(np.float32)  # [C, classes]
    nodes = [
        helper.make_node("Relu", ["input"], ["features"], name="relu"),
        helper.make_node("GlobalAveragePool", ["features"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "w"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "matmul_head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 3, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.graph.node.append(helper.make_node("Identity", ["features"], [c.tap_output("features")]))
    assert cam_outputs(model, {"features": "features"}) == {}
    copy = next(i for i in model.graph.initializer if i.name == "cam/features/weights")
    np.testing.assert_array_equal(numpy_helper.to_array(copy), w.T)


def test_a_head_that_is_not_gap_linear_is_named_with_the_reason() -> None:
    model = tiny_cnn()
    for node in model.graph.node:
        if node.op_type == "GlobalAveragePool":
            node.op_type = "GlobalMaxPool"
    model.graph.node.append(helper.make_node("Identity", ["features"], [c.tap_output("f")]))
    missing = cam_outputs(model, {"f": "features"})
    assert "global average pooling before the linear layer" in missing["f"]
    assert "found GlobalMaxPool" in missing["f"]
    assert not any(o.name.startswith("cam/") for o in model.graph.output)
    onnx.checker.check_model(model)
