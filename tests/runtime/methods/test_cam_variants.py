"""HiResCAM, XGrad-CAM, LayerCAM (one tap and fused over two), Eigen-CAM and Eigen-Grad-CAM
against pytorch-grad-cam on a randomly initialised torchvision ResNet-18 (the same weights).

pytorch-grad-cam returns each map rectified, min-max scaled and resized bilinearly to the input,
so ours are compared after the same steps. The tolerance (1e-4 of the map's range) is far below
what a missing ReLU, a spatially averaged gradient (Grad-CAM instead of HiResCAM), a missing
activation normalisation (XGrad-CAM) or an unrectified gradient (LayerCAM) changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import pytorch_grad_cam as pgc  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from gradtap.export.graph.augment import augment  # noqa: E402
from gradtap.export.models.to_onnx import model_path  # noqa: E402
from gradtap.export.models.zoo import build, pixel_space  # noqa: E402
from gradtap.runtime.image.geometry import resize  # noqa: E402
from gradtap.runtime.methods import cam_variants as cv  # noqa: E402
from gradtap.runtime.present.postprocess import minmax  # noqa: E402
from gradtap.runtime.session import ExplainSession  # noqa: E402
from gradtap.runtime.targets import Each  # noqa: E402

pytestmark = pytest.mark.slow  # a ResNet-18 augmented with two taps (about a minute)

TARGETS = [3, 7]
LAYER3 = "/net/model/layer3/layer3.1/relu_1/Relu_output_0"  # layer3's output in the export


@dataclass(frozen=True)
class Pair:
    session: ExplainSession  # taps layer3 and layer4 (default), one graph
    net: torch.nn.Module
    x: np.ndarray

    def reference(self, cam_class: type, layers: list[str]) -> np.ndarray:
        modules = [self.net.model.get_submodule(n) for n in layers]
        with cam_class(model=self.net, target_layers=modules) as cam:
            return cam(
                input_tensor=torch.from_numpy(self.x),
                targets=[ClassifierOutputTarget(t) for t in TARGETS],
            )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    model, spec = build("resnet18", "random")
    net = pixel_space(model, spec).eval()
    forward = onnx.load(str(model_path("resnet18", "random")))
    graph = augment(forward, taps={"layer3": LAYER3, "layer4": "layer4"})
    path = Path(tmp_path_factory.mktemp("taps")) / "resnet18-two-taps.gradtap.onnx"
    onnx.save(graph, str(path))
    session = ExplainSession(path)
    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    return Pair(session, net, x)


def as_reference(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Our rows (image 0, target 3) and (image 1, target 7), scaled like pytorch-grad-cam's."""
    return np.stack([minmax(resize(minmax(m), size)) for m in maps[[0, 3]]])


def rel_max(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize(
    ("cam_class", "method"),
    [
        (pgc.HiResCAM, cv.hirescam),
        (pgc.XGradCAM, cv.xgradcam),
        (pgc.LayerCAM, cv.layercam),
        (pgc.EigenGradCAM, cv.eigengradcam),
    ],
)
@pytest.mark.parametrize("tap", ["layer4", "layer3"])
def test_cam_variant(pair: Pair, cam_class: type, method, tap: str) -> None:  # noqa: ANN001
    ref = pair.reference(cam_class, [tap])
    expl = method(pair.session, pair.x, target=Each(TARGETS), tap=tap)
    assert expl.maps.shape[1:] == pair.session.run(pair.x[:1], taps=[tap]).taps[tap].shape[2:]
    assert rel_max(as_reference(expl.maps, (224, 224)), ref) < 1e-4


@pytest.mark.parametrize("tap", ["layer4", "layer3"])
def test_eigencam(pair: Pair, tap: str) -> None:
    ref = pair.reference(pgc.EigenCAM, [tap])
    ours = cv.eigencam(pair.session, pair.x, target=Each(TARGETS), tap=tap).maps
    assert rel_max(as_reference(ours, (224, 224)), ref) < 1e-4


def test_layercam_fused_over_two_taps(pair: Pair) -> None:
    ref = pair.reference(pgc.LayerCAM, ["layer3", "layer4"])
    ours = cv.layercam(pair.session, pair.x, target=Each(TARGETS), taps=["layer3", "layer4"]).maps
    assert ours.shape[1:] == (224, 224)
    assert rel_max(ours[[0, 3]], ref) < 1e-4
    single = cv.layercam(pair.session, pair.x, target=Each(TARGETS), taps="all").maps
    np.testing.assert_allclose(single, ours)


def test_the_variants_differ_from_gradcam_where_they_should(pair: Pair) -> None:
    """Guards the tolerance: HiResCAM is not Grad-CAM at layer3, nor LayerCAM HiResCAM.

    (At layer4, right before global average pooling and the linear head, the tap gradient is
    spatially constant and HiResCAM equals Grad-CAM exactly, as its paper notes.)
    """
    size, tap = (224, 224), "layer3"
    grad = pair.reference(pgc.GradCAM, [tap])
    hires = as_reference(
        cv.hirescam(pair.session, pair.x, target=Each(TARGETS), tap=tap).maps, size
    )
    layer = as_reference(
        cv.layercam(pair.session, pair.x, target=Each(TARGETS), tap=tap).maps, size
    )
    assert rel_max(hires, grad) > 1e-2
    assert rel_max(layer, hires) > 1e-2
