"""EfficientNet-Lite0 with its real ImageNet weights on scikit-image's photos, through the runtime.

Predictions must equal the torch model's on the same preprocessed input; FGSM at 2/255 lowers the
predicted class's probability on every photo; iterative fooling reaches a chosen class on every
photo; class visualisation with default settings lifts each target above 0.9 probability.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import skimage.data  # noqa: E402

from gradtap.export.models.to_onnx import model_path  # noqa: E402
from gradtap.export.models.zoo import build, pixel_space  # noqa: E402
from gradtap.runtime import Explainer, softmax  # noqa: E402

pytestmark = pytest.mark.slow

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")
WEIGHTS = "IMAGENET1K"


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(model_path("efficientnet_lite0", WEIGHTS, augmented=True))


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [getattr(skimage.data, name)() for name in PHOTOS]


def test_predictions_equal_the_torch_model(explainer: Explainer, photos: list[np.ndarray]) -> None:
    model, spec = build("efficientnet_lite0", WEIGHTS)
    net = pixel_space(model, spec).eval()
    x, _ = explainer.inputs(photos)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    ours = explainer.session.logits(x)
    assert ours.argmax(axis=1).tolist() == ref.argmax(axis=1).tolist()
    np.testing.assert_allclose(softmax(ours), softmax(ref), atol=1e-4)
    assert explainer.info.labels[int(ours[0].argmax())] == "espresso"


def test_fgsm_lowers_the_true_class_probability(
    explainer: Explainer, photos: list[np.ndarray]
) -> None:
    attack = explainer.fgsm(photos, 2 / 255)
    assert np.all(attack.prob("after") < attack.prob("before"))
    assert np.all(attack.linf <= 2 / 255 + 1e-6)


def test_fooling_images_reach_the_target(explainer: Explainer, photos: list[np.ndarray]) -> None:
    attack = explainer.fool(photos, "goldfish", max_steps=50)
    assert attack.success.all(), attack.steps
    goldfish = explainer.info.labels.index("goldfish")
    assert (attack.logits_after.argmax(axis=1) == goldfish).all()
    assert np.all(attack.linf <= attack.steps / 255 + 1e-6)  # step 1/255 per step at most


def test_class_visualisation_with_defaults(explainer: Explainer) -> None:
    vis = explainer.visualize(["goldfish", "espresso", "volcano"])
    assert vis.probs[:, 0].max() < 0.05
    assert np.all(vis.probs[:, -1] > 0.9), vis.probs[:, -1]
    assert vis.images.shape == (3, 224, 224, 3) and 0 <= vis.images.min() and vis.images.max() <= 1
