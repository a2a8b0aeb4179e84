"""The synthetic ground-truth dataset: determinism, exact masks, shapes and no colour shortcut."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import euler_number, regionprops

from gradtap.runtime.evaluate import synthetic
from gradtap.runtime.evaluate.synthetic import CLASS_NAMES, make_sample, make_split


def test_samples_are_deterministic_and_seeds_differ() -> None:
    a, b = make_sample(7, seed=3, size=48), make_sample(7, seed=3, size=48)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.box == b.box and a.label == b.label
    c = make_sample(7, seed=4, size=48)
    assert c.label == a.label
    assert not np.array_equal(a.image, c.image)


def test_sample_types_ranges_and_balanced_labels() -> None:
    split = make_split(24, seed=0, size=40)
    assert split.images.shape == (24, 40, 40, 3) and split.images.dtype == np.float32
    assert 0.0 <= split.images.min() and split.images.max() <= 1.0
    assert split.masks.shape == (24, 40, 40) and split.masks.dtype == np.bool_
    np.testing.assert_array_equal(split.labels, np.arange(24) % len(CLASS_NAMES))
    one = make_sample(5, 0, 40)
    np.testing.assert_array_equal(split.images[5], one.image)
    np.testing.assert_array_equal(split.boxes[5], one.box)
    assert len(CLASS_NAMES) >= 4 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)


def test_box_is_the_half_open_bounds_of_the_mask_and_inside_the_image() -> None:
    for sample in synthetic.iter_samples(30, seed=2, size=64):
        rows, cols = np.flatnonzero(sample.mask.any(1)), np.flatnonzero(sample.mask.any(0))
        assert sample.box == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        x0, y0, x1, y1 = sample.box
        assert 0 < x0 < x1 < 64 and 0 < y0 < y1 < 64  # the whole object is visible


def _shape_features(mask: np.ndarray) -> tuple[int, int, float]:
    """Connected components, Euler number (1 - holes) and solidity (area / convex hull area)."""
    _, components = ndimage.label(mask, structure=np.ones((3, 3)))
    props = regionprops(mask.astype(np.uint8))[0]
    return components, int(euler_number(mask, connectivity=2)), float(props.solidity)


@pytest.mark.parametrize("index", range(36))
def test_mask_has_the_topology_and_convexity_of_its_class(index: int) -> None:
    sample = make_sample(index, seed=5, size=96)
    components, euler, solidity = _shape_features(sample.mask)
    name = CLASS_NAMES[sample.label]
    assert components == 1, name
    assert euler == (0 if name == "ring" else 1), name
    if name in ("disc", "square", "triangle"):
        assert solidity > 0.88, (name, solidity)
    elif name in ("star", "cross"):
        assert solidity < 0.8, (name, solidity)


def test_object_pixels_are_one_flat_colour_under_noise_and_stand_out() -> None:
    for sample in synthetic.iter_samples(24, seed=6, size=64):
        inner = ndimage.binary_erosion(sample.mask, iterations=1)
        halo = ndimage.binary_dilation(sample.mask, iterations=3) & ~sample.mask
        obj = sample.image[inner]
        assert obj.std(axis=0).max() < 0.08
        assert np.abs(obj.mean(0) - sample.image[halo].mean(0)).mean() > 0.15


def _nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    half = len(labels) // 2
    centroids = np.stack([features[:half][labels[:half] == k].mean(0) for k in range(6)])
    dist = ((features[half:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((dist.argmin(1) == labels[half:]).mean())


def test_colour_does_not_give_the_class_away() -> None:
    split = make_split(600, seed=7, size=48)
    obj_colour = np.stack(
        [img[m].mean(0) for img, m in zip(split.images, split.masks, strict=True)]
    )
    img_colour = split.images.mean(axis=(1, 2))
    chance = 1 / len(CLASS_NAMES)
    assert _nearest_centroid_accuracy(obj_colour, split.labels) < chance + 0.08
    assert _nearest_centroid_accuracy(img_colour, split.labels) < chance + 0.08


def test_background_is_cluttered_outside_the_object() -> None:
    sample = make_sample(0, seed=8, size=64)
    outside = sample.image[~ndimage.binary_dilation(sample.mask, iterations=2)]
    assert outside.std(axis=0).min() > 0.03


def test_as_uint8_round_trips_within_half_a_level() -> None:
    img = make_sample(1, 0, 32).image
    q = synthetic.as_uint8(img)
    assert q.dtype == np.uint8
    assert np.abs(q / 255.0 - img).max() <= 0.5 / 255 + 1e-7


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_sample(-1), "index must be >= 0"),
        (lambda: make_sample(0, seed=-2), "seed must be >= 0"),
        (lambda: make_sample(0, size=16), "size must be >= 32"),
        (lambda: make_split(0), "at least 1 sample"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
