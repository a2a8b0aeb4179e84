"""Backward rules for indexing and contraction: Gather, GatherElements, Tile, Einsum, Resize.

Gathers scatter their cotangent back with reduction 'add' (repeated indices accumulate) after
negative indices are made positive; Einsum's cotangents are Einsums of the same letters; Resize
(nearest, linear, cubic) is linear in x and separable, so its transpose is one small matrix per
resized axis, computed here from the reference implementation of the op on an identity.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto, helper
from onnx.reference import ReferenceEvaluator

from gradtap.export.graph.attrs import attr_int, attr_str
from gradtap.export.graph.emitter import Emitter
from gradtap.export.graph.rulebase import Grads, RuleSet, no_grads
from gradtap.runtime.errors import GraphError, UnsupportedOpError

PART = RuleSet(__name__)
vjp_rule = PART.rule


def _positive(em: Emitter, indices: str, size: str | int) -> str:
    """indices + size where indices < 0 (size a static int or an int64 scalar tensor name)."""
    const = em.info.const(indices)
    if const is not None and isinstance(size, int):
        return em.const(np.where(const < 0, const + size, const).astype(np.int64))
    idx = em.op("Cast", indices, to=TensorProto.INT64)
    size_name = em.ints([size]) if isinstance(size, int) else size
    negative = em.op("Cast", em.op("Less", idx, em.ints([0])), to=TensorProto.INT64)
    return em.op("Add", idx, em.op("Mul", negative, size_name))


def _axis_size(em: Emitter, x: str, axis: int) -> str | int:
    dim = em.info.shape(x)[axis]
    if isinstance(dim, int):
        return dim
    return em.op("Gather", em.op("Shape", x), em.ints([axis]), axis=0)


@vjp_rule("Gather")
def gather_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = zeros(x) with dy scatter-added at the indices along axis (ScatterND on axis-first views).

    A constant scalar index (a class token ``x[:, 0]``) is a Pad of the unsqueezed cotangent.
    """
    x, indices = node.input
    rank = em.info.rank(x)
    axis = attr_int(node, "axis", 0) % rank
    size = _axis_size(em, x, axis)
    idx = _positive(em, indices, size)
    const = em.info.const(idx)
    if const is not None and const.ndim == 0 and isinstance(size, int):
        pads = [0] * (2 * rank)
        pads[axis], pads[rank + axis] = int(const), size - 1 - int(const)
        return (em.op("Pad", em.op("Unsqueeze", dys[0], em.ints([axis])), em.ints(pads)), None)
    q = em.info.rank(indices)
    front = [axis, *range(axis), *range(axis + 1, rank)]  # x with the gathered axis first
    updates = [*range(axis, axis + q), *range(axis), *range(axis + q, rank + q - 1)]
    zeros_shape = em.op("Gather", em.op("Shape", x), em.ints(front), axis=0)
    zero = helper.make_tensor("value", em.info.dtypes.get(x, TensorProto.FLOAT), [1], [0])
    summed = em.op(
        "ScatterND", em.op("ConstantOfShape", zeros_shape, value=zero),
        em.op("Unsqueeze", idx, em.ints([-1])), em.op("Transpose", dys[0], perm=updates),
        reduction="add",
    )  # fmt: skip
    return (em.op("Transpose", summed, perm=[int(i) for i in np.argsort(front)]), None)


@vjp_rule("GatherElements")
def gather_elements_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = ScatterElements(zeros(x), indices, dy, axis, reduction='add')."""
    x, indices = node.input
    axis = attr_int(node, "axis", 0) % em.info.rank(x)
    idx = _positive(em, indices, _axis_size(em, x, axis))
    dx = em.op("ScatterElements", em.zeros_like(x), idx, dys[0], axis=axis, reduction="add")
    return (dx, None)


@vjp_rule("Tile")
def tile_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy viewed as [r0, d0, r1, d1, ...] summed over the repeat axes (constant repeats)."""
    x, repeats = node.input
    reps = em.info.const(repeats)
    if reps is None:
        raise GraphError(f"Tile node {node.name!r}: repeats must be a constant")
    dims = em.info.shape(x)
    if sum(not isinstance(d, int) for d in dims) > 1:
        raise GraphError(f"Tile node {node.name!r}: at most one dynamic dimension, got {dims}")
    view = [
        v
        for r, d in zip(reps.tolist(), dims, strict=True)
        for v in (r, d if isinstance(d, int) else -1)
    ]
    folded = em.op("Reshape", dys[0], em.ints(view))
    summed = em.op("ReduceSum", folded, em.ints(range(0, 2 * len(dims), 2)), keepdims=0)
    return (summed, None)


