"""Channel interventions on the default tap: the ``tap_scale`` input.

``tap_scale`` [N, C] multiplies the default tap's activation channel by channel, row by row,
before the rest of the network reads it; the runtime feeds ones unless a method asks otherwise.
Ablation-CAM feeds rows with one zero each, so ablating C channels of an image costs C rows of
one batched call instead of rebuilt models. The tap's own output (``tap/<alias>``) stays the
unscaled activation, and the backward pass runs through the scaling like through any Mul.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph.emitter import GraphInfo
from gradtap.runtime import contract as c

log = logging.getLogger(__name__)

TAP_ROWS = "tap_rows"  # N, or any M when the input batch is one image (broadcast, forward only)


def add_tap_scale(model: onnx.ModelProto, tensor: str) -> bool:
    """Insert ``tensor * tap_scale[:, :, None, None]`` in front of every consumer of ``tensor``.

    Must run before the backward pass is added. Declares the required graph input ``tap_scale``
    (no initializer: the caller feeds it). Skipped (returns False) when the tap is not a 4-D map
    with a static channel count.
    """
    graph = model.graph
    shape = GraphInfo.of(model).shape(tensor)
    if len(shape) != 4 or not isinstance(shape[1], int):
        log.info("no %s input: tap %r is not [N, C, h, w] with a static C", c.TAP_SCALE, tensor)
        return False
    graph.input.append(
        helper.make_tensor_value_info(c.TAP_SCALE, TensorProto.FLOAT, [TAP_ROWS, shape[1]])
    )
    axes, scale4d, scaled = "tap_scale/axes", "tap_scale/nchw", "tap_scale/scaled"
    graph.initializer.append(numpy_helper.from_array(np.asarray([2, 3], np.int64), axes))
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0].startswith(c.TAP_PREFIX):
            continue  # the tap outputs keep the unscaled activation
        for k, name in enumerate(node.input):
            if name == tensor:
                node.input[k] = scaled
    producer = next(i for i, n in enumerate(graph.node) if tensor in n.output)
    nodes = [
        helper.make_node("Unsqueeze", [c.TAP_SCALE, axes], [scale4d], name="tap_scale/Unsqueeze"),
        helper.make_node("Mul", [tensor, scale4d], [scaled], name="tap_scale/Mul"),
    ]
    for offset, node in enumerate(nodes, start=1):
        graph.node.insert(producer + offset, node)
    return True


def inputs_last(model: onnx.ModelProto) -> None:
    """Move ``tap_scale`` to the end of the graph inputs (the contract's input order)."""
    inputs = model.graph.input
    found = [i for i in inputs if i.name == c.TAP_SCALE]
    for vi in found:
        inputs.remove(vi)
        inputs.append(vi)
