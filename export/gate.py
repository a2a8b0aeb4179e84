"""Gate the backward pass behind If nodes, so one graph computes only what a call asks for.

onnxruntime's inference builds run every node of a graph whatever the fetches, so a flat
explanation graph would always pay for the whole backward pass. After gating, the graph has
three parts, chosen at run time by the int64 scalar input ``compute``:

- the forward pass (always): logits and the tap feature maps;
- ``If(compute >= 1)``: the backward pass from the logits down to the taps (tap gradients);
- ``If(compute >= 2)``: the rest of the backward pass, down to the input image.

A branch that is off yields empty tensors of the right rank and type. The default (2) computes
everything, so a caller that never feeds ``compute`` sees the flat graph's results.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.emitter import GraphInfo
from gradtap.runtime import contract as c


def gate(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move the backward pass of a flat explanation graph into If branches (in place).

    Args:
        model: a graph with the contract's outputs (logits, tap/*, grad/input, grad/tap/*),
            nodes topologically sorted; modified and returned.

    Returns:
        ``model``, with the ``compute`` input added.
    """
    graph = model.graph
    nodes = list(graph.node)
    outputs = [o.name for o in graph.output]
    forward_outputs = [o for o in outputs if o == c.LOGITS or o.startswith(c.TAP_PREFIX)]
    tap_grads = [o for o in outputs if o.startswith(c.GRAD_PREFIX + c.TAP_PREFIX)]
    forward = _needed(nodes, forward_outputs) | _constant(graph)
    to_taps = _needed(nodes, tap_grads) - forward
    rest = _needed(nodes, [c.GRAD_INPUT]) - forward - to_taps
    info = GraphInfo.of(model)

    read_later = {x for i in rest for x in nodes[i].input}
    crossing = [o for i in sorted(to_taps) for o in nodes[i].output if o in read_later]
    graph.input.append(helper.make_tensor_value_info(c.COMPUTE, TensorProto.INT64, []))
    graph.initializer.extend([
        numpy_helper.from_array(np.asarray(c.COMPUTE_LEVELS["full"], np.int64), c.COMPUTE),
        numpy_helper.from_array(np.asarray(c.COMPUTE_LEVELS["forward"], np.int64), "gate/forward"),
        numpy_helper.from_array(np.asarray(c.COMPUTE_LEVELS["taps"], np.int64), "gate/taps"),
    ])  # fmt: skip
    kept = [nodes[i] for i in sorted(forward)]
    if to_taps:
        kept.append(helper.make_node("Greater", [c.COMPUTE, "gate/forward"], ["gate/to_taps"]))
        branch = [*tap_grads, *(o for o in crossing if o not in tap_grads)]
        kept.append(_if("gate/to_taps", [nodes[i] for i in sorted(to_taps)], branch, info))
    if rest:
        kept.append(helper.make_node("Greater", [c.COMPUTE, "gate/taps"], ["gate/to_input"]))
        kept.append(_if("gate/to_input", [nodes[i] for i in sorted(rest)], [c.GRAD_INPUT], info))
    del graph.node[:]
    graph.node.extend(kept)
    return model


def ungate(model: onnx.ModelProto) -> onnx.ModelProto:
    """A flat copy: each gate's then-branch inlined in place of its If node (for tools that walk
    one graph, such as FLOP counters); computes what ``compute = 2`` computes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    flat: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if node.op_type != "If" or not node.name.startswith("gate/"):
            flat.append(node)
            continue
        body = next(a.g for a in node.attribute if a.name == "then_branch")
        outer = {o.name: name for o, name in zip(body.output, node.output, strict=True)}
        for inner in body.node:
            for names in (inner.input, inner.output):
                for k, name in enumerate(names):
                    names[k] = outer.get(name, name)
            flat.append(inner)
    del out.graph.node[:]
    out.graph.node.extend(flat)
    del out.graph.value_info[:]
    return out


def branch_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Every node of the graph, those inside If/Loop/Scan bodies included (depth first)."""
    return list(_walk(model.graph.node))


def _walk(nodes: Iterable[onnx.NodeProto]) -> Iterable[onnx.NodeProto]:
    for node in nodes:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _walk(sub.node)


def _constant(graph: onnx.GraphProto) -> set[int]:
    """Nodes computed from weights and constants alone (such as re-laid-out weights).

    They stay at the top level, where runtimes fold them once at load time.
    """
    inputs = {i.name for i in graph.input}
    known = {t.name for t in graph.initializer} - inputs
    found = set()
    for i, node in enumerate(graph.node):
        if node.op_type not in ("If", "Loop", "Scan") and all(x in known for x in node.input if x):
            found.add(i)
            known.update(node.output)
    return found


def _needed(nodes: Sequence[onnx.NodeProto], outputs: Iterable[str]) -> set[int]:
    """Indices of the nodes that ``outputs`` depend on."""
    wanted, found = set(outputs), set()
    for i in range(len(nodes) - 1, -1, -1):
        if wanted.intersection(nodes[i].output):
            found.add(i)
            wanted.update(x for x in nodes[i].input if x)
    return found


def _if(
    condition: str, body: list[onnx.NodeProto], outputs: list[str], info: GraphInfo
) -> onnx.NodeProto:
    """If(condition) then ``body`` (yielding ``outputs``) else empty tensors of the same types.

    Inside the branches the outputs carry a suffix: ONNX names are unique across nested scopes.
    """
    inner = {o: f"{o}@{condition}" for o in outputs}
    then_nodes = []
    for node in body:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for names in (copy.input, copy.output):
            for k, name in enumerate(names):
                names[k] = inner.get(name, name)
        then_nodes.append(copy)
    types = [info.dtypes[o] for o in outputs]
    infos = [
        helper.make_tensor_value_info(inner[o], t, None)
        for o, t in zip(outputs, types, strict=True)
    ]
    empty = [
        helper.make_node(
            "Constant",
            [],
            [inner[o]],
            value=numpy_helper.from_array(
                np.zeros([0] * len(info.shapes.get(o, (0,))), helper.tensor_dtype_to_np_dtype(t))
            ),
        )
        for o, t in zip(outputs, types, strict=True)
    ]
    return helper.make_node(
        "If",
        [condition],
        outputs,
        name=f"{condition}/If",
        then_branch=helper.make_graph(then_nodes, f"{condition}/then", [], infos),
        else_branch=helper.make_graph(empty, f"{condition}/else", [], infos),
    )
