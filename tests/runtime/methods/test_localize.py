"""GrabCut localisation from a saliency map on synthetic scenes with a known object box."""

from __future__ import annotations

import numpy as np
import pytest

from gradtap.runtime.errors import OptionError
from gradtap.runtime.methods.localize import grabcut, largest_component


def scene() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Grey noisy background with a red square at x 30..70, y 20..50."""
    rng = np.random.default_rng(0)
    img = np.clip(0.5 + 0.05 * rng.standard_normal((80, 100, 3)), 0, 1).astype(np.float32)
    img[20:50, 30:70] = (0.9, 0.1, 0.1)
    return img, (30, 20, 70, 50)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def test_box_of_a_salient_object() -> None:
    img, box = scene()
    yy, xx = np.mgrid[0:80, 0:100]
    saliency = np.exp(-(((xx - 50) / 12) ** 2 + ((yy - 35) / 9) ** 2)).astype(np.float32)
    loc = grabcut(img, saliency)
    assert loc.box is not None and iou(loc.box, box) > 0.8
    assert loc.mask[35, 50] and not loc.mask[5, 5]
    assert loc.mask.sum() <= loc.foreground.sum()
    uint8 = grabcut((img * 255).round().astype(np.uint8), saliency)
    assert uint8.box is not None and iou(uint8.box, box) > 0.8


def test_largest_component() -> None:
    mask = np.zeros((10, 12), bool)
    mask[1:3, 1:3] = True  # 4 pixels
    mask[4:9, 5:11] = True  # 30 pixels
    largest, box = largest_component(mask)
    assert box == (5, 4, 11, 9) and largest.sum() == 30
    empty, none = largest_component(np.zeros((3, 3), bool))
    assert none is None and not empty.any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"saliency": np.zeros((80, 100), np.float32)}, "nearly\\) constant"),
        (
            {"saliency": np.ones((10, 10), np.float32)},
            r"saliency map \(10, 10\) must match the image \(80, 100\)",
        ),
        ({"fg_quantile": 0.2}, "need 0 <= bg_quantile < fg_quantile <= 1"),
        ({"iterations": 0}, "iterations must be an int >= 1"),
        ({"image": np.zeros((80, 100), np.float32)}, r"image must be RGB \[H, W, 3\]"),
    ],
)
def test_errors(kwargs: dict, message: str) -> None:
    img, _ = scene()
    args = {"image": img, "saliency": np.random.default_rng(1).random((80, 100)).astype(np.float32)}
    args.update(kwargs)
    with pytest.raises(OptionError, match=message):
        grabcut(**args)
