"""GELU as a soft rectifier: the Erf form torch's TorchScript exporter writes, fused into one
Gelu for the walk, and the Gelu op itself; plain gradients against finite differences, guided
backprop and deconvnet against their hand-written definitions (rectifier.py)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph.emitter import GraphInfo
from gradtap.export.graph.patterns import fuse_erf_gelu
from gradtap.export.graph.vjp import add_vjp
from tests.export.graph.test_rules import assert_vjp, with_seed_input
from tests.graphs import session

SQRT2 = math.sqrt(2.0)


def erf_gelu(form: str, *, leak: bool = False) -> onnx.ModelProto:
    """x [2, 5] -> Mul by w -> GELU (Erf form ``form``) -> y; ``leak`` reads the Erf output twice."""
    scale = (
        helper.make_node("Div", ["h", "sqrt2"], ["u"])
        if form != "mul-scale"
        else helper.make_node("Mul", ["inv_sqrt2", "h"], ["u"])
    )
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["h"]),
        scale,
        helper.make_node("Erf", ["u"], ["e"]),
        helper.make_node("Add", ["one", "e"], ["a"]),
    ]
    if form == "half-first":
        nodes += [
            helper.make_node("Mul", ["h", "half"], ["hh"]),
            helper.make_node("Mul", ["hh", "a"], ["g"]),
        ]
    else:
        nodes += [
            helper.make_node("Mul", ["h", "a"], ["m"]),
            helper.make_node("Mul", ["m", "half"], ["g"]),
        ]
    nodes.append(helper.make_node("Add", ["g", "e"] if leak else ["g", "zero"], ["y"]))
    consts = {"w": np.linspace(0.5, 1.5, 5), "sqrt2": SQRT2, "inv_sqrt2": 1 / SQRT2, "one": 1.0,
              "half": 0.5, "zero": 0.0}  # fmt: skip
    graph = helper.make_graph(
        nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_empty_tensor_value_info("y")],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def gelu_slope(h: np.ndarray) -> np.ndarray:
    cdf = 0.5 * (1 + np.vectorize(math.erf)(h / SQRT2))
    return cdf + h * np.exp(-h * h / 2) / math.sqrt(2 * math.pi)


def with_relu_rule(model: onnx.ModelProto) -> onnx.ModelProto:
    aug = add_vjp(model, seed_of="y", seed="v", wrt={"x": "dx"}, relu_rule="relu_rule")
    aug = with_seed_input(aug, (2, 5), np.float32)
    aug.graph.input.append(helper.make_tensor_value_info("relu_rule", TensorProto.INT64, []))
    return aug


@pytest.mark.parametrize("form", ["half-last", "half-first", "mul-scale"])
def test_the_torchscript_erf_gelu_is_fused_into_one_gelu(form: str) -> None:
    model = erf_gelu(form)
    fused = fuse_erf_gelu(model.graph.node, GraphInfo.of(model), {"y"})
    assert [n.op_type for n in fused] == ["Mul", "Gelu", "Add"]
    assert fused[1].input[0] == "h" and fused[1].output[0] == "g"
    rng = np.random.default_rng(0)  # float32: onnxruntime has no float64 Erf
    assert_vjp(
        model, {"x": rng.normal(size=(2, 5)).astype(np.float32)}, eps=3e-3, tol=1e-3, rng=rng
    )


def test_a_pattern_whose_inner_tensor_is_read_elsewhere_is_not_fused() -> None:
    model = erf_gelu("half-last", leak=True)
    fused = fuse_erf_gelu(model.graph.node, GraphInfo.of(model), {"y"})
    assert "Gelu" not in [n.op_type for n in fused] and "Erf" in [n.op_type for n in fused]
    rng = np.random.default_rng(1)
    assert_vjp(
        model, {"x": rng.normal(size=(2, 5)).astype(np.float32)}, eps=3e-3, tol=1e-3, rng=rng
    )


@pytest.mark.parametrize("model", [erf_gelu("half-last"), "gelu-op"], ids=["erf-form", "gelu-op"])
def test_guided_backprop_and_deconvnet_treat_gelu_as_a_soft_rectifier(model) -> None:  # noqa: ANN001
    """relu_rule 0: dy * GELU'(h); 1 (guided): relu(dy) * GELU'(h); 2 (deconvnet): relu(dy)."""
    if model == "gelu-op":
        nodes = [helper.make_node("Mul", ["x", "w"], ["h"]), helper.make_node("Gelu", ["h"], ["y"])]
        graph = helper.make_graph(
            nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
            initializer=[numpy_helper.from_array(np.linspace(0.5, 1.5, 5).astype(np.float32), "w")],
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
        model.ir_version = 9
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5)).astype(np.float32)
    v = rng.normal(size=(2, 5)).astype(np.float32)
    w = np.linspace(0.5, 1.5, 5)
    h = x * w
    expected = {
        0: v * gelu_slope(h) * w,
        1: np.maximum(v, 0) * gelu_slope(h) * w,
        2: np.maximum(v, 0) * w,
    }
    s = session(with_relu_rule(model))
    for rule, want in expected.items():
        got = s.run(["dx"], {"x": x, "v": v, "relu_rule": np.asarray(rule, np.int64)})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
