"""Random small CNN graphs from the supported op set go through augment and pass finite differences.

The per-rule tests pin each rule; these pin the walk: fan-out accumulation (residual adds, gating
muls, concatenated branches), strided and grouped convolutions, pooling and reshapes in random
orders. Activations are smooth (Sigmoid, HardSwish away from its kinks is rare to hit) so the
finite differences have no kink to straddle.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from gradtap.export.graph.augment import augment
from gradtap.runtime import contract as c
from tests.graphs import OPSET, controls, session


class Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.nodes, self.inits, self.k = rng, [], [], 0

    def name(self, hint: str) -> str:
        self.k += 1
        return f"{hint}{self.k}"

    def weight(self, *shape: int, scale: float = 0.5) -> str:
        name = self.name("w")
        value = (self.rng.normal(size=shape) * scale).astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", **attrs))
        return out


def layer(b: Builder, x: str, channels: int, kind: str) -> tuple[str, int]:
    """Apply one random block; returns the new tensor and its channel count."""
    if kind == "conv":
        out = channels * 2
        w = b.weight(out, channels, 3, 3, scale=0.3)
        return b.node("Conv", [x, w, b.weight(out)], pads=[1, 1, 1, 1]), out
    if kind == "strided_grouped":
        w = b.weight(channels, 1, 3, 3)
        return b.node("Conv", [x, w], pads=[1, 0, 1, 1], strides=[2, 2], group=channels), channels
    if kind == "sigmoid":
        return b.node("Sigmoid", [x]), channels
    if kind == "hardswish":
        return b.node("HardSwish", [x]), channels
    if kind == "residual":
        w = b.weight(channels, channels, 3, 3, scale=0.2)
        branch = b.node("Sigmoid", [b.node("Conv", [x, w], pads=[1, 1, 1, 1])])
        return b.node("Add", [x, branch]), channels
    if kind == "gate":
        return b.node("Mul", [x, b.node("Sigmoid", [x])]), channels
    if kind == "concat":
        w = b.weight(channels, channels, 1, 1)
        return b.node("Concat", [x, b.node("Conv", [x, w])], axis=1), 2 * channels
    if kind == "avgpool":
        return b.node(
            "AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ), channels
    if kind == "batchnorm":
        stats = [b.weight(channels, scale=0.1) for _ in range(3)]
        var = b.name("var")
        b.inits.append(numpy_helper.from_array(np.full(channels, 0.7, np.float32), var))
        return b.node("BatchNormalization", [x, *stats, var]), channels
    raise AssertionError(kind)


DOWNSAMPLING = frozenset({"strided_grouped", "avgpool"})
KINDS = [
    "conv",
    "strided_grouped",
    "sigmoid",
    "hardswish",
    "residual",
    "gate",
    "concat",
    "avgpool",
    "batchnorm",
]


def random_cnn(kinds: list[str], seed: int, size: int) -> onnx.ModelProto:
    b = Builder(np.random.default_rng(seed))
    x, channels, spatial = "input", 3, size
    for kind in kinds:
        if kind in DOWNSAMPLING:
            if spatial < 4:
                continue
            spatial = (spatial + 1) // 2
        x, channels = layer(b, x, channels, kind)
    flat = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    logits = b.node("Gemm", [flat, b.weight(4, channels), b.weight(4)], transB=1)
    graph = helper.make_graph(
        b.nodes,
        "random_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", 4])],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float64 (for onnx's reference evaluator)."""
    model = copy.deepcopy(model)
    for init in model.graph.initializer:
        init.CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name)
        )
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.elem_type = TensorProto.DOUBLE
    return model


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
    size=st.sampled_from([7, 8, 11]),
)
def test_random_graphs_have_exact_input_gradients(kinds: list[str], seed: int, size: int) -> None:
    model = random_cnn(kinds, seed, size)
    onnx.checker.check_model(model, full_check=True)
    aug = augment(model, taps=[])
    rng = np.random.default_rng(seed)
    x = rng.random((2, 3, size, size), dtype=np.float32)
    v = rng.normal(size=(2, 4)).astype(np.float32)
    t = rng.normal(size=x.shape).astype(np.float32)
    (grad,) = session(aug).run([c.GRAD_INPUT], {c.INPUT: x, c.SEED: v, **controls(aug)})
    fwd = ReferenceEvaluator(as_float64(model))  # the oracle runs in float64
    eps = 1e-5
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    plus = fwd.run(None, {"input": x64 + eps * t64})[0]
    minus = fwd.run(None, {"input": x64 - eps * t64})[0]
    numeric = np.sum(v * (plus - minus) / (2 * eps), axis=1)
    analytic = np.sum(grad.astype(np.float64) * t, axis=(1, 2, 3))
    scale = np.abs(grad).sum(axis=(1, 2, 3)) * np.abs(t).max() + 1e-6
    np.testing.assert_allclose(analytic / scale, numeric / scale, atol=1e-4)
