"""Layer-wise relevance propagation in the explanation graph, switched by ``relu_rule``.

LRP (Bach et al. 2015, https://doi.org/10.1371/journal.pone.0130140) sends the explained
logit's relevance back layer by layer. Here it is a second backward walk, next to the gradient
one, in standard ONNX ops: codes 0-2 of ``relu_rule`` read the gradient walk's results as before,
codes 3 and up (``contract.LRP_RULES``) read the relevance walk's. The switch is the batch
dimension: every forward tensor the relevance walk reads is sliced to its first ``n`` rows, n the
batch size in LRP calls and 0 otherwise, so in a gradient call the relevance walk runs on empty
tensors and costs almost nothing; the two walks' results are joined by a Concat (one of them is
empty). One file serves plain, guided, deconvnet and every LRP composite.

The rules, as zennit's composites apply them (https://github.com/chr-peters/zennit):
- Conv, Gemm, MatMul with constant weights: the composite's rule for the layer's position (the
  first linear layer on the input path, the other convolutions, the other dense layers), chosen
  at run time per layer by a table lookup and again a row slice (lrp_rules.py);
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
from gradtap.export.graph.emitter import Emitter, GraphInfo
from gradtap.export.graph.patterns import fuse_erf_gelu
from gradtap.export.graph.rulebase import Grads
from gradtap.export.graph.table import RULES
from gradtap.export.graph.vjp import differentiated_nodes, summed
from gradtap.runtime import contract as c
from gradtap.runtime.errors import GraphError, UnsupportedOpError

log = logging.getLogger(__name__)

PREFIX = "lrp/"
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
    ) -> None:
        self.em, self.first = em, first
        names = list(c.LRP_RULES)
        self.codes = [c.LRP_RULES[n] for n in names]
        self.tables = [np.asarray([COMPOSITES[n][k] for n in names], np.int64) for k in range(3)]
        self.relu_rule, self.lowest = relu_rule, min(self.codes)
        self.bounds = None if bounds is None else tuple(self._const(b) for b in bounds)

    def on(self) -> str:
        """int64 [1]: 1 in LRP calls, else 0. Emitted where it is read, like ``index``: a
        scalar computed in one gated branch and read in another would have to cross an If."""
        em = self.em
        on = em.op("GreaterOrEqual", self.relu_rule, em.const(np.asarray(self.lowest, np.int64)))
        return em.op("Unsqueeze", em.op("Cast", on, to=TensorProto.INT64), em.ints([0]))

    def row_range(self) -> list[str]:
        """Slice starts, ends, axes (int32) keeping all rows in LRP calls, none otherwise: int32,
        as the gate lets only bool and int32 summaries, never int64 shape vectors, leave its Ifs
        (the ends are computed in one, read in another)."""
        em, i32 = self.em, np.int32
        on = em.op("GreaterOrEqual", self.relu_rule, em.const(np.asarray(self.lowest, np.int64)))
        on = em.op("Unsqueeze", em.op("Cast", on, to=TensorProto.INT32), em.ints([0]))
        end = em.op("Mul", on, em.const(np.asarray([2**30], i32), dtype=i32))
        return [
            em.const(np.asarray([0], i32), dtype=i32),
            end,
            em.const(np.asarray([0], i32), dtype=i32),
        ]

    def index(self) -> str:
        """int64 [1]: the composite's position in ``LRP_RULES`` (clamped)."""
        em = self.em
        index = em.op("Sub", self.relu_rule, em.const(np.asarray(self.lowest, np.int64)))
        index = em.op("Max", em.op("Min", index, em.const(len(self.codes) - 1)), em.const(0))
        return em.op("Unsqueeze", index, em.ints([0]))

    def _const(self, value: np.ndarray) -> str:
        name = self.em.const(value, dtype=np.float32)
        self.em.info.shapes[name], self.em.info.dtypes[name] = tuple(value.shape), 1
        return name

    def _full(self, bound: str, x: str) -> str:
        """A bound [1, C, 1, 1] expanded to one image like ``x`` (the layer runs on it)."""
        dims = self.em.info.shape(x)[1:]
        if not all(isinstance(d, int) for d in dims):
            raise UnsupportedOpError(f"zB needs a static shape of {x!r}")
        return self.em.op("Expand", bound, self.em.ints([1, *dims]))

    def rows(self, t: str, flag: str) -> str:
        """``t`` with all its rows where ``flag`` (int64 [1]) is 1, none where 0: a Slice whose
        end (flag * 2^62) is clamped to the size, so no Shape of a backward tensor is needed."""
        em = self.em
        end = em.op("Mul", flag, em.ints([2**62]))
        return em.op("Slice", t, em.ints([0]), end, em.ints([0]))

    def linear(self, node: NodeProto, dys: Grads) -> Grads:
        em, lin = self.em, lr.Linear.of(node, self.em)
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
        parts = []
        for rule in candidates:
            flag = em.op("Cast", em.op("Equal", chosen, em.const([rule])), to=TensorProto.INT64)
            gx, gz, gr = (self.rows(t, flag) for t in (x, z, r))
            parts.append(self._rule(rule, lin, gx, gz, gr))
        return (em.op("Concat", *parts, axis=0), *rest)

    def _rule(self, rule: int, lin: lr.Linear, x: str, z: str, r: str) -> str:
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
    """The max-pool gradient (winner takes all) with explicit reshape sizes: onnxruntime cannot
    infer a -1 of an empty tensor, which is what the walk runs on in gradient calls; the zeros
    are x * 0, not a ConstantOfShape of a computed shape (which tract cannot translate)."""
    x, y = node.input[0], node.output[0]
    (_, chans, *inner), (_, _, *outer) = em.info.shape(x), em.info.shape(y)
    if not all(isinstance(d, int) for d in (chans, *inner, *outer)) or len(node.output) < 2:
        raise UnsupportedOpError(f"MaxPool node {node.name!r}: LRP needs static sizes")
    plane, pooled = int(np.prod(inner)), int(np.prod(outer))
    index = em.op("Cast", em.op("Mod", node.output[1], em.ints([plane])), to=TensorProto.INT32)
    flat = em.ints([0, chans, pooled])
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


