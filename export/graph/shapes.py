"""Shape inference that does not give up on a dynamic batch.

onnx's inference loses dimensions wherever a Reshape, Expand or Tile takes a shape computed at
run time from ``Shape`` (a flatten, a channel shuffle, a token grid, a class token expanded to
the batch): it cannot evaluate the shape subgraph while the batch is symbolic. Here the graph is
probed twice with the batch fixed (2 and 3): with every input static, the small integer subgraphs
that compute shapes are constants, folded with onnx's reference evaluator until inference knows
every dimension it can. A dimension equal in both probes is static; one that moved with the batch
stays dynamic. The probes carry no weights (large initializers become inputs of their shape).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

Dim = int | str | None
Shape = tuple[Dim, ...]

_FOLD_LIMIT = 4096  # elements: shape arithmetic, never real activations
_NOT_FOLDED = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                         "Multinomial", "Bernoulli", "If", "Loop", "Scan"})  # fmt: skip
_PASSES = 64


def value_infos(g: onnx.GraphProto) -> tuple[dict[str, Shape], dict[str, int]]:
    """Tensor name -> shape (where known) and -> element type, from a graph's value infos."""
    shapes: dict[str, Shape] = {}
    dtypes: dict[str, int] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        dtypes[vi.name] = t.elem_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(_dim(d) for d in t.shape.dim)
    return shapes, dtypes


@dataclass
class Inferred:
    """An inferred graph, its shapes and element types, and the values of the shape subgraphs
    that are the same whatever the batch (a split point computed from ``Shape``, say)."""

    graph: onnx.GraphProto
    shapes: dict[str, Shape]
    dtypes: dict[str, int]
    values: dict[str, np.ndarray]


def infer(model: onnx.ModelProto, *, complete: bool = True) -> Inferred:
    """onnx's inference with data propagation, completed by the two batch probes where needed
    (unless ``complete`` is False)."""
    g = onnx.shape_inference.infer_shapes(_weightless(model), data_prop=True).graph
    shapes, dtypes = value_infos(g)
    found = Inferred(g, shapes, dtypes, {})
    if not complete or not _incomplete(g, shapes):
        return found
    parts = _parts(model)
    last = _PROBED.get("last")
    if last is not None and last[0] <= parts:  # a graph grown from the last one probed
        grown = _with_probes(found, last[1])
        if not (_unknown(g, grown.shapes) - last[2]):  # probing again would learn nothing new
            return grown
    probes = (_probe(model, 2), _probe(model, 3))
    probed = {o for n in model.graph.node for o in n.output if o}
    _PROBED["last"] = (parts, probes, probed)
    return _with_probes(found, probes)


_Probe = tuple[dict[str, Shape], dict[str, np.ndarray]]
# augment asks about the same forward graph several times as it adds taps and seed inputs
_PROBED: dict[str, tuple[frozenset[bytes], tuple[_Probe | None, _Probe | None], set[str]]] = {}


def _with_probes(found: Inferred, probes: tuple[_Probe | None, _Probe | None]) -> Inferred:
    """``found`` with the dimensions and values both probes agree on."""
    shapes, values = dict(found.shapes), {}
    first, second = probes
    if first is None or second is None:
        return found
    (at2, v2), (at3, v3) = first, second
    batch = _batch_symbol(found.graph)
    for name in {o for n in found.graph.node for o in n.output if o}:
        merged = _merged(shapes.get(name), at2.get(name), at3.get(name), batch)
        if merged is not None:
            shapes[name] = merged
        if name in v2 and name in v3 and v2[name].shape == v3[name].shape:
            if np.array_equal(v2[name], v3[name]):
                values[name] = v2[name]
    return Inferred(found.graph, shapes, found.dtypes, values)


def _parts(model: onnx.ModelProto) -> frozenset[bytes]:
    """Digests of what the probes depend on: each node and input, each initializer's name, type
    and dims (and value, when small or int64). A graph holding all parts of another extends it."""
    g = model.graph
    found = {
        hashlib.sha1(p.SerializeToString(deterministic=True)).digest() for p in [*g.node, *g.input]
    }
    for init in g.initializer:
        if int(np.prod(init.dims)) <= _FOLD_LIMIT or init.data_type == onnx.TensorProto.INT64:
            found.add(hashlib.sha1(init.SerializeToString(deterministic=True)).digest())
        else:
            found.add(
                hashlib.sha1(f"{init.name}|{init.data_type}|{list(init.dims)}".encode()).digest()
            )
    return frozenset(found)


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or None


