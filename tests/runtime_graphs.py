"""Small augmented graphs for the runtime tests, built with onnx.helper and augmented (no torch)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph.augment import augment
from gradtap.runtime import contract as c
from tests.graphs import OPSET, tiny_cnn

LABELS = ("tabby cat", "Dog", "dog house")


def with_meta(model: onnx.ModelProto, **entries: object) -> onnx.ModelProto:
    """A copy of ``model`` with gradtap metadata entries (values JSON-encoded unless str)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for key, value in entries.items():
        text = value if isinstance(value, str) else json.dumps(value)
        out.metadata_props.add(key=c.META_PREFIX + key, value=text)
    return out


def tiny_model(
    *, size: int = 16, labels: Sequence[str] = LABELS, seed: int = 0, **meta: object
) -> onnx.ModelProto:
    """The augmented tiny CNN (conv-relu-pool-conv-relu-GAP-Gemm), tap ``features``."""
    forward = with_meta(tiny_cnn(classes=len(labels), size=size, seed=seed), **meta)
    return augment(
        forward,
        taps={"features": "features"},
        labels=list(labels),
        interventions=True,
        bias_gradients=True,
        lrp=True,
    )


def linear_model(weights: np.ndarray, *, size: int = 6) -> onnx.ModelProto:
    """logits[k] = sum(weights[k] * x) over a [3, size, size] input: gradients are ``weights``.

    A Conv with a full-size kernel plays the linear layer so the graph has a spatial tap.
    """
    classes = weights.shape[0]
    w = weights.reshape(classes, 3, size, size).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["conv"], name="conv"),
        helper.make_node("Flatten", ["conv"], ["logits"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return augment(model, taps={"conv": "conv"})
