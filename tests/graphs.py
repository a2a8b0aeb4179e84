"""Builders for small ONNX graphs used by the backward-pass tests (onnx.helper only, no torch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from gradtap.runtime import contract as c

OPSET = 17
DTYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


def one_node_model(
    op_type: str,
    x_shape: Sequence[int],
    *,
    consts: Sequence[np.ndarray | None] = (),
    extra_inputs: Sequence[tuple[str, Sequence[int]]] = (),
    dtype: type = np.float32,
    opset: int = OPSET,
    **attrs: object,
) -> onnx.ModelProto:
    """A graph x -> op_type(x, *consts) -> y; ``extra_inputs`` add more differentiable inputs.

    ``consts`` fill the op's later inputs as initializers (None leaves an input slot empty).
    """
    elem = DTYPES[dtype]
    inputs = [helper.make_tensor_value_info("x", elem, list(x_shape))]
    names = ["x"]
    for name, shape in extra_inputs:
        inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        names.append(name)
    inits = []
    for k, value in enumerate(consts):
        if value is None:
            names.append("")
            continue
        inits.append(numpy_helper.from_array(value, f"c{k}"))
        names.append(f"c{k}")
    node = helper.make_node(op_type, names, ["y"], name=f"the_{op_type.lower()}", **attrs)
    graph = helper.make_graph(
        [node], "one", inputs, [helper.make_empty_tensor_value_info("y")], initializer=inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def controls(model: onnx.ModelProto | None = None, **values: float) -> dict[str, np.ndarray]:
    """Feeds for the explanation graph's control inputs: the contract's defaults (a plain full
    pass), overridden by ``values``; only those ``model`` declares when it is given."""
    from gradtap.runtime import contract as c

    declared = None if model is None else {i.name for i in model.graph.input}
    return {
        name: np.asarray(values.get(name, default), dtype)
        for name, (dtype, default) in c.CONTROL_DEFAULTS.items()
        if declared is None or name in declared
    }


def with_defaults(
    sess: ort.InferenceSession, feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``feeds`` plus what the runtime session feeds by default: the control inputs' defaults
    (a plain full pass) and ones for ``tap_scale``, for the inputs not given."""
    for i in sess.get_inputs():
        if i.name in feeds:
            continue
        if i.name == c.TAP_SCALE:
            feeds = {**feeds, i.name: np.ones((len(feeds[c.INPUT]), i.shape[1]), np.float32)}
        elif i.name in c.CONTROL_DEFAULTS:
            dtype, default = c.CONTROL_DEFAULTS[i.name]
            feeds = {**feeds, i.name: np.asarray(default, dtype)}
    return feeds


class Session(ort.InferenceSession):
    """An onnxruntime session that feeds the runtime's defaults for inputs not given."""

    def run(self, names, feeds, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        return super().run(names, with_defaults(self, feeds), *args, **kwargs)


def session(model: onnx.ModelProto, *, layout_opt: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session (runtime defaults fed); layout optimisations off unless asked."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if layout_opt
        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )  # fmt: skip
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return Session(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def unoptimised(model: onnx.ModelProto) -> ort.InferenceSession:
    """A plain onnxruntime session with no graph optimisations, one thread: quantised graphs
    run as the ONNX standard defines them, not through onnxruntime's fused integer kernels."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def tiny_cnn(
    *, classes: int = 3, size: int = 8, seed: int = 0, names: tuple[str, str] = ("input", "logits")
) -> onnx.ModelProto:
    """Conv-Relu-MaxPool-Conv-Relu-GlobalAveragePool-Flatten-Gemm, dynamic batch, random weights.

    The second Relu's output ("features") is the natural tap: the head is GAP -> linear, so the
    gradient of logit k with respect to it is W[k, c] / (h * w) everywhere (a hand-computed oracle).
    """
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.normal(size=(4, 3, 3, 3)).astype(np.float32) * 0.5,
        "b1": rng.normal(size=4).astype(np.float32) * 0.1,
        "w2": rng.normal(size=(6, 4, 3, 3)).astype(np.float32) * 0.3,
        "b2": rng.normal(size=6).astype(np.float32) * 0.1,
        "fc_w": rng.normal(size=(classes, 6)).astype(np.float32),
        "fc_b": rng.normal(size=classes).astype(np.float32),
    }
    x, out = names
    nodes = [
        helper.make_node("Conv", [x, "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["features"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], [out], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model
