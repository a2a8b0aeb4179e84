"""The torch-free runtime against captum and pytorch-grad-cam on the same weights and inputs.

Both sides see RGB pixels in [0, 1]: the torch model is wrapped with its normalisation
(``pixel_space``), exactly what the exported graph does inside. Tolerances are relative to the
largest magnitude of the reference map: 1e-4 for the single-pass methods (a missing ReLU, a wrong
normalisation or upsampling is off by O(1)), a relative L2 error for Integrated Gradients, whose
path samples can sit on float32 ReLU kinks (torch float32 itself differs from float64 there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pytorch_grad_cam as pgc  # noqa: E402
from captum.attr import (  # noqa: E402
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    LayerGradCam,
    Occlusion,
    Saliency,
)
from captum.robust import FGSM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from gradtap.export.models.to_onnx import model_path  # noqa: E402
from gradtap.export.models.zoo import build, pixel_space, tap_module  # noqa: E402
from gradtap.runtime import methods  # noqa: E402
from gradtap.runtime.image.geometry import resize  # noqa: E402
from gradtap.runtime.methods import adversarial  # noqa: E402
from gradtap.runtime.methods import sampling as attribution  # noqa: E402
from gradtap.runtime.present.postprocess import minmax  # noqa: E402
from gradtap.runtime.session import ExplainSession  # noqa: E402
from tests.flips import assert_close_but_for_flips, assert_equal_but_for_flips  # noqa: E402

TARGETS = [3, 7]
MODELS = ["smallcnn", pytest.param("resnet18", marks=pytest.mark.slow)]


@dataclass(frozen=True)
class Pair:
    """The same weights as an ONNX explanation session and a pixel-space torch module."""

    session: ExplainSession
    net: torch.nn.Module
    layer: torch.nn.Module
    x: np.ndarray

    def xt(self) -> torch.Tensor:
        return torch.from_numpy(self.x.copy()).requires_grad_()

    def rows(self, maps: np.ndarray) -> np.ndarray:
        """Our rows for target=TARGETS: one target per image, as captum (image 0: 3, image 1: 7)."""
        assert len(maps) == len(TARGETS)
        return maps


@pytest.fixture(scope="module", params=MODELS)
def pair(request: pytest.FixtureRequest) -> Pair:
    name = request.param
    model, spec = build(name, "random")
    net = pixel_space(model, spec).eval()
    for module in net.modules():  # captum's ReLU hooks need out-of-place rectifiers
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    session = ExplainSession(model_path(name, "random", augmented=True))
    h, w = session.info.input_size
    x = np.random.default_rng(0).random((2, 3, h, w), dtype=np.float32)
    return Pair(session, net, tap_module(net.model, spec), x)


def rel_max(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_saliency(pair: Pair) -> None:
    ref = Saliency(pair.net).attribute(pair.xt(), target=TARGETS).detach().numpy()
    ours = methods.saliency(pair.session, pair.x, target=TARGETS).maps
    assert_close_but_for_flips(pair.rows(ours), ref.max(axis=1))


def test_guided_backprop(pair: Pair) -> None:
    ref = GuidedBackprop(pair.net).attribute(pair.xt(), target=TARGETS).detach().numpy()
    ours = methods.guided_backprop(pair.session, pair.x, target=TARGETS).maps
    assert_close_but_for_flips(pair.rows(ours), ref)


def test_deconvnet(pair: Pair) -> None:
    ref = Deconvolution(pair.net).attribute(pair.xt(), target=TARGETS).detach().numpy()
    ours = methods.deconvnet(pair.session, pair.x, target=TARGETS).maps
    assert_close_but_for_flips(pair.rows(ours), ref)


def test_gradcam_at_the_default_tap(pair: Pair) -> None:
    gc = LayerGradCam(pair.net, pair.layer)
    ref = gc.attribute(pair.xt(), target=TARGETS, relu_attributions=True).detach().numpy()[:, 0]
    ours = methods.gradcam(pair.session, pair.x, target=TARGETS).maps
    assert ours.shape[1:] == ref.shape[1:]
    assert_close_but_for_flips(pair.rows(ours), ref)


def test_guided_gradcam(pair: Pair) -> None:
    """captum upsamples the Grad-CAM map by nearest neighbour; so do we here."""
    ref = GuidedGradCam(pair.net, pair.layer).attribute(pair.xt(), target=TARGETS).detach().numpy()
    ours = methods.guided_gradcam(pair.session, pair.x, target=TARGETS, upsample="nearest").maps
    assert_close_but_for_flips(pair.rows(ours), ref)


def test_integrated_gradients(pair: Pair) -> None:
    ig = IntegratedGradients(pair.net)
    ref, delta = ig.attribute(pair.xt(), target=TARGETS, n_steps=16, return_convergence_delta=True)
    ours = attribution.integrated_gradients(pair.session, pair.x, target=TARGETS, steps=16)
    got = pair.rows(ours.extras["attributions"])
    ref = ref.detach().numpy()
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-2
    # captum's delta is sum(attr) - (S(x) - S(x0)), the same completeness error
    np.testing.assert_allclose(
        pair.rows(ours.extras["completeness_error"]),
        delta.detach().numpy(),
        # both are sums over 3x224x224 float32 attributions of opposite signs: cancellation
        # leaves ~1e-2 of the total |attribution| as float32 noise between the two libraries
        atol=2e-2 * np.abs(got).sum(axis=(1, 2, 3)).max(),
    )


def test_occlusion(pair: Pair) -> None:
    h, w = pair.session.info.input_size
    k, s = h // 4, h // 4
    ref = Occlusion(pair.net).attribute(
        pair.xt().detach(),
        target=TARGETS,
        sliding_window_shapes=(3, k, k),
        strides=(3, s, s),
        baselines=0.0,
        perturbations_per_eval=8,
    )
    ours = attribution.occlusion(pair.session, pair.x, target=TARGETS, window=k, stride=s).maps
    assert rel_max(pair.rows(ours), ref.detach().numpy()[:, 0]) < 1e-3


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm(pair: Pair, targeted: bool) -> None:
    """captum with cross-entropy on the logits and no gradient dead zone: the same formula."""
    fgsm = FGSM(
        pair.net,
        loss_func=torch.nn.CrossEntropyLoss(reduction="none"),
        lower_bound=0.0,
        upper_bound=1.0,
    )
    fgsm.zero_thresh = 0.0
    eps = 2 / 255
    ref = (
        fgsm.perturb(pair.xt(), eps, target=torch.tensor(TARGETS), targeted=targeted)
        .detach()
        .numpy()
    )
    kw = {"target": TARGETS} if targeted else {"label": TARGETS}
    ours = adversarial.fgsm(pair.session, pair.x, eps, **kw).x
    moved = np.abs(ours - pair.x) > 0
    assert moved.mean() > 0.9
    assert_equal_but_for_flips(ours, ref)


@pytest.mark.parametrize(
    ("cam_class", "method"),
    [(pgc.GradCAM, methods.gradcam), (pgc.GradCAMPlusPlus, methods.gradcampp)],
)
def test_pytorch_grad_cam(pair: Pair, cam_class: type, method) -> None:  # noqa: ANN001
    """pytorch-grad-cam returns min-max scaled maps resized to the input (then scaled again)."""
    with cam_class(model=pair.net, target_layers=[pair.layer]) as cam:
        ref = cam(
            input_tensor=torch.from_numpy(pair.x),
            targets=[ClassifierOutputTarget(t) for t in TARGETS],
        )
    size = pair.session.info.input_size
    ours = np.stack(
        [
            minmax(resize(minmax(m), size))
            for m in pair.rows(method(pair.session, pair.x, target=TARGETS).maps)
        ]
    )
    assert rel_max(ours, ref) < 1e-4
