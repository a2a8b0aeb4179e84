"""Backward rules for normalisations (layer, instance, group, LRN) and the non-linear reductions.

The normalisations share one formula: with xhat = (x - mean) * r over the normalised axes and
g = dy * scale, dx = r * (g - mean(g) - xhat * mean(g * xhat)). The reduced-axis means are a
ReduceSum times 1/n, n static when the normalised dimensions are (the batch may be dynamic).
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto

from gradtap.export.graph.attrs import attr_float, attr_int
from gradtap.export.graph.emitter import Emitter
from gradtap.export.graph.rulebase import Grads, RuleSet, no_grads
from gradtap.export.graph.rules_conv import reduce_axes
from gradtap.runtime.errors import GraphError, UnsupportedOpError

PART = RuleSet(__name__)
vjp_rule = PART.rule


def _reduce(em: Emitter, op: str, t: str, axes: list[int] | None) -> str:
    """``op`` over ``axes`` (None: all) with keepdims=1, axes as an input (ReduceSum, opset 13+)
    or, for the other reductions, as an input from opset 18 and an attribute before."""
    if axes is None:
        return em.op(op, t, keepdims=1)
    if op == "ReduceSum" or em.info.opset >= 18:
        return em.op(op, t, em.ints(axes), keepdims=1)
    return em.op(op, t, axes=axes, keepdims=1)


def _count(em: Emitter, x: str, axes: list[int]) -> float | None:
    """How many elements of forward tensor ``x`` each reduction over ``axes`` sees (None if not static)."""
    dims = [em.info.shape(x)[a] for a in axes]
    return float(np.prod(dims)) if all(isinstance(d, int) for d in dims) else None


def _mean(em: Emitter, t: str, axes: list[int], like: str, n: float | None) -> str:
    """mean(t) over ``axes`` (keepdims): ``n`` elements each, or counted at run time when None.

    ``like`` is a forward tensor with t's element type.
    """
    total = _reduce(em, "ReduceSum", t, axes)
    if n is not None:
        return em.op("Mul", total, em.scalar(1.0 / n, like))
    to = em.info.dtypes[like]
    count = em.op(
        "Div", em.op("Cast", em.op("Size", t), to=to), em.op("Cast", em.op("Size", total), to=to)
    )
    return em.op("Div", total, count)


def _normalized_vjp(
    em: Emitter, g: str, xhat: str, r: str, axes: list[int], like: str, n: float | None
) -> str:
    """r * (g - mean(g) - xhat * mean(g * xhat)) over ``axes``."""
    centered = em.op("Sub", g, _mean(em, g, axes, like, n))
    along = em.op("Mul", xhat, _mean(em, em.op("Mul", g, xhat), axes, like, n))
    return em.op("Mul", r, em.op("Sub", centered, along))


def _moments(
    em: Emitter, x: str, axes: list[int], eps: float, like: str, n: float | None
) -> tuple[str, str]:
    """xhat and r = 1 / sqrt(var + eps) over ``axes`` (the population variance)."""
    d = em.op("Sub", x, _mean(em, x, axes, like, n))
    var = _mean(em, em.op("Mul", d, d), axes, like, n)
    r = em.op("Reciprocal", em.op("Sqrt", em.op("Add", var, em.scalar(eps, like))))
    return em.op("Mul", d, r), r


def _no_weight_grads(node: NodeProto, em: Emitter) -> None:
    if any(em.wants(w) for w in node.input[1:] if w):
        raise UnsupportedOpError(f"{node.op_type} node {node.name!r}: weights depend on the input")


def _per_channel(em: Emitter, w: str, rank: int) -> str:
    """A [C] weight reshaped to broadcast along axis 1 of a rank-``rank`` tensor."""
    return em.op("Reshape", w, em.ints([-1] + [1] * (rank - 2)))


@vjp_rule("LayerNormalization")
def layer_norm_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """Normalised over axes axis..rank-1 with the node's own Mean and InvStdDev outputs.

    The outputs are added to the forward node when it does not produce them; they are in the
    stash type (float), cast to x's type here.
    """
    _no_weight_grads(node, em)
    x, scale = node.input[0], node.input[1]
    rank = em.info.rank(x)
    axes = list(range(attr_int(node, "axis", -1) % rank, rank))
    base = node.name or node.output[0]
    outputs = list(node.output) + [""] * (3 - len(node.output))
    outputs[1] = outputs[1] or f"{base}/mean"
    outputs[2] = outputs[2] or f"{base}/inv_std"
    del node.output[:]
    node.output.extend(outputs)
    to = em.info.dtypes.get(x, TensorProto.FLOAT)
    mean, r = (em.op("Cast", t, to=to) for t in outputs[1:])
    xhat = em.op("Mul", em.op("Sub", x, mean), r)
    g = em.op("Mul", dys[0], scale)
    return no_grads(node, _normalized_vjp(em, g, xhat, r, axes, x, _count(em, x, axes)))


@vjp_rule("InstanceNormalization")
def instance_norm_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """Normalised over the spatial axes per (n, c); scale per channel."""
    _no_weight_grads(node, em)
    x, scale = node.input[0], node.input[1]
    rank = em.info.rank(x)
    axes = list(range(2, rank))
    n = _count(em, x, axes)
    xhat, r = _moments(em, x, axes, attr_float(node, "epsilon", 1e-5), x, n)
    g = em.op("Mul", dys[0], _per_channel(em, scale, rank))
    return no_grads(node, _normalized_vjp(em, g, xhat, r, axes, x, n))


@vjp_rule("GroupNormalization")
def group_norm_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """x viewed as [N, G, C/G * spatial], normalised over the last axis; scale per channel
    (opset 21) or per group (opset 18), told apart by its length."""
    _no_weight_grads(node, em)
    x, scale = node.input[0], node.input[1]
    rank, groups = em.info.rank(x), attr_int(node, "num_groups")
    channels, scale_len = em.info.shape(x)[1], em.info.shape(scale)[0]
    if not isinstance(channels, int) or not isinstance(scale_len, int):
        raise GraphError(f"GroupNormalization node {node.name!r}: channels must be static")
    grouped = em.ints([0, groups, -1])
    if scale_len == channels:
        g = em.op("Reshape", em.op("Mul", dys[0], _per_channel(em, scale, rank)), grouped)
    else:
        g = em.op("Mul", em.op("Reshape", dys[0], grouped), _per_channel(em, scale, 3))
    xg = em.op("Reshape", x, grouped)
    spatial = _count(em, x, list(range(2, rank)))
    n = None if spatial is None else spatial * channels / groups
    xhat, r = _moments(em, xg, [2], attr_float(node, "epsilon", 1e-5), x, n)
    dx = _normalized_vjp(em, g, xhat, r, [2], x, n)
    return no_grads(node, em.op("Reshape", dx, em.op("Shape", x)))


def _channel_window_sum(em: Emitter, t: str, before: int, after: int, like: str) -> str:
    """sum of t over channels c - before .. c + after (zero outside), as a Conv along a new axis."""
    rank = em.info.rank(like)
    size = before + after + 1
    dtype = np.float64 if em.info.dtypes.get(like) == TensorProto.DOUBLE else np.float32
    ones = em.const(np.ones([1, 1, size] + [1] * (rank - 2), dtype=dtype), dtype=dtype)
    lifted = em.op("Unsqueeze", t, em.ints([1]))
    pads = [before] + [0] * (rank - 2) + [after] + [0] * (rank - 2)
    return em.op("Squeeze", em.op("Conv", lifted, ones, pads=pads), em.ints([1]))


@vjp_rule("LRN")
def lrn_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """y = x d^-beta, d = bias + alpha/size * window_sum(x^2):
    dx = dy d^-beta - 2 beta alpha/size * x * window_sum'(dy x d^(-beta-1))."""
    x = node.input[0]
    size = attr_int(node, "size")
    alpha, beta = attr_float(node, "alpha", 1e-4), attr_float(node, "beta", 0.75)
    bias = attr_float(node, "bias", 1.0)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    squares = _channel_window_sum(em, em.op("Mul", x, x), lo, hi, x)
    d = em.op("Add", em.op("Mul", squares, em.scalar(alpha / size, x)), em.scalar(bias, x))
    direct = em.op("Mul", dys[0], em.op("Pow", d, em.scalar(-beta, x)))
    inner = em.op("Mul", em.op("Mul", dys[0], x), em.op("Pow", d, em.scalar(-beta - 1.0, x)))
    spread = _channel_window_sum(em, inner, hi, lo, x)
    cross = em.op("Mul", em.op("Mul", x, spread), em.scalar(2.0 * beta * alpha / size, x))
    return (em.op("Sub", direct, cross),)


