"""PAIR saliency over an explanation graph: its Grad-CAM and Integrated Gradients through our
call_model_function against our Grad-CAM and torch autograd on the same weights; XRAI and
Blur IG run through it; Guided IG through it and a numpy-2 shim, against torch autograd (on
the straight line) and against PAIR's own Guided IG fed torch-autograd gradients."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

sc = pytest.importorskip("saliency.core")
torch = pytest.importorskip("torch")

from gradtap.export.graph.augment import augment  # noqa: E402
from gradtap.export.models.to_onnx import model_path  # noqa: E402
from gradtap.export.models.zoo import build, pixel_space  # noqa: E402
from gradtap.runtime import methods  # noqa: E402
from gradtap.runtime.methods import pair  # noqa: E402
from gradtap.runtime.methods.registry import METHODS  # noqa: E402
from gradtap.runtime.session import ExplainSession  # noqa: E402
from tests.graphs import OPSET  # noqa: E402

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


def test_pair_guided_ig_alone_fails_exactly_where_numpy_dropped_the_keyword(
    session,
    image,  # noqa: ANN001
) -> None:
    """PAIR 0.2.1's Guided IG passes np.quantile the ``interpolation`` keyword numpy 2 removed:
    on numpy 2 it fails (when a PAIR release fixes it, this fails and pair.numpy2_guided_ig can
    go), on numpy 1 it runs as it is."""
    f = pair.call_model_function(session, TARGET)
    run = lambda: sc.GuidedIG().GetMask(image, f, x_baseline=np.zeros_like(image), x_steps=2)  # noqa: E731
    if int(np.__version__.split(".")[0]) >= 2:
        with pytest.raises(TypeError, match="interpolation"):
            run()
    else:
        assert np.isfinite(run()).all()


def _torch_grad(image: np.ndarray):  # noqa: ANN202
    model, spec = build("smallcnn", "random")
    net = pixel_space(model, spec).eval()

    def grad(points: np.ndarray) -> np.ndarray:  # [N, H, W, 3] float64 -> same
        t = torch.from_numpy(points.transpose(0, 3, 1, 2).astype(np.float32)).requires_grad_()
        net(t)[:, TARGET].sum().backward()
        return t.grad.numpy().transpose(0, 2, 3, 1).astype(np.float64)

    return grad


def test_guided_ig_on_the_straight_line_is_left_riemann_ig(session, image) -> None:  # noqa: ANN001
    """``max_dist = 0`` keeps the path on the straight line: a left Riemann sum of the gradient
    at ``k / steps`` (k = 0..steps-1) times the input, here from torch autograd."""
    steps = 8
    ours = METHODS["guided_ig"](
        session, image.transpose(2, 0, 1)[None].copy(), TARGET, steps=steps, max_dist=0.0
    ).maps[0]
    grads = _torch_grad(image)(np.stack([k / steps * image for k in range(steps)]))
    ref = (grads.mean(0) * image).sum(axis=2)
    # a path point on a float32 ReLU kink may differ (see test_perturb.agree): relative L2
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-2


def _neighbours(size: int = 8, classes: int = 3) -> tuple[ExplainSession, np.ndarray]:
    """logits_k = sum_i W_ik x_i x_r(i), r(i) the right neighbour (wrapping round each row).

    The gradient at x_i is ``W_i x_r(i) + W_l(i) x_l(i)``: two products and one sum, which numpy
    and the graph round alike, and not separable, so the path matters.
    """
    w = np.random.default_rng(5).normal(size=(3 * size * size, classes)).astype(np.float32)
    ints = {"starts_1": [1], "ends_max": [size], "starts_0": [0], "ends_1": [1], "axis": [3]}
    nodes = [
        helper.make_node("Slice", ["input", "starts_1", "ends_max", "axis"], ["right"]),
        helper.make_node("Slice", ["input", "starts_0", "ends_1", "axis"], ["first"]),
        helper.make_node("Concat", ["right", "first"], ["rolled"], axis=3),
        helper.make_node("Mul", ["input", "rolled"], ["pairs"], name="pairs"),
        helper.make_node("Flatten", ["pairs"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "w"], ["logits"], name="linear"),
    ]
    graph = helper.make_graph(
        nodes,
        "neighbours",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(w, "w")]
        + [numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in ints.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return ExplainSession(augment(model, taps={"pairs": "pairs"})), w


def test_guided_ig_through_the_adapter_is_pairs_guided_ig() -> None:
    """The guided path (default fraction and max_dist) through the session equals PAIR's own
    implementation fed the analytic gradient.

    Guided IG moves the pixels of smallest |gradient| first: gradients that differ in the last
    bits reorder near-ties and change the path (on the custom CNN, torch's and the graph's
    gradients agree to 5e-7 and the maps still differ by 24 %). The quadratic model's gradients
    are bit-identical on both sides, so the maps must agree to float32 rounding.
    """
    from saliency.core.guided_ig import guided_ig_impl

    session, w = _neighbours()
    image = np.random.default_rng(6).random((8, 8, 3), dtype=np.float32)
    t, steps = 1, 16

    def grad(p: np.ndarray) -> np.ndarray:  # W_i x_r(i) + W_l(i) x_l(i), channels last
        x = p.astype(np.float32).transpose(2, 0, 1)
        wt = w[:, t].reshape(3, 8, 8)
        g = wt * np.roll(x, -1, axis=2) + np.roll(wt * x, 1, axis=2)
        return g.transpose(1, 2, 0).astype(np.float64)

    with pair.numpy2_guided_ig():
        ref = guided_ig_impl(image, np.zeros_like(image), grad, steps=steps).sum(axis=2)
    x = image.transpose(2, 0, 1)[None].copy()
    ours = METHODS["guided_ig"](session, x, t, steps=steps).maps[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    straight = pair.guided_ig(session, x, t, steps=steps, max_dist=0.0).maps[0]
    assert np.linalg.norm(straight - ref) / np.linalg.norm(ref) > 1e-2  # guided: 3 % apart
    import saliency.core.guided_ig as module

    assert module.np is np  # the shim lives only inside the block
