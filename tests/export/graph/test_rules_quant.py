"""Quantised (QDQ) graphs: the QuantizeLinear and DequantizeLinear rules against torch.

Oracles:
- the pair on its own: torch's fake-quantisation autograd (the straight-through estimator of
  quantisation-aware training), on values away from the two ends of the integer range, and
  hand-computed values at the ends, where the rule reads the integers (0 at either end) and
  torch reads the float input;
- a quantised network (torch's export of fake-quantised layers: integer weights, a ReLU folded
  into a range starting at 0, a residual join): torch autograd through the same network with a
  fake-quantiser whose backward reads the integers as the rule does, for the gradient, guided
  backprop and deconvnet; zennit for LRP;
- onnxruntime's own quantiser (Relu nodes dropped, folded into the ranges): the explanation
  graph's logits are the QDQ graph's as the ONNX standard defines it.

Float sessions run without graph optimisations: onnxruntime's integer kernels round otherwise
than torch's float fake-quantisation, and the networks are compared at the same activations.
"""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph.augment import augment
from gradtap.export.graph.vjp import add_vjp
from gradtap.runtime import contract as c
from gradtap.runtime.errors import UnsupportedOpError
from tests.graphs import controls, unoptimised

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

LIMITS = {TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127), TensorProto.INT4: (-8, 7)}


def pair_model(
    scale: np.ndarray, zp: np.ndarray | None, shape: tuple, axis: int = 1, dtype: int | None = None
) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> y (zero points of ``dtype`` when given)."""
    inits = [numpy_helper.from_array(scale, "s")]
    names = ["x", "s"]
    if zp is not None:
        inits.append(
            numpy_helper.from_array(zp, "zp")
            if dtype is None
            else helper.make_tensor("zp", dtype, list(zp.shape), zp.ravel().tolist())
        )
        names.append("zp")
    nodes = [
        helper.make_node("QuantizeLinear", names, ["q"], axis=axis),
        helper.make_node("DequantizeLinear", ["q", *names[1:]], ["y"], axis=axis),
    ]
    graph = helper.make_graph(
        nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], inits,
    )  # fmt: skip
    opset = 17 if dtype is None else 21
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if dtype is None else 10
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def pair_vjp(model: onnx.ModelProto, x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    aug = add_vjp(model, seed_of="y", seed="v", wrt={"x": "dx"})
    aug.graph.input.append(helper.make_tensor_value_info("v", TensorProto.FLOAT, list(v.shape)))
    onnx.checker.check_model(aug, full_check=True)
    y, dx = unoptimised(aug).run(["y", "dx"], {"x": x, "v": v})
    return y, dx


def grid_values(rng: np.random.Generator, shape: tuple, scale: np.ndarray, zp: np.ndarray,
                low: int, high: int) -> np.ndarray:  # fmt: skip
    """Values whose rounded q lies inside [low + 2, high - 2] or 3 or more steps outside the range
    (where torch's estimator and the rule agree), a step fraction of at most 0.4 off the grid."""
    inside = rng.integers(low + 2, high - 1, size=shape)
    outside = np.where(rng.random(shape) < 0.5, low - rng.integers(3, 20, size=shape),
                       high + rng.integers(3, 20, size=shape))  # fmt: skip
    q = np.where(rng.random(shape) < 0.8, inside, outside)
    return ((q - zp + rng.uniform(-0.4, 0.4, shape)) * scale).astype(np.float32)


@pytest.mark.parametrize(
    "dtype, zp, per_axis",
    [(TensorProto.UINT8, 100, False), (TensorProto.INT8, -3, False), (TensorProto.INT8, 0, True),
     (TensorProto.UINT8, None, False), (TensorProto.INT4, 1, False)],
    ids=["uint8", "int8", "int8-per-axis", "uint8-default-zero-point", "int4"],
)  # fmt: skip
def test_the_pair_matches_torch_fake_quantisation(
    dtype: int, zp: int | None, per_axis: bool
) -> None:
    rng = np.random.default_rng(0)
    shape, (low, high) = (2, 4, 5, 5), LIMITS[dtype]
    np_type = {TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8}.get(dtype, np.int32)
    scale = (np.array([0.02, 0.05, 0.1, 0.3], np.float32) if per_axis
             else np.array(0.07, np.float32))  # fmt: skip
    zps = None if zp is None else np.full(scale.shape, zp, np_type)
    bcast = scale.reshape(1, -1, 1, 1) if per_axis else scale
    x = grid_values(rng, shape, bcast, 0 if zp is None else zp, low, high)
    v = rng.normal(size=shape).astype(np.float32)
    four_bit = dtype if dtype == TensorProto.INT4 else None
    y, dx = pair_vjp(pair_model(scale, zps, shape, dtype=four_bit), x, v)

    xt = torch.from_numpy(x).requires_grad_()
    zero = 0 if zp is None else zp
    if per_axis:
        zt = torch.full((4,), zero, dtype=torch.int32)
        yt = torch.fake_quantize_per_channel_affine(xt, torch.from_numpy(scale), zt, 1, low, high)
    else:
        yt = torch.fake_quantize_per_tensor_affine(xt, float(scale), zero, low, high)
    yt.backward(torch.from_numpy(v))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, atol=1e-7)
    expected = xt.grad.numpy()
    assert 0 < (expected == 0).mean() < 0.5  # both clipped and passed values are checked
    np.testing.assert_allclose(dx, expected, rtol=1e-6, atol=1e-7)


