"""SmoothGrad, Integrated Gradients and occlusion: exact answers on a linear model, completeness on
a nonlinear one, quadrature exactness, and chunking that does not change results (no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from gradtap.runtime.errors import OptionError
from gradtap.runtime.methods import sampling as a
from gradtap.runtime.methods.gradient import saliency
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import Each
from tests.runtime_graphs import linear_model, tiny_model

RNG = np.random.default_rng(5)
W = RNG.normal(size=(3, 3 * 6 * 6)).astype(np.float32)
W3 = W.reshape(3, 3, 6, 6)


@pytest.fixture(scope="module")
def linear() -> ExplainSession:
    return ExplainSession(linear_model(W))


@pytest.fixture(scope="module")
def tiny() -> ExplainSession:
    return ExplainSession(tiny_model(), batch_size=8)


@pytest.mark.parametrize("rule", a.IG_RULES)
def test_quadrature_integrates_polynomials(rule: str) -> None:
    alphas, weights = a.quadrature(rule, 8)
    assert alphas.min() >= 0 and alphas.max() <= 1
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    degree = (
        15
        if rule == "gausslegendre"
        else (1 if rule in ("riemann_trapezoid", "riemann_middle") else 0)
    )
    for k in range(degree + 1):
        np.testing.assert_allclose(
            (weights * alphas.astype(np.float64) ** k).sum(), 1 / (k + 1), rtol=1e-5
        )
    with pytest.raises(OptionError, match="integration rule 'simpson' unknown"):
        a.quadrature("simpson", 8)


def test_integrated_gradients_on_a_linear_model_is_exact(linear: ExplainSession) -> None:
    x = RNG.random((2, 3, 6, 6), dtype=np.float32)
    e = a.integrated_gradients(linear, x, target=Each([0, 2]), baseline="white", steps=4)
    expected = (x - 1.0)[[0, 0, 1, 1]] * W3[[0, 2, 0, 2]]
    np.testing.assert_allclose(e.extras["attributions"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.maps, expected.sum(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(e.extras["completeness_error"], 0, atol=1e-3)


def test_integrated_gradients_completeness_on_a_nonlinear_model(tiny: ExplainSession) -> None:
    x = RNG.random((2, 3, 16, 16), dtype=np.float32)
    coarse = a.integrated_gradients(tiny, x, target=0, steps=2, rule="riemann_left")
    fine = a.integrated_gradients(tiny, x, target=0, steps=64)
    delta = fine.extras["delta"]
    logits, base = tiny.logits(x)[:, 0], tiny.logits(np.zeros_like(x))[:, 0]
    np.testing.assert_allclose(delta, logits - base, rtol=1e-5)
    assert np.all(np.abs(fine.extras["completeness_error"]) < 0.02 * np.abs(delta))
    assert (
        np.abs(coarse.extras["completeness_error"]).min()
        > 10 * np.abs(fine.extras["completeness_error"]).max()
    )


def test_integrated_gradients_baselines(linear: ExplainSession) -> None:
    x = RNG.random((2, 3, 6, 6), dtype=np.float32)
    per_image = RNG.random((2, 3, 6, 6), dtype=np.float32)
    e = a.integrated_gradients(linear, x, target=Each([0, 1]), baseline=per_image, steps=2)
    expected = (x - per_image)[[0, 0, 1, 1]] * W3[[0, 1, 0, 1]]
    np.testing.assert_allclose(e.extras["attributions"], expected, rtol=1e-5, atol=1e-6)
    gray = a.integrated_gradients(linear, x, target=0, baseline=0.5, steps=2)
    np.testing.assert_allclose(gray.extras["attributions"], (x - 0.5) * W3[0], rtol=1e-5, atol=1e-6)
    for name in ("black", "blur", "uniform"):
        err = a.integrated_gradients(linear, x, target=0, baseline=name, steps=2).extras[
            "completeness_error"
        ]
        np.testing.assert_allclose(err, 0, atol=1e-3)
    with pytest.raises(OptionError, match="baseline 'grey' unknown"):
        a.integrated_gradients(linear, x, baseline="grey")
    with pytest.raises(OptionError, match="does not broadcast"):
        a.integrated_gradients(linear, x, baseline=np.zeros((5, 5), np.float32))
    with pytest.raises(OptionError, match=r"baseline pixels must lie in \[0, 1\]"):
        a.integrated_gradients(linear, x, baseline=2.0)
    with pytest.raises(OptionError, match="steps must be an int >= 1"):
        a.integrated_gradients(linear, x, steps=0)


def test_smoothgrad_without_noise_is_saliency(tiny: ExplainSession) -> None:
    x = RNG.random((2, 3, 16, 16), dtype=np.float32)
    sg = a.smoothgrad(tiny, x, target=2, samples=3, noise=0.0)
    np.testing.assert_allclose(sg.maps, saliency(tiny, x, target=2).maps, rtol=1e-5, atol=1e-9)


def test_smoothgrad_averages_over_noise(tiny: ExplainSession, linear: ExplainSession) -> None:
    x = RNG.random((1, 3, 6, 6), dtype=np.float32)
    e = a.smoothgrad(linear, x, target=1, samples=5, noise=0.5)  # gradient is W whatever the noise
    np.testing.assert_allclose(e.maps[0], np.abs(W3[1]).max(axis=0), rtol=1e-5)
    x = RNG.random((2, 3, 16, 16), dtype=np.float32)
    small = ExplainSession(tiny_model(), batch_size=1)
    one, many = a.smoothgrad(small, x, samples=6, seed=3), a.smoothgrad(tiny, x, samples=6, seed=3)
    np.testing.assert_allclose(one.maps, many.maps, rtol=1e-5, atol=1e-8)  # chunking is invisible
    other = a.smoothgrad(tiny, x, samples=6, seed=4)
    assert not np.allclose(other.maps, many.maps)


def brute_occlusion(x: np.ndarray, w: np.ndarray, k: int, s: int, base: float) -> np.ndarray:
    """Mean logit drop over the windows covering each pixel, model written out in numpy."""
    _, h, wd = x.shape
    total, count = np.zeros((h, wd)), np.zeros((h, wd))
    score = (w * x).sum()
    for i in range(0, h - k + 1, s):
        for j in range(0, wd - k + 1, s):
            occluded = x.copy()
            occluded[:, i : i + k, j : j + k] = base
            total[i : i + k, j : j + k] += score - (w * occluded).sum()
            count[i : i + k, j : j + k] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0)


@pytest.mark.parametrize(("k", "s"), [(2, 2), (3, 1), (4, 3)])
def test_occlusion_matches_brute_force(linear: ExplainSession, k: int, s: int) -> None:
    x = RNG.random((2, 3, 6, 6), dtype=np.float32)
    e = a.occlusion(linear, x, target=Each([0, 2]), window=k, stride=s, baseline=0.3)
    for r, (i, t) in enumerate(zip(e.image_index, e.target, strict=True)):
        np.testing.assert_allclose(
            e.maps[r], brute_occlusion(x[i], W3[t], k, s, 0.3), rtol=1e-4, atol=1e-5
        )


def test_occlusion_errors(linear: ExplainSession) -> None:
    x = RNG.random((1, 3, 6, 6), dtype=np.float32)
    with pytest.raises(OptionError, match=r"window \(7, 7\) larger than the input \(6, 6\)"):
        a.occlusion(linear, x, window=7)
    with pytest.raises(OptionError, match="stride must be a positive int"):
        a.occlusion(linear, x, window=2, stride=0)
