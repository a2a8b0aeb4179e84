"""Backward (VJP) rules: one small function per op type, emitting only standard ai.onnx ops.

A rule takes the forward node, one cotangent name per node output (None where none flows) and an
Emitter, and returns one cotangent name per node input (None for weights, shapes and anything the
walk does not want). Rules for Conv and pooling live in rules_conv.py, for shape ops in rules_shape.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import NodeProto, helper

from gradtap.export.graph.emitter import Emitter
from gradtap.runtime.errors import UnsupportedOpError

Grads = tuple[str | None, ...]
VjpRule = Callable[[NodeProto, Grads, Emitter], Grads]

RULES: dict[str, VjpRule] = {}

# Ops whose outputs carry no gradient (shape arithmetic, comparisons, index outputs).
ZERO_GRAD_OPS = frozenset(
    {
        "Shape", "Size", "Constant", "ConstantOfShape", "ArgMax", "ArgMin", "Equal", "Greater",
        "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor", "NonZero", "Range",
        "Floor", "Ceil", "Round", "Sign", "IsNaN", "IsInf", "EyeLike", "RandomNormalLike",
        "RandomUniformLike",
    }
)  # fmt: skip


def vjp_rule(*op_types: str) -> Callable[[VjpRule], VjpRule]:
    """Register a rule for one or more op types."""

    def register(rule: VjpRule) -> VjpRule:
        for op_type in op_types:
            RULES[op_type] = rule
        return rule

    return register


def attrs_of(node: NodeProto, **defaults: object) -> dict[str, object]:
    """Node attributes as Python values, with the given defaults filled in."""
    values = dict(defaults)
    values.update({a.name: helper.get_attribute_value(a) for a in node.attribute})
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def unbroadcast(em: Emitter, grad: str, like: str, rank: int) -> str:
    """Sum ``grad`` (of rank ``rank``) over the axes broadcasting added or stretched in ``like``.

    Summing over an axis where ``like`` has size 1 is right whether or not it was stretched.
    """
    target = em.info.shape(like)
    lead = rank - len(target)
    if lead > 0:
        grad = em.op("ReduceSum", grad, em.ints(range(lead)), keepdims=0)
    stretched = [i for i, d in enumerate(target) if d == 1]
    if stretched:
        grad = em.op("ReduceSum", grad, em.ints(stretched), keepdims=1)
    return grad


def rectified(em: Emitter, dy: str, passes: str, like: str) -> str:
    """A rectifier's backward pass, ``passes`` being where the forward op has slope 1.

    plain: dy where passes; guided backprop: relu(dy) where passes; deconvnet: relu(dy)
    everywhere. The rule is chosen at run time by the ``relu_rule`` input: dy is kept where
    ``(passes or deconvnet) and not dy < floor``, the floor being -inf for plain gradients and
    0 otherwise. The extra ops are on booleans, a quarter of a float tensor's memory each, and
    a NaN in dy is passed on, not hidden.
    """
    if em.rectifier_flags is None:
        return em.keep(passes, dy, like)
    floor, is_deconv = em.rectifier_flags
    keep = em.op("And", em.op("Or", passes, is_deconv), em.op("Not", em.op("Less", dy, floor)))
    return em.keep(keep, dy, like)


@vjp_rule("Identity", "Dropout")
def identity_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy (Dropout in inference mode is the identity)."""
    return (dys[0],) + (None,) * (len(node.input) - 1)


@vjp_rule("Cast")
def cast_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = cast(dy) back to the input's element type."""
    return (em.op("Cast", dys[0], to=em.info.dtypes[node.input[0]]),)


@vjp_rule("Neg")
def neg_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = -dy."""
    return (em.op("Neg", dys[0]),)


@vjp_rule("Relu")
def relu_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy * (y > 0), the same as x > 0 (subgradient 0 at x == 0); guided/deconvnet by
    relu_rule. Reading the output, not the input, lets the input die in the forward pass (and a
    runtime fuse the producing Conv with the Relu)."""
    y = node.output[0]
    return (rectified(em, dys[0], em.op("Greater", y, em.scalar(0.0, y)), y),)