def test_at_the_ends_of_the_range_the_gradient_is_zero() -> None:
    """Hand-computed: the rule reads q, so an in-range value that rounds to an end of the range
    gets 0 as a clipped one does (torch's estimator, reading x, passes it)."""
    scale = np.array(0.5, np.float32)
    zp = np.array(0, np.uint8)
    x = np.array([[-1.0, 0.1, 0.3, 1.0, 127.2, 127.4, 200.0]], np.float32)  # q: 0 0 1 2 254 255 255
    _, dx = pair_vjp(pair_model(scale, zp, x.shape), x, np.ones_like(x))
    np.testing.assert_array_equal(dx, [[0, 0, 1, 1, 1, 0, 0]])


# --- a quantised network -------------------------------------------------------------------


class STE(torch.autograd.Function):
    """Fake quantisation whose backward reads the integers (the rule's estimator); ``mode``:
    "plain", or "guided"/"deconvnet" where the range is a folded ReLU."""

    @staticmethod
    def forward(ctx, x, scale, zp, low, high, mode):  # noqa: ANN001, ANN205
        q = torch.clamp(torch.round(x / scale) + zp, low, high)
        ctx.save_for_backward((q > low) & (q < high))
        ctx.mode = mode
        return (q - zp) * scale

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        (inside,) = ctx.saved_tensors
        if ctx.mode == "guided":
            g = g.clamp(min=0) * inside
        elif ctx.mode == "deconvnet":
            g = g.clamp(min=0)
        else:
            g = g * inside
        return g, None, None, None, None, None


class FakeQuant(nn.Module):
    """Exports as QuantizeLinear-DequantizeLinear; ``oracle`` switches to the STE above."""

    def __init__(self, scale: float, zp: int, folds_relu: bool) -> None:
        super().__init__()
        self.scale, self.zp, self.folds_relu = scale, zp, folds_relu
        self.oracle: str | None = None
        self.highest = -np.inf  # of the inputs seen, in steps of the grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            self.highest = max(self.highest, float(x.detach().max()) / self.scale + self.zp)
        if self.oracle is None:
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zp, 0, 255)
        mode = self.oracle if self.folds_relu else "plain"
        return STE.apply(x, self.scale, self.zp, 0, 255, mode)


