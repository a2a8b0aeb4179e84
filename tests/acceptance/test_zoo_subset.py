"""The fast subset of the model-zoo check (bench/zoo.py): small configs of the graphs that broke.

Each model is exported by torch, augmented with default options (plus the preprocessing it
needs stated) and its input gradient compared with torch autograd in float64 on 3 inputs by
``bench.zoo.check``: the ONNX error must be within 2x torch float32's own error on 2 of the 3
(ReLU/max decisions near zero flip between float32 implementations, so one input is noisy).
Small input sizes keep it to seconds a model; random weights, nothing downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

from bench.zoo import check, export  # noqa: E402
from gradtap.export.graph.augment import augment, load_model, save_model  # noqa: E402
from gradtap.runtime.errors import GradtapError  # noqa: E402

pytestmark = pytest.mark.torch
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def timm_model(name: str, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def assert_passes(row: dict) -> None:
    assert row["status"] == "pass", row
    assert len(row["onnx_err"]) == 3 and max(row["torch32_err"]) > 0


def test_vit_through_layernorm_gelu_and_the_class_token() -> None:
    model = timm_model("vit_tiny_patch16_224", img_size=64, depth=3)
    assert_passes(check(model, 64, "torchscript"))


@pytest.mark.slow
def test_convnext_with_torchs_default_exporter() -> None:
    model = timm_model("convnext_atto")
    assert_passes(check(model, 64, "dynamo"))  # opset 20: Gelu, LayerNormalization


def test_channel_shuffle_net_with_a_dynamic_batch() -> None:
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(weights=None).eval()
    assert_passes(check(model, 64, "torchscript"))  # Reshape fed by Shape, batch symbolic


@pytest.mark.slow
def test_ghost_modules_slice_with_a_dynamic_batch() -> None:
    model = timm_model("ghostnet_100")
    assert_passes(check(model, 64, "torchscript"))  # Slice on channels of [N, C, h, w]


class SmallCnn(torch.nn.Module):
    """Conv-BN-ReLU x2, global pooling, linear; an optional Softmax head and NHWC input."""

    def __init__(self, *, softmax: bool = False, nhwc: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 12, 3, stride=2, padding=1), torch.nn.ReLU(),
        )  # fmt: skip
        self.fc = torch.nn.Linear(12, 5)
        self.softmax, self.nhwc = softmax, nhwc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        logits = self.fc(self.features(x).mean((2, 3)))
        return logits.softmax(-1) if self.softmax else logits


def test_channels_last_torch_export_is_detected() -> None:
    row = check(
        SmallCnn(nhwc=True).eval(), 16, "torchscript", convert=lambda t: t.permute(0, 2, 3, 1)
    )
    assert_passes(row)


def test_softmax_head_is_explained_at_the_logits() -> None:
    model = SmallCnn(softmax=True).eval()
    logits_model = SmallCnn().eval()
    logits_model.load_state_dict(model.state_dict())
    assert_passes(check(model, 16, "torchscript", reference=logits_model))


def test_bgr_0_255_mean_subtracted_graph_with_its_flags() -> None:
    mean = torch.tensor(CAFFE_MEAN_BGR).reshape(1, 3, 1, 1)
    model = SmallCnn().eval()
    options = {"channel_order": "bgr", "value_range": (0, 255), "mean": CAFFE_MEAN_BGR}
    row = check(model, 16, "torchscript", convert=lambda t: t.flip(1) * 255 - mean, options=options)
    assert_passes(row)


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model = timm_model("vit_tiny_patch16_224", img_size=64, depth=3)
    folder = tmp_path_factory.mktemp("vit")
    export(model, torch.rand(2, 3, 64, 64), folder / "vit.onnx", "torchscript")
    dst = folder / "vit.gradtap.onnx"
    save_model(augment(load_model(folder / "vit.onnx")), dst)
    return model, dst


def torch_gradcam(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Grad-CAM on the last block's normalised tokens (pytorch-grad-cam's ``blocks[-1].norm1``),
    class token dropped, patch tokens on the 4x4 grid."""
    kept = {}
    hook = model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: kept.update(tokens=o))
    logits = model(torch.from_numpy(x))
    hook.remove()
    tokens = kept["tokens"]
    grad = torch.autograd.grad(logits[0, logits[0].argmax()], tokens)[0]
    act = tokens[:, 1:].reshape(1, 4, 4, -1)
    weights = grad[:, 1:].reshape(1, 4, 4, -1).mean((1, 2), keepdim=True)
    return torch.relu((act * weights).sum(-1)).detach().numpy()


def test_explainer_methods_on_the_vit(vit: tuple[torch.nn.Module, Path]) -> None:
    from gradtap.runtime.explainer import Explainer

    model, path = vit
    ex = Explainer(path)
    image = (np.random.default_rng(5).random((64, 64, 3)) * 255).astype(np.uint8)
    x, _ = ex.inputs(image)
    cam = ex.gradcam(image)
    assert cam.maps.shape == (1, 4, 4)  # the default tap is the token grid
    np.testing.assert_allclose(cam.maps[0], torch_gradcam(model, x)[0], rtol=2e-3, atol=1e-5)
    sal = ex.saliency(image)
    assert sal.maps.shape == (1, 64, 64) and np.isfinite(sal.maps).all() and sal.maps.max() > 0
    try:
        guided = ex.guided_backprop(image)
    except GradtapError as err:  # the documented refusal on a graph whose activations are GELU
        assert "guided" in str(err).lower() and "gelu" in str(err).lower()
    else:
        assert guided.maps.shape == (1, 3, 64, 64) and np.isfinite(guided.maps).all()
