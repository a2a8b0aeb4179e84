"""Backward rules for elementwise math and activations beyond the rectifiers of rules.py.

Slopes are written with the forward output where that is cheaper (Exp, Tanh, Sqrt, Reciprocal);
variadic Max/Min split the cotangent evenly between tied inputs, as tinygrad does.
"""

from __future__ import annotations

import math

from onnx import NodeProto

from gradtap.export.graph.attrs import attr_float, attr_str
from gradtap.export.graph.emitter import Emitter
from gradtap.export.graph.rectifier import Rectifier
from gradtap.export.graph.rulebase import Grads, RuleSet, unbroadcast
from gradtap.runtime.errors import UnsupportedOpError

PART = RuleSet(__name__)
vjp_rule, rectifier_rule = PART.rule, PART.rectifier


def _times(em: Emitter, dy: str, slope: str) -> Grads:
    return (em.op("Mul", dy, slope),)


@vjp_rule("Tanh")
def tanh_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy * (1 - y^2)."""
    y = node.output[0]
    return _times(em, dys[0], em.op("Sub", em.scalar(1.0, y), em.op("Mul", y, y)))


@vjp_rule("Exp")
def exp_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy * y."""
    return _times(em, dys[0], node.output[0])


@vjp_rule("Log")
def log_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy / x."""
    return (em.op("Div", dys[0], node.input[0]),)


@vjp_rule("Sqrt")
def sqrt_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy * 0.5 / y."""
    y = node.output[0]
    return (em.op("Div", em.op("Mul", dys[0], em.scalar(0.5, y)), y),)


@vjp_rule("Reciprocal")
def reciprocal_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = -dy * y^2."""
    y = node.output[0]
    return (em.op("Neg", em.op("Mul", dys[0], em.op("Mul", y, y))),)


@vjp_rule("Abs")
def abs_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy * sign(x) (0 at x == 0)."""
    return _times(em, dys[0], em.op("Sign", node.input[0]))


@vjp_rule("Erf")
def erf_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy * 2 / sqrt(pi) * exp(-x^2)."""
    x = node.input[0]
    bell = em.op("Exp", em.op("Neg", em.op("Mul", x, x)))
    return _times(em, dys[0], em.op("Mul", bell, em.scalar(2.0 / math.sqrt(math.pi), x)))


@vjp_rule("Pow")
def pow_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """y = a^b: da = dy * b * a^(b - 1), db = dy * y * log(a), each summed over broadcast axes."""
    (a, b), y = node.input, node.output[0]
    rank = em.info.rank(y)
    da = db = None
    if em.wants(a):
        exponent = em.info.const(b)
        if exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0:
            slope = em.op("Mul", a, em.scalar(2.0, a))
        else:
            b_float = em.op("Cast", b, to=em.info.dtypes[a])
            slope = em.op("Mul", b_float, em.op("Pow", a, em.op("Sub", b_float, em.scalar(1.0, a))))
        da = unbroadcast(em, em.op("Mul", dys[0], slope), a, rank)
    if em.wants(b):
        db = unbroadcast(em, em.op("Mul", dys[0], em.op("Mul", y, em.op("Log", a))), b, rank)
    return (da, db)


@vjp_rule("Max", "Min")
def max_min_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx_i = dy * [x_i == y] / #{j: x_j == y}, summed over broadcast axes (ties split evenly)."""
    y, rank = node.output[0], em.info.rank(node.output[0])
    if len(node.input) == 1:
        return (dys[0],)
    hits = [em.mask(em.op("Equal", x, y), y) for x in node.input]
    count = em.op("Sum", *hits)
    share = em.op("Div", dys[0], count)
    return tuple(
        unbroadcast(em, em.op("Mul", share, hit), x, rank) if em.wants(x) else None
        for x, hit in zip(node.input, hits, strict=True)
    )


@vjp_rule("Mean")
def mean_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx_i = dy / n, summed over broadcast axes."""
    y, rank = node.output[0], em.info.rank(node.output[0])
    share = em.op("Mul", dys[0], em.scalar(1.0 / len(node.input), y))
    return tuple(unbroadcast(em, share, x, rank) if em.wants(x) else None for x in node.input)


@vjp_rule("Where")
def where_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dX = dy where cond, dY = dy elsewhere, each summed over broadcast axes."""
    cond, a, b = node.input
    y, rank = node.output[0], em.info.rank(node.output[0])
    zero = em.scalar(0.0, y)
    da = unbroadcast(em, em.op("Where", cond, dys[0], zero), a, rank) if em.wants(a) else None
    db = unbroadcast(em, em.op("Where", cond, zero, dys[0]), b, rank) if em.wants(b) else None
    return (None, da, db)


