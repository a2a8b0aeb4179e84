"""Presentation helpers: percentile normalisation (hand values), channel reduction, gradient
images and heat maps on the original image."""

from __future__ import annotations

import numpy as np
import pytest

from gradtap.runtime.errors import OptionError
from gradtap.runtime.image.geometry import Geometry
from gradtap.runtime.present.postprocess import (
    gradient_image,
    heatmap,
    minmax,
    normalize,
    reduce_channels,
)


def test_normalize_clips_the_top_percentiles() -> None:
    values = np.arange(100, dtype=np.float32)  # 98th percentile (linear) = 97.02
    out = normalize(values)
    np.testing.assert_allclose(out[:97], values[:97] / 97.02, rtol=1e-5)
    assert out[98] == out[99] == 1.0 and out.dtype == np.float32
    np.testing.assert_allclose(normalize(values, outlier_perc=0), values / 99, rtol=1e-6)


def test_normalize_signed_and_absolute() -> None:
    values = np.array([-2, -1, 0, 1, 2], np.float32)
    np.testing.assert_allclose(normalize(values, outlier_perc=0, signed=True), values / 2)
    np.testing.assert_allclose(normalize(values, outlier_perc=0), np.abs(values) / 2)


def test_normalize_degenerate_inputs() -> None:
    np.testing.assert_array_equal(normalize(np.zeros((3, 3))), 0)
    sparse = np.zeros(1000, np.float32)
    sparse[0] = 5.0  # the 98th percentile is 0: fall back to the max
    assert normalize(sparse)[0] == 1.0
    with pytest.raises(OptionError, match="NaN or Inf"):
        normalize(np.array([1.0, np.nan]))
    with pytest.raises(OptionError, match=r"outlier_perc must lie in \[0, 100\)"):
        normalize(np.ones(3), outlier_perc=100)


def test_minmax() -> None:
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0])), [0, 1, 0.5])
    np.testing.assert_array_equal(minmax(np.full(4, 7.0)), 0)


def test_reduce_channels() -> None:
    g = np.zeros((3, 2, 2), np.float32)
    g[0, 0, 0], g[2, 0, 0], g[1, 1, 1] = 0.5, -2.0, 1.0
    np.testing.assert_array_equal(reduce_channels(g), [[2, 0], [0, 1]])
    assert reduce_channels(np.ones((4, 5))).shape == (4, 5)
    with pytest.raises(OptionError, match=r"got \(4, 2, 2\)"):
        reduce_channels(np.ones((4, 2, 2)))


def test_gradient_image_is_grey_at_zero() -> None:
    g = np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)
    img = gradient_image(g)
    assert img.shape == (8, 8, 3) and 0 <= img.min() and img.max() <= 1
    # 192 standard-normal values spread symmetrically around grey: their mean sits within
    # 0.01 of 0.5 for this seed (the bound is the sampling error, not a rounding allowance)
    np.testing.assert_allclose(img.mean(), 0.5, atol=0.01)
    np.testing.assert_array_equal(gradient_image(np.zeros((3, 2, 2))), 0.5)
    assert np.argmax(img.transpose(2, 0, 1)) == np.argmax(g)  # monotone


def test_heatmap_on_the_original_image() -> None:
    geo = Geometry(original_size=(40, 60), resized_size=(32, 48), crop=(0, 8, 32, 32))
    m = np.zeros((4, 4), np.float32)
    m[1:3, 1:3] = 1.0
    out = heatmap(m, geo)
    assert out.shape == (40, 60) and 0 <= out.min() and out.max() <= 1
    assert out[20, 30] > 0.9 and out[:, :8].max() == 0  # centre hot, cropped border cold
    assert heatmap(np.ones((3, 4, 4)), size=(8, 8)).shape == (8, 8)
