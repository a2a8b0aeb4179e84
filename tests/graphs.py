"""Builders for small ONNX graphs used by the backward-pass tests (onnx.helper only, no torch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

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


def session(model: onnx.ModelProto, *, layout_opt: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session; layout optimisations off unless asked for."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if layout_opt
        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )  # fmt: skip
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
