"""LRP rules of the linear layers (Conv, Gemm, MatMul with a constant weight), in ONNX ops.

Every rule has the form of zennit's BasicHook (Anders et al., https://arxiv.org/abs/2106.13200):
the layer is re-run forward with modified inputs and weights, the relevance R of its output is
divided by the stabilised modified output, sent back through the modified weights (the plain
transposed layer) and multiplied by the modified inputs:

- epsilon: ``x * W^T (R / stab(z))`` with the layer's own output z;
- z+ (= alpha1beta0): ``z+ = W+ x+ + W- x- + b+``; ``x+ * W+^T s + x- * W-^T s``, s = R / stab(z+);
- alpha2beta1: ``2 (x+ W+^T s+ + x- W-^T s+) - (x+ W-^T s- + x- W+^T s-)``, with
  ``z- = W- x+ + W+ x- + b-``;
- flat: ``1^T (R / stab(1 * 1))``: relevance spread evenly over the receptive field;
- zB (box): ``z = W x - W+ l - W- h`` (biases cancel), ``x W^T s - l W+^T s - h W- ^T s`` with the
  lowest and highest inputs l, h the graph's preprocessing gives pixels 0 and 1.

``stab(z) = z + eps * sign(z)`` (+eps at 0), eps = ``contract.LRP_EPSILON``, as zennit's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, helper

from gradtap.export.graph.emitter import Emitter
from gradtap.export.graph.rules import gemm_vjp, matmul_vjp
from gradtap.export.graph.rules_conv import conv_vjp
from gradtap.runtime import contract as c
from gradtap.runtime.errors import UnsupportedOpError

EPSILON, ZPLUS, ALPHA2BETA1, FLAT, ZBOX = range(5)
RULE_NAMES = ("epsilon", "zplus", "alpha2beta1", "flat", "zbox")
LINEAR_OPS = frozenset({"Conv", "Gemm", "MatMul"})


def stabilise(em: Emitter, z: str) -> str:
    """z + eps where z >= 0, z - eps elsewhere."""
    eps = em.scalar(c.LRP_EPSILON, z)
    return em.op(
        "Where", em.op("GreaterOrEqual", z, em.scalar(0.0, z)), em.op("Add", z, eps),
        em.op("Sub", z, eps),
    )  # fmt: skip


@dataclass(frozen=True)
class Linear:
    """A linear node with constant weights: ``node`` (inputs renamed to the walk's tensors)."""

    node: NodeProto
    weight: np.ndarray
    bias: np.ndarray | None

    @classmethod
    def of(cls, node: NodeProto, em: Emitter) -> Linear:
        w = em.info.const(node.input[1])
        bias = em.info.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if w is None or (len(node.input) > 2 and node.input[2] and bias is None):
            raise UnsupportedOpError(f"{node.op_type} node {node.name!r}: LRP needs constant weights")
        if node.op_type == "Gemm":  # alpha and beta folded into the weights
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0):
                raise UnsupportedOpError(f"Gemm node {node.name!r}: LRP with transA")
            w = w * np.float32(attrs.get("alpha", 1.0))
            bias = None if bias is None else bias * np.float32(attrs.get("beta", 1.0))
        return cls(node, np.asarray(w, np.float32), None if bias is None else np.asarray(bias))

    def _attrs(self) -> dict[str, object]:
        skip = {"alpha", "beta"}
        return {
            a.name: helper.get_attribute_value(a) for a in self.node.attribute if a.name not in skip
        }

    def _const(self, em: Emitter, value: np.ndarray) -> str:
        name = em.const(np.ascontiguousarray(value, np.float32), dtype=np.float32)
        em.info.shapes[name] = tuple(value.shape)
        em.info.dtypes[name] = 1
        return name

    def forward(self, em: Emitter, x: str, w: np.ndarray, b: np.ndarray | None) -> str:
        """The layer on ``x`` with weight ``w`` and bias ``b`` (None: no bias)."""
        inputs = [x, self._const(em, w)]
        if self.node.op_type == "MatMul":
            out = em.op("MatMul", *inputs)
            return out if b is None else em.op("Add", out, self._const(em, b))
        if b is not None:
            inputs.append(self._const(em, b))
        return em.op(self.node.op_type, *inputs, **self._attrs())

    def back(self, em: Emitter, s: str, w: np.ndarray) -> str:
        """The plain transposed layer with weight ``w`` applied to ``s``."""
        copy = helper.make_node(
            self.node.op_type, [self.node.input[0], self._const(em, w)], list(self.node.output),
            name=self.node.name, **self._attrs(),
        )  # fmt: skip
        rule = {"Conv": conv_vjp, "Gemm": gemm_vjp, "MatMul": matmul_vjp}[self.node.op_type]
        return rule(copy, (s,), em)[0]

    def bias_part(self, sign: int) -> np.ndarray | None:
        if self.bias is None:
            return None
        return np.maximum(self.bias, 0) if sign > 0 else np.minimum(self.bias, 0)


