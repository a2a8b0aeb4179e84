"""Backward (VJP) rules for elementwise, linear and normalising ops, one small function per op type.

See rulebase.py for the rule signature; convolution and pooling rules live in rules_conv.py, shape
ops in rules_shape.py, and table.py assembles every module's rules into the table the walk uses.
"""

from __future__ import annotations

from onnx import NodeProto

from gradtap.export.graph.attrs import attr_float, attr_int
from gradtap.export.graph.emitter import Emitter
from gradtap.export.graph.rectifier import Rectifier
from gradtap.export.graph.rulebase import Grads, RuleSet, unbroadcast, zero_appended
from gradtap.runtime.errors import UnsupportedOpError

PART = RuleSet(__name__)
vjp_rule, rectifier_rule = PART.rule, PART.rectifier


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


@rectifier_rule("Relu")
def relu_vjp(node: NodeProto, dys: Grads, em: Emitter, rectifier: Rectifier) -> Grads:
    """dx = dy * (y > 0), the same as x > 0 (subgradient 0 at x == 0); guided/deconvnet by
    relu_rule. Reading the output, not the input, lets the input die in the forward pass (and a
    runtime fuse the producing Conv with the Relu)."""
    y = node.output[0]
    return (rectifier.hard(em, dys[0], em.op("Greater", y, em.scalar(0.0, y)), y),)


@rectifier_rule("Clip")
def clip_vjp(node: NodeProto, dys: Grads, em: Emitter, rectifier: Rectifier) -> Grads:
    """dx = dy * (min < x < max); Clip with min 0 (ReLU6) is a rectifier for relu_rule.

    The test reads the output y: min < y < max exactly where min < x < max, and the input can
    then die in the forward pass (and a runtime fuse the producing Conv with the Clip).
    """
    y = node.output[0]
    low, high = (node.input[k] if len(node.input) > k else "" for k in (1, 2))
    conds = []
    if low:
        conds.append(em.op("Greater", y, low))
    if high:
        conds.append(em.op("Less", y, high))
    rest = (None,) * (len(node.input) - 1)
    if not conds:
        return (dys[0], *rest)
    cond = conds[0] if len(conds) == 1 else em.op("And", *conds)
    low_value = em.info.const(low)
    if low_value is not None and float(low_value.reshape(-1)[0]) == 0.0:
        return (rectifier.hard(em, dys[0], cond, y), *rest)
    return (em.keep(cond, dys[0], y), *rest)


@vjp_rule("LeakyRelu")
def leaky_relu_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy where x > 0, alpha * dy elsewhere."""
    x, alpha = node.input[0], attr_float(node, "alpha", 0.01)
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
    x, alpha, beta = node.input[0], attr_float(node, "alpha", 0.2), attr_float(node, "beta", 0.5)
    z = em.op("Add", em.op("Mul", x, em.scalar(alpha, x)), em.scalar(beta, x))
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
    y, axis = node.output[0], attr_int(node, "axis", -1)
    total = em.op("ReduceSum", em.op("Mul", dys[0], y), em.ints([axis]), keepdims=1)
    return (em.op("Mul", y, em.op("Sub", dys[0], total)),)


@vjp_rule("LogSoftmax")
def log_softmax_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy - exp(y) * sum(dy, axis)."""
    y, axis = node.output[0], attr_int(node, "axis", -1)
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
    alpha, beta = attr_float(node, "alpha", 1.0), attr_float(node, "beta", 1.0)
    trans_a, trans_b = attr_int(node, "transA", 0), attr_int(node, "transB", 0)
    a, b = node.input[0], node.input[1]
    dy = dys[0]
    if alpha != 1.0:
        dy = em.op("Mul", dy, em.scalar(alpha, node.output[0]))
    da = db = dc = None
    if em.wants(a):  # dA' = dy @ B'^T, then transposed back when transA
        if _square(em, b):  # a zero row or column of B' added, the zero result column cut off
            wide = em.op("Gemm", dy, zero_appended(em, b, trans_b), transB=1 - trans_b)
            da = _cut(em, wide, em.info.static_shape(b)[0])
        else:
            da = em.op("Gemm", dy, b, transB=1 - trans_b)
        da = em.op("Transpose", da, perm=[1, 0]) if trans_a else da
    if em.wants(b):  # dB' = A'^T @ dy
        db = em.op("Gemm", a, dy, transA=1 - trans_a)
        db = em.op("Transpose", db, perm=[1, 0]) if trans_b else db
    if len(node.input) > 2 and em.wants(node.input[2]):
        dc = em.op("Mul", dys[0], em.scalar(beta, node.output[0]))
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
    da = None
    if em.wants(a) and _square(em, b):  # B with a zero row added, the zero result column cut off
        wide = em.op("Transpose", zero_appended(em, b, 0), perm=[1, 0])
        da = _cut(em, em.op("MatMul", dys[0], wide), em.info.static_shape(b)[0])
    elif em.wants(a):
        da = em.op("MatMul", dys[0], t(b))
    da = unbroadcast(em, da, a, rank) if da is not None else None
    db = unbroadcast(em, em.op("MatMul", t(a), dys[0]), b, rank) if em.wants(b) else None
    return (da, db)


def _square(em: Emitter, b: str) -> bool:
    """Whether ``b`` is a square matrix, whose product with the cotangent takes a zero column.

    OpenVINO (2026.4) computes wrongly one of two products with the same square constant matrix
    when one multiplies by it and the other by its transpose, as a forward layer and its input
    gradient do: VGG's 4096 x 4096 layer gave a tap gradient 97 % off, a 64 x 64 one 140 %.
    With the shapes different it computes both right; one more column costs 1/n more work.
    """
    shape = em.info.shape(b)
    return len(shape) == 2 and isinstance(shape[0], int) and shape[0] == shape[1] and shape[0] > 1


def _cut(em: Emitter, wide: str, n: int) -> str:
    """``wide`` without its last column: the first ``n`` entries of the last axis."""
    return em.op("Slice", wide, em.ints([0]), em.ints([n]), em.ints([-1]))


@vjp_rule("BatchNormalization")
def batch_norm_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """Inference mode: dx = dy * scale / sqrt(var + eps), per channel."""
    if attr_int(node, "training_mode", 0):
        raise UnsupportedOpError(f"BatchNormalization node {node.name!r} is in training mode")
    x, scale, _, _, var = node.input[:5]
    eps = em.scalar(attr_float(node, "epsilon", 1e-5), var)
    factor = em.op("Div", scale, em.op("Sqrt", em.op("Add", var, eps)))
    factor = em.op("Reshape", factor, em.ints([-1] + [1] * (em.info.rank(x) - 2)))
    return (em.op("Mul", dys[0], factor), None, None, None, None)