def _einsum_terms(node: NodeProto, em: Emitter) -> tuple[list[str], str]:
    """Operand terms and the output term, ellipses spelled out with fresh capital letters."""
    equation = attr_str(node, "equation").replace(" ", "")
    lhs, _, out = equation.partition("->")
    terms = lhs.split(",")
    if "->" not in equation:
        letters = [c for c in lhs if c.isalpha()]
        out = ("..." if "..." in lhs else "") + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1)
        )
    if "..." in equation:
        widths = [
            em.info.rank(x) - len(t.replace("...", ""))
            for t, x in zip(terms, node.input, strict=True)
        ]
        spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation]
        span = max(widths)
        terms = [
            t.replace("...", "".join(spare[span - w : span]))
            for t, w in zip(terms, widths, strict=True)
        ]
        out = out.replace("...", "".join(spare[:span]))
    return terms, out


@vjp_rule("Einsum")
def einsum_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """d operand_i = einsum(dy, the other operands -> term_i), then broadcast back along letters
    that only operand i has (summed away in the forward pass)."""
    terms, out = _einsum_terms(node, em)
    grads: list[str | None] = []
    for i, (x, term) in enumerate(zip(node.input, terms, strict=True)):
        if not em.wants(x):
            grads.append(None)
            continue
        if len(set(term)) != len(term):
            raise UnsupportedOpError(f"Einsum node {node.name!r}: repeated letters in {term!r}")
        others = [t for k, t in enumerate(terms) if k != i]
        seen = set(out).union(*others)
        kept = "".join(c for c in term if c in seen)
        names = [n for k, n in enumerate(node.input) if k != i]
        eq = ",".join([out, *others]) + "->" + kept
        g = em.op("Einsum", dys[0], *names, equation=eq)
        if kept != term:
            g = em.op("Unsqueeze", g, em.ints([k for k, c in enumerate(term) if c not in seen]))
            g = em.op("Expand", g, em.op("Shape", x))
        grads.append(g)
    return tuple(grads)


def _resize_matrix(node: NodeProto, n: int, m: int, scale: float | None) -> np.ndarray:
    """R [n, m] with R[i, j] = d y_j / d x_i for one resized axis of length n -> m."""
    attrs = [a for a in node.attribute if a.name not in ("axes", "keep_aspect_ratio_policy")]
    inputs = ["x", "", "scales"] if scale is not None else ["x", "", "", "sizes"]
    resize = helper.make_node("Resize", inputs, ["y"])
    resize.attribute.extend(attrs)
    graph = helper.make_graph(
        [resize], "resize", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    feeds: dict[str, np.ndarray] = {"x": np.eye(n)}
    if scale is not None:
        feeds["scales"] = np.asarray([1.0, scale], np.float32)
    else:
        feeds["sizes"] = np.asarray([n, m], np.int64)
    out = np.asarray(list(ReferenceEvaluator(model).run(None, feeds))[0])
    if out.shape != (n, m):
        raise GraphError(
            f"Resize node {node.name!r}: axis of {n} resized to {out.shape[1]}, not {m}"
        )
    return np.asarray(out, np.float64)


@vjp_rule("Resize")
def resize_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy times R^T along each resized axis (static sizes; the batch may be dynamic)."""
    x, y = node.input[0], node.output[0]
    if attr_str(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        raise UnsupportedOpError(f"Resize node {node.name!r}: tf_crop_and_resize")
    if attr_str(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise UnsupportedOpError(f"Resize node {node.name!r}: only stretching resizes")
    in_dims, out_dims = em.info.shape(x), em.info.shape(y)
    scales = em.info.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    scales = None if scales is None or scales.size == 0 else scales.reshape(-1).tolist()
    if scales is not None and len(scales) != len(in_dims):
        raise UnsupportedOpError(f"Resize node {node.name!r}: the axes attribute is not supported")
    rank = len(in_dims)
    dtype = np.float64 if em.info.dtypes.get(x) == TensorProto.DOUBLE else np.float32
    g = dys[0]
    for axis in range(rank):
        n, m = in_dims[axis], out_dims[axis]
        if n == m and (scales is None or scales[axis] == 1.0):
            continue
        if axis == 0 and not isinstance(n, int) and not isinstance(m, int):
            continue  # the dynamic batch (named afresh by onnx's inference): never resized
        if not isinstance(n, int) or not isinstance(m, int):
            raise GraphError(
                f"Resize node {node.name!r}: axis {axis} needs a static size, {n} -> {m}"
            )
        matrix = _resize_matrix(node, n, m, None if scales is None else float(scales[axis]))
        g = _along(em, g, em.const(matrix.astype(dtype), dtype=dtype), axis, rank)
    return no_grads(node, g)


def _along(em: Emitter, g: str, matrix: str, axis: int, rank: int) -> str:
    """Contract axis ``axis`` of g (length m) with ``matrix`` [n, m]: the result has length n."""
    if axis == rank - 2:
        return em.op("MatMul", matrix, g)
    last = [*range(axis), *range(axis + 1, rank), axis]
    moved = g if axis == rank - 1 else em.op("Transpose", g, perm=last)
    out = em.op("MatMul", moved, em.op("Transpose", matrix, perm=[1, 0]))
    return (
        out
        if axis == rank - 1
        else em.op("Transpose", out, perm=[int(i) for i in np.argsort(last)])
    )
