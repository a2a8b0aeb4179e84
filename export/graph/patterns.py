"""Subgraphs the backward walk differentiates as one op: GELU as torch's TorchScript exporter
writes it, ``0.5 * x * (1 + erf(x / sqrt(2)))`` in five nodes.

As one ``Gelu`` node it gets the Gelu rule: one slope instead of five rules' worth of nodes,
and, being a soft rectifier, the guided backprop and deconvnet variants (rectifier.py). A
pattern is fused only when its inner tensors have no other consumer and are not graph outputs,
so no cotangent is lost.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import onnx
from onnx import helper

from gradtap.export.graph.emitter import GraphInfo

Node = onnx.NodeProto


class _Uses:
    """Producers, consumers and constants of a node list."""

    def __init__(self, nodes: Sequence[Node], info: GraphInfo, outputs: set[str]) -> None:
        self.producer = {o: n for n in nodes for o in n.output}
        self.consumers: dict[str, list[Node]] = defaultdict(list)
        for n in nodes:
            for i in n.input:
                self.consumers[i].append(n)
        self.info, self.outputs = info, outputs

    def only(self, name: str, op_type: str) -> Node | None:
        """The single consumer of ``name`` if it is an ``op_type`` node (and name no output)."""
        users = self.consumers.get(name, [])
        if name in self.outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    def scalar(self, name: str, value: float) -> bool:
        c = self.info.const(name)
        return (
            c is not None
            and c.size == 1
            and math.isclose(float(c.reshape(-1)[0]), value, rel_tol=1e-6)
        )

    @staticmethod
    def other(node: Node, name: str) -> str:
        return node.input[1] if node.input[0] == name else node.input[0]


def fuse_erf_gelu(nodes: Sequence[Node], info: GraphInfo, outputs: set[str]) -> list[Node]:
    """``nodes`` with every Erf-GELU pattern replaced by a Gelu node at the pattern's end."""
    uses = _Uses(nodes, info, outputs)
    replaced: dict[int, Node] = {}
    dropped: set[int] = set()
    for erf in nodes:
        if erf.op_type != "Erf" or erf.input[0] not in uses.producer:
            continue
        scale = uses.producer[erf.input[0]]
        x = _scaled_input(scale, uses)
        if x is None or uses.only(scale.output[0], "Erf") is None:
            continue
        chain = _tail(erf, x, uses)
        if chain is None:
            continue
        *inner, last = chain
        gelu = helper.make_node("Gelu", [x], [last.output[0]], name=last.name or last.output[0])
        replaced[id(last)] = gelu
        dropped.update(id(n) for n in [scale, erf, *inner])
    return [replaced.get(id(n), n) for n in nodes if id(n) not in dropped]


def _scaled_input(scale: Node, uses: _Uses) -> str | None:
    """x of ``x / sqrt(2)`` or ``x * (1 / sqrt(2))``."""
    if scale.op_type == "Div" and uses.scalar(scale.input[1], math.sqrt(2.0)):
        return scale.input[0]
    if scale.op_type == "Mul":
        for k in (0, 1):
            if uses.scalar(scale.input[k], 1.0 / math.sqrt(2.0)):
                return scale.input[1 - k]
    return None


def _tail(erf: Node, x: str, uses: _Uses) -> list[Node] | None:
    """The nodes after the Erf: 1 + e, then ``(x * (1 + e)) * 0.5`` or ``(x * 0.5) * (1 + e)``."""
    add = uses.only(erf.output[0], "Add")
    if add is None or not uses.scalar(uses.other(add, erf.output[0]), 1.0):
        return None
    first = uses.only(add.output[0], "Mul")
    if first is None:
        return None
    partner = uses.other(first, add.output[0])
    if partner == x:
        last = uses.only(first.output[0], "Mul")
        if last is None or not uses.scalar(uses.other(last, first.output[0]), 0.5):
            return None
        return [add, first, last]
    half = uses.producer.get(partner)
    if half is None or half.op_type != "Mul" or x not in half.input:
        return None
    if not uses.scalar(uses.other(half, x), 0.5) or uses.only(partner, "Mul") is not first:
        return None
    return [half, add, first]
