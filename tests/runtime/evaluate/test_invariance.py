"""The input-shifted twin: same logits, and the maps Kindermans et al. predict to change do.

Oracles: the twin of a graph computes the same function of the image content, so its logits
and input gradients are the original's (to float32 rounding); gradient x input then changes by
exactly ``sum_c grad_c * shift_c`` and Integrated Gradients from zero by a term known from the
path; the map implementations used for the twin equal the registry's methods on pixels in
[0, 1].
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gradtap.runtime.evaluate import invariance as inv
from gradtap.runtime.evaluate.data import synthetic_set
from gradtap.runtime.methods.registry import METHODS
from gradtap.runtime.session import ExplainSession
from tests import REPO
from tests.graphs import OPSET
from tests.runtime_graphs import linear_model

SHIPPED = REPO / "models" / "smallcnn.gradtap.onnx"


@pytest.fixture(scope="module")
def shipped() -> tuple[ExplainSession, np.ndarray, np.ndarray]:
    session = ExplainSession(SHIPPED)
    data = synthetic_set(session.info, 3)
    targets = np.array([c[0] for c in data.classes])
    return session, session.check_input(data.batch), targets


def _conv_model(pads: list[int], bias: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")]
    ins = ["input", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"))
        ins.append("b")
    nodes = [
        helper.make_node("Conv", ins, ["c"], name="conv", pads=pads),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


@pytest.mark.parametrize("bias", [True, False])
def test_an_unpadded_first_conv_absorbs_a_per_channel_shift_in_its_bias(bias: bool) -> None:
    model = _conv_model([0, 0, 0, 0], bias)
    shift = [-0.5, 0.25, -1.0]
    twin, where = inv.shifted_twin(model, shift)
    assert (where.op_type, where.node) == ("Conv", "conv")
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    xs = x + np.float32(shift).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(_run(twin, xs), _run(model, x), atol=1e-5)
    assert np.abs(_run(model, xs) - _run(model, x)).max() > 0.1  # the shift does matter
    assert len(model.graph.initializer) == 1 + bias  # the input model is untouched


def test_a_zero_padded_first_conv_is_refused() -> None:
    with pytest.raises(ValueError, match="zero padding"):
        inv.shifted_twin(_conv_model([1, 1, 1, 1]), -0.5)


def test_the_shipped_graph_absorbs_the_shift_in_its_normalisation(shipped) -> None:  # noqa: ANN001
    session, x, _ = shipped
    twin, where = inv.shifted_twin(session.model_proto(), -1.0)
    assert (where.op_type, where.initializer) == ("Sub", "net.mean")
    mean = next(t for t in twin.graph.initializer if t.name == "net.mean")
    np.testing.assert_allclose(numpy_helper.to_array(mean).ravel(), [-0.5, -0.5, -0.5])  # 0.5 + c
    np.testing.assert_allclose(ExplainSession(twin).logits(x - 1.0), session.logits(x), atol=1e-4)


def test_gradient_methods_are_invariant_and_reference_point_methods_are_not(shipped) -> None:  # noqa: ANN001
    session, x, t = shipped
    methods = ("saliency", "guided_backprop", "gradcam", inv.GRADIENT_X_INPUT)
    result = inv.input_invariance(session, x, t, methods, shift=-0.5)
    assert result.logit_difference < 1e-4
    rows = {r.method: r for r in result.rows}
    for m in ("saliency", "guided_backprop", "gradcam"):
        assert rows[m].invariant, (m, rows[m].change)
    assert not rows[inv.GRADIENT_X_INPUT].invariant
    assert (rows[inv.GRADIENT_X_INPUT].change > 0.1).all()


def test_gradient_x_input_changes_by_the_gradient_times_the_shift(shipped) -> None:  # noqa: ANN001
    session, x, t = shipped
    shift = np.float32([-0.5, -0.25, 0.1]).reshape(1, 3, 1, 1)
    twin = ExplainSession(inv.shifted_twin(session.model_proto(), shift.ravel())[0])
    a = inv.graph_maps(session, inv.GRADIENT_X_INPUT, x, t)
    b = inv.graph_maps(twin, inv.GRADIENT_X_INPUT, x + shift, t)
    seed = np.eye(session.info.num_classes, dtype=np.float32)[t]
    grad = session.run(x, seed).grad_input
    np.testing.assert_allclose(b - a, (grad * shift).sum(axis=1), atol=1e-5)


def test_integrated_gradients_from_zero_is_not_invariant_on_a_linear_model() -> None:
    # a linear model: IG from 0 is w * x exactly; the twin's is w * (x + c)
    w = np.random.default_rng(2).normal(size=(2, 3, 6, 6)).astype(np.float32)
    session = ExplainSession(linear_model(w))
    x = np.random.default_rng(3).random((2, 3, 6, 6), dtype=np.float32)
    t = np.array([0, 1])
    twin = ExplainSession(inv.shifted_twin(session.model_proto(), 0.5)[0])
    a = inv.graph_maps(session, "integrated_gradients", x, t, steps=4)
    b = inv.graph_maps(twin, "integrated_gradients", x + 0.5, t, steps=4)
    np.testing.assert_allclose(a, (w[t] * x).sum(axis=1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, (w[t] * (x + 0.5)).sum(axis=1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        inv.graph_maps(twin, "saliency", x + 0.5, t), np.abs(w[t]).max(axis=1), rtol=1e-6
    )


@pytest.mark.parametrize("method", ["saliency", "guided_backprop", "gradcam"])
def test_twin_maps_are_the_registry_methods_maps(shipped, method: str) -> None:  # noqa: ANN001
    session, x, t = shipped
    ours = inv.graph_maps(session, method, x, t)
    for i in range(len(x)):
        theirs = METHODS[method](session, x[i : i + 1], int(t[i])).maps
        if method == "guided_backprop":
            theirs = np.abs(theirs).max(axis=1)
        np.testing.assert_allclose(ours[i], theirs[0], rtol=1e-5, atol=1e-7)


def test_relative_change_by_hand() -> None:
    a = np.array([[1.0, -4.0], [0.0, 2.0]])
    assert inv.relative_change(a, a) == 0.0
    assert inv.relative_change(a, a + np.array([[0.0, 1.0], [0.0, 0.0]])) == 0.25
    assert inv.relative_change(np.zeros((2, 2)), np.zeros((2, 2))) == 0.0
    with pytest.raises(ValueError, match="not in the twin check"):
        inv.input_invariance(None, None, None, ("smoothgrad",))  # type: ignore[arg-type]
