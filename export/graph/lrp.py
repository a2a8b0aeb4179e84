"""Layer-wise relevance propagation in the explanation graph, switched by ``relu_rule``.

LRP (Bach et al. 2015, https://doi.org/10.1371/journal.pone.0130140) sends the explained
logit's relevance back layer by layer. Here it is a second backward walk, next to the gradient
one, in standard ONNX ops: codes 0-2 of ``relu_rule`` read the gradient walk's results as before,
codes 3 and up (``contract.LRP_RULES``) read the relevance walk's. The switch is If nodes on
``relu_rule >= 3``: the walk (two Ifs, down to the taps and the rest, which the gate puts with
the gradient walk's two parts), the copies of the forward tensors it reads (empty in gradient
calls, so the activations still die in the forward pass), and, where a composite gives a layer
one of several rules, a chain of Ifs on the rule. A gradient call runs none of the walk; no
tensor of it is ever empty in a call that runs it (onnxruntime-node's layout optimiser and
OpenVINO refuse some ops on empty tensors). One file serves plain, guided, deconvnet and every
LRP composite, in every runtime that runs If. The flat variant (no If nodes, for tract) carries
one composite, named at augment time: its walk runs in every call, and a Where picks relevance or
gradient per output.

The rules, as zennit's composites apply them (https://github.com/chr-peters/zennit):
- Conv, Gemm, MatMul with constant weights: the composite's rule for the layer's position (the
  first linear layer on the input path, the other convolutions, the other dense layers), chosen
  at run time per layer by a table lookup and a chain of Ifs (lrp_rules.py);
- rectifiers and other elementwise activations, BatchNormalization: relevance passes unchanged
  (zennit's Pass; torch exports fold BatchNorm into the convolutions, as zennit's canonizers do);
- Add/Sub/Sum of two activations (residual joins), AveragePool, GlobalAveragePool, ReduceMean,
  ReduceSum: split in proportion to the contributions (zennit's Norm rule);
- Mul and Div by a constant (the graph's own normalisation): relevance passes unchanged, so the
  input relevance is that of the normalised image, pixel by pixel;
- MaxPool (winner takes all), reshapes, concatenations, padding: their gradient.
Graphs whose gradient path has other ops (attention, gating) get no LRP walk; their ``relu_rules``
metadata lists codes 0-2 only.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, helper
from onnx.reference import ReferenceEvaluator

from gradtap.export.graph import lrp_rules as lr
from gradtap.export.graph import qdq
from gradtap.export.graph.emitter import Emitter, GraphInfo
from gradtap.export.graph.patterns import fuse_erf_gelu
from gradtap.export.graph.rulebase import Grads
from gradtap.export.graph.scopes import empty, reads, subgraphs, walk
from gradtap.export.graph.scopes import rename as rename_tensors
from gradtap.export.graph.shapes import infer
from gradtap.export.graph.table import RULES
from gradtap.export.graph.vjp import differentiated_nodes, summed
from gradtap.runtime import contract as c
from gradtap.runtime.errors import GraphError, UnsupportedOpError

log = logging.getLogger(__name__)

PREFIX = "lrp/"
LRP_ROWS = f"{PREFIX}rows/"  # the copies of forward tensors the walk reads (gate.py)
E, Z, AB, F, B, G = lr.EPSILON, lr.ZPLUS, lr.ALPHA2BETA1, lr.FLAT, lr.ZBOX, lr.GAMMA
# relu_rule name -> rule of (the first linear layer, the other convolutions, the other dense layers)
COMPOSITES: dict[str, tuple[int, int, int]] = {
    "lrp_epsilon": (E, E, E),
    "lrp_zplus": (Z, Z, Z),
    "lrp_alpha2beta1": (AB, AB, AB),
    "lrp_alpha1beta0": (Z, Z, Z),  # alpha 1, beta 0 is z+ (zennit's ZPlus and AlphaBeta(1, 0))
    "lrp_flat": (F, F, F),
    "lrp_epsilon_plus": (Z, Z, E),  # zennit EpsilonPlus
    "lrp_epsilon_alpha2beta1": (AB, AB, E),  # zennit EpsilonAlpha2Beta1
    "lrp_epsilon_plus_flat": (F, Z, E),  # zennit EpsilonPlusFlat
    "lrp_epsilon_plus_box": (B, Z, E),  # zB first layer, z+ convolutions, epsilon dense
    "lrp_gamma": (G, G, G),  # zennit Gamma(0.25) on every layer
    "lrp_epsilon_gamma_box": (B, G, E),  # zennit EpsilonGammaBox
}
FIRST, CONV, DENSE = range(3)

PASS_OPS = frozenset({
    "Relu", "Clip", "LeakyRelu", "Gelu", "Elu", "Selu", "Celu", "Softplus", "Sigmoid", "Tanh",
    "HardSigmoid", "HardSwish", "PRelu", "BatchNormalization", "Identity", "Dropout",
    "QuantizeLinear", "DequantizeLinear",  # a quantised copy of the same values
})  # fmt: skip
NORM_OPS = frozenset({"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum"})
JOIN_OPS = frozenset({"Add", "Sub", "Sum"})
SCALE_OPS = frozenset({"Mul", "Div"})
GRADIENT_OPS = frozenset({
    "MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Pad",
    "Slice", "Split", "Gather", "Cast", "Expand", "Tile",
})  # fmt: skip
SUPPORTED = PASS_OPS | NORM_OPS | JOIN_OPS | SCALE_OPS | GRADIENT_OPS | lr.LINEAR_OPS


class _Walk:
    """What the relevance rules share: the emitter, the run-time selector, the zB bounds."""

    def __init__(
        self,
        em: Emitter,
        relu_rule: str,
        first: str,
        bounds: tuple[np.ndarray, np.ndarray] | None,
        composite: str | None = None,
    ) -> None:
        self.em, self.first, self.composite = em, first, composite
        # the flat variant runs the walk in every call: its weights fold at load time
        # (ResNet18: calls 20-30 % faster than with run-time weights, the session 3x larger)
        self.fixed = (
            None if composite is None else em.const(np.asarray(1.0, np.float32), dtype=np.float32)
        )
        names = list(c.LRP_RULES) if composite is None else [composite]
        self.codes = [c.LRP_RULES[n] for n in names]
        self.tables = [np.asarray([COMPOSITES[n][k] for n in names], np.int64) for k in range(3)]
        self.relu_rule, self.lowest = relu_rule, min(self.codes)
        self.bounds = None if bounds is None else tuple(self._const(b) for b in bounds)

    def on(self) -> str:
        """bool scalar: an LRP call (true wherever the walk runs; emitted where it is read)."""
        em = self.em
        return em.op("GreaterOrEqual", self.relu_rule, em.const(np.asarray(self.lowest, np.int64)))

    def index(self) -> str:
        """int64 scalar: the composite's position in ``LRP_RULES`` (clamped)."""
        em = self.em
        index = em.op("Sub", self.relu_rule, em.const(np.asarray(self.lowest, np.int64)))
        return em.op("Max", em.op("Min", index, em.const(len(self.codes) - 1)), em.const(0))

    def _const(self, value: np.ndarray) -> str:
        name = self.em.const(value, dtype=np.float32)
        self.em.info.shapes[name], self.em.info.dtypes[name] = tuple(value.shape), 1
        return name

    def _full(self, bound: str, x: str) -> str:
        """A bound [1, C, 1, 1] expanded to the shape of ``x``, batch included (the layer runs on
        it: OpenVINO mis-sizes a layer run on one image whose result meets a batch)."""
        return self.em.op("Expand", bound, self.em.op("Shape", x))

    def linear(self, node: NodeProto, dys: Grads) -> Grads:
        """The composite's rule for this layer: one rule, or a chain of Ifs on the chosen one
        where the composites give the layer's position several."""
        em = self.em
        live = self.fixed or em.op("Cast", self.on(), to=TensorProto.FLOAT)
        lin = lr.Linear.of(node, em, live)
        kind = FIRST if node.output[0] == self.first else CONV if node.op_type == "Conv" else DENSE
        table = self.tables[kind]
        x, z, r = node.input[0], node.output[0], dys[0]
        rest = (None,) * (len(node.input) - 1)
        candidates = sorted({int(v) for v in table})
        if B in candidates and self.bounds is None:
            raise UnsupportedOpError(f"{node.op_type} node {node.name!r}: no input bounds for zB")
        if len(candidates) == 1:
            return (self._rule(candidates[0], lin, x, z, r), *rest)
        chosen = em.op("Gather", em.const(table), self.index())
        conditions = {
            rule: em.op("Equal", chosen, em.const(np.asarray(rule, np.int64)))
            for rule in candidates[:-1]
        }
        branches = {rule: self._branch(self._maker(rule, lin, x, z, r)) for rule in candidates}
        nodes, out = branches[candidates[-1]]
        rank = [len(em.info.shape(x))]
        for rule in reversed(candidates[:-1]):
            then_nodes, then_out = branches[rule]
            chain = em.fresh()
            node = _if(conditions[rule], [chain], (then_nodes, [then_out]), (nodes, [out]), rank)
            nodes, out = [node], chain
        em.nodes.extend(nodes)
        # The chain's result times the run-time 1.0 of an LRP call (exact). OpenVINO (2026.4)
        # returned garbage in the first LRP call after compiling where an If's result met an
        # average pool's rule (timm's ResNet-D shortcuts: 1e2 to 1e34 off, or NaN); later calls
        # were right. Read through a product, the first call is right too.
        return (em.op("Mul", out, live), *rest)

    def _maker(self, rule: int, lin: lr.Linear, x: str, z: str, r: str) -> Callable[[], str]:
        return lambda: self._rule(rule, lin, x, z, r, fresh=True)

    def _branch(self, build: Callable[[], str]) -> tuple[list[NodeProto], str]:
        """The nodes ``build`` emits and its result. Nodes that read only constants stay outside:
        one copy, which runtimes fold at load time, serves every branch."""
        em = self.em
        before = len(em.nodes)
        out = build()
        made, em.nodes[before:] = em.nodes[before:], []
        known = {i.name for i in em.initializers}
        body = []
        for node in made:
            if node.op_type != "If" and all(x in known or x in em.info.consts for x in reads(node)):
                em.nodes.append(node)
                known.update(node.output)
            else:
                body.append(node)
        return body, out

    def _rule(
        self, rule: int, lin: lr.Linear, x: str, z: str, r: str, *, fresh: bool = False
    ) -> str:
        if fresh:
            lin.fresh()
        if rule == B:
            assert self.bounds is not None
            low, high = (self._full(b, lin.node.input[0]) for b in self.bounds)
            return lr.zbox(lin, self.em, x, z, r, low, high)
        return lr.RULES[rule](lin, self.em, x, z, r)


