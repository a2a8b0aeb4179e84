"""Model-randomisation sanity check on an ONNX graph (onnx + numpy only, no torch).

Adebayo et al. 2018 (https://arxiv.org/abs/1810.03292): an explanation that survives the
re-initialisation of the model's weights does not explain the model. ``cascading_randomization``
re-initialises the parameterised layers from the top (logits side) down, one more layer per
step, and yields each randomised copy; comparing each copy's maps with the original ones
(``gradtap.runtime.evaluate.metrics.spearman`` / ``ssim``) gives the cascade curves.

A layer is a ``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul`` node of the forward pass (an
ancestor of the ``logits`` output) whose weight is a graph initializer, with its bias initializer
(the node's third input, or the initializer added right after a MatMul). In an augmented graph
the backward nodes read the same initializers, so a randomised copy stays consistent: its
gradients are the gradients of the randomised forward pass.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from gradtap.runtime import contract
from gradtap.runtime.errors import ModelError

logger = logging.getLogger(__name__)

PARAMETERISED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class Layer:
    """A parameterised forward node: its name, op type, weight and optional bias initializers."""

    node: str
    op_type: str
    weight: str
    bias: str | None


def _ancestors(graph: onnx.GraphProto, output: str) -> list[int]:
    """Indices (graph order) of the nodes that ``output`` depends on."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    if output not in producer:
        outputs = sorted(o.name for o in graph.output)
        raise ModelError(f"no node produces {output!r}; graph outputs: {outputs}")
    seen: set[int] = set()
    stack = [producer[output]]
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(producer[x] for x in graph.node[i].input if x in producer)
    return sorted(seen)


def _layer(graph: onnx.GraphProto, i: int, inits: set[str], consumers: dict) -> Layer | None:
    node = graph.node[i]
    if node.op_type not in PARAMETERISED_OPS:
        return None
    name = node.name or f"#{i} {node.op_type}"
    ins = list(node.input)
    if node.op_type == "MatMul":
        weights = [x for x in ins if x in inits]
        if len(weights) != 1:
            return None
        adds = [graph.node[j] for j in consumers.get(node.output[0], [])]
        bias = next((x for a in adds if a.op_type == "Add" for x in a.input if x in inits), None)
        return Layer(name, node.op_type, weights[0], bias)
    w_at = 0 if node.op_type == "Gemm" and ins[1] not in inits and ins[0] in inits else 1
    if len(ins) <= w_at or ins[w_at] not in inits:
        return None
    bias = ins[2] if len(ins) > 2 and ins[2] in inits else None
    return Layer(name, node.op_type, ins[w_at], bias)


def parameterised_layers(model: onnx.ModelProto, output: str = contract.LOGITS) -> list[Layer]:
    """The forward pass's parameterised layers, top (nearest ``output``) first.

    Args:
        model: a plain or augmented ONNX classifier.
        output: the graph output whose computation defines the forward pass.

    Returns:
        One entry per distinct weight initializer, in reverse topological order.
    """
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    consumers: dict[str, list[int]] = {}
    for j, node in enumerate(graph.node):
        for x in node.input:
            consumers.setdefault(x, []).append(j)
    layers: list[Layer] = []
    for i in reversed(_ancestors(graph, output)):
        layer = _layer(graph, i, inits, consumers)
        if layer is not None and all(layer.weight != seen.weight for seen in layers):
            layers.append(layer)
    if not layers:
        ops = ", ".join(sorted(PARAMETERISED_OPS))
        raise ModelError(
            f"no parameterised layer ({ops} with an initializer weight) feeds {output!r}"
        )
    return layers


def _redraw(tensor: onnx.TensorProto, seed: int) -> onnx.TensorProto:
    """A tensor of the same name, shape and dtype, Gaussian with the original mean and std."""
    value = numpy_helper.to_array(tensor)
    if not np.issubdtype(value.dtype, np.floating):
        raise ModelError(f"initializer {tensor.name!r} is {value.dtype}, not floating point")
    rng = np.random.default_rng([seed, zlib.crc32(tensor.name.encode())])
    as64 = value.astype(np.float64)
    new = rng.normal(as64.mean(), as64.std(), value.shape).astype(value.dtype)
    return numpy_helper.from_array(new, tensor.name)


def randomize_layers(
    model: onnx.ModelProto, layers: Sequence[Layer], *, seed: int = 0
) -> onnx.ModelProto:
    """A copy of ``model`` with the weights and biases of ``layers`` re-initialised.

    Each tensor is redrawn from a Gaussian with the original tensor's mean and standard
    deviation, seeded by ``seed`` and the initializer's name: a layer gets the same new values in
    every copy, so the cascade steps differ only by the layers added. Everything else, and the
    input model, is left untouched.

    Args:
        model: the ONNX model.
        layers: layers from ``parameterised_layers(model)``.
        seed: randomisation seed.
    """
    names = {n for layer in layers for n in (layer.weight, layer.bias) if n is not None}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    found = set()
    for k, tensor in enumerate(out.graph.initializer):
        if tensor.name in names:
            out.graph.initializer[k].CopyFrom(_redraw(tensor, seed))
            found.add(tensor.name)
    if found != names:
        raise ModelError(f"initializers not in the model: {sorted(names - found)}")
    return out


def randomize_top(
    model: onnx.ModelProto, k: int, *, seed: int = 0, output: str = contract.LOGITS
) -> onnx.ModelProto:
    """A copy of ``model`` with its top ``k`` parameterised layers re-initialised."""
    layers = parameterised_layers(model, output)
    if not 0 <= k <= len(layers):
        raise ModelError(
            f"k={k} out of range: the model has {len(layers)} layers (0..{len(layers)})"
        )
    return randomize_layers(model, layers[:k], seed=seed)


def cascading_randomization(
    model: onnx.ModelProto, *, seed: int = 0, output: str = contract.LOGITS
) -> Iterator[tuple[Layer, onnx.ModelProto]]:
    """Yield ``(layer, copy)`` with every layer down to ``layer`` re-initialised, top first.

    Copies are made one at a time, so a large model costs one extra copy of memory.
    """
    layers = parameterised_layers(model, output)
    for k, layer in enumerate(layers, start=1):
        logger.debug("randomising the top %d layers, down to %s", k, layer.node)
        yield layer, randomize_layers(model, layers[:k], seed=seed)