class QuantConv(nn.Conv2d):
    """A convolution with symmetric per-channel int8 weights, its scales a buffer (exported as
    QuantizeLinear-DequantizeLinear of the float weights, as quantisation-aware training leaves
    them)."""

    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("grid", self.weight.detach().abs().amax((1, 2, 3)) / 127)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.int8_weights(), self.bias)

    def int8_weights(self) -> torch.Tensor:
        zero = torch.zeros(self.grid.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(self.weight, self.grid, zero, 0, -128, 127)


class Join(nn.Module):
    """The residual join a + b (zennit's Sum layer over the two, for zennit)."""

    def __init__(self, layer: nn.Module | None = None) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b if self.layer is None else self.layer(torch.stack([a, b], dim=-1))


class QNet(nn.Module):
    """Image quantised, conv + folded ReLU, conv (mid-range zero point), residual join + folded
    ReLU, average pool, dense."""

    def __init__(self, conv: type[nn.Conv2d] = QuantConv, join: Join | None = None) -> None:
        super().__init__()
        self.c1, self.c2 = conv(3, 8, 3, padding=1), conv(8, 8, 3, padding=1)
        self.image = FakeQuant(1 / 255, 0, folds_relu=False)  # starts at 0, but not a layer's
        self.f1, self.f2 = FakeQuant(0.03, 0, True), FakeQuant(0.03, 128, False)
        self.f3 = FakeQuant(0.03, 0, True)
        self.join, self.pool, self.fc = join or Join(), nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.f1(self.c1(self.image(x)))
        b = self.f3(self.join(self.f2(self.c2(a)), a))
        return self.fc(self.pool(b).flatten(1))

    def oracle(self, mode: str | None) -> None:
        for m in self.modules():
            if isinstance(m, FakeQuant):
                m.oracle = mode


def exported(net: nn.Module, size: int = 16) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        net.eval(), (torch.rand(1, 3, size, size),), buffer, input_names=[c.INPUT],
        output_names=[c.LOGITS], dynamic_axes={c.INPUT: {0: "n"}, c.LOGITS: {0: "n"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


@pytest.fixture(scope="module")
def qnet() -> tuple[QNet, onnx.ModelProto]:
    torch.manual_seed(0)
    net = QNet().eval()
    graph = exported(net)
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "Relu" not in ops
    return net, augment(graph, taps={}, lrp=True)


def ours(graph: onnx.ModelProto, x: np.ndarray, rule: str, target: np.ndarray) -> tuple:
    seed = np.eye(10, dtype=np.float32)[target]
    code = c.BACKWARD_RULES[rule]
    logits, grad = unoptimised(graph).run(
        [c.LOGITS, c.GRAD_INPUT], {c.INPUT: x, c.SEED: seed, **controls(graph, relu_rule=code)}
    )
    return logits, grad


@pytest.mark.parametrize("rule", ["plain", "guided", "deconvnet"])
def test_a_quantised_network_matches_torch_autograd(qnet: tuple, rule: str) -> None:
    """Three inputs; the error bound is float32 rounding (a q one step off, where x / s falls on
    a rounding tie, would show as 1e-2 or more)."""
    net, graph = qnet
    x = np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)
    target = np.array([0, 3, 7])
    logits, grad = ours(graph, x, rule, target)
    net.oracle(rule)
    try:
        xt = torch.from_numpy(x).requires_grad_()
        out = net(xt)
        out.backward(torch.eye(10)[torch.from_numpy(target)])
    finally:
        net.oracle(None)
    np.testing.assert_allclose(logits, out.detach().numpy(), rtol=1e-5, atol=1e-5)
    expected = xt.grad.numpy()
    err = np.abs(grad - expected).max() / np.abs(expected).max()
    assert err < 1e-5, f"relative error {err:.1e}"


def test_guided_backprop_and_deconvnet_rectify_at_the_folded_relus_only(qnet: tuple) -> None:
    """The rules differ from the plain gradient (so the folded ReLUs are rectifiers), and the
    deconvnet input gradient has both signs (the image's own quantiser, starting at 0 too, is
    not one: it would make every value >= 0)."""
    _, graph = qnet
    x = np.random.default_rng(2).random((2, 3, 16, 16), dtype=np.float32)
    target = np.array([1, 2])
    grads = {r: ours(graph, x, r, target)[1] for r in ("plain", "guided", "deconvnet")}
    assert not np.allclose(grads["plain"], grads["guided"])
    assert not np.allclose(grads["guided"], grads["deconvnet"])
    assert (grads["deconvnet"] < 0).any() and (grads["deconvnet"] > 0).any()


def test_lrp_through_the_quantised_network_matches_zennit(qnet: tuple) -> None:
    """zennit's epsilon rule on the same network (dequantised weights in nn.Conv2d, the join
    zennit's Sum, split in proportion as the walk splits it), its quantisers plain autograd:
    relevance passes the quantisers unchanged in both where nothing is clipped at the top (the
    scales leave the largest activations below the range's end)."""
    pytest.importorskip("zennit")
    from zennit import rules as zr
    from zennit import types as zt
    from zennit.composites import LayerMapComposite, layer_map_base
    from zennit.layer import Sum

    net, graph = qnet
    meta = {m.key: m.value for m in graph.metadata_props}
    assert "lrp_epsilon" in json.loads(meta[c.META_RELU_RULES])
    x = np.random.default_rng(3).random((2, 3, 16, 16), dtype=np.float32)
    target = np.array([4, 5])
    _, relevance = ours(graph, x, "lrp_epsilon", target)

    plain = QNet(nn.Conv2d, Join(Sum())).eval()  # zennit's rules attach to nn.Conv2d
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if "grid" not in k})
    for conv, quantised in ((plain.c1, net.c1), (plain.c2, net.c2)):
        conv.weight.data = quantised.int8_weights().detach()
    composite = LayerMapComposite(
        layer_map_base() + [(zt.Convolution, zr.Epsilon()), (nn.Linear, zr.Epsilon())]
    )
    xt = torch.from_numpy(x).requires_grad_()
    with composite.context(plain) as modified:
        modified(xt).backward(torch.eye(10)[torch.from_numpy(target)])
    expected = xt.grad.numpy()
    err = np.abs(relevance - expected).max() / np.abs(expected).max()
    assert err < 1e-3, f"relative error {err:.1e}"


