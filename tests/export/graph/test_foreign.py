"""Foreign-graph pre-passes on graphs built with onnx.helper: NHWC, BGR 0-255 caffe means, heads.

The oracle is the untouched original graph: fed what it expects (channels last, BGR, 0-255,
mean-subtracted), its scores and their central finite differences must match the explanation
graph fed plain RGB [0, 1] NCHW pixels. A finite difference is wrong where the step crosses a
Relu/MaxPool kink (a few hundred units per sample, so it happens now and then even at 1e-4):
gradients must match on at least 2 of 3 random inputs, logits on all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from gradtap.cli.main import cli
from gradtap.export.graph import foreign
from gradtap.export.graph.augment import augment
from gradtap.export.graph.vjp import check_coverage
from gradtap.runtime import contract as c
from gradtap.runtime.errors import GraphError, UnsupportedOpsError
from tests.graphs import session, tiny_cnn

RNG = np.random.default_rng(13)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def nhwc_softmax_net(size: int = 8, classes: int = 5, head: str = "Softmax") -> onnx.ModelProto:
    """The tf2onnx shape of a Keras classifier: NHWC input, NCHW convs, NHWC pooling, a head."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32) * 0.5, "w"),
        numpy_helper.from_array(rng.normal(size=6).astype(np.float32) * 0.1, "b"),
        numpy_helper.from_array(rng.normal(size=(6, classes)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.asarray([1, 2], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Transpose", ["relu"], ["relu_nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("ReduceMean", ["relu_nhwc", "axes"], ["pooled"], name="gap", keepdims=0),
        helper.make_node("MatMul", ["pooled", "fc"], ["scores"], name="dense"),
        helper.make_node(head, ["scores"], ["probs"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "keras_like",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", size, size, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def caffe_cnn(size: int = 8) -> onnx.ModelProto:
    """tiny_cnn's weights scaled for BGR 0-255 mean-subtracted input (no std), with a Softmax."""
    model = tiny_cnn(size=size, names=("data", "fc"))
    w1 = next(i for i in model.graph.initializer if i.name == "w1")
    w1.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w1) / 60.0, "w1"))
    model.graph.node.append(helper.make_node("Softmax", ["fc"], ["prob"], name="prob", axis=1))
    model.graph.output[0].name = "prob"
    return model


def to_bgr255_centered(x: np.ndarray) -> np.ndarray:
    bgr = x[:, ::-1] * 255.0
    return (bgr - np.asarray(CAFFE_MEAN_BGR, np.float32).reshape(1, 3, 1, 1)).astype(np.float32)


def check_against_original(
    aug: onnx.ModelProto, original: onnx.ModelProto, scores: str, convert, size: int = 8
) -> None:
    """Logits and grad/input of ``aug`` on RGB [0, 1] NCHW against the original's scores."""
    orig = onnx.ModelProto()
    orig.CopyFrom(original)
    if scores not in [o.name for o in orig.graph.output]:
        orig.graph.output.append(helper.make_empty_tensor_value_info(scores))
    ref = session(orig)

    def f(x: np.ndarray) -> np.ndarray:
        return ref.run([scores], {orig.graph.input[0].name: convert(x)})[0].astype(np.float64)

    sess = session(aug)
    agree = []
    for _ in range(3):
        x = RNG.random((1, 3, size, size), dtype=np.float32)
        seed = RNG.normal(size=(1, f(x).shape[1])).astype(np.float32)
        logits, grad = sess.run([c.LOGITS, c.GRAD_INPUT], {c.INPUT: x, c.SEED: seed})
        np.testing.assert_allclose(logits, f(x), rtol=1e-4, atol=1e-4)
        t = RNG.normal(size=x.shape).astype(np.float32)
        eps = 1e-4  # float32 rounding of the scores adds ~1e-4 noise to the quotient
        numeric = np.sum(seed * (f(x + eps * t) - f(x - eps * t)) / (2 * eps))
        analytic = np.sum(grad.astype(np.float64) * t)
        agree.append(abs(analytic - numeric) <= 2e-3 + 5e-3 * abs(numeric))
    assert sum(agree) >= 2, agree


def meta(model: onnx.ModelProto) -> dict[str, str]:
    return {m.key: m.value for m in model.metadata_props}


def test_nhwc_graph_is_detected_and_takes_nchw_rgb() -> None:
    original = nhwc_softmax_net()
    aug = augment(original)
    dims = [d.dim_value or d.dim_param for d in aug.graph.input[0].type.tensor_type.shape.dim]
    assert aug.graph.input[0].name == c.INPUT and dims[1:] == [3, 8, 8]
    check_against_original(
        aug, original, "scores", lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    )
    stated = json.loads(meta(aug)[c.META_PREPROCESSING])
    assert stated["layout"] == "nhwc" and stated["source"]["layout"] == "detected"


def test_nhwc_default_tap_is_the_nchw_map_with_a_short_alias() -> None:
    aug = augment(nhwc_softmax_net())
    assert json.loads(meta(aug)[c.META_TAPS]) == {"features": "relu"}  # not relu_nhwc
    assert meta(aug)[c.META_DEFAULT_TAP] == foreign.DEFAULT_TAP_ALIAS
    x = RNG.random((1, 3, 8, 8), dtype=np.float32)
    tap = session(aug).run(["tap/features"], {c.INPUT: x, c.SEED: np.ones((1, 5), np.float32)})
    assert tap[0].shape == (1, 6, 8, 8)


def test_softmax_head_is_explained_at_its_input_and_kept_as_probabilities() -> None:
    original = nhwc_softmax_net()
    aug = augment(original)
    x = RNG.random((2, 3, 8, 8), dtype=np.float32)
    seed = np.ones((2, 5), np.float32)
    logits, probs = session(aug).run([c.LOGITS, c.PROBABILITIES], {c.INPUT: x, c.SEED: seed})
    expected = session(original).run(None, {"image": x.transpose(0, 2, 3, 1).copy()})[0]
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    head = json.loads(meta(aug)[c.META_HEAD])
    assert head["op"] == "Softmax" and head["scores"] == "scores"


def test_sigmoid_head_of_a_multilabel_graph() -> None:
    original = nhwc_softmax_net(head="Sigmoid")
    aug = augment(original)
    x = RNG.random((2, 3, 8, 8), dtype=np.float32)
    logits, probs = session(aug).run(
        [c.LOGITS, c.PROBABILITIES], {c.INPUT: x, c.SEED: np.ones((2, 5), np.float32)}
    )
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-7)
    assert json.loads(meta(aug)[c.META_HEAD])["op"] == "Sigmoid"


def test_keep_head_explains_the_output_as_it_is() -> None:
    original = nhwc_softmax_net()
    aug = augment(original, head="keep")
    assert c.PROBABILITIES not in [o.name for o in aug.graph.output]
    assert c.META_HEAD not in meta(aug)
    check_against_original(
        aug, original, "probs", lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    )


def test_bgr_0_255_caffe_mean_without_std() -> None:
    original = caffe_cnn()
    aug = augment(original, channel_order="bgr", value_range=(0, 255), mean=CAFFE_MEAN_BGR)
    check_against_original(aug, original, "fc", to_bgr255_centered)
    norm = json.loads(meta(aug)[c.META_NORMALIZATION])  # the same map in RGB [0, 1] terms
    np.testing.assert_allclose(norm["mean"], np.asarray(CAFFE_MEAN_BGR[::-1]) / 255, rtol=1e-6)
    np.testing.assert_allclose(norm["std"], [1 / 255] * 3, rtol=1e-6)
    stated = json.loads(meta(aug)[c.META_PREPROCESSING])
    assert stated["channel_order"] == "BGR" and stated["value_range"] == [0, 255]
    assert stated["std"] is None and stated["source"]["mean"] == "option"


def test_windows_ml_metadata_states_order_and_range() -> None:
    original = caffe_cnn()
    original.metadata_props.add(key="Image.BitmapPixelFormat", value="Bgr8")
    original.metadata_props.add(key="Image.NominalPixelRange", value="NominalRange_0_255")
    aug = augment(original, mean=CAFFE_MEAN_BGR)
    check_against_original(aug, original, "fc", to_bgr255_centered)
    source = json.loads(meta(aug)[c.META_PREPROCESSING])["source"]
    assert source["channel_order"] == "metadata" and source["value_range"] == "metadata"


def test_minus_one_to_one_range_with_nhwc_stated() -> None:
    original = nhwc_softmax_net()
    aug = augment(original, layout="nhwc", value_range=(-1, 1))
    check_against_original(
        aug, original, "scores", lambda x: np.ascontiguousarray((2 * x - 1).transpose(0, 2, 3, 1))
    )


def test_bgr_nhwc_at_opset_18_splits_by_num_outputs() -> None:
    original = nhwc_softmax_net()  # opset 18: Split takes num_outputs
    aug = augment(original, channel_order="bgr")
    split = next(n for n in aug.graph.node if n.op_type == "Split")
    assert [a.i for a in split.attribute if a.name == "num_outputs"] == [3]
    check_against_original(
        aug, original, "scores", lambda x: np.ascontiguousarray(x[:, ::-1].transpose(0, 2, 3, 1))
    )


def test_plain_graphs_are_untouched_by_the_pre_passes() -> None:
    aug = augment(tiny_cnn())
    assert c.META_PREPROCESSING not in meta(aug) and c.META_HEAD not in meta(aug)
    assert not any(n.name.startswith(f"{c.INPUT}/") for n in aug.graph.node)


def test_bad_layouts_and_options_are_graph_errors() -> None:
    with pytest.raises(GraphError, match=r"must be \[N, H, W, 3\]"):
        augment(tiny_cnn(), layout="nhwc")
    with pytest.raises(GraphError, match="choose one of"):
        augment(tiny_cnn(), layout="chw")
    with pytest.raises(GraphError, match="empty"):
        augment(tiny_cnn(), value_range=(1, 0))
    with pytest.raises(GraphError, match="std must be > 0"):
        augment(tiny_cnn(), value_range=(0, 255), std=(1, 0, 1))


def test_missing_ops_error_counts_and_samples_each_type() -> None:
    nodes = [helper.make_node("Erf", ["x"], [f"e{k}"], name=f"erf{k}") for k in range(5)]
    nodes.append(helper.make_node("Tanh", ["x"], ["t"], name="tanh0"))
    with pytest.raises(UnsupportedOpsError) as err:
        check_coverage(nodes, {"Relu": None})  # type: ignore[dict-item]
    message = str(err.value)
    assert "2 op type(s)" in message
    assert "Erf: 5 nodes (erf0, erf1, erf2, +2 more)" in message
    assert "Tanh: 1 node (tanh0)" in message and "erf4" not in message


def test_cli_augment_with_preprocessing_flags_and_info(tmp_path: Path) -> None:
    src = tmp_path / "caffe.onnx"
    onnx.save(caffe_cnn(), str(src))
    dst = tmp_path / "caffe.gradtap.onnx"
    args = ["augment", src, "-o", dst, "--channel-order", "bgr", "--value-range", "0-255",
            "--mean", ",".join(map(str, CAFFE_MEAN_BGR))]  # fmt: skip
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    check_against_original(onnx.load(str(dst)), caffe_cnn(), "fc", to_bgr255_centered)
    text = CliRunner().invoke(cli, ["info", str(dst)]).output
    assert "head      Softmax removed" in text and "probabilities" in text
    assert 'channel_order "BGR"' in text and "value_range [0.0, 255.0]" in text
    bad = CliRunner().invoke(cli, ["augment", str(src), "-o", str(tmp_path / "x.onnx"),
                                   "--value-range", "255-0"])  # fmt: skip
    assert bad.exit_code == 2 and "LO-HI" in bad.output
    unitless = CliRunner().invoke(cli, ["augment", str(src), "-o", str(tmp_path / "y.onnx"),
                                        "--mean", "103.9,116.8,123.7"])  # fmt: skip
    assert unitless.exit_code == 2 and "--value-range 0-255" in unitless.output


def test_info_on_a_forward_nhwc_softmax_graph_says_what_augment_will_do(tmp_path: Path) -> None:
    src = tmp_path / "keras.onnx"
    onnx.save(nhwc_softmax_net(), str(src))
    text = CliRunner().invoke(cli, ["info", str(src)]).output
    assert "channels-last input" in text and "a Softmax head" in text
    plain = tmp_path / "plain.onnx"
    onnx.save(tiny_cnn(), str(plain))
    assert "note:" not in CliRunner().invoke(cli, ["info", str(plain)]).output


def test_explainer_runs_on_a_converted_nhwc_softmax_graph() -> None:
    from gradtap.runtime.explainer import Explainer

    original = nhwc_softmax_net(size=16)
    ex = Explainer(augment(original))
    image = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    x, _ = ex.inputs(image)
    probs = session(original).run(None, {"image": x.transpose(0, 2, 3, 1).copy()})[0][0]
    (best, prob), *_ = ex.predict(image, k=1)[0]
    assert best == f"class_{probs.argmax()}" and prob == pytest.approx(probs.max(), rel=1e-5)
    assert ex.info.default_tap == "features" and ex.gradcam(image).maps.shape == (1, 16, 16)


def test_a_sigmoid_heads_predictions_are_its_own_probabilities(tmp_path: Path) -> None:
    """Multi-label: the runtime's probabilities are the graph's own Sigmoid outputs (which do not
    sum to one), in the Python API and in the CLI's summary, not a softmax of the logits."""
    from gradtap.export.graph.augment import save_model
    from gradtap.runtime import Explainer
    from tests.conftest import invoke

    path = tmp_path / "multilabel.gradtap.onnx"
    save_model(augment(nhwc_softmax_net(head="Sigmoid")), path)
    x = RNG.random((8, 8, 3), dtype=np.float32)
    oracle = session(onnx.load(path)).run([c.PROBABILITIES], {
        c.INPUT: x.transpose(2, 0, 1)[None], c.SEED: np.ones((1, 5), np.float32),
    })[0][0]  # fmt: skip
    assert abs(oracle.sum() - 1) > 0.05  # independent sigmoids
    predicted = Explainer(path).predict(x, k=5)[0]
    assert [label for label, _ in predicted] == [f"class_{i}" for i in np.argsort(-oracle)]
    np.testing.assert_allclose([p for _, p in predicted], np.sort(oracle)[::-1], rtol=1e-5)
    picture = tmp_path / "x.png"
    import cv2

    cv2.imwrite(str(picture), np.rint(x[..., ::-1] * 255).astype(np.uint8))
    result = invoke("explain", picture, "-M", path, "-m", "saliency", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (group,) = summary["groups"].values()
    top = group["predictions"][0]
    assert top["label"] == f"class_{int(np.argmax(oracle))}"
    assert top["prob"] == pytest.approx(float(oracle.max()), abs=0.01)  # 8-bit PNG round trip
