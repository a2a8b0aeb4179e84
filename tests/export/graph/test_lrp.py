"""The graph's LRP walk against zennit (the reference LRP implementation) on the same weights.

Each relu_rule LRP code is compared with the zennit composite it stands for (a LayerMapComposite
with the rule on every convolution and dense layer, or zennit's own EpsilonPlus,
EpsilonAlpha2Beta1, EpsilonPlusFlat, EpsilonGammaBox; zB first layer built from zennit's ZBox),
on the custom CNN, on VGG16's convolutions and on ResNet18 with zennit's ResNet canonizer
(BatchNorm merged into the convolutions, as torch's exporter does, and the residual sums split
in proportion).

The relevance is a ratio R / stab(z) at every layer: where a pre-activation is close to zero the
float32 rounding of torch and onnxruntime is amplified, so the bound is relative to the map's
largest value (1e-3; measured: 1e-4 for epsilon on VGG16, 1e-6 for the others), which a wrong rule (a missed bias, a sign, the wrong layer) exceeds by
orders of magnitude: the codes differ from one another by 1e-1 or more of the maximum.
"""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
zennit = pytest.importorskip("zennit")

from torch import nn  # noqa: E402
from zennit import rules as zr  # noqa: E402
from zennit import types as zt  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import (  # noqa: E402
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    SpecialFirstLayerMapComposite,
    layer_map_base,
)
from zennit.torchvision import ResNetCanonizer  # noqa: E402

from gradtap.export.graph.augment import augment  # noqa: E402
from gradtap.export.models.smallcnn import SmallCNN  # noqa: E402
from gradtap.runtime import contract as c  # noqa: E402
from tests.graphs import controls, session  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TOL = 1e-3
# The epsilon rule divides by z + 1e-6 sign(z) at every layer, so VGG16's 13 layers amplify the
# float32 rounding most there: measured 1e-4 on AVX-512 CPUs, 1.1e-3 to 1.3e-3 on AVX2 ones
# (where the other rules stay at 1e-7 to 7e-4), still 1e2 below what a wrong rule gives.
TOL_EPSILON_DEEP = 3e-3


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def composites(canonizers: list | None = None) -> dict[str, object]:
    """relu_rule name -> the zennit composite it stands for."""
    low, high = _normalise(torch.zeros(1, 3, 1, 1)), _normalise(torch.ones(1, 3, 1, 1))
    kw = {"canonizers": canonizers} if canonizers else {}
    box = SpecialFirstLayerMapComposite(
        layer_map_base() + [(zt.Convolution, zr.ZPlus()), (nn.Linear, zr.Epsilon())],
        [(zt.Convolution, zr.ZBox(low, high))],
        **kw,
    )
    every = {
        "lrp_epsilon": zr.Epsilon(),
        "lrp_zplus": zr.ZPlus(),
        "lrp_alpha2beta1": zr.AlphaBeta(2, 1),
        "lrp_alpha1beta0": zr.AlphaBeta(1, 0),
        "lrp_flat": zr.Flat(),
        "lrp_gamma": zr.Gamma(),  # gamma 0.25, zennit's default
    }
    found: dict[str, object] = {
        name: LayerMapComposite(
            layer_map_base() + [(zt.Convolution, rule), (nn.Linear, rule)], **kw
        )
        for name, rule in every.items()
    }
    found.update({
        "lrp_epsilon_plus": EpsilonPlus(**kw),
        "lrp_epsilon_alpha2beta1": EpsilonAlpha2Beta1(**kw),
        "lrp_epsilon_plus_flat": EpsilonPlusFlat(**kw),
        "lrp_epsilon_plus_box": box,
        "lrp_epsilon_gamma_box": EpsilonGammaBox(low, high, **kw),
    })  # fmt: skip
    return found