def epsilon(lin: Linear, em: Emitter, x: str, z: str, r: str) -> str:
    """x * W^T (R / stab(z))."""
    s = em.op("Div", r, stabilise(em, z))
    return em.op("Mul", x, lin.back(em, s, lin.weight))


def _split(em: Emitter, x: str) -> tuple[str, str]:
    zero = em.scalar(0.0, x)
    return em.op("Max", x, zero), em.op("Min", x, zero)


def _signed_sum(lin: Linear, em: Emitter, xp: str, xn: str, first: int) -> tuple[str, str]:
    """(W_a x+ + b_a + W_b x-) and its stabilised reciprocal factor, a = sign ``first``."""
    wp, wn = np.maximum(lin.weight, 0), np.minimum(lin.weight, 0)
    wa, wb = (wp, wn) if first > 0 else (wn, wp)
    z = em.op(
        "Add", lin.forward(em, xp, wa, lin.bias_part(first)), lin.forward(em, xn, wb, None)
    )
    return z, stabilise(em, z)


def _signed_back(lin: Linear, em: Emitter, xp: str, xn: str, s: str, first: int) -> str:
    wp, wn = np.maximum(lin.weight, 0), np.minimum(lin.weight, 0)
    wa, wb = (wp, wn) if first > 0 else (wn, wp)
    return em.op(
        "Add", em.op("Mul", xp, lin.back(em, s, wa)), em.op("Mul", xn, lin.back(em, s, wb))
    )


def zplus(lin: Linear, em: Emitter, x: str, z: str, r: str) -> str:
    """x+ * W+^T s + x- * W-^T s, s = R / stab(W+ x+ + W- x- + b+)."""
    xp, xn = _split(em, x)
    _, denom = _signed_sum(lin, em, xp, xn, +1)
    return _signed_back(lin, em, xp, xn, em.op("Div", r, denom), +1)


def alpha2beta1(lin: Linear, em: Emitter, x: str, z: str, r: str) -> str:
    """2 * (positive part, as z+) - 1 * (negative part: W- x+ + W+ x- + b-)."""
    xp, xn = _split(em, x)
    _, pos = _signed_sum(lin, em, xp, xn, +1)
    _, neg = _signed_sum(lin, em, xp, xn, -1)
    rp = _signed_back(lin, em, xp, xn, em.op("Div", r, pos), +1)
    rn = _signed_back(lin, em, xp, xn, em.op("Div", r, neg), -1)
    return em.op("Sub", em.op("Mul", rp, em.scalar(2.0, x)), rn)


def flat(lin: Linear, em: Emitter, x: str, z: str, r: str) -> str:
    """1^T (R / stab(1 * 1)): inputs and weights ones, no bias."""
    ones = em.op("Add", em.op("Mul", x, em.scalar(0.0, x)), em.scalar(1.0, x))  # no Shape
    w = np.ones_like(lin.weight)
    s = em.op("Div", r, stabilise(em, lin.forward(em, ones, w, None)))
    return lin.back(em, s, w)


def zbox(lin: Linear, em: Emitter, x: str, z: str, r: str, low: str, high: str) -> str:
    """x * W^T s - l * W+^T s - h * W-^T s, s = R / stab(W x - W+ l - W- h)."""
    wp, wn = np.maximum(lin.weight, 0), np.minimum(lin.weight, 0)
    lz, hz = lin.forward(em, low, wp, None), lin.forward(em, high, wn, None)
    zb = em.op("Sub", em.op("Sub", lin.forward(em, x, lin.weight, None), lz), hz)
    s = em.op("Div", r, stabilise(em, zb))
    kept = em.op("Mul", x, lin.back(em, s, lin.weight))
    lows = em.op("Mul", low, lin.back(em, s, wp))
    highs = em.op("Mul", high, lin.back(em, s, wn))
    return em.op("Sub", em.op("Sub", kept, lows), highs)


RULES = (epsilon, zplus, alpha2beta1, flat)