def _static(shape: Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _incomplete(g: onnx.GraphProto, shapes: dict[str, Shape]) -> bool:
    """Whether a node output lacks a shape or has an unknown dimension past the first."""
    return bool(_unknown(g, shapes))


def _unknown(g: onnx.GraphProto, shapes: dict[str, Shape]) -> set[str]:
    """Node outputs without a shape or with an unknown dimension past the first."""
    return {
        out
        for node in g.node
        for out in node.output
        if out and (out not in shapes or not _static(shapes[out][1:]))
    }


def _weightless(model: onnx.ModelProto, batch: int | None = None) -> onnx.ModelProto:
    """The model without its large initializers (typed inputs instead), cheap to infer.

    With ``batch``, every graph input's dynamic first dimension is fixed to it and the outputs
    are left untyped (the probes); without, value infos and outputs are kept as they are.
    """
    probe = onnx.ModelProto()
    for field_name in ("ir_version", "producer_name", "model_version"):
        setattr(probe, field_name, getattr(model, field_name))
    probe.opset_import.extend(model.opset_import)
    probe.functions.extend(model.functions)
    src, g = model.graph, probe.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    if batch is None:
        g.value_info.extend(src.value_info)
    declared = {vi.name for vi in g.input}
    for init in src.initializer:
        size = int(np.prod(init.dims)) if init.dims else 1
        if size <= _FOLD_LIMIT or init.data_type == onnx.TensorProto.INT64:
            g.initializer.append(init)
        elif init.name not in declared:
            g.input.append(
                helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    if batch is not None:
        weights = {i.name for i in src.initializer}
        for vi in g.input:
            dims = vi.type.tensor_type.shape.dim
            if vi.name not in weights and dims and not dims[0].HasField("dim_value"):
                dims[0].Clear()
                dims[0].dim_value = batch
        for vi in g.output:
            vi.type.tensor_type.ClearField("shape")
    return probe


def _probe(
    model: onnx.ModelProto, batch: int
) -> tuple[dict[str, Shape], dict[str, np.ndarray]] | None:
    """Shapes with the batch fixed and the folded values, folding until nothing changes."""
    probe = _weightless(model, batch)
    folded: dict[str, np.ndarray] = {}
    shapes: dict[str, Shape] = {}
    try:
        for _ in range(_PASSES):
            inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
            shapes, _ = value_infos(inferred.graph)
            if not _fold(probe.graph, shapes, folded):
                break
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return None
    return shapes, folded


def _fold(g: onnx.GraphProto, shapes: dict[str, Shape], folded: dict[str, np.ndarray]) -> bool:
    """Replace nodes whose inputs are all known small constants by Constant nodes; True if any.

    ``folded`` holds the values folded so far (and is extended); the first call reads the
    graph's own constants into it too.
    """
    values = folded
    if not values:
        values.update({i.name: numpy_helper.to_array(i) for i in g.initializer})
        for node in g.node:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    changed = False
    nodes = list(g.node)
    for k, node in enumerate(nodes):
        if node.op_type == "Constant":
            continue
        if node.op_type in _NOT_FOLDED or node.domain not in ("", "ai.onnx") or not node.output:
            continue
        result = _evaluate(node, values, shapes)
        if result is None:
            continue
        values[node.output[0]] = result[0]
        nodes[k] = helper.make_node(
            "Constant", [], [node.output[0]], value=numpy_helper.from_array(result[0])
        )
        changed = True
    if changed:
        del g.node[:]
        g.node.extend(nodes)
    return changed


def _evaluate(
    node: onnx.NodeProto, values: dict[str, np.ndarray], shapes: dict[str, Shape]
) -> list[np.ndarray] | None:
    """The node's outputs when they are computable from known values and static shapes."""
    if len(node.output) != 1:
        return None
    if node.op_type == "Shape":
        shape = shapes.get(node.input[0])
        if not _static(shape):
            return None
        full = np.asarray(shape, np.int64)
        start = next((a.i for a in node.attribute if a.name == "start"), 0)
        end = next((a.i for a in node.attribute if a.name == "end"), len(full))
        return [full[start:end]]
    if node.op_type == "Size":
        shape = shapes.get(node.input[0])
        static = shape is not None and _static(shape)
        return (
            [np.asarray(math.prod(int(d or 0) for d in shape or ()), np.int64)] if static else None
        )
    if not all(i in values or not i for i in node.input):
        return None
    if any(values[i].size > _FOLD_LIMIT for i in node.input if i):
        return None
    feeds = {i: values[i] for i in node.input if i}
    inputs = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for i, v in feeds.items()]  # fmt: skip
    one = helper.make_graph(
        [node], "fold", inputs, [helper.make_empty_tensor_value_info(o) for o in node.output]
    )
    try:
        out = ReferenceEvaluator(helper.make_model(one)).run(None, feeds)
    except Exception:  # an op the reference evaluator lacks: leave the node to inference
        return None
    result = [np.asarray(o) for o in out]
    return result if all(r.size <= _FOLD_LIMIT for r in result) else None


def _batch_symbol(g: onnx.GraphProto) -> str:
    """The name of the batch: the first graph input's symbolic first dimension, or ``N``."""
    for vi in g.input:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            return dims[0].dim_param
    return "N"


def _merged(
    inferred: Shape | None, at2: Shape | None, at3: Shape | None, batch: str = "N"
) -> Shape | None:
    """A dimension static and equal in both probes is static; one that moved stays dynamic.

    One that is 2 and 3 in the probes is the batch itself, named ``batch`` (onnx's inference
    gives it a fresh name past each op it cannot see through, so two tensors of one batch would
    otherwise look unrelated).
    """
    if at2 is None or at3 is None or len(at2) != len(at3):
        return inferred
    if inferred is not None and len(inferred) != len(at2):
        return inferred
    dims: list[Dim] = []
    for k, (a, b) in enumerate(zip(at2, at3, strict=True)):
        if isinstance(a, int) and a == b:
            dims.append(a)
        elif (a, b) == (2, 3) and not (inferred is not None and isinstance(inferred[k], int)):
            dims.append(batch)
        else:
            dims.append(inferred[k] if inferred is not None else None)
    return tuple(dims)