@vjp_rule("Clip")
def clip_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy * (min < x < max); Clip with min 0 (ReLU6) is a rectifier for relu_rule.

    The test reads the output y: min < y < max exactly where min < x < max, and the input can
    then die in the forward pass (and a runtime fuse the producing Conv with the Clip).
    """
    y = node.output[0]
    bounds = list(node.input[1:3]) + [""] * (3 - len(node.input))
    low = attrs_of(node).get("min") if em.info.opset < 11 else em.info.const(bounds[0])
    conds = []
    if bounds[0] or low is not None:
        low_name = bounds[0] if bounds[0] else em.scalar(float(low), y)  # type: ignore[arg-type]
        conds.append(em.op("Greater", y, low_name))
    high = attrs_of(node).get("max") if em.info.opset < 11 else None
    if bounds[1] or high is not None:
        high_name = bounds[1] if bounds[1] else em.scalar(float(high), y)  # type: ignore[arg-type]
        conds.append(em.op("Less", y, high_name))
    rest = (None,) * (len(node.input) - 1)
    if not conds:
        return (dys[0], *rest)
    cond = conds[0] if len(conds) == 1 else em.op("And", *conds)
    is_rectifier = low is not None and float(np.asarray(low)) == 0.0
    if is_rectifier:
        dx = rectified(em, dys[0], cond, y)
    else:
        dx = em.keep(cond, dys[0], y)
    return (dx, *rest)


@vjp_rule("LeakyRelu")
def leaky_relu_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy where x > 0, alpha * dy elsewhere."""
    x, alpha = node.input[0], float(attrs_of(node, alpha=0.01)["alpha"])  # type: ignore[arg-type]
    scaled = em.op("Mul", dys[0], em.scalar(alpha, x))
    return (em.op("Where", em.op("Greater", x, em.scalar(0.0, x)), dys[0], scaled),)


@vjp_rule("Sigmoid")
def sigmoid_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy * y * (1 - y)."""
    y = node.output[0]
    slope = em.op("Mul", y, em.op("Sub", em.scalar(1.0, y), y))
    return (em.op("Mul", dys[0], slope),)


@vjp_rule("HardSigmoid")
def hard_sigmoid_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy * alpha where 0 < alpha * x + beta < 1, else 0."""
    a = attrs_of(node, alpha=0.2, beta=0.5)
    x, alpha = node.input[0], float(a["alpha"])  # type: ignore[arg-type]
    z = em.op("Add", em.op("Mul", x, em.scalar(alpha, x)), em.scalar(float(a["beta"]), x))  # type: ignore[arg-type]
    inside = em.op(
        "And", em.op("Greater", z, em.scalar(0.0, x)), em.op("Less", z, em.scalar(1.0, x))
    )
    return (em.op("Mul", dys[0], em.op("Mul", em.mask(inside, x), em.scalar(alpha, x))),)


@vjp_rule("HardSwish")
def hard_swish_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """y = x * hardsigmoid(x): dx = dy * (0 if x < -3, x / 3 + 1/2 if x <= 3, else 1)."""
    x = node.input[0]
    middle = em.op("Add", em.op("Div", x, em.scalar(3.0, x)), em.scalar(0.5, x))
    upper = em.op("Where", em.op("LessOrEqual", x, em.scalar(3.0, x)), middle, em.scalar(1.0, x))
    slope = em.op("Where", em.op("Less", x, em.scalar(-3.0, x)), em.scalar(0.0, x), upper)
    return (em.op("Mul", dys[0], slope),)


@vjp_rule("Softmax")
def softmax_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = y * (dy - sum(dy * y, axis))."""
    y, axis = node.output[0], int(attrs_of(node, axis=-1)["axis"])  # type: ignore[call-overload]
    total = em.op("ReduceSum", em.op("Mul", dys[0], y), em.ints([axis]), keepdims=1)
    return (em.op("Mul", y, em.op("Sub", dys[0], total)),)


@vjp_rule("LogSoftmax")
def log_softmax_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy - exp(y) * sum(dy, axis)."""
    y, axis = node.output[0], int(attrs_of(node, axis=-1)["axis"])  # type: ignore[call-overload]
    total = em.op("ReduceSum", dys[0], em.ints([axis]), keepdims=1)
    return (em.op("Sub", dys[0], em.op("Mul", em.op("Exp", y), total)),)


