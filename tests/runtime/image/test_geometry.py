"""Preprocessing geometry: resize policies, centre crop, and mapping maps back (round trips)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradtap.runtime.errors import ImageError
from gradtap.runtime.image.geometry import Geometry, geometry_for, to_batch, to_input, to_original
from gradtap.runtime.info import ModelInfo


def info(policy: str = "shorter_side_center_crop", size: int = 256, hw=(224, 224)) -> ModelInfo:
    return ModelInfo(
        name="m",
        labels=("a", "b"),
        input_size=hw,
        resize_policy=policy,
        resize_size=size if policy != "stretch" else None,
        mean=None,
        std=None,
        taps=(),
        default_tap=None,
        relu_rules=("plain",),
    )


def ramp(h: int, w: int) -> np.ndarray:
    """R encodes the column, G the row (pixel centres, in [0, 1]), B is constant."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([(xx + 0.5) / w, (yy + 0.5) / h, np.full_like(xx, 0.25)], axis=2)


def test_geometry_shorter_side_center_crop() -> None:
    """Hand values: 480x640 -> 256x341 (shorter side 256), crop 224 at (16, 58)."""
    assert geometry_for((480, 640), info()) == Geometry((480, 640), (256, 341), (16, 58, 224, 224))
    assert geometry_for((640, 480), info()) == Geometry((640, 480), (341, 256), (58, 16, 224, 224))
    assert geometry_for((10, 10), info()) == Geometry((10, 10), (256, 256), (16, 16, 224, 224))


def test_geometry_stretch() -> None:
    geo = geometry_for((480, 640), info("stretch", hw=(32, 48)))
    assert geo == Geometry((480, 640), (32, 48), (0, 0, 32, 48))


def test_to_input_samples_the_right_place() -> None:
    """Each input pixel holds the colour of the original location it maps to."""
    h, w = 300, 500
    x, geo = to_input(ramp(h, w), info())
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    top, left, _, _ = geo.crop
    scale = geo.resized_size[0] / h
    cols = (np.arange(224) + left + 0.5) / scale  # original x coordinate of each input column
    rows = (np.arange(224) + top + 0.5) / scale
    np.testing.assert_allclose(x[0, 0, 112, 2:-2], cols[2:-2] / w, atol=2e-3)
    np.testing.assert_allclose(x[0, 1, 2:-2, 112], rows[2:-2] / h, atol=2e-3)
    np.testing.assert_allclose(x[0, 2], 0.25, atol=1e-6)


@pytest.mark.parametrize("policy", ["shorter_side_center_crop", "stretch"])
@pytest.mark.parametrize("size", [(300, 500), (500, 300), (100, 100), (57, 83)])
def test_round_trip_recovers_the_original(policy: str, size: tuple[int, int]) -> None:
    img = ramp(*size)
    x, geo = to_input(img, info(policy))
    back = to_original(x[0].transpose(1, 2, 0), geo, fill=-1.0)
    assert back.shape == img.shape
    seen = back[..., 2] > -0.5  # the region the crop covered
    if policy == "stretch":
        assert seen.all()
    else:
        h, w = size
        expected = min(h, w) ** 2 * 224 / 256 * 224 / 256 if h != w else h * w * (224 / 256) ** 2
        assert abs(seen.sum() - expected) / expected < 0.05
    inner = (
        seen
        & np.roll(seen, 3, 0)
        & np.roll(seen, -3, 0)
        & np.roll(seen, 3, 1)
        & np.roll(seen, -3, 1)
    )
    np.testing.assert_allclose(back[inner], img[inner], atol=1.5e-2)


def test_tap_resolution_map_lands_in_the_right_quadrant() -> None:
    """200x400 -> resized 256x512, crop rows 16..240, cols 144..368.

    In the original: rows 12.5..187.5, cols 112.5..287.5; the input's top-right quadrant is
    original rows 12.5..100, cols 200..287.5.
    """
    geo = geometry_for((200, 400), info())
    m = np.zeros((2, 2), np.float32)
    m[0, 1] = 1.0
    back = to_original(m, geo, nearest=True)
    assert back.shape == (200, 400)
    assert back[14:99, 202:286].min() == 1
    hot = np.zeros((200, 400), bool)
    hot[12:101, 199:289] = True
    assert back[~hot].max() == 0


def test_to_batch_and_errors() -> None:
    x, geos = to_batch([ramp(40, 60), ramp(60, 40)], info(size=32, hw=(32, 32)))
    assert x.shape == (2, 3, 32, 32) and [g.original_size for g in geos] == [(40, 60), (60, 40)]
    with pytest.raises(ImageError, match="no images given"):
        to_batch([], info())
    with pytest.raises(
        ImageError, match=r"to_original expects an H x W map or H x W x C image, got \(4,\)"
    ):
        to_original(np.zeros(4), geos[0])


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 700),
    w=st.integers(1, 700),
    policy=st.sampled_from(["shorter_side_center_crop", "stretch"]),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
    channels=st.sampled_from([0, 1, 3, 4]),
)
def test_any_image_becomes_a_valid_input(
    h: int, w: int, policy: str, dtype: type, channels: int
) -> None:
    rng = np.random.default_rng(h * 1000 + w)
    shape = (h, w) if channels == 0 else (h, w, channels)
    if dtype is np.float32:
        img = rng.random(shape, dtype=np.float32)
    else:
        img = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    x, geo = to_input(img, info(policy, size=40, hw=(32, 32)))
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    top, left, ch, cw = geo.crop
    assert (
        0 <= top
        and top + ch <= geo.resized_size[0]
        and 0 <= left
        and left + cw <= geo.resized_size[1]
    )
    assert to_original(x[0, 0], geo).shape == (h, w)