@vjp_rule("PRelu")
def prelu_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy where x > 0, slope * dy elsewhere (the slope is a weight)."""
    x, slope = node.input
    if em.wants(slope):
        raise UnsupportedOpError(f"PRelu node {node.name!r}: the slope depends on the input")
    positive = em.op("Greater", x, em.scalar(0.0, x))
    return (em.op("Where", positive, dys[0], em.op("Mul", dys[0], slope)), None)


@vjp_rule("Elu")
def elu_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy where x > 0, dy * (y + alpha) elsewhere."""
    x, y = node.input[0], node.output[0]
    alpha = em.scalar(attr_float(node, "alpha", 1.0), x)
    negative = em.op("Mul", dys[0], em.op("Add", y, alpha))
    return (em.op("Where", em.op("Greater", x, em.scalar(0.0, x)), dys[0], negative),)


@vjp_rule("Selu")
def selu_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = gamma * dy where x > 0, dy * (y + alpha * gamma) elsewhere."""
    x, y = node.input[0], node.output[0]
    alpha = attr_float(node, "alpha", 1.67326319217681884765625)
    gamma = attr_float(node, "gamma", 1.05070102214813232421875)
    positive = em.op("Mul", dys[0], em.scalar(gamma, x))
    negative = em.op("Mul", dys[0], em.op("Add", y, em.scalar(alpha * gamma, x)))
    return (em.op("Where", em.op("Greater", x, em.scalar(0.0, x)), positive, negative),)


@vjp_rule("Softplus")
def softplus_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = dy * sigmoid(x)."""
    return _times(em, dys[0], em.op("Sigmoid", node.input[0]))


@vjp_rule("Mish")
def mish_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """y = x tanh(softplus(x)): dx = dy * (t + x * sigmoid(x) * (1 - t^2)), t = tanh(softplus(x))."""
    x = node.input[0]
    t = em.op("Tanh", em.op("Softplus", x))
    damp = em.op("Sub", em.scalar(1.0, x), em.op("Mul", t, t))
    slope = em.op("Add", t, em.op("Mul", em.op("Mul", x, em.op("Sigmoid", x)), damp))
    return _times(em, dys[0], slope)


def gelu_slope(em: Emitter, x: str, approximate: str) -> str:
    """d/dx GELU(x): Phi(x) + x phi(x), or the derivative of the tanh approximation."""
    if approximate == "tanh":
        c, k = math.sqrt(2.0 / math.pi), 0.044715
        x2 = em.op("Mul", x, x)
        inner = em.op("Mul", x, em.op("Add", em.scalar(1.0, x), em.op("Mul", x2, em.scalar(k, x))))
        t = em.op("Tanh", em.op("Mul", inner, em.scalar(c, x)))
        half_one_plus_t = em.op("Mul", em.op("Add", t, em.scalar(1.0, x)), em.scalar(0.5, x))
        dinner = em.op("Add", em.scalar(c, x), em.op("Mul", x2, em.scalar(3.0 * k * c, x)))
        damp = em.op("Sub", em.scalar(1.0, x), em.op("Mul", t, t))
        tail = em.op("Mul", em.op("Mul", x, em.scalar(0.5, x)), em.op("Mul", damp, dinner))
        return em.op("Add", half_one_plus_t, tail)
    if approximate != "none":
        raise UnsupportedOpError(f"Gelu: approximate={approximate!r}; only 'none' and 'tanh'")
    cdf = em.op("Erf", em.op("Mul", x, em.scalar(1.0 / math.sqrt(2.0), x)))
    cdf = em.op("Mul", em.op("Add", cdf, em.scalar(1.0, x)), em.scalar(0.5, x))
    bell = em.op("Exp", em.op("Mul", em.op("Mul", x, x), em.scalar(-0.5, x)))
    density = em.op("Mul", bell, em.scalar(1.0 / math.sqrt(2.0 * math.pi), x))
    return em.op("Add", cdf, em.op("Mul", x, density))


@rectifier_rule("Gelu")
def gelu_vjp(node: NodeProto, dys: Grads, em: Emitter, rectifier: Rectifier) -> Grads:
    """dx = dy * GELU'(x) (exact or tanh form); a soft rectifier for relu_rule."""
    x = node.input[0]
    slope = gelu_slope(em, x, attr_str(node, "approximate", "none"))
    return (rectifier.soft(em, dys[0], slope, x),)