@vjp_rule("Add", "Sub", "Sum")
def add_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dA = dy, dB = +-dy, each summed over its broadcast axes."""
    grads: list[str | None] = []
    for i, x in enumerate(node.input):
        if not em.wants(x):
            grads.append(None)
            continue
        g = em.op("Neg", dys[0]) if node.op_type == "Sub" and i == 1 else dys[0]
        grads.append(unbroadcast(em, g, x, em.info.rank(node.output[0])))
    return tuple(grads)


@vjp_rule("Mul")
def mul_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dA = dy * B, dB = dy * A, each summed over its broadcast axes."""
    (a, b), rank = node.input, em.info.rank(node.output[0])
    da = unbroadcast(em, em.op("Mul", dys[0], b), a, rank) if em.wants(a) else None
    db = unbroadcast(em, em.op("Mul", dys[0], a), b, rank) if em.wants(b) else None
    return (da, db)


@vjp_rule("Div")
def div_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dA = dy / B, dB = -dy * y / B, each summed over its broadcast axes."""
    (a, b), y = node.input, node.output[0]
    rank = em.info.rank(y)
    da = unbroadcast(em, em.op("Div", dys[0], b), a, rank) if em.wants(a) else None
    db = None
    if em.wants(b):
        db = unbroadcast(em, em.op("Neg", em.op("Div", em.op("Mul", dys[0], y), b)), b, rank)
    return (da, db)


@vjp_rule("Gemm")
def gemm_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """Y = alpha * A' B' + beta * C: dA' = alpha * dy B'^T, dB' = alpha * A'^T dy, dC = beta * dy."""
    at = attrs_of(node, alpha=1.0, beta=1.0, transA=0, transB=0)
    a, b = node.input[0], node.input[1]
    dy = dys[0]
    if float(at["alpha"]) != 1.0:  # type: ignore[arg-type]
        dy = em.op("Mul", dy, em.scalar(float(at["alpha"]), node.output[0]))  # type: ignore[arg-type]
    da = db = dc = None
    if em.wants(a):  # dA' = dy @ B'^T, then transposed back when transA
        da = em.op("Gemm", dy, b, transB=1 - int(at["transB"]))  # type: ignore[call-overload]
        da = em.op("Transpose", da, perm=[1, 0]) if at["transA"] else da
    if em.wants(b):  # dB' = A'^T @ dy
        db = em.op("Gemm", a, dy, transA=1 - int(at["transA"]))  # type: ignore[call-overload]
        db = em.op("Transpose", db, perm=[1, 0]) if at["transB"] else db
    if len(node.input) > 2 and em.wants(node.input[2]):
        dc = em.op("Mul", dys[0], em.scalar(float(at["beta"]), node.output[0]))  # type: ignore[arg-type]
        dc = unbroadcast(em, dc, node.input[2], 2)
    return (da, db, dc)[: len(node.input)]


@vjp_rule("MatMul")
def matmul_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dA = dy @ B^T, dB = A^T @ dy (last two axes), summed over broadcast batch axes."""
    a, b = node.input
    if em.info.rank(a) < 2 or em.info.rank(b) < 2:
        raise UnsupportedOpError(f"MatMul node {node.name!r}: 1-D operands are not supported")

    def t(name: str) -> str:
        rank = em.info.rank(name)
        return em.op("Transpose", name, perm=[*range(rank - 2), rank - 1, rank - 2])

    rank = em.info.rank(node.output[0])
    da = unbroadcast(em, em.op("MatMul", dys[0], t(b)), a, rank) if em.wants(a) else None
    db = unbroadcast(em, em.op("MatMul", t(a), dys[0]), b, rank) if em.wants(b) else None
    return (da, db)


@vjp_rule("BatchNormalization")
def batch_norm_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """Inference mode: dx = dy * scale / sqrt(var + eps), per channel."""
    at = attrs_of(node, epsilon=1e-5, training_mode=0)
    if at["training_mode"]:
        raise UnsupportedOpError(f"BatchNormalization node {node.name!r} is in training mode")
    x, scale, _, _, var = node.input[:5]
    eps = em.scalar(float(at["epsilon"]), var)  # type: ignore[arg-type]
    factor = em.op("Div", scale, em.op("Sqrt", em.op("Add", var, eps)))
    factor = em.op("Reshape", factor, em.ints([-1] + [1] * (em.info.rank(x) - 2)))
    return (em.op("Mul", dys[0], factor), None, None, None, None)