def _active_inputs(node: NodeProto, em: Emitter) -> list[int]:
    return [i for i, x in enumerate(node.input) if x and em.wants(x)]


def _rule_for(node: NodeProto, em: Emitter, walk: _Walk) -> Callable[[Grads], Grads]:
    """The relevance rule of one (renamed) node."""
    op, active = node.op_type, _active_inputs(node, em)
    plain = RULES.get(op)
    if op in lr.LINEAR_OPS:
        if active != [0]:
            raise UnsupportedOpError(f"{op} node {node.name!r}: LRP needs constant weights")
        return lambda dys: walk.linear(node, dys)
    if op in PASS_OPS:
        return lambda dys: (dys[0],) + (None,) * (len(node.input) - 1)
    if op in SCALE_OPS:
        if active != [0] and not (op == "Mul" and active == [1]):
            raise UnsupportedOpError(f"{op} node {node.name!r}: LRP of a product of activations")
        return lambda dys: tuple(dys[0] if i in active else None for i in range(len(node.input)))
    if plain is None:
        raise UnsupportedOpError(f"no backward rule for {op} node {node.name!r}")
    if op == "MaxPool":
        return lambda dys: _max_pool(node, dys, em)
    if op in NORM_OPS or (op in JOIN_OPS and len(active) > 1):
        return lambda dys: _norm(node, dys, em, plain)
    return lambda dys: plain(node, dys, em)


