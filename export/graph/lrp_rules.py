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
  lowest and highest inputs l, h the graph's preprocessing gives pixels 0 and 1;
- gamma (Montavon et al. 2019, generalised to inputs of both signs as zennit's ``Gamma``): with
  ``W+g = W + g W+`` and ``W-g = W + g W-`` (g = ``contract.LRP_GAMMA``, biases alike), outputs z > 0
  send ``s+ = R / stab(W+g x+ + b+g + W-g x-)`` back through ``x+ W+g^T + x- W-g^T``, outputs
  z < 0 send ``s- = R / stab(W-g x+ + b-g + W+g x-)`` back through ``x+ W-g^T + x- W+g^T``.

``stab(z) = z + eps * sign(z)`` (+eps at 0), eps = ``contract.LRP_EPSILON``, as zennit's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onnx import NodeProto, helper

from gradtap.export.graph.emitter import Emitter
from gradtap.export.graph.rules import gemm_vjp, matmul_vjp
from gradtap.export.graph.rules_conv import conv_vjp
from gradtap.runtime import contract as c
from gradtap.runtime.errors import UnsupportedOpError

EPSILON, ZPLUS, ALPHA2BETA1, FLAT, ZBOX, GAMMA = range(6)
RULE_NAMES = ("epsilon", "zplus", "alpha2beta1", "flat", "zbox", "gamma")
LINEAR_OPS = frozenset({"Conv", "Gemm", "MatMul"})


def stabilise(em: Emitter, z: str) -> str:
    """z + eps where z >= 0, z - eps elsewhere."""
    eps = em.scalar(c.LRP_EPSILON, z)
    return em.op(
        "Where", em.op("GreaterOrEqual", z, em.scalar(0.0, z)), em.op("Add", z, eps),
        em.op("Sub", z, eps),
    )  # fmt: skip


POS, NEG, ONES = "pos", "neg", "ones"
GAMMA_POS, GAMMA_NEG = "gamma_pos", "gamma_neg"  # t + gamma * t+, t + gamma * t-


@dataclass
class Linear:
    """A linear node with constant weights (``node``: inputs renamed to the walk's tensors).

    The modified weights are computed in the graph from the node's own initializers, not
    stored: the file stays small, and a copy whose weights are rewritten in place (model
    randomisation) explains with the new weights. They are computed in the LRP calls that use
    them, from the weights times ``live`` (a run-time 1): runtimes fold what depends on constants
    only at load time, and every rule's weights and their flipped copies folded would hold
    about ten times the model's weights in memory for the whole session.
    """

    node: NodeProto
    weight: str
    bias: str | None
    em: Emitter
    _made: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def of(cls, node: NodeProto, em: Emitter, live: str) -> Linear:
        """``live``: a float32 scalar 1 computed at run time."""
        w, b = node.input[1], node.input[2] if len(node.input) > 2 and node.input[2] else None
        if em.info.const(w) is None or (b is not None and em.info.const(b) is None):
            raise UnsupportedOpError(
                f"{node.op_type} node {node.name!r}: LRP needs constant weights"
            )
        alpha, beta = 1.0, 1.0
        if node.op_type == "Gemm":  # alpha and beta folded into the weights
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0):
                raise UnsupportedOpError(f"Gemm node {node.name!r}: LRP with transA")
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        lin = cls(node, w, b, em)
        lin.weight = lin._scaled(w, alpha, live)
        lin.bias = None if b is None else lin._scaled(b, beta, live)
        return lin

    def _scaled(self, t: str, factor: float, live: str) -> str:
        """``t * factor * live``: a tensor that runtimes cannot fold at load time."""
        em = self.em
        scale = live if factor == 1.0 else em.op("Mul", live, em.scalar(factor, t))
        return self._shaped(em.op("Mul", t, scale), t)

    def fresh(self) -> None:
        """Forget the modified weights made so far (a new If branch makes its own)."""
        self._made.clear()

    def _shaped(self, name: str, like: str) -> str:
        self.em.info.shapes[name] = self.em.info.shape(like)
        self.em.info.dtypes[name] = self.em.info.dtypes.get(like, 1)
        return name

    def part(self, t: str, kind: str) -> str:
        """The positive or negative part of weight/bias ``t``, ones like it, or ``t`` plus gamma
        times its positive or negative part (made once)."""
        if (t, kind) not in self._made:
            em, zero = self.em, self.em.scalar(0.0, t)

            def boosted(sign: str) -> str:
                return em.op("Add", t, em.op("Mul", self.part(t, sign), em.scalar(c.LRP_GAMMA, t)))

            made = {
                POS: lambda: em.op("Max", t, zero),
                NEG: lambda: em.op("Min", t, zero),
                ONES: lambda: em.op("Add", em.op("Mul", t, zero), em.scalar(1.0, t)),
                GAMMA_POS: lambda: boosted(POS),
                GAMMA_NEG: lambda: boosted(NEG),
            }[kind]()
            self._made[(t, kind)] = self._shaped(made, t)
        return self._made[(t, kind)]

    def w(self, kind: str | None) -> str:
        return self.weight if kind is None else self.part(self.weight, kind)

    def b(self, kind: str | None) -> str | None:
        return self.bias if self.bias is None or kind is None else self.part(self.bias, kind)

    def _attrs(self) -> dict[str, Any]:
        skip = {"alpha", "beta"}
        return {
            a.name: helper.get_attribute_value(a) for a in self.node.attribute if a.name not in skip
        }

    def forward(self, x: str, w: str, b: str | None) -> str:
        """The layer on ``x`` with weight ``w`` and bias ``b`` (None: no bias)."""
        em = self.em
        if self.node.op_type == "MatMul":
            out = em.op("MatMul", x, w)
            return out if b is None else em.op("Add", out, b)
        return em.op(self.node.op_type, x, w, *([b] if b is not None else []), **self._attrs())

    def back(self, s: str, w: str) -> str:
        """The plain transposed layer with weight ``w`` applied to ``s``."""
        copy = helper.make_node(
            self.node.op_type, [self.node.input[0], w], list(self.node.output),
            name=self.node.name, **self._attrs(),
        )  # fmt: skip
        rule = {"Conv": conv_vjp, "Gemm": gemm_vjp, "MatMul": matmul_vjp}[self.node.op_type]
        return rule(copy, (s,), self.em)[0]


