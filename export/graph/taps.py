"""Feature taps: finding candidate feature maps in a forward graph and choosing the default one."""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

from gradtap.export.graph.emitter import GraphInfo
from gradtap.export.graph.tokens import default_token_tap, split_spec, token_grid
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
    """Every 4-D float tensor produced by a node, and every normalised token sequence that lies
    on a patch grid (named ``tensor@HxW``, shaped as its [N, C, h, w] view), in forward order."""
    info = GraphInfo.of(model)
    image = _image_input(model)
    found = []
    for node in model.graph.node:
        for out in node.output:
            shape = info.shapes.get(out)
            if not shape or info.dtypes.get(out) != onnx.TensorProto.FLOAT:
                continue
            if len(shape) == 4:
                found.append(TapCandidate(out, node.op_type, node.name, shape))
            elif len(shape) == 3 and node.op_type == "LayerNormalization" and image:
                try:
                    grid = token_grid(info, out, None, image)
                except GraphError:
                    continue
                spec = f"{out}@{grid.h}x{grid.w}"
                found.append(
                    TapCandidate(
                        spec, node.op_type, node.name, (shape[0], shape[2], grid.h, grid.w)
                    )
                )
    return found


def default_tap(model: onnx.ModelProto) -> TapCandidate:
    """The last spatial feature map that is not a pooling output (Grad-CAM's usual layer).

    For VGG16 that is the rectified conv5_3 output (14x14 at 224), not the 7x7 pool after it;
    for ResNets the output of layer4; for a GAP head the map the pool averages. A transformer's
    default is a token tap: the last block's normalised tokens (tokens.default_token_tap).
    """
    feeding = ancestors(model.graph, model.graph.output[0].name)
    image = _image_input(model)
    token = default_token_tap(model, image, feeding) if image else None
    if token is not None:
        node = next(n for n in model.graph.node if token in n.output)
        info = GraphInfo.of(model)
        grid = token_grid(info, token, None, image)
        batch, _, channels = info.shape(token)
        return TapCandidate(token, node.op_type, node.name, (batch, channels, grid.h, grid.w))
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


def _image_input(model: onnx.ModelProto) -> str | None:
    inits = {i.name for i in model.graph.initializer}
    images = [i.name for i in model.graph.input if i.name not in inits]
    return images[0] if len(images) == 1 else None


def ancestors(graph: onnx.GraphProto, target: str) -> set[str]:
    """Every tensor ``target`` is computed from, ``target`` included."""
    found = {target}
    for node in reversed(graph.node):
        if found.intersection(node.output):
            found.update(node.input)
    return found


def alias_for(tensor: str) -> str:
    """A short, output-name-safe alias for a tensor name."""
    alias = re.sub(r"[^A-Za-z0-9_.-]+", "_", split_spec(tensor)[0]).strip("_")
    return alias or "tap"
