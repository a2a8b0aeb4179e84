"""Bias gradients for FullGrad: one reduced map per biased spatial layer, ``bias_grad/<k>``.

FullGrad (Srinivas and Fleuret 2019, https://arxiv.org/abs/1905.00780) adds to |x * dS/dx| the
bias-gradients ``b * dS/dz`` of every layer ``z = conv(x) + b``. Here a biased layer is a Conv
with a constant bias, or a BatchNormalization (bias ``beta - mean * gamma / sqrt(var + eps)``),
whose output is a 4-D feature map; Gemm biases have no spatial extent and add nothing to the map.

So that a graph carries tens of such layers without tens of full-size gradient outputs, each
layer's map is reduced in the graph to what FullGrad sums (pytorch-grad-cam's post-processing):
``sum_c minmax_hw(|b_c * dS/dz_c|)`` [N, h, w], each channel min-max scaled over its own
locations (``(v - min) / (max - min + 1e-7)``). The maps stay at the layer's resolution; the
runtime upsamples and adds them. The bias is read from the layer's own initializers by graph
nodes, so a copy whose weights are rewritten in place stays consistent.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph.emitter import GraphInfo
from gradtap.runtime import contract as c

log = logging.getLogger(__name__)

EPS = 1e-7  # pytorch-grad-cam's scale_cam_image


def biased_layers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Output tensor -> node, for the biased layers with a 4-D output, in forward order."""
    info = GraphInfo.of(model)
    found: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or not node.output:
            continue
        if node.op_type == "Conv":
            params = node.input[2:3]
        elif node.op_type == "BatchNormalization":
            params = node.input[1:5]
        else:
            continue
        if not params or not all(p and info.const(p) is not None for p in params):
            continue
        shape = info.shapes.get(node.output[0], ())
        if len(shape) == 4 and isinstance(shape[1], int):
            found[node.output[0]] = node
    return found


def raw_name(k: int) -> str:
    """The internal name of layer ``k``'s full gradient (an output of the backward pass)."""
    return f"{c.bias_grad_output(k)}/grad"


def add_bias_maps(
    model: onnx.ModelProto, layers: dict[str, onnx.NodeProto], grads: dict[str, str]
) -> None:
    """Append the ``bias_grad/<k>`` outputs (in place) after the backward pass is in the graph.

    Args:
        model: the graph with the backward pass; ``grads[tensor]`` names each layer's gradient.
        layers: from :func:`biased_layers`.
        grads: layer output tensor -> the graph output holding its gradient; gradients named by
            :func:`raw_name` are internal and taken off the graph outputs.
    """
    graph = model.graph
    internal = {grads[t] for t in layers if grads[t].startswith(c.BIAS_GRAD_PREFIX)}
    kept = [o for o in graph.output if o.name not in internal]
    del graph.output[:]
    graph.output.extend(kept)
    record = {}
    for k, (tensor, node) in enumerate(layers.items()):
        name = c.bias_grad_output(k)
        nodes, inits = _reduced_map(name, node, grads[tensor])
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
        dims = [f"{name}:{i}" for i in range(3)]  # empty when the backward pass is off
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        record[name] = node.name or tensor
    log.info("FullGrad: %d biased layers", len(record))
    model.metadata_props.add(key=c.META_BIAS_GRADIENTS, value=json.dumps(record))


def _reduced_map(
    name: str, node: onnx.NodeProto, grad: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``sum_c minmax_hw(|b_c * grad_c|)``; the bias [1, C, 1, 1] computed from the layer's
    initializers."""
    p = f"{name}/"
    inits = [
        numpy_helper.from_array(np.asarray([1, -1, 1, 1], np.int64), p + "shape"),
        numpy_helper.from_array(np.asarray([1], np.int64), p + "channels"),
        numpy_helper.from_array(np.asarray(EPS, np.float32), p + "eps"),
    ]
    make = helper.make_node
    if node.op_type == "Conv":
        nodes = [make("Identity", [node.input[2]], [p + "bias"])]
    else:  # beta - mean * gamma / sqrt(var + eps)
        gamma, beta, mean, var = node.input[1:5]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        inits.append(numpy_helper.from_array(np.asarray(eps, np.float32), p + "bn_eps"))
        nodes = [
            make("Add", [var, p + "bn_eps"], [p + "var_eps"]),
            make("Sqrt", [p + "var_eps"], [p + "sigma"]),
            make("Div", [gamma, p + "sigma"], [p + "gain"]),
            make("Mul", [mean, p + "gain"], [p + "shift"]),
            make("Sub", [beta, p + "shift"], [p + "bias"]),
        ]
    nodes += [
        make("Reshape", [p + "bias", p + "shape"], [p + "bias4d"]),
        make("Mul", [grad, p + "bias4d"], [p + "product"]),
        make("Abs", [p + "product"], [p + "abs"]),
        make("GlobalMaxPool", [p + "abs"], [p + "max"]),
        make("Neg", [p + "abs"], [p + "neg"]),
        make("GlobalMaxPool", [p + "neg"], [p + "negmin"]),
        make("Add", [p + "abs", p + "negmin"], [p + "shifted"]),  # v - min
        make("Add", [p + "max", p + "negmin"], [p + "span"]),  # max - min
        make("Add", [p + "span", p + "eps"], [p + "span_eps"]),
        make("Div", [p + "shifted", p + "span_eps"], [p + "scaled"]),
        make("ReduceSum", [p + "scaled", p + "channels"], [name], keepdims=0),
    ]
    for i, n in enumerate(nodes):
        n.name = f"{p}{i}/{n.op_type}"
    return nodes, inits
