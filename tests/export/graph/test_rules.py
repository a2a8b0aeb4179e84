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
from onnx.reference import ReferenceEvaluator

from gradtap.export.graph.vjp import add_vjp
from tests.graphs import DTYPES, one_node_model
from tests.graphs import session as ort_session

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
    x: str = "normal"  # "away" (no values near kinks), "distinct" (no near-ties), "positive"
    opset: int = 17
    tol: float | None = None  # default: 1e-7 in float64, 2e-4 in float32
    reference: bool = False  # run on onnx's reference evaluator: onnxruntime lacks float64 kernels
    check: bool = True  # onnx.checker on the augmented graph
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
    # a square weight: its product with the cotangent takes a zero column, cut off again
    VjpCase("Gemm", (2, 5), {"transB": 1}, consts=(w(5, 5).astype(F64),), id="square"),
    VjpCase("Gemm", (5, 2), {"transA": 1}, consts=(w(5, 5).astype(F64), w(5).astype(F64)),
            id="square-transA"),
    VjpCase("MatMul", (2, 3, 5), consts=(w(5, 5).astype(F64),), id="square"),
    VjpCase("Gemm", (2, 5), extra=(("b", (5, 5)),), id="square-both-inputs"),
    VjpCase("BatchNormalization", (2, 3, 4, 4), {"epsilon": 1e-3},
            consts=tuple(a.astype(F64) for a in (w(3), w(3, seed=2), w(3, seed=3), np.abs(w(3, seed=4)))),),
    VjpCase("Flatten", (2, 3, 4, 5), {"axis": 1}),
    VjpCase("Reshape", (2, 3, 4), consts=(np.array([2, -1]),)),
    VjpCase("Squeeze", (2, 1, 4), consts=(np.array([1]),)),
    VjpCase("Unsqueeze", (2, 4), consts=(np.array([0, 3]),)),
    VjpCase("Transpose", (2, 3, 4), {"perm": [2, 0, 1]}),
    VjpCase("Concat", (2, 3, 4), {"axis": 1}, extra=(("b", (2, 5, 4)),)),
    VjpCase("Slice", (4, 6, 5), consts=(np.array([1, -4]), np.array([3, 100]), np.array([0, 1]))),
    VjpCase("Slice", (2, 7, 6), consts=(np.array([0, 1]), np.array([100, 6]), np.array([1, 2]), np.array([2, 3])),
            id="steps"),
    VjpCase("Slice", (2, 8, 6), consts=(np.array([0, 1]), np.array([8, 6]), np.array([1, 2]), np.array([2, 2])),
            id="steps-even-swin"),
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
    # as many input as output channels: the ConvTranspose weight widened by a zero channel a group
    VjpCase("Conv", (2, 4, 7, 7), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, consts=(w(4, 4, 3, 3),),
            dtype=F32, eps=1.0, id="stride2-square"),
    VjpCase("Conv", (2, 6, 6, 6), {"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]},
            consts=(w(6, 2, 3, 3), w(6)), dtype=F32, eps=1.0, id="grouped-square"),
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

LN = tuple(a.astype(F64) for a in (w(4, seed=2), w(4, seed=3)))
CASES += [
    VjpCase("Cast", (3, 4), {"to": TensorProto.DOUBLE}, dtype=F32, eps=1.0, id="to-double"),
    VjpCase("Neg", (3, 4)),
    VjpCase("Sum", (2, 3, 4), extra=(("b", (3, 4)), ("c", (2, 1, 4))), id="three-broadcast"),
    VjpCase("Tanh", (3, 5)),
    VjpCase("Exp", (3, 5)),
    VjpCase("Log", (3, 5), x="positive"),
    VjpCase("Sqrt", (3, 5), x="positive"),
    VjpCase("Reciprocal", (3, 5), x="away"),
    VjpCase("Abs", (3, 5), x="away"),
    VjpCase("Erf", (3, 5), dtype=F32, eps=3e-3, tol=1e-3),  # float32 only in onnxruntime
    VjpCase("Pow", (3, 5), consts=(np.array(3.0),), x="positive", id="cube"),
    VjpCase("Pow", (3, 5), consts=(np.array(2.0),), id="square"),
    VjpCase("Pow", (3, 5), extra=(("b", (5,)),), x="positive", id="both-inputs"),
    VjpCase("Max", (3, 4), extra=(("b", (3, 4)), ("c", (4,))), x="distinct", id="variadic"),
    VjpCase("Min", (2, 3), extra=(("b", (2, 3)),), x="distinct"),
    VjpCase("Mean", (2, 3), extra=(("b", (1, 3)), ("c", (2, 3))), reference=True),
    VjpCase("PRelu", (2, 3, 4), consts=(w(3, 1).astype(F64),), x="away"),
    VjpCase("Elu", (3, 5), {"alpha": 0.7}, x="away", reference=True),
    VjpCase("Selu", (3, 5), x="away", reference=True),
    VjpCase("Softplus", (3, 5), reference=True),
    VjpCase("Mish", (3, 5), opset=18),
    VjpCase("Softsign", (3, 4), dtype=F32, eps=1e-2),  # onnxruntime has no float64 Softsign
    VjpCase("Gelu", (3, 5), opset=20, dtype=F32, eps=3e-3, tol=1e-3, id="erf"),  # no float64 Erf
    VjpCase("Gelu", (3, 5), {"approximate": "tanh"}, opset=20, id="tanh"),
    VjpCase("LayerNormalization", (2, 3, 4), {"epsilon": 1e-3}, consts=LN, id="last-axis"),
    VjpCase("LayerNormalization", (2, 2, 3), {"axis": 1},
            consts=(w(2, 3, seed=5).astype(F64),), id="two-axes-no-bias"),
    VjpCase("InstanceNormalization", (2, 3, 4, 5), consts=(w(3, seed=2), w(3, seed=3)), reference=True),
    VjpCase("GroupNormalization", (2, 6, 3, 2), {"num_groups": 3, "epsilon": 1e-3},
            consts=(w(3, seed=2), w(3, seed=3)), opset=18, id="per-group", reference=True,
            check=False),  # onnx's checker refuses GroupNormalization-18 as deprecated
    VjpCase("GroupNormalization", (2, 6, 3, 2), {"num_groups": 2, "stash_type": TensorProto.DOUBLE},
            consts=(w(6, seed=2), w(6, seed=3)), opset=21, id="per-channel", reference=True),
    # LRN runs in float32 only; its curvature is small, so a step of 1e-2 leaves ~1e-5 error
    VjpCase("LRN", (2, 5, 3, 3), {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 2.0},
            dtype=F32, eps=1e-2, tol=1e-3),
    VjpCase("LRN", (1, 6, 2, 2), {"size": 5, "alpha": 0.3}, dtype=F32, eps=1e-2, tol=1e-3, id="wide"),
    VjpCase("ReduceMax", (2, 3, 4), {"axes": [1], "keepdims": 0}, x="distinct"),
    VjpCase("ReduceMin", (2, 3, 4), consts=(np.array([0, 2]),), opset=18, x="distinct", id="axes-input"),
    VjpCase("ReduceMax", (2, 3), x="distinct", id="all-axes"),
    VjpCase("ReduceL2", (2, 3, 4), {"axes": [2]}),
    VjpCase("ReduceL1", (2, 3, 4), {"axes": [0, 1], "keepdims": 0}, x="away"),
    VjpCase("ReduceSumSquare", (2, 3, 4), {"axes": [1]}),
    VjpCase("ReduceLogSumExp", (2, 3, 4), {"axes": [2], "keepdims": 0}),
    VjpCase("Gather", (2, 5, 3), {"axis": 1}, consts=(np.array([[0, -1], [2, 0]]),), id="repeated-negative"),
    VjpCase("Gather", (2, 5, 3), {"axis": 1}, consts=(np.array(0),), id="class-token"),
    VjpCase("Gather", (3, 2, 4), {"axis": 0}, consts=(np.array(-1),), id="scalar-negative"),
    VjpCase("GatherElements", (3, 4), {"axis": 1}, consts=(np.array([[0, -1, 0], [3, 2, 2], [1, 1, -4]]),)),
    VjpCase("Tile", (2, 3, 1), consts=(np.array([2, 1, 3]),)),
    VjpCase("Einsum", (2, 2, 3, 4), {"equation": "bhid,bhjd->bhij"}, extra=(("b", (2, 2, 5, 4)),), id="scores"),
    VjpCase("Einsum", (2, 2, 3, 5), {"equation": "bhij,bhjd->bhid"}, extra=(("b", (2, 2, 5, 4)),), id="mix"),
    VjpCase("Einsum", (2, 3, 4), {"equation": "abc,cd->ad"}, extra=(("b", (4, 5)),), id="summed-letter"),
    VjpCase("Einsum", (2, 3, 4), {"equation": "...ij,jk"}, extra=(("b", (4, 2)),), id="ellipsis-implicit"),
    VjpCase("Resize", (2, 3, 4, 5), {"mode": "nearest"}, consts=(None, np.array([1, 1, 2, 2], F32)),
            dtype=F32, eps=1.0, id="nearest-scales"),
    VjpCase("Resize", (1, 2, 4, 5), {"mode": "linear"}, consts=(None, np.array([1, 1, 2, 1.5], F32)),
            dtype=F32, eps=1.0, id="linear-half-pixel"),
    VjpCase("Resize", (1, 2, 4, 3), {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
            consts=(None, None, np.array([1, 2, 7, 8])), dtype=F32, eps=1.0, id="linear-sizes-align-corners"),
    VjpCase("Resize", (1, 2, 6, 6), {"mode": "nearest", "nearest_mode": "floor",
            "coordinate_transformation_mode": "asymmetric"}, consts=(None, np.array([1, 1, 0.5, 0.5], F32)),
            dtype=F32, eps=1.0, id="nearest-down"),
    VjpCase("Resize", (1, 2, 5, 4), {"mode": "cubic", "cubic_coeff_a": -0.5}, consts=(None, np.array([1, 1, 2, 1.5], F32)),
            dtype=F32, eps=1.0, id="cubic"),
    VjpCase("GlobalMaxPool", (2, 3, 4, 5), dtype=F32, eps=1e-3, x="distinct"),
    VjpCase("SpaceToDepth", (2, 3, 4, 6), {"blocksize": 2}, dtype=F32, eps=1.0),
    VjpCase("DepthToSpace", (2, 8, 2, 3), {"blocksize": 2}, dtype=F32, eps=1.0, id="dcr"),
    VjpCase("DepthToSpace", (2, 8, 2, 3), {"blocksize": 2, "mode": "CRD"}, dtype=F32, eps=1.0, id="crd"),
    VjpCase("ConvTranspose", (1, 3, 5, 5), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
            consts=(w(3, 2, 3, 3),), dtype=F32, eps=1.0, id="stride2"),
    VjpCase("ConvTranspose", (2, 4, 4, 3), {"group": 2, "dilations": [2, 1]}, consts=(w(4, 3, 3, 2), w(6)),
            dtype=F32, eps=1.0, id="grouped-dilated"),
]  # fmt: skip


def draw(case: VjpCase, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if case.x == "away":
        x = rng.normal(size=shape)
        x = np.sign(x) * (0.2 + np.abs(x))
    elif case.x == "positive":
        x = 0.5 + np.abs(rng.normal(size=shape))
    elif case.x == "distinct":
        x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 0.3
    else:
        x = rng.normal(size=shape)
    return x.astype(case.dtype)


def reference_session(model: onnx.ModelProto) -> ReferenceEvaluator:
    return ReferenceEvaluator(model)


def with_seed_input(
    model: onnx.ModelProto, y_shape: tuple[int, ...], dtype: np.dtype
) -> onnx.ModelProto:
    elem = TensorProto.DOUBLE if np.dtype(dtype) == F64 else TensorProto.FLOAT
    model.graph.input.append(helper.make_tensor_value_info("v", elem, list(y_shape)))
    return model


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.op_type}-{c.id}" if c.id else c.op_type)
def test_vjp_matches_finite_differences(case: VjpCase) -> None:
    rng = np.random.default_rng(0)
    consts = tuple(
        np.asarray(v, case.dtype) if v is not None and v.dtype.kind == "f" and v.ndim else v
        for v in case.consts
    )
    if case.op_type == "Clip":
        consts = tuple(np.asarray(v, case.dtype) for v in case.consts)
    fwd = one_node_model(case.op_type, case.x_shape, consts=consts, extra_inputs=case.extra,
                         dtype=case.dtype, opset=case.opset, **case.attrs)  # fmt: skip
    feeds = {"x": draw(case, case.x_shape, rng)}
    feeds.update({n: draw(case, s, rng) for n, s in case.extra})
    if not fwd.graph.output[0].type.HasField("tensor_type"):  # GroupNormalization: not inferred
        fwd.graph.output[0].CopyFrom(
            helper.make_tensor_value_info("y", DTYPES[case.dtype], case.x_shape)
        )
    assert_vjp(
        fwd, feeds, eps=case.eps, tol=case.tol, rng=rng, reference=case.reference, check=case.check
    )


def assert_vjp(
    fwd: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    *,
    eps: float,
    tol: float | None = None,
    rng: np.random.Generator,
    wrt: list[str] | None = None,
    reference: bool = False,
    check: bool = True,
) -> None:
    """<v, central difference of y along t> == <vjp(v), t> for the graph's output y."""
    names = list(feeds) if wrt is None else wrt
    session = reference_session if reference else ort_session
    y = session(fwd).run(["y"], feeds)[0]
    v = rng.normal(size=y.shape).astype(y.dtype)
    t = {n: rng.normal(size=feeds[n].shape).astype(feeds[n].dtype) for n in names}

    aug = add_vjp(fwd, seed_of="y", seed="v", wrt={n: f"d{n}" for n in names})
    aug = with_seed_input(aug, y.shape, y.dtype)
    if check:
        onnx.checker.check_model(aug, full_check=True)
    grads = session(aug).run([f"d{n}" for n in names], {**feeds, "v": v})

    f = session(fwd)
    plus = f.run(["y"], {**feeds, **{n: feeds[n] + eps * t[n] for n in names}})[0].astype(F64)
    minus = f.run(["y"], {**feeds, **{n: feeds[n] - eps * t[n] for n in names}})[0].astype(F64)
    numeric = float(np.sum(v * (plus - minus) / (2 * eps)))
    analytic = sum(float(np.sum(g.astype(F64) * t[n])) for g, n in zip(grads, names, strict=True))
    if tol is None:
        tol = 1e-7 if all(feeds[n].dtype == F64 for n in names) else 2e-4
    assert analytic == pytest.approx(numeric, rel=tol, abs=tol * 10)
    for g, n in zip(grads, names, strict=True):
        assert g.shape == feeds[n].shape


def small_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, tuple[int, tuple[int, ...]]],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    """A graph of ``nodes`` with typed inputs (name -> (elem type, shape)) and one output y."""
    graph = helper.make_graph(
        nodes, "small",
        [helper.make_tensor_value_info(n, t, list(s)) for n, (t, s) in inputs.items()],
        [helper.make_empty_tensor_value_info("y")],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_split_with_an_unused_piece_matches_finite_differences() -> None:
    """Pieces reach y out of order and one not at all (its cotangent is zeros)."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Split", ["x", "sizes"], ["a", "b", "c"], axis=1),
        helper.make_node("Concat", ["c", "a"], ["y"], axis=1),
    ]
    fwd = small_model(nodes, {"x": (TensorProto.DOUBLE, (2, 6, 3))}, {"sizes": np.array([1, 2, 3])})
    assert_vjp(fwd, {"x": rng.normal(size=(2, 6, 3))}, eps=1e-5, rng=rng)


def test_where_routes_the_cotangent_by_the_condition() -> None:
    rng = np.random.default_rng(4)
    cond = np.array([[True], [False]])
    node = helper.make_node("Where", ["cond", "x", "b"], ["y"])
    fwd = small_model(
        [node], {"x": (TensorProto.DOUBLE, (2, 3)), "b": (TensorProto.DOUBLE, (3,))}, {"cond": cond}
    )
    feeds = {"x": rng.normal(size=(2, 3)), "b": rng.normal(size=3)}
    assert_vjp(fwd, feeds, eps=1e-5, rng=rng)


def test_max_and_min_split_ties_evenly() -> None:
    """Hand-computed: tied inputs share the cotangent (as tinygrad does), the larger one takes it all."""
    x, b = np.array([1.0, 2.0, 5.0]), np.array([1.0, 3.0, 5.0])
    for op, dx, db in (
        ("Max", [0.5, 0, 0.5], [0.5, 1, 0.5]),
        ("Min", [0.5, 1, 0.5], [0.5, 0, 0.5]),
    ):
        fwd = small_model(
            [helper.make_node(op, ["x", "b"], ["y"])],
            {"x": (TensorProto.DOUBLE, (3,)), "b": (TensorProto.DOUBLE, (3,))},
        )
        aug = with_seed_input(
            add_vjp(fwd, seed_of="y", seed="v", wrt={"x": "dx", "b": "db"}), (3,), F64
        )
        got = ort_session(aug).run(["dx", "db"], {"x": x, "b": b, "v": np.ones(3)})
        np.testing.assert_array_equal(got[0], dx)
        np.testing.assert_array_equal(got[1], db)


def test_gather_with_run_time_negative_indices_matches_finite_differences() -> None:
    """Indices computed at run time are made positive in the graph; repeated ones accumulate."""
    rng = np.random.default_rng(5)
    node = helper.make_node("Gather", ["x", "idx"], ["y"], axis=1)
    fwd = small_model(
        [node], {"x": (TensorProto.DOUBLE, (2, 4, 3)), "idx": (TensorProto.INT64, (3,))}
    )
    feeds = {"x": rng.normal(size=(2, 4, 3)), "idx": np.array([-1, 1, 3])}
    assert_vjp(fwd, feeds, eps=1e-5, rng=rng, wrt=["x"])
