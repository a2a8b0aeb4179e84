"""Gradient and CAM-family methods on small hand-checkable graphs (no torch).

Oracles: a linear model whose input gradient is its weight (by hand), hand-computed Grad-CAM and
Grad-CAM++ values, and CAM, which needs no gradient at all, against Grad-CAM.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph.augment import augment
from gradtap.runtime import methods as m
from gradtap.runtime.errors import ModelError, OptionError
from gradtap.runtime.session import ExplainSession
from tests.graphs import OPSET
from tests.runtime_graphs import LABELS, linear_model, tiny_model

RNG = np.random.default_rng(11)
W = RNG.normal(size=(4, 3 * 6 * 6)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny() -> ExplainSession:
    return ExplainSession(tiny_model())


@pytest.fixture(scope="module")
def linear() -> ExplainSession:
    return ExplainSession(linear_model(W))


def images(n: int, size: int = 16) -> np.ndarray:
    return RNG.random((n, 3, size, size), dtype=np.float32)


def test_gradcam_map_hand_values() -> None:
    acts = np.array([[[[1, 2], [3, 4]], [[0, 1], [1, 0]]]], np.float32)
    grads = np.array([[[[1, 1], [1, 1]], [[-4, 0], [0, 0]]]], np.float32)  # channel means 1, -1
    np.testing.assert_allclose(m.gradcam_map(acts, grads, relu=False), [[[1, 1], [2, 4]]])
    acts[0, 1, 0, 0] = 5  # now 1 - 5 < 0 at the corner: rectified
    np.testing.assert_allclose(m.gradcam_map(acts, grads), [[[0, 1], [2, 4]]])


def test_gradcampp_map_hand_values() -> None:
    """One channel, A = [[1, 2], [3, 4]] (sum 10): alpha = g^2 / (2 g^2 + 10 g^3) on relu(g)."""
    acts = np.array([[[[1, 2], [3, 4]]]], np.float32)
    grads = np.array([[[[1, 0], [-1, 2]]]], np.float32)
    weight = 1 / 12 * 1 + 4 / 88 * 2  # g = 1 and g = 2; g = 0 and g = -1 contribute nothing
    np.testing.assert_allclose(m.gradcampp_map(acts, grads), weight * acts[0], rtol=1e-5)


def test_saliency_is_the_weight_of_a_linear_model(linear: ExplainSession) -> None:
    x = images(2, 6)
    w = W.reshape(4, 3, 6, 6)
    e = m.saliency(linear, x, target=[3, 1])
    np.testing.assert_allclose(e.maps, np.abs(w[[3, 1, 3, 1]]).max(axis=1), rtol=1e-6)
    signed = m.saliency(linear, x, target=2, signed=True, times_input=True)
    np.testing.assert_allclose(signed.maps, (w[2] * x).sum(axis=1), rtol=1e-5, atol=1e-6)
    for method in (m.guided_backprop, m.deconvnet):  # no rectifiers: the plain gradient
        np.testing.assert_allclose(method(linear, x, target=0).maps, np.broadcast_to(w[0], x.shape))


def test_saliency_input_scale_takes_the_gradient_at_the_scaled_input(tiny: ExplainSession) -> None:
    x = images(1)
    e = m.saliency(tiny, x, target=1, signed=True, input_scale=0.05)
    grad = tiny.run(0.05 * x, np.eye(3, dtype=np.float32)[[1]]).grad_input
    np.testing.assert_allclose(e.maps, grad.sum(axis=1), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(e.logits, tiny.logits(x))  # the prediction is the image's own
    with pytest.raises(OptionError, match="input_scale must be finite and > 0"):
        m.saliency(tiny, x, input_scale=0)


def test_gradcam_equals_cam_on_a_gap_linear_head(tiny: ExplainSession) -> None:
    x = images(3)
    cam = m.cam(tiny, x, target="top-3", relu=False)
    grad = m.gradcam(tiny, x, target="top-3", relu=False)
    np.testing.assert_allclose(grad.maps * 8 * 8, cam.maps, rtol=1e-4, atol=1e-5)  # 1/(h*w)
    cam_r, grad_r = m.cam(tiny, x, target="top-3"), m.gradcam(tiny, x, target="top-3")
    assert np.corrcoef(cam_r.maps.ravel(), grad_r.maps.ravel())[0, 1] >= 0.999
    assert cam_r.maps.min() >= 0


def reduce_mean_head_model() -> onnx.ModelProto:
    """conv -> relu (tap) -> ReduceMean over H, W -> MatMul -> Add: another linear head."""
    w1 = RNG.normal(size=(5, 3, 3, 3)).astype(np.float32)
    fc = RNG.normal(size=(5, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["features"]),
        helper.make_node("ReduceMean", ["features"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "fc"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "rm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(fc, "fc"),
            numpy_helper.from_array(np.ones(4, np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return augment(model, taps={"features": "features"})


def test_cam_reads_matmul_heads() -> None:
    s = ExplainSession(reduce_mean_head_model())
    x = images(2, 8)
    cam = m.cam(s, x, target=[0, 3], relu=False)
    grad = m.gradcam(s, x, target=[0, 3], relu=False)
    np.testing.assert_allclose(grad.maps * 64, cam.maps, rtol=1e-4, atol=1e-5)


def test_cam_refuses_heads_without_global_pooling(linear: ExplainSession) -> None:
    assert linear.info.cam_taps == ()
    with pytest.raises(ModelError, match="CAM needs global average pooling .* after tap 'conv'"):
        m.cam(linear, images(1, 6))


def test_guided_backprop_computes_every_row_of_a_batch(tiny: ExplainSession) -> None:
    x = images(3)
    batch = m.guided_backprop(tiny, x, target=2)
    for i in range(3):
        one = m.guided_backprop(tiny, x[i : i + 1], target=2)
        np.testing.assert_allclose(batch.maps[i], one.maps[0], rtol=1e-5, atol=1e-8)
    assert np.abs(batch.maps).max() > 0


def test_several_targets_in_one_call_equal_separate_calls(tiny: ExplainSession) -> None:
    x = images(2)
    both = m.gradcam(tiny, x, target=[0, "dog house"])
    assert both.image_index.tolist() == [0, 0, 1, 1] and both.target.tolist() == [0, 2, 0, 2]
    for r, (i, t) in enumerate(zip(both.image_index, both.target, strict=True)):
        np.testing.assert_allclose(
            both.maps[r], m.gradcam(tiny, x[i : i + 1], target=int(t)).maps[0]
        )


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(tiny: ExplainSession) -> None:
    x = images(1)
    gg = m.guided_gradcam(tiny, x, target=1, upsample="nearest")
    guided = m.guided_backprop(tiny, x, target=1).maps[0]
    cam = m.gradcam(tiny, x, target=1).maps[0]
    up = np.kron(cam, np.ones((2, 2), np.float32))  # 8x8 -> 16x16, nearest
    np.testing.assert_allclose(gg.maps[0], guided * up[None], rtol=1e-5, atol=1e-9)
    bilinear = m.guided_gradcam(tiny, x, target=1).maps[0]
    assert not np.allclose(bilinear, gg.maps[0])
    with pytest.raises(
        OptionError, match=r"upsample 'cubic' unknown; valid: \['bilinear', 'nearest'\]"
    ):
        m.guided_gradcam(tiny, x, upsample="cubic")


def test_explanation_reports_prediction_and_target(tiny: ExplainSession) -> None:
    x = images(2)
    e = m.gradcam(tiny, x, target=["Dog", None])
    logits = tiny.logits(x)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(e.logits, logits[[0, 0, 1, 1]], rtol=1e-6)
    assert e.predicted.tolist() == logits.argmax(axis=1)[[0, 0, 1, 1]].tolist()
    np.testing.assert_allclose(e.target_prob, probs[e.image_index, e.target], rtol=1e-5)
    assert e.target_labels[0] == "Dog" and e.method == "gradcam" and e.labels == LABELS
    assert e.predicted_labels[1] == LABELS[int(logits[0].argmax())]


def test_pixels_out_of_range_are_refused(tiny: ExplainSession) -> None:
    with pytest.raises(
        OptionError, match=r"input pixels must lie in \[0, 1\] \(the graph normalises\)"
    ):
        m.saliency(tiny, images(1) * 255)
    with pytest.raises(ModelError, match="unknown tap 'layer4'"):
        m.gradcam(tiny, images(1), tap="layer4")


def hand_cnn() -> onnx.ModelProto:
    """x [1, 3, 1, 2] -> 1x1 Conv (3 -> 2) -> Relu -> GAP -> Flatten -> Gemm (2 -> 2).

    h0 = x0 - x1, h1 = x1 + x2 - 0.5; logits = [g0 - 2 g1, -g0 + g1] with g = mean(relu(h)).
    """
    w = np.array([[1, -1, 0], [0, 1, 1]], np.float32).reshape(2, 3, 1, 1)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array([0.0, -0.5], np.float32), "b"),
        numpy_helper.from_array(np.array([[1, -2], [-1, 1]], np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["h"], name="conv"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "hand_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 1, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


# Pixels p0, p1 per channel. h0 = [-0.3, 0.8], h1 = [0.3, 0.2]: the Relu passes h0 at p1 only and
# h1 at both. For class 0, dS/dr = [1, -2] / 2 pixels = r0: 0.5, r1: -1 at every pixel.
HAND_X = np.array([[[[0.2, 0.9]], [[0.5, 0.1]], [[0.3, 0.6]]]], np.float32)
HAND_MAPS = {
    # dh = dr * mask: dh0 = [0, .5], dh1 = [-1, -1]; dx = W^T dh
    "plain": [[[0.0, 0.5]], [[-1.0, -1.5]], [[-1.0, -1.0]]],
    # dh = relu(dr) * mask: dh0 = [0, .5], dh1 = [0, 0]
    "guided": [[[0.0, 0.5]], [[0.0, -0.5]], [[0.0, 0.0]]],
    # dh = relu(dr) everywhere: dh0 = [.5, .5], dh1 = [0, 0]
    "deconvnet": [[[0.5, 0.5]], [[-0.5, -0.5]], [[0.0, 0.0]]],
}


@pytest.mark.parametrize("rule", sorted(HAND_MAPS))
def test_rectifier_rules_give_the_hand_computed_maps(rule: str) -> None:
    session = ExplainSession(augment(hand_cnn(), taps={"r": "r"}, labels=["a", "b"]))
    seed = np.array([[1.0, 0.0]], np.float32)
    run = session.run(HAND_X, seed, relu_rule=rule)
    np.testing.assert_allclose(run.logits, [[-0.1, -0.15]], atol=1e-6)
    np.testing.assert_allclose(run.grad_input[0], HAND_MAPS[rule], atol=1e-6)
    method = {"guided": m.guided_backprop, "deconvnet": m.deconvnet}.get(rule)
    if method is not None:
        np.testing.assert_allclose(method(session, HAND_X, 0).maps[0], HAND_MAPS[rule], atol=1e-6)


def test_cam_weights_come_from_the_graph_not_the_model_file(
    tiny: ExplainSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tiny.info.cam_taps == tuple(tiny.info.taps)
    monkeypatch.setattr(ExplainSession, "model_proto", lambda self: pytest.fail("file re-read"))
    x = RNG.random((2, 3, *tiny.info.input_size), dtype=np.float32)
    first, again = m.cam(tiny, x, 1), m.cam(tiny, x, 1)
    np.testing.assert_array_equal(first.maps, again.maps)  # the second call reads the cache
