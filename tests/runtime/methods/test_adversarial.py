"""FGSM and iterative fooling on a linear model (gradients by hand) and the tiny CNN (no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from gradtap.runtime.errors import OptionError, TargetError
from gradtap.runtime.methods.adversarial import fgsm, fool
from gradtap.runtime.session import ExplainSession
from tests.runtime_graphs import linear_model, tiny_model

RNG = np.random.default_rng(2)
W = (RNG.normal(size=(3, 3 * 6 * 6)) * 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def linear() -> ExplainSession:
    return ExplainSession(linear_model(W))


def ce_grad(x: np.ndarray, label: np.ndarray) -> np.ndarray:
    """d CE(W x, label) / dx for the linear model, by hand: (softmax - onehot) @ W."""
    z = x.reshape(len(x), -1).astype(np.float64) @ W.T.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(x)), label] -= 1
    return (p @ W).reshape(x.shape)


def cross_entropy(logits: np.ndarray, label: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), label]


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_is_the_signed_cross_entropy_gradient(linear: ExplainSession, targeted: bool) -> None:
    x = RNG.random((3, 3, 6, 6), dtype=np.float32)
    cls = np.array([0, 2, 1])
    eps = 4 / 255
    attack = fgsm(linear, x, eps, **({"target": cls} if targeted else {"label": cls}))
    step = np.sign(ce_grad(x, cls)) * (-1 if targeted else 1)
    np.testing.assert_allclose(attack.x, np.clip(x + eps * step, 0, 1), atol=1e-6)
    assert attack.targeted is targeted and attack.cls.tolist() == cls.tolist()
    np.testing.assert_allclose(attack.logits_after, linear.logits(attack.x), rtol=1e-6)
    np.testing.assert_allclose(attack.linf, np.abs(attack.x - x).max(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(
        attack.l2, np.sqrt(((attack.x - x) ** 2).sum(axis=(1, 2, 3))), rtol=1e-5
    )


def test_fgsm_raises_the_loss_of_the_predicted_class() -> None:
    s = ExplainSession(tiny_model())
    x = RNG.random((4, 3, 16, 16), dtype=np.float32)
    attack = fgsm(s, x, 1 / 255)
    label = attack.logits_before.argmax(axis=1)
    assert attack.cls.tolist() == label.tolist()
    assert np.all(
        cross_entropy(attack.logits_after, label) > cross_entropy(attack.logits_before, label)
    )
    assert np.all(attack.prob("after") < attack.prob("before"))


def test_fgsm_keeps_pixels_valid(linear: ExplainSession) -> None:
    x = np.where(RNG.random((2, 3, 6, 6)) > 0.5, 1.0, 0.0).astype(np.float32)
    attack = fgsm(linear, x, 0.5)
    assert attack.x.min() >= 0 and attack.x.max() <= 1
    np.testing.assert_array_equal(fgsm(linear, x, 0.0).x, x)
    with pytest.raises(OptionError, match=r"eps must lie in \[0, 1\] pixel units, got -0.1"):
        fgsm(linear, x, -0.1)
    with pytest.raises(TargetError, match=r"one per image \(2\), got 3"):
        fgsm(linear, x, 0.1, label=[0, 1, 2])


def test_fool_stops_as_soon_as_the_target_is_predicted(linear: ExplainSession) -> None:
    x = RNG.random((3, 3, 6, 6), dtype=np.float32)
    target = linear.logits(x).argmin(axis=1)  # the least likely class: several steps away
    attack = fool(linear, x, target.tolist(), step=1 / 255, max_steps=200)
    assert attack.success.all() and (attack.logits_after.argmax(axis=1) == target).all()
    assert attack.steps.min() > 1
    for i in range(3):  # one step fewer does not reach it: the loop stopped at the first success
        fewer = fool(
            linear, x[i : i + 1], int(target[i]), step=1 / 255, max_steps=int(attack.steps[i]) - 1
        )
        assert not fewer.success[0]
    np.testing.assert_allclose(attack.linf, attack.steps / 255, atol=1e-5)  # on a linear model


def test_fool_respects_the_budget(linear: ExplainSession) -> None:
    x = RNG.random((2, 3, 6, 6), dtype=np.float32)
    target = (linear.logits(x).argmax(axis=1) + 1) % 3
    attack = fool(linear, x, target.tolist(), step=1 / 255, eps=2 / 255, max_steps=10)
    assert np.all(attack.linf <= 2 / 255 + 1e-6) and attack.x.min() >= 0 and attack.x.max() <= 1
    already = fool(linear, x, linear.logits(x).argmax(axis=1).tolist())
    assert already.steps.tolist() == [0, 0] and np.array_equal(already.x, x)


def test_fool_errors(linear: ExplainSession) -> None:
    x = RNG.random((1, 3, 6, 6), dtype=np.float32)
    with pytest.raises(TargetError, match="fool needs a target class"):
        fool(linear, x, None)
    with pytest.raises(OptionError, match=r"step and eps must lie in \(0, 1\]"):
        fool(linear, x, 0, step=0)
    with pytest.raises(OptionError, match="max_steps must be an int >= 1"):
        fool(linear, x, 0, max_steps=0)


def test_fgsm_is_one_fused_call_and_computes_logits_after_on_first_use(
    linear: ExplainSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []
    real = linear.run
    monkeypatch.setattr(linear, "run", lambda *a, **k: calls.append(True) or real(*a, **k))
    x = RNG.random((3, 3, 6, 6), dtype=np.float32)
    attack = fgsm(linear, x, 0.05)  # no label: the predicted class, seeded in the graph
    assert len(calls) == 1
    np.testing.assert_array_equal(attack.cls, attack.logits_before.argmax(axis=1))
    np.testing.assert_allclose(
        attack.x, np.clip(x + 0.05 * np.sign(ce_grad(x, attack.cls)), 0, 1), atol=1e-6
    )
    after = attack.logits_after
    assert len(calls) == 2 and attack.logits_after is after  # computed once, then kept
