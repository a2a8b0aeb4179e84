"""Nodes with subgraphs (If branches): what they read from the enclosing scope, and renaming.

An If branch may read any tensor of the scopes around it by name, without listing it as an
input. Passes that order, partition or rename nodes must see those reads as inputs of the If.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The node's graph attributes (an If's two branches, a Loop's body)."""
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def reads(node: onnx.NodeProto) -> list[str]:
    """The tensors ``node`` reads: its inputs, then what its subgraphs read from outside them."""
    out = [x for x in node.input if x]
    seen = set(out)
    for sub in subgraphs(node):
        for x in outer_reads(sub):
            if x not in seen:
                seen.add(x)
                out.append(x)
    return out


def outer_reads(graph: onnx.GraphProto) -> list[str]:
    """Names read inside ``graph`` (at any depth) that it does not define itself."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    out: dict[str, None] = {}
    for node in graph.node:
        for x in reads(node):
            if x not in defined:
                out.setdefault(x)
        defined.update(o for o in node.output if o)
    for o in graph.output:
        if o.name not in defined:
            out.setdefault(o.name)
    return list(out)


def rename(nodes: Iterable[onnx.NodeProto], mapping: Mapping[str, str]) -> None:
    """Rename tensors in place, in the nodes' inputs and outputs and inside their subgraphs."""
    for node in nodes:
        for names in (node.input, node.output):
            for k, name in enumerate(names):
                names[k] = mapping.get(name, name)
        for sub in subgraphs(node):
            rename(sub.node, mapping)
            for value in sub.output:
                value.name = mapping.get(value.name, value.name)


def walk(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """Every node, those inside subgraphs included (depth first)."""
    for node in nodes:
        yield node
        for sub in subgraphs(node):
            yield from walk(sub.node)


def empty(name: str, rank: int, dtype: int) -> list[onnx.NodeProto]:
    """Nodes making ``name`` an empty tensor of ``rank`` dimensions (what a branch that is off
    yields): a ConstantOfShape of zeros, which keeps its rank in every runtime."""
    dims = helper.make_node(
        "Constant", [], [f"{name}/dims"], value=numpy_helper.from_array(np.zeros(rank, np.int64))
    )
    value = numpy_helper.from_array(np.zeros(1, helper.tensor_dtype_to_np_dtype(dtype)))
    return [dims, helper.make_node("ConstantOfShape", [dims.output[0]], [name], value=value)]
