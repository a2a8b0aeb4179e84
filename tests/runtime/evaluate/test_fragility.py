"""Fragility: top-k intersection by hand, perturbations that respect the ball and the class, and
an attack that beats random noise on the shipped CNN but cannot move a linear model's map."""

from __future__ import annotations

import numpy as np
import pytest

from gradtap.runtime.evaluate import fragility as F
from gradtap.runtime.evaluate.data import synthetic_set
from gradtap.runtime.session import ExplainSession
from tests import REPO
from tests.runtime_graphs import linear_model

SHIPPED = REPO / "models" / "smallcnn.gradtap.onnx"


def test_topk_intersection_by_hand() -> None:
    a = np.array([[5.0, 4.0, 3.0], [2.0, 1.0, 0.0]])
    b = np.array([[0.0, 4.0, 3.0], [2.0, 1.0, 5.0]])  # top-2 of a: {0, 1}; of b: {5, 1}
    assert F.topk_intersection(a, a, 2) == 1.0
    assert F.topk_intersection(a, b, 2) == 0.5
    assert F.topk_intersection(a, b, 3) == pytest.approx(2 / 3)  # {0,1,2} vs {5,1,2}
    assert F.topk_intersection(a, -a, 3) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        F.topk_intersection(a, b, 7)


@pytest.fixture(scope="module")
def shipped() -> tuple[ExplainSession, np.ndarray, np.ndarray]:
    session = ExplainSession(SHIPPED)
    data = synthetic_set(session.info, 3)
    return session, session.check_input(data.batch), np.array([c[0] for c in data.classes])


def test_random_perturbations_stay_in_the_ball_and_keep_the_class(shipped) -> None:  # noqa: ANN001
    session, x, _ = shipped
    eps = 8 / 255
    xp, kept = F._random_perturbed(session, x, eps, np.random.default_rng(0), tries=4)
    assert kept.all()
    assert np.abs(xp - x).max() <= eps + 1e-6 and xp.min() >= 0.0 and xp.max() <= 1.0
    assert np.abs(xp - x).mean() > eps / 4  # it did move (uniform noise: mean |d| ~ eps / 2)
    np.testing.assert_array_equal(session.logits(xp).argmax(1), session.logits(x).argmax(1))


def test_the_topk_attack_beats_random_noise_and_keeps_the_class(shipped) -> None:  # noqa: ANN001
    session, x, t = shipped
    eps = 8 / 255
    adv, moved = F.topk_attack(session, x, t, "saliency", eps, k=82, iterations=4)
    assert moved.all()
    assert np.abs(adv - x).max() <= eps + 1e-6 and adv.min() >= 0.0 and adv.max() <= 1.0
    np.testing.assert_array_equal(session.logits(adv).argmax(1), session.logits(x).argmax(1))
    curves = {
        (c.method, c.kind): c
        for c in F.fragility(session, x, t, ["saliency"], eps=[eps], iterations=4)
    }
    attacked = curves[("saliency", "adversarial")].intersection[0]
    noisy = curves[("saliency", "random")].intersection[0]
    # measured: about 0.1-0.3 attacked against 0.6-0.7 for noise on these images
    assert attacked < noisy - 0.2, (attacked, noisy)


def test_a_linear_models_map_cannot_be_attacked() -> None:
    # the gradient of a linear model does not depend on x: H = 0, every surrogate step is 0
    w = np.random.default_rng(0).normal(size=(2, 3, 6, 6)).astype(np.float32)
    session = ExplainSession(linear_model(w))
    x = np.random.default_rng(1).uniform(0.3, 0.7, (2, 3, 6, 6)).astype(np.float32)
    t = session.logits(x).argmax(1)
    curves = F.fragility(session, x, t, ["saliency"], eps=[0.05, 0.2], k_fraction=0.25)
    for c in curves:
        assert c.intersection == (1.0, 1.0), c
