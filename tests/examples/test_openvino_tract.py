"""OpenVINO runs the explanation graph with every control-input setting (the LRP codes too), tract
runs its flat variant (`gradtap augment --flat`); both agree with onnxruntime on two real photos.

Tolerances: the forward pass (logits, taps) is the same float32 arithmetic in another order, so
it agrees to ~1e-5 relative. Gradients go through ReLU and max-pool decisions: an activation
within rounding of zero, or two window values within rounding of each other, can switch a
gradient path on in one runtime and off in the other, so ``grad/input`` is compared by its
relative L2 error (a few flipped paths move it by ~1e-3; a wrong rule moves it by ~1).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from gradtap.runtime import contract as c
from gradtap.runtime.image.geometry import to_batch
from gradtap.runtime.session import ExplainSession
from tests.examples.common import MODEL, flat_variant, photos, relative_l2

FORWARD_RTOL = 1e-5
GRAD_REL_L2 = 1e-2


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    folder = tmp_path_factory.mktemp("photos")
    return to_batch(list(photos(folder).values()), ExplainSession(MODEL).info)[0]


def _feeds(x: np.ndarray, rule: int, top1: float, objective: int, compute: int | None) -> dict:
    seed = np.zeros((len(x), 6), np.float32)
    seed[:, 2] = 1.0
    out = {c.INPUT: x, c.SEED: seed, c.RELU_RULE: np.array(rule, np.int64),
           c.SEED_TOP1: np.array(top1, np.float32), c.OBJECTIVE: np.array(objective, np.int64)}  # fmt: skip
    if compute is not None:
        out[c.COMPUTE] = np.array(compute, np.int64)
    return out


def _compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray], where: str) -> None:
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape, f"{where} {name}: {g.shape} != {w.shape}"
        if w.size == 0:
            continue
        if name.startswith(c.GRAD_PREFIX):
            assert relative_l2(g, w) < GRAD_REL_L2, f"{where} {name}"
        else:
            np.testing.assert_allclose(
                g,
                w,
                rtol=FORWARD_RTOL,
                atol=FORWARD_RTOL * np.abs(w).max(),
                err_msg=f"{where} {name}",
            )


def test_openvino_at_f32_matches_onnxruntime_for_every_setting(batch: np.ndarray) -> None:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(MODEL)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    ref = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    names = [o.name for o in ref.get_outputs()]
    assert set(ExplainSession(MODEL).info.relu_rules) == set(c.BACKWARD_RULES)  # LRP codes too
    settings = [
        *itertools.product(
            c.RELU_RULES.values(), (0.0, 1.0), c.OBJECTIVES.values(), c.COMPUTE_LEVELS.values()
        ),
        *itertools.product(
            c.LRP_RULES.values(), (1.0,), c.OBJECTIVES.values(), c.COMPUTE_LEVELS.values()
        ),
    ]
    flat, loss = c.LRP_RULES["lrp_flat"], c.OBJECTIVES["cross_entropy"]
    for rule, top1, objective, compute in settings:
        f = _feeds(batch, rule, top1, objective, compute)
        result = compiled(f)
        got = {name: result[name] for name in names}
        want = dict(zip(names, ref.run(names, f), strict=True))
        if (rule, objective) == (flat, loss):
            _assert_zero_relevance(got, want, ref, names, f)
            continue
        _compare(got, want, f"openvino {rule, top1, objective, compute}")


def _assert_zero_relevance(got: dict, want: dict, ref: ort.InferenceSession, names, f) -> None:
    """The flat rule spreads the sum of the output relevances, and the cross-entropy seed
    (softmax - one-hot) sums to 0: the relevance is 0 but for rounding in both runtimes, which
    is all a comparison of the two would see. Both must be 0 next to the logit objective's."""
    scale = dict(zip(names, ref.run(names, {**f, c.OBJECTIVE: np.array(0, np.int64)}), strict=True))
    for name in (n for n in names if n.startswith(c.GRAD_PREFIX) and want[n].size):
        top = np.abs(scale[name]).max()
        assert np.abs(want[name]).max() < 1e-4 * top and np.abs(got[name]).max() < 1e-4 * top, name


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return flat_variant(tmp_path_factory.mktemp("flat"))


