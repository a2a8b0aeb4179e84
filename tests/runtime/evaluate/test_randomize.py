"""Cascading model randomisation on ONNX graphs (no torch): which layers, what changes, what not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph.augment import augment
from gradtap.export.graph.gate import branch_nodes
from gradtap.runtime import contract as c
from gradtap.runtime.evaluate import randomize as sanity
from tests.graphs import OPSET, controls, session, tiny_cnn
from tests.runtime_graphs import linear_model, tiny_model

SIZE = 16


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return tiny_model(size=SIZE)


def _inits(m: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: t.SerializeToString() for t in m.graph.initializer}


def _run(m: onnx.ModelProto, x: np.ndarray, seed: np.ndarray) -> dict[str, np.ndarray]:
    sess = session(m)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {c.INPUT: x, c.SEED: seed, **controls(m)}), strict=True))


def test_layers_are_listed_from_the_logits_down_once_each(model: onnx.ModelProto) -> None:
    layers = sanity.parameterised_layers(model)
    assert [(lay.node, lay.weight, lay.bias) for lay in layers] == [
        ("fc", "fc_w", "fc_b"),
        ("conv2", "w2", "b2"),
        ("conv1", "w1", "b1"),
    ]
    # the backward pass reads the same weights through its own nodes
    readers = [n.op_type for n in branch_nodes(model) if "w2" in n.input]
    assert len(readers) >= 2


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_top_k_changes_exactly_those_layers(model: onnx.ModelProto, k: int) -> None:
    before = model.SerializeToString()
    out = sanity.randomize_top(model, k, seed=4)
    assert model.SerializeToString() == before  # input not mutated
    old, new = _inits(model), _inits(out)
    assert old.keys() == new.keys()
    layers = sanity.parameterised_layers(model)
    changed = {n for lay in layers[:k] for n in (lay.weight, lay.bias)}
    assert {name for name in old if old[name] != new[name]} == changed
    assert [n.SerializeToString() for n in out.graph.node] == [
        n.SerializeToString() for n in model.graph.node
    ]


def test_randomised_weights_keep_scale_shape_and_dtype(model: onnx.ModelProto) -> None:
    out = sanity.randomize_top(model, 3, seed=0)
    for name in ("w1", "w2", "fc_w"):
        a = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))
        b = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == name))
        assert a.shape == b.shape and a.dtype == b.dtype
        assert not np.allclose(a, b)
        assert b.std() == pytest.approx(a.std(), rel=0.35)
        assert abs(b.mean() - a.mean()) < 0.5 * a.std()


def test_randomised_model_outputs_and_gradients_differ(model: onnx.ModelProto) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (2, 3, SIZE, SIZE)).astype(np.float32)
    seed = rng.normal(size=(2, 3)).astype(np.float32)
    ref, got = _run(model, x, seed), _run(sanity.randomize_top(model, 2, seed=1), x, seed)
    assert not np.allclose(ref[c.LOGITS], got[c.LOGITS], atol=1e-3)
    assert not np.allclose(ref[c.GRAD_INPUT], got[c.GRAD_INPUT], atol=1e-4)


def test_randomised_augmented_graph_equals_augmenting_the_randomised_forward() -> None:
    forward = tiny_cnn(size=SIZE)
    ours = sanity.randomize_top(tiny_model(size=SIZE), 3, seed=2)
    oracle = augment(sanity.randomize_top(forward, 3, seed=2), taps={"features": "features"})
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (2, 3, SIZE, SIZE)).astype(np.float32)
    seed = rng.normal(size=(2, 3)).astype(np.float32)
    a, b = _run(ours, x, seed), _run(oracle, x, seed)
    for name in (c.LOGITS, c.GRAD_INPUT, c.tap_grad_output("features")):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_linear_model_gradient_is_the_randomised_weight() -> None:
    weights = np.random.default_rng(3).normal(size=(2, 3 * 6 * 6))
    model = linear_model(weights, size=6)
    out = sanity.randomize_top(model, 1, seed=5)
    new_w = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "w"))
    x = np.full((1, 3, 6, 6), 0.5, np.float32)
    grad = _run(out, x, np.array([[0.0, 1.0]], np.float32))[c.GRAD_INPUT]
    np.testing.assert_allclose(grad[0], new_w[1], rtol=1e-6)
    assert not np.allclose(new_w.reshape(2, -1), weights, atol=1e-3)


def test_cascade_is_consistent_across_steps(model: onnx.ModelProto) -> None:
    steps = list(sanity.cascading_randomization(model, seed=7))
    assert [layer.node for layer, _ in steps] == ["fc", "conv2", "conv1"]
    first, last = _inits(steps[0][1]), _inits(steps[-1][1])
    assert first["fc_w"] == last["fc_w"] and first["fc_b"] == last["fc_b"]
    assert _inits(sanity.randomize_top(model, 3, seed=8))["fc_w"] != last["fc_w"]
    assert _inits(sanity.randomize_top(model, 3, seed=7)) == last


def _matmul_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "w"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "b"], ["logits"], name="bias"),
        helper.make_node("Relu", ["logits"], ["unused"], name="after"),
    ]
    graph = helper.make_graph(
        nodes,
        "mm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 2, 2])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("unused", TensorProto.FLOAT, ["n", 4]),
        ],
        initializer=[
            numpy_helper.from_array(rng.normal(size=(12, 4)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def test_matmul_layer_takes_the_following_bias() -> None:
    layers = sanity.parameterised_layers(_matmul_model())
    assert layers == [sanity.Layer("mm", "MatMul", "w", "b")]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: sanity.randomize_top(m, 4), r"k=4 out of range.*3 layers"),
        (lambda m: sanity.randomize_top(m, -1), "out of range"),
        (lambda m: sanity.parameterised_layers(m, output="nope"), "no node produces 'nope'"),
        (lambda m: sanity.parameterised_layers(_matmul_model(), "flat"), "no parameterised"),
        (lambda m: sanity.randomize_layers(m, [sanity.Layer("x", "Conv", "zz", None)]), "zz"),
    ],
)
def test_bad_requests_raise_clear_errors(model: onnx.ModelProto, call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(model)