def _kept(em: Emitter, node: NodeProto, t: str, axes: list[int] | None) -> str:
    """A reduction's output (or its cotangent) with the reduced axes kept as size 1."""
    if attr_int(node, "keepdims", 1) or axes == []:
        return t
    axes = list(range(em.info.rank(node.input[0]))) if axes is None else axes
    return em.op("Unsqueeze", t, em.ints(axes))


@vjp_rule("ReduceMax", "ReduceMin", "GlobalMaxPool")
def reduce_max_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy * [x == y] / #ties, per reduced slice (ties split evenly); GlobalMaxPool reduces
    the spatial axes."""
    x = node.input[0]
    if node.op_type == "GlobalMaxPool":
        axes: list[int] | None = list(range(2, em.info.rank(x)))
    else:
        axes = reduce_axes(node, em)
    if axes == []:
        return no_grads(node, dys[0])
    hits = em.mask(em.op("Equal", x, _kept(em, node, node.output[0], axes)), x)
    count = _reduce(em, "ReduceSum", hits, axes)
    share = em.op("Div", _kept(em, node, dys[0], axes), count)
    return no_grads(node, em.op("Mul", hits, share))


@vjp_rule("ReduceL2", "ReduceL1", "ReduceSumSquare", "ReduceLogSumExp")
def reduce_norm_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy * (x / y, sign(x), 2x, exp(x - y)) for ReduceL2, L1, SumSquare, LogSumExp."""
    x = node.input[0]
    axes = reduce_axes(node, em)
    dy, y = _kept(em, node, dys[0], axes), _kept(em, node, node.output[0], axes)
    if node.op_type == "ReduceL2":  # 0 where the norm is 0 (the subgradient of |x| at 0)
        zero = em.op("Equal", y, em.scalar(0.0, x))
        safe = em.op("Where", zero, em.scalar(1.0, x), y)
        slope = em.op("Div", x, safe)
    elif node.op_type == "ReduceL1":
        slope = em.op("Sign", x)
    elif node.op_type == "ReduceSumSquare":
        slope = em.op("Mul", x, em.scalar(2.0, x))
    else:
        slope = em.op("Exp", em.op("Sub", x, y))
    return no_grads(node, em.op("Mul", dy, slope))
