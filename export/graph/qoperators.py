"""Integer-operator quantised graphs, rewritten into the QuantizeLinear/DequantizeLinear form.

onnxruntime's ``quantize_static(quant_format=QOperator)`` and older int8 exports write each
quantised layer as one integer operator: ``QLinearConv`` and ``QLinearMatMul`` (ai.onnx), and
``QGemm``, ``QLinearAdd``, ``QLinearMul`` and ``QLinearGlobalAveragePool`` (com.microsoft).
Each is defined as dequantising its integer inputs, running the float layer and quantising the
result, so :func:`expand` replaces it by exactly that: DequantizeLinear nodes, the float op, a QuantizeLinear. The graph then has the
QDQ form, whose rules (rules_quant.py) and constants (qdq.py) the pass already has, and only
ai.onnx ops where the contrib ones stood. onnxruntime fuses such groups back into its integer
kernels where nothing else reads inside them.

The integer bias of ``QLinearConv`` and ``QGemm`` is an int32 of scale ``x_scale * w_scale``
(``QGemm``: times ``alpha``), computed here from the constant scales.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import NodeProto, helper, numpy_helper

from gradtap.export.graph.attrs import attr_float, attr_int
from gradtap.runtime.errors import UnsupportedOpError

MICROSOFT = "com.microsoft"
OPS = frozenset({("", "QLinearConv"), ("", "QLinearMatMul"), (MICROSOFT, "QGemm"),
                 (MICROSOFT, "QLinearGlobalAveragePool"), (MICROSOFT, "QLinearAdd"),
                 (MICROSOFT, "QLinearMul")})  # fmt: skip


def _domain(node: NodeProto) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


class _Rewrite:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.names = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        self.dequantized: dict[tuple[str, str, str, int], str] = {}
        for n in graph.node:
            self.names.update(n.output)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def constant(self, node: NodeProto, name: str, what: str) -> np.ndarray:
        if name not in self.inits:
            raise UnsupportedOpError(
                f"{node.op_type} node {node.name or node.output[0]!r}: its {what} is not a "
                "constant initializer, which the rewrite into DequantizeLinear needs"
            )
        return numpy_helper.to_array(self.inits[name])

    def dq(
        self, out: list[NodeProto], node: NodeProto, x: str, s: str, z: str, axis: int = 1
    ) -> str:
        """The float value of integer tensor ``x``, one DequantizeLinear however many read it;
        named as the float tensor was before quantisation (onnxruntime's ``<name>_quantized``)
        where that name is free, so taps named by it still resolve."""
        key = (x, s, z, axis)
        if key in self.dequantized:
            return self.dequantized[key]
        base = x.removesuffix("_quantized")
        y = self.fresh(base if base != x and base not in self.names else f"{x}/dequantized")
        self.dequantized[key] = y
        out.append(helper.make_node("DequantizeLinear", [x, s, z] if z else [x, s], [y],
                                    name=self.fresh(f"{node.name or y}/dq"), axis=axis))  # fmt: skip
        return y

    def layer(
        self,
        out: list[NodeProto],
        node: NodeProto,
        op: str,
        floats: list[str],
        ys: str,
        yz: str,
        **attrs: Any,
    ) -> None:
        """The float ``op`` on ``floats``, quantised at (``ys``, ``yz``) into the node's output
        (left float where there is no output scale, as QGemm allows)."""
        y = node.output[0]
        yf = self.fresh(f"{y}/float") if ys else y
        out.append(helper.make_node(op, floats, [yf], name=self.fresh(f"{node.name or y}/{op}"),
                                    **attrs))  # fmt: skip
        if ys:
            out.append(helper.make_node("QuantizeLinear", [yf, ys, yz] if yz else [yf, ys], [y],
                                        name=self.fresh(f"{node.name or y}/q")))  # fmt: skip

    def bias(self, out: list[NodeProto], node: NodeProto, b: str, scale: np.ndarray) -> str:
        s = self.fresh(f"{b}/scale")
        scale = scale.astype(np.float32).reshape(-1)
        # one value per row for a per-axis scale, else a scalar
        per_tensor = scale.reshape(()) if scale.size == 1 else scale
        self.graph.initializer.append(numpy_helper.from_array(per_tensor, s))
        return self.dq(out, node, b, s, "", axis=0)

    def expand(self, node: NodeProto) -> list[NodeProto]:
        out: list[NodeProto] = []
        ins = list(node.input) + [""] * 9
        kind = node.op_type
        if kind == "QLinearConv":
            x, xs, xz, w, ws, wz, ys, yz, b = ins[:9]
            floats = [self.dq(out, node, x, xs, xz), self.dq(out, node, w, ws, wz, axis=0)]
            if b:
                scale = self.constant(node, xs, "input scale")
                floats.append(
                    self.bias(out, node, b, scale * self.constant(node, ws, "weight scale"))
                )
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            self.layer(out, node, "Conv", floats, ys, yz, **attrs)
        elif kind == "QLinearMatMul":
            a, as_, az, b, bs, bz, ys, yz = ins[:8]
            if self.constant(node, as_, "first input's scale").size > 1:
                raise UnsupportedOpError(f"QLinearMatMul node {node.name!r}: per-row scales of "
                                         "its first input have no rewrite")  # fmt: skip
            rank = len(self.inits[b].dims) if b in self.inits else 2
            floats = [self.dq(out, node, a, as_, az), self.dq(out, node, b, bs, bz, axis=rank - 1)]
            self.layer(out, node, "MatMul", floats, ys, yz)
        elif kind == "QGemm":
            a, as_, az, b, bs, bz, cb, ys, yz = ins[:9]
            alpha, trans_b = attr_float(node, "alpha", 1.0), attr_int(node, "transB", 0)
            floats = [self.dq(out, node, a, as_, az),
                      self.dq(out, node, b, bs, bz, axis=0 if trans_b else 1)]  # fmt: skip
            if cb:
                scale = alpha * self.constant(node, as_, "input scale")
                floats.append(
                    self.bias(out, node, cb, scale * self.constant(node, bs, "weight scale"))
                )
            self.layer(out, node, "Gemm", floats, ys, yz, alpha=alpha,
                       transA=attr_int(node, "transA", 0), transB=trans_b)  # fmt: skip
        elif kind in ("QLinearAdd", "QLinearMul"):
            a, as_, az, b, bs, bz, ys, yz = ins[:8]
            floats = [self.dq(out, node, a, as_, az), self.dq(out, node, b, bs, bz)]
            self.layer(out, node, kind.removeprefix("QLinear"), floats, ys, yz)
        else:  # QLinearGlobalAveragePool
            if attr_int(node, "channels_last", 0):
                raise UnsupportedOpError(f"QLinearGlobalAveragePool node {node.name!r}: "
                                         "channels_last has no rewrite")  # fmt: skip
            x, xs, xz, ys, yz = ins[:5]
            self.layer(out, node, "GlobalAveragePool", [self.dq(out, node, x, xs, xz)], ys, yz)
        return out


def expand(model: onnx.ModelProto) -> int:
    """Rewrite the integer operators of ``model``'s main graph in place; returns how many.

    Raises:
        UnsupportedOpError: one whose scales are not constants, or a form with no rewrite
            (per-row scales of QLinearMatMul's first input, channels-last pooling).
    """
    graph = model.graph
    if not any((_domain(n), n.op_type) in OPS for n in graph.node):
        return 0
    rewrite = _Rewrite(graph)
    nodes: list[NodeProto] = []
    count = 0
    for node in graph.node:
        if (_domain(node), node.op_type) in OPS:
            nodes.extend(rewrite.expand(node))
            count += 1
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(n.domain == MICROSOFT for n in graph.node):
        kept = [o for o in model.opset_import if o.domain != MICROSOFT]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    del graph.value_info[:]  # the integer outputs keep their types; the new floats get inferred
    return count
