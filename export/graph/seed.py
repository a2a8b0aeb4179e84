"""The seed inputs: the cotangent on the logits that the backward pass starts from.

The graph takes ``seed`` [N, classes] and the scalars ``seed_top1`` and ``objective``. With
``s = seed + seed_top1 * onehot(argmax(logits))`` (the predicted class explained in the call that
predicts it), the cotangent is ``s`` for objective 0 (``sum(s * logits)``) and
``softmax(logits) * sum(s) - s`` for objective 1 (the cross-entropy ``-sum(s * log p)``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from gradtap.export.graph.emitter import Emitter, GraphInfo
from gradtap.runtime import contract as c


def add_seed(model: onnx.ModelProto) -> str:
    """Declare ``seed``, ``relu_rule``, ``seed_top1`` and ``objective`` (in place); return the
    name of the cotangent the backward pass starts from.

    Every input is required (no default initializers: runtimes that hide or fold overridable
    initializers would silently ignore their feeds); the Python runtime feeds the defaults.
    """
    graph = model.graph
    info = GraphInfo.of(model, complete=False)
    batch, classes = info.shape(c.LOGITS)
    graph.input.extend([
        helper.make_tensor_value_info(c.SEED, TensorProto.FLOAT, [batch, classes]),
        helper.make_tensor_value_info(c.RELU_RULE, TensorProto.INT64, []),
        helper.make_tensor_value_info(c.SEED_TOP1, TensorProto.FLOAT, []),
        helper.make_tensor_value_info(c.OBJECTIVE, TensorProto.INT64, []),
    ])  # fmt: skip
    em = Emitter(info, prefix="seed/")
    with em.scoped("top1"):
        depth = (
            em.const(np.asarray(classes, np.int64))
            if isinstance(classes, int)
            else em.op("Gather", em.op("Shape", c.LOGITS), em.ints([1]))
        )
        values = em.const(np.asarray([0.0, 1.0], np.float32))
        top1 = em.op("ArgMax", c.LOGITS, axis=1, keepdims=0)
        onehot = em.op("OneHot", top1, depth, values, axis=-1)
        weights = em.op("Add", c.SEED, em.op("Mul", onehot, c.SEED_TOP1))
    with em.scoped("cross_entropy"):
        prob = em.op("Softmax", c.LOGITS, axis=1)
        total = em.op("ReduceSum", weights, em.ints([1]), keepdims=1)
        ce_grad = em.op("Sub", em.op("Mul", prob, total), weights)
        ce = em.const(np.asarray(c.OBJECTIVES["cross_entropy"], np.int64))
        effective = em.op("Where", em.op("Equal", c.OBJECTIVE, ce), ce_grad, weights)
    graph.node.extend(em.nodes)
    graph.initializer.extend(em.initializers)
    return effective
