"""Prune a graph to the nodes its chosen outputs need (onnxruntime inference runs every node).

onnxruntime's ``RunOptions.only_execute_path_to_fetches`` is honoured only by training builds, so
the session keeps pruned copies of the explanation graph instead: forward only, or the backward
pass only down to the taps.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from gradtap.runtime.errors import ModelError


def prune(model: onnx.ModelProto, outputs: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` computing only ``outputs``: unused nodes, inputs and weights dropped.

    Args:
        model: the graph (not modified).
        outputs: names of graph outputs to keep, in the order given.

    Raises:
        ModelError: an output is not produced by the graph.
    """
    graph = model.graph
    wanted = list(outputs)
    known = {o.name: o for o in graph.output}
    missing = [o for o in wanted if o not in known]
    if missing:
        raise ModelError(f"cannot prune to {missing}: graph outputs are {sorted(known)}")
    needed = set(wanted)
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):  # nodes are topologically sorted (ONNX requires it)
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_inputs(node))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    _replace(g.node, reversed(kept))
    _replace(g.initializer, [t for t in graph.initializer if t.name in needed])
    _replace(g.input, [i for i in graph.input if i.name in needed])
    _replace(g.output, [known[o] for o in wanted])
    produced = {o for n in kept for o in n.output}
    _replace(g.value_info, [v for v in graph.value_info if v.name in produced])
    return out


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names read by If/Loop/Scan bodies from the outer scope (conservatively: all their inputs)."""
    names: set[str] = set()
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in sub.node:
                names.update(i for i in inner.input if i)
                names.update(_subgraph_inputs(inner))
    return names


def _replace(field, items) -> None:  # noqa: ANN001 - a protobuf repeated field and its items
    items = list(items)
    del field[:]
    field.extend(items)
