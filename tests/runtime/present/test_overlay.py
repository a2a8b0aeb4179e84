"""Colour maps, blending, panels and atomic RGB writes (read back with Pillow, an independent
decoder, so the channel order is checked end to end)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradtap.runtime.errors import ImageError, OptionError
from gradtap.runtime.image.read import load_image
from gradtap.runtime.present.overlay import (
    COLORMAPS,
    colorize,
    overlay_heatmap,
    panel,
    to_uint8,
    write_image,
)


def test_jet_runs_from_blue_to_red() -> None:
    ends = colorize(np.array([[0.0, 1.0]]), "jet")[0]
    assert ends.dtype == np.uint8
    low, high = ends.astype(int)
    assert low[2] > 100 and low[0] == low[1] == 0  # dark blue
    assert high[0] > 100 and high[1] == high[2] == 0  # dark red


@pytest.mark.parametrize("name", sorted(COLORMAPS))
def test_colormaps_are_monotone_in_brightness_or_hue(name: str) -> None:
    ramp = colorize(np.linspace(0, 1, 256)[None], name)[0].astype(int)
    assert ramp.shape == (256, 3) and len({tuple(c) for c in ramp}) > 100
    if name in ("gray", "inferno"):
        luma = ramp @ np.array([299, 587, 114])
        assert np.all(np.diff(luma) >= -1)


def test_overlay_blends_image_and_heat() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((5, 6, 3)).astype(np.float32)
    mask = rng.random((5, 6)).astype(np.float32)
    np.testing.assert_array_equal(overlay_heatmap(img, mask, image_weight=1.0), to_uint8(img))
    np.testing.assert_array_equal(overlay_heatmap(img, mask, image_weight=0.0), colorize(mask))
    half = overlay_heatmap(img, mask).astype(float)
    expected = 0.5 * to_uint8(img) + 0.5 * colorize(mask)
    assert np.abs(half - expected).max() <= 0.5 + 1e-9
    u8 = overlay_heatmap((img * 255).round().astype(np.uint8), mask, colormap="gray")
    assert u8.dtype == np.uint8 and u8.shape == (5, 6, 3)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((np.zeros((4, 4, 3)), np.full((4, 4), 1.5)), {}, OptionError, r"lie in \[0, 1\]"),
        (
            (np.zeros((4, 4, 3)), np.zeros((4, 5))),
            {},
            OptionError,
            r"mask \(4, 5\) and image \(4, 4\)",
        ),
        ((np.zeros((4, 4, 3)), np.zeros((4, 4))), {"colormap": "viridis"}, OptionError, "valid: "),
        ((np.zeros((4, 4, 3)), np.zeros((4, 4))), {"image_weight": 2}, OptionError, "image_weight"),
        ((np.full((4, 4, 3), 300.0), np.zeros((4, 4))), {}, ImageError, r"lie in \[0, 1\]"),
        ((np.zeros((4, 4, 2)), np.zeros((4, 4))), {}, ImageError, r"RGB \[H, W, 3\]"),
    ],
)
def test_overlay_errors(args: tuple, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        overlay_heatmap(*args, **kwargs)


def test_panel_layout_and_captions() -> None:
    a = np.zeros((50, 100, 3), np.float32)
    b = np.full((30, 30, 3), 255, np.uint8)
    out = panel([("original\ntabby cat 0.91", a), ("grad-cam", b)], height=64, title="resnet18")
    assert out.dtype == np.uint8 and out.ndim == 3
    assert out.shape[1] == 128 + 4 + 64  # widths scaled to height 64, 4-pixel gap
    top = int(np.argmax(out[:, 10, 0] == 0))  # first row of the black tile
    assert (out[:top] < 128).any()  # the title was written
    assert (out[top + 64 :, 132:] < 128).any()  # the caption under the white tile too
    assert out.shape[0] > top + 64  # captions below the tiles
    with pytest.raises(OptionError, match="at least one tile"):
        panel([])


def test_write_image_round_trip_keeps_rgb(tmp_path: Path) -> None:
    img = np.zeros((4, 5, 3), np.uint8)
    img[..., 0] = 250  # red
    img[0, 0] = (0, 0, 255)
    path = write_image(tmp_path / "red.png", img)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
    np.testing.assert_allclose(load_image(path), img / 255, atol=1e-7)
    write_image(tmp_path / "gray.jpg", np.full((8, 8), 0.5, np.float32))
    assert Image.open(tmp_path / "gray.jpg").size == (8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gray.jpg", "red.png"]


def test_write_image_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.png"
    write_image(target, np.zeros((2, 2, 3), np.uint8))
    before = target.read_bytes()

    def broken(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(ImageError, match="cannot write .*out.png'.*No space left"):
        write_image(target, np.full((2, 2, 3), 255, np.uint8))
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.png"]


@pytest.mark.parametrize(
    ("name", "image", "message"),
    [
        ("x.gif", np.zeros((2, 2, 3), np.uint8), "suffix must be one of"),
        ("x.png", np.full((2, 2, 3), 2.0), r"lie in \[0, 1\]"),
        ("x.png", np.zeros((2, 2, 4), np.uint8), r"expected an \[H, W, 3\] RGB"),
        ("missing/x.png", np.zeros((2, 2, 3), np.uint8), "does not exist"),
    ],
)
def test_write_image_errors(tmp_path: Path, name: str, image: np.ndarray, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        write_image(tmp_path / name, image)
    assert list(tmp_path.iterdir()) == []
