"""Token taps: a transformer's token sequence [N, T, C] exposed as a feature map [N, C, h, w].

Grad-CAM on a ViT reads the patch tokens of a late block laid out on the patch grid, the class
(and distillation) tokens dropped, as pytorch-grad-cam's ``reshape_transform`` does. Here that
view is built in the graph: the tokens are split into the leading tokens and the patch tokens,
the patch tokens reshaped and transposed to [N, C, h, w] (the tap), then laid back as tokens
and concatenated again, and the graph reads the result where it read the tokens. The forward
pass is unchanged (the round trip only moves elements) and the tap sits on the gradient path,
so every CAM method works on it as on a convolutional feature map.

A tap is named ``tensor`` or ``tensor@HxW``; without a grid, it is inferred from the token count
and the input's aspect ratio, the fewest leading tokens first (0, 1 class token, 2 with a
distillation token, ...).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from gradtap.export.graph.emitter import GraphInfo
from gradtap.runtime.errors import GraphError

_GRID = re.compile(r"^(?P<tensor>.+)@(?P<h>\d+)x(?P<w>\d+)$")
MAX_LEADING = 8  # class, distillation and register tokens


@dataclass(frozen=True)
class TokenGrid:
    """Patch tokens laid out on h x w, after ``leading`` tokens that are not patches."""

    h: int
    w: int
    leading: int


def split_spec(spec: str) -> tuple[str, tuple[int, int] | None]:
    """``tensor@HxW`` -> (tensor, (H, W)); a plain tensor name -> (name, None)."""
    match = _GRID.match(spec)
    if not match:
        return spec, None
    return match["tensor"], (int(match["h"]), int(match["w"]))


def token_grid(info: GraphInfo, tensor: str, grid: tuple[int, int] | None, image: str) -> TokenGrid:
    """The grid of a [N, T, C] token tensor: given, or inferred from the image's aspect ratio."""
    shape = info.shapes.get(tensor)
    if shape is None or len(shape) != 3 or not isinstance(shape[1], int):
        raise GraphError(
            f"tap {tensor!r}: a token tap must be [N, T, C] with a static T, got "
            f"{list(shape) if shape else 'no shape'}"
        )
    tokens = shape[1]
    if grid is not None:
        leading = tokens - grid[0] * grid[1]
        if leading < 0:
            raise GraphError(
                f"tap {tensor!r}: {tokens} tokens do not fill a {grid[0]}x{grid[1]} grid"
            )
        return TokenGrid(grid[0], grid[1], leading)
    size = info.shapes.get(image, ())[2:]
    if len(size) != 2 or not all(isinstance(d, int) for d in size):
        raise GraphError(
            f"tap {tensor!r}: the image size is not static; name the grid as {tensor}@HxW"
        )
    height, width = int(size[0]), int(size[1])
    for leading in range(min(MAX_LEADING, tokens - 1) + 1):
        patches = tokens - leading
        h = round(math.sqrt(patches * height / width))
        if h > 0 and patches % h == 0 and (patches // h) * height == h * width:
            return TokenGrid(h, patches // h, leading)
    raise GraphError(
        f"tap {tensor!r}: {tokens} tokens fit no patch grid of a {height}x{width} image; "
        f"name it as {tensor}@HxW"
    )


def expose_tokens(model: onnx.ModelProto, tensor: str, grid: TokenGrid, prefix: str) -> str:
    """Route ``tensor`` through its [N, C, h, w] view in place; return the view's name."""
    g = model.graph
    names = {
        k: f"{prefix}/{k}" for k in ("patches", "grid", "view", "back", "flat", "lead", "routed")
    }
    consts = {
        f"{prefix}/lead_end": [grid.leading], f"{prefix}/axis": [1],
        f"{prefix}/zero": [0], f"{prefix}/end": [np.iinfo(np.int64).max],
        f"{prefix}/grid_shape": [0, grid.h, grid.w, -1], f"{prefix}/token_shape": [0, grid.h * grid.w, -1],
    }  # fmt: skip
    g.initializer.extend(
        numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in consts.items()
    )
    patches = tensor
    nodes = []
    if grid.leading:
        patches = names["patches"]
        nodes += [
            helper.make_node("Slice", [tensor, f"{prefix}/lead_end", f"{prefix}/end", f"{prefix}/axis"],
                             [patches], name=f"{prefix}/Slice_patches"),
            helper.make_node("Slice", [tensor, f"{prefix}/zero", f"{prefix}/lead_end", f"{prefix}/axis"],
                             [names["lead"]], name=f"{prefix}/Slice_leading"),
        ]  # fmt: skip
    nodes += [
        helper.make_node("Reshape", [patches, f"{prefix}/grid_shape"], [names["grid"]], name=f"{prefix}/Reshape_grid"),
        helper.make_node("Transpose", [names["grid"]], [names["view"]], name=f"{prefix}/Transpose_view", perm=[0, 3, 1, 2]),
        helper.make_node("Transpose", [names["view"]], [names["back"]], name=f"{prefix}/Transpose_back", perm=[0, 2, 3, 1]),
    ]  # fmt: skip
    routed = names["routed"]
    if grid.leading:
        nodes += [
            helper.make_node("Reshape", [names["back"], f"{prefix}/token_shape"], [names["flat"]], name=f"{prefix}/Reshape_tokens"),
            helper.make_node("Concat", [names["lead"], names["flat"]], [routed], name=f"{prefix}/Concat", axis=1),
        ]  # fmt: skip
    else:
        nodes.append(
            helper.make_node("Reshape", [names["back"], f"{prefix}/token_shape"], [routed], name=f"{prefix}/Reshape_tokens")
        )  # fmt: skip
    ours = {id(n) for n in nodes}
    for node in g.node:
        for k, name in enumerate(node.input):
            if name == tensor and id(node) not in ours:
                node.input[k] = routed
    existing = list(g.node)
    at = next((k + 1 for k, n in enumerate(existing) if tensor in n.output), 0)
    del g.node[:]
    g.node.extend(existing[:at] + nodes + existing[at:])
    return names["view"]


def expose_token_taps(model: onnx.ModelProto, taps: dict[str, str], image: str) -> dict[str, str]:
    """alias -> tap tensor with every token tap (rank 3 or ``tensor@HxW``) replaced by its view."""
    specs = {alias: split_spec(spec) for alias, spec in taps.items()}
    info = GraphInfo.of(model)
    out = {}
    for alias, (tensor, grid) in specs.items():
        shape = info.shapes.get(tensor)
        if grid is None and shape is not None and len(shape) != 3:
            out[alias] = tensor
            continue
        out[alias] = expose_tokens(
            model, tensor, token_grid(info, tensor, grid, image), f"tokens/{alias}"
        )
    return out


def default_token_tap(model: onnx.ModelProto, image: str, feeding: set[str]) -> str | None:
    """The last block's normalised tokens: the last [N, T, C] LayerNormalization output on a grid
    from which an attention Softmax is still ahead (pytorch-grad-cam's ``blocks[-1].norm1``).

    Later norms (the MLP's, the final one) feed only token-wise ops before a class-token head,
    so their patch tokens get no gradient. Without attention, the last token norm on a grid.
    """
    info = GraphInfo.of(model)
    found: list[tuple[str, bool]] = []
    for node in model.graph.node:
        out = node.output[0] if node.output else ""
        if node.op_type != "LayerNormalization" or out not in feeding:
            continue
        try:
            token_grid(info, out, None, image)
        except GraphError:
            continue
        found.append((out, _softmax_ahead(model.graph, out, feeding)))
    mixing = [name for name, ahead in found if ahead]
    return mixing[-1] if mixing else (found[-1][0] if found else None)


def _softmax_ahead(graph: onnx.GraphProto, tensor: str, feeding: set[str]) -> bool:
    reached = {tensor}
    for node in graph.node:
        if reached.intersection(node.input):
            if node.op_type == "Softmax" and node.output[0] in feeding:
                return True
            reached.update(node.output)
    return False
