"""Feature taps: finding candidate feature maps in a forward graph and choosing the default one."""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

from gradtap.export.graph.emitter import GraphInfo
from gradtap.runtime.errors import GraphError

# Ops whose output is a pooled summary rather than a feature map worth explaining with.
POOLING_OPS = frozenset(
    {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean"}
)
# Ops that merely pass a feature map along; a tap is better placed on their input's producer.
PASS_THROUGH_OPS = frozenset({"Identity", "Dropout", "Flatten", "Reshape", "Cast"})


@dataclass(frozen=True)
class TapCandidate:
    """A 4-D float feature map that can be exposed as a tap."""

    name: str
    op_type: str
    node: str
    shape: tuple[int | str | None, ...]

    def __str__(self) -> str:
        dims = "x".join(str(d) if d is not None else "?" for d in self.shape)
        return f"{self.name}  [{dims}]  ({self.op_type} {self.node})"


def candidate_taps(model: onnx.ModelProto) -> list[TapCandidate]:
    """Every 4-D float tensor produced by a node, in forward order."""
    info = GraphInfo.of(model)
    found = []
    for node in model.graph.node:
        for out in node.output:
            shape = info.shapes.get(out)
            if shape and len(shape) == 4 and info.dtypes.get(out) == onnx.TensorProto.FLOAT:
                found.append(TapCandidate(out, node.op_type, node.name, shape))
    return found


def default_tap(model: onnx.ModelProto) -> TapCandidate:
    """The last spatial feature map that is not a pooling output (Grad-CAM's usual layer).

    For VGG16 that is the rectified conv5_3 output (14x14 at 224), not the 7x7 pool after it;
    for ResNets the output of layer4; for a GAP head the map the pool averages.
    """
    feeding = ancestors(model.graph, model.graph.output[0].name)
    spatial = [
        c
        for c in candidate_taps(model)
        if c.name in feeding
        and c.op_type not in POOLING_OPS | PASS_THROUGH_OPS
        and not all(d == 1 for d in c.shape[2:])
    ]
    if not spatial:
        raise GraphError("the graph has no 4-D feature map to tap; name one with --tap")
    return spatial[-1]


def ancestors(graph: onnx.GraphProto, target: str) -> set[str]:
    """Every tensor ``target`` is computed from, ``target`` included."""
    found = {target}
    for node in reversed(graph.node):
        if found.intersection(node.output):
            found.update(node.input)
    return found


def alias_for(tensor: str) -> str:
    """A short, output-name-safe alias for a tensor name."""
    alias = re.sub(r"[^A-Za-z0-9_.-]+", "_", tensor).strip("_")
    return alias or "tap"
