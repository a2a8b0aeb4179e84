"""The lrp method on a hand-built network whose relevances are computed here by hand.

The network: three pixels x = (0.5, 0.2, 0.8) (a 1 x 1 RGB image), a dense layer W1 with a ReLU,
then the logits W2 h + b2. Hidden pre-activations: h1 = 1*0.5 + 2*0.2 - 1*0.8 = 0.1 and
h2 = 0.5*0.5 - 1*0.2 + 1*0.8 = 0.85 (both pass the ReLU); logit 0 = 2*h1 + 1*h2 + 0.5 = 1.55.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph.augment import augment
from gradtap.runtime import contract as c
from gradtap.runtime.errors import ModelError, OptionError
from gradtap.runtime.methods.registry import METHODS
from gradtap.runtime.session import ExplainSession
from tests.conftest import invoke

X = np.asarray([0.5, 0.2, 0.8], np.float32).reshape(1, 3, 1, 1)
W1 = np.asarray([[1.0, 2.0, -1.0], [0.5, -1.0, 1.0]], np.float32)
W2 = np.asarray([[2.0, 1.0], [-1.0, 1.0]], np.float32)
B2 = np.asarray([0.5, 0.0], np.float32)
SHIPPED = Path(__file__).resolve().parents[3] / "models" / "smallcnn.gradtap.onnx"
EPS = 1e-4  # the stabiliser 1e-6 over h1 = 0.1 moves these values by ~1e-5
# epsilon rule: top layer R_h = h * W2[0] * R / (logit 0) with R = logit 0 = 1.55: (0.2, 0.85);
# first layer R_x = x * (W1[0] * R_h1 / h1 + W1[1] * R_h2 / h2) = x * (2 W1[0] + 1 W1[1])
EPSILON_BY_HAND = [0.5 * (2 * 1.0 + 0.5), 0.2 * (2 * 2.0 - 1.0), 0.8 * (2 * -1.0 + 1.0)]


def mlp() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"]),
        helper.make_node("Gemm", ["flat", "W1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "B2"], ["out"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 1, 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (W2, "W2"), (B2, "B2"))],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def mlp_session() -> ExplainSession:
    return ExplainSession(augment(mlp(), taps={}, lrp=True))


def test_epsilon_relevance_by_hand_and_the_bias_missing_from_conservation(mlp_session) -> None:
    e = METHODS["lrp"](mlp_session, X, 0, lrp_rule="epsilon")
    # top layer: R_h = h * W2[0] * R / (logit 0) with R = logit 0 = 1.55: (0.2, 0.85), sum 1.05
    # first layer: R_x = x * (W1[0] * R_h1 / h1 + W1[1] * R_h2 / h2) = x * (2 W1[0] + 1 W1[1])
    expected = EPSILON_BY_HAND
    np.testing.assert_allclose(e.extras["relevance"].ravel(), expected, atol=EPS)
    np.testing.assert_allclose(e.maps.ravel(), [sum(expected)], atol=EPS)
    assert e.extras["logit"][0] == pytest.approx(1.55, abs=EPS)
    # conserved up to the bias: 1.25 + 0.6 - 0.8 = 1.05 = 1.55 - b2[0]
    assert e.extras["conservation_error"][0] == pytest.approx(-0.5, abs=EPS)


def test_epsilon_plus_is_zplus_on_the_first_dense_layer_by_hand(mlp_session) -> None:
    e = METHODS["lrp"](mlp_session, X, 0, lrp_rule="epsilon_plus")
    # the first linear layer takes z+ (positive weights; the pixels are >= 0): z+_1 = 0.5 + 0.4,
    # z+_2 = 0.25 + 0.8; the top layer epsilon as above: R_h = (0.2, 0.85)
    r1, r2 = 0.2 / 0.9, 0.85 / 1.05
    expected = [0.5 * (1.0 * r1 + 0.5 * r2), 0.2 * (2.0 * r1), 0.8 * (1.0 * r2)]
    np.testing.assert_allclose(e.extras["relevance"].ravel(), expected, atol=EPS)
    assert sum(expected) == pytest.approx(1.05)  # z+ conserves what reaches the layer


def test_gamma_by_hand(mlp_session) -> None:
    e = METHODS["lrp"](mlp_session, X, 0, lrp_rule="gamma")
    # every layer: weights and bias W + 0.25 W+ (the pixels and the ReLU outputs are >= 0, and
    # every pre-activation here is > 0, so only the z > 0 branch with x+ and W+g takes part).
    # top layer: W+g[0] = (2.5, 1.25), b+g[0] = 0.625, z+ = 0.25 + 1.0625 + 0.625 = 1.9375;
    # R_h = h * W+g[0] * 1.55 / 1.9375 = (0.25, 1.0625) * 0.8 = (0.2, 0.85)
    g1 = np.asarray([[1.25, 2.5, -1.0], [0.625, -1.0, 1.25]])  # W1 + 0.25 W1+
    z1 = np.asarray([0.625 + 0.5 - 0.8, 0.3125 - 0.2 + 1.0])  # g1 x: 0.325, 1.1125
    expected = X.ravel() * (g1[0] * 0.2 / z1[0] + g1[1] * 0.85 / z1[1])
    np.testing.assert_allclose(e.extras["relevance"].ravel(), expected, atol=EPS)
    np.testing.assert_allclose(g1 @ X.ravel(), z1)  # the hand values above


def test_the_second_class_and_every_composite_runs(mlp_session) -> None:
    e = METHODS["lrp"](mlp_session, X, 1, lrp_rule="epsilon")
    # logit 1 = -h1 + h2 = 0.75; R_h = (-0.1, 0.85); R_x = x * (-1 W1[0] + 1 W1[1])
    expected = [0.5 * (-1.0 + 0.5), 0.2 * (-2.0 - 1.0), 0.8 * (1.0 + 1.0)]
    np.testing.assert_allclose(e.extras["relevance"].ravel(), expected, atol=EPS)
    rules = ("zplus", "alpha2beta1", "flat", "epsilon_plus_box", "epsilon_plus_flat")
    for rule in (*rules, "gamma", "epsilon_gamma_box"):
        out = METHODS["lrp"](mlp_session, X, 0, lrp_rule=rule)
        assert np.isfinite(out.maps).all()


@pytest.mark.torch
def test_the_shipped_custom_cnn_conserves_the_logit_with_z_plus(tmp_path: Path) -> None:
    """z+ on every layer with the relevance of the bias-free parts: on the trained custom CNN
    (its shipped weights, augmented with the walk) the sum of input relevance stays within a
    tenth of the logit (biases take the rest)."""
    pytest.importorskip("torch")
    from gradtap.export.models.to_onnx import export_forward  # noqa: PLC0415

    forward = tmp_path / "smallcnn.onnx"
    export_forward("smallcnn", forward, weights=str(SHIPPED.parent / "smallcnn.pt"))
    session = ExplainSession(augment(onnx.load(forward), lrp=True))
    x = np.random.default_rng(0).random((2, 3, *session.info.input_size), dtype=np.float32)
    e = METHODS["lrp"](session, x, lrp_rule="epsilon_plus_box")
    ratio = e.extras["relevance"].sum(axis=(1, 2, 3)) / e.extras["logit"]
    assert np.all(np.abs(ratio - 1) < 0.1), ratio


def test_bad_rule_and_a_graph_without_the_walk(mlp_session) -> None:
    with pytest.raises(OptionError, match="lrp_rule"):
        METHODS["lrp"](mlp_session, X, 0, lrp_rule="gamma2")
    model = augment(mlp(), taps={})  # without lrp=True: the rectifier codes only
    with pytest.raises(ModelError, match="no LRP walk: augment its forward graph with --lrp"):
        METHODS["lrp"](ExplainSession(model), X, 0)


def test_the_command_line_option_reaches_the_method(tmp_path: Path) -> None:
    """``gradtap explain -m lrp --lrp-rule epsilon`` writes the method's map for that composite."""
    import cv2  # noqa: PLC0415

    from tests.conftest import invoke  # noqa: PLC0415

    model = tmp_path / "mlp.gradtap.onnx"
    onnx.save(augment(mlp(), taps={}, lrp=True), str(model))
    photo = tmp_path / "pixel.png"
    cv2.imwrite(str(photo), np.full((1, 1, 3), 128, np.uint8))
    out = tmp_path / "out"
    args = ["explain", photo, "-M", model, "-m", "lrp", "-t", "0", "--format", "npy", "-o", out]
    for rule in ("epsilon", "flat", "gamma"):
        result = invoke(*args, "--lrp-rule", rule, "--overwrite")
        assert result.exit_code == 0, result.output
        x = np.full((1, 3, 1, 1), 128 / 255, np.float32)
        expected = METHODS["lrp"](ExplainSession(model), x, 0, lrp_rule=rule).maps[0]
        np.testing.assert_allclose(np.load(out / "pixel" / "lrp.npy"), expected, rtol=1e-5)
    bad = invoke(*args, "--lrp-rule", "gamma2")
    assert bad.exit_code == 2 and "gamma2" in bad.output


