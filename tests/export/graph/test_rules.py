"""Every backward rule against central finite differences on a one-node graph (JAX check_vjp style).

For a random cotangent v and direction t: <v, (f(x + e t) - f(x - e t)) / 2e> == <vjp(v), t>.
float64 where onnxruntime's CPU kernels have it; float32 for Conv/ConvTranspose/pooling, which are
piecewise linear, so a large step e has no truncation error and rounding is all that remains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from gradtap.export.graph.vjp import add_vjp
from tests.graphs import one_node_model, session

F32, F64 = np.float32, np.float64


@dataclass(frozen=True)
class VjpCase:
    op_type: str
    x_shape: tuple[int, ...]
    attrs: dict = field(default_factory=dict)
    consts: tuple = ()
    extra: tuple = ()  # more differentiable inputs: (name, shape)
    dtype: type = F64
    eps: float = 1e-5
    x: str = "normal"  # "normal", "away" (no values near kinks), "distinct" (no near-ties)
    opset: int = 17
    id: str = ""


def w(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(F32)


CASES = [
    VjpCase("Relu", (2, 3, 4, 5), x="away"),
    VjpCase("LeakyRelu", (2, 6), {"alpha": 0.1}, x="away"),
    VjpCase("Sigmoid", (3, 4)),
    VjpCase("HardSigmoid", (4, 5), {"alpha": 0.3, "beta": 0.4}, x="away", dtype=F32, eps=1e-2),
    VjpCase("HardSwish", (4, 5), x="away", opset=17, dtype=F32, eps=1e-2, id="hardswish"),
    VjpCase("Clip", (3, 7), consts=(np.array(0.0), np.array(6.0)), x="away", id="relu6"),
    VjpCase("Clip", (3, 7), consts=(np.array(-0.5),), x="away", id="min-only"),
    VjpCase("Softmax", (3, 5), {"axis": 1}),
    VjpCase("LogSoftmax", (2, 3, 4), {"axis": -1}),
    VjpCase("Add", (2, 3, 4, 4), extra=(("b", (3, 1, 1)),), id="broadcast"),
    VjpCase("Sub", (2, 1, 4), extra=(("b", (2, 3, 4)),), id="stretched-x"),
    VjpCase("Mul", (2, 3, 4), extra=(("b", (1, 4)),)),
    VjpCase("Div", (2, 3), extra=(("b", (2, 3)),), x="away"),
    VjpCase("Gemm", (2, 5), consts=(w(5, 4).astype(F64), w(4).astype(F64))),
    VjpCase("Gemm", (5, 2), {"transA": 1, "transB": 1, "alpha": 0.5}, consts=(w(4, 5).astype(F64),), id="trans"),
    VjpCase("Gemm", (2, 5), extra=(("b", (5, 3)),), id="both-inputs"),
    VjpCase("MatMul", (2, 3, 5), extra=(("b", (5, 4)),), id="batched-broadcast"),
    VjpCase("BatchNormalization", (2, 3, 4, 4), {"epsilon": 1e-3},
            consts=tuple(a.astype(F64) for a in (w(3), w(3, seed=2), w(3, seed=3), np.abs(w(3, seed=4)))),),
    VjpCase("Flatten", (2, 3, 4, 5), {"axis": 1}),
    VjpCase("Reshape", (2, 3, 4), consts=(np.array([2, -1]),)),
    VjpCase("Squeeze", (2, 1, 4), consts=(np.array([1]),)),
    VjpCase("Unsqueeze", (2, 4), consts=(np.array([0, 3]),)),
    VjpCase("Transpose", (2, 3, 4), {"perm": [2, 0, 1]}),
    VjpCase("Concat", (2, 3, 4), {"axis": 1}, extra=(("b", (2, 5, 4)),)),
    VjpCase("Slice", (4, 6, 5), consts=(np.array([1, -4]), np.array([3, 100]), np.array([0, 1]))),
    VjpCase("Pad", (2, 3, 4, 4), consts=(np.array([0, 0, 1, 2, 0, 0, 3, 0]),), dtype=F32, eps=1.0),
    VjpCase("Identity", (3, 4)),
    VjpCase("Dropout", (3, 4)),
    VjpCase("Expand", (3, 1), consts=(np.array([2, 3, 4]),)),
    VjpCase("ReduceMean", (2, 3, 4, 5), {"axes": [2, 3], "keepdims": 0}, opset=17),
    VjpCase("ReduceMean", (2, 3, 4), consts=(np.array([1]),), opset=18, id="axes-input"),
    VjpCase("ReduceSum", (2, 3, 4), consts=(np.array([0, 2]),), id="sum"),
    VjpCase("GlobalAveragePool", (2, 3, 5, 4), dtype=F32, eps=1.0),
    VjpCase("Conv", (2, 3, 7, 7), consts=(w(4, 3, 3, 3),), dtype=F32, eps=1.0),
    VjpCase("Conv", (1, 3, 9, 8), {"strides": [2, 2], "pads": [1, 0, 0, 2]}, consts=(w(5, 3, 3, 3), w(5)),
            dtype=F32, eps=1.0, id="stride2-asymmetric-odd"),
    VjpCase("Conv", (1, 4, 8, 8), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, consts=(w(6, 4, 3, 3),),
            dtype=F32, eps=1.0, id="dilated"),
    VjpCase("Conv", (2, 6, 6, 6), {"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]},
            consts=(w(9, 2, 3, 3),), dtype=F32, eps=1.0, id="grouped"),
    VjpCase("Conv", (1, 4, 7, 7), {"group": 4, "auto_pad": "SAME_UPPER", "strides": [2, 2]},
            consts=(w(4, 1, 3, 3),), dtype=F32, eps=1.0, id="depthwise-same"),
    # stride 1: emitted as a Conv with the flipped, channel-swapped weight
    VjpCase("Conv", (2, 6, 6, 5), {"group": 3, "pads": [0, 1, 2, 1]}, consts=(w(9, 2, 3, 2),),
            dtype=F32, eps=1.0, id="grouped-stride1-asymmetric"),
    VjpCase("Conv", (1, 4, 7, 7), {"group": 4, "auto_pad": "SAME_UPPER"}, consts=(w(4, 1, 3, 3),),
            dtype=F32, eps=1.0, id="depthwise-stride1-same"),
    VjpCase("Conv", (1, 3, 9, 9), {"dilations": [2, 1], "pads": [1, 0, 3, 1]}, consts=(w(2, 3, 3, 3),),
            dtype=F32, eps=1.0, id="dilated-stride1-asymmetric"),
    VjpCase("Conv", (2, 3, 11), {"pads": [2, 0]}, consts=(w(4, 3, 5),), dtype=F32, eps=1.0, id="conv1d"),
    VjpCase("Conv", (1, 2, 5, 5), {"pads": [3, 3, 3, 3]}, consts=(w(3, 2, 3, 3),), dtype=F32, eps=1.0,
            id="pads-beyond-kernel"),
    VjpCase("MaxPool", (2, 3, 9, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
            dtype=F32, eps=1e-3, x="distinct", id="overlapping-resnet"),
    VjpCase("MaxPool", (1, 2, 7, 7), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
            dtype=F32, eps=1e-3, x="distinct", id="ceil"),
    VjpCase("AveragePool", (2, 3, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
            dtype=F32, eps=1.0, id="exclude-pad"),
    VjpCase("AveragePool", (1, 2, 7, 6), {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1],
            "count_include_pad": 1}, dtype=F32, eps=1.0, id="include-pad"),
    VjpCase("AveragePool", (1, 2, 7, 7), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
            dtype=F32, eps=1.0, id="ceil"),
]  # fmt: skip


def draw(case: VjpCase, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if case.x == "away":
        x = rng.normal(size=shape)
        x = np.sign(x) * (0.2 + np.abs(x))
    elif case.x == "distinct":
        x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 0.3
    else:
        x = rng.normal(size=shape)
    return x.astype(case.dtype)


def with_seed_input(
    model: onnx.ModelProto, y_shape: tuple[int, ...], dtype: type
) -> onnx.ModelProto:
    elem = TensorProto.DOUBLE if dtype is F64 else TensorProto.FLOAT
    model.graph.input.append(helper.make_tensor_value_info("v", elem, list(y_shape)))
    return model


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.op_type}-{c.id}" if c.id else c.op_type)
def test_vjp_matches_finite_differences(case: VjpCase) -> None:
    rng = np.random.default_rng(0)
    consts = tuple(
        np.asarray(v, case.dtype) if v.dtype.kind == "f" and v.ndim else v for v in case.consts
    )
    if case.op_type == "Clip":
        consts = tuple(np.asarray(v, case.dtype) for v in case.consts)
    fwd = one_node_model(case.op_type, case.x_shape, consts=consts, extra_inputs=case.extra,
                         dtype=case.dtype, opset=case.opset, **case.attrs)  # fmt: skip
    names = ["x"] + [n for n, _ in case.extra]
    feeds = {"x": draw(case, case.x_shape, rng)}
    feeds.update({n: draw(case, s, rng) for n, s in case.extra})
    y = session(fwd).run(["y"], feeds)[0]
    v = rng.normal(size=y.shape).astype(case.dtype)
    t = {n: rng.normal(size=feeds[n].shape).astype(case.dtype) for n in names}

    aug = add_vjp(fwd, seed_of="y", seed="v", wrt={n: f"d{n}" for n in names})
    aug = with_seed_input(aug, y.shape, case.dtype)
    onnx.checker.check_model(aug, full_check=True)
    grads = session(aug).run([f"d{n}" for n in names], {**feeds, "v": v})

    f = session(fwd)
    plus = f.run(["y"], {n: feeds[n] + case.eps * t[n] for n in names})[0].astype(F64)
    minus = f.run(["y"], {n: feeds[n] - case.eps * t[n] for n in names})[0].astype(F64)
    numeric = float(np.sum(v * (plus - minus) / (2 * case.eps)))
    analytic = sum(float(np.sum(g.astype(F64) * t[n])) for g, n in zip(grads, names, strict=True))
    tol = 1e-7 if case.dtype is F64 else 2e-4
    assert analytic == pytest.approx(numeric, rel=tol, abs=tol * 10)
    for g, n in zip(grads, names, strict=True):
        assert g.shape == feeds[n].shape
