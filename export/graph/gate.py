"""Gate the backward pass behind If nodes, so one graph computes only what a call asks for.

onnxruntime's inference builds run every node of a graph whatever the fetches, so a flat
explanation graph would always pay for the whole backward pass. After gating, the graph has
three parts, chosen at run time by the int64 scalar input ``compute``:

- the forward pass (always): logits and the tap feature maps;
- ``If(compute >= 1)``: the backward pass from the logits down to the taps (tap gradients);
- ``If(compute >= 2)``: the rest of the backward pass, down to the input image.

A branch that is off yields empty tensors of the right rank and type. ``compute = 2`` computes
everything: the flat graph's results. ``compute`` is a required input without a default (see
gradtap.runtime.contract).

Residuals: a runtime keeps every forward tensor that a branch reads alive until the branch has
run, so the backward pass should read compact summaries of the activations, not the activations.
Backward nodes that only compare, cast down or take the shape of forward tensors (a rectifier's
boolean mask, a max-pool's argmax as int32) are taken out of the branches into small If nodes of
their own, one per forward node they read, gated like the branch that reads them. They are
listed so that onnxruntime runs each as soon as its activation exists (see ``_residual_ifs``);
the activations then die in the forward pass, and the backward pass holds a quarter of the bytes
(a bool per element) where it held float activations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph.emitter import GraphInfo
from gradtap.export.graph.lrp import LRP_ROWS
from gradtap.export.graph.scopes import empty, reads, rename, walk
from gradtap.runtime import contract as c

_CONDITIONS = ("gate/to_taps", "gate/to_input")


def gate(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move the backward pass of a flat explanation graph into If branches (in place).

    Args:
        model: a graph with the contract's outputs (logits, tap/*, grad/input, grad/tap/*),
            nodes topologically sorted; modified and returned.

    Returns:
        ``model``, with the ``compute`` input added.
    """
    graph = model.graph
    _outputs_by_identity(graph)
    nodes = list(graph.node)
    outputs = [o.name for o in graph.output]
    forward_outputs = [
        o for o in outputs if o == c.LOGITS or o.startswith((c.TAP_PREFIX, c.CAM_PREFIX))
    ]
    tap_grads = [o for o in outputs if o.startswith(c.GRAD_PREFIX + c.TAP_PREFIX)]
    late = [c.GRAD_INPUT, *(o for o in outputs if o.startswith(c.BIAS_GRAD_PREFIX))]
    info = GraphInfo.of(model, complete=False)
    forward = _needed(nodes, forward_outputs)  # weight transforms go where they are read
    backward = _needed(nodes, [*tap_grads, *late]) - forward
    forward |= _shape_values(nodes, forward, backward, graph)
    backward -= forward
    residual = _residual(nodes, forward, backward, info)
    to_taps = _needed(nodes, tap_grads) - forward - residual
    rest = _needed(nodes, late) - forward - residual - to_taps

    graph.input.append(helper.make_tensor_value_info(c.COMPUTE, TensorProto.INT64, []))
    graph.initializer.extend([
        numpy_helper.from_array(np.asarray(c.COMPUTE_LEVELS["forward"], np.int64), "gate/forward"),
        numpy_helper.from_array(np.asarray(c.COMPUTE_LEVELS["taps"], np.int64), "gate/taps"),
    ])  # fmt: skip
    kept = [
        helper.make_node("Greater", [c.COMPUTE, "gate/forward"], ["gate/to_taps"]),
        helper.make_node("Greater", [c.COMPUTE, "gate/taps"], ["gate/to_input"]),
        *(nodes[i] for i in sorted(forward)),
    ]
    residual_ifs = _residual_ifs(nodes, forward, residual, to_taps, info)
    kept.extend(residual_ifs["gate/to_taps"])
    if to_taps:
        read_later = {x for i in rest for x in reads(nodes[i])}
        crossing = [o for i in sorted(to_taps) for o in nodes[i].output if o in read_later]
        branch = [*tap_grads, *(o for o in crossing if o not in tap_grads)]
        kept.append(_if("gate/to_taps", [nodes[i] for i in sorted(to_taps)], branch, info))
    kept.extend(residual_ifs["gate/to_input"])
    if rest:
        kept.append(_if("gate/to_input", [nodes[i] for i in sorted(rest)], late, info))
    used = {x for n in walk(kept) for x in reads(n)}
    kept = [n for n in kept if n.output[0] not in _CONDITIONS or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(kept)
    used = {x for n in walk(kept) for x in reads(n)}
    inits = [t for t in graph.initializer if not t.name.startswith("gate/") or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return model


def _outputs_by_identity(graph: onnx.GraphProto) -> None:
    """A graph output that nodes read becomes an Identity of an internal tensor they read instead.

    Branches then never read a graph output (OpenVINO cannot load a branch that does)."""
    readers = {x for n in graph.node for x in reads(n)}
    for out in graph.output:
        if out.name not in readers:
            continue
        inner = f"{out.name}/value"
        rename(graph.node, {out.name: inner})
        at = next(i for i, n in enumerate(graph.node) if inner in n.output)
        graph.node.insert(at + 1, helper.make_node("Identity", [inner], [out.name], name=out.name))


# Ops that compute on shape vectors (int64 [rank]) and element counts without growing them.
_SHAPE_ARITHMETIC = frozenset({
    "Gather", "Concat", "Slice", "Unsqueeze", "Squeeze", "Cast", "Add", "Sub", "Mul", "Div",
})  # fmt: skip


def _shape_values(
    nodes: Sequence[onnx.NodeProto], forward: set[int], backward: set[int], graph: onnx.GraphProto
) -> set[int]:
    """Backward nodes taking the Shape or Size of forward tensors, and arithmetic on those alone.

    They run at the top level: a shape vector never passes through an If (runtimes that propagate
    shapes before running, such as OpenVINO and tract, cannot follow one out of a branch).
    """
    weights = {t.name for t in graph.initializer}
    known = weights | {i.name for i in graph.input} | {o for i in forward for o in nodes[i].output}
    shapes: set[str] = set()
    found: set[int] = set()
    for i in sorted(backward):
        node = nodes[i]
        inputs = reads(node)
        if not all(x in known for x in inputs):
            continue
        if node.op_type in ("Shape", "Size") or (
            node.op_type in _SHAPE_ARITHMETIC and any(x in shapes for x in inputs)
            and all(x in shapes or x in weights for x in inputs)
        ):  # fmt: skip
            found.add(i)
            shapes.update(node.output)
            known.update(node.output)
    return found


def ungate(model: onnx.ModelProto) -> onnx.ModelProto:
    """A flat copy computing what a gradient call with ``compute = 2`` computes, for tools that
    walk one graph (FLOP counters): each gate's then-branch inlined in place of its If node, and
    each If of the LRP walk (lrp.py) replaced by its else-branch (what gradient calls run)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    flat = _inlined(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(flat)
    del out.graph.value_info[:]
    return out


def _inlined(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    flat: list[onnx.NodeProto] = []
    for node in nodes:
        taken = {"gate/": "then_branch", "lrp/": "else_branch"}
        side = next((v for k, v in taken.items() if node.name.startswith(k)), None)
        if node.op_type != "If" or side is None:
            flat.append(node)
            continue
        body = next(a.g for a in node.attribute if a.name == side)
        outer = {o.name: name for o, name in zip(body.output, node.output, strict=True)}
        rename(body.node, outer)
        flat.extend(_inlined(body.node))
    return flat


def branch_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Every node of the graph, those inside If/Loop/Scan bodies included (depth first)."""
    return list(walk(model.graph.node))


# Weight transforms (a backward convolution's re-laid-out weight) depend on constants only and
# go into the branch that reads them: runtimes fold them there at load time (onnxruntime does,
# inside branches too), and a runtime that folds nothing recomputes them only in calls that run
# that branch. Precomputing them in the file instead would store every such weight twice, and
# a copy whose weights are rewritten in place (model-randomisation checks) would go stale.


# The LRP walk's copies of activations (lrp.py, ``LRP_ROWS``), empty in gradient calls: computed
# in the forward pass like the summaries below, so the activations die there in gradient calls.

# Ops whose output is no bigger than their inputs and cheap to compute: worth computing in the
# forward pass so that the backward pass reads them instead of the activations.
_COMPACTING = frozenset({
    "Shape", "Size", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "Not", "And",
    "Cast", "Mod",
})  # fmt: skip


def _residual(
    nodes: Sequence[onnx.NodeProto], forward: set[int], backward: set[int], info: GraphInfo
) -> set[int]:
    """Backward nodes that summarise forward tensors compactly (see the module docstring)."""
    produced = {o for i in forward for o in nodes[i].output}
    found: set[int] = set()
    for i in sorted(backward):
        node = nodes[i]
        inputs = reads(node)
        if node.output[0].startswith(LRP_ROWS):  # the LRP walk's copies (lrp.py)
            if all(x in produced or x in info.consts or x == c.RELU_RULE for x in inputs):
                found.add(i)
                produced.update(node.output)
            continue
        if node.op_type not in _COMPACTING or not _shrinks(node, info):
            continue
        if all(x in produced or x in info.consts for x in inputs) and any(
            x in produced and x not in info.consts for x in inputs
        ):
            found.add(i)
            produced.update(node.output)
    return found


def _shrinks(node: onnx.NodeProto, info: GraphInfo) -> bool:
    """A Cast is compacting only when its element type is no wider than its input's."""
    if node.op_type != "Cast":
        return True
    sizes = [
        helper.tensor_dtype_to_np_dtype(info.dtypes[name]).itemsize if name in info.dtypes else 0
        for name in (node.input[0], node.output[0])
    ]
    return 0 < sizes[1] <= sizes[0]


def _residual_ifs(
    nodes: Sequence[onnx.NodeProto],
    forward: set[int],
    residual: set[int],
    to_taps: set[int],
    info: GraphInfo,
) -> dict[str, list[onnx.NodeProto]]:
    """Residual nodes in Ifs, one per forward node that they read from, by gate condition.

    Each residual node goes with the latest forward node it depends on. A group runs when a
    branch that reads it runs (``compute >= 1`` if the pass down to the taps reads it,
    ``compute >= 2`` otherwise); when off it yields empty tensors.

    Each list is in reverse forward order (a group that reads another group's output goes after
    it), to go just before its branch: onnxruntime orders execution by a depth-first walk back
    from the graph's outputs that takes a node's inputs latest-listed first, so the group of the
    earliest layer is visited first and runs as soon as its activation exists, before the next
    layer. Any other valid order computes the same; it only changes how long activations stay
    alive.
    """
    anchor: dict[str, int] = {o: i for i in forward for o in nodes[i].output}
    groups: dict[int, list[int]] = {}
    for i in sorted(residual):
        at = max((anchor[x] for x in reads(nodes[i]) if x in anchor), default=-1)
        anchor.update({o: at for o in nodes[i].output})
        groups.setdefault(at, []).append(i)
    readers: dict[str, set[int]] = {}
    for i, node in enumerate(nodes):
        for x in reads(node):
            readers.setdefault(x, set()).add(i)
    made_by = {o: at for at, ids in groups.items() for i in ids for o in nodes[i].output}
    needs = {
        at: {made_by[x] for i in ids for x in reads(nodes[i]) if made_by.get(x, at) != at}
        for at, ids in groups.items()
    }  # other groups whose outputs a group reads: they must be listed before it
    outs = {
        at: [o for i in ids for o in nodes[i].output if readers.get(o, set()) - set(ids)]
        for at, ids in groups.items()
    }  # what the group's If returns: outputs read outside the group
    conditions: dict[int, str] = {}
    early = set(to_taps)  # read when compute >= 1; later groups first, as they read earlier ones
    for at in sorted(groups, reverse=True):
        by_taps = any(readers[o] & early for o in outs[at])
        early.update(groups[at] if by_taps else ())
        conditions[at] = "gate/to_taps" if by_taps else "gate/to_input"

    ifs: dict[str, list[onnx.NodeProto]] = {"gate/to_taps": [], "gate/to_input": []}

    def emit(at: int) -> None:
        if at not in listed:
            listed.add(at)
            for earlier in sorted(needs[at]):
                emit(earlier)
            condition, body = conditions[at], [nodes[i] for i in groups[at]]
            name = f"{condition}/residual/{sum(map(len, ifs.values()))}"
            ifs[condition].append(_if(condition, body, outs[at], info, name=name))

    listed: set[int] = set()
    for at in sorted(groups, reverse=True):
        emit(at)
    return ifs


def _needed(nodes: Sequence[onnx.NodeProto], outputs: Iterable[str]) -> set[int]:
    """Indices of the nodes that ``outputs`` depend on."""
    wanted, found = set(outputs), set()
    for i in range(len(nodes) - 1, -1, -1):
        if wanted.intersection(nodes[i].output):
            found.add(i)
            wanted.update(reads(nodes[i]))
    return found


def _if(
    condition: str,
    body: list[onnx.NodeProto],
    outputs: list[str],
    info: GraphInfo,
    *,
    name: str | None = None,
) -> onnx.NodeProto:
    """If(condition) then ``body`` (yielding ``outputs``) else empty tensors of the same types.

    Inside the branches the outputs carry a suffix: ONNX names are unique across nested scopes.
    """
    label = name or condition
    inner = {o: f"{o}@{label}" for o in outputs}
    then_nodes = []
    for node in body:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        then_nodes.append(copy)
    rename(then_nodes, inner)
    types = [info.dtypes[o] for o in outputs]
    infos = [  # ranks declared: OpenVINO gives the ops after an If no rank otherwise
        helper.make_tensor_value_info(
            inner[o], t, [None] * len(info.shapes[o]) if o in info.shapes else None
        )
        for o, t in zip(outputs, types, strict=True)
    ]
    off = [
        node
        for o, t in zip(outputs, types, strict=True)
        for node in empty(inner[o], len(info.shapes.get(o, (0,))), t)
    ]
    return helper.make_node(
        "If",
        [condition],
        outputs,
        name=f"{label}/If",
        then_branch=helper.make_graph(then_nodes, f"{label}/then", [], infos),
        else_branch=helper.make_graph(off, f"{label}/else", [], infos),
    )
