"""Find the class weights of a global-average-pool -> linear head after a tap (for CAM).

Found once, at augmentation time: the explanation graph then returns them as the output
``cam/<alias>`` [classes, C], so the runtime never re-reads the model file for them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from gradtap.runtime import contract as c
from gradtap.runtime.errors import GraphError

_PASS_THROUGH = frozenset({"Identity", "Dropout", "Flatten", "Reshape", "Squeeze"})


def class_weights(model: onnx.ModelProto, tap: str) -> npt.NDArray[np.float32]:
    """The [classes, channels] weights W with logits = W @ mean_hw(tap) + b.

    The tap is exposed as the graph output ``tap/<alias>`` (or recorded in the metadata).

    Walks back from the ``logits`` output through Identity/Dropout, then a Gemm (or MatMul with
    an optional bias Add), Flatten/Reshape/Squeeze, and a GlobalAveragePool (or ReduceMean over
    the spatial axes), which must read the tap's tensor.

    Args:
        model: the graph with its taps exposed.
        tap: the tap alias.

    Raises:
        GraphError: the head is not global-average-pool -> linear directly after the tap.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consts = _constants(graph)
    name, weights = _linear(_skip(c.LOGITS, producers), producers, consts, tap)
    pooled_from = _pool_input(_skip(name, producers), producers, consts, tap)
    if _skip(pooled_from, producers) not in _tap_tensors(model, tap, producers):
        raise GraphError(
            f"CAM: the global average pool reads {pooled_from!r}, not tap {tap!r}; "
            "CAM needs the tap right before the pooling (use gradcam otherwise)"
        )
    return weights


def _skip(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    """Look through Identity, Dropout and the tap_scale channel scaling (ones by default)."""
    while name in producers and (
        producers[name].op_type in ("Identity", "Dropout")
        or producers[name].name == f"{c.TAP_SCALE}/Mul"
    ):
        name = producers[name].input[0]
    return name


def _linear(
    name: str, producers: dict[str, onnx.NodeProto], consts: dict[str, np.ndarray], tap: str
) -> tuple[str, npt.NDArray[np.float32]]:
    node = producers.get(name)
    if node is not None and node.op_type == "Add":
        inner = [i for i in node.input if i not in consts]
        node = producers.get(_skip(inner[0], producers)) if len(inner) == 1 else None
    if node is not None and node.op_type == "Gemm" and node.input[1] in consts:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) == 0:
            b = consts[node.input[1]]
            w = b if attrs.get("transB", 0) else b.T
            return node.input[0], (attrs.get("alpha", 1.0) * w).astype(np.float32)
    if node is not None and node.op_type == "MatMul" and node.input[1] in consts:
        return node.input[0], consts[node.input[1]].T.astype(np.float32)
    raise _not_cam(tap, node, "a linear layer (Gemm, or MatMul + Add) producing the logits")


def _pool_input(
    name: str, producers: dict[str, onnx.NodeProto], consts: dict[str, np.ndarray], tap: str
) -> str:
    node = producers.get(name)
    while node is not None and node.op_type in _PASS_THROUGH:
        node = producers.get(node.input[0])
    if node is not None and node.op_type == "GlobalAveragePool":
        return node.input[0]
    if node is not None and node.op_type == "ReduceMean":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in consts:
            axes = consts[node.input[1]].tolist()
        if axes is not None and sorted(a % 4 for a in axes) == [2, 3]:
            return node.input[0]
    raise _not_cam(tap, node, "global average pooling before the linear layer")


def _tap_tensors(
    model: onnx.ModelProto, tap: str, producers: dict[str, onnx.NodeProto]
) -> set[str]:
    names = {c.tap_output(tap), _skip(c.tap_output(tap), producers)}
    raw = {p.key: p.value for p in model.metadata_props}.get(c.META_TAPS)
    try:
        taps = json.loads(raw) if raw else {}
    except json.JSONDecodeError as err:
        raise GraphError(f"metadata {c.META_TAPS} is not valid JSON ({err})") from None
    if isinstance(taps, dict) and isinstance(taps.get(tap), str):
        names.add(taps[tap])
    return {_skip(n, producers) for n in names if n}


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return consts


def cam_outputs(model: onnx.ModelProto, taps: Mapping[str, str]) -> dict[str, str]:
    """Add ``cam/<alias>`` outputs for every tap a GAP -> linear head reads (in place).

    Returns:
        alias -> why CAM does not apply, for the taps that got no output.
    """
    missing: dict[str, str] = {}
    for alias in taps:
        try:
            weights = class_weights(model, alias)
        except GraphError as err:
            missing[alias] = str(err)
            continue
        name = c.cam_output(alias)
        source = _same_initializer(model.graph, weights)
        if source is None:  # transposed or scaled: a copy of its own
            source = f"{name}/weights"
            model.graph.initializer.append(numpy_helper.from_array(weights, source))
        model.graph.node.append(helper.make_node("Identity", [source], [name], name=name))
        model.graph.output.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, list(weights.shape))
        )
    return missing


def _same_initializer(graph: onnx.GraphProto, weights: np.ndarray) -> str | None:
    """The initializer holding exactly ``weights`` (a Gemm with transB), if there is one."""
    for init in graph.initializer:
        if tuple(init.dims) == weights.shape and init.data_type == TensorProto.FLOAT:
            if np.array_equal(numpy_helper.to_array(init), weights):
                return init.name
    return None


def _not_cam(tap: str, node: onnx.NodeProto | None, expected: str) -> GraphError:
    found = "a graph input" if node is None else f"{node.op_type} (node {node.name!r})"
    return GraphError(
        f"CAM needs {expected} after tap {tap!r}, found {found}; "
        "CAM applies to global-average-pool -> linear heads (use gradcam otherwise)"
    )
