"""The augmentation pass end to end on small graphs built with onnx.helper (no torch)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from gradtap.export.graph.augment import augment, augment_file, load_model
from gradtap.runtime import contract as c
from gradtap.runtime.errors import UnsupportedOpsError
from tests.graphs import controls, session, tiny_cnn, with_defaults

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def aug() -> onnx.ModelProto:
    return augment(tiny_cnn(), taps={"features": "features"})


def feeds(batch: int, classes: int = 3, rule: int = 0) -> dict[str, np.ndarray]:
    return {
        c.INPUT: RNG.random((batch, 3, 8, 8), dtype=np.float32),
        c.SEED: RNG.normal(size=(batch, classes)).astype(np.float32),
        **controls(relu_rule=rule),
    }


def test_contract_names_and_metadata(aug: onnx.ModelProto) -> None:
    inputs = [i.name for i in aug.graph.input]
    outputs = [o.name for o in aug.graph.output]
    assert inputs[:1] == [c.INPUT] and {c.SEED, c.RELU_RULE, c.SEED_TOP1} <= set(inputs)
    assert outputs == [c.LOGITS, "tap/features", "cam/features", c.GRAD_INPUT, "grad/tap/features"]
    meta = {m.key: m.value for m in aug.metadata_props}
    assert meta[c.META_CONTRACT] == c.CONTRACT_VERSION and meta[c.META_AUGMENTED] == "1"
    assert json.loads(meta[c.META_TAPS]) == {"features": "features"}
    assert json.loads(meta[c.META_RELU_RULES]) == c.RELU_RULES  # the LRP walk only on request
    walked = augment(tiny_cnn(), taps={"features": "features"}, lrp=True)
    meta = {m.key: m.value for m in walked.metadata_props}
    assert json.loads(meta[c.META_RELU_RULES]) == c.BACKWARD_RULES  # with the LRP codes
    assert {n.domain for n in aug.graph.node} <= {"", "ai.onnx"}
    onnx.checker.check_model(aug, full_check=True)


def test_input_gradient_matches_finite_differences(aug: onnx.ModelProto) -> None:
    f = feeds(2)
    logits, grad = session(aug).run([c.LOGITS, c.GRAD_INPUT], f)
    fwd = session(tiny_cnn())
    t = RNG.normal(size=f[c.INPUT].shape).astype(np.float32)
    eps = 1e-3
    plus = fwd.run(None, {c.INPUT: f[c.INPUT] + eps * t})[0].astype(np.float64)
    minus = fwd.run(None, {c.INPUT: f[c.INPUT] - eps * t})[0].astype(np.float64)
    numeric = np.sum(f[c.SEED] * (plus - minus) / (2 * eps), axis=1)
    analytic = np.sum(grad.astype(np.float64) * t, axis=(1, 2, 3))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(logits, fwd.run(None, {c.INPUT: f[c.INPUT]})[0], rtol=1e-6)


def test_tap_gradient_is_the_linear_head_row(aug: onnx.ModelProto) -> None:
    """Through GAP -> Gemm, d(seed . logits)/d features = (seed @ W)[c] / (h * w) everywhere."""
    f = feeds(3)
    (dtap,) = session(aug).run(["grad/tap/features"], f)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in aug.graph.initializer}
    expected = (f[c.SEED] @ weights["fc_w"]) / (4 * 4)
    np.testing.assert_allclose(
        dtap, np.broadcast_to(expected[:, :, None, None], dtap.shape), rtol=1e-6
    )


def test_relu_rules_from_one_file(aug: onnx.ModelProto) -> None:
    sess = session(aug)
    f = feeds(2)
    plain = sess.run([c.GRAD_INPUT], f)[0]
    f[c.RELU_RULE] = np.asarray(c.RELU_RULES["guided"], np.int64)
    guided = sess.run([c.GRAD_INPUT], f)[0]
    f[c.RELU_RULE] = np.asarray(c.RELU_RULES["deconvnet"], np.int64)
    deconv = sess.run([c.GRAD_INPUT], f)[0]
    assert not np.allclose(plain, guided) and not np.allclose(guided, deconv)
    # every control input is required: the file carries no default a runtime could fold in
    no_rule = {k: v for k, v in f.items() if k != c.RELU_RULE}
    raw = ort.InferenceSession(aug.SerializeToString())  # not tests.graphs' defaults-feeding one
    with pytest.raises(ValueError, match="relu_rule"):
        raw.run([c.GRAD_INPUT], no_rule)


def test_dynamic_batch_rows_are_independent(aug: onnx.ModelProto) -> None:
    f3 = feeds(3)
    grads3 = session(aug).run([c.GRAD_INPUT], f3)[0]
    f1 = {k: (v[1:2] if v.ndim else v) for k, v in f3.items()}
    grads1 = session(aug).run([c.GRAD_INPUT], f1)[0]
    np.testing.assert_allclose(grads1[0], grads3[1], rtol=1e-5, atol=1e-7)


def test_reference_evaluator_agrees_with_onnxruntime(aug: onnx.ModelProto) -> None:
    """onnx's own reference implementation runs the graph: only standard semantics are used."""
    names = [c.LOGITS, c.GRAD_INPUT, "grad/tap/features"]
    for rule in c.RELU_RULES.values():
        s = session(aug)
        f = with_defaults(s, feeds(2, rule=rule))
        ours = s.run(names, f)
        ref = ReferenceEvaluator(aug).run(names, f)
        for a, b in zip(ours, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_input_model_is_not_mutated() -> None:
    model = tiny_cnn()
    before = model.SerializeToString()
    augment(model)
    assert model.SerializeToString() == before


def test_default_tap_is_last_feature_map() -> None:
    meta = {m.key: m.value for m in augment(tiny_cnn()).metadata_props}
    assert json.loads(meta[c.META_TAPS]) == {"features": "features"}


def test_third_party_names_and_normalisation_are_adopted() -> None:
    model = tiny_cnn(names=("data", "scores"))
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    aug = augment(model, mean=mean, std=std, labels=["a", "b", "z"])
    x = RNG.random((1, 3, 8, 8), dtype=np.float32)
    normalised = (x - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    expected = session(model).run(None, {"data": normalised.astype(np.float32)})[0]
    seed = np.zeros((1, 3), np.float32)
    got = session(aug).run([c.LOGITS], {c.INPUT: x, c.SEED: seed, **controls(aug)})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    meta = {m.key: m.value for m in aug.metadata_props}
    assert json.loads(meta[c.META_LABELS]) == ["a", "b", "z"]


def test_unsupported_ops_are_all_listed_before_emitting() -> None:
    model = tiny_cnn()
    for node in model.graph.node:
        if node.name == "relu1":
            node.op_type = "Celu"
        if node.name == "relu2":
            node.op_type = "Shrink"
    with pytest.raises(UnsupportedOpsError) as err:
        augment(model)
    message = str(err.value)
    assert "Celu: 1 node (relu1)" in message and "Shrink: 1 node (relu2)" in message
    assert "Supported:" in message and "Conv" in message


def test_ops_off_the_gradient_path_need_no_rule() -> None:
    """A side branch that never reaches the logits is not differentiated (pruning)."""
    model = tiny_cnn()
    model.graph.node.append(helper.make_node("Elu", ["c1"], ["side"], name="side_branch"))
    augment(model)


def test_unknown_tap_lists_candidates() -> None:
    with pytest.raises(ValueError, match="unknown tap tensor 'nope'.*features"):
        augment(tiny_cnn(), taps=["nope"])


def test_external_data_outside_folder_is_refused(tmp_path) -> None:
    model = tiny_cnn()
    init = model.graph.initializer[0]
    init.data_location = onnx.TensorProto.EXTERNAL
    init.ClearField("raw_data")
    del init.float_data[:]
    init.external_data.add(key="location", value="../../etc/passwd")
    path = tmp_path / "evil.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ValueError, match="outside the model's folder"):
        load_model(path)


def test_augment_file_round_trip(tmp_path) -> None:
    src, dst = tmp_path / "fwd.onnx", tmp_path / "out.gradtap.onnx"
    onnx.save(tiny_cnn(), str(src))
    augment_file(src, dst)
    assert dst.exists() and not list(tmp_path.glob(".*.tmp"))
    assert {m.key for m in onnx.load(str(dst)).metadata_props} >= {c.META_AUGMENTED, c.META_TAPS}


def test_seed_top1_explains_the_predicted_class_in_one_call(aug: onnx.ModelProto) -> None:
    sess = session(aug)
    f = feeds(3)
    logits = sess.run([c.LOGITS], f)[0]
    onehot = np.eye(3, dtype=np.float32)[logits.argmax(1)]
    expected = sess.run([c.GRAD_INPUT], {**f, c.SEED: onehot})[0]
    zero_seed = {**f, c.SEED: np.zeros_like(onehot), c.SEED_TOP1: np.asarray(1.0, np.float32)}
    np.testing.assert_array_equal(sess.run([c.GRAD_INPUT], zero_seed)[0], expected)
    # seed_top1 defaults to 0: a zero seed then gives a zero gradient
    assert not sess.run([c.GRAD_INPUT], {**f, c.SEED: np.zeros_like(onehot)})[0].any()
