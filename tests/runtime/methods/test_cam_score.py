"""Score-CAM and Ablation-CAM against pytorch-grad-cam on the same weights, and ``tap_scale``.

The custom CNN (128 tap channels) keeps pytorch-grad-cam's one-forward-pass-per-channel loops
short. Maps are compared after pytorch-grad-cam's rectify, min-max and resize steps with 1e-4 of
the range: a missing softmax (Score-CAM), an unnormalised mask or a drop not divided by the
score (Ablation-CAM) moves them by far more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pytorch_grad_cam as pgc  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from gradtap.export.graph.augment import augment, load_model  # noqa: E402
from gradtap.export.models.to_onnx import model_path  # noqa: E402
from gradtap.export.models.zoo import build, pixel_space, tap_module  # noqa: E402
from gradtap.runtime import contract as c  # noqa: E402
from gradtap.runtime.errors import OptionError  # noqa: E402
from gradtap.runtime.image.geometry import resize  # noqa: E402
from gradtap.runtime.methods import cam_score  # noqa: E402
from gradtap.runtime.present.postprocess import minmax  # noqa: E402
from gradtap.runtime.session import ExplainSession  # noqa: E402
from gradtap.runtime.targets import Each  # noqa: E402

TARGETS = [3, 7]


@dataclass(frozen=True)
class Pair:
    session: ExplainSession
    net: torch.nn.Module
    layer: torch.nn.Module
    x: np.ndarray

    def reference(self, cam_class: type, **kw: object) -> np.ndarray:
        with cam_class(model=self.net, target_layers=[self.layer], **kw) as cam:
            return cam(  # the image once per target, as our rows are
                input_tensor=torch.from_numpy(np.repeat(self.x, len(TARGETS), axis=0)),
                targets=[ClassifierOutputTarget(t) for t in TARGETS],
            )


@pytest.fixture(scope="module")
def pair() -> Pair:
    model, spec = build("smallcnn", "random")
    net = pixel_space(model, spec).eval()
    forward = load_model(model_path("smallcnn", "random"))  # tap_scale only on request
    session = ExplainSession(augment(forward, interventions=True), batch_size=32)
    h, w = session.info.input_size
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    return Pair(session, net, tap_module(net.model, spec), x)


def as_reference(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack([minmax(resize(minmax(m), size)) for m in maps])


def rel_max(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_tap_scale_ones_is_the_plain_model_and_zero_ablates(pair: Pair) -> None:
    s = pair.session
    assert s.tap_channels == 128 and c.TAP_SCALE in c.INPUTS
    x = np.concatenate([pair.x, pair.x[:, :, ::-1]])
    seed = np.zeros((2, s.info.num_classes), np.float32)
    seed[:, 3] = 1
    plain = s.run(x, seed, taps=[s.info.tap(None)])
    ones = s.run(x, seed, tap_scale=np.ones((2, 128), np.float32))
    np.testing.assert_array_equal(plain.logits, ones.logits)
    np.testing.assert_array_equal(plain.grad_input, ones.grad_input)
    scale = np.ones((2, 128), np.float32)
    scale[0, :64] = 0  # torch: the same channels zeroed at the tap module's output
    hook = pair.layer.register_forward_hook(
        lambda _m, _i, out: out * torch.from_numpy(scale)[:, :, None, None]
    )
    try:
        ref = pair.net(torch.from_numpy(x)).detach().numpy()
    finally:
        hook.remove()
    got = s.run(x, None, grad_input=False, tap_scale=scale)
    np.testing.assert_allclose(got.logits, ref, atol=1e-5 * np.abs(ref).max())
    assert np.abs(got.logits[0] - plain.logits[0]).max() > 1e-3
    np.testing.assert_array_equal(got.logits[1], plain.logits[1])
    with pytest.raises(OptionError, match="tap_scale"):
        s.run(x, tap_scale=np.ones((2, 3), np.float32))


def test_intervene_broadcasts_one_image_over_many_scalings(pair: Pair) -> None:
    s = pair.session
    scale = np.random.default_rng(2).random((5, 128)).astype(np.float32)
    rows = s.run(np.repeat(pair.x, 5, axis=0), None, grad_input=False, tap_scale=scale).logits
    np.testing.assert_allclose(s.intervene(pair.x, scale), rows, rtol=1e-5, atol=1e-6)
    with pytest.raises(OptionError, match="one image"):
        s.intervene(np.repeat(pair.x, 2, axis=0), scale)


@pytest.mark.slow
def test_scorecam(pair: Pair) -> None:
    s = pair.session
    acts = s.run(pair.x, None, grad_input=False, taps=[s.info.tap(None)], tap_grads=False)
    flat = acts.taps[s.info.tap(None)][0].reshape(128, -1)
    assert 0 < (~flat.any(axis=1)).sum() < 128  # all-zero channels: scored by one black image
    ref = pair.reference(pgc.ScoreCAM)
    ours = cam_score.scorecam(pair.session, pair.x, target=Each(TARGETS)).maps
    assert rel_max(as_reference(ours, pair.x.shape[2:]), ref) < 1e-4


@pytest.mark.slow
def test_scorecam_top_n(pair: Pair) -> None:
    """top_n >= C is the full Score-CAM; a smaller top_n weighs only the chosen channels."""
    full = cam_score.scorecam(pair.session, pair.x, target=3).maps
    same = cam_score.scorecam(pair.session, pair.x, target=3, top_n=128).maps
    np.testing.assert_array_equal(full, same)
    fast = cam_score.scorecam(pair.session, pair.x, target=3, top_n=16).maps
    assert fast.shape == full.shape and np.isfinite(fast).all() and fast.max() > 0
    with pytest.raises(OptionError, match="top_n"):
        cam_score.scorecam(pair.session, pair.x, top_n=0)


def test_ablationcam(pair: Pair) -> None:
    ref = pair.reference(pgc.AblationCAM, batch_size=32)
    ours = cam_score.ablationcam(pair.session, pair.x, target=Each(TARGETS)).maps
    assert rel_max(as_reference(ours, pair.x.shape[2:]), ref) < 1e-4


def test_upsampling_matches_torch_align_corners() -> None:
    a = np.random.default_rng(1).random((4, 5, 7), dtype=np.float32)
    up = torch.nn.UpsamplingBilinear2d(size=(13, 20))(torch.from_numpy(a)[None])[0].numpy()
    ours = np.einsum(
        "Hh,khw,Ww->kHW", cam_score.upsample_matrix(13, 5), a, cam_score.upsample_matrix(20, 7)
    )
    np.testing.assert_allclose(ours, up, atol=1e-6)