@pytest.mark.torch
def test_tract_runs_the_flat_variant_like_onnxruntime(batch: np.ndarray, flat: Path) -> None:
    import tract

    runnable = tract.onnx().load(str(flat)).into_model().into_runnable()
    ref = ort.InferenceSession(str(flat), providers=["CPUExecutionProvider"])
    names = [o.name for o in ref.get_outputs()]
    inputs = [i.name for i in ref.get_inputs()]
    assert c.COMPUTE not in inputs
    for rule, objective in itertools.product(c.RELU_RULES.values(), c.OBJECTIVES.values()):
        f = _feeds(batch, rule, 1.0, objective, None)
        got = dict(
            zip(names, (v.to_numpy() for v in runnable.run([f[i] for i in inputs])), strict=True)
        )
        want = dict(zip(names, ref.run(names, f), strict=True))
        assert np.abs(got[c.GRAD_INPUT]).max() > 0  # symbolic batch: no all-zero gradients
        _compare(got, want, f"tract {rule, objective}")


@pytest.mark.torch
def test_tract_computes_lrp_in_the_flat_variant_of_one_composite(
    batch: np.ndarray, tmp_path: Path
) -> None:
    """`augment --flat --lrp-composite epsilon_plus`: tract's relevance against onnxruntime's on
    the shipped gated graph (the same weights, the walk behind Ifs), both objectives; the
    gradient codes against onnxruntime on the same file; a code it does not carry reads NaN."""
    import tract

    graph = flat_variant(tmp_path, "--lrp-composite", "epsilon_plus")
    runnable = tract.onnx().load(str(graph)).into_model().into_runnable()
    ref = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    gated = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in ref.get_inputs()]
    names = [c.GRAD_INPUT, c.tap_grad_output("features")]

    def run(f: dict) -> list[np.ndarray]:
        values = runnable.run([f[i] for i in inputs])
        out = dict(zip([o.name for o in ref.get_outputs()], values, strict=True))
        return [out[n].to_numpy() for n in names]

    code = c.LRP_RULES["lrp_epsilon_plus"]
    for objective in c.OBJECTIVES.values():
        f = _feeds(batch, code, 1.0, objective, None)
        want = gated.run(names, {**f, c.COMPUTE: np.array(2, np.int64)})
        for name, got, expected in zip(names, run(f), want, strict=True):
            assert relative_l2(got, expected) < 1e-4, (objective, name)
    for rule in c.RELU_RULES.values():
        f = _feeds(batch, rule, 1.0, c.OBJECTIVES["logits"], None)
        for name, got, expected in zip(names, run(f), ref.run(names, f), strict=True):
            assert relative_l2(got, expected) < GRAD_REL_L2, (rule, name)
    other = _feeds(batch, c.LRP_RULES["lrp_flat"], 1.0, c.OBJECTIVES["logits"], None)
    assert all(np.isnan(g).all() for g in run(other))


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMean's axes: an attribute, then an input
def test_tract_differentiates_a_mean_over_the_spatial_axes(opset: int, tmp_path: Path) -> None:
    """A head of ``x.mean((2, 3))`` (ReduceMean, keepdims=0: ShuffleNetV2's, among others): its
    backward scale must be a constant. As a ratio of Sizes under a symbolic batch tract returned
    wrong gradients (ShuffleNetV2: 100 % off), or refused the graph at load."""
    import tract
    from onnx import TensorProto, helper, numpy_helper

    from gradtap.export.graph.augment import augment

    rng = np.random.default_rng(0)
    conv = numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "conv")
    fc = numpy_helper.from_array(rng.normal(0, 0.4, (5, 8)).astype(np.float32), "fc")
    axes = {"axes": [2, 3]} if opset < 18 else {}
    extra = [] if opset < 18 else [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    nodes = [
        helper.make_node("Conv", ["input", "conv"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("ReduceMean", ["r1", *(["axes"] if extra else [])], ["mean"], keepdims=0, **axes),
        helper.make_node("Gemm", ["mean", "fc"], [c.LOGITS], transB=1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "mean", [helper.make_tensor_value_info(c.INPUT, TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info(c.LOGITS, TensorProto.FLOAT, ["batch", 5])],
        [conv, fc, *extra],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    flat = augment(model, taps={"r1": "r1"}, flat=True)
    path = tmp_path / "mean.flat.onnx"
    path.write_bytes(flat.SerializeToString())
    runnable = tract.onnx().load(str(path)).into_model().into_runnable()
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in flat.graph.input]
    names = [o.name for o in flat.graph.output]
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    f = _feeds(x, 0, 1.0, c.OBJECTIVES["logits"], None)
    f[c.SEED] = np.zeros((2, 5), np.float32)
    got = dict(
        zip(names, (v.to_numpy() for v in runnable.run([f[i] for i in inputs])), strict=True)
    )
    for name, want in zip(names, ref.run(names, f), strict=True):
        if name.startswith(c.GRAD_PREFIX):
            assert relative_l2(got[name], want) < 1e-5, name


def test_tract_cannot_take_the_gated_graph() -> None:
    """What docs/embedding.md says: tract unifies both branches' output shapes, and the empty
    stand-in of a branch that is off ([0, 0, 0, 0]) cannot unify with a batch dimension."""
    import tract

    with pytest.raises(Exception, match="Impossible to unify Sym\\(batch\\) with Val\\(0\\)"):
        tract.onnx().load(str(MODEL)).into_model()


@pytest.mark.slow
@pytest.mark.torch
def test_openvino_runs_the_lrp_walk_of_a_residual_network(tmp_path: Path) -> None:
    """ResNet18 (random weights, 64 px, batch 2): residual splits, max-pool winner-take-all and
    the zB first layer on a batch, every LRP code against onnxruntime. Where a code is
    ill-conditioned (the flat rule: on random weights its residual splits divide by sums near
    0), onnxruntime itself moves under input noise of 1e-7; the bound is then three times that
    jump, otherwise the gradients' 1 %."""
    import openvino as ov
    import torch
    from torchvision.models import resnet18

    from gradtap.export.graph.augment import augment, load_model, save_model

    forward, graph = tmp_path / "forward.onnx", tmp_path / "lrp.onnx"
    torch.manual_seed(0)
    torch.onnx.export(
        resnet18(num_classes=10).eval(), (torch.rand(1, 3, 64, 64),), str(forward),
        input_names=[c.INPUT], output_names=[c.LOGITS], opset_version=17, dynamo=False,
        dynamic_axes={c.INPUT: {0: "batch"}, c.LOGITS: {0: "batch"}},
    )  # fmt: skip
    save_model(augment(load_model(forward), lrp=True), graph)
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(graph)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    ref = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 64, 64), dtype=np.float32)
    for name, rule in c.LRP_RULES.items():
        f = _feeds(x, rule, 1.0, c.OBJECTIVES["logits"], c.COMPUTE_LEVELS["full"])
        f[c.SEED] = np.zeros((2, 10), np.float32)
        want = ref.run([c.GRAD_INPUT], f)[0]
        nudged = {**f, c.INPUT: x + rng.normal(0, 1e-7, x.shape).astype(np.float32)}
        jump = relative_l2(ref.run([c.GRAD_INPUT], nudged)[0], want)
        error = relative_l2(compiled(f)[c.GRAD_INPUT], want)
        assert error < max(GRAD_REL_L2, 3 * jump), (name, error, jump)


def test_openvino_differentiates_strided_convolutions_with_equal_channel_counts() -> None:
    """A stride-2 convolution's input gradient is a ConvTranspose; OpenVINO computes one with
    as many input as output channels wrongly unless it is depthwise (off by over 100 % before the
    pass widened such weights): a square, a non-square and a grouped square layer."""
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    from gradtap.export.graph.augment import augment

    rng = np.random.default_rng(0)
    shapes = {"w1": (16, 3, 3, 3), "w2": (16, 16, 3, 3), "w3": (24, 16, 3, 3), "w4": (24, 6, 3, 3)}
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32), k)
        for k, s in shapes.items()
    ]
    fc = numpy_helper.from_array(rng.normal(0, 0.3, (5, 24)).astype(np.float32), "fc")
    strided = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], **strided),  # 16 -> 16, stride 2
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], **strided),  # 16 -> 24, stride 2
        helper.make_node("Conv", ["c3", "w4"], ["c4"], group=4, **strided),  # 4 groups 6 -> 6
        helper.make_node("GlobalAveragePool", ["c4"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], [c.LOGITS], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "strided", [helper.make_tensor_value_info(c.INPUT, TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info(c.LOGITS, TensorProto.FLOAT, ["batch", 5])], [*weights, fc],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = augment(model, taps={"r2": "r2"}).SerializeToString()
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(data, b""), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = rng.random((2, 3, 16, 16), dtype=np.float32)
    for rule in c.RELU_RULES.values():
        f = _feeds(x, rule, 1.0, c.OBJECTIVES["logits"], c.COMPUTE_LEVELS["full"])
        f[c.SEED] = np.zeros((2, 5), np.float32)
        want = ref.run([c.GRAD_INPUT], f)[0]
        assert relative_l2(compiled(f)[c.GRAD_INPUT], want) < 1e-4, rule


def test_openvino_differentiates_dense_layers_with_square_weights() -> None:
    """A forward product with a square constant matrix and the input gradient's product with its
    transpose: OpenVINO computes one of the two wrongly (the tap gradient of VGG's 4096 x 4096
    layer was 97 % off, with the LRP walk in the graph) unless the pass gives the gradient's
    product a zero column. Gemm with and without transB, and a MatMul on a 3-D input."""
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    from gradtap.export.graph.augment import augment

    rng = np.random.default_rng(0)
    shapes = {"conv": (16, 3, 3, 3), "w1": (16, 16), "w2": (16, 16), "w3": (4, 4), "fc": (5, 16)}
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.4, s).astype(np.float32), k)
        for k, s in shapes.items()
    ]
    dims = numpy_helper.from_array(np.array([0, 4, 4], np.int64), "dims")
    flat = numpy_helper.from_array(np.array([0, 16], np.int64), "flat")
    nodes = [
        helper.make_node("Conv", ["input", "conv"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["f"]),
        helper.make_node("Gemm", ["f", "w1"], ["g1"], transB=1),  # Linear: x W^T
        helper.make_node("Relu", ["g1"], ["r2"]),
        helper.make_node("Gemm", ["r2", "w2"], ["g2"]),  # x W
        helper.make_node("Relu", ["g2"], ["r3"]),
        helper.make_node("Reshape", ["r3", "dims"], ["tokens"]),  # [N, 4, 4]
        helper.make_node("MatMul", ["tokens", "w3"], ["m"]),  # a transformer's projection
        helper.make_node("Relu", ["m"], ["r4"]),
        helper.make_node("Reshape", ["r4", "flat"], ["r5"]),
        helper.make_node("Gemm", ["r5", "fc"], [c.LOGITS], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "square", [helper.make_tensor_value_info(c.INPUT, TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info(c.LOGITS, TensorProto.FLOAT, ["batch", 5])],
        [*weights, dims, flat],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = augment(model, taps={"r1": "r1"}, lrp=True).SerializeToString()
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(data, b""), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    for rule in [*c.RELU_RULES.values(), c.LRP_RULES["lrp_epsilon"]]:
        f = _feeds(x, rule, 1.0, c.OBJECTIVES["logits"], c.COMPUTE_LEVELS["full"])
        f[c.SEED] = np.zeros((2, 5), np.float32)
        names = [c.GRAD_INPUT, c.tap_grad_output("r1")]
        got = compiled(f)
        for name, want in zip(names, ref.run(names, f), strict=True):
            assert relative_l2(got[name], want) < 1e-4, (rule, name)


def test_openvino_gets_the_first_lrp_call_after_compiling_right() -> None:
    """An average pool between two convolutions (ResNet-D's shortcut): OpenVINO returned garbage
    (NaN, or up to 1e34) in the first LRP call after compiling, and right values from the second
    on, until the walk read each layer's chosen rule through a product. Every call below is the
    first of a freshly compiled model."""
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    from gradtap.export.graph.augment import augment

    rng = np.random.default_rng(0)
    shapes = {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (16, 8, 3, 3), "b2": (16,), "fc": (5, 16)}
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.4, s).astype(np.float32), k)
        for k, s in shapes.items()
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("AveragePool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], [c.LOGITS], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "avgpool", [helper.make_tensor_value_info(c.INPUT, TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info(c.LOGITS, TensorProto.FLOAT, ["batch", 5])], weights,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = augment(model, taps={"r2": "r2"}, lrp=True).SerializeToString()
    core = ov.Core()
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = rng.random((2, 3, 16, 16), dtype=np.float32)
    for name in ("lrp_epsilon", "lrp_epsilon_plus", "lrp_alpha2beta1"):
        compiled = core.compile_model(
            core.read_model(data, b""), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )
        f = _feeds(x, c.LRP_RULES[name], 1.0, c.OBJECTIVES["logits"], c.COMPUTE_LEVELS["full"])
        f[c.SEED] = np.zeros((2, 5), np.float32)
        want = ref.run([c.GRAD_INPUT], f)[0]
        assert relative_l2(compiled(f)[c.GRAD_INPUT], want) < 1e-4, name