def epsilon(lin: Linear, em: Emitter, x: str, z: str, r: str) -> str:
    """x * W^T (R / stab(z))."""
    s = em.op("Div", r, stabilise(em, z))
    return em.op("Mul", x, lin.back(s, lin.w(None)))


def _split(em: Emitter, x: str) -> tuple[str, str]:
    zero = em.scalar(0.0, x)
    return em.op("Max", x, zero), em.op("Min", x, zero)


def _flip(kind: str) -> str:
    return NEG if kind == POS else POS


def _signed_sum(lin: Linear, em: Emitter, xp: str, xn: str, first: str) -> str:
    """stab(W_a x+ + b_a + W_b x-), a = ``first`` (POS or NEG), b the other part."""
    second = _flip(first)
    z = em.op(
        "Add", lin.forward(xp, lin.w(first), lin.b(first)), lin.forward(xn, lin.w(second), None)
    )
    return stabilise(em, z)


def _signed_back(lin: Linear, em: Emitter, xp: str, xn: str, s: str, first: str) -> str:
    """x+ * W_a^T s + x- * W_b^T s."""
    positive = em.op("Mul", xp, lin.back(s, lin.w(first)))
    return em.op("Add", positive, em.op("Mul", xn, lin.back(s, lin.w(_flip(first)))))


def zplus(lin: Linear, em: Emitter, x: str, z: str, r: str) -> str:
    """x+ * W+^T s + x- * W-^T s, s = R / stab(W+ x+ + W- x- + b+)."""
    xp, xn = _split(em, x)
    return _signed_back(lin, em, xp, xn, em.op("Div", r, _signed_sum(lin, em, xp, xn, POS)), POS)


def alpha2beta1(lin: Linear, em: Emitter, x: str, z: str, r: str) -> str:
    """2 * (positive part, as z+) - 1 * (negative part: W- x+ + W+ x- + b-)."""
    xp, xn = _split(em, x)
    rp = _signed_back(lin, em, xp, xn, em.op("Div", r, _signed_sum(lin, em, xp, xn, POS)), POS)
    rn = _signed_back(lin, em, xp, xn, em.op("Div", r, _signed_sum(lin, em, xp, xn, NEG)), NEG)
    return em.op("Sub", em.op("Mul", rp, em.scalar(2.0, x)), rn)


def flat(lin: Linear, em: Emitter, x: str, z: str, r: str) -> str:
    """1^T (R / stab(1 * 1)): inputs and weights ones, no bias."""
    ones = em.op("Add", em.op("Mul", x, em.scalar(0.0, x)), em.scalar(1.0, x))  # no Shape
    w = lin.w(ONES)
    return lin.back(em.op("Div", r, stabilise(em, lin.forward(ones, w, None))), w)


def zbox(lin: Linear, em: Emitter, x: str, z: str, r: str, low: str, high: str) -> str:
    """x * W^T s - l * W+^T s - h * W-^T s, s = R / stab(W x - W+ l - W- h)."""
    w, wp, wn = lin.w(None), lin.w(POS), lin.w(NEG)
    lz, hz = lin.forward(low, wp, None), lin.forward(high, wn, None)
    zb = em.op("Sub", em.op("Sub", lin.forward(x, w, None), lz), hz)
    s = em.op("Div", r, stabilise(em, zb))
    kept = em.op("Mul", x, lin.back(s, w))
    lows = em.op("Mul", low, lin.back(s, wp))
    return em.op("Sub", em.op("Sub", kept, lows), em.op("Mul", high, lin.back(s, wn)))


def gamma(lin: Linear, em: Emitter, x: str, z: str, r: str) -> str:
    """Outputs z > 0: x+ * W+g^T s+ + x- * W-g^T s+, s+ = R / stab(W+g x+ + b+g + W-g x-);
    outputs z < 0: x+ * W-g^T s- + x- * W+g^T s-, s- = R / stab(W-g x+ + b-g + W+g x-)."""
    xp, xn = _split(em, x)
    zero = em.scalar(0.0, z)
    wp, wn = lin.w(GAMMA_POS), lin.w(GAMMA_NEG)
    bp, bn = lin.b(GAMMA_POS), lin.b(GAMMA_NEG)
    zp = em.op("Add", lin.forward(xp, wp, bp), lin.forward(xn, wn, None))
    zn = em.op("Add", lin.forward(xp, wn, bn), lin.forward(xn, wp, None))
    sp = em.op("Where", em.op("Greater", z, zero), em.op("Div", r, stabilise(em, zp)), zero)
    sn = em.op("Where", em.op("Less", z, zero), em.op("Div", r, stabilise(em, zn)), zero)
    positive = em.op("Mul", xp, em.op("Add", lin.back(sp, wp), lin.back(sn, wn)))
    negative = em.op("Mul", xn, em.op("Add", lin.back(sp, wn), lin.back(sn, wp)))
    return em.op("Add", positive, negative)


RULES = {EPSILON: epsilon, ZPLUS: zplus, ALPHA2BETA1: alpha2beta1, FLAT: flat, GAMMA: gamma}
"""The rules of a layer, by code (zB, which needs the input bounds, is ``zbox``)."""