def explanation_graph(net: nn.Module, size: int) -> onnx.ModelProto:
    """torch's TorchScript export (BatchNorm folded) of ``net`` behind the normalisation."""
    buffer = io.BytesIO()
    x = torch.rand(1, 3, size, size)
    torch.onnx.export(
        net.eval(), (x,), buffer, input_names=[c.INPUT], output_names=[c.LOGITS],
        dynamic_axes={c.INPUT: {0: "batch"}, c.LOGITS: {0: "batch"}}, opset_version=17,
        dynamo=False,
    )  # fmt: skip
    return augment(onnx.load_from_string(buffer.getvalue()), taps={}, mean=MEAN, std=STD, lrp=True)


def ours(graph: onnx.ModelProto, x: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Relevance at the normalised input for the predicted class (seed one-hot), and the class."""
    meta = {m.key: m.value for m in graph.metadata_props}
    assert rule in json.loads(meta[c.META_RELU_RULES])  # the graph has the LRP walk
    s = session(graph)
    feeds = {c.INPUT: x, c.SEED: np.zeros((len(x), 10), np.float32)}
    code = c.BACKWARD_RULES[rule]
    logits, grad = s.run(
        [c.LOGITS, c.GRAD_INPUT], {**feeds, **controls(graph, relu_rule=code, seed_top1=1.0)}
    )
    return grad, logits.argmax(1)


def theirs(net: nn.Module, composite: object, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    xin = _normalise(torch.from_numpy(x)).detach().requires_grad_()
    with composite.context(net) as modified:  # type: ignore[attr-defined]
        out = modified(xin)
        out.backward(torch.eye(out.shape[1])[torch.from_numpy(target)])
    return xin.grad.numpy()


def assert_close(a: np.ndarray, b: np.ndarray, tol: float = TOL) -> None:
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err < tol, f"relative error {err:.2e}"


@pytest.fixture(scope="module")
def smallcnn() -> tuple[nn.Module, onnx.ModelProto]:
    torch.manual_seed(0)
    net = SmallCNN(10, width=8).eval()
    for p in net.parameters():  # biases of both signs, large enough to matter
        p.data.normal_(0, 0.2)
    return net, explanation_graph(net, 32)


@pytest.mark.parametrize("rule", list(c.LRP_RULES))
def test_custom_cnn_every_code_matches_zennit(smallcnn: tuple, rule: str) -> None:
    net, graph = smallcnn
    x = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    relevance, target = ours(graph, x, rule)
    assert_close(relevance, theirs(net, composites()[rule], x, target))


def test_the_codes_differ_from_each_other_and_from_the_gradient(smallcnn: tuple) -> None:
    """The comparison above can fail: each code gives another map (alpha1beta0 is z+)."""
    _, graph = smallcnn
    x = np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32)
    maps = {r: ours(graph, x, r)[0] for r in ("plain", *c.LRP_RULES)}
    names = [r for r in maps if r != "lrp_alpha1beta0"]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            gap = np.abs(maps[a] - maps[b]).max() / np.abs(maps[b]).max()
            assert gap > 1e-2, (a, b)
    np.testing.assert_array_equal(maps["lrp_alpha1beta0"], maps["lrp_zplus"])


def test_the_gradient_codes_are_untouched(smallcnn: tuple) -> None:
    """relu_rule 0 still gives torch's gradient of the same network."""
    net, graph = smallcnn
    x = np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32)
    grad, target = ours(graph, x, "plain")
    xt = torch.from_numpy(x).requires_grad_()
    net(_normalise(xt)).gather(1, torch.from_numpy(target)[:, None]).sum().backward()
    np.testing.assert_allclose(grad, xt.grad.numpy(), atol=1e-5 * np.abs(grad).max())


def _vgg16_features() -> nn.Module:
    """torchvision's VGG16 with its 13 convolutions as they are, the classifier narrowed for a
    64 px input (its first layer alone is 25088 x 4096 weights; the rules are per layer)."""
    from torchvision.models import vgg16

    net = vgg16(num_classes=10)
    net.avgpool = nn.Identity()
    net.classifier = nn.Sequential(
        nn.Linear(512 * 2 * 2, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 10)
    )
    return net.eval()


