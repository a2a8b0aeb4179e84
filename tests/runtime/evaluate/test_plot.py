"""OpenCV line charts of gradtap evaluate: lines land where their values say, gaps stay gaps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradtap.runtime.evaluate.plot import MARGIN, _ticks, colours, line_chart

RED, BLUE = (214, 39, 40), (31, 119, 180)
SIZE = (520, 340)


def _plot_area() -> tuple[int, int, int, int]:
    w, h = SIZE
    return MARGIN["left"], MARGIN["top"], w - MARGIN["right"], h - MARGIN["bottom"]


def _rows_of(img: np.ndarray, colour: tuple[int, int, int], x0: int, x1: int) -> set[int]:
    hit = (img[:, x0:x1] == colour).all(axis=2)
    return set(np.flatnonzero(hit.any(axis=1)).tolist())


def test_values_map_to_the_right_rows() -> None:
    left, top, right, bottom = _plot_area()
    img = line_chart(
        {"one": ([0, 1], [1.0, 1.0]), "zero": ([0, 1], [0.0, 0.0])},
        title="t",
        xlabel="x",
        ylabel="y",
        palette={"one": RED, "zero": BLUE},
        size=SIZE,
    )
    assert img.shape == (SIZE[1], SIZE[0], 3) and img.dtype == np.uint8
    middle = (left + 20, right - 20)
    assert _rows_of(img, RED, *middle) <= {top - 1, top, top + 1}
    assert _rows_of(img, BLUE, *middle) <= {bottom - 1, bottom, bottom + 1}
    assert _rows_of(img, RED, *middle) and _rows_of(img, BLUE, *middle)


def test_nan_breaks_the_line_and_values_are_clipped_to_the_axes() -> None:
    left, top, right, bottom = _plot_area()
    x = [0.0, 1.0, 2.0, 3.0, 4.0]
    img = line_chart(
        {"gap": (x, [0.5, 0.5, math.nan, 0.5, 0.5]), "high": (x, [3.0] * 5)},
        title="t",
        xlabel="x",
        ylabel="y",
        palette={"gap": RED, "high": BLUE},
        size=SIZE,
    )
    quarter = (right - left) / 4
    # no red between x = 1 and x = 3 (except the end markers' radius)
    assert not _rows_of(img, RED, round(left + 1.2 * quarter), round(left + 2.8 * quarter))
    assert _rows_of(img, RED, left + 5, round(left + 0.8 * quarter))
    assert _rows_of(img, BLUE, left + 20, right - 20) <= set(range(top - 3, top + 4))  # markers


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (-0.2, 1.0, [-0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.0, 0.3, [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]),
        (1.0, 50.0, [10.0 * k for k in range(1, 6)]),
    ],
)
def test_ticks(lo: float, hi: float, expected: list[float]) -> None:
    assert _ticks(lo, hi) == pytest.approx(expected)


def test_the_random_baseline_is_grey_and_colours_are_stable() -> None:
    a = colours(["saliency", "random", "gradcam"])
    assert a["random"] == (150, 150, 150)
    assert a["saliency"] != a["gradcam"]
    assert colours(["saliency", "gradcam"]) == {k: a[k] for k in ("saliency", "gradcam")}


def test_examples_figure_has_a_tile_per_method_and_the_box_in_green() -> None:
    from types import SimpleNamespace

    from gradtap.runtime.evaluate.plot import examples_figure

    images = np.full((2, 48, 48, 3), 0.5, np.float32)
    maps = {
        m: np.random.default_rng(0).random((2, 48, 48)) for m in ("saliency", "gradcam", "random")
    }
    examples = SimpleNamespace(images=images, boxes=np.array([[12, 24, 36, 48]] * 2), maps=maps)
    fake = SimpleNamespace(
        examples=examples, labels=("a", "b"), targets=np.array([0, 1]), model="m", dataset="d"
    )
    fig = examples_figure(fake, tile=96)
    assert fig.shape[1] == 3 * 96 + 2 * 4  # image, saliency, gradcam (no random), 4 px gaps
    green = (fig == (0, 220, 0)).all(axis=2)
    cols = np.flatnonzero(green[:, :96].any(axis=0))
    assert (cols.min(), cols.max()) == (24, 71)  # box x 12..36 of 48 px -> 24..71 of 96
    assert green[:, :96].any() and green[:, 100:196].any() and green[:, 200:296].any()