def test_the_walk_is_on_request_and_the_flat_variant_carries_one_composite(tmp_path: Path) -> None:
    forward = tmp_path / "mlp.onnx"
    onnx.save(mlp(), str(forward))
    for flags, codes in (((), c.RELU_RULES), (("--lrp",), c.BACKWARD_RULES)):
        out = tmp_path / f"mlp{len(flags)}.gradtap.onnx"
        result = invoke("augment", forward, "-o", out, "--tap", "h=h", *flags)
        assert result.exit_code == 0, result.output
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(meta[c.META_RELU_RULES]) == codes
    flat = tmp_path / "flat.onnx"
    args = ("augment", forward, "-o", flat, "--tap", "h=h", "--flat")
    result = invoke(*args, "--lrp-composite", "epsilon")
    assert result.exit_code == 0, result.output
    model = onnx.load(str(flat))
    assert not [n for n in model.graph.node if n.op_type == "If"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta[c.META_RELU_RULES]) == {**c.RELU_RULES, "lrp_epsilon": 3}
    session = ExplainSession(flat)
    e = METHODS["lrp"](session, X, 0, lrp_rule="epsilon")
    np.testing.assert_allclose(e.extras["relevance"].ravel(), EPSILON_BY_HAND, atol=EPS)
    gated = ExplainSession(tmp_path / "mlp0.gradtap.onnx")
    for method in ("saliency", "guided_backprop"):  # the gradient codes are the gradients
        np.testing.assert_array_equal(
            METHODS[method](session, X, 0).maps, METHODS[method](gated, X, 0).maps
        )
    with pytest.raises(ModelError, match=r"carries the LRP composite\(s\) \['epsilon'\] only"):
        METHODS["lrp"](session, X, 0, lrp_rule="flat")
    raw = ort.InferenceSession(str(flat), providers=["CPUExecutionProvider"])
    feeds = {c.INPUT: X, c.SEED: np.zeros((1, 2), np.float32), c.SEED_TOP1: np.array(1, np.float32),
             c.OBJECTIVE: np.array(0, np.int64), c.RELU_RULE: np.array(c.LRP_RULES["lrp_flat"], np.int64)}  # fmt: skip
    assert np.isnan(raw.run([c.GRAD_INPUT], feeds)[0]).all()  # a code it does not carry: NaN
    for flags, message in (
        (("--lrp",), "name it with --lrp-composite"),
        (("--lrp-composite", "gamma2"), "gamma2"),
    ):
        result = invoke(*args, *flags, "--overwrite")
        assert result.exit_code == 2 and message in result.output, result.output
    result = invoke("augment", forward, "-o", flat, "--lrp-composite", "epsilon", "--overwrite")
    assert result.exit_code == 2 and "--lrp-composite is for --flat" in result.output
    with pytest.raises(OptionError, match="name it"):
        augment(mlp(), taps={}, flat=True, lrp=True)
    with pytest.raises(OptionError, match="unknown LRP composite"):
        augment(mlp(), taps={}, flat=True, lrp_composite="gamma2")