def add_lrp(model: onnx.ModelProto, *, wrt: Mapping[str, str], seed: str, relu_rule: str) -> bool:
    """Add the relevance walk to a graph that has the gradient walk (in place).

    Args:
        model: the output of ``vjp.add_vjp`` (its ``wrt`` outputs produced by Identity nodes).
        wrt: forward tensor -> output name, as given to add_vjp.
        seed: the cotangent on the logits the gradient walk starts from.
        relu_rule: the int64 scalar input selecting the rule.

    Returns:
        Whether the walk was added; False (the model untouched) when the gradient path has an
        op without a relevance rule.
    """
    graph = model.graph
    info = GraphInfo.of(model)
    forward = [n for n in graph.node if not n.name.startswith((c.GRAD_PREFIX, "seed/"))]
    fused = fuse_erf_gelu(forward, info, {o.name for o in graph.output})
    nodes, needed = differentiated_nodes(fused, set(wrt), c.LOGITS)
    unsupported = sorted({n.op_type for n in nodes if n.op_type not in SUPPORTED})
    if unsupported:
        log.info("no LRP walk: no relevance rule for %s", ", ".join(unsupported))
        return False
    try:
        em, outs = _walk(model, info, nodes, needed, wrt, seed, relu_rule)
    except (UnsupportedOpError, GraphError) as err:
        log.info("no LRP walk: %s", err)
        return False
    _join(model, em, outs, wrt, relu_rule)
    return True


def _stash_name(t: str) -> str:
    return f"{PREFIX}rows/{t}"


def _walk(
    model: onnx.ModelProto,
    info: GraphInfo,
    nodes: list[NodeProto],
    needed: set[str],
    wrt: Mapping[str, str],
    seed: str,
    relu_rule: str,
) -> tuple[Emitter, dict[str, str]]:
    """Emit the relevance walk; return its emitter and wrt tensor -> relevance tensor."""
    order = [t for n in nodes for t in (*n.input, *n.output) if t]  # deterministic names
    active = needed | {o for n in nodes for o in n.output if o}
    rename = {
        t: _stash_name(t) for t in dict.fromkeys(order) if t in active and info.const(t) is None
    }
    for t, s in rename.items():
        shape = info.shape(t)
        info.shapes[s] = (f"{PREFIX}rows", *shape[1:]) if shape else shape
        if t in info.dtypes:
            info.dtypes[s] = info.dtypes[t]
    em = Emitter(info, prefix=PREFIX, wanted=frozenset(rename[t] for t in needed if t in rename))
    linear = [n for n in nodes if n.op_type in lr.LINEAR_OPS]
    if not linear:
        raise UnsupportedOpError("no linear layer on the gradient path")
    first = linear[0]
    bounds = _box_bounds(model, info, first.input[0])
    walk = _Walk(em, relu_rule, rename[first.output[0]], bounds)
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

    contributions: dict[str, list[str]] = defaultdict(list)
    with em.scoped("seed"):
        contributions[rename[c.LOGITS]].append(walk.rows(seed, walk.on()))
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
    _emit_stashes(em, walk, rename)
    return em, outs


