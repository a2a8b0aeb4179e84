"""FullGrad against pytorch-grad-cam's FullGrad on the same weights.

A torchvision ResNet-18 (random init, BatchNorm statistics and affine parameters randomised so
every bias is non-zero) is exported with BatchNorm folded into the convolutions; a small
Conv -> BatchNormalization -> Relu net keeps a BatchNormalization node, whose bias the graph
computes from its initializers. pytorch-grad-cam returns the map min-max scaled, so ours is
compared after the same scaling, to 1e-4 of the range (measured: 2e-6): leaving out the bias
term moves it by more than 1e-2, and scaling the input term as a whole instead of channel by
channel by about 1e-3 (the input term is one of 21 summed maps; checked below).
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from pytorch_grad_cam import FullGrad  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from bench.fullgrad import randomise_batchnorm  # noqa: E402
from gradtap.export.graph.augment import augment  # noqa: E402
from gradtap.runtime import contract as c  # noqa: E402
from gradtap.runtime.errors import ModelError  # noqa: E402
from gradtap.runtime.image.geometry import resize  # noqa: E402
from gradtap.runtime.methods.fullgrad import channel_scaled, fullgrad  # noqa: E402
from gradtap.runtime.present.postprocess import minmax  # noqa: E402
from gradtap.runtime.session import ExplainSession  # noqa: E402
from tests.graphs import OPSET, tiny_cnn  # noqa: E402

TARGETS = [3, 7]
SIZE = 64


def reference(net: torch.nn.Module, x: np.ndarray, targets: list[int]) -> np.ndarray:
    with FullGrad(model=net, target_layers=[]) as cam:
        return cam(
            input_tensor=torch.from_numpy(x),
            targets=[ClassifierOutputTarget(t) for t in targets],
        )


def rel_max(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def resnet() -> tuple[ExplainSession, torch.nn.Module]:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    randomise_batchnorm(net, 1)
    buffer = io.BytesIO()
    torch.onnx.export(
        net, (torch.rand(1, 3, SIZE, SIZE),), buffer, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    forward = onnx.load_from_string(buffer.getvalue())
    return ExplainSession(augment(forward, bias_gradients=True)), net


@pytest.mark.slow
def test_fullgrad_matches_pytorch_grad_cam_on_resnet18(resnet) -> None:  # noqa: ANN001
    session, net = resnet
    assert len(session.bias_outputs) == 20  # 17 convolutions + 3 downsample, BatchNorm folded
    x = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    ours = fullgrad(session, x, target=TARGETS)
    assert ours.maps.shape == (2, SIZE, SIZE) and list(ours.target) == TARGETS
    ref = reference(net, x, TARGETS)
    assert rel_max(np.stack([minmax(m) for m in ours.maps]), ref) < 1e-4

    # the tolerance guard: what a wrong normalisation or a missing term would give
    run = session.run(x, np.eye(10, dtype=np.float32)[TARGETS], outputs=session.bias_outputs)
    assert run.grad_input is not None
    product = np.abs(run.grad_input * x)
    inputs = channel_scaled(product).sum(axis=1)
    bias = sum(np.stack([resize(m, (SIZE, SIZE)) for m in run.outputs[n]]) for n in run.outputs)
    as_whole = np.stack([minmax(p) for p in product]).sum(axis=1)
    assert rel_max(np.stack([minmax(m) for m in inputs]), ref) > 1e-2
    assert rel_max(np.stack([minmax(m) for m in as_whole + bias]), ref) > 5e-4
    assert rel_max(np.stack([minmax(m) for m in inputs + bias]), ref) < 1e-4
    assert all(run.outputs[n].min() >= 0 for n in session.bias_outputs)


def _bn_net(seed: int) -> tuple[onnx.ModelProto, torch.nn.Module]:
    """Conv(no bias) -> BatchNorm -> Relu -> GAP -> Linear, in ONNX (BN kept) and in torch."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 5, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(5),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(5, 4),
    ).eval()
    randomise_batchnorm(net, seed + 1)
    conv, bn, lin = net[0], net[1], net[5]
    arrays = {
        "w": conv.weight, "gamma": bn.weight, "beta": bn.bias, "mean": bn.running_mean,
        "var": bn.running_var, "fc_w": lin.weight, "fc_b": lin.bias,
    }  # fmt: skip
    make = helper.make_node
    nodes = [
        make("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        make(
            "BatchNormalization",
            ["conv", "gamma", "beta", "mean", "var"],
            ["bn"],
            epsilon=bn.eps,
            name="bn",
        ),  # fmt: skip
        make("Relu", ["bn"], ["features"], name="relu"),
        make("GlobalAveragePool", ["features"], ["pool"], name="gap"),
        make("Flatten", ["pool"], ["flat"], name="flatten"),
        make("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(t.detach().numpy().astype(np.float32), k)
            for k, t in arrays.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model, net


def test_batchnorm_bias_is_computed_from_its_parameters() -> None:
    model, net = _bn_net(3)
    session = ExplainSession(augment(model, bias_gradients=True))
    assert session.bias_outputs == (c.bias_grad_output(0),)
    x = np.random.default_rng(1).random((3, 3, 12, 12), dtype=np.float32)
    targets = [0, 2, 3]
    ours = np.stack([minmax(m) for m in fullgrad(session, x, target=targets).maps])
    assert rel_max(ours, reference(net, x, targets)) < 1e-4


def test_a_graph_without_bias_gradients_says_how_to_rebuild_it() -> None:
    session = ExplainSession(augment(tiny_cnn()))
    x = np.zeros((1, 3, *session.info.input_size), np.float32)
    with pytest.raises(ModelError, match=r"bias_gradients=True \(gradtap augment --fullgrad\)"):
        fullgrad(session, x)


def test_bias_maps_are_computed_only_with_the_input_gradient() -> None:
    """compute < 2 leaves them empty; the tiny CNN's two biased convolutions give two maps, the
    first at input resolution, the second after the max-pool; resized and summed they are the
    FullGrad map's bias term."""
    session = ExplainSession(augment(tiny_cnn(), bias_gradients=True))
    h, w = session.info.input_size
    x = np.random.default_rng(2).random((2, 3, h, w), dtype=np.float32)
    seed = np.eye(session.info.num_classes, dtype=np.float32)[[0, 1]]
    names = session.bias_outputs
    full = session.run(x, seed, outputs=names)
    assert [full.outputs[n].shape for n in names] == [(2, h, w), (2, h // 2, w // 2)]
    taps_only = session._session.run(  # noqa: SLF001  # the graph's own gating
        list(names),
        {c.INPUT: x, c.SEED: seed, c.COMPUTE: np.asarray(1, np.int64),
         **{k: np.asarray(v, t) for k, (t, v) in c.CONTROL_DEFAULTS.items() if k != c.COMPUTE}},
    )  # fmt: skip
    assert all(a.size == 0 for a in taps_only)
    assert full.grad_input is not None
    expected = channel_scaled(np.abs(full.grad_input * x)).sum(axis=1)
    expected += sum(np.stack([resize(m, (h, w)) for m in full.outputs[n]]) for n in names)
    np.testing.assert_allclose(fullgrad(session, x, target=[0, 1]).maps, expected, rtol=1e-5)


def test_gradtap_augment_fullgrad_adds_the_outputs_and_explain_names_the_fix(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from gradtap.cli.main import cli

    src, dst, plain = (tmp_path / n for n in ("t.onnx", "t.gradtap.onnx", "p.gradtap.onnx"))
    onnx.save(tiny_cnn(size=16), str(src))
    runner = CliRunner()
    done = runner.invoke(cli, ["augment", str(src), "-o", str(dst), "--fullgrad"])
    assert done.exit_code == 0, done.output
    assert len(ExplainSession(dst).bias_outputs) == 2
    assert runner.invoke(cli, ["augment", str(src), "-o", str(plain)]).exit_code == 0
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.full((16, 16, 3), 128, np.uint8))
    out = tmp_path / "out"
    failed = runner.invoke(cli, ["explain", str(image), "-M", str(plain), "-m", "fullgrad",
                                 "-o", str(out)])  # fmt: skip
    assert failed.exit_code != 0
    assert "gradtap augment --fullgrad" in failed.output and "Traceback" not in failed.output
    ok = runner.invoke(cli, ["explain", str(image), "-M", str(dst), "-m", "fullgrad",
                             "-o", str(out)])  # fmt: skip
    assert ok.exit_code == 0, ok.output


def test_a_flat_graph_gives_the_same_maps() -> None:
    gated = ExplainSession(augment(tiny_cnn(), bias_gradients=True))
    flat = ExplainSession(augment(tiny_cnn(), bias_gradients=True, flat=True))
    x = np.random.default_rng(3).random((2, 3, *gated.info.input_size), dtype=np.float32)
    assert flat.bias_outputs == gated.bias_outputs
    np.testing.assert_allclose(fullgrad(flat, x, 1).maps, fullgrad(gated, x, 1).maps, rtol=1e-6)
