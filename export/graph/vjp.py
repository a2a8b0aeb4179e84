"""The reverse walk: append the backward pass of ``sum(seed * logits)`` to an ONNX graph."""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import onnx
from onnx import TensorProto, helper

from gradtap.export.graph.emitter import Emitter, GraphInfo
from gradtap.export.graph.patterns import fuse_erf_gelu
from gradtap.export.graph.rectifier import PLAIN, Rectifier
from gradtap.export.graph.rulebase import VjpRule
from gradtap.export.graph.table import RULES, ZERO_GRAD_OPS, rule_table
from gradtap.runtime.errors import GraphError, UnsupportedOpError, UnsupportedOpsError

log = logging.getLogger(__name__)

MIN_OPSET = 13


def differentiated_nodes(
    nodes: Sequence[onnx.NodeProto], wrt: set[str], seed_of: str
) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes on a path from ``wrt`` to ``seed_of``, in forward order, and the tensors they touch.

    A tensor is active when it depends on a wrt tensor through differentiable ops; a node is
    differentiated when it has an active input and an output that reaches ``seed_of``.
    """
    active = set(wrt)
    for node in nodes:  # step 1: forward sweep, what depends on the wrt tensors
        if node.op_type not in ZERO_GRAD_OPS and active.intersection(node.input):
            active.update(o for o in node.output if o)
    needed, chosen = {seed_of}, []
    for node in reversed(nodes):  # step 2: backward sweep, what reaches the seed
        if needed.intersection(node.output) and active.intersection(node.input):
            if node.op_type not in ZERO_GRAD_OPS:
                chosen.append(node)
                needed.update(i for i in node.input if i in active)
    return chosen[::-1], needed


def check_coverage(nodes: list[onnx.NodeProto], rules: Mapping[str, VjpRule]) -> None:
    """Raise one error naming every op type without a rule: a count and a few nodes for each."""
    missing: dict[str, list[str]] = defaultdict(list)
    for node in nodes:
        if node.op_type not in rules or node.domain not in ("", "ai.onnx"):
            missing[f"{node.domain + '.' if node.domain else ''}{node.op_type}"].append(
                node.name or node.output[0]
            )
    if missing:
        shown = 3
        listed = "; ".join(
            f"{op}: {len(names)} node{'s' if len(names) > 1 else ''} ({', '.join(names[:shown])}"
            + (f", +{len(names) - shown} more)" if len(names) > shown else ")")
            for op, names in sorted(missing.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        )
        raise UnsupportedOpsError(
            f"no backward rule for {len(missing)} op type(s) on the gradient path: {listed}. "
            f"Supported: {', '.join(sorted(rules))}"
        )


def summed(em: Emitter, contributions: Mapping[str, list[str]]) -> Callable[[str], str | None]:
    """name -> the sum of its cotangent contributions (one Sum, emitted once), or None.

    Call it for a tensor only once every consumer of the tensor has added its contribution.
    """
    totals: dict[str, str | None] = {}

    def total(name: str) -> str | None:
        if name not in totals:
            parts = contributions.get(name, [])
            totals[name] = None if not parts else parts[0]
            if len(parts) > 1:
                with em.scoped("sum"):
                    totals[name] = em.op("Sum", *parts)
        return totals[name]

    return total


def add_vjp(
    model: onnx.ModelProto,
    *,
    seed_of: str,
    seed: str,
    wrt: Mapping[str, str],
    relu_rule: str | None = None,
    rules: Mapping[str, VjpRule] | None = None,
) -> onnx.ModelProto:
    """Return a copy of ``model`` with the gradient of ``sum(seed * seed_of)`` as new outputs.

    Args:
        model: the forward model (not mutated); default-domain opset >= 13.
        seed_of: the tensor the seed is the cotangent of (the logits).
        seed: name of the new graph input holding that cotangent (same shape as ``seed_of``).
        wrt: forward tensor name -> output name for its gradient (the image, the taps).
        relu_rule: name of an int64 scalar input choosing the rectifier rule at run time
            (0 plain, 1 guided backprop, 2 deconvnet); None for plain gradients only.
        rules: op_type -> VJP rule; default: table.rule_table, its rectifier rules switched
            by ``relu_rule`` when given.

    Returns:
        The augmented model; its new outputs are float tensors shaped like the wrt tensors.
    """
    model = copy.deepcopy(model)
    info = GraphInfo.of(model)
    if info.opset < MIN_OPSET:
        raise GraphError(f"opset {info.opset} is too old; the backward pass needs >= {MIN_OPSET}")
    graph = model.graph
    fused = fuse_erf_gelu(graph.node, info, {o.name for o in graph.output})
    nodes, needed = differentiated_nodes(fused, set(wrt), seed_of)
    check_coverage(nodes, RULES if rules is None else rules)  # step 1: all covered, none emitted

    em = Emitter(info, wanted=frozenset(needed))
    if rules is None:
        rectifier = PLAIN if relu_rule is None else Rectifier.switch(em, relu_rule)
        rules = rule_table(rectifier)

    contributions: dict[str, list[str]] = defaultdict(list)
    contributions[seed_of].append(seed)
    total = summed(em, contributions)  # step 2: fan-out accumulates with one Sum per tensor

    for node in reversed(nodes):  # step 3: reverse topological order
        dys = tuple(total(o) if o else None for o in node.output)
        if all(d is None for d in dys):
            continue
        with em.scoped(node.name or node.output[0]):
            grads = rules[node.op_type](node, dys, em)
        if len(grads) != len(node.input):
            raise RuntimeError(
                f"rule for {node.op_type} (node {node.name!r}) gave {len(grads)} gradients "
                f"for {len(node.input)} inputs"
            )
        for x, g in zip(node.input, grads, strict=True):
            if x in needed and g is None:
                raise UnsupportedOpError(
                    f"{node.op_type} node {node.name!r}: no gradient for input {x!r}, which "
                    "depends on the differentiated inputs"
                )
            if x in needed and g is not None:
                contributions[x].append(g)

    for x, out in wrt.items():  # step 4: expose the requested gradients
        g = total(x)
        if g is None:
            raise GraphError(
                f"tensor {x!r} does not influence {seed_of!r}; no gradient flows to it"
            )
        em.nodes.append(helper.make_node("Identity", [g], [out], name=f"{out}/Identity"))
        dtype = info.dtypes.get(x, TensorProto.FLOAT)
        graph.output.append(helper.make_tensor_value_info(out, dtype, list(info.shape(x))))

    graph.node.extend(em.nodes)
    graph.initializer.extend(em.initializers)
    log.info("backward pass: %d nodes differentiated, %d emitted", len(nodes), len(em.nodes))
    return model
