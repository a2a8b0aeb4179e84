"""Backward rules for ops that move elements around: reshapes, transposes, concat/split, slice/pad."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from gradtap.export.graph.attrs import attr_int, attr_ints, attr_str
from gradtap.export.graph.emitter import Emitter
from gradtap.export.graph.rulebase import Grads, RuleSet, unbroadcast
from gradtap.runtime.errors import GraphError, UnsupportedOpError

PART = RuleSet(__name__)
vjp_rule = PART.rule


@vjp_rule("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = reshape(dy, shape(x))."""
    x = node.input[0]
    return (em.op("Reshape", dys[0], em.op("Shape", x)),) + (None,) * (len(node.input) - 1)


@vjp_rule("Expand")
def expand_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy summed over the broadcast axes."""
    return (unbroadcast(em, dys[0], node.input[0], em.info.rank(node.output[0])), None)


@vjp_rule("Transpose")
def transpose_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = transpose(dy, inverse(perm))."""
    rank = em.info.rank(node.input[0])
    perm = attr_ints(node, "perm", list(range(rank))[::-1])
    return (em.op("Transpose", dys[0], perm=[int(i) for i in np.argsort(perm)]),)


def _axis_sizes(em: Emitter, names: list[str], axis: int, node: NodeProto) -> list[int]:
    dims = [em.info.shape(n)[axis] for n in names]
    sizes = [d for d in dims if isinstance(d, int)]
    if len(sizes) != len(dims):
        raise GraphError(
            f"{node.op_type} node {node.name!r}: sizes along axis {axis} must be static, got {dims}"
        )
    return sizes


@vjp_rule("Concat")
def concat_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx_i = the slice of dy that x_i filled."""
    axis = attr_int(node, "axis") % em.info.rank(node.output[0])
    sizes = _axis_sizes(em, list(node.input), axis, node)
    parts = em.ops("Split", dys[0], em.ints(sizes), axis=axis, outputs=len(sizes))
    parts = [parts] if isinstance(parts, str) else parts
    return tuple(p if em.wants(x) else None for p, x in zip(parts, node.input, strict=True))


@vjp_rule("Split")
def split_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = concat(dy_i), zeros for the pieces no cotangent reached."""
    axis = attr_int(node, "axis", 0) % em.info.rank(node.input[0])
    pieces = [dy if dy else em.zeros_like(y) for dy, y in zip(dys, node.output, strict=True)]
    dx = pieces[0] if len(pieces) == 1 else em.op("Concat", *pieces, axis=axis)
    return (dx,) + (None,) * (len(node.input) - 1)


def _const_ints(em: Emitter, node: NodeProto, index: int, what: str) -> list[int] | None:
    if len(node.input) <= index or not node.input[index]:
        return None
    value = em.info.const(node.input[index])
    if value is None:
        raise GraphError(f"{node.op_type} node {node.name!r}: {what} must be a constant")
    return [int(v) for v in value.reshape(-1)]