# --- onnxruntime's quantiser ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ort_quantised(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    """A small float CNN quantised by onnxruntime (QDQ, uint8 activations, int8 weights): it
    drops the Relu nodes, folding them into ranges that start at 0."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("qdq")
    onnx.save(exported(net.eval(), 32), folder / "float.onnx")
    rng = np.random.default_rng(0)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{c.INPUT: rng.random((1, 3, 32, 32), dtype=np.float32)}
                                 for _ in range(8)])  # fmt: skip

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantization.quantize_static(
        str(folder / "float.onnx"), str(folder / "qdq.onnx"), Reader(),
        quant_format=quantization.QuantFormat.QDQ, per_channel=True,
    )  # fmt: skip
    model = onnx.load(folder / "qdq.onnx")
    assert "Relu" not in {n.op_type for n in model.graph.node}
    return model


@pytest.mark.parametrize("lrp", [False, True], ids=["gradients", "with-lrp"])
def test_the_explanation_graph_computes_the_quantised_forward_pass_as_defined(
    ort_quantised: onnx.ModelProto, lrp: bool
) -> None:
    """The logits of every call are the QDQ graph's as the ONNX standard defines it (the QDQ
    graph run without optimisations), and the deployed session predicts the same classes.

    The deployed session's own logits may differ more: onnxruntime fuses the QDQ groups into
    integer kernels, which on x86 without VNNI saturate some intermediate sums (about 1e-1 of
    the largest logit on this CNN); whether it can fuse them in the explanation graph too, where
    the backward pass reads the integers, depends on the graph (on ResNet18 it does, and the
    logits are the deployed ones bit for bit)."""
    graph = augment(ort_quantised, taps={}, lrp=lrp)
    x = np.random.default_rng(4).random((3, 3, 32, 32), dtype=np.float32)
    (defined,) = unoptimised(ort_quantised).run([c.LOGITS], {c.INPUT: x})
    (deployed,) = ort.InferenceSession(
        ort_quantised.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run([c.LOGITS], {c.INPUT: x})
    seed = np.eye(10, dtype=np.float32)[[0, 1, 2]]
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for rule in ["plain", "guided"] + (["lrp_epsilon"] if lrp else []):
        feeds = {c.INPUT: x, c.SEED: seed, **controls(graph, relu_rule=c.BACKWARD_RULES[rule])}
        logits, grad = session.run([c.LOGITS, c.GRAD_INPUT], feeds)
        np.testing.assert_allclose(logits, defined, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(logits.argmax(1), deployed.argmax(1))
        assert np.isfinite(grad).all() and np.abs(grad).max() > 0


# --- what has no rule ----------------------------------------------------------------------


def test_blocked_and_float8_quantisation_are_refused_by_name() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])
    cases = {
        "block_size": ([numpy_helper.from_array(np.full((2, 2), 0.1, np.float32), "s"),
                        numpy_helper.from_array(np.zeros((2, 2), np.int8), "zp")],
                       {"axis": 1, "block_size": 4}),
        "FLOAT8E4M3FN": ([numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                          helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0.0])], {}),
    }  # fmt: skip
    for message, (inits, attrs) in cases.items():
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], **attrs),
            helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], **attrs),
        ]
        graph = helper.make_graph(nodes, "q", [x], [y], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        with pytest.raises(UnsupportedOpError, match=message):
            add_vjp(model, seed_of="y", seed="v", wrt={"x": "dx"})
