"""Backward rules for quantised graphs (QDQ): QuantizeLinear and DequantizeLinear.

A QDQ graph stores activations as integers between a QuantizeLinear and a DequantizeLinear. The
cotangent of an integer tensor is a float tensor in the same units as the integers (one step of
the quantised grid is 1), so the chain rule runs through the pair as it is written:

- ``DequantizeLinear``: y = (q - zp) * s, dq = dy * s.
- ``QuantizeLinear``: q = saturate(round(x / s) + zp). Rounding is taken as the identity (the
  straight-through estimator of quantisation-aware training) and saturation as a clip:
  dx = dq / s where q lies strictly inside the integer range, 0 where it sits at an end.

The test reads the integers q, never the float x, which a runtime may fuse away with the
layer producing it (onnxruntime's integer kernels; on ResNet18 from its quantiser the
explanation graph keeps every fusion, and its logits are the deployed ones bit for bit). It
makes "inside" mean what the deployed network computed: a unit whose quantised value is 0 is off.
A QuantizeLinear whose range
starts at 0, on the output of a layer, is a ReLU the quantiser folded into the range (quantisers
drop the Relu node then): it is a rectifier for ``relu_rule``, as a Relu would be.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto, helper

from gradtap.export.graph.attrs import attr_int
from gradtap.export.graph.emitter import Emitter
from gradtap.export.graph.qdq import LIMITS
from gradtap.export.graph.rectifier import Rectifier
from gradtap.export.graph.rulebase import Grads, RuleSet
from gradtap.runtime.errors import UnsupportedOpError

PART = RuleSet(__name__)
vjp_rule, rectifier_rule = PART.rule, PART.rectifier

# ops a quantiser folds a following ReLU into (by starting the output's range at 0)
LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "BatchNormalization"})


def _scale(em: Emitter, node: NodeProto, like: str) -> str:
    """The node's scale, shaped to broadcast against tensor ``like`` (per-axis scales are 1-D)."""
    if attr_int(node, "block_size", 0):
        raise UnsupportedOpError(
            f"{node.op_type} node {node.name or node.output[0]!r}: blocked quantisation "
            "(block_size) has no backward rule; per-tensor and per-axis scales do"
        )
    scale, rank = node.input[1], em.info.rank(like)
    if len(em.info.shape(scale)) == 0 or rank == 1:
        return scale
    axis = attr_int(node, "axis", 1) % rank
    return em.op("Unsqueeze", scale, em.ints([k for k in range(rank) if k != axis]))


def _limits(em: Emitter, node: NodeProto) -> tuple[int, int]:
    q = node.output[0]
    dtype = em.info.dtypes.get(q, TensorProto.UINT8)
    if dtype not in LIMITS:
        name, known = TensorProto.DataType.Name, ", ".join(map(TensorProto.DataType.Name, LIMITS))
        raise UnsupportedOpError(
            f"QuantizeLinear node {node.name or node.output[0]!r}: no backward rule for "
            f"quantisation to {name(dtype)}; supported: {known}"
        )
    return LIMITS[dtype]


def _folds_relu(em: Emitter, node: NodeProto, low: int) -> bool:
    """Whether the range starts at 0 (every zero point at the integer type's lowest value) and
    the quantised tensor is a layer's output."""
    zp = em.info.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    starts_at_zero = (low == 0) if zp is None else bool(np.all(zp == low))
    return starts_at_zero and em.info.producers.get(node.input[0]) in LAYERS


@vjp_rule("DequantizeLinear")
def dequantize_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dq = dy * s (per tensor or per axis)."""
    return (em.op("Mul", dys[0], _scale(em, node, node.output[0])), None, None)[: len(node.input)]


@rectifier_rule("QuantizeLinear")
def quantize_vjp(node: NodeProto, dys: Grads, em: Emitter, rectifier: Rectifier) -> Grads:
    """dx = dq / s where lowest < q < highest (rounding passed straight through); a rectifier
    where the range starts at 0 on a layer's output (a folded ReLU)."""
    x, q = node.input[0], node.output[0]
    low, high = _limits(em, node)
    dtype = em.info.dtypes.get(q, TensorProto.UINT8)
    ints = q
    if dtype in (TensorProto.UINT4, TensorProto.INT4):  # compared as 8-bit
        ints, dtype = em.op("Cast", q, to=TensorProto.INT8), TensorProto.INT8
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    inside = em.op(
        "And",
        em.op("Greater", ints, em.const(np.asarray(low, np_type))),
        em.op("Less", ints, em.const(np.asarray(high, np_type))),
    )
    dx = em.op("Div", dys[0], _scale(em, node, x))
    rest = (None,) * (len(node.input) - 1)
    if _folds_relu(em, node, low):
        return (rectifier.hard(em, dx, inside, x), *rest)
    return (em.keep(inside, dx, x), *rest)