@vjp_rule("Slice")
def slice_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy spread back over x's shape: zero rows between the picks of a step > 1, then
    padded with zeros around the slice.

    Only the sliced axes need a static size; a dynamic one (the batch) may be sliced from a
    start to its end with unit step. Negative steps are not supported.
    """
    x = node.input[0]
    dims = em.info.shape(x)
    rank = len(dims)
    starts, ends = _const_ints(em, node, 1, "starts"), _const_ints(em, node, 2, "ends")
    axes, steps = _const_ints(em, node, 3, "axes"), _const_ints(em, node, 4, "steps")
    if starts is None or ends is None:
        raise GraphError(f"Slice node {node.name!r}: starts and ends are required")
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(axes)
    if any(s < 1 for s in steps):
        raise UnsupportedOpError(f"Slice node {node.name!r}: only positive steps are supported")
    pads, dx = [0] * (2 * rank), dys[0]
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        axis %= rank
        size = dims[axis]
        if not isinstance(size, int):
            if start < 0 or end < 2**31 - 1 or step != 1:
                raise GraphError(
                    f"Slice node {node.name!r}: axis {axis} has no static size ({size}); only "
                    "unit-step slices from a start to the end are supported there"
                )
            pads[axis] = start
            continue
        begin = min(max(start + size if start < 0 else start, 0), size)
        stop = max(min(max(end + size if end < 0 else end, 0), size), begin)
        picked = -(-(stop - begin) // step)
        if step > 1 and picked > 0:
            dx = _interleave(em, dx, axis, rank, picked, step, size - begin)
            stop = begin + min(picked * step, size - begin)
        pads[axis], pads[rank + axis] = begin, size - stop
    return (em.op("Pad", dx, em.ints(pads)),) + (None,) * (len(node.input) - 1)


def _interleave(
    em: Emitter, g: str, axis: int, rank: int, picked: int, step: int, room: int
) -> str:
    """``picked`` rows of g along ``axis``, each followed by step - 1 zero rows, cut to ``room``."""
    lifted = em.op("Unsqueeze", g, em.ints([axis + 1]))
    pads = [0] * (2 * (rank + 1))
    pads[rank + 1 + axis + 1] = step - 1
    shape = em.op("Shape", g)
    merged = em.op(
        "Concat",
        em.op("Slice", shape, em.ints([0]), em.ints([axis])),
        em.ints([picked * step]),
        em.op("Slice", shape, em.ints([axis + 1]), em.ints([rank])),
        axis=0,
    )  # fmt: skip
    flat = em.op("Reshape", em.op("Pad", lifted, em.ints(pads)), merged)
    if picked * step <= room:
        return flat
    return em.op("Slice", flat, em.ints([0]), em.ints([room]), em.ints([axis]))


@vjp_rule("Pad")
def pad_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = the interior of dy (constant-mode, non-negative pads)."""
    mode = attr_str(node, "mode", "constant")
    if mode != "constant":
        raise UnsupportedOpError(f"Pad node {node.name!r}: mode {mode!r}; only 'constant'")
    x = node.input[0]
    rank = em.info.rank(x)
    pads = _const_ints(em, node, 1, "pads")
    axes = _const_ints(em, node, 3, "axes") or list(range(rank))
    if pads is None or any(p < 0 for p in pads):
        raise UnsupportedOpError(f"Pad node {node.name!r}: pads must be constant and >= 0")
    half = len(pads) // 2
    begins = [pads[i] for i in range(half)]
    sizes = em.op("Gather", em.op("Shape", x), em.ints([a % rank for a in axes]), axis=0)
    starts = em.ints(begins)
    piece = em.op("Slice", dys[0], starts, em.op("Add", starts, sizes), em.ints(axes))
    return (piece,) + (None,) * (len(node.input) - 1)


@vjp_rule("SpaceToDepth")
def space_to_depth_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = DepthToSpace(dy) in DCR mode, its inverse permutation."""
    return (em.op("DepthToSpace", dys[0], blocksize=attr_int(node, "blocksize"), mode="DCR"),)


@vjp_rule("DepthToSpace")
def depth_to_space_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = the inverse permutation: dy viewed as [n, c, h, b, w, b], transposed back to the
    mode's [n, b, b, c, h, w] (DCR) or [n, c, b, b, h, w] (CRD), reshaped like x."""
    x, b = node.input[0], attr_int(node, "blocksize")
    dims = [d for d in em.info.shape(x)[1:] if isinstance(d, int)]
    if len(dims) != 3:
        raise GraphError(f"DepthToSpace node {node.name!r}: channels and sizes must be static")
    channels, h, w = dims
    view = em.op("Reshape", dys[0], em.ints([0, channels // (b * b), h, b, w, b]))
    forward = [0, 3, 4, 1, 5, 2] if attr_str(node, "mode", "DCR") == "DCR" else [0, 1, 4, 2, 5, 3]
    back = em.op("Transpose", view, perm=[int(i) for i in np.argsort(forward)])
    return (em.op("Reshape", back, em.op("Shape", x)),)