@pytest.mark.slow
def test_vgg16_rules_and_a_composite_match_zennit() -> None:
    torch.manual_seed(0)
    net = _vgg16_features()
    graph = explanation_graph(net, 64)
    x = np.random.default_rng(4).random((1, 3, 64, 64), dtype=np.float32)
    found = composites()
    rules = ("lrp_epsilon", "lrp_zplus", "lrp_alpha2beta1", "lrp_flat", "lrp_epsilon_plus_box")
    for rule in (*rules, "lrp_gamma", "lrp_epsilon_gamma_box"):
        relevance, target = ours(graph, x, rule)
        tol = TOL_EPSILON_DEEP if rule == "lrp_epsilon" else TOL
        assert_close(relevance, theirs(net, found[rule], x, target), tol)


@pytest.mark.slow
def test_resnet18_matches_zennit_with_its_resnet_canonizer() -> None:
    """Residual sums split in proportion (zennit's canonizer makes them Sum modules, Norm rule),
    BatchNorm merged into the convolutions (zennit's canonizer; torch's exporter folds it)."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18(num_classes=10).eval()
    for m in net.modules():  # running statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    graph = explanation_graph(net, 64)
    x = np.random.default_rng(5).random((1, 3, 64, 64), dtype=np.float32)
    rules = ("lrp_epsilon_plus", "lrp_epsilon_alpha2beta1", "lrp_epsilon_plus_box")
    for rule in (*rules, "lrp_epsilon_gamma_box"):
        relevance, target = ours(graph, x, rule)
        found = composites([ResNetCanonizer()])[rule]
        assert_close(relevance, theirs(net, found, x, target))


def test_batchnorm_folded_by_the_export_equals_zennits_merge() -> None:
    """torch's exporter folds BatchNorm into the convolution before it: the graph's rules then
    see the merged layer, which is what zennit's SequentialMergeBatchNorm canonizer makes."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10),
    ).eval()  # fmt: skip
    net[1].running_var.uniform_(0.5, 2.0)
    net[1].running_mean.uniform_(-0.5, 0.5)
    graph = explanation_graph(net, 8)
    assert not any(n.op_type == "BatchNormalization" for n in graph.graph.node)
    x = np.random.default_rng(6).random((2, 3, 8, 8), dtype=np.float32)
    for rule, hook in (("lrp_epsilon", zr.Epsilon()), ("lrp_zplus", zr.ZPlus())):
        merged = LayerMapComposite(
            layer_map_base() + [(zt.Convolution, hook), (nn.Linear, hook)],
            canonizers=[SequentialMergeBatchNorm()],
        )
        relevance, target = ours(graph, x, rule)
        assert_close(relevance, theirs(net, merged, x, target))


def test_codes_0_to_2_give_bit_for_bit_what_the_graph_without_the_walk_gives(smallcnn) -> None:
    """The walk joins the gradient walk's result by a Slice and a Concat: copies, same bits."""

    net, with_walk = smallcnn
    buffer = io.BytesIO()
    torch.onnx.export(
        net, (torch.rand(1, 3, 32, 32),), buffer, input_names=[c.INPUT],
        output_names=[c.LOGITS], dynamic_axes={c.INPUT: {0: "batch"}, c.LOGITS: {0: "batch"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    without = augment(onnx.load_from_string(buffer.getvalue()), taps={}, mean=MEAN, std=STD)
    x = np.random.default_rng(7).random((3, 3, 32, 32), dtype=np.float32)
    seed = np.random.default_rng(8).normal(size=(3, 10)).astype(np.float32)
    for code in c.RELU_RULES.values():
        feeds = {c.INPUT: x, c.SEED: seed}
        a, b = (
            session(g).run([c.LOGITS, c.GRAD_INPUT], {**feeds, **controls(g, relu_rule=code)})
            for g in (with_walk, without)
        )
        np.testing.assert_array_equal(a[1], b[1])