def _max_pool(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """The max-pool gradient (winner takes all), scattered back with static reshape sizes; the
    zeros are x * 0, not a ConstantOfShape of a computed shape."""
    x, y = node.input[0], node.output[0]
    (_, chans, *inner), (_, _, *outer) = em.info.shape(x), em.info.shape(y)
    if not all(isinstance(d, int) for d in (chans, *inner, *outer)) or len(node.output) < 2:
        raise UnsupportedOpError(f"MaxPool node {node.name!r}: LRP needs static sizes")
    plane, pooled = int(np.prod(inner)), int(np.prod(outer))
    index = em.op("Cast", em.op("Mod", node.output[1], em.ints([plane])), to=TensorProto.INT32)
    flat = em.ints([0, chans, pooled])
    if em.grad_dtype(x) != em.info.dtypes.get(x, TensorProto.FLOAT):  # pooled integers (int8)
        x = em.op("Cast", x, to=em.grad_dtype(x))
    summed = em.op(
        "ScatterElements", em.op("Reshape", em.op("Mul", x, em.scalar(0.0, x)), em.ints([0, chans, plane])),
        em.op("Reshape", index, flat), em.op("Reshape", dys[0], flat), axis=2, reduction="add",
    )  # fmt: skip
    return (em.op("Reshape", summed, em.ints([0, chans, *inner])),)


def _norm(node: NodeProto, dys: Grads, em: Emitter, plain: Callable[..., Grads]) -> Grads:
    """x_i * vjp_i(R / stab(y)): the output's relevance split by the inputs' contributions."""
    s = em.op("Div", dys[0], lr.stabilise(em, node.output[0]))
    grads = plain(node, (s,), em)
    return tuple(None if g is None else em.op("Mul", node.input[i], g) for i, g in enumerate(grads))


def add_lrp(
    model: onnx.ModelProto,
    *,
    wrt: Mapping[str, str],
    seed: str,
    relu_rule: str,
    composite: str | None = None,
) -> str | None:
    """Add the relevance walk to a graph that has the gradient walk (in place).

    Args:
        model: the output of ``vjp.add_vjp`` (its ``wrt`` outputs produced by Identity nodes).
        wrt: forward tensor -> output name, as given to add_vjp.
        seed: the cotangent on the logits the gradient walk starts from.
        relu_rule: the int64 scalar input selecting the rule.
        composite: for the flat variant (no If nodes): the one composite (a name in
            ``contract.LRP_RULES``) the walk computes, in every call, beside the gradients;
            each output reads the relevance when ``relu_rule`` is its code, the gradient for
            codes 0-2 and NaN for the other LRP codes. None: every composite, behind Ifs.

    Returns:
        None when the walk was added; else why not (the model untouched): an op on the
        gradient path without a relevance rule, or a rule that cannot be built there.
    """
    graph = model.graph
    info = GraphInfo.of(model)
    forward = [n for n in graph.node if not n.name.startswith((c.GRAD_PREFIX, "seed/"))]
    fused = fuse_erf_gelu(forward, info, {o.name for o in graph.output})
    nodes, needed = differentiated_nodes(fused, set(wrt), c.LOGITS)
    unsupported = sorted({n.op_type for n in nodes if n.op_type not in SUPPORTED})
    if unsupported:
        return f"no relevance rule for {', '.join(unsupported)}"
    try:
        em, outs, rename = _walk(model, info, nodes, needed, wrt, seed, relu_rule, composite)
        if composite is None:
            _insert(model, em, outs, wrt, rename, relu_rule)
        else:
            _insert_flat(model, em, outs, wrt, rename, relu_rule, c.LRP_RULES[composite])
    except (UnsupportedOpError, GraphError) as err:
        return str(err)
    return None


def _stash_name(t: str) -> str:
    return f"{LRP_ROWS}{t}"


def _walk(
    model: onnx.ModelProto,
    info: GraphInfo,
    nodes: list[NodeProto],
    needed: set[str],
    wrt: Mapping[str, str],
    seed: str,
    relu_rule: str,
    composite: str | None,
) -> tuple[Emitter, dict[str, str], dict[str, str]]:
    """Emit the relevance walk; return its emitter, wrt tensor -> relevance tensor, and forward
    tensor -> the name the walk reads it by (its stash)."""
    order = [t for n in nodes for t in (*n.input, *n.output) if t]  # deterministic names
    active = needed | {o for n in nodes for o in n.output if o}
    rename = {
        t: _stash_name(t) for t in dict.fromkeys(order) if t in active and info.const(t) is None
    }
    for t, s in rename.items():
        shape = info.shape(t)
        info.shapes[s] = shape
        if t in info.dtypes:
            info.dtypes[s] = info.dtypes[t]
    em = Emitter(info, prefix=PREFIX, wanted=frozenset(rename[t] for t in needed if t in rename))
    linear = [n for n in nodes if n.op_type in lr.LINEAR_OPS]
    if not linear:
        raise UnsupportedOpError("no linear layer on the gradient path")
    first = linear[0]
    bounds = _box_bounds(model, info, first.input[0])
    walk = _Walk(em, relu_rule, rename[first.output[0]], bounds, composite)
    alias = {  # weights behind Identity nodes (torch's exporter shares them so) are constants
        n.output[0]: n.input[0]
        for n in model.graph.node
        if n.op_type == "Identity" and n.input and n.input[0] in info.consts
    }
    copies = []
    for node in nodes:
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [rename.get(x, alias.get(x, x)) for x in copy.input]
        copy.output[:] = [rename.get(x, x) for x in copy.output]
        copies.append(copy)

    # A layer output a QuantizeLinear reads is fused away with it in integer kernels; read by
    # the walk, it would keep the runtime on float kernels for the whole graph (ResNet18 from
    # onnxruntime's quantiser: logits 4 % off the deployed ones, calls 3x slower). The walk
    # computes its own copy from the layer's (dequantised) inputs.
    quantised = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for node, copy in zip(nodes, copies, strict=True):
        if node.output[0] in quantised and copy.output[0] != node.output[0]:
            em.nodes.append(_recomputed(node, copy, em))

    contributions: dict[str, list[str]] = defaultdict(list)
    with em.scoped("seed"):
        contributions[rename[c.LOGITS]].append(seed)
    total = summed(em, contributions)

    for node in reversed(copies):
        dys = tuple(total(o) if o else None for o in node.output)
        if all(d is None for d in dys):
            continue
        with em.scoped(node.name or node.output[0]):
            grads = _rule_for(node, em, walk)(dys)
        for x, g in zip(node.input, grads, strict=True):
            if em.wants(x) and g is not None:
                contributions[x].append(g)
    outs = {}
    for x in wrt:
        g = total(rename.get(x, x))
        if g is None:
            raise GraphError(f"no relevance reaches {x!r}")
        outs[x] = g
    return em, outs, rename


def _recomputed(node: NodeProto, copy: NodeProto, em: Emitter) -> NodeProto:
    """A forward node computed again inside the walk: it yields the names the walk reads the
    outputs by, and fresh names for the outputs the walk does not read."""
    outputs = [
        c_ if c_ != o else em.fresh() for o, c_ in zip(node.output, copy.output, strict=True)
    ]
    again = NodeProto()
    again.CopyFrom(copy)
    again.output[:] = outputs
    again.name = f"{PREFIX}requantised/{node.name or node.output[0]}"
    return again


def _if(
    condition: str,
    outputs: list[str],
    then: tuple[list[NodeProto], list[str]],
    otherwise: tuple[list[NodeProto], list[str]],
    ranks: list[int],
    dtypes: list[int] | None = None,
) -> NodeProto:
    """If(condition) with branches (nodes, the tensors they yield as ``outputs``), whose
    outputs are declared with their ranks (OpenVINO gives a tensor of unknown rank to the ops
    after the If otherwise, and a Conv refuses it)."""
    kinds = dtypes or [TensorProto.FLOAT] * len(outputs)

    def branch(label: str, nodes: list[NodeProto], names: list[str]) -> onnx.GraphProto:
        values = [
            helper.make_tensor_value_info(n, t, [None] * rank)
            for n, t, rank in zip(names, kinds, ranks, strict=True)
        ]
        return helper.make_graph(nodes, f"{outputs[0]}/{label}", [], values)

    return helper.make_node(
        "If", [condition], outputs, name=f"{outputs[0]}/If",
        then_branch=branch("then", *then), else_branch=branch("else", *otherwise),
    )  # fmt: skip


def _needed(nodes: list[NodeProto], outputs: set[str]) -> list[NodeProto]:
    """The nodes ``outputs`` depend on, in order."""
    wanted, kept = set(outputs), []
    for node in reversed(nodes):
        if wanted.intersection(node.output):
            kept.append(node)
            wanted.update(reads(node))
    return kept[::-1]


def _hoist_shapes(nodes: list[NodeProto], source: Mapping[str, str]) -> list[NodeProto]:
    """Take every Shape of a stash out of ``nodes`` (at any depth) as a Shape of its forward
    tensor (the same shape in LRP calls): shape vectors are then computed outside the branches,
    where the gate and runtimes that propagate shapes before running want them (gate.py)."""
    out, kept = [], []
    for node in nodes:
        if node.op_type == "Shape" and node.input[0] in source and not node.attribute:
            out.append(
                helper.make_node(
                    "Shape", [source[node.input[0]]], list(node.output), name=node.name
                )
            )
            continue
        for sub in subgraphs(node):
            inner = list(sub.node)
            out.extend(_hoist_shapes(inner, source))
            del sub.node[:]
            sub.node.extend(inner)
        kept.append(node)
    nodes[:] = kept
    return out


def _insert(
    model: onnx.ModelProto,
    em: Emitter,
    outs: Mapping[str, str],
    wrt: Mapping[str, str],
    rename: Mapping[str, str],
    relu_rule: str,
) -> None:
    """Put the walk into the graph behind If nodes on ``relu_rule >= 3``: in gradient calls none
    of it runs; in LRP calls the wrt outputs read its relevances instead of the gradients.

    - each forward tensor the walk reads is copied by an If (the tensor, or an empty one in
      gradient calls), so that in gradient calls the activations still die in the forward pass,
      as the gate wants (gate.py, its ``LRP_ROWS``);
    - the walk itself is two Ifs, the part down to the taps and the rest, which the gate puts
      with the gradient walk's two parts; their else-branches pass the gradients on.

    Raises:
        GraphError: a tensor between the two parts without an inferred rank (the model is then
            untouched).
    """
    graph = model.graph
    body = _needed(em.nodes, set(outs.values()))
    shapes = _hoist_shapes(body, {s: t for t, s in rename.items()})
    read = {x for n in walk(body) for x in reads(n)} - {o for n in body for o in n.output}
    stashed = [(t, s) for t, s in rename.items() if s in read]
    taps = {x: r for x, r in outs.items() if wrt[x] != c.GRAD_INPUT}
    first = _needed(body, set(taps.values()))
    ids = {id(n) for n in first}
    rest = [n for n in body if id(n) not in ids]
    later = {x for n in rest for x in reads(n)}
    passed = {r: _output(wrt[x], "taps") for x, r in taps.items() if r in later}
    crossing = [o for n in first for o in n.output if o in later and o not in passed]

    at, producer = _site(graph, wrt)
    lowest = em.const(np.asarray(min(c.LRP_RULES.values()), np.int64))
    copies = [helper.make_node("Identity", [t], [s], name=s) for t, s in stashed]
    ranks = _ranks(model, at, [*copies, *shapes, *body], crossing)
    used = read | {x for n in shapes for x in n.input} | {lowest}
    graph.initializer.extend(i for i in em.initializers if i.name in used)

    on = f"{LRP_ROWS}on"
    made = [*shapes, helper.make_node("GreaterOrEqual", [relu_rule, lowest], [on], name=on)]
    for t, s in stashed:
        rank, dtype = len(em.info.shape(t)), em.info.dtypes.get(t, TensorProto.FLOAT)
        copy = helper.make_node("Identity", [t], [f"{s}@then"], name=f"{s}@then")
        off = empty(f"{s}@else", rank, dtype)
        made.append(_if(on, [s], ([copy], [f"{s}@then"]), (off, [f"{s}@else"]), [rank], [dtype]))
    rename_tensors(rest, passed)
    others = {x: r for x, r in outs.items() if x not in taps}
    for label, nodes, finals, across in (
        ("taps", first, taps, crossing), ("input", rest, others, []),
    ):  # fmt: skip
        if not finals:
            continue
        condition = f"{PREFIX}{label}/on"
        made.append(
            helper.make_node("GreaterOrEqual", [relu_rule, lowest], [condition], name=condition)
        )
        inner = {o: f"{o}@{PREFIX}{label}" for o in across}
        rename_tensors(nodes, inner)
        then_nodes, then_out, else_nodes, else_out = list(nodes), [], [], []
        for x, r in finals.items():
            ident, name = producer[wrt[x]], _output(wrt[x], label)
            then_nodes.append(helper.make_node("Identity", [inner.get(r, r)], [f"{name}@then"]))
            else_nodes.append(helper.make_node("Identity", [ident.input[0]], [f"{name}@else"]))
            then_out.append(f"{name}@then")
            else_out.append(f"{name}@else")
            ident.input[0] = name
        sizes = [len(em.info.shape(x)) for x in finals]
        types: list[int] = [TensorProto.FLOAT] * len(finals)
        for o in across:
            rank, dtype = ranks[o]
            then_out.append(inner[o])
            else_nodes.extend(empty(f"{o}@else", rank, dtype))
            else_out.append(f"{o}@else")
            sizes.append(rank)
            types.append(dtype)
        outputs = [_output(wrt[x], label) for x in finals] + across
        then, otherwise = (then_nodes, then_out), (else_nodes, else_out)
        made.append(_if(condition, outputs, then, otherwise, sizes, types))
    for k, node in enumerate(made):
        graph.node.insert(at + k, node)


def _insert_flat(
    model: onnx.ModelProto,
    em: Emitter,
    outs: Mapping[str, str],
    wrt: Mapping[str, str],
    rename: Mapping[str, str],
    relu_rule: str,
    code: int,
) -> None:
    """Put the walk of one composite into a graph without If nodes (the flat variant): it runs
    in every call, and each wrt output reads its relevance when ``relu_rule`` is ``code``, the
    gradient for the rectifier codes, NaN for the LRP codes the graph does not carry."""
    graph = model.graph
    at, producer = _site(graph, wrt)
    chosen = em.op("Equal", relu_rule, em.const(np.asarray(code, np.int64)))
    lowest = em.const(np.asarray(min(c.LRP_RULES.values()), np.int64))
    gradient = em.op("Less", relu_rule, lowest)
    nan = em.const(np.asarray(np.nan, np.float32), dtype=np.float32)
    finals = {}
    for x, r in outs.items():
        kept = em.op("Where", gradient, producer[wrt[x]].input[0], nan)
        finals[x] = em.op("Where", chosen, r, kept)
    body = _needed(em.nodes, set(finals.values()))
    read = {x for n in body for x in reads(n)} - {o for n in body for o in n.output}
    copies = [
        helper.make_node("Identity", [t], [s], name=s) for t, s in rename.items() if s in read
    ]
    graph.initializer.extend(i for i in em.initializers if i.name in read)
    for k, node in enumerate([*copies, *body]):
        graph.node.insert(at + k, node)
    for x, final in finals.items():
        producer[wrt[x]].input[0] = final


def _site(graph: onnx.GraphProto, wrt: Mapping[str, str]) -> tuple[int, dict[str, NodeProto]]:
    """Where the walk goes in (before the first node producing a wrt output), and the Identity
    nodes producing the outputs by name (the walk rewires their inputs)."""
    at = next(i for i, n in enumerate(graph.node) if n.output and n.output[0] in wrt.values())
    producer = {n.output[0]: n for n in graph.node if n.op_type == "Identity" and n.output}
    return at, producer


def _output(name: str, label: str) -> str:
    return f"{PREFIX}{label}/{name}"


def _ranks(
    model: onnx.ModelProto, at: int, nodes: list[NodeProto], names: list[str]
) -> dict[str, tuple[int, int]]:
    """Rank and element type of each of ``names``, inferred with ``nodes`` inserted at ``at``
    (the walk, flat); the graph is left as it was."""
    graph = model.graph
    for k, node in enumerate(nodes):
        graph.node.insert(at + k, node)
    try:
        inferred = infer(model, complete=False)
    finally:
        del graph.node[at : at + len(nodes)]
    missing = [o for o in names if o not in inferred.shapes]
    if missing:
        raise GraphError(f"no inferred rank for the relevance tensor {missing[0]!r}")
    return {o: (len(inferred.shapes[o]), inferred.dtypes.get(o, TensorProto.FLOAT)) for o in names}


def _box_bounds(
    model: onnx.ModelProto, info: GraphInfo, x: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """Arrays [1, ...] holding the lowest and highest value of tensor ``x`` (the first linear
    layer's input) over images in [0, 1]: the preprocessing between the graph input and ``x``
    run on an all-0 and an all-1 image. None when it cannot be run (a dynamic image size)."""
    if x == c.INPUT:
        dims = info.shape(x)[1:]
        if not all(isinstance(d, int) for d in dims):
            return None
        arrays = [np.zeros([1, *dims], np.float32), np.ones([1, *dims], np.float32)]
    else:
        dims = info.shape(c.INPUT)[1:]
        if not all(isinstance(d, int) for d in dims):
            return None
        graph = model.graph
        producer = {o: n for n in graph.node for o in n.output}
        wanted, chosen = [x], []
        while wanted:
            t = wanted.pop()
            node = producer.get(t)
            if node is not None and node not in chosen:
                chosen.append(node)
                wanted.extend(i for i in node.input if i)
        order = [n for n in graph.node if n in chosen]
        inits = {i.name: i for i in graph.initializer}
        used = [inits[i] for n in order for i in n.input if i in inits]
        sub = helper.make_graph(
            order, "bounds", [helper.make_tensor_value_info(c.INPUT, TensorProto.FLOAT, [1, *dims])],
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], list({u.name: u for u in used}.values()),
        )  # fmt: skip
        opsets = [
            helper.make_opsetid(o.domain, max(o.version, 19))  # the reference runtime's Q/DQ
            if o.domain in ("", "ai.onnx") and any(n.op_type in qdq.OPS for n in order)
            else o
            for o in model.opset_import
        ]
        sub_model = helper.make_model(sub, opset_imports=opsets)
        try:
            run = ReferenceEvaluator(sub_model)
            arrays = [
                np.asarray(list(run.run(None, {c.INPUT: np.full([1, *dims], v, np.float32)}))[0])
                for v in (0.0, 1.0)
            ]
        except Exception as err:  # the reference runtime raises its own types
            log.info("no zB bounds for %r: %s", x, err)
            return None
    low, high = np.minimum(*arrays), np.maximum(*arrays)
    if low.ndim == 4 and all(np.all(b == b[:, :, :1, :1]) for b in (low, high)):
        low, high = low[:, :, :1, :1], high[:, :, :1, :1]  # per channel, expanded in the graph
    return low.astype(np.float32), high.astype(np.float32)
