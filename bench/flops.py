"""FLOPs of the fused forward+backward pass, counted from the explanation graph's shapes.

Only convolutions (Conv, ConvTranspose) and matrix products (Gemm, MatMul) are counted, as
2 x multiply-accumulates per image; everything else is small next to them. The machine's
reference is numpy's float32 matrix multiply at the same thread count.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import shape_inference

from gradtap.export.graph.gate import ungate
from gradtap.runtime import contract as c

COUNTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
PEAK_SIZE = 2048
_PEAK_SETUP = {
    "numpy": "mm = lambda: a @ b",
    "torch": (
        "import torch; torch.set_num_threads(threads); ta, tb = torch.from_numpy(a), "
        "torch.from_numpy(b); mm = lambda: ta @ tb"
    ),
    "onnxruntime": (
        "import onnx, onnxruntime as ort; from onnx import helper as h, TensorProto as T\n"
        "v = lambda name: h.make_tensor_value_info(name, T.FLOAT, [n, n])\n"
        "g = h.make_graph([h.make_node('MatMul', ['A', 'B'], ['C'])], 'mm', [v('A'), v('B')], "
        "[v('C')])\n"
        "m = h.make_model(g, opset_imports=[h.make_opsetid('', 17)], ir_version=8)\n"
        "o = ort.SessionOptions(); o.intra_op_num_threads = threads\n"
        "s = ort.InferenceSession(m.SerializeToString(), o, providers=['CPUExecutionProvider'])\n"
        "mm = lambda: s.run(None, {'A': a, 'B': b})"
    ),
}
_PEAK_CODE = """
import time, numpy as np
n, threads = {n}, {threads}
a = np.random.default_rng(0).random((n, n), dtype=np.float32)
b = np.random.default_rng(1).random((n, n), dtype=np.float32)
{setup}
best = float("inf")
for _ in range(8):
    t0 = time.perf_counter(); mm(); best = min(best, time.perf_counter() - t0)
print(2 * n ** 3 / best / 1e9)
"""


@dataclass(frozen=True)
class GraphFlops:
    """GFLOP per image of one explanation graph.

    Attributes:
        forward: the forward pass (ancestors of the logits).
        backward: the backward pass to the input gradient (beyond the forward pass).
        tap_backward: the backward pass down to the default tap only (Grad-CAM).
    """

    forward: float
    backward: float
    tap_backward: float

    @property
    def fused(self) -> float:
        """Forward plus backward to the input: one saliency call per image."""
        return self.forward + self.backward


def _dims(shapes: dict[str, list[int]], name: str) -> list[int]:
    return shapes.get(name, [])


def node_flops(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> float:
    """2 x MACs of a Conv / ConvTranspose / Gemm / MatMul node, per image (batch taken as 1)."""
    if node.op_type not in COUNTED:
        return 0.0
    out, w = _dims(shapes, node.output[0]), _dims(shapes, node.input[1])
    if node.op_type == "Conv" and out and w:
        return 2.0 * math.prod(out) * math.prod(w[1:])
    if node.op_type == "ConvTranspose" and w:
        x = _dims(shapes, node.input[0])
        return 2.0 * math.prod(x) * math.prod(w[1:]) if x else 0.0
    if node.op_type in ("Gemm", "MatMul") and out:
        a = _dims(shapes, node.input[0])
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        k = (a[-2] if trans_a else a[-1]) if a else 0
        return 2.0 * math.prod(out) * k
    return 0.0


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes: dict[str, list[int]] = {}
    for v in [*graph.value_info, *graph.input, *graph.output]:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for t in graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def _ancestors(model: onnx.ModelProto, outputs: list[str]) -> set[int]:
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    seen: set[int] = set()
    stack = list(outputs)
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in seen:
            continue
        seen.add(i)
        stack.extend(model.graph.node[i].input)
    return seen


def count(path: str | Path, tap: str) -> GraphFlops:
    """Per-image GFLOP of an augmented graph's forward, input-gradient and tap-gradient passes."""
    model = ungate(onnx.load(str(path)))
    shapes = _shapes(model)
    flops = [node_flops(n, shapes) for n in model.graph.node]
    fwd = _ancestors(model, [c.LOGITS])
    to_input = _ancestors(model, [c.GRAD_INPUT]) - fwd
    to_tap = _ancestors(model, [c.tap_grad_output(tap)]) - fwd

    def total(nodes: set[int]) -> float:
        return sum(flops[i] for i in nodes) / 1e9

    return GraphFlops(total(fwd), total(to_input), total(to_tap))


def matmul_peak(threads: int, library: str = "numpy") -> float:
    """GFLOP/s of a float32 ``PEAK_SIZE``-square matmul, best of 8, in a fresh process.

    ``library`` is "numpy" (its BLAS), "torch" or "onnxruntime" (a one-node MatMul graph).
    """
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    code = _PEAK_CODE.format(n=PEAK_SIZE, threads=threads, setup=_PEAK_SETUP[library])
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip())
