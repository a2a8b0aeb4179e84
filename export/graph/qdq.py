"""Quantised constants: QuantizeLinear and DequantizeLinear evaluated in numpy at augmentation.

Quantised graphs hold their weights as integers behind a DequantizeLinear, or as floats behind a
QuantizeLinear-DequantizeLinear pair (quantisation-aware training exports). Rules that need a
layer's weights (LRP, FullGrad's biases) read their values through :func:`evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import NodeProto, TensorProto, helper

# integer element type -> (lowest, highest) value
LIMITS: dict[int, tuple[int, int]] = {
    TensorProto.UINT8: (0, 255),
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535),
    TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT4: (0, 15),
    TensorProto.INT4: (-8, 7),
}
OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _attr(node: NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def evaluable(node: NodeProto) -> bool:
    """A QuantizeLinear/DequantizeLinear that :func:`evaluate` computes (no blocked scales)."""
    return node.op_type in OPS and not _attr(node, "block_size", 0)


def _along_axis(node: NodeProto, x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """A scale or zero point shaped to broadcast against ``x`` (a 1-D one lies along ``axis``)."""
    if p.ndim != 1 or x.ndim < 2:
        return p
    shape = [1] * x.ndim
    shape[_attr(node, "axis", 1) % x.ndim] = -1
    return p.reshape(shape)


def evaluate(node: NodeProto, values: Sequence[np.ndarray | None]) -> np.ndarray:
    """The output of ``node`` (see :func:`evaluable`) on constant inputs, as onnxruntime computes it."""
    x, scale, zp = (list(values) + [None, None])[:3]
    assert x is not None and scale is not None
    scale = _along_axis(node, x, scale)
    shift = np.zeros((), np.float32) if zp is None else _along_axis(node, x, zp).astype(np.float32)
    if node.op_type == "DequantizeLinear":
        return ((x.astype(np.float32) - shift) * scale).astype(scale.dtype)
    dtype = (
        helper.np_dtype_to_tensor_dtype(zp.dtype)
        if zp is not None
        else _attr(node, "output_dtype", 0) or TensorProto.UINT8
    )
    low, high = LIMITS[int(dtype)]
    q = np.clip(np.rint(x.astype(np.float32) / scale) + shift, low, high)
    return q.astype(helper.tensor_dtype_to_np_dtype(int(dtype)))