def _emit_stashes(em: Emitter, walk: _Walk, rename: Mapping[str, str]) -> None:
    """The row-sliced copies of the forward tensors the walk reads, first in its node list.

    A rule's ``Shape`` of such a copy becomes the forward tensor's shape with its first entry
    times the LRP flag: the Shape then reads a forward tensor and runs outside the gated
    branches, as the gate wants of every shape vector (gate.py).
    """
    source = {s: t for t, s in rename.items()}
    body, em.nodes = em.nodes, []
    with em.scoped("rows"):
        read = {x for n in body for x in n.input}
        for t, s in rename.items():
            if s in read:
                em.nodes.append(helper.make_node("Slice", [t, *walk.row_range()], [s], name=s))
    readers: dict[str, list[NodeProto]] = defaultdict(list)
    for node in body:
        for x in node.input:
            readers[x].append(node)
    with em.scoped("shape"):
        for node in body:
            if node.op_type != "Shape" or node.input[0] not in source or node.attribute:
                em.nodes.append(node)
                continue
            em.nodes.extend(_stash_shape(em, walk, source[node.input[0]], node, readers))


def _stash_shape(
    em: Emitter, walk: _Walk, t: str, node: NodeProto, readers: Mapping[str, list[NodeProto]]
) -> list[NodeProto]:
    """Nodes computing ``node`` (a Shape of the row-sliced copy of ``t``) without a Shape of it.

    Read only as a Reshape's shape or an Expand's, with the other dimensions static: a constant
    whose first entry is 0 (Reshape: copy the batch) or 1 (Expand: broadcast it), which runtimes
    that propagate shapes before running (tract) follow. Otherwise ``t``'s shape with its first
    entry times the LRP flag.
    """
    rest = em.info.shape(t)[1:]
    uses = readers.get(node.output[0], [])
    kinds = {(r.op_type, list(r.input).index(node.output[0])) for r in uses}
    if all(isinstance(d, int) for d in rest) and len(kinds) == 1:
        first = {("Reshape", 1): 0, ("Expand", 1): 1}.get(next(iter(kinds)))
        if first is not None:
            value = em.ints([first, *rest])
            return [helper.make_node("Identity", [value], list(node.output), name=node.name)]
    before = len(em.nodes)
    ones = em.ints([1] * len(rest))
    scale = em.op("Concat", walk.on(), ones, axis=0)
    shape = em.op("Shape", t)
    made, em.nodes[before:] = em.nodes[before:], []
    mul = helper.make_node("Mul", [shape, scale], list(node.output), name=node.name)
    return [*made, mul]


def _join(
    model: onnx.ModelProto,
    em: Emitter,
    outs: Mapping[str, str],
    wrt: Mapping[str, str],
    relu_rule: str,
) -> None:
    """Each wrt output: the gradient walk's rows (none in LRP calls) then the relevance walk's."""
    graph = model.graph
    producer = {n.output[0]: n for n in graph.node if n.op_type == "Identity" and n.output}
    with em.scoped("join"):
        for x, out in wrt.items():
            ident = producer[out]
            lowest = em.const(np.asarray(min(c.LRP_RULES.values()), np.int64))
            off = em.op("Less", relu_rule, lowest)
            flag = em.op("Unsqueeze", em.op("Cast", off, to=TensorProto.INT64), em.ints([0]))
            end = em.op("Mul", flag, em.ints([2**62]))
            plain = em.op("Slice", ident.input[0], em.ints([0]), end, em.ints([0]))
            ident.input[0] = em.op("Concat", plain, outs[x], axis=0)
    wanted, kept = {producer[out].input[0] for out in wrt.values()}, []
    for node in reversed(em.nodes):  # only what the outputs read (rules emit spare constants)
        if wanted.intersection(node.output):
            kept.append(node)
            wanted.update(node.input)
    at = next(i for i, n in enumerate(graph.node) if n.output and n.output[0] in wrt.values())
    for k, node in enumerate(reversed(kept)):
        graph.node.insert(at + k, node)
    graph.initializer.extend(i for i in em.initializers if i.name in wanted)


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
        sub_model = helper.make_model(sub, opset_imports=model.opset_import)
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
