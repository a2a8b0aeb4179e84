"""Class-model visualisation: ascent on a linear model (known gradient), settings and errors."""

from __future__ import annotations

import numpy as np
import pytest

from gradtap.runtime.errors import OptionError, TargetError
from gradtap.runtime.methods.visualize import AscentConfig, class_visualization
from gradtap.runtime.session import ExplainSession
from tests.runtime_graphs import LABELS, linear_model, tiny_model

RNG = np.random.default_rng(4)
W = RNG.normal(size=(3, 3 * 6 * 6)).astype(np.float32)


@pytest.fixture(scope="module")
def linear() -> ExplainSession:
    return ExplainSession(linear_model(W))


def test_ascent_raises_each_target_logit(linear: ExplainSession) -> None:
    seen: list[tuple[int, np.ndarray, np.ndarray]] = []
    cfg = AscentConfig(steps=20, jitter=0, blur_every=0)
    vis = class_visualization(
        linear, [0, 2], init="zeros", config=cfg, callback=lambda *a: seen.append(a)
    )
    assert vis.logits.shape == vis.probs.shape == (2, 21)
    np.testing.assert_allclose(vis.logits[:, 0], 0.0, atol=1e-6)  # W . black image
    assert np.all(np.diff(vis.logits, axis=1) > 0)  # a linear logit only goes up
    final = linear.logits(vis.images.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(vis.logits[:, -1], final[[0, 1], [0, 2]], rtol=1e-5)
    assert [s for s, _, _ in seen] == list(range(20))
    np.testing.assert_allclose(seen[0][1], vis.logits[:, 0])
    assert vis.images.min() >= 0 and vis.images.max() <= 1 and vis.target.tolist() == [0, 2]


def test_ascent_follows_the_sign_of_the_weights(linear: ExplainSession) -> None:
    cfg = AscentConfig(steps=60, lr=0.05, l2=0.0, jitter=0, blur_every=0)
    vis = class_visualization(linear, 1, init="mean", config=cfg)
    img = vis.images[0].transpose(2, 0, 1)
    w = W[1].reshape(3, 6, 6)
    assert np.all(img[w > 0.2] > 0.5) and np.all(img[w < -0.2] < 0.5)


def test_ascent_on_a_cnn_with_all_regularisers() -> None:
    s = ExplainSession(tiny_model())
    vis = class_visualization(s, "dog house", init="noise", config=AscentConfig(steps=40, lr=0.05))
    assert vis.logits[0, -1] > vis.logits[0, 0]
    again = class_visualization(
        s, "dog house", init="noise", config=AscentConfig(steps=40, lr=0.05)
    )
    np.testing.assert_array_equal(vis.images, again.images)  # seeded jitter and noise


def test_image_init(linear: ExplainSession) -> None:
    start = RNG.random((6, 6, 3), dtype=np.float32)
    vis = class_visualization(linear, 0, init=start, config=AscentConfig(steps=1, jitter=0))
    expected = linear.logits(start.transpose(2, 0, 1)[None])[0, 0]
    np.testing.assert_allclose(vis.logits[0, 0], expected, rtol=1e-5)
    with pytest.raises(OptionError, match=r"init image must be RGB \[6, 6, 3\]"):
        class_visualization(linear, 0, init=np.zeros((5, 5, 3), np.float32))
    with pytest.raises(
        OptionError, match=r"init 'black' unknown; valid: \['mean', 'zeros', 'noise'\]"
    ):
        class_visualization(linear, 0, init="black")


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (AscentConfig(steps=0), "steps must be >= 1"),
        (AscentConfig(lr=0), "lr=0 must be > 0"),
        (AscentConfig(l2=1.0), r"l2=1.0 must lie in \[0, 1\)"),
        (AscentConfig(blur_sigma=-1), "blur_sigma=-1 must be >= 0"),
        (AscentConfig(jitter=-2), "jitter=-2"),
    ],
)
def test_settings_are_checked(linear: ExplainSession, cfg: AscentConfig, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        class_visualization(linear, 0, config=cfg)


def test_unknown_class() -> None:
    s = ExplainSession(tiny_model())
    with pytest.raises(TargetError, match="unknown class name 'zebra'"):
        class_visualization(s, "zebra")
    assert s.info.labels == LABELS
