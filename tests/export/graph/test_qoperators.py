"""Integer-operator quantised graphs (QLinearConv, QLinearMatMul, QGemm,
QLinearGlobalAveragePool), rewritten into the QuantizeLinear/DequantizeLinear form.

Oracles:
- the deployed session: onnxruntime running the integer-operator graph itself gives the logits;
- the same CNN quantised by onnxruntime in the QDQ form (same calibration, same scales), whose
  rules are checked against torch autograd in test_rules_quant.py: the same gradients;
- hand-computed straight-through gradients of one QLinearMatMul.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph import qoperators
from gradtap.export.graph.augment import augment
from gradtap.runtime import contract as c
from gradtap.runtime.errors import UnsupportedOpError
from tests.conftest import invoke
from tests.graphs import controls, unoptimised

torch = pytest.importorskip("torch")
quantization = pytest.importorskip("onnxruntime.quantization")
from torch import nn  # noqa: E402


@pytest.fixture(scope="module")
def quantised(tmp_path_factory: pytest.TempPathFactory) -> dict[str, onnx.ModelProto]:
    """One small float CNN quantised by onnxruntime twice, from the same calibration data: in
    the integer-operator form (QLinearConv, QLinearGlobalAveragePool, QGemm; MaxPool on int8)
    and in the QDQ form."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()  # fmt: skip
    folder = tmp_path_factory.mktemp("qoperator")
    buffer = io.BytesIO()
    torch.onnx.export(
        net, (torch.rand(1, 3, 32, 32),), buffer, input_names=[c.INPUT], output_names=[c.LOGITS],
        dynamic_axes={c.INPUT: {0: "n"}, c.LOGITS: {0: "n"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    (folder / "float.onnx").write_bytes(buffer.getvalue())
    out = {}
    images = np.random.default_rng(0).random((8, 1, 3, 32, 32), dtype=np.float32)
    for form in ("QOperator", "QDQ"):

        class Reader(quantization.CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{c.INPUT: image} for image in images])

            def get_next(self) -> dict | None:
                return next(self.batches, None)

        quantization.quantize_static(
            str(folder / "float.onnx"), str(folder / f"{form}.onnx"), Reader(),
            quant_format=getattr(quantization.QuantFormat, form), per_channel=True,
        )  # fmt: skip
        out[form] = onnx.load(folder / f"{form}.onnx")
    ops = {(n.domain, n.op_type) for n in out["QOperator"].graph.node}
    assert {("", "QLinearConv"), ("com.microsoft", "QGemm")} <= ops
    assert ("com.microsoft", "QLinearGlobalAveragePool") in ops
    return out


def run(graph: onnx.ModelProto, x: np.ndarray, rule: str, seed: np.ndarray) -> tuple:
    feeds = {c.INPUT: x, c.SEED: seed, **controls(graph, relu_rule=c.BACKWARD_RULES[rule])}
    return tuple(unoptimised(graph).run([c.LOGITS, c.GRAD_INPUT], feeds))


def test_the_explanation_graph_is_standard_and_computes_the_deployed_logits(
    quantised: dict[str, onnx.ModelProto],
) -> None:
    """Integer arithmetic is exact and both paths round the same products once: the logits are
    the deployed session's (float rounding of the rescale aside)."""
    model = quantised["QOperator"]
    graph = augment(model, taps={})
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}
    assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx"}
    x = np.random.default_rng(4).random((3, 3, 32, 32), dtype=np.float32)
    (deployed,) = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run([c.LOGITS], {c.INPUT: x})
    seed = np.eye(10, dtype=np.float32)[[0, 1, 2]]
    for session in (unoptimised(graph), ort.InferenceSession(graph.SerializeToString())):
        feeds = {c.INPUT: x, c.SEED: seed, **controls(graph)}
        logits = session.run([c.LOGITS], feeds)[0]
        np.testing.assert_allclose(logits, deployed, rtol=1e-5, atol=1e-5 * np.abs(deployed).max())


@pytest.mark.parametrize("rule", ["plain", "guided"])
def test_gradients_are_those_of_the_same_network_in_the_qdq_form(
    quantised: dict[str, onnx.ModelProto], rule: str
) -> None:
    """Deconvnet is left out: the QDQ form re-quantises after MaxPool and Flatten, and those
    quantisers' straight-through masks (0 where the max is the range's lowest value) are part
    of that graph's deconvnet and not of this one's, which has no quantiser there."""
    ours, qdq = (augment(quantised[k], taps={}) for k in ("QOperator", "QDQ"))
    x = np.random.default_rng(5).random((3, 3, 32, 32), dtype=np.float32)
    seed = np.eye(10, dtype=np.float32)[[3, 4, 5]]
    (lo_ours, grad_ours), (lo_qdq, grad_qdq) = run(ours, x, rule, seed), run(qdq, x, rule, seed)
    np.testing.assert_allclose(lo_ours, lo_qdq, rtol=1e-5, atol=1e-6)
    assert np.abs(grad_qdq).max() > 0
    err = np.abs(grad_ours - grad_qdq).max() / np.abs(grad_qdq).max()
    assert err < 1e-5, f"relative error {err:.1e}"


def test_lrp_and_fullgrad_read_the_dequantised_weights(
    quantised: dict[str, onnx.ModelProto],
) -> None:
    """The relevance of the rewritten graph is the QDQ form's (epsilon rule), and FullGrad's
    bias outputs exist (the int32 biases dequantised at their scales)."""
    ours = augment(quantised["QOperator"], taps={}, lrp=True, bias_gradients=True)
    qdq = augment(quantised["QDQ"], taps={}, lrp=True, bias_gradients=True)
    x = np.random.default_rng(6).random((2, 3, 32, 32), dtype=np.float32)
    seed = np.eye(10, dtype=np.float32)[[1, 7]]
    (_, r_ours), (_, r_qdq) = run(ours, x, "lrp_epsilon", seed), run(qdq, x, "lrp_epsilon", seed)
    assert np.abs(r_qdq).max() > 0
    np.testing.assert_allclose(r_ours, r_qdq, rtol=1e-4, atol=1e-5 * np.abs(r_qdq).max())
    names = {o.name for o in ours.graph.output}
    assert {o.name for o in qdq.graph.output if o.name.startswith("bias_grad")} <= names
    assert any(n.startswith("bias_grad") for n in names)


def matmul_model(
    a_scale: float, b: np.ndarray, b_scale: np.ndarray, y_scale: float
) -> onnx.ModelProto:
    """x [N, 3, 2, 1] -> Flatten [N, 6] -> QuantizeLinear (uint8, zero point 128) -> QLinearMatMul with int8 weights of
    per-column scale -> DequantizeLinear -> logits [N, 4]."""
    inits = [
        numpy_helper.from_array(np.float32(a_scale), "as"),
        numpy_helper.from_array(np.uint8(128), "az"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(b_scale, "bs"),
        numpy_helper.from_array(np.zeros(4, np.int8), "bz"),
        numpy_helper.from_array(np.float32(y_scale), "ys"),
        numpy_helper.from_array(np.uint8(100), "yz"),
    ]
    nodes = [
        helper.make_node("Flatten", [c.INPUT], ["flat"]),
        helper.make_node("QuantizeLinear", ["flat", "as", "az"], ["xq"]),
        helper.make_node("QLinearMatMul", ["xq", "as", "az", "b", "bs", "bz", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], [c.LOGITS]),
    ]
    graph = helper.make_graph(
        nodes, "qmatmul", [helper.make_tensor_value_info(c.INPUT, TensorProto.FLOAT, ["n", 3, 2, 1])],
        [helper.make_tensor_value_info(c.LOGITS, TensorProto.FLOAT, ["n", 4])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_qlinearmatmul_gradient_is_the_straight_through_estimate() -> None:
    """dx = ((seed * inside(y)) @ W^T) * inside(x), W dequantised, inside(.) where the integer
    lies strictly within its range; inputs reach both ends of the ranges."""
    rng = np.random.default_rng(7)
    b = rng.integers(-127, 128, (6, 4)).astype(np.int8)
    b_scale = np.array([0.01, 0.02, 0.015, 0.03], np.float32)
    model = matmul_model(0.02, b, b_scale, 0.05)
    x = rng.uniform(-3.5, 3.5, (8, 3, 2, 1)).astype(np.float32)  # beyond 0.02 * 127.5: clipped
    seed = rng.standard_normal((8, 4)).astype(np.float32)
    graph = augment(model, taps={})
    session = unoptimised(graph)
    logits, grad = session.run(
        [c.LOGITS, c.GRAD_INPUT], {c.INPUT: x, c.SEED: seed, **controls(graph)}
    )
    (deployed,) = ort.InferenceSession(model.SerializeToString()).run([c.LOGITS], {c.INPUT: x})
    np.testing.assert_allclose(logits, deployed, rtol=1e-6, atol=1e-6)
    xq = np.clip(np.round(x.reshape(8, 6) / 0.02) + 128, 0, 255)
    w = b.astype(np.float32) * b_scale
    yq = np.round(logits / 0.05 + 100)
    inside_x, inside_y = (xq > 0) & (xq < 255), (yq > 0) & (yq < 255)
    assert not inside_x.all() and not inside_y.all()  # both ends reached
    expected = (((seed * inside_y) @ w.T) * inside_x).reshape(x.shape)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_forms_without_a_rewrite_are_refused_by_name() -> None:
    model = matmul_model(0.02, np.ones((6, 4), np.int8), np.full(4, 0.01, np.float32), 0.05)
    model.graph.initializer.pop(0)  # "as" becomes a graph input: not a constant
    model.graph.input.append(helper.make_tensor_value_info("as", TensorProto.FLOAT, []))
    with pytest.raises(UnsupportedOpError, match="QLinearMatMul node .*not a constant"):
        qoperators.expand(model)
    pool = helper.make_node(
        "QLinearGlobalAveragePool", ["x", "s", "z", "s", "z"], ["y"], name="pool",
        domain="com.microsoft", channels_last=1,
    )  # fmt: skip
    graph = helper.make_graph([pool], "g", [], [])
    with pytest.raises(UnsupportedOpError, match="pool.*channels_last"):
        qoperators.expand(helper.make_model(graph))


def test_the_cli_augments_and_explains_an_integer_operator_graph(
    quantised: dict[str, onnx.ModelProto], tmp_path: Path
) -> None:
    """`gradtap augment --lrp --fullgrad` then `gradtap explain` with gradient, CAM, LRP and
    FullGrad methods: every map written, none of them empty."""
    src, graph = tmp_path / "int8.onnx", tmp_path / "int8.gradtap.onnx"
    onnx.save(quantised["QOperator"], src)
    done = invoke("augment", src, "-o", graph, "--lrp", "--fullgrad")
    assert done.exit_code == 0, done.output
    image = tmp_path / "x.png"
    rgb = (np.random.default_rng(8).random((32, 32, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(image), rgb)
    methods = ["saliency", "guided_backprop", "gradcam", "lrp", "fullgrad"]
    out = tmp_path / "out"
    done = invoke("explain", image, "-M", graph, "-m", ",".join(methods), "-o", out,
                  "--format", "npy")  # fmt: skip
    assert done.exit_code == 0, done.output
    for method in methods:
        arr = np.load(out / "x" / f"{method}.npy")
        assert np.isfinite(arr).all() and np.abs(arr).max() > 0, method
