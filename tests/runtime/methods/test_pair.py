"""PAIR saliency over an explanation graph: its Grad-CAM and Integrated Gradients through our
call_model_function against our Grad-CAM and torch autograd on the same weights; XRAI and
Blur IG run through it (Guided IG does not, on numpy 2)."""

from __future__ import annotations

import numpy as np
import pytest

sc = pytest.importorskip("saliency.core")
torch = pytest.importorskip("torch")

from gradtap.export.models.to_onnx import model_path  # noqa: E402
from gradtap.export.models.zoo import build, pixel_space  # noqa: E402
from gradtap.runtime import methods  # noqa: E402
from gradtap.runtime.methods import pair  # noqa: E402
from gradtap.runtime.methods.registry import METHODS  # noqa: E402
from gradtap.runtime.session import ExplainSession  # noqa: E402

TARGET = 3


@pytest.fixture(scope="module")
def session() -> ExplainSession:
    return ExplainSession(model_path("smallcnn", "random", augmented=True))


@pytest.fixture(scope="module")
def image(session: ExplainSession) -> np.ndarray:
    h, w = session.info.input_size
    return np.random.default_rng(0).random((h, w, 3), dtype=np.float32)  # channels last


def test_pair_gradcam_through_the_adapter_is_our_gradcam(session, image) -> None:  # noqa: ANN001
    f = pair.call_model_function(session, TARGET)
    theirs = sc.GradCam().GetMask(image, f, should_resize=False, three_dims=False)
    ours = methods.gradcam(session, image.transpose(2, 0, 1)[None], target=TARGET).maps[0]
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6 * np.abs(ours).max())


def test_pair_integrated_gradients_match_torch_autograd(session, image) -> None:  # noqa: ANN001
    steps = 8
    f = pair.call_model_function(session, TARGET)
    theirs = sc.IntegratedGradients().GetMask(
        image, f, x_baseline=np.zeros_like(image), x_steps=steps, batch_size=4
    )
    model, spec = build("smallcnn", "random")
    net = pixel_space(model, spec).eval()
    x = torch.from_numpy(image.transpose(2, 0, 1)[None].copy())
    points = torch.cat([a * x for a in np.linspace(0, 1, steps)]).requires_grad_()
    net(points)[:, TARGET].sum().backward()
    ref = (points.grad.mean(0) * x[0]).numpy().transpose(1, 2, 0)
    # a path point on a float32 ReLU kink may differ (see test_perturb.agree): relative L2
    assert np.linalg.norm(theirs - ref) / np.linalg.norm(ref) < 1e-2


@pytest.mark.slow  # XRAI segments the image at several scales (about a minute)
@pytest.mark.parametrize("name", ["xrai", "blur_ig"])
def test_pair_methods_run_as_registered_methods(session, image, name: str) -> None:  # noqa: ANN001
    options = {"xrai": {}, "blur_ig": {"steps": 4}}[name]
    x = np.stack([image, image[::-1]]).transpose(0, 3, 1, 2).copy()
    expl = METHODS[name](session, x, TARGET, **options)
    assert expl.maps.shape == (2, *session.info.input_size)
    assert np.isfinite(expl.maps).all() and np.abs(expl.maps).max() > 0


def test_pair_guided_ig_does_not_run_on_numpy_2(session, image) -> None:  # noqa: ANN001
    """PAIR 0.2.1's Guided IG passes np.quantile the removed ``interpolation`` keyword; when a
    PAIR release fixes it, this fails and ``guided_ig`` can be registered."""
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("numpy 1 still takes the keyword")
    f = pair.call_model_function(session, TARGET)
    with pytest.raises(TypeError, match="interpolation"):
        sc.GuidedIG().GetMask(image, f, x_baseline=np.zeros_like(image), x_steps=2)
